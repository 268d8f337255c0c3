"""Commands on a study: ``run`` (in this process or as several worker processes), ``pareto``, ``table`` and
``calibrate``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sqlalchemy.engine import make_url

from archsearch import calibrate, data, report, search
from archsearch import spec as spec_mod
from archsearch.cli import launch
from archsearch.cli.arguments import AddVerb, int_at_least, spec_args
from archsearch.cli.storage import check_storage_folder, open_for_reading, out_dir
from archsearch.search import final
from archsearch.util.errors import ArchsearchError
from archsearch.util.files import check_writable_dir

if TYPE_CHECKING:
    import optuna

    from archsearch.spec import Spec

EXIT_NO_TRIAL = 1  # `run` finished without a single COMPLETE trial


def cmd_run(args: argparse.Namespace) -> int:

    spec = spec_mod.load(args.spec, args.set)
    if args.artifacts:
        spec = dataclasses.replace(spec, artifacts=args.artifacts)
    url = search.storage_url(spec, args.storage)
    check_storage_folder(url)
    artifacts = search.artifacts_dir(spec, url)
    check_writable_dir(artifacts, f"artifacts folder {artifacts}")
    # checked now: a bad --out must not wait for every trial to finish
    out = None if args.no_report else out_dir(args, spec, url)
    if (args.workers or 1) > 1 or args.devices is not None:
        return _run_workers(args, spec, url, out)
    said = report.trust.statement(spec)  # a bad calibration: file is one line now, before any trial
    study = search.optimize(
        spec,
        url,
        args.trials,
        progress=not args.quiet,
        allow_changed=args.allow_changed_spec,
        user_attrs={report.trust.ATTR: said},  # so a report elsewhere says it without the file
    )
    return 0 if out is None else _report(spec, study, out, said)


def _report(spec: Spec, study: optuna.Study, out: Path, said: str | None = None) -> int:
    """The end of a run: the summary, the front (search) or the table (rows), exported to ``out``; exit 1
    when no trial completed."""
    said = said if said is not None else report.trust.statement(spec, study)
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


def _prepare(spec: Spec, url: str, allow_changed: bool) -> None:
    """What each worker checks first, done once before any starts, so that bad input is one line and not one
    per worker: the data sets (decoded into the cache once, not by every worker at the same moment) and the
    study (created, or its stored spec compared with this one)."""

    for split in dict.fromkeys((spec.data.train_split, spec.data.val_split)):
        data.load(spec.data, split, spec.proxy.scale)
    data.load_scoring(spec.data, spec.data.val_split, spec.proxy.scale)
    session = search.open_session(spec, url, allow_changed=allow_changed)
    session.storage.engine.dispose()


def _worker_argv(args: argparse.Namespace, url: str) -> list[str]:
    """The ``archsearch run`` command of one worker: this one's, on the resolved storage, without a report."""
    argv = [sys.executable, "-m", "archsearch.cli", "run", args.spec, "--storage", url, "--no-report"]
    for item in args.set:
        argv += ["--set", item]
    if args.trials is not None:
        argv += ["--trials", str(args.trials)]
    if args.artifacts:
        argv += ["--artifacts", args.artifacts]
    argv += [flag for flag, on in (("--allow-changed-spec", args.allow_changed_spec), ("-v", args.verbose)) if on]
    return argv + (["-q"] if args.quiet else [])


def _run_workers(args: argparse.Namespace, spec: Spec, url: str, out: Path | None) -> int:
    """``run --workers N [--devices …]``: N worker processes on the study (:mod:`archsearch.cli.launch`), then
    one report."""

    devices = launch.parse_devices(args.devices) if args.devices is not None else None
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    workers = launch.plan(
        args.workers,
        devices,
        target_device=spec.target.device,
        threads=spec.target.threads,
        gpu_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
        cores=cores,
    )
    _prepare(spec, url, args.allow_changed_spec)
    shown = make_url(url).render_as_string(hide_password=True)
    print(f"{spec.name}: {len(workers)} workers: {'; '.join(w.describe() for w in workers)} (storage {shown})")
    outcome = launch.start(_worker_argv(args, url), workers)
    if outcome.signal is not None:
        name = signal.Signals(outcome.signal).name
        raise search.Interrupted(
            f"{name}: stopped {len(outcome.returncodes)} workers (each line above says which trial will be "
            "retried by the next run); finished trials are stored",
            exit_code=130 if outcome.signal == signal.SIGINT else 143,
        )
    failed = {label: code for label, code in outcome.returncodes.items() if code != 0}
    if failed:
        shown_codes = ", ".join(f"{label} with status {code}" for label, code in failed.items())
        code = next(iter(failed.values()))
        raise ArchsearchError(
            f"worker {shown_codes} ended; the lines prefixed [{next(iter(failed))}] say why",
            exit_code=code if code > 0 else 1,
        )
    return 0 if out is None else _report(spec, open_for_reading(spec, url), out)


def cmd_pareto(args: argparse.Namespace) -> int:

    spec = spec_mod.load(args.spec, args.set)
    url = search.storage_url(spec, args.storage)
    out = out_dir(args, spec, url)
    study = open_for_reading(spec, url)  # read-only: a report never writes to the study
    said = report.trust.statement(spec, study)
    paths = report.export_pareto(study, out, spec.name, statement=said)
    frame = report.trials_frame(study)
    print(report.front_table(study, frame, statement=said))
    print("measured: " + report.protocol(frame, report.data_description(study)))
    _print_finals(url, spec.name, frame)
    print("wrote " + ", ".join(str(p) for p in paths.values()) + " (every column of the front in the CSV and JSON)")
    return 0


def _print_finals(url: str, name: str, frame: Any) -> None:
    """The trials trained to a full budget (``archsearch train --trial N``): their proxy mIoU beside the trained one."""
    finals = final.results_by_source(url, name)
    if not finals:
        return
    proxy = dict(zip(frame["number"], frame.get("miou", [None] * len(frame)), strict=True))
    print("trained at a full budget (archsearch train):")
    for number, r in sorted(finals.items()):
        shown = proxy.get(number)
        was = f"proxy mIoU {100 * shown:.2f}%" if shown is not None and shown == shown else "proxy mIoU —"
        print(
            f"  trial {number}: {was}, trained best {100 * r.best_miou:.2f}% (iteration {r.best_iteration}), "
            f"last {100 * r.final_miou:.2f}% — final trial {r.number} of {name}{final.STUDY_SUFFIX}"
        )


def cmd_table(args: argparse.Namespace) -> int:

    spec = spec_mod.load(args.spec, args.set)
    if not spec.rows:
        raise ArchsearchError(f"{args.spec}: rows: the spec has no rows (an ablation table lists rows:)")
    url = search.storage_url(spec, args.storage)
    out = out_dir(args, spec, url)
    study = open_for_reading(spec, url)  # read-only: a report never writes to the study
    said = report.trust.statement(spec, study)
    table, paths = report.ablation_table(study, spec.rows, out, spec.name, statement=said)
    print(report.table_text(table, spec.name))
    _print_finals(url, spec.name, report.trials_frame(study))
    print("wrote " + ", ".join(str(p) for p in paths.values()) + " (ratios and every paper column in both)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:

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


def register(verb: AddVerb) -> None:
    """The parsers of ``run``, ``pareto``, ``table`` and ``calibrate``."""
    q = verb("run", "run (or resume) a study until it has --trials finished trials")
    spec_args(q)
    q.add_argument(
        "--trials",
        type=int_at_least(1),
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
    q.add_argument(
        "--workers",
        type=int_at_least(1),
        metavar="N",
        help="start N worker processes on the study, each on its device and its share of the cores, their output "
        "merged with each line prefixed [w0], [w1], …; Ctrl-C or SIGTERM stops them all "
        "(default: one per --devices entry, else 1: this process runs the trials)",
    )
    q.add_argument(
        "--devices",
        metavar="cpu|cuda:0,cuda:1",
        help="devices the workers take in turn (default: the spec's target.device: every visible GPU for cuda, "
        "and for auto when there is one, else cpu)",
    )
    q.add_argument(
        "--no-report",
        action="store_true",
        help="end without printing or writing the front or table, as the workers of --workers do (default: report)",
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
        type=int_at_least(2),
        default=6,
        metavar="K",
        help="architectures sampled from the space with search.seed; a rows spec uses its rows (default: 6)",
    )
    q.add_argument(
        "--seeds", type=int_at_least(2), default=2, metavar="K", help="seeds at each cheap fidelity (default: 2)"
    )
    q.add_argument(
        "--top-seeds", type=int_at_least(1), default=1, metavar="K", help="seeds at the top fidelity (default: 1)"
    )
    q.add_argument(
        "--top-k",
        type=int_at_least(1),
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
