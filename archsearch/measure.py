"""Cost of a network: parameters, multiply-adds, FLOPs and latency (DESIGN.md's method).

- :func:`count_params` — trainable and non-trainable parameters (``numel``) of the module.
- :func:`count_madds` — multiply-adds at an input size as the papers count them: multiply-accumulates of
  convolutions and linear layers only, counted as the ops execute in eval mode (so data-dependent paths, such as
  fast inference that computes only some regions, count what runs); a per-paper :data:`CONVENTIONS` entry
  leaves out layers a paper evidently did not count.
- :func:`count_flops` — fvcore's wider total (batch norm, up-sampling and pooling too), kept as ``flops``.
- :func:`latency` — eval mode, no autograd, warm-up, synchronised timing (CUDA events on GPU), median and p90
  of many repeats, at a set thread count; device name recorded.

Timing never overlaps other work on the same device of the same machine: :func:`latency` takes the device's
readers–writer lock (:mod:`archsearch.devicelock`) exclusive (:func:`device_turn`); training iterations and
evaluation batches take it shared, one at a time (:func:`work_turn`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from archsearch.devicelock import DeviceLock

log = logging.getLogger(__name__)


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model`` (every tensor in ``model.parameters()``)."""
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
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
        with _eval_mode(model), torch.no_grad(), counter:
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
    builders (at 1024×2048 over ``count_madds``: +4.8% on NDNet45, +3.5% on Fast-SCNN, +3.0% on SPSSN, +1.9% on ICNet, +0.4% to
    +0.8% on the ResNet-50 FCNs)."""
    from fvcore.nn import FlopCountAnalysis

    x = _zeros_input(model, input_size)
    with _eval_mode(model), torch.no_grad():
        analysis = FlopCountAnalysis(model, x)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        return int(analysis.total())


@dataclass(frozen=True)
class Latency:
    """Result of :func:`latency`: milliseconds per forward pass."""

    median_ms: float
    p90_ms: float
    repeats: int
    device: str
    threads: int
    input_size: tuple[int, ...]
    dtype: str
    memory_format: str = "nchw"

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d


def resolve_device(device: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        from archsearch.errors import ArchsearchError

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
    return f"{device_model(device)} ({torch.get_num_threads() if threads is None else threads} threads)"


def device_id(device: torch.device) -> str:
    """``cpu`` or ``cuda:N`` (the current CUDA device when ``device`` names none): the device's lock name."""
    if device.type == "cuda":
        index = device.index if device.index is not None else (torch.cuda.current_device() if torch.cuda.is_available() else 0)
        return f"cuda:{index}"
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


@contextlib.contextmanager
def _num_threads(threads: int) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block, the caller's count restored after it."""
    caller = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(caller)


def p90(times: Sequence[float]) -> float:
    """The 90th percentile of timings: the sample at rank round(0.9·(n − 1)) of the sorted list."""
    ordered = sorted(times)
    return float(ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))])


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_MEMORY_FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


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
) -> Latency:
    """Time ``model`` on ``device``: eval mode, no autograd, ``warmup`` untimed passes, then ``repeats``
    synchronised timed passes; median and 90th percentile in milliseconds.

    ``dtype`` float16/bfloat16 runs under autocast (CUDA). ``memory_format`` ``channels_last`` converts the
    model and input to NHWC (often faster on CPUs for depth-wise convolutions and pooling). ``threads`` (default:
    torch's current count) is set with ``torch.set_num_threads`` for the timing and restored afterwards.
    ``lock`` takes the device's exclusive turn (:func:`device_turn`), so that no other worker trains, evaluates
    or times on the device meanwhile.
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}; allowed: {', '.join(_DTYPES)}")
    if memory_format not in _MEMORY_FORMATS:
        raise ValueError(f"memory_format {memory_format!r}; allowed: {', '.join(_MEMORY_FORMATS)}")
    threads = torch.get_num_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads {threads}; allowed: an integer >= 1")
    model = model.to(dev, memory_format=_MEMORY_FORMATS[memory_format])
    x = torch.randn(*input_size, device=dev).to(memory_format=_MEMORY_FORMATS[memory_format])
    autocast = (
        torch.autocast(dev.type, dtype=_DTYPES[dtype]) if dtype != "float32" else contextlib.nullcontext()
    )
    times: list[float] = []
    turn = device_turn(dev) if lock else contextlib.nullcontext()
    with _eval_mode(model), torch.inference_mode(), autocast, turn, _num_threads(threads):
        for _ in range(warmup):
            model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(x)
                end.record()
                torch.cuda.synchronize(dev)
                times.append(start.elapsed_time(end))
        else:
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1000.0)
    if memory_format != "nchw":
        model.to(memory_format=torch.contiguous_format)
    return Latency(
        median_ms=float(statistics.median(times)),
        p90_ms=p90(times),
        repeats=repeats,
        device=device_name(dev, threads),
        threads=threads,
        input_size=tuple(int(v) for v in input_size),
        dtype=dtype,
        memory_format=memory_format,
    )
