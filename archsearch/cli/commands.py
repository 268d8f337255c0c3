"""The ``archsearch`` command: run, pareto, table, calibrate, profile, export, eval, builders, schema, dashboard.

Bad input (spec, knobs, paths, URLs) prints one line ``archsearch: error: …`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from archsearch.cli import dashboard, train_command
from archsearch.util.errors import ArchsearchError
from archsearch.util.files import check_writable_dir

EXIT_USAGE = 2
EXIT_NO_TRIAL = 1  # `run` finished without a single COMPLETE trial


class UsageError(ArchsearchError):
    """A command-line option is missing or has a bad value (argparse's errors, as one line)."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors raised as :class:`UsageError` — one line and exit 2 from :func:`main` — instead
    of a usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}; allowed: ≥ {minimum}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}; allowed: a number > 0")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"{text}; allowed: a number in (0, 1)")
    return value


def _device(text: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N (:data:`archsearch.cost.devices.DEVICE_PATTERN`)."""
    import re

    from archsearch.cost.devices import DEVICE_PATTERN, DEVICES  # torch: loaded only by the commands that time

    if not re.match(DEVICE_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: {DEVICES}")
    return text


def _parse_input(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N,C,H,W such as 1,3,1024,2048") from None
    if len(dims) != 4 or min(dims) <= 0 or dims[1] != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N,3,H,W with positive sizes")
    return dims


def _knob_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``--set KNOB=VALUE`` items of ``profile`` as knob values (:func:`archsearch.spec.parse_assignment`)."""
    from archsearch.spec import parse_assignment

    return dict(parse_assignment(item, example="expansion=2") for item in items)


def _out_dir(args: argparse.Namespace, spec: Any, url: str) -> Path:
    """``--out``, else the artifacts folder beside the storage; checked to be writable before any work."""
    from archsearch.search import artifacts_dir

    out = Path(args.out) if args.out else artifacts_dir(spec, url)
    check_writable_dir(out, f"--out {out}" if args.out else f"output folder {out}")
    return out


def _check_storage_folder(url: str) -> None:
    """An SQLite storage's folder can be created and written (before any trial runs)."""
    from archsearch.search import sqlite_path

    db = sqlite_path(url)
    if db is not None:
        if db.exists() and not db.is_file():
            raise ArchsearchError(f"storage {url}: {db} is not a file")
        check_writable_dir(db.parent, f"storage {url}")


def cmd_run(args: argparse.Namespace) -> int:
    from archsearch import report, search
    from archsearch import spec as spec_mod

    spec = spec_mod.load(args.spec, args.set)
    if args.artifacts:
        spec = dataclasses.replace(spec, artifacts=args.artifacts)
    url = search.storage_url(spec, args.storage)
    _check_storage_folder(url)
    artifacts = search.artifacts_dir(spec, url)
    check_writable_dir(artifacts, f"artifacts folder {artifacts}")
    out = _out_dir(args, spec, url)  # checked now: a bad --out must not wait for every trial to finish
    said = report.trust.statement(spec)  # a bad calibration: file is one line now, before any trial
    study = search.optimize(
        spec,
        url,
        args.trials,
        progress=not args.quiet,
        allow_changed=args.allow_changed_spec,
        user_attrs={report.trust.ATTR: said},  # so a report elsewhere says it without the file
    )
    frame = report.trials_frame(study)
    print(report.summary(frame))
    if spec.rows:
        table, paths = report.ablation_table(study, spec.rows, out, spec.name, statement=said)
        print(report.table_text(table, spec.name))
    else:
        paths = report.export_pareto(study, out, spec.name, statement=said)
        print(report.front_table(study, frame, statement=said))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if not (frame["state"] == "COMPLETE").any():
        counts = ", ".join(f"{n} {state}" for state, n in frame["state"].value_counts().items()) or "no trials"
        print(
            f"archsearch: no trial of {spec.name!r} completed ({counts}); the reasons are in the trial lines "
            "above (-v for tracebacks)",
            file=sys.stderr,
        )
        return EXIT_NO_TRIAL
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    from archsearch import report, search
    from archsearch import spec as spec_mod

    spec = spec_mod.load(args.spec, args.set)
    url = search.storage_url(spec, args.storage)
    out = _out_dir(args, spec, url)
    study = search.open_study(spec, url, create=False)  # read-only: a report never writes to the study
    said = report.trust.statement(spec, study)
    paths = report.export_pareto(study, out, spec.name, statement=said)
    frame = report.trials_frame(study)
    print(report.front_table(study, frame, statement=said))
    print("measured: " + report.protocol(frame, report.data_description(study)))
    print("wrote " + ", ".join(str(p) for p in paths.values()) + " (every column of the front in the CSV and JSON)")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from archsearch import report, search
    from archsearch import spec as spec_mod

    spec = spec_mod.load(args.spec, args.set)
    if not spec.rows:
        raise ArchsearchError(f"{args.spec}: rows: the spec has no rows (an ablation table lists rows:)")
    url = search.storage_url(spec, args.storage)
    out = _out_dir(args, spec, url)
    study = search.open_study(spec, url, create=False)  # read-only: a report never writes to the study
    said = report.trust.statement(spec, study)
    table, paths = report.ablation_table(study, spec.rows, out, spec.name, statement=said)
    print(report.table_text(table, spec.name))
    print("wrote " + ", ".join(str(p) for p in paths.values()) + " (ratios and every paper column in both)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from archsearch import calibrate

    calibrate.command(
        args.spec,
        args.set,
        storage=args.storage,
        out=args.out,
        fidelities=args.fidelities,
        top=args.top,
        archs=args.archs,
        seeds=args.seeds,
        top_seeds=args.top_seeds,
        k=args.top_k,
        threshold=args.threshold,
        progress=not args.quiet,
    )
    return 0


def _profile_runtimes(choice: str) -> list[str]:
    from archsearch.cost import runtimes

    return (
        [r for r in runtimes.RUNTIMES if r != "tensorrt" or runtimes.unavailable(r) is None]
        if choice == "all"
        else [choice]
    )


def cmd_profile(args: argparse.Namespace) -> int:
    import tempfile

    import pandas as pd

    from archsearch import builders
    from archsearch.cost import device_name, profile, resolve_device, runtimes
    from archsearch.util.formatting import fmt_ms, fmt_num, text_table

    model = builders.build(args.builder, args.classes, **_knob_overrides(args.set))  # a builder or builder.variant
    config = builders.config_of(model)
    entry = builders.get(config.builder)
    device = resolve_device(args.device)
    chosen = _profile_runtimes(args.runtime)
    if args.runtime != "all":
        runtimes.require(args.runtime)
        reason = runtimes.refusal(args.runtime, config.knobs.as_dict())
        if reason is not None:
            raise ArchsearchError(reason)
    settings = profile.Settings(
        input=tuple(args.input),
        threads=args.threads,
        fold_bn=args.fold_bn,
        warmup=args.warmup,
        repeats=args.repeats,
        rel_ci=args.rel_ci,
        max_seconds=args.max_seconds,
        memory_format=args.memory_format,
    )
    counted = profile.counts(model, settings, device)
    print(f"builder     {entry.name}  ({entry.summary})" + (f"  variant {config.variant}" if config.variant else ""))
    print(f"knobs       {config.knobs.as_dict()}")
    print(f"params      {counted['params']:,} ({counted['params'] / 1e6:.3f}M)")
    print(f"madds       {counted['madds']:,} ({counted['madds'] / 1e9:.2f}G) at {list(args.input)}")
    print(f"flops       {counted['flops']:,} ({counted['flops'] / 1e9:.2f}G, fvcore's total)")
    protocol = (
        f"{args.threads} thread{'s' if args.threads > 1 else ''}, batch norm "
        f"{'folded' if args.fold_bn else 'not folded'}, logits up-sampled to the input, ≥ {args.repeats} "
        f"repeats until the median's 95% CI half-width ≤ {100 * args.rel_ci:g}% (at most {args.max_seconds:g} s "
        f"per runtime), on {device_name(device, args.threads)}"
    )
    print(f"latency     {protocol}")
    rows: list[dict[str, str]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="archsearch-profile-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"  # exported once, shared by every exported runtime
        for name in chosen:
            try:
                lat = profile.timing(model, settings, device, runtime=name, onnx_path=onnx_path)
            except ArchsearchError as exc:
                if args.runtime != "all":
                    raise
                notes.append(f"(not timed: {name}: {exc})")
                continue
            rows.append(
                {
                    "runtime": lat.runtime,
                    "version": lat.runtime_version,
                    "median": fmt_ms(lat.median_ms),
                    "± half-width": f"± {fmt_num(lat.half_width_ms)} ms",
                    "p90": fmt_ms(lat.p90_ms),
                    "repeats": str(lat.repeats),
                }
            )
    if rows:
        print(text_table(pd.DataFrame(rows), [False] * 6))
    notes += [
        f"(not run: {runtimes.unavailable(n)})" for n in runtimes.RUNTIMES if args.runtime == "all" and n not in chosen
    ]
    for note in notes:
        print(note)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from archsearch import builders
    from archsearch import spec as spec_mod
    from archsearch.cost import TimedForward, fold_bn, probe_size, runtimes
    from archsearch.training import checkpoint

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
        import torch

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
    import yaml

    from archsearch import spec as spec_mod

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
    from archsearch import search
    from archsearch import spec as spec_mod
    from archsearch.training import checkpoint

    if args.trial is None:
        return Path(args.checkpoint), None
    spec = spec_mod.load(args.checkpoint, args.set)
    url = search.storage_url(spec, args.storage)
    study = search.open_study(spec, url, create=False)
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
    import dataclasses

    from archsearch import data
    from archsearch.cost import resolve_device
    from archsearch.training import checkpoint, scoring

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


def cmd_builders(args: argparse.Namespace) -> int:
    import shutil
    import textwrap

    from archsearch import builders
    from archsearch.builders.registry import allowed_values

    width = min(100, shutil.get_terminal_size((100, 24)).columns)
    for name in builders.names():
        entry = builders.get(name)
        head = f"{name} — {entry.summary} [paper: {entry.paper}{'; prunable' if entry.prunable else ''}]"
        print(textwrap.fill(head, width, subsequent_indent="    "))
        defaults = entry.defaults()
        for f in entry.knob_fields():
            meta = f.metadata
            first = f"  {f.name}: default {defaults[f.name]!r}; allowed: {allowed_values(f)}"
            print(textwrap.fill(first, width, subsequent_indent="      "))
            about = f"paper: {meta.get('paper', '-')}. {meta.get('doc', '')}".strip()
            print(textwrap.fill(about, width, initial_indent="      ", subsequent_indent="      "))
        for line in builders.format_variants(name, width=width):
            print(line)
        print()
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from archsearch.spec import json_schema
    from archsearch.util import files

    text = json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
    if args.out:
        try:
            files.write_text(Path(args.out), text)
        except OSError as exc:
            raise ArchsearchError(f"--out {args.out}: cannot write ({exc.strerror})") from None
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _global_options(q: argparse.ArgumentParser, *, top: bool) -> None:
    """-v, -q and --version, accepted before and after the verb (after it, they leave the default unset so that
    a value given before the verb stands)."""
    from archsearch import __version__

    default: Any = False if top else argparse.SUPPRESS
    q.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="debug logging, with tracebacks of failed trials (default: off)",
    )
    q.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress bars (default: off)")
    q.add_argument(
        "--version", action="version", version=f"archsearch {__version__}", help="print the version and exit"
    )


def parser() -> argparse.ArgumentParser:
    from archsearch.cost.runtimes import RUNTIMES
    from archsearch.spec import DATA_NAMES

    p = _Parser(prog="archsearch", description="Architecture ablation and search for real-time semantic segmentation.")
    _global_options(p, top=True)
    sub = p.add_subparsers(
        dest="verb",
        required=True,
        metavar="{run,pareto,table,calibrate,train,profile,export,eval,builders,schema,dashboard}",
    )

    def verb(name: str, summary: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        _global_options(q, top=False)
        return q

    def spec_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("spec", help="spec YAML file (spaces/*.yaml or studies/*.yaml)")
        q.add_argument(
            "--storage", metavar="URL", help="SQLAlchemy URL (default: the spec's storage, else sqlite:///runs/NAME.db)"
        )
        q.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a spec key (dotted), YAML value; repeatable (default: none)",
        )
        q.add_argument(
            "--out",
            metavar="DIR",
            help="folder for the exports (default: beside the storage, runs/NAME/ for sqlite:///runs/NAME.db)",
        )

    q = verb("run", "run (or resume) a study until it has --trials finished trials")
    spec_args(q)
    q.add_argument(
        "--trials",
        type=_int_at_least(1),
        metavar="N",
        help="total finished trials wanted (default: search.trials, or one per row)",
    )
    q.add_argument(
        "--artifacts",
        metavar="DIR|URL",
        help="where trial checkpoints go: a (shared) folder, s3://bucket or gs://bucket "
        "(default: the spec's artifacts, else checkpoints/ beside the storage)",
    )
    q.add_argument(
        "--allow-changed-spec",
        action="store_true",
        help="add trials to a study that was run with a different spec: its trials become "
        "incomparable (default: refuse, naming the keys that differ)",
    )
    q.set_defaults(fn=cmd_run)

    q = verb("pareto", "print the Pareto front and export it (CSV, JSON, Markdown, PNG); reads the study only")
    spec_args(q)
    q.set_defaults(fn=cmd_pareto)

    q = verb("table", "print and write an ablation table beside the paper's numbers; reads the study only")
    spec_args(q)
    q.set_defaults(fn=cmd_table)

    q = verb(
        "calibrate",
        "train the same architectures at a ladder of proxy fidelities and report how well each "
        "cheap one ranks them against the top one (Kendall τ, Spearman ρ, seed noise, time); resumable",
    )
    spec_args(q)
    q.add_argument(
        "--fidelities",
        metavar="ITERxSCALE,...",
        help="proxy fidelities, iterations x proxy scale, e.g. 50x0.25,150x0.25,150x0.5,600x0.5 (default: "
        "the spec's proxy I x S as top, with I/4 x S, I/2 x S and I/2 x S/2)",
    )
    q.add_argument(
        "--top",
        metavar="ITERxSCALE",
        help="the reference fidelity; must cost the most, iterations x scale² (default: the costliest)",
    )
    q.add_argument(
        "--archs",
        type=_int_at_least(2),
        default=6,
        metavar="K",
        help="architectures sampled from the space with search.seed; a rows spec uses its rows (default: 6)",
    )
    q.add_argument(
        "--seeds", type=_int_at_least(2), default=2, metavar="K", help="seeds at each cheap fidelity (default: 2)"
    )
    q.add_argument(
        "--top-seeds", type=_int_at_least(1), default=1, metavar="K", help="seeds at the top fidelity (default: 1)"
    )
    q.add_argument(
        "--top-k",
        type=_int_at_least(1),
        default=3,
        metavar="K",
        help="size of the best set whose overlap is reported (default: 3)",
    )
    q.add_argument(
        "--threshold",
        type=float,
        default=0.6,
        metavar="TAU",
        help="recommend the cheapest fidelity whose Kendall τ 95%% lower bound is at least TAU (default: 0.6)",
    )
    q.set_defaults(fn=cmd_calibrate)

    q = verb("profile", "parameters, multiply-adds and latency of one builder configuration")
    q.add_argument(
        "builder",
        help="a builder or a named paper variant, BUILDER.VARIANT such as ndnet.ndnet45 (see `archsearch builders`)",
    )
    q.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help="knob value (YAML); repeatable (default: the paper's defaults)",
    )
    q.add_argument(
        "--input",
        type=_parse_input,
        default=(1, 3, 1024, 2048),
        metavar="N,3,H,W",
        help="input size for multiply-adds and latency (default: 1,3,1024,2048)",
    )
    q.add_argument(
        "--device",
        default="auto",
        type=_device,
        metavar="{auto,cpu,cuda,cuda:N}",
        help="device to count and time on; auto: cuda when available (default: auto)",
    )
    q.add_argument("--classes", type=_int_at_least(1), default=19, metavar="C", help="number of classes (default: 19)")
    q.add_argument(
        "--memory-format",
        default="nchw",
        choices=["nchw", "channels_last", "auto"],
        help="tensor layout for timing; auto: channels_last on CUDA, nchw elsewhere (default: nchw)",
    )
    q.add_argument(
        "--repeats",
        type=_int_at_least(1),
        default=10,
        metavar="N",
        help="fewest timed passes; more until the median's 95%% CI is within --rel-ci (default: 10)",
    )
    q.add_argument("--warmup", type=_int_at_least(0), default=3, metavar="N", help="untimed passes first (default: 3)")
    q.add_argument(
        "--runtime",
        default="eager",
        choices=[*RUNTIMES, "all"],
        help="runtime that runs the timed forward; all: every one available here (default: eager)",
    )
    q.add_argument(
        "--threads",
        type=_int_at_least(1),
        default=1,
        metavar="N",
        help="threads of the runtime, set for the timing (default: 1)",
    )
    q.add_argument(
        "--fold-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fold batch norm into the convolutions before timing (default: on)",
    )
    q.add_argument(
        "--rel-ci",
        type=_fraction,
        default=0.02,
        metavar="F",
        help="repeat until the median's 95%% confidence half-width is within F of it (default: 0.02)",
    )
    q.add_argument(
        "--max-seconds",
        type=_positive_float,
        default=60.0,
        metavar="S",
        help="most seconds of one runtime's timing, warm-up included (default: 60)",
    )
    q.set_defaults(fn=cmd_profile)

    q = verb("export", "write a trial's trained model as ONNX (the timed forward: logits up-sampled to the input)")
    q.add_argument("spec", help="the study's spec YAML file")
    q.add_argument(
        "--trial", type=_int_at_least(0), required=True, metavar="N", help="trial number (required, no default)"
    )
    q.add_argument("--out", required=True, metavar="FILE.onnx", help="ONNX file to write (required, no default)")
    q.add_argument("--storage", metavar="URL", help="the study's storage (default: the spec's)")
    q.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="spec overrides, as for run (default: none)"
    )
    q.add_argument(
        "--input",
        type=_parse_input,
        metavar="N,3,H,W",
        help="input size of the exported graph (default: the spec's target.input)",
    )
    q.set_defaults(fn=cmd_export)

    q = verb("eval", "evaluate a trial's checkpoint on a data set split")
    q.add_argument("checkpoint", help="a trial's weights (its `checkpoint` file), or with --trial the study's spec")
    q.add_argument(
        "--trial",
        type=_int_at_least(0),
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
        type=_positive_float,
        help="resolution relative to the data (default: the proxy scale the checkpoint records)",
    )
    q.add_argument(
        "--limit",
        type=_int_at_least(1),
        metavar="N",
        help="at most this many images (default: the run's data.val_images, else all)",
    )
    q.add_argument(
        "--batch", type=_int_at_least(1), default=4, metavar="N", help="images per forward pass (default: 4)"
    )
    q.add_argument(
        "--device",
        default="auto",
        type=_device,
        metavar="{auto,cpu,cuda,cuda:N}",
        help="device to evaluate on; auto: cuda when available (default: auto)",
    )
    q.set_defaults(fn=cmd_eval)

    q = verb("train", "train one architecture (a trial, a paper variant or knobs) at a full budget; resumable")
    spec_args(q)
    train_command.add_arguments(q, _int_at_least(1), _positive_float)
    q.set_defaults(fn=train_command.command)

    q = verb("builders", "list builders, their knobs, allowed values, the papers' defaults and named variants")
    q.set_defaults(fn=cmd_builders)

    q = verb("schema", "print the JSON schema of a spec file (for editors), or write it with --out")
    q.add_argument("--out", metavar="FILE", help="write the schema to FILE (default: print it)")
    q.set_defaults(fn=cmd_schema)

    dashboard.add_parser(verb)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except UsageError as exc:
        print(f"archsearch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"  # every progress bar, the data cache's included
    import warnings

    import optuna

    # heartbeats and metric names are stable enough for us; the CLI output stays one line per trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.DEBUG if args.verbose else optuna.logging.WARNING)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.fn(args) or 0)
    except ArchsearchError as exc:
        label = "error" if exc.exit_code == EXIT_USAGE else "stopped"
        print(f"archsearch: {label}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("archsearch: interrupted; finished trials are stored", file=sys.stderr)
        return 130
