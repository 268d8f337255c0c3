"""The measuring stages of benchmarks/gpu_check.py. Each runs in a process of its own (``gpu_check.py --child
STAGE``), so that the parent's time box can stop it and a crash (a sticky CUDA error, a segfault in a runtime)
ends that stage only; each writes one JSON line per finished item, so a stage that is stopped keeps what it
measured. A failing item is recorded with its error and the stage goes on to the next.

- ``train``: proxy training images/s of each builder with AMP on and off, NCHW and channels_last: the training
  loop as a trial runs it (:class:`archsearch.training.train.Trainer`: loader, host-to-device copy, augmentation,
  the loss check) beside a model-bound ceiling, the same kind of batches already on the device and only
  forward, backward and step in the loop — a loop well below its ceiling is starved by its data path;
- ``latency``: CUDA latency of each builder's paper default under the adaptive protocol
  (:func:`archsearch.cost.runtimes.latency`: warm-up, synchronised passes until the median's 95% half-width is
  within ``rel_ci``), batch norm folded, with the peak memory of the timing;
- ``runtimes``: TensorRT (:mod:`archsearch.cost.runtimes`) and ONNX Runtime's CUDA provider (I/O bound to
  device tensors, fallback to another provider refused) when importable.
"""

from __future__ import annotations

import gc
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from archsearch import builders, cost, data
from archsearch.cost import runtimes
from archsearch.spec import DataSpec, ProxySpec
from archsearch.training.train import Trainer, segmentation_loss

#: cheapest first, so that a spent time box cuts the costliest builders; any other registered builder follows
ORDER = ("fast_scnn", "ndnet", "icnet", "sharpmask_fcn", "sparse_two_column", "pspnet50")
#: fast inference (sparse_two_column's paper default) is data-dependent and cannot be exported
EXPORT_KNOBS: dict[str, dict[str, Any]] = {"sparse_two_column": {"inference": "classic"}}


@dataclass(frozen=True)
class Settings:
    """What every stage measures at: the full check on a GPU, or ``--smoke``'s tiny sizes on the CPU."""

    device: str
    smoke: bool
    builders: tuple[str, ...]
    input: tuple[int, int, int, int]  # latency input
    data_size: tuple[int, int]  # synthetic scenes' native size (Cityscapes: 1024×2048)
    proxy_scale: float
    batch: int
    train_images: int
    warmup_its: int
    timed_seconds: float  # timed training per measurement (iterations from the warm-up's pace)
    min_its: int
    max_its: int
    latency_repeats: int
    latency_seconds: float
    rel_ci: float
    cache_dir: str

    @classmethod
    def read(cls, path: Path) -> Settings:
        raw = json.loads(path.read_text())
        for key in ("builders", "input", "data_size"):
            raw[key] = tuple(raw[key])
        return cls(**raw)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))


Emit = Callable[[dict[str, Any]], None]


def emitter(path: Path) -> Emit:
    """Append one JSON line per record to ``path``, flushed at once."""

    def emit(record: dict[str, Any]) -> None:
        with path.open("a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")

    return emit


def ordered(names: list[str]) -> tuple[str, ...]:
    return tuple(sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)))


def error_text(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{exc.__class__.__name__}: {first[:300]}"


def _free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_mib(dev: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None


# ------------------------------------------------------------------------------------------------ training


def _iterations(s: Settings, seconds_per_it: float) -> int:
    """Timed iterations that take about ``timed_seconds`` at the warm-up's pace, within [min_its, max_its]."""
    if not seconds_per_it > 0:
        return s.max_its
    return max(s.min_its, min(s.max_its, math.ceil(s.timed_seconds / seconds_per_it)))


def _loop_rate(model: nn.Module, dataset: Any, proxy: ProxySpec, dev: torch.device, s: Settings) -> dict[str, Any]:
    """Images/s of the training loop itself, after ``warmup_its`` iterations (cuDNN's algorithm search, the
    loader's start)."""
    trainer = Trainer(model, dataset, proxy, dev, seed=0, iterations=s.warmup_its + s.max_its)
    pace = 0.0
    for _ in range(s.warmup_its):
        t0 = time.perf_counter()
        trainer.advance(1)  # synchronised at its end on CUDA
        pace = time.perf_counter() - t0
    n = _iterations(s, pace)
    result = trainer.advance(n)
    return {"images_per_s": result.images_per_s, "iterations": n, "final_loss": result.final_loss}


def _device_batches(
    dataset: Any, proxy: ProxySpec, dev: torch.device, memory_format: str, count: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches drawn and augmented as the loop draws them, kept on the device in ``memory_format``."""
    from archsearch.data.transforms import augment, normalisation, to_device

    gen = torch.Generator().manual_seed(1)
    info = dataset.info
    mean, std = normalisation(info)
    out = []
    for _ in range(count):
        pairs = [dataset[int(i)] for i in torch.randint(len(dataset), (proxy.batch,), generator=gen)]
        images, labels = to_device(  # the data set's uint8 items widened and normalised as the loop does it
            torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), dev, mean, std
        )
        images, labels = augment(
            images, labels, crop=proxy.crop, scale_range=proxy.scale_range, flip=proxy.flip, generator=gen
        )
        out.append((images.contiguous(memory_format=cost.MEMORY_FORMATS[memory_format]), labels))
    return out


def _ceiling_rate(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    proxy: ProxySpec,
    dev: torch.device,
    s: Settings,
    ignore_index: int,
) -> dict[str, Any]:
    """Images/s of forward, backward and step alone on batches already on the device: no loader, no copy, no
    augmentation, no host synchronisation inside the timed span (the loop's mixed precision: fp16 autocast and
    a GradScaler on CUDA when ``proxy.amp``)."""
    use_amp = proxy.amp and dev.type == "cuda"
    optimizer = torch.optim.SGD(model.parameters(), lr=proxy.lr * 0.01, momentum=proxy.momentum)
    scaler = torch.amp.GradScaler(dev.type, enabled=use_amp)
    model.train()

    def step(i: int) -> None:
        images, labels = batches[i % len(batches)]
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
            loss = segmentation_loss(model(images), labels, ignore_index)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    pace = 0.0
    for i in range(s.warmup_its):
        t0 = time.perf_counter()
        step(i)
        _sync(dev)
        pace = time.perf_counter() - t0
    n = _iterations(s, pace)
    t0 = time.perf_counter()
    for i in range(n):
        step(i)
    _sync(dev)
    seconds = time.perf_counter() - t0
    return {"images_per_s": n * proxy.batch / seconds, "iterations": n}


def stage_train(s: Settings, emit: Emit, deadline: float) -> None:
    dev = torch.device(s.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes within a measurement (issue 22, item 9)
    dspec = DataSpec(name="synthetic", train_images=s.train_images, size=s.data_size, cache_dir=s.cache_dir)
    t0 = time.perf_counter()
    dataset = data.load(dspec, dspec.train_split, s.proxy_scale)
    emit({"item": "data", "images": len(dataset), "size": list(dataset.size), "seconds": time.perf_counter() - t0})
    for name in s.builders:
        for amp in (False, True):
            for memory_format in ("nchw", "channels_last"):
                record: dict[str, Any] = {"builder": name, "amp": amp, "memory_format": memory_format}
                if time.monotonic() > deadline:
                    emit({**record, "skipped": "the stage's time box is spent"})
                    continue
                proxy = ProxySpec(batch=s.batch, scale=s.proxy_scale, amp=amp)
                record |= {"amp_used": amp and dev.type == "cuda", "batch": proxy.batch, "workers": proxy.workers}
                try:
                    model = cost.to_memory_format(builders.build(name, 19), memory_format)
                    _reset_peak(dev)
                    loop = _loop_rate(model, dataset, proxy, dev, s)
                    record |= {"loop_images_per_s": loop["images_per_s"], "loop_iterations": loop["iterations"]}
                    record["loop_peak_mib"] = _peak_mib(dev)
                    batches = _device_batches(dataset, proxy, dev, memory_format, count=4)
                    _reset_peak(dev)
                    ceiling = _ceiling_rate(model, batches, proxy, dev, s, dataset.info.ignore_index)
                    record |= {
                        "ceiling_images_per_s": ceiling["images_per_s"],
                        "ceiling_iterations": ceiling["iterations"],
                        "ceiling_peak_mib": _peak_mib(dev),
                        "loop_share": loop["images_per_s"] / ceiling["images_per_s"],
                    }
                except Exception as exc:  # noqa: BLE001 — recorded (out of memory, a builder's error) and go on
                    record["error"] = error_text(exc)
                finally:
                    model = batches = None  # type: ignore[assignment]
                    _free(dev)
                emit(record)


# ------------------------------------------------------------------------------------------------- latency


def stage_latency(s: Settings, emit: Emit, deadline: float) -> None:
    dev = torch.device(s.device)
    for name in s.builders:
        record: dict[str, Any] = {"builder": name, "input": list(s.input)}
        if time.monotonic() > deadline:
            emit({**record, "skipped": "the stage's time box is spent"})
            continue
        model = builders.build(name, 19).eval()
        for fold in (True, False):  # unfolded only when folding fails (issue 22, item 1: TF32)
            _reset_peak(dev)
            try:
                lat = runtimes.latency(
                    model,
                    s.input,
                    dev,
                    runtime="eager",
                    threads=1,
                    fold=fold,
                    repeats=s.latency_repeats,
                    rel_ci=s.rel_ci,
                    max_seconds=s.latency_seconds,
                )
            except Exception as exc:  # noqa: BLE001 — recorded, then timed without folding
                record["error" if fold else "error_unfolded"] = error_text(exc)
                continue
            record |= {
                "median_ms": lat.median_ms,
                "half_width_ms": lat.half_width_ms,
                "p90_ms": lat.p90_ms,
                "repeats": lat.repeats,
                "fold_bn": lat.fold_bn,
                "device": lat.device,
                "peak_mib": _peak_mib(dev),
            }
            break
        del model
        _free(dev)
        emit(record)


# ------------------------------------------------------------------------------------------------ runtimes


def ort_unavailable(dev: torch.device) -> str | None:
    """Why ONNX Runtime cannot run on ``dev``'s provider here (one line), or None (``--smoke``: the CPU
    provider stands in, so that the code path runs)."""
    if runtimes.missing(("onnx", "onnxscript", "onnxruntime")):
        return f"needs onnx, onnxscript and onnxruntime (onnxruntime-gpu for CUDA): {runtimes.EXTRA}"
    import onnxruntime as ort

    provider = "CUDAExecutionProvider" if dev.type == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no {provider} (install onnxruntime-gpu)"
    return None


def _ort_latency(model: nn.Module, s: Settings, dev: torch.device, onnx: Path) -> dict[str, Any]:
    """ONNX Runtime on ``dev``'s provider (CUDA; the CPU in ``--smoke``): the folded model exported from a CPU
    copy, input and output bound to device tensors (no host copies in the timed span), checked against eager
    PyTorch, timed under the latency protocol."""
    import numpy as np
    import onnxruntime as ort

    provider = "CUDAExecutionProvider" if dev.type == "cuda" else "CPUExecutionProvider"
    timed = cost.TimedForward(cost.fold_bn(model.cpu(), cost.probe_size(s.input))).eval()
    t0 = time.perf_counter()
    runtimes.export_onnx(timed, s.input, onnx)
    export_s = time.perf_counter() - t0
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx), opts, providers=[provider])
    used = session.get_providers()[0]
    if used != provider:
        raise RuntimeError(f"ONNX Runtime runs on {used}, not {provider}: not timed")
    x = torch.randn(*s.input, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = timed(x)
    xd = x.to(dev).contiguous()
    index = (dev.index or torch.cuda.current_device()) if dev.type == "cuda" else 0
    binding = session.io_binding()
    binding.bind_input(session.get_inputs()[0].name, dev.type, index, np.float32, list(xd.shape), xd.data_ptr())
    binding.bind_output(session.get_outputs()[0].name, dev.type, index)
    session.run_with_iobinding(binding)
    out = torch.from_numpy(binding.copy_outputs_to_cpu()[0])
    diff = float((out.float() - reference).abs().max())
    with cost.device_turn(dev):
        times = cost.time_calls(
            lambda: session.run_with_iobinding(binding),
            warmup=3,
            repeats=s.latency_repeats,
            rel_ci=s.rel_ci,
            max_seconds=s.latency_seconds,
            sync=(lambda: _sync(dev)),
        )
    lat = cost.summarise(times, device=cost.device_name(dev, 1), threads=1, input_size=s.input, dtype="float32")
    return {
        "median_ms": lat.median_ms,
        "half_width_ms": lat.half_width_ms,
        "p90_ms": lat.p90_ms,
        "repeats": lat.repeats,
        "provider": used,
        "version": f"onnxruntime {ort.__version__}",
        "max_abs_diff": diff,
        "export_s": export_s,
    }


def stage_runtimes(s: Settings, emit: Emit, deadline: float) -> None:
    dev = torch.device(s.device)
    reasons = {"tensorrt": runtimes.unavailable("tensorrt"), "onnxruntime-cuda": ort_unavailable(dev)}
    for runtime, reason in reasons.items():
        if reason is not None:
            emit({"runtime": runtime, "not_run": reason})
    chosen = [r for r, reason in reasons.items() if reason is None]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp_dir:
        tmp = Path(tmp_dir)
        for name in s.builders if chosen else ():
            for runtime in chosen:
                record: dict[str, Any] = {"builder": name, "runtime": runtime, "knobs": EXPORT_KNOBS.get(name, {})}
                if time.monotonic() > deadline:
                    emit({**record, "skipped": "the stage's time box is spent"})
                    continue
                model = builders.build(name, 19, **EXPORT_KNOBS.get(name, {})).eval()
                _reset_peak(dev)
                try:
                    if runtime == "tensorrt":
                        lat = runtimes.latency(
                            model,
                            s.input,
                            dev,
                            runtime="tensorrt",
                            threads=1,
                            repeats=s.latency_repeats,
                            rel_ci=s.rel_ci,
                            max_seconds=s.latency_seconds,
                            onnx_path=tmp / f"{name}-trt.onnx",
                        )
                        record |= {
                            "median_ms": lat.median_ms,
                            "half_width_ms": lat.half_width_ms,
                            "p90_ms": lat.p90_ms,
                            "repeats": lat.repeats,
                            "version": lat.runtime_version,
                        }
                    else:
                        record |= _ort_latency(model, s, dev, tmp / f"{name}.onnx")
                    record["peak_mib"] = _peak_mib(dev)
                except Exception as exc:  # noqa: BLE001 — recorded (export, engine build, mismatch) and go on
                    record["error"] = error_text(exc)
                del model
                _free(dev)
                emit(record)


STAGES: dict[str, Callable[[Settings, Emit, float], None]] = {
    "train": stage_train,
    "latency": stage_latency,
    "runtimes": stage_runtimes,
}


def run_child(stage: str, settings: Path, items: Path, seconds: float) -> None:
    """Run ``stage`` with the settings file's settings, appending its records to ``items``; ``seconds`` is its
    time box (items are skipped once it is spent; the parent stops the process a little after)."""
    s = Settings.read(settings)
    torch.set_num_threads(1 if s.smoke else torch.get_num_threads())
    STAGES[stage](s, emitter(items), time.monotonic() + seconds)
