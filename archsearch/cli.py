"""The ``archsearch`` command: run, pareto, table, profile, eval, builders.

Bad input (spec, knobs, paths, URLs) prints one line ``archsearch: error: …`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from archsearch.errors import ArchsearchError

EXIT_USAGE = 2


def _parse_input(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N,C,H,W such as 1,3,1024,2048") from None
    if len(dims) != 4 or min(dims) <= 0 or dims[1] != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N,3,H,W with positive sizes")
    return dims


def _knob_overrides(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    knobs: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ArchsearchError(f"--set {item!r}: expected KNOB=VALUE, e.g. --set expansion=2")
        key, text = item.split("=", 1)
        try:
            knobs[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ArchsearchError(f"--set {key}: {text!r} is not a valid YAML value") from None
    return knobs


def _out_dir(args: argparse.Namespace, spec: Any, url: str) -> Path:
    from archsearch.study import artifacts_dir

    return Path(args.out) if args.out else artifacts_dir(spec, url)


def cmd_run(args: argparse.Namespace) -> int:
    from archsearch import report
    from archsearch import spec as spec_mod
    from archsearch import study as study_mod

    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"  # every progress bar, the data cache's included
    spec = spec_mod.load(args.spec, args.set)
    if args.trials is not None and args.trials <= 0:
        raise ArchsearchError("--trials: must be > 0")
    if args.artifacts:
        spec = dataclasses.replace(spec, artifacts=args.artifacts)
    url = study_mod.storage_url(spec, args.storage)
    study = study_mod.optimize(spec, url, args.trials, progress=not args.quiet, allow_changed=args.allow_changed_spec)
    frame = report.trials_frame(study, spec.objectives)
    print(report.summary(frame))
    out = _out_dir(args, spec, url)
    if spec.rows:
        _, paths = report.ablation_table(study, spec.rows, out, spec.name)
    else:
        paths = report.export_pareto(study, spec.objectives, out, spec.name)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0 if (frame["state"] == "COMPLETE").any() else 1  # no trial completed: a failing exit status


def cmd_pareto(args: argparse.Namespace) -> int:
    from archsearch import report
    from archsearch import spec as spec_mod
    from archsearch import study as study_mod

    spec = spec_mod.load(args.spec, args.set)
    url = study_mod.storage_url(spec, args.storage)
    study = study_mod.open_study(spec, url, create=False)
    paths = report.export_pareto(study, spec.objectives, _out_dir(args, spec, url), spec.name)
    front = report.pareto_front(report.trials_frame(study, spec.objectives), spec.objectives)
    print(report.format_markdown(front) if len(front) else "no COMPLETE trials yet")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from archsearch import report
    from archsearch import spec as spec_mod
    from archsearch import study as study_mod

    spec = spec_mod.load(args.spec, args.set)
    if not spec.rows:
        raise ArchsearchError(f"{args.spec}: rows: the spec has no rows (an ablation table lists rows:)")
    url = study_mod.storage_url(spec, args.storage)
    study = study_mod.open_study(spec, url, create=False)
    _, paths = report.ablation_table(study, spec.rows, _out_dir(args, spec, url), spec.name)
    print(Path(paths["md"]).read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from archsearch import builders, measure

    model = builders.build(args.builder, args.classes, **_knob_overrides(args.set))  # a builder or builder.variant
    config = builders.config_of(model)
    entry = builders.get(config.builder)
    device = measure.resolve_device(args.device)
    params = measure.count_params(model)
    print(f"builder     {entry.name}  ({entry.summary})" + (f"  variant {config.variant}" if config.variant else ""))
    print(f"knobs       {config.knobs.as_dict()}")
    print(f"params      {params:,} ({params / 1e6:.3f}M)")
    madds = measure.count_madds(model, args.input)
    print(f"madds       {madds:,} ({madds / 1e9:.2f}G) at {list(args.input)}")
    lat = measure.latency(model, args.input, device, warmup=args.warmup, repeats=args.repeats,
                          memory_format=args.memory_format)
    print(f"latency     median {lat.median_ms:.2f} ms, p90 {lat.p90_ms:.2f} ms over {lat.repeats} repeats "
          f"on {lat.device}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from archsearch import builders, data, measure, metrics
    from archsearch.spec import DataSpec

    path = Path(args.checkpoint)
    if not path.is_file():
        raise ArchsearchError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — any unreadable file
        raise ArchsearchError(f"{path}: not an archsearch checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or not {"builder", "knobs", "num_classes", "state_dict"} <= set(ckpt):
        raise ArchsearchError(f"{path}: not an archsearch checkpoint (needs builder, knobs, num_classes, state_dict)")
    model = builders.build(ckpt["builder"], ckpt["num_classes"], **ckpt["knobs"])
    model.load_state_dict(ckpt["state_dict"])
    if args.data not in data.NAMES:
        raise ArchsearchError(f"--data {args.data!r}; allowed: {', '.join(data.NAMES)}")
    info = data.info(args.data)
    if info.num_classes != ckpt["num_classes"]:
        raise ArchsearchError(f"--data {args.data}: {info.num_classes} classes, the checkpoint has {ckpt['num_classes']}")
    if args.data != "synthetic" and not args.root:
        raise ArchsearchError(f"--root: data set {args.data!r} needs its folder")
    scale = args.scale if args.scale is not None else ckpt.get("scale", 1.0)
    dspec = DataSpec(name=args.data, root=args.root, val_split=args.split, val_images=args.limit)
    dataset = data.load(dspec, args.split, scale)
    device = measure.resolve_device(args.device)
    scores = metrics.evaluate(model.to(device), dataset, device, batch=args.batch)
    print(f"{path}: {ckpt['builder']} on {args.data}/{args.split} ({len(dataset)} images, scale {scale})")
    print(f"mIoU {100 * scores.miou:.2f}%  pixel acc {100 * scores.pixel_acc:.2f}%  mean acc {100 * scores.mean_acc:.2f}%")
    for name, iou in zip(info.class_names, scores.iou_per_class):
        print(f"  {name:<16} {'—' if iou is None else f'{100 * iou:.2f}%'}")
    return 0


def cmd_builders(args: argparse.Namespace) -> int:
    import dataclasses

    from archsearch import builders

    for name in builders.names():
        entry = builders.get(name)
        print(f"{name} — {entry.summary}  [paper: {entry.paper}{'; prunable' if entry.prunable else ''}]")
        defaults = entry.defaults()
        for f in dataclasses.fields(entry.knobs):
            meta = f.metadata
            print(f"  {f.name:<16} default {defaults[f.name]!r:<22} paper: {meta.get('paper', '-')}. {meta.get('doc', '')}")
        for line in builders.format_variants(name):
            print(line)
        print()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archsearch", description="Architecture ablation and search for real-time semantic segmentation.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (tracebacks of failed trials)")
    sub = p.add_subparsers(dest="verb", required=True)

    def spec_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("spec", help="spec YAML file (spaces/*.yaml or studies/*.yaml)")
        q.add_argument("--storage", help="SQLAlchemy URL (default: the spec's storage, else sqlite:///runs/NAME.db)")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key (dotted), YAML value")

    q = sub.add_parser("run", help="run (or resume) a study until it has --trials finished trials")
    spec_args(q)
    q.add_argument("--trials", type=int, help="total finished trials wanted (default: search.trials, or one per row)")
    q.add_argument("--out", help="folder for the exports (default: beside the storage)")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    q.add_argument("--artifacts", help="where trial checkpoints go: a (shared) folder, s3://bucket or gs://bucket "
                   "(default: the spec's artifacts, else checkpoints/ beside the storage)")
    q.add_argument("--allow-changed-spec", action="store_true",
                   help="add trials to a study that was run with a different spec (incomparable trials; default: refuse)")
    q.set_defaults(fn=cmd_run)

    q = sub.add_parser("pareto", help="export the Pareto front (CSV, JSON, Markdown, PNG) from the storage")
    spec_args(q)
    q.add_argument("--out", help="output folder (default: beside the storage)")
    q.set_defaults(fn=cmd_pareto)

    q = sub.add_parser("table", help="print and write an ablation table beside the paper's numbers")
    spec_args(q)
    q.add_argument("--out", help="output folder (default: beside the storage)")
    q.set_defaults(fn=cmd_table)

    q = sub.add_parser("profile", help="parameters, multiply-adds and latency of one builder configuration")
    q.add_argument("builder", help="a builder or a named paper variant (BUILDER.VARIANT, e.g. ndnet.ndnet45)")
    q.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE", help="knob value (YAML)")
    q.add_argument("--input", type=_parse_input, default=(1, 3, 1024, 2048), help="N,C,H,W (default 1,3,1024,2048)")
    q.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    q.add_argument("--classes", type=int, default=19)
    q.add_argument("--memory-format", default="nchw", choices=["nchw", "channels_last"])
    q.add_argument("--repeats", type=int, default=10)
    q.add_argument("--warmup", type=int, default=3)
    q.set_defaults(fn=cmd_profile)

    q = sub.add_parser("eval", help="evaluate a trial's checkpoint on a data set split")
    q.add_argument("checkpoint")
    q.add_argument("--data", required=True, help="cityscapes | camvid | synthetic")
    q.add_argument("--root", help="data set folder")
    q.add_argument("--split", default="val")
    q.add_argument("--scale", type=float, help="resolution relative to the data (default: the proxy's)")
    q.add_argument("--limit", type=int, help="at most this many images")
    q.add_argument("--batch", type=int, default=4)
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    q.set_defaults(fn=cmd_eval)

    q = sub.add_parser("builders", help="list builders, their knobs, the papers' defaults and named variants")
    q.set_defaults(fn=cmd_builders)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import warnings

    import optuna

    # heartbeats and metric names are stable enough for us; the CLI output stays one line per trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.DEBUG if args.verbose else optuna.logging.WARNING)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args) or 0)
    except ArchsearchError as exc:
        label = "error" if exc.exit_code == EXIT_USAGE else "stopped"
        print(f"archsearch: {label}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("archsearch: interrupted; finished trials are stored", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
