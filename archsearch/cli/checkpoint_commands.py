"""Commands on a trial's trained weights: ``export`` (ONNX of the timed forward) and ``eval`` (mIoU on a split)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from archsearch import builders, data, search
from archsearch import spec as spec_mod
from archsearch.cli.arguments import AddVerb, device_option, int_at_least, parse_input, positive_float
from archsearch.cli.storage import open_for_reading
from archsearch.cost import TimedForward, fold_bn, probe_size, resolve_device, runtimes
from archsearch.spec import DATA_NAMES
from archsearch.training import checkpoint, scoring
from archsearch.util.errors import ArchsearchError
from archsearch.util.files import check_writable_dir


def cmd_export(args: argparse.Namespace) -> int:

    for name in ("onnxruntime",):
        if runtimes.unavailable(name) is not None and runtimes.missing(("onnx", "onnxscript")):
            raise ArchsearchError(f"export needs the package(s) onnx, onnxscript: {runtimes.EXTRA}")
    out = Path(args.out)
    if out.suffix != ".onnx":
        raise ArchsearchError(f"--out {out}: expected a file name ending in .onnx")
    check_writable_dir(out.parent, f"--out {out}")
    spec = spec_mod.load(args.spec, args.set)
    path, _ = _eval_checkpoint(
        argparse.Namespace(checkpoint=args.spec, trial=args.trial, set=args.set, storage=args.storage)
    )
    model, ckpt = checkpoint.load(path)
    reason = runtimes.refusal("onnxruntime", builders.config_of(model).knobs.as_dict())
    if reason is not None:
        raise ArchsearchError(reason.replace("runtime 'onnxruntime'", f"trial {args.trial}"))
    size = tuple(args.input or spec.target.input)
    timed = TimedForward(fold_bn(model, probe_size(size)) if spec.target.fold_bn else model).eval()
    runtimes.export_onnx(timed, size, out)
    note = ""
    if runtimes.unavailable("onnxruntime") is None:
        x = torch.randn(*size, generator=torch.Generator().manual_seed(0))
        runner = runtimes.prepare("onnxruntime", timed, x, threads=1, onnx_path=out)
        with torch.inference_mode():
            diff = runtimes.check(runner, timed(x))
        note = f"; ONNX Runtime's output is within {diff:.2g} of PyTorch's"
    folded = "batch norm folded, " if spec.target.fold_bn else ""
    print(
        f"wrote {out}: trial {args.trial} of {spec.name!r} ({ckpt['builder']}), input {list(size)}, "
        f"{folded}logits up-sampled to the input{note}"
    )
    return 0


def _run_data_spec(checkpoint: Path, name: str) -> tuple[Any, Path | None]:
    """The ``data:`` settings (root, size, splits, image counts, cache) of the run that saved ``checkpoint``:
    from the resolved ``spec.yaml`` that ``run`` writes beside its ``checkpoints/`` folder when it names the same
    data set; else the defaults of data set ``name``. Returns the DataSpec and the file it came from."""

    spec_file = checkpoint.parent.parent / "spec.yaml"
    if checkpoint.parent.name == "checkpoints" and spec_file.is_file():
        try:
            raw = yaml.safe_load(spec_file.read_text())
            run_data = spec_mod.parse_data(raw.get("data") if isinstance(raw, dict) else None, file=str(spec_file))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ArchsearchError) as exc:
            logging.getLogger(__name__).warning("ignoring %s: %s", spec_file, exc)
        else:
            if run_data.name == name:
                return run_data, spec_file
    return spec_mod.DataSpec(name=name), None


def _eval_checkpoint(args: argparse.Namespace) -> tuple[Path, tuple[Any, str] | None]:
    """The checkpoint file to evaluate: the path given, or (``SPEC --trial N``) the trial's weights fetched from
    the study's artifact store, with the run's data settings from the study."""

    if args.trial is None:
        return Path(args.checkpoint), None
    spec = spec_mod.load(args.checkpoint, args.set)
    url = search.storage_url(spec, args.storage)
    study = open_for_reading(spec, url)
    numbers = {t.number: t for t in study.get_trials(deepcopy=False)}
    t = numbers.get(args.trial)
    if t is None or ("checkpoint_artifact" not in t.user_attrs and "checkpoint" not in t.user_attrs):
        done = [n for n, x in numbers.items() if "checkpoint" in x.user_attrs]
        raise ArchsearchError(
            f"--trial {args.trial}: study {spec.name!r} has no checkpoint for it "
            f"(trials with one: {', '.join(map(str, done[:20])) or 'none'})"
        )
    path = checkpoint.of_trial(t.user_attrs)
    stored = study.user_attrs.get("spec", {}).get("data")
    data_spec = spec_mod.parse_data(stored, file=f"{url} (study {spec.name})") if stored else None
    return path, ((data_spec, f"study {spec.name}") if data_spec is not None else None)


def cmd_eval(args: argparse.Namespace) -> int:

    path, study_data = _eval_checkpoint(args)
    model, ckpt = checkpoint.load(path)
    name = args.data or ckpt.get("data")
    if name is None:
        raise ArchsearchError(f"--data: {path} does not record its data set; allowed: {', '.join(data.NAMES)}")
    if name not in data.NAMES:
        raise ArchsearchError(f"{path}: data set {name!r} is unknown; allowed: {', '.join(data.NAMES)}")
    info = data.info(name)
    if info.num_classes != ckpt["num_classes"]:
        raise ArchsearchError(f"--data {name}: {info.num_classes} classes, the checkpoint has {ckpt['num_classes']}")
    source: str | Path | None
    if study_data is not None and study_data[0].name == name:
        dspec, source = study_data
    else:
        dspec, source = _run_data_spec(path, name)
    if not dspec.root and ckpt.get("root") and ckpt.get("data") == name:
        dspec = dataclasses.replace(dspec, root=ckpt["root"])
    dspec = dataclasses.replace(
        dspec,
        root=args.root or dspec.root,
        val_split=args.split or dspec.val_split,
        val_images=args.limit or dspec.val_images,
        train_images=args.limit or dspec.train_images,  # --split train counts train_images
    )
    if name != "synthetic" and not dspec.root:
        raise ArchsearchError(f"--root: data set {name!r} needs its folder")
    scale = args.scale if args.scale is not None else ckpt.get("scale", 1.0)
    dataset = data.load_scoring(dspec, dspec.val_split, scale)  # labels at their own resolution, as trials score
    device = resolve_device(args.device)
    scores = scoring.evaluate(model.to(device), dataset, device, batch=args.batch, progress=not args.quiet)
    settings = f"; data settings from {source}" if source else ""
    print(f"{path}: {ckpt['builder']} on {name}/{dspec.val_split} ({len(dataset)} images, scale {scale}{settings})")
    print(
        f"mIoU {100 * scores.miou:.2f}%  pixel acc {100 * scores.pixel_acc:.2f}%  mean acc {100 * scores.mean_acc:.2f}%"
    )
    for cls, iou in zip(info.class_names, scores.iou_per_class, strict=False):
        print(f"  {cls:<16} {'—' if iou is None else f'{100 * iou:.2f}%'}")
    return 0


def register(verb: AddVerb) -> None:
    """The parsers of ``export`` and ``eval``."""

    q = verb("export", "write a trial's trained model as ONNX (the timed forward: logits up-sampled to the input)")
    q.add_argument("spec", help="the study's spec YAML file")
    q.add_argument(
        "--trial", type=int_at_least(0), required=True, metavar="N", help="trial number (required, no default)"
    )
    q.add_argument("--out", required=True, metavar="FILE.onnx", help="ONNX file to write (required, no default)")
    q.add_argument("--storage", metavar="URL", help="the study's storage (default: the spec's)")
    q.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="spec overrides, as for run (default: none)"
    )
    q.add_argument(
        "--input",
        type=parse_input,
        metavar="N,3,H,W",
        help="input size of the exported graph (default: the spec's target.input)",
    )
    q.set_defaults(fn=cmd_export)

    q = verb("eval", "evaluate a trial's checkpoint on a data set split")
    q.add_argument("checkpoint", help="a trial's weights (its `checkpoint` file), or with --trial the study's spec")
    q.add_argument(
        "--trial",
        type=int_at_least(0),
        metavar="N",
        help="evaluate trial N of the study of the spec given (weights from its artifact store, "
        "from any machine that reaches the storage; default: a checkpoint file is given)",
    )
    q.add_argument("--storage", metavar="URL", help="with --trial: the study's storage (default: the spec's)")
    q.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --trial: spec overrides, as for run (default: none)",
    )
    q.add_argument("--data", choices=DATA_NAMES, help="data set (default: the one the checkpoint records)")
    q.add_argument(
        "--root",
        metavar="DIR",
        help="data set folder (default: the run's data.root, from its spec.yaml beside checkpoints/)",
    )
    q.add_argument("--split", help="split to evaluate (default: the run's data.val_split, else val)")
    q.add_argument(
        "--scale",
        type=positive_float,
        help="resolution relative to the data (default: the proxy scale the checkpoint records)",
    )
    q.add_argument(
        "--limit",
        type=int_at_least(1),
        metavar="N",
        help="at most this many images (default: the run's data.val_images, else all)",
    )
    q.add_argument("--batch", type=int_at_least(1), default=4, metavar="N", help="images per forward pass (default: 4)")
    q.add_argument(
        "--device",
        default="auto",
        type=device_option,
        metavar="{auto,cpu,cuda,cuda:N}",
        help="device to evaluate on; auto: cuda when available (default: auto)",
    )
    q.set_defaults(fn=cmd_eval)
