"""Cost of a network: parameters, multiply-adds, FLOPs and latency (DESIGN.md's method).

- :func:`count_params` — trainable and non-trainable parameters (``numel``) of the module.
- :func:`count_madds` — multiply-adds at an input size as the papers count them: multiply-accumulates of
  convolutions and linear layers only, counted as the ops execute in eval mode (so data-dependent paths, such as
  fast inference that computes only some regions, count what runs); a per-paper :data:`CONVENTIONS` entry
  leaves out layers a paper evidently did not count.
- :func:`count_flops` — fvcore's wider total (batch norm, up-sampling and pooling too), kept as ``flops``.
- :func:`latency` — the latency protocol (README, "Latency protocol"): eval mode, no autograd, batch norm folded
  into the convolutions before it (:func:`fold_bn`), the logits up-sampled to the input size in the timed
  forward of every builder (:class:`TimedForward`), warm-up, synchronised timing (the GPU synchronised after
  each pass) at a set thread count, repeats until the 95% confidence interval of the median is within ``rel_ci``
  of it (bounded by ``max_seconds``); median, p90, repeats and the interval's half-width recorded with the
  device's name.
- :func:`time_calls` — that repeat loop for any callable (the deployment runtimes of :mod:`archsearch.runtimes`
  use it); :func:`interleaved` — round-robin comparison of several callables, which every benchmark uses.

Timing never overlaps other work on the same device of the same machine: :func:`latency` takes the device's
readers–writer lock (:mod:`archsearch.devicelock`) exclusive (:func:`device_turn`); training iterations and
evaluation batches take it shared, one at a time (:func:`work_turn`).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import ctypes
import functools
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from archsearch.util.devicelock import DeviceLock

log = logging.getLogger(__name__)


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model`` (every tensor in ``model.parameters()``)."""
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block, its train/eval mode restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class Convention:
    """How one paper counts multiply-adds: which marked modules (their ``cost_role``) it leaves out."""

    name: str
    excludes: frozenset[str]
    doc: str


#: Attribute a builder sets on a module class (or instance) to let a convention recognise it.
COST_ROLE = "cost_role"

#: name → convention. Every convention counts multiply-accumulates of convolutions and matrix products only.
CONVENTIONS: dict[str, Convention] = {
    c.name: c
    for c in (
        Convention(
            "conv_linear",
            frozenset(),
            "every convolution (incl. transposed, grouped, depth-wise) and linear layer / matrix product, one per "
            "multiply-accumulate; no batch norm, activations, pooling, up-sampling or element-wise sums",
        ),
        Convention(
            "wu2017",
            frozenset({"projection_shortcut"}),
            "conv_linear without the projection-shortcut 1×1 convolutions of the ResNet-50s (Wu et al. 2017 "
            "Tables 1–5 are reproduced within 1% only when these four per backbone are left out)",
        ),
    )
}

# aten ops of torch.utils.flop_counter that are convolutions or matrix products (FLOPs = 2 · MACs for each).
_MAC_OPS = frozenset(
    getattr(torch.ops.aten, name)
    for name in (
        "convolution",
        "_convolution",
        "cudnn_convolution",
        "_slow_conv2d_forward",
        "convolution_overrideable",
        "mm",
        "addmm",
        "bmm",
        "baddbmm",
    )
)


def resolve_convention(name: str) -> Convention:
    """The registered convention ``name``; ``ValueError`` naming the allowed ones otherwise."""
    if name not in CONVENTIONS:
        raise ValueError(f"madds convention {name!r}; allowed: {', '.join(CONVENTIONS)}")
    return CONVENTIONS[name]


def _zeros_input(model: nn.Module, input_size: Sequence[int]) -> torch.Tensor:
    device = next(iter(model.parameters()), torch.empty(0)).device
    return torch.zeros(*input_size, device=device)


def count_madds(
    model: nn.Module, input_size: Sequence[int] = (1, 3, 1024, 2048), *, convention: str = "conv_linear"
) -> int:
    """Multiply-adds of one eval-mode forward pass at ``input_size`` (N, C, H, W), as the papers count them.

    One per multiply-accumulate of a convolution (transposed, grouped and depth-wise included) or a linear layer /
    matrix product; nothing else — batch norm, activations, pooling, bilinear up-sampling and element-wise sums
    are free, as in the papers' "multiply-adds" (fvcore's wider total is :func:`count_flops`). The ops are
    counted as they execute (``torch.utils.flop_counter.FlopCounterMode``, FLOPs / 2), so data-dependent paths
    such as Wu et al.'s fast inference, which runs only some region crops, count what actually runs. Bias adds
    are not counted.

    ``convention`` (:data:`CONVENTIONS`) leaves out the modules whose ``cost_role`` it names: ``wu2017`` drops
    the projection shortcuts of the ResNet-50s (``resnet.ProjectionShortcut``), the reading under which Wu et
    al.'s Tables 1–5 match (README, "Cost counting").
    """
    from torch.utils.flop_counter import FlopCounterMode

    excluded = resolve_convention(convention).excludes
    x = _zeros_input(model, input_size)
    counter = FlopCounterMode(display=False)

    def flops_so_far() -> int:
        return sum(v for op, v in counter.get_flop_counts().get("Global", {}).items() if op in _MAC_OPS)

    left_out = 0
    starts: dict[int, int] = {}

    def before(m: nn.Module, _inputs: object) -> None:
        starts[id(m)] = flops_so_far()

    def after(m: nn.Module, _inputs: object, _output: object) -> None:
        nonlocal left_out
        left_out += flops_so_far() - starts.pop(id(m))

    handles = []
    for module in model.modules():
        if getattr(module, COST_ROLE, None) in excluded:
            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        with eval_mode(model), torch.no_grad(), counter:
            model(x)
        total = flops_so_far()
    finally:
        for h in handles:
            h.remove()
    return (total - left_out) // 2  # torch counts 2 FLOPs per multiply-accumulate


def count_flops(model: nn.Module, input_size: Sequence[int] = (1, 3, 1024, 2048)) -> int:
    """fvcore's total of one eval-mode forward pass at ``input_size`` (its JIT trace): the convolutions and
    matrix products of :func:`count_madds` plus what fvcore also counts — batch norm, bilinear up-sampling,
    adaptive pooling and its other handled ops. Kept on the trial record as ``flops``; it is not comparable across
    builders (at 1024×2048 over ``count_madds``: +4.8% on NDNet45, +3.5% on Fast-SCNN, +3.0% on SPSSN, +1.9% on
    ICNet, +0.4% to +0.8% on the ResNet-50 FCNs)."""
    from fvcore.nn import FlopCountAnalysis

    x = _zeros_input(model, input_size)
    with eval_mode(model), torch.no_grad():
        analysis = FlopCountAnalysis(model, x)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        return int(analysis.total())


@dataclass(frozen=True)
class Latency:
    """Result of :func:`latency`: milliseconds per forward pass.

    ``half_width_ms`` is half the width of the 95% confidence interval of the median (:func:`median_ci`);
    ``runtime`` the software that ran the forward (``eager``, ``compile``, ``onnxruntime``, ``openvino``,
    ``tensorrt``) and ``runtime_version`` its version; ``fold_bn`` whether batch norm was folded first."""

    median_ms: float
    p90_ms: float
    repeats: int
    device: str
    threads: int
    input_size: tuple[int, ...]
    dtype: str
    memory_format: str = "nchw"
    half_width_ms: float = math.nan
    runtime: str = "eager"
    runtime_version: str = ""
    fold_bn: bool = False

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d


def resolve_device(device: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        from archsearch.util.errors import ArchsearchError

        raise ArchsearchError("target.device: 'cuda' was asked for but no CUDA device is available; allowed: auto, cpu")
    return torch.device(device)


def device_model(device: torch.device) -> str:
    """The device's model: the GPU's name, or the CPU's ``model name`` from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return name


def device_name(device: torch.device, threads: int | None = None) -> str:
    """A human-readable name of the device: GPU model, or the CPU model and thread count (default: torch's)."""
    if device.type == "cuda":
        return device_model(device)
    n = torch.get_num_threads() if threads is None else threads
    return f"{device_model(device)} ({n} thread{'' if n == 1 else 's'})"


def device_id(device: torch.device) -> str:
    """``cpu`` or ``cuda:N`` (the current CUDA device when ``device`` names none): the device's lock name. N is
    the physical GPU: under ``CUDA_VISIBLE_DEVICES=2,3`` this process's cuda:0 is ``cuda:2``, so that workers
    that each see their own GPU as cuda:0 do not take turns with each other, and two that see one GPU do."""
    if device.type == "cuda":
        index = (
            device.index
            if device.index is not None
            else (torch.cuda.current_device() if torch.cuda.is_available() else 0)
        )
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        return f"cuda:{visible[index]}" if index < len(visible) else f"cuda:{index}"
    return device.type


def device_turn(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Exclusive turn on ``device`` for timing: no training, evaluation or other timing runs on it meanwhile."""
    return DeviceLock(device_id(device)).exclusive()


@contextlib.contextmanager
def work_turn(device: torch.device | str) -> Iterator[None]:
    """Shared turn on ``device`` for one training iteration or evaluation batch; waits while a timer measures.

    On CUDA the turn ends after the device has finished the work queued in it (a synchronisation), so no
    kernel of the iteration runs into a timing. ``ARCHSEARCH_NO_TRAIN_LOCK=1`` turns the turn off (only for
    the contrast in benchmarks/concurrent_timing.py).
    """
    dev = torch.device(device)
    if os.environ.get("ARCHSEARCH_NO_TRAIN_LOCK") == "1":
        yield
        return
    with DeviceLock(device_id(dev)).shared():
        yield
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)


def thread_count(threads: int) -> int:
    """``threads`` as an int; ValueError (one line, the allowed values) below 1."""
    if int(threads) < 1:
        raise ValueError(f"threads {threads}; allowed: an integer >= 1")
    return int(threads)


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block, the caller's count restored after it; None leaves
    the count as it is. ValueError (:func:`thread_count`) before the block when ``threads`` is below 1."""
    if threads is None:
        yield
        return
    threads = thread_count(threads)
    caller = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(caller)


def p90(times: Sequence[float]) -> float:
    """The 90th percentile of timings: the sample at rank round(0.9·(n − 1)) of the sorted list."""
    ordered = sorted(times)
    return float(ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))])


def median_ci(times: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median of ``times``: the order statistics ``x(l)`` and
    ``x(n+1−l)`` with ``l`` the largest rank such that a Binomial(n, ½) count lies in ``[l, n−l]`` with
    probability ≥ ``confidence``. With fewer than 6 samples no such interval exists at 95%; the whole range is
    returned (its coverage is below 95%)."""
    from scipy.stats import binom

    ordered = sorted(times)
    n = len(ordered)
    if n == 0:
        raise ValueError("median_ci of no samples")
    # P(j ≤ K ≤ n−j) = 1 − 2·P(K ≤ j−1) ≥ confidence  ⇔  P(K ≤ j−1) ≤ (1 − confidence)/2
    j = int(binom.ppf((1 - confidence) / 2, n, 0.5))  # smallest k with cdf(k) ≥ α/2
    if binom.cdf(j, n, 0.5) > (1 - confidence) / 2:
        j -= 1
    rank = max(j + 1, 1)  # 1-based rank of the lower bound: P(K ≤ rank−1) ≤ α/2
    rank = min(rank, (n + 1) // 2)
    return float(ordered[rank - 1]), float(ordered[n - rank])


def half_width(times: Sequence[float], confidence: float = 0.95) -> float:
    """Half the width of :func:`median_ci`; infinite when the samples are too few for an interval at
    ``confidence`` (fewer than 6 at 95%), so that a single slow pass never reads as a precise one."""
    from scipy.stats import binom

    if 2 * binom.cdf(0, len(times), 0.5) > 1 - confidence:
        return math.inf
    lo, hi = median_ci(times, confidence)
    return (hi - lo) / 2


#: Fewest timed passes of the adaptive protocol; ``max_seconds`` can stop it earlier.
MIN_REPEATS = 10
#: Most timed passes of the adaptive protocol (a guard against a timer that never converges on a fast model).
MAX_REPEATS = 10_000


#: glibc ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


@functools.cache
def keep_freed_memory() -> bool:
    """Make this process's allocator keep freed memory for reuse, as a caching allocator does (jemalloc or
    tcmalloc, which PyTorch's CPU performance guides recommend; ONNX Runtime's and OpenVINO's memory arenas).

    glibc's malloc maps every large block (a feature map at 1024×2048) fresh from the kernel and unmaps it when
    freed, so each forward pass of eager PyTorch page-faults its activations in again: measured on NDNet45 at
    1024×2048 on one thread, 4.4 million page faults and 40% of the latency in the kernel, and a spread between
    calls that no number of repeats averages away. With ``M_MMAP_MAX`` 0 and the largest ``M_TRIM_THRESHOLD``,
    large blocks come from the heap and stay there: the process keeps its peak memory instead. Applied once, by
    every timing (:func:`time_calls`, :func:`interleaved`); True where it took effect (Linux with glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl): no mallopt to call
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def time_calls(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    repeats: int = MIN_REPEATS,
    rel_ci: float | None = None,
    max_seconds: float | None = None,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Milliseconds of timed calls of ``fn`` after ``warmup`` untimed ones.

    With ``rel_ci`` None: exactly ``repeats`` timed calls. With ``rel_ci`` (e.g. 0.02): at least ``repeats``
    calls, then more until the 95% confidence half-width of the median is at most ``rel_ci`` × the median.
    ``max_seconds`` bounds the whole loop (warm-up included): once spent, no further call starts (at least one
    timed call runs). ``sync`` is called after each call inside the timed span (e.g. ``torch.cuda.synchronize``).
    Freed memory is kept for reuse (:func:`keep_freed_memory`).
    """
    keep_freed_memory()
    start = clock()

    def spent() -> bool:
        return max_seconds is not None and clock() - start >= max_seconds

    for _ in range(warmup):
        if spent():
            break
        fn()
        if sync is not None:
            sync()
    times: list[float] = []
    while True:
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        times.append((clock() - t0) * 1000.0)
        n = len(times)
        if n >= MAX_REPEATS or spent():
            break
        if n < repeats:
            continue
        if rel_ci is None or half_width(times) <= rel_ci * statistics.median(times):
            break
    return times


_K = TypeVar("_K", bound=Hashable)


def interleaved(
    variants: Mapping[_K, Callable[[], object]],
    rounds: int,
    *,
    warmup: int = 1,
    rel_ci: float | None = None,
    max_seconds: float | None = None,
    min_rounds: int = MIN_REPEATS,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[_K, list[float]]:
    """Milliseconds of calls of each variant (by its key: a name, or any hashable such as a tuple), interleaved:
    round r calls every variant once, in an order rotated by r, so that a drift of the machine's load spreads over
    all variants alike instead of landing on whichever ran last. ``warmup`` untimed calls of each variant come
    first.

    ``rounds`` rounds; with ``rel_ci`` at most ``rounds``: a variant leaves the rotation once it has
    ``min_rounds`` samples and its median's 95% confidence half-width is within ``rel_ci`` of the median, or
    once its timed calls add up to ``max_seconds``; the rest go on. Freed memory is kept for reuse
    (:func:`keep_freed_memory`)."""
    keep_freed_memory()
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[_K, list[float]] = {name: [] for name in names}
    active = list(names)
    for r in range(rounds):
        if not active:
            break
        k = r % len(active)
        for name in active[k:] + active[:k]:
            t0 = clock()
            variants[name]()
            times[name].append((clock() - t0) * 1000.0)
        if rel_ci is not None or max_seconds is not None:
            done = {
                name
                for name in active
                if (max_seconds is not None and sum(times[name]) >= 1000.0 * max_seconds)
                or (
                    rel_ci is not None
                    and len(times[name]) >= min_rounds
                    and half_width(times[name]) <= rel_ci * statistics.median(times[name])
                )
            }
            active = [name for name in active if name not in done]
    return times


class TimedForward(nn.Module):
    """What is timed: ``model``'s main logits (a ``SegOutput``'s ``.logits``) up-sampled bilinearly
    (``align_corners=False``) to the input's size when they are smaller — the one rule for every builder, so a
    builder that up-samples inside its forward (ICNet, PSPNet) and one that leaves it to the caller (NDNet,
    Fast-SCNN, the FCNs) pay the same final up-sampling."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        logits = out.logits if hasattr(out, "logits") else out
        if logits.dim() == 4 and tuple(logits.shape[-2:]) != tuple(x.shape[-2:]):
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _UseCounter(TorchFunctionMode):
    """Counts, per tensor id, the torch calls that take the tensor and return a tensor (so metadata reads such
    as ``x.dim()`` or ``x.shape`` do not count as uses)."""

    def __init__(self, watched: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.watched = watched
        self.uses: collections.Counter[int] = collections.Counter()

    def __torch_function__(
        self,
        func: Callable[..., object],
        types: Sequence[type],
        args: Sequence[object] = (),
        kwargs: dict[str, object] | None = None,
    ) -> object:
        result = func(*args, **(kwargs or {}))
        if any(isinstance(v, torch.Tensor) for v in tree_flatten(result)[0]):
            for v in tree_flatten((args, kwargs or {}))[0]:
                if isinstance(v, torch.Tensor) and id(v) in self.watched:
                    self.uses[id(v)] += 1
        return result


def _conv_bn_pairs(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """(conv, batch norm) module names where, in one eval forward on ``probe``, the batch norm's input is the
    convolution's output and nothing else uses that output, and each module runs exactly once."""
    names = {id(m): n for n, m in model.named_modules()}
    calls: collections.Counter[str] = collections.Counter()
    produced: dict[int, torch.Tensor] = {}  # kept alive so ids are not reused during the pass
    producer: dict[int, str] = {}
    fed: dict[str, int] = {}  # bn name → id of its input

    def conv_hook(m: nn.Module, _i: object, out: torch.Tensor) -> None:
        calls[names[id(m)]] += 1
        if isinstance(out, torch.Tensor):
            produced[id(out)] = out
            producer[id(out)] = names[id(m)]

    def bn_hook(m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        calls[names[id(m)]] += 1
        fed[names[id(m)]] = id(inputs[0])

    handles = []
    for m in model.modules():
        if isinstance(m, _CONVS):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, _BNS):
            handles.append(m.register_forward_pre_hook(bn_hook))
    counter = _UseCounter(produced)
    try:
        with torch.no_grad(), counter:
            model(probe)
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for bn, tid in fed.items():
        conv = producer.get(tid)
        if conv is not None and calls[conv] == 1 and calls[bn] == 1 and counter.uses[tid] == 1:
            pairs.append((conv, bn))
    return pairs


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def probe_size(input_size: Sequence[int]) -> tuple[int, int, int, int]:
    """A small input of the same aspect for :func:`fold_bn`'s probe: ``input_size`` itself up to 256×512, else
    an eighth of each side rounded down to a multiple of 32 (1024×2048 → 128×256), batch 1."""
    _, c, h, w = (int(v) for v in input_size)
    if h * w <= 256 * 512:
        return (1, c, h, w)
    return (1, c, max(32, h // 8 // 32 * 32), max(32, w // 8 // 32 * 32))


def fold_bn(model: nn.Module, probe_size: Sequence[int] = (1, 3, 64, 128), *, atol: float = 1e-4) -> nn.Module:
    """An eval-mode deep copy of ``model`` with every batch norm that directly follows a convolution folded into
    it (``torch.nn.utils.fusion.fuse_conv_bn_eval``; the batch norm becomes ``nn.Identity``), as a deployment
    toolchain does and SPSSNet's Sec. 5.3 times. The pairs are found by running ``model`` once on a ``probe_size``
    input (any builder, data-dependent forwards included): a batch norm is folded only when its input is a
    convolution's output that nothing else uses, and both run once. The copy's output on the probe is checked
    against the original's (within ``atol`` × the output's largest magnitude, at least ``atol``); a
    disagreement is a ``RuntimeError``. ``model`` itself is left unchanged."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    device = next(iter(model.parameters()), torch.empty(0)).device
    folded = copy.deepcopy(model).eval()
    probe = torch.randn(*probe_size, generator=torch.Generator().manual_seed(0)).to(device)
    for conv_name, bn_name in _conv_bn_pairs(folded, probe):
        conv = folded.get_submodule(conv_name)
        bn = folded.get_submodule(bn_name)
        assert isinstance(conv, _CONVS) and isinstance(bn, _BNS)  # as _conv_bn_pairs found them
        transpose = isinstance(conv, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
        _set_submodule(folded, conv_name, fuse_conv_bn_eval(conv, bn, transpose=transpose))
        _set_submodule(folded, bn_name, nn.Identity())
    with eval_mode(model), torch.no_grad():
        ref = TimedForward(model)(probe)
        out = TimedForward(folded)(probe)
    diff = float((ref - out).abs().max())
    bound = atol * max(1.0, float(ref.abs().max()))
    if not diff <= bound:
        raise RuntimeError(f"folding batch norm changed the output by {diff:.3g} (> {bound:.3g})")
    return folded


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: ``memory_format`` name → torch memory format.
MEMORY_FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}

_M = TypeVar("_M", bound=nn.Module)


def to_memory_format(module: _M, memory_format: str) -> _M:
    """``module`` with its parameters and buffers in ``memory_format`` (a :data:`MEMORY_FORMATS` name)."""
    # nn.Module.to takes memory_format (documented, and parsed as Tensor.to's); its typed overloads omit it
    return module.to(memory_format=MEMORY_FORMATS[memory_format])  # type: ignore[call-overload]


def latency(
    model: nn.Module,
    input_size: Sequence[int] = (1, 3, 1024, 2048),
    device: str | torch.device = "cpu",
    *,
    warmup: int = 3,
    repeats: int = 10,
    dtype: str = "float32",
    memory_format: str = "nchw",
    threads: int | None = None,
    lock: bool = True,
    fold: bool = False,
    rel_ci: float | None = None,
    max_seconds: float | None = None,
) -> Latency:
    """Time ``model`` on ``device``: eval mode, no autograd, ``warmup`` untimed passes, then synchronised timed
    passes of its :class:`TimedForward` (logits up-sampled to the input size); median, 90th percentile and the
    95% half-width of the median in milliseconds.

    ``repeats`` timed passes, or with ``rel_ci`` at least ``repeats`` and then more until the median's 95%
    confidence half-width is within ``rel_ci`` of it, the whole bounded by ``max_seconds``
    (:func:`time_calls`). ``fold`` times :func:`fold_bn`'s copy (batch norm folded into the convolutions).

    ``dtype`` float16/bfloat16 runs under autocast (CUDA). ``memory_format`` ``channels_last`` converts the
    model and input to NHWC (often faster on CPUs for depth-wise convolutions and pooling). ``threads`` (default:
    torch's current count) is set with ``torch.set_num_threads`` for the timing and restored afterwards.
    ``lock`` takes the device's exclusive turn (:func:`device_turn`), so that no other worker trains, evaluates
    or times on the device meanwhile.
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}; allowed: {', '.join(_DTYPES)}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format {memory_format!r}; allowed: {', '.join(MEMORY_FORMATS)}")
    threads = thread_count(torch.get_num_threads() if threads is None else threads)
    if rel_ci is not None and not 0 < rel_ci < 1:
        raise ValueError(f"rel_ci {rel_ci}; allowed: a number in (0, 1)")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds {max_seconds}; allowed: a number > 0")
    model = model.to(dev)
    timed: nn.Module = TimedForward(fold_bn(model, probe_size(input_size)) if fold else model)
    timed = to_memory_format(timed.to(dev), memory_format)
    x = torch.randn(*input_size, device=dev).to(memory_format=MEMORY_FORMATS[memory_format])
    autocast = torch.autocast(dev.type, dtype=_DTYPES[dtype]) if dtype != "float32" else contextlib.nullcontext()
    turn = device_turn(dev) if lock else contextlib.nullcontext()
    with eval_mode(timed), torch.inference_mode(), autocast, turn, num_threads(threads):
        if dev.type == "cuda":
            # CUDA events around each pass would need their own loop; a host clock after a synchronisation
            # measures the same span
            times = time_calls(
                lambda: timed(x),
                warmup=warmup,
                repeats=repeats,
                rel_ci=rel_ci,
                max_seconds=max_seconds,
                sync=lambda: torch.cuda.synchronize(dev),
            )
        else:
            times = time_calls(lambda: timed(x), warmup=warmup, repeats=repeats, rel_ci=rel_ci, max_seconds=max_seconds)
    if memory_format != "nchw":
        to_memory_format(model, "nchw")
    return summarise(
        times,
        device=device_name(dev, threads),
        threads=threads,
        input_size=input_size,
        dtype=dtype,
        memory_format=memory_format,
        runtime="eager",
        runtime_version=f"torch {torch.__version__}",
        fold_bn=fold,
    )


def summarise(
    times: Sequence[float],
    *,
    device: str,
    threads: int,
    input_size: Sequence[int],
    dtype: str,
    memory_format: str = "nchw",
    runtime: str = "eager",
    runtime_version: str = "",
    fold_bn: bool = False,
) -> Latency:
    """A :class:`Latency` from timed passes (milliseconds) and the protocol's other fields."""
    return Latency(
        median_ms=float(statistics.median(times)),
        p90_ms=p90(times),
        repeats=len(times),
        device=device,
        threads=threads,
        input_size=tuple(int(v) for v in input_size),
        dtype=dtype,
        memory_format=memory_format,
        half_width_ms=half_width(times),
        runtime=runtime,
        runtime_version=runtime_version,
        fold_bn=fold_bn,
    )
