"""``archsearch train``: train one architecture of a study (a trial, a paper variant or knobs) at a full budget."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from archsearch import data, search
from archsearch import spec as spec_mod
from archsearch.cli.arguments import AddVerb, int_at_least, positive_float, spec_args
from archsearch.search import final
from archsearch.spec import parse_assignment
from archsearch.util.errors import ArchsearchError


def register(verb: AddVerb) -> None:
    """The ``train`` verb: SPEC with the study options, what to train, its budget."""
    q = verb("train", "train one architecture (a trial, a paper variant or knobs) at a full budget; resumable")
    spec_args(q)
    positive_int = int_at_least(1)
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--trial",
        type=int,
        metavar="N",
        help="the architecture of trial N of the study (default: none; one of --trial, --variant, --knobs)",
    )
    what.add_argument("--variant", metavar="NAME", help="a paper's named variant, e.g. ndnet.ndnet45 (default: none)")
    what.add_argument(
        "--knobs",
        nargs="+",
        metavar="KNOB=VALUE",
        help="knobs of the spec's builder, the rest its fixed knobs (default: none)",
    )
    budget = q.add_mutually_exclusive_group(required=True)
    budget.add_argument(
        "--iterations",
        type=positive_int,
        metavar="N",
        help="training iterations (default: none; one of --iterations, --epochs)",
    )
    budget.add_argument(
        "--epochs",
        type=positive_float,
        metavar="E",
        help="passes over the training split at proxy.batch (default: none)",
    )
    q.add_argument("--scale", type=positive_float, metavar="S", help="resolution × the data's (default: proxy.scale)")
    q.add_argument(
        "--eval-every",
        type=positive_int,
        metavar="K",
        help="score the validation split every K iterations (default: 10 times in all)",
    )
    q.add_argument(
        "--artifacts", metavar="DIR|URL", help="where the checkpoints go (default: the study's artifact store)"
    )
    q.add_argument(
        "--restart",
        action="store_true",
        help="start over instead of continuing an interrupted training (default: continue)",
    )
    q.set_defaults(fn=command)


def _architecture(args: argparse.Namespace, spec: Any, url: str) -> Any:

    if args.trial is not None:
        return final.of_trial(search.open_study(spec, url, create=False), args.trial)
    if args.variant:
        return final.of_variant(args.variant)
    if spec.multi or spec.builder is None:
        raise ArchsearchError(f"--knobs: {spec.path} searches several builders; use --trial or --variant")
    knobs = dict(parse_assignment(item, example="--knobs widths=[24,48,96]") for item in args.knobs)
    return final.Architecture(spec.builder, {**spec.fixed_of(spec.builder), **knobs}, "knobs " + " ".join(args.knobs))


def command(args: argparse.Namespace) -> int:

    spec = spec_mod.load(args.spec, args.set)
    if args.artifacts:
        spec = dataclasses.replace(spec, artifacts=args.artifacts)
    url = search.storage_url(spec, args.storage)
    arch = _architecture(args, spec, url)
    scale = args.scale if args.scale is not None else spec.proxy.scale
    train_images = len(data.load(spec.data, spec.data.train_split, scale)) if args.epochs is not None else 0
    budget = final.budget(
        spec, train_images, iterations=args.iterations, epochs=args.epochs, scale=args.scale, eval_every=args.eval_every
    )
    result = final.run(
        spec,
        arch,
        budget,
        url=url,
        artifacts=search.artifacts_dir(spec, url),
        progress=not args.quiet,
        restart=args.restart,
    )
    print(
        f"final training of {arch.source} ({arch.builder}, {budget.iterations} iterations at scale {budget.scale:g}): "
        f"best val mIoU {100 * result.best_miou:.2f}% at iteration {result.best_iteration}, "
        f"last {100 * result.final_miou:.2f}%; final trial {result.number} of study {spec.name}{final.STUDY_SUFFIX}"
    )
    return 0
