"""Deployment runtimes: time a model as it is deployed, under the same protocol as eager PyTorch.

- ``eager`` — PyTorch as is (:func:`archsearch.cost.latency`);
- ``compile`` — ``torch.compile`` (inductor), compiled during the warm-up;
- ``onnxruntime`` — the model exported to ONNX (``torch.onnx.export``, the dynamo exporter) and run by ONNX Runtime's
  CPU provider with ``intra_op_num_threads`` = the thread count;
- ``openvino`` — the same ONNX file compiled by OpenVINO for the CPU with ``INFERENCE_NUM_THREADS`` = the thread
  count and f32 precision (no silent bf16 on CPUs that have it);
- ``tensorrt`` — the same ONNX file run by ONNX Runtime's TensorRT provider on the GPU, input and output bound
  to CUDA tensors (I/O binding: nothing crosses host memory), engines and tactic timings cached across processes
  (:func:`trt_cache_dir`), and refused when ONNX Runtime falls back to another provider; needs a CUDA GPU, the
  ``tensorrt`` package and ONNX Runtime's GPU build (``onnxruntime-gpu``: :data:`EXTRA_GPU`).

What is timed is :class:`archsearch.cost.TimedForward` of the model (logits up-sampled to the input size),
with batch norm folded first when asked (:func:`archsearch.cost.fold_bn`). The model is exported once per
(model, input) — :func:`latency` reuses an ``onnx_path`` that exists — and the exported model's output is checked
against eager PyTorch on one input before it is timed (:func:`check`). Data-dependent forwards (Wu et al.'s fast
inference, which computes only the regions its mask selects) cannot be exported faithfully and are refused.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import _dynamo

from archsearch.builders.registry import CONFIG_ATTR
from archsearch.cost import devices, folding, forward, timing
from archsearch.util.errors import ArchsearchError
from archsearch.util.registry import Registry

#: Runtime name → the packages it needs (none: eager and compile need torch only).
RUNTIMES: Registry[tuple[str, ...]] = Registry("runtime")
RUNTIMES.register("eager", ())
RUNTIMES.register("compile", ())
RUNTIMES.register("onnxruntime", ("onnx", "onnxscript", "onnxruntime"))
RUNTIMES.register("openvino", ("onnx", "onnxscript", "openvino"))
RUNTIMES.register("tensorrt", ("onnx", "onnxscript", "onnxruntime", "tensorrt"))
#: Runtimes that run an exported ONNX file.
EXPORTED = ("onnxruntime", "openvino", "tensorrt")
#: The pip extra that installs the exported runtimes' packages (ONNX Runtime's CPU build, OpenVINO).
EXTRA = 'pip install -e ".[runtimes]"'
#: The pip extra of the GPU runtime: ONNX Runtime's GPU build (which conflicts with the CPU build) and TensorRT.
EXTRA_GPU = 'pip install -e ".[runtimes-gpu]"'


#: Tolerance of :func:`check` where it is not 1e-3: TensorRT builds float32 engines with TF32 on (its default),
#: as cuDNN runs the eager reference on the GPU; each rounds to a 10-bit mantissa in its own order.
CHECK_RTOL = {"tensorrt": 1e-2}


class RuntimeUnavailable(ArchsearchError):
    """A runtime's package or device is missing, or the model cannot run on it."""


class RuntimeMismatch(ArchsearchError):
    """The exported model's output disagrees with eager PyTorch's."""


def missing(packages: Sequence[str]) -> list[str]:
    """The packages of ``packages`` that are not installed."""
    return [p for p in packages if importlib.util.find_spec(p) is None]


def unavailable(runtime: str) -> str | None:
    """Why ``runtime`` cannot run here (one line), or None."""
    if runtime not in RUNTIMES:
        return f"runtime {runtime!r} is unknown; allowed: {', '.join(RUNTIMES)}"
    if runtime == "tensorrt" and not torch.cuda.is_available():
        return (
            "runtime 'tensorrt' needs a CUDA GPU and none is available; allowed here: eager, compile, onnxruntime, "
            "openvino"
        )
    absent = missing(RUNTIMES.get(runtime))
    if absent:
        extra = EXTRA_GPU if runtime == "tensorrt" else EXTRA
        return f"runtime {runtime!r} needs the package(s) {', '.join(absent)}: {extra}"
    if runtime == "tensorrt":
        import onnxruntime as ort

        if "TensorrtExecutionProvider" not in ort.get_available_providers():
            return (
                "runtime 'tensorrt' needs an ONNX Runtime build with the TensorrtExecutionProvider (onnxruntime-gpu): "
                f"{EXTRA_GPU}"
            )
    return None


def require(runtime: str) -> None:
    """:class:`RuntimeUnavailable` with :func:`unavailable`'s line when ``runtime`` cannot run here."""
    reason = unavailable(runtime)
    if reason is not None:
        raise RuntimeUnavailable(reason)


def version(runtime: str) -> str:
    """The runtime's name and version as recorded on a trial, e.g. ``onnxruntime 1.23.2``: the imported module's
    ``__version__`` (a distribution name would miss ``onnxruntime-gpu``, which installs the same module)."""
    if runtime in ("eager", "compile"):
        return f"torch {torch.__version__}" + (" (inductor)" if runtime == "compile" else "")
    if runtime == "openvino":
        import openvino

        return f"openvino {openvino.get_version()}"
    import onnxruntime

    if runtime == "tensorrt":
        import tensorrt

        return f"tensorrt {tensorrt.__version__}, onnxruntime {onnxruntime.__version__}"
    return f"onnxruntime {onnxruntime.__version__}"


def refusal(runtime: str, knobs: dict[str, Any]) -> str | None:
    """Why a model with ``knobs`` cannot be timed on ``runtime`` (one line), or None: an exported runtime would
    freeze a data-dependent forward (fast inference) into the path of its export input."""
    if runtime in EXPORTED and knobs.get("inference") == "fast":
        return (
            f"runtime {runtime!r}: fast inference (inference: fast) is data-dependent and cannot be exported to "
            "ONNX; use inference: classic, or runtime eager or compile"
        )
    return None


def export_onnx(model: nn.Module, input_size: Sequence[int], path: str | Path) -> Path:
    """Export ``model`` (eval mode, a single input of ``input_size`` on the model's device) to ONNX at ``path``
    with torch's dynamo exporter; returns the path. The model is exported as given: wrap it in
    :class:`~archsearch.cost.TimedForward` for the timed forward's outputs."""

    path = Path(path)
    x = torch.randn(*input_size, device=next(iter(model.parameters()), torch.empty(0)).device)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed" notes of the exporter's registry
    try:
        with forward.eval_mode(model), warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
    except Exception as exc:  # noqa: BLE001 — the exporter's many failure types
        first = (str(exc).splitlines() or [""])[0][:200]
        raise RuntimeUnavailable(f"ONNX export failed ({exc.__class__.__name__}: {first})") from None
    finally:
        exporter_log.setLevel(level)
    return path


@dataclass
class Runner:
    """One prepared model on a runtime: ``run()`` does one forward on the fixed input and returns the logits."""

    runtime: str
    version: str
    run: Callable[[], torch.Tensor]


def prepare(runtime: str, timed: nn.Module, x: torch.Tensor, threads: int, onnx_path: Path | None = None) -> Runner:
    """A :class:`Runner` of ``timed`` (already a ``TimedForward``, eval mode) on input ``x`` with ``threads``
    threads. Exported runtimes load ``onnx_path`` (exported by the caller)."""
    require(runtime)
    if runtime == "eager":
        return Runner(runtime, version(runtime), lambda: timed(x))
    if runtime == "compile":
        # every model compiles the same TimedForward.forward: past dynamo's recompile limit (8) it would silently
        # run eager, so a benchmark of many models raises it
        _dynamo.config.recompile_limit = max(_dynamo.config.recompile_limit, 256)
        compiled = torch.compile(timed)
        return Runner(runtime, version(runtime), lambda: compiled(x))
    assert onnx_path is not None
    if runtime == "tensorrt":
        return _tensorrt(timed, x, threads, onnx_path)
    feed = x.detach().cpu().numpy()
    if runtime == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_path), _session_options(threads), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return Runner(runtime, version(runtime), lambda: torch.from_numpy(session.run(None, {name: feed})[0]))
    import openvino as ov

    core = ov.Core()
    compiled_model = core.compile_model(
        core.read_model(str(onnx_path)),
        "CPU",
        {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"},
    )
    request = compiled_model.create_infer_request()

    def run() -> torch.Tensor:
        request.infer({0: feed})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return Runner(runtime, version(runtime), run)


def _session_options(threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def trt_cache_dir() -> Path:
    """Where TensorRT's engines and tactic timings are kept between processes: ``ARCHSEARCH_TRT_CACHE``, else
    ``$XDG_CACHE_HOME/archsearch/tensorrt`` (default ``~/.cache``); created if missing. An engine is keyed by its
    ONNX model (a re-measured architecture loads its engine), the timing cache by layer (a new architecture
    reuses the tactic timings of the layers it shares with earlier ones)."""
    base = os.environ.get("ARCHSEARCH_TRT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "archsearch", "tensorrt"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _tensorrt(timed: nn.Module, x: torch.Tensor, threads: int, onnx_path: Path) -> Runner:
    """ONNX Runtime's TensorRT provider on ``x``'s GPU, refused when ONNX Runtime could not load that provider
    (it would fall back to CUDA or the CPU and time that under the name ``tensorrt``). Its input is ``x`` itself
    and its output a CUDA tensor of the eager output's shape, bound once (I/O binding), so that a pass moves
    nothing through host memory."""
    import onnxruntime as ort

    index = x.device.index if x.device.index is not None else 0
    cache = str(trt_cache_dir())
    providers: list[tuple[str, dict[str, Any]]] = [
        (
            "TensorrtExecutionProvider",
            {
                "device_id": index,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": cache,
            },
        ),
        ("CUDAExecutionProvider", {"device_id": index}),  # the nodes TensorRT does not take, on the same GPU
    ]
    try:
        session = ort.InferenceSession(str(onnx_path), _session_options(threads), providers=providers)
    except Exception as exc:  # noqa: BLE001 — ONNX Runtime's failures come as its own and as RuntimeError
        first = (str(exc).splitlines() or [""])[0][:200]
        raise RuntimeUnavailable(f"runtime 'tensorrt': ONNX Runtime could not build the session ({first})") from None
    used = list(session.get_providers())
    if "TensorrtExecutionProvider" not in used:
        raise RuntimeUnavailable(
            f"runtime 'tensorrt': ONNX Runtime did not load its TensorRT provider (it would run on "
            f"{', '.join(used) or 'no provider'}); not timed: check the TensorRT libraries that onnxruntime-gpu "
            "loads (LD_LIBRARY_PATH)"
        )
    x = x.detach().contiguous()
    with torch.inference_mode():
        shape = tuple(timed(x).shape)
    out = torch.empty(shape, dtype=torch.float32, device=x.device)
    binding = session.io_binding()
    kind = x.device.type
    binding.bind_input(session.get_inputs()[0].name, kind, index, np.float32, tuple(x.shape), x.data_ptr())
    binding.bind_output(session.get_outputs()[0].name, kind, index, np.float32, shape, out.data_ptr())
    if kind == "cuda":
        torch.cuda.synchronize(x.device)  # x is written on torch's stream; ONNX Runtime reads it on its own

    def run() -> torch.Tensor:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out

    return Runner("tensorrt", version("tensorrt"), run)


def check(runner: Runner, reference: torch.Tensor, *, rtol: float = 1e-3) -> float:
    """Max absolute difference of ``runner``'s output from eager ``reference``; :class:`RuntimeMismatch` when it
    exceeds ``rtol`` × the reference's largest magnitude (at least ``rtol``) or the shapes differ."""
    out = runner.run().detach().cpu().float()
    ref = reference.detach().cpu().float()
    if out.shape != ref.shape:
        raise RuntimeMismatch(f"runtime {runner.runtime!r}: output shape {tuple(out.shape)}, eager {tuple(ref.shape)}")
    diff = float((out - ref).abs().max())
    bound = rtol * max(1.0, float(ref.abs().max()))
    if not diff <= bound:
        raise RuntimeMismatch(
            f"runtime {runner.runtime!r}: output differs from eager PyTorch by {diff:.3g} "
            f"(allowed {bound:.3g}); not timed"
        )
    return diff


def latency(
    model: nn.Module,
    input_size: Sequence[int] = (1, 3, 1024, 2048),
    device: str | torch.device = "cpu",
    *,
    runtime: str = "eager",
    threads: int = 1,
    fold: bool = True,
    warmup: int = 3,
    repeats: int = timing.MIN_REPEATS,
    rel_ci: float | None = 0.02,
    max_seconds: float | None = 60.0,
    dtype: str = "float32",
    memory_format: str = "nchw",
    onnx_path: str | Path | None = None,
    lock: bool = True,
) -> timing.Latency:
    """Time ``model`` on ``runtime`` under the latency protocol (:func:`archsearch.cost.latency`'s): at
    ``threads`` threads, batch norm folded when ``fold``, the logits up-sampled to the input, repeats adaptive to
    ``rel_ci`` within ``max_seconds``. Exported runtimes export once to ``onnx_path`` (reused when it exists; a
    temporary file when None), check the output against eager PyTorch on one input, then time."""
    require(runtime)

    config = getattr(model, CONFIG_ATTR, None)
    knobs = config.knobs.as_dict() if config is not None else {}
    reason = refusal(runtime, knobs)
    if reason is not None:
        raise RuntimeUnavailable(reason)
    if runtime == "eager":
        return timing.latency(
            model,
            input_size,
            device,
            warmup=warmup,
            repeats=repeats,
            dtype=dtype,
            memory_format=memory_format,
            threads=threads,
            lock=lock,
            fold=fold,
            rel_ci=rel_ci,
            max_seconds=max_seconds,
        )
    dev = devices.resolve_device(device) if isinstance(device, str) else torch.device(device)
    memory_format = timing.resolve_memory_format(memory_format, dev, runtime)
    if runtime in ("onnxruntime", "openvino") and dev.type != "cpu":
        raise RuntimeUnavailable(f"runtime {runtime!r} runs on the CPU here; set target.device: cpu (or --device cpu)")
    if dtype != "float32" or (runtime in EXPORTED and memory_format != "nchw"):
        raise RuntimeUnavailable(f"runtime {runtime!r} is timed in float32 and nchw only; got {dtype}, {memory_format}")
    devices.thread_count(threads)
    model = model.to("cpu" if runtime in ("onnxruntime", "openvino") else dev)
    with devices.num_threads(threads):
        timed = forward.TimedForward(folding.fold_bn(model, folding.probe_size(input_size)) if fold else model).eval()
        x = torch.randn(*input_size, generator=torch.Generator().manual_seed(0)).to(next(timed.parameters()).device)
        with tempfile.TemporaryDirectory(prefix="archsearch-onnx-") as tmp:
            path: Path | None = None
            if runtime in EXPORTED:
                path = Path(onnx_path) if onnx_path is not None else Path(tmp) / "model.onnx"
                if not path.is_file():
                    export_onnx(timed, input_size, path)
            if runtime == "compile":
                timed = timing.to_memory_format(timed, memory_format)
                x = x.to(memory_format=timing.MEMORY_FORMATS[memory_format])
            runner = prepare(runtime, timed, x, threads, path)
            with torch.inference_mode():
                reference = timed(x)
                check(runner, reference, rtol=CHECK_RTOL.get(runtime, 1e-3))
                turn = devices.device_turn(dev) if lock else contextlib.nullcontext()
                sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else None
                with turn, devices.tuned(dev):
                    times = timing.time_calls(
                        runner.run, warmup=warmup, repeats=repeats, rel_ci=rel_ci, max_seconds=max_seconds, sync=sync
                    )
    return timing.summarise(
        times,
        device=devices.device_name(dev, threads),
        threads=threads,
        input_size=input_size,
        dtype=dtype,
        memory_format=memory_format,
        runtime=runtime,
        runtime_version=runner.version,
        fold_bn=fold,
    )
