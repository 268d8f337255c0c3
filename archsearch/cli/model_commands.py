"""Commands about one model, with no study: ``profile`` (its cost under the latency protocol), ``builders`` (every
builder, its knobs and paper variants) and ``schema`` (the JSON schema of a spec file)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from archsearch import builders
from archsearch.builders.registry import allowed_values
from archsearch.cli.arguments import AddVerb, device_option, fraction, int_at_least, parse_input, positive_float
from archsearch.cost import device_name, profile, resolve_device, runtimes
from archsearch.cost.runtimes import RUNTIMES
from archsearch.spec import json_schema, parse_assignment
from archsearch.util import files
from archsearch.util.errors import ArchsearchError
from archsearch.util.formatting import fmt_ms, fmt_num, text_table


def _knob_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``--set KNOB=VALUE`` items of ``profile`` as knob values (:func:`archsearch.spec.parse_assignment`)."""

    return dict(parse_assignment(item, example="expansion=2") for item in items)


def _profile_runtimes(choice: str) -> list[str]:

    return (
        [r for r in runtimes.RUNTIMES if r != "tensorrt" or runtimes.unavailable(r) is None]
        if choice == "all"
        else [choice]
    )


def cmd_profile(args: argparse.Namespace) -> int:

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


def cmd_builders(args: argparse.Namespace) -> int:

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


def register(verb: AddVerb) -> None:
    """The parsers of ``profile``, ``builders`` and ``schema``."""

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
        type=parse_input,
        default=(1, 3, 1024, 2048),
        metavar="N,3,H,W",
        help="input size for multiply-adds and latency (default: 1,3,1024,2048)",
    )
    q.add_argument(
        "--device",
        default="auto",
        type=device_option,
        metavar="{auto,cpu,cuda,cuda:N}",
        help="device to count and time on; auto: cuda when available (default: auto)",
    )
    q.add_argument("--classes", type=int_at_least(1), default=19, metavar="C", help="number of classes (default: 19)")
    q.add_argument(
        "--memory-format",
        default="nchw",
        choices=["nchw", "channels_last", "auto"],
        help="tensor layout for timing; auto: channels_last on CUDA, nchw elsewhere (default: nchw)",
    )
    q.add_argument(
        "--repeats",
        type=int_at_least(1),
        default=10,
        metavar="N",
        help="fewest timed passes; more until the median's 95%% CI is within --rel-ci (default: 10)",
    )
    q.add_argument("--warmup", type=int_at_least(0), default=3, metavar="N", help="untimed passes first (default: 3)")
    q.add_argument(
        "--runtime",
        default="eager",
        choices=[*RUNTIMES, "all"],
        help="runtime that runs the timed forward; all: every one available here (default: eager)",
    )
    q.add_argument(
        "--threads",
        type=int_at_least(1),
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
        type=fraction,
        default=0.02,
        metavar="F",
        help="repeat until the median's 95%% confidence half-width is within F of it (default: 0.02)",
    )
    q.add_argument(
        "--max-seconds",
        type=positive_float,
        default=60.0,
        metavar="S",
        help="most seconds of one runtime's timing, warm-up included (default: 60)",
    )
    q.set_defaults(fn=cmd_profile)

    q = verb("builders", "list builders, their knobs, allowed values, the papers' defaults and named variants")
    q.set_defaults(fn=cmd_builders)

    q = verb("schema", "print the JSON schema of a spec file (for editors), or write it with --out")
    q.add_argument("--out", metavar="FILE", help="write the schema to FILE (default: print it)")
    q.set_defaults(fn=cmd_schema)
