"""Where a proxy's noise comes from, and what common random numbers and weight averaging do to it (issue 18).

    python benchmarks/proxy_noise.py                      # ndnet, 6 architectures, 150x0.5, 3 × 3 seeds
    python benchmarks/proxy_noise.py --archs 2 --iterations 10 --init-seeds 2 --data-seeds 2 --val-images 8

On CamVid (train → val) every architecture is trained on a full grid of initialisation seeds × data seeds: the
initialisation seeds are the trial's own training seeds (``training.seeds.training_seeds``, from its knobs),
the data seeds (batch order and augmentation) those of common random numbers
(``training.seeds.data_seeds``), shared by every architecture. After the last step the raw weights and
exponential moving averages of the weights and batch-norm buffers (``training.averaging``, one per
``--ema``) are scored on every validation image; the per-image confusion matrices are kept, so the evaluation
noise is had by bootstrapping the validation images.

Reported per variant (raw, each EMA): the standard deviation of a single run's mIoU and its split into
initialisation, data order/augmentation and their interaction (two-way random-effects ANOVA of each
architecture's grid, pooled), the evaluation noise (bootstrap over validation images), and the standard
deviation of the difference between two architectures' runs — with common random numbers (both runs with the
same data seed) and without (different data seeds), pooled over the pairs of architectures.

Each run is stored in ``runs/proxy_noise/`` as it ends (a second call trains only what is missing; calls
running at the same time, one per core, share the grid: each claims a run before training it). The grid
grows in squares — every architecture's first run, then the 2 × 2 grid, then 3 × 3 — and the report covers the
largest square every architecture has (``--analyse-only`` reports it without training). Results go to
``benchmarks/results/proxy_noise_<ITERATIONS>x<SCALE>.{md,json}``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, camvid_sets, markdown_table, write_results
from archsearch import builders
from archsearch import data as data_mod
from archsearch.calibrate import architectures
from archsearch.data import transforms
from archsearch.spec import load
from archsearch.training import averaging, layout, scoring, seeds, train

BOOTSTRAP = 1000


def per_image_confusions(model: torch.nn.Module, dataset: object, num_classes: int, batch: int) -> np.ndarray:
    """``(N, C, C)`` confusion matrices, one per validation image (eval mode, no autograd)."""
    loader: torch.utils.data.DataLoader[tuple[torch.Tensor, torch.Tensor]] = torch.utils.data.DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch,
        shuffle=False,
    )
    fmt = layout.layout_of(model)
    mean, std = transforms.normalisation(dataset.info)  # type: ignore[attr-defined]
    out = []
    model.eval()
    with torch.no_grad():
        for raw_images, raw_labels in loader:
            images, labels = transforms.to_device(raw_images, raw_labels, torch.device("cpu"), mean, std)
            logits = builders.layers.logits_of(model(layout.to_layout(images, fmt)))
            pred = builders.layers.upsample_to(logits.float(), labels.shape[-2:]).argmax(dim=1)
            out += [scoring.confusion_matrix(p, t, num_classes).numpy() for p, t in zip(pred, labels, strict=True)]
    return np.stack(out).astype(np.int32)


def claim(path: Path) -> bool:
    """Whether this process trains the run stored at ``path``: a claim file beside it holds the pid of the process
    training it, so several processes on one store (one per core) share the grid; a dead process's claim is
    taken over."""
    mark = path.with_name(f".{path.stem}.claim")
    try:
        fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(mark.read_text()), 0)
            return False  # alive: its run
        except (OSError, ValueError):
            mark.unlink(missing_ok=True)
            return claim(path)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def miou(conf: np.ndarray) -> float:
    return float(scoring.scores(torch.from_numpy(conf.astype(np.int64))).miou)


def miou_of_many(confs: np.ndarray) -> np.ndarray:
    """mIoU of each ``(C, C)`` matrix of ``(B, C, C)`` (classes without union left out, as ``scoring``)."""
    tp = np.diagonal(confs, axis1=1, axis2=2).astype(float)
    union = confs.sum(axis=1) + confs.sum(axis=2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return np.nanmean(iou, axis=1)


def anova(grid: np.ndarray) -> dict[str, float]:
    """Variance components of an ``(I, J)`` grid (initialisation × data seed), two-way random effects without
    replication: initialisation, data and their interaction (the residual), each clipped at 0."""
    n_i, n_j = grid.shape
    mean = grid.mean()
    ms_i = n_j * ((grid.mean(axis=1) - mean) ** 2).sum() / (n_i - 1)
    ms_j = n_i * ((grid.mean(axis=0) - mean) ** 2).sum() / (n_j - 1)
    resid = grid - grid.mean(axis=1, keepdims=True) - grid.mean(axis=0, keepdims=True) + mean
    ms_r = (resid**2).sum() / ((n_i - 1) * (n_j - 1))
    return {"init": max(0.0, (ms_i - ms_r) / n_j), "data": max(0.0, (ms_j - ms_r) / n_i), "interaction": ms_r}


def pairwise(y: np.ndarray, data_ids: Sequence[int] | None = None) -> dict[str, float]:
    """Pooled standard deviation of run differences between two architectures, ``y`` ``(A, I, J)``: with common
    random numbers (the same data seed, every pair of initialisations) and without (different data seeds).
    ``data_ids`` names the data seed of each column (default: all different), so a resample that repeats a
    column pairs it as the same seed."""
    n_a, _, n_j = y.shape
    ids = list(range(n_j)) if data_ids is None else list(data_ids)
    same = np.equal.outer(ids, ids)  # (j, m): the two runs drew the same data seed
    crn_var, ind_var = [], []
    for a, b in itertools.combinations(range(n_a), 2):
        diff = y[a][:, None, :, None] - y[b][None, :, None, :]  # (i, k, j, m)
        crn_var.append(np.var(diff[:, :, same], ddof=1))
        ind_var.append(np.var(diff[:, :, ~same], ddof=1))
    return {"crn": float(np.sqrt(np.mean(crn_var))), "independent": float(np.sqrt(np.mean(ind_var)))}


def ratio_intervals(ys: dict[str, np.ndarray], draws: int = 1000, seed: int = 0) -> dict[tuple[str, bool], list[float]]:
    """95% intervals of each variant's pairwise SD (with and without common random numbers) over that of the raw
    weights without them, from resampling the initialisation and data seeds of the grid with replacement (the
    architectures stay: the ratio is about these architectures' noise)."""
    rng = np.random.default_rng(seed)
    n_i, n_j = next(iter(ys.values())).shape[1:]
    got: dict[tuple[str, bool], list[float]] = {(v, crn): [] for v in ys for crn in (False, True)}
    while len(got[("raw", True)]) < draws:
        ii, jj = rng.integers(0, n_i, size=(n_i,)), rng.integers(0, n_j, size=(n_j,))
        ids = [int(j) for j in jj]
        if len(set(ids)) < 2:  # no pair of different data seeds to compare with
            continue
        pws = {v: pairwise(y[:, ii][:, :, jj], ids) for v, y in ys.items()}
        base = pws["raw"]["independent"]
        for v, pw in pws.items():
            got[(v, False)].append(pw["independent"] / base)
            got[(v, True)].append(pw["crn"] / base)
    return {k: np.quantile(r, [0.025, 0.975]).tolist() for k, r in got.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--space", default="ndnet")
    p.add_argument("--archs", type=int, default=6)
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--scale", type=float, default=0.5)
    p.add_argument("--init-seeds", type=int, default=3)
    p.add_argument("--data-seeds", type=int, default=3)
    p.add_argument("--ema", default="0.9,0.99", help="EMA decays to score beside the raw weights")
    p.add_argument("--val-images", type=int, default=None, help="the first N validation images (default all)")
    p.add_argument("--train-images", type=int, default=None)
    p.add_argument("--store", default="runs/proxy_noise")
    p.add_argument("--no-write", action="store_true", help="print only (a smoke run)")
    p.add_argument("--analyse-only", action="store_true", help="train nothing: report the runs stored so far")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.chdir(ROOT)
    decays = [float(d) for d in args.ema.split(",") if d]
    camvid = SHARED_DATA / "camvid"
    sets = [
        *camvid_sets(camvid, args.train_images, args.val_images),
        f"proxy.iterations={args.iterations}",
        f"proxy.scale={args.scale}",
        "proxy.common_random_numbers=true",
    ]
    spec = load(f"spaces/{args.space}.yaml", sets)
    archs = architectures(spec, args.archs)
    train_set = data_mod.load(spec.data, spec.data.train_split, spec.proxy.scale)
    val_set = data_mod.load_scoring(spec.data, spec.data.val_split, spec.proxy.scale)
    num_classes = int(val_set.info.num_classes)
    data_seeds = [int(s) for s in seeds.data_seeds(spec, args.data_seeds) if s is not None]
    store = ROOT / args.store / f"{args.space}_{args.iterations}x{args.scale:g}"
    store.mkdir(parents=True, exist_ok=True)
    variants = ["raw", *(f"ema{d:g}" for d in decays)]
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    inits, names = [], []
    for arch in archs:
        builder = arch.builder or spec.builder
        assert builder is not None
        names.append(builder)
        inits.append(seeds.training_seeds(seeds.seed_of(spec, arch.resolved, builder), args.init_seeds))
    # the grid in growing squares (every architecture's (0, 0), then each architecture's 2 × 2 square in turn, …):
    # an interrupted study still holds full square grids over some architectures
    cells = sorted(itertools.product(range(args.init_seeds), range(args.data_seeds)), key=lambda c: (max(c), c))
    order = [
        (a, i, j)
        for shell in range(max(args.init_seeds, args.data_seeds))
        for a in range(len(archs))
        for i, j in cells
        if max(i, j) == shell
    ]
    for a, i, j in [] if args.analyse_only else order:
        arch = archs[a]
        path = store / f"{arch.key}_{i}_{j}.npz"
        if path.exists() or not claim(path):
            continue
        init, dseed = inits[a][i], data_seeds[j]
        seeds.seed_everything(init)
        model = builders.build(names[a], num_classes, **arch.knobs)
        seeds.seed_everything(init)
        t0 = time.perf_counter()
        trainer = train.Trainer(model, train_set, spec.proxy, "cpu", seed=init, data_seed=dseed)
        emas = [averaging.ema(model, d) for d in decays]
        for _ in range(spec.proxy.iterations):
            trainer.advance(1)
            for e in emas:
                e.update_parameters(model)
        took = time.perf_counter() - t0
        nets = [model, *(e.module for e in emas)]
        got = {
            v: per_image_confusions(n, val_set, num_classes, spec.proxy.eval_batch)
            for v, n in zip(variants, nets, strict=True)
        }
        part = path.with_name(f".{path.stem}.part.npz")  # renamed when whole: a kill leaves no half file
        np.savez_compressed(part, seconds=np.array(took), **got)  # type: ignore[arg-type]
        part.replace(path)
        path.with_name(f".{path.stem}.claim").unlink(missing_ok=True)
        print(
            f"{arch.label} init {i} data {j}: {took:.0f} s, mIoU "
            + " ".join(f"{v} {100 * miou(c.sum(0)):.2f}" for v, c in got.items()),
            flush=True,
        )

    # the largest square grid that every architecture has, else that at least 3 have (those architectures only)
    def having(side: int) -> list[int]:
        return [
            a
            for a, arch in enumerate(archs)
            if all((store / f"{arch.key}_{i}_{j}.npz").exists() for i in range(side) for j in range(side))
        ]

    side = next((k for k in range(min(args.init_seeds, args.data_seeds), 1, -1) if len(having(k)) == len(archs)), 0)
    if not side:
        side = next((k for k in range(min(args.init_seeds, args.data_seeds), 1, -1) if len(having(k)) >= 3), 0)
    if side < 2:
        print(f"{store}: no 2 × 2 grid over 3 or more architectures yet", file=sys.stderr)
        return 1
    planned = len(archs)
    archs = [archs[a] for a in having(side)]
    args.init_seeds = args.data_seeds = side
    confs: dict[str, np.ndarray] = {}  # variant → (A, I, J, N, C, C)
    seconds: list[float] = []
    for a, arch in enumerate(archs):
        for i, j in itertools.product(range(side), range(side)):
            stored = np.load(store / f"{arch.key}_{i}_{j}.npz")
            seconds.append(float(stored["seconds"]))
            for v in variants:
                if v not in confs:
                    confs[v] = np.zeros((len(archs), side, side, *stored[v].shape), np.int32)
                confs[v][a, i, j] = stored[v]
    took_all = time.perf_counter() - t_start
    load_after = os.getloadavg()

    rng = np.random.default_rng(0)
    n_val = next(iter(confs.values())).shape[3]
    draws = rng.integers(0, n_val, size=(BOOTSTRAP, n_val))
    results: dict[str, dict[str, float]] = {}
    means: dict[str, list[float]] = {}
    ys: dict[str, np.ndarray] = {}
    for v, c in confs.items():
        y = 100 * miou_of_many(c.sum(axis=3).reshape(-1, num_classes, num_classes)).reshape(c.shape[:3])
        ys[v] = y
        comps = [anova(y[a]) for a in range(len(archs))]
        pooled = {k: float(np.sqrt(np.mean([cp[k] for cp in comps]))) for k in comps[0]}
        single = float(np.sqrt(np.mean([np.var(y[a].ravel(), ddof=1) for a in range(len(archs))])))
        # evaluation noise: the same run scored on bootstrap resamples of the validation images
        flat = c.reshape(-1, n_val, num_classes, num_classes)
        boot = np.stack([100 * miou_of_many(flat[r][draws].sum(axis=1)) for r in range(flat.shape[0])])  # (runs, B)
        eval_std = float(np.sqrt(np.mean(boot.var(axis=1, ddof=1))))
        boot = boot.reshape(*c.shape[:3], BOOTSTRAP)
        pair_eval = [
            float(np.var(boot[a, i, j] - boot[b, i, j], ddof=1))
            for a, b in itertools.combinations(range(len(archs)), 2)
            for i in range(args.init_seeds)
            for j in range(args.data_seeds)
        ]
        pw = pairwise(y)
        results[v] = {
            "mean_miou": float(y.mean()),
            "single_std": single,
            "init_std": pooled["init"],
            "data_std": pooled["data"],
            "interaction_std": pooled["interaction"],
            "eval_std": eval_std,
            "pair_eval_std": float(np.sqrt(np.mean(pair_eval))),
            "pair_std_independent": pw["independent"],
            "pair_std_crn": pw["crn"],
        }
        means[v] = [float(y[a].mean()) for a in range(len(archs))]
        results[v]["spread_of_arch_means"] = float(np.std(means[v], ddof=1))
    base = results["raw"]["pair_std_independent"]
    intervals = ratio_intervals(ys)
    for (v, crn), (lo, hi) in intervals.items():
        results[v][f"ratio_ci_{'crn' if crn else 'independent'}"] = [lo, hi]  # type: ignore[assignment]
    rows = []
    for v, r in results.items():
        for crn in (False, True):
            pair = r["pair_std_crn" if crn else "pair_std_independent"]
            rows.append(
                [
                    v,
                    "yes" if crn else "no",
                    f"{r['mean_miou']:.2f}",
                    f"{r['single_std']:.2f}",
                    f"{r['init_std']:.2f} / {r['data_std']:.2f} / {r['interaction_std']:.2f}",
                    f"{r['eval_std']:.2f}",
                    f"{pair:.2f}",
                    f"{pair / base:.2f} [{intervals[(v, crn)][0]:.2f}, {intervals[(v, crn)][1]:.2f}]"
                    if base > 0
                    else "—",
                    f"{r['spread_of_arch_means']:.2f}",
                ]
            )
    table = markdown_table(
        [
            "weights",
            "CRN",
            "mean mIoU %",
            "SD single run",
            "SD init / data / interaction",
            "SD eval (bootstrap)",
            "SD pairwise difference",
            "vs raw, no CRN [95% CI over seeds]",
            "SD of arch means",
        ],
        rows,
    )
    arch_rows = [[arch.label, *(f"{means[v][a]:.2f}" for v in variants)] for a, arch in enumerate(archs)]
    command = "python benchmarks/proxy_noise.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = (
        f"`{command}`: spaces/{args.space}.yaml on CamVid (train {len(train_set)} → val {n_val} images), "
        f"{len(archs)} architectures (of {planned} planned; those with the grid complete) × {args.init_seeds} "
        f"initialisation seeds × {args.data_seeds} data seeds at "
        f"{args.iterations}x{args.scale:g} (proxy defaults: {spec.proxy.memory_format} layout), 1 thread; "
        f"EMA decays {decays} (warm-up `min(d, (1+n)/(10+n))`). mIoU points. Median training "
        f"{statistics.median(seconds):.0f} s per run; this invocation {took_all / 60:.1f} min. Load average (1, 5, "
        f"15 min) at the start {[round(x, 2) for x in load_before]}, at the end {[round(x, 2) for x in load_after]} "
        f"on {os.cpu_count()} CPUs.\n\n"
        "SD single run: standard deviation of one run's mIoU about its architecture's mean (pooled); its split: "
        "two-way random-effects ANOVA per architecture (initialisation seed, data seed, interaction = residual). "
        "SD eval: the same run scored on bootstrap resamples of the validation images. SD pairwise difference: "
        "standard deviation of (run of A − run of B) about its mean, pooled over the pairs; CRN yes: both runs "
        "with the same data seed, no: different data seeds (as without common random numbers).\n\n"
        f"{table}\n\nMean mIoU per architecture (over its {args.init_seeds * args.data_seeds} runs):\n\n"
        + markdown_table(["architecture", *variants], arch_rows)
    )
    print(body)
    if not args.no_write:
        write_results(
            f"proxy_noise_{args.iterations}x{args.scale:g}",
            f"Proxy noise on CamVid: spaces/{args.space}.yaml at {args.iterations}x{args.scale:g}",
            body,
            {
                "command": command,
                "load_before": load_before,
                "load_after": load_after,
                "seconds": took_all,
                "results": results,
                "archs": [a.label for a in archs],
                "arch_means": means,
                "decays": decays,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
