"""Issue 22: the CUDA path, checked on the CPU. Where CUDA itself is needed it is emulated: TF32 rounding by a
convolution that rounds its operands to a 10-bit mantissa, a GPU by monkeypatched ``torch.cuda`` functions, ONNX
Runtime by a fake module that records providers and I/O bindings. tests/test_gpu.py runs the same paths on a GPU
(``@pytest.mark.cuda``)."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import sys
import threading
import time
import tomllib
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from optuna.trial import TrialState

from archsearch import builders, cli, data
from archsearch import spec as spec_mod
from archsearch.cost import (
    CUDNN_BENCHMARK,
    FoldingError,
    TimedForward,
    device_id,
    devices,
    fold_bn,
    folding,
    latency,
    profile,
    resolve_device,
    resolve_memory_format,
    runtimes,
    tuned,
    work_turn,
)
from archsearch.search import cost_record, cuda_faults, loop
from archsearch.search import trial as trial_mod
from archsearch.spec import ProxySpec, TargetSpec
from archsearch.training import scoring, train
from archsearch.util.devicelock import DeviceLock
from archsearch.util.errors import ArchsearchError, SpecError
from batchnorm import randomise_batch_norm

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))


# ------------------------------------------------------------------- 1. batch-norm folding under TF32


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to TF32 (10 of float32's 23 mantissa bits, to nearest), as cuDNN rounds the operands."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + (1 << 12)) & ~((1 << 13) - 1)).view(torch.float32)


class _TF32Conv(nn.Conv2d):
    """A convolution that computes as a GPU's default TF32 convolution does in float32, exactly in float64."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            return super().forward(x)
        return F.conv2d(_tf32(x), _tf32(self.weight), self.bias, self.stride, self.padding)


class _Deep(nn.Module):
    def __init__(self, depth: int = 16, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = [_TF32Conv(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [_TF32Conv(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = _TF32Conv(width, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_1_folding_is_checked_in_float64_so_tf32_rounding_does_not_fail_it():
    torch.manual_seed(0)
    model = _Deep().eval()
    randomise_batch_norm(model)
    folded = fold_bn(model, (1, 3, 32, 32))  # the old float32 check raised here
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = TimedForward(model)(x), TimedForward(folded)(x)
    # in "TF32" the folded and unfolded weights round differently: far beyond the old float32 bound ...
    assert float((ref - out).abs().max()) > 1e-4 * max(1.0, float(ref.abs().max()))
    # ... while in float64 only the folded weights' float32 rounding is left, 100× below the bound
    assert folding.check_folded(model, folded, x) < 1e-6 * max(1.0, float(ref.abs().max()))


def test_1_a_real_folding_error_is_one_line_not_a_traceback(monkeypatch):
    def wrong(conv: nn.Module, bn: nn.Module, transpose: bool = False) -> nn.Module:
        out = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn, transpose=transpose)
        out.weight.data.mul_(1.5)
        return out

    monkeypatch.setattr(folding, "fuse_conv_bn_eval", wrong)
    model = builders.build("ndnet", 19).eval()
    with pytest.raises(FoldingError, match=r"^folding batch norm changed the output by .*; not timed$"):
        fold_bn(model, (1, 3, 32, 64))
    assert issubclass(FoldingError, ArchsearchError)


@pytest.mark.slow
def test_1_profile_ends_a_folding_error_in_one_line(monkeypatch, capsys):
    def wrong(conv: nn.Module, bn: nn.Module, transpose: bool = False) -> nn.Module:
        out = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn, transpose=transpose)
        out.weight.data.mul_(1.5)
        return out

    monkeypatch.setattr(folding, "fuse_conv_bn_eval", wrong)
    argv = ["profile", "ndnet", "--input", "1,3,32,64", "--repeats", "1", "--warmup", "0", "--device", "cpu"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "folding batch norm changed the output" in err


# ------------------------------------------------------------------- 2. export on the model's device


def test_2_export_traces_with_an_input_on_the_models_device(monkeypatch, tmp_path):
    seen = {}

    def export(model, args, path, **kw):
        seen["input"] = args[0].device
        seen["model"] = next(model.parameters()).device
        Path(path).write_bytes(b"onnx")

    monkeypatch.setattr(torch.onnx, "export", export)
    model = TimedForward(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())).to("meta")  # a device that is not the CPU
    runtimes.export_onnx(model, (1, 3, 16, 16), tmp_path / "m.onnx")
    assert seen == {"input": torch.device("meta"), "model": torch.device("meta")}


# ------------------------------------------------------------------- 3. versions from the modules; the GPU extra


def test_3_versions_come_from_the_modules_so_onnxruntime_gpu_counts(monkeypatch):
    def not_installed(name: str) -> str:  # onnxruntime-gpu installs the module under another distribution name
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    monkeypatch.setitem(sys.modules, "onnxruntime", types.SimpleNamespace(__version__="1.23.2"))
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.13.3.9"))
    assert runtimes.version("onnxruntime") == "onnxruntime 1.23.2"
    assert runtimes.version("tensorrt") == "tensorrt 10.13.3.9, onnxruntime 1.23.2"


def test_3_gpu_users_have_their_own_extra(monkeypatch):
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    gpu = [req.split(">")[0] for req in extras["runtimes-gpu"]]
    assert "onnxruntime-gpu" in gpu and "tensorrt" in gpu and "onnxruntime" not in gpu
    assert "onnxruntime" in [req.split(">")[0] for req in extras["runtimes"]]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtimes, "missing", lambda packages: [p for p in packages if p == "tensorrt"])
    assert runtimes.unavailable("tensorrt") == (
        "runtime 'tensorrt' needs the package(s) tensorrt: pip install -e \".[runtimes-gpu]\""
    )


# ------------------------------------------------------------------- 4, 5. TensorRT: I/O binding, no fallback


class _FakeOrt:
    """What archsearch uses of ONNX Runtime, recording the session's providers, options and bindings."""

    class ExecutionMode:
        ORT_SEQUENTIAL = "sequential"

    class GraphOptimizationLevel:
        ORT_ENABLE_ALL = "all"

    def __init__(self, loaded: list[str], out_shape: tuple[int, ...]) -> None:
        self.loaded, self.out_shape, self.sessions = loaded, out_shape, []
        fake = self

        class SessionOptions:
            def __init__(self) -> None:
                self.config: dict[str, str] = {}

            def add_session_config_entry(self, key: str, value: str) -> None:
                self.config[key] = value

        class Binding:
            def __init__(self) -> None:
                self.inputs, self.outputs, self.synced = [], [], 0

            def bind_input(self, name, device_type, device_id, element_type, shape, buffer_ptr) -> None:
                self.inputs.append((name, device_type, device_id, element_type, tuple(shape), buffer_ptr))

            def bind_output(self, name, device_type, device_id, element_type, shape, buffer_ptr) -> None:
                self.outputs.append((name, device_type, device_id, element_type, tuple(shape), buffer_ptr))

            def synchronize_outputs(self) -> None:
                self.synced += 1

        class InferenceSession:
            def __init__(self, path, options, providers) -> None:
                self.path, self.options, self.providers = path, options, providers
                self.binding, self.runs = Binding(), 0
                fake.sessions.append(self)

            def get_providers(self) -> list[str]:
                return fake.loaded

            def get_inputs(self):
                return [SimpleNamespace(name="x")]

            def get_outputs(self):
                return [SimpleNamespace(name="logits")]

            def io_binding(self):
                return self.binding

            def run(self, *a, **k):
                raise AssertionError("the TensorRT runner must not pass its tensors through host memory")

            def run_with_iobinding(self, binding) -> None:  # the engine writes its output into the bound buffer
                self.runs += 1
                result = torch.full(fake.out_shape, float(self.runs))
                ptr = binding.outputs[0][-1]
                ctypes.memmove(ptr, result.data_ptr(), result.numel() * result.element_size())

        self.SessionOptions, self.InferenceSession = SessionOptions, InferenceSession


def _trt_runner(monkeypatch, tmp_path, loaded):
    timed = TimedForward(nn.Conv2d(3, 2, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    fake = _FakeOrt(loaded, (1, 2, 8, 8))
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.0"))
    fake.__version__ = "1.23.2"  # type: ignore[attr-defined]
    monkeypatch.setattr(runtimes, "unavailable", lambda runtime: None)
    monkeypatch.setenv("ARCHSEARCH_TRT_CACHE", str(tmp_path / "trt"))
    runner = runtimes.prepare("tensorrt", timed, x, 1, tmp_path / "m.onnx")
    return runner, fake, x


def test_4_tensorrt_binds_the_input_and_output_tensors_in_place(monkeypatch, tmp_path):
    runner, fake, x = _trt_runner(monkeypatch, tmp_path, ["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    (session,) = fake.sessions
    ((name, kind, index, etype, shape, ptr),) = session.binding.inputs
    assert (name, kind, index, etype, shape, ptr) == ("x", "cpu", 0, np.float32, (1, 3, 8, 8), x.data_ptr())
    ((out_name, _, _, _, out_shape, out_ptr),) = session.binding.outputs
    first, second = runner.run(), runner.run()
    assert first is second and first.data_ptr() == out_ptr and (out_name, out_shape) == ("logits", (1, 2, 8, 8))
    assert torch.equal(second, torch.full((1, 2, 8, 8), 2.0)) and session.runs == 2 and session.binding.synced == 2
    assert runner.version == "tensorrt 10.0, onnxruntime 1.23.2"


def test_5_tensorrt_uses_the_engine_cache_and_refuses_a_fallback(monkeypatch, tmp_path):
    _, fake, _ = _trt_runner(monkeypatch, tmp_path, ["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    (session,) = fake.sessions
    (trt, trt_options), (cuda, _) = session.providers
    assert (trt, cuda) == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert trt_options["trt_engine_cache_enable"] is True and trt_options["trt_timing_cache_enable"] is True
    assert trt_options["trt_engine_cache_path"] == str(tmp_path / "trt") and (tmp_path / "trt").is_dir()
    with pytest.raises(runtimes.RuntimeUnavailable, match=r"did not load its TensorRT provider \(it would run on "):
        _trt_runner(monkeypatch, tmp_path, ["CUDAExecutionProvider", "CPUExecutionProvider"])


# ------------------------------------------------------------------- 6. the device lock is the GPU's


@pytest.fixture
def two_gpus(monkeypatch):
    """This process sees two GPUs; ``uuids`` maps its indices to the GPUs' UUIDs (as CUDA_VISIBLE_DEVICES does)."""
    uuids = {0: "GPU-aaaa", 1: "GPU-bbbb"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(uuids))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=uuids[int(i)]))
    return uuids


def test_6_the_lock_is_keyed_by_the_gpus_uuid_not_its_index(two_gpus):
    here = device_id(torch.device("cuda:1"))
    assert here == "cuda-GPU-bbbb" and device_id(torch.device("cuda")) == "cuda-GPU-aaaa"
    # another process started with CUDA_VISIBLE_DEVICES=1 sees that GPU as cuda:0: the same lock
    two_gpus.update({0: "GPU-bbbb"})
    assert device_id(torch.device("cuda:0")) == here
    assert DeviceLock(here).path.name.endswith("cuda-GPU-bbbb.lock")
    # and a different GPU at the same index is another lock
    two_gpus.update({0: "GPU-cccc"})
    assert device_id(torch.device("cuda:0")) != here


def test_6_cuda_n_is_accepted_by_the_spec_the_cli_and_resolve_device(two_gpus):
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ArchsearchError, match=r"'cuda:2' but this process sees 2 CUDA devices; .* cuda:0 … cuda:1"):
        resolve_device("cuda:2")
    with pytest.raises(ArchsearchError, match=r"target.device: 'gpu'; allowed: auto, cpu, cuda, cuda:N"):
        resolve_device("gpu")
    assert spec_mod.load(ROOT / "spaces" / "ndnet.yaml", ["target.device=cuda:1"]).target.device == "cuda:1"
    with pytest.raises(SpecError, match=r"target.device: 'cuda:x' is not allowed; allowed: .*cuda:N"):
        spec_mod.load(ROOT / "spaces" / "ndnet.yaml", ["target.device=cuda:x"])
    assert cli.parser().parse_args(["profile", "ndnet", "--device", "cuda:1"]).device == "cuda:1"
    assert cli.parser().parse_args(["eval", "x.pt", "--device", "cuda:0"]).device == "cuda:0"
    assert cli.main(["profile", "ndnet", "--device", "cuda:one"]) == 2


# ------------------------------------------------------------------- 7. training off the host's critical path


def test_7_the_device_turn_synchronises_only_while_a_timer_waits(monkeypatch):
    synced: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    with work_turn(CUDA):
        pass
    assert synced == []  # nobody waits: the host runs ahead of the GPU
    lock, timed = DeviceLock(device_id(CUDA)), threading.Event()

    def timer() -> None:
        with lock.exclusive():
            timed.set()

    waiter = threading.Thread(target=timer)
    with work_turn(CUDA):
        waiter.start()
        deadline = time.monotonic() + 30
        while not lock.timer_waiting():  # the timer holds the gate and waits for this turn
            assert time.monotonic() < deadline, "the timer never queued"
            time.sleep(0.01)
        assert not timed.is_set()
    waiter.join()
    assert synced == [CUDA] and timed.is_set()  # synchronised before the turn ended, then the timer went in
    with work_turn("cpu"):
        pass
    assert synced == [CUDA]


class _Squares(torch.utils.data.Dataset):
    """Eight 16×16 images with a bright square of class 1 on a dark class-0 ground; uint8 as archsearch's data
    sets yield them, or (``normalised``) float images normalised as the device would."""

    info = SimpleNamespace(num_classes=2, ignore_index=255, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))

    def __init__(self, normalised: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.items = []
        for _ in range(8):
            label = torch.zeros(16, 16, dtype=torch.uint8)
            y, x = torch.randint(0, 8, (2,), generator=g).tolist()
            label[y : y + 8, x : x + 8] = 1
            image = (label[None].repeat(3, 1, 1) * 150 + torch.randint(0, 80, (3, 16, 16), generator=g)).to(torch.uint8)
            if normalised:
                mean = torch.tensor(self.info.mean).view(3, 1, 1) * 255.0
                std = torch.tensor(self.info.std).view(3, 1, 1) * 255.0
                self.items.append(((image.float() - mean) / std, label.long()))
            else:
                self.items.append((image, label))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


PROXY = ProxySpec(iterations=10, batch=2, lr=0.05, scale_range=(1.0, 1.0), flip=False)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))


def test_7_uint8_batches_normalised_on_the_device_train_as_host_normalised_ones():
    a, b = _net(), _net()
    ra = train.fit(a, _Squares(), PROXY, "cpu", progress=False)
    rb = train.fit(b, _Squares(normalised=True), PROXY, "cpu", progress=False)
    assert ra.losses == rb.losses and len(ra.losses) == 10
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_7_the_loss_is_read_every_n_iterations_and_a_nan_still_names_its_iteration(monkeypatch):
    reads: list[int] = []
    real_read = train.Trainer._read

    def counted(self, pending, losses, it, desc):
        reads.append(it)
        return real_read(self, pending, losses, it, desc)

    monkeypatch.setattr(train.Trainer, "_read", counted)
    every_one = train.fit(_net(), _Squares(), PROXY, "cpu", progress=False)
    assert reads == list(range(10))  # the CPU: every iteration
    reads.clear()
    monkeypatch.setattr(train, "loss_check_every", lambda device: 4)  # as on CUDA, with 4 for 25
    every_four = train.fit(_net(), _Squares(), PROXY, "cpu", progress=False)
    assert reads == [3, 7, 9] and every_four.losses == every_one.losses

    class NaNAt5(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.calls = _net(), 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            out = self.net(x)
            return out * float("nan") if self.calls == 6 else out

    reads.clear()
    with pytest.raises(train.TrainingDiverged, match=r"loss is nan at iteration 5 of 10"):
        train.fit(NaNAt5(), _Squares(), PROXY, "cpu", progress=False)
    assert reads == [3, 7]


def test_7_at_least_two_loader_workers_on_cuda():
    assert data.loader_workers(0, "cuda") == data.CUDA_WORKERS == 2
    assert data.loader_workers(4, CUDA) == 4 and data.loader_workers(0, "cpu") == 0


# ------------------------------------------------------------------- 8. bf16 without a scaler; one scaler


def test_8_bf16_without_loss_scaling_where_supported_else_fp16_with_a_scaler(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    amp = ProxySpec(amp=True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert train.amp_dtype(amp, CUDA) == torch.bfloat16 and not train.grad_scaler(amp, CUDA).is_enabled()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert train.amp_dtype(amp, CUDA) == torch.float16 and train.grad_scaler(amp, CUDA).is_enabled()
    assert train.amp_dtype(ProxySpec(amp=False), CUDA) is None
    assert train.amp_dtype(amp, torch.device("cpu")) is None


def test_8_a_scaler_passed_to_each_fit_carries_its_state_across_them():
    def scaler() -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cpu", init_scale=16.0, growth_interval=3)

    proxy = ProxySpec(iterations=2, batch=2, lr=0.01, scale_range=(1.0, 1.0), flip=False)
    shared, model = scaler(), _net()
    for _ in range(2):
        train.fit(model, _Squares(), proxy, "cpu", progress=False, scaler=shared)
    assert shared.get_scale() == 32.0  # 4 steps: grown once after 3, as one fit of 4 iterations
    fresh = [scaler(), scaler()]  # the old way: a new scaler in each phase
    for own in fresh:
        train.fit(_net(), _Squares(), proxy, "cpu", progress=False, scaler=own)
    assert [own.get_scale() for own in fresh] == [16.0, 16.0]  # never the 3 steps in a row that grow it


def test_8_the_phases_of_progressive_pruning_share_one_scaler(monkeypatch):
    from archsearch.training import channel_pruning

    seen: list[object] = []
    monkeypatch.setattr(train, "fit", lambda *a, **k: seen.append(k["scaler"]))

    def progressive(builder, knobs, num_classes, fit, iterations, schedule):
        model = nn.Linear(1, 1)
        for start in (0, 2, 4):
            fit(model, 2, f"phase {start}", start)
        return model, []

    monkeypatch.setattr(channel_pruning, "progressive", progressive)
    spec = spec_mod.load(ROOT / "spaces" / "icnet_pruning.yaml", ["target.device=cpu"])
    ctx = SimpleNamespace(spec=spec, device=torch.device("cpu"), progress=False, num_classes=19, dataset=lambda s: None)
    trial = SimpleNamespace(number=0, set_user_attr=lambda k, v: None)
    trial_mod.train_proxy(nn.Linear(1, 1), {"keep_rate": 0.5}, ctx, trial, 0, "icnet")  # type: ignore[arg-type]
    assert len(seen) == 3 and all(s is seen[0] for s in seen) and isinstance(seen[0], torch.amp.GradScaler)


# ------------------------------------------------------------------- 9. cuDNN's auto-tuner, channels_last


def test_9_cudnn_autotuner_on_for_cuda_blocks_only_and_restored():
    before = torch.backends.cudnn.benchmark
    with tuned(CUDA):
        assert torch.backends.cudnn.benchmark is CUDNN_BENCHMARK is True
    assert torch.backends.cudnn.benchmark == before
    with tuned(torch.device("cpu")):
        assert torch.backends.cudnn.benchmark == before


def test_9_training_and_evaluation_run_in_the_tuned_block(monkeypatch):
    entered: list[torch.device] = []

    @contextlib.contextmanager
    def record(device):
        entered.append(device)
        yield

    monkeypatch.setattr(train, "tuned", record)
    monkeypatch.setattr(scoring, "tuned", record)
    model = _net()
    train.fit(model, _Squares(), ProxySpec(iterations=1, batch=2), "cpu", progress=False)
    scoring.evaluate(model, _Squares(), "cpu", batch=4, progress=False)
    assert entered == [torch.device("cpu")] * 2


def test_9_memory_format_auto_is_channels_last_for_pytorch_on_cuda():
    assert resolve_memory_format("auto", CUDA) == "channels_last"
    assert resolve_memory_format("auto", CUDA, "compile") == "channels_last"
    assert resolve_memory_format("auto", CUDA, "tensorrt") == "nchw"  # exported: the runtime picks its layout
    assert resolve_memory_format("auto", torch.device("cpu")) == "nchw"
    assert resolve_memory_format("channels_last", torch.device("cpu")) == "channels_last"
    lat = latency(nn.Conv2d(3, 2, 1), (1, 3, 8, 8), "cpu", warmup=0, repeats=2, memory_format="auto", threads=1)
    assert lat.memory_format == "nchw"


def test_9_the_cost_key_holds_the_autotuner_on_cuda_and_cpu_keys_are_as_before(monkeypatch):
    def key(device: str, memory_format: str = "nchw") -> str:
        return trial_mod.arch_key(
            "ndnet",
            {"expansion": 4},
            19,
            TargetSpec(input=(1, 3, 64, 128), memory_format=memory_format),  # type: ignore[arg-type]
            device,
            1,
            device_model="AMD EPYC 7763" if device == "cpu" else "NVIDIA H100",
            runtime="torch 2.13.0+cpu",
        )

    # the keys main computed before this change (so stored CPU costs are still reused)
    assert key("cpu") == key("cpu", "auto") == "691941bb3411da70"
    assert key("cpu", "channels_last") == "e2989d31aa9e6edc"
    on_gpu = key("cuda")
    assert key("cuda", "auto") == key("cuda", "channels_last") != on_gpu
    monkeypatch.setattr(cost_record, "CUDNN_BENCHMARK", False)
    assert key("cuda") != on_gpu and key("cpu") == "691941bb3411da70"


# ------------------------------------------------------------------- 10. evaluation on the device


def test_10_the_device_confusion_matrix_equals_the_host_one_and_checks_labels_once():
    g = torch.Generator().manual_seed(0)
    conf = scoring.Confusion(5, 255, "cpu")
    expected = torch.zeros(5, 5, dtype=torch.int64)
    for _ in range(3):
        target = torch.randint(0, 5, (2, 9, 11), generator=g).to(torch.uint8)
        target[torch.rand(2, 9, 11, generator=g) < 0.2] = 255
        pred = torch.randint(0, 5, (2, 9, 11), generator=g)
        conf.add(pred, target)
        expected += scoring.confusion_matrix(pred, target.long(), 5, 255)
    assert torch.equal(conf.matrix(), expected) and int(expected.sum()) > 0
    bad = scoring.Confusion(5, 255, "cpu")
    bad.add(torch.zeros(1, 2, dtype=torch.int64), torch.tensor([[1, 7]], dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"^label 7 is outside \[0, 5\) and is not the ignore label 255$"):
        bad.matrix()
    negative = scoring.Confusion(5, 255, "cpu")
    negative.add(torch.zeros(1, 2, dtype=torch.int64), torch.tensor([[1, -3]]))
    with pytest.raises(ValueError, match=r"^label -3 is outside"):
        negative.matrix()


def test_10_data_sets_yield_uint8_and_evaluation_scores_them(tmp_path):
    ds = data.load(spec_mod.DataSpec(name="synthetic", size=(32, 64), val_images=2, cache_dir=str(tmp_path)), "val", 1)
    image, label = ds[0]
    assert image.dtype == label.dtype == torch.uint8  # a quarter of float32's bytes, an eighth of int64's
    model = _net()
    ours = scoring.evaluate(model, _Squares(), "cpu", batch=3, progress=False)
    host = _Squares(normalised=True)  # the same images, normalised on the host: the same scores
    assert scoring.evaluate(model, host, "cpu", batch=3, progress=False) == ours

    class Bad(_Squares):
        def __getitem__(self, i: int):
            image, label = super().__getitem__(i)
            return image, label * 9 if i == 5 else label

    with pytest.raises(ValueError, match=r"^label 9 is outside \[0, 2\)"):
        scoring.evaluate(model, Bad(), "cpu", batch=3, progress=False)


# ------------------------------------------------------------------- 11. out-of-memory and sticky errors


@pytest.fixture
def freed(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    return calls


def test_11_an_out_of_memory_is_retried_once_after_freeing(freed, monkeypatch):
    monkeypatch.setattr(cuda_faults, "context_lost", lambda device: False)
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert cuda_faults.triage(oom, CUDA, retry_count=0) == cuda_faults.Verdict(retry=True)
    assert freed == ["empty_cache"]
    assert cuda_faults.triage(oom, CUDA, retry_count=1) == cuda_faults.Verdict()  # once
    wrapped = RuntimeError("trial failed")
    wrapped.__cause__ = oom
    assert cuda_faults.triage(wrapped, CUDA).retry
    assert cuda_faults.triage(ValueError("bad knob"), CUDA) == cuda_faults.Verdict()
    assert cuda_faults.triage(oom, torch.device("cpu")) == cuda_faults.Verdict()  # the CPU: recorded as it is


def test_11_a_lost_cuda_context_stops_the_worker(freed, monkeypatch):
    monkeypatch.setattr(cuda_faults, "context_lost", lambda device: True)
    verdict = cuda_faults.triage(RuntimeError("CUDA error: an illegal memory access was encountered"), CUDA)
    assert verdict.retry and verdict.stop is not None
    assert verdict.stop.startswith("CUDA error on cuda (RuntimeError: CUDA error: an illegal memory access")
    assert "the worker stops, the trial will be retried by the next run" in verdict.stop


TINY_SPEC = """
name: faults
builder: ndnet
knobs:
  expansion: {choices: [1, 2, 4]}
objectives: [{name: miou, direction: maximize}, {name: params, direction: minimize}]
data: {name: synthetic, train_images: 2, val_images: 1, size: [32, 64]}
proxy: {iterations: 1, batch: 1, scale: 1.0}
target: {input: [1, 3, 32, 64], device: cpu, warmup: 0, repeats: 1}
search: {sampler: random, trials: 1, seed: 0}
"""


def _faulty_run(monkeypatch, exc: BaseException, lost: bool) -> list[dict]:
    """The run loop with trials that raise ``exc`` once and then succeed, triaged as on CUDA."""
    calls: list[dict] = []

    def run(trial, ctx, prepared=None):
        _, knobs, _ = trial_mod.space.sample_config(trial, ctx.spec)
        calls.append(dict(knobs))
        if len(calls) == 1:
            raise exc
        for k, v in {"miou": 0.5, "params": 1000, "madds": 1, "latency_ms": 1.0, "train_seconds": 1.0}.items():
            trial.set_user_attr(k, v)
        return (0.5, 1000.0)

    real = cuda_faults.triage
    monkeypatch.setattr(trial_mod, "run", run)
    monkeypatch.setattr(cuda_faults, "context_lost", lambda device: lost)
    monkeypatch.setattr(loop.cuda_faults, "triage", lambda e, device, n=0: real(e, CUDA, n))
    return calls


@pytest.mark.slow
def test_11_the_run_loop_queues_an_out_of_memory_trial_again(freed, monkeypatch, tmp_path):
    calls = _faulty_run(monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), False)
    (tmp_path / "f.yaml").write_text(TINY_SPEC)
    url = f"sqlite:///{tmp_path / 'f.db'}"
    loop.optimize(spec_mod.load(tmp_path / "f.yaml"), url, progress=False, echo=lambda line: None)
    first, second = optuna.load_study(study_name="faults", storage=url).get_trials()
    assert first.state == TrialState.FAIL and first.user_attrs["retry"] is True
    assert first.user_attrs["fail_reason"].startswith("OutOfMemoryError: CUDA out of memory")
    assert second.state == TrialState.COMPLETE and second.user_attrs["retry_of"] == 0
    assert second.params == first.params and calls[0] == calls[1]  # the same configuration, once more
    assert "empty_cache" in freed


@pytest.mark.slow
def test_11_the_run_loop_stops_with_one_line_on_a_lost_context(freed, monkeypatch, tmp_path, capsys):
    _faulty_run(monkeypatch, RuntimeError("CUDA error: an illegal memory access was encountered"), True)
    (tmp_path / "f.yaml").write_text(TINY_SPEC)
    url = f"sqlite:///{tmp_path / 'f.db'}"
    assert cli.main(["run", str(tmp_path / "f.yaml"), "--storage", url, "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the CUDA context of this worker is lost" in err
    first, queued = optuna.load_study(study_name="faults", storage=url).get_trials()
    assert first.state == TrialState.FAIL and first.user_attrs["retry"] is True
    assert queued.state == TrialState.WAITING and queued.user_attrs["retry_of"] == 0  # for the next run


# ------------------------------------------------------------------- 12. the GPU's generator across parts


def test_12_the_cuda_generator_state_is_carried_with_the_cpu_one(monkeypatch):
    cuda_state = {"now": torch.tensor([1], dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": cuda_state["now"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": cuda_state.update(now=state))
    torch.manual_seed(3)
    saved = train.rng_state(CUDA)
    expected_cpu = torch.rand(2)
    cuda_state["now"] = torch.tensor([9], dtype=torch.uint8)  # another Trainer's part drew from the GPU
    torch.rand(5)
    train.set_rng_state(CUDA, saved)
    assert torch.equal(cuda_state["now"], torch.tensor([1], dtype=torch.uint8))
    assert torch.equal(torch.rand(2), expected_cpu)
    assert train.rng_state(torch.device("cpu"))[1] is None  # the CPU: only torch's global generator


# ------------------------------------------------------------------- 13. counting on the target device


def test_13_counting_runs_on_the_target_device_in_its_turn(monkeypatch):
    seen: list[tuple[str, torch.device]] = []

    def on(name: str):
        def count(model, *a, **k):
            seen.append((name, next(model.parameters()).device))
            return 1

        return count

    @contextlib.contextmanager
    def turn(device):
        seen.append(("turn", torch.device(device)))
        yield

    monkeypatch.setattr(profile, "count_madds", on("madds"))
    monkeypatch.setattr(profile, "count_flops", on("flops"))
    monkeypatch.setattr(profile, "work_turn", turn)
    model = nn.Conv2d(3, 4, 3)
    meta = torch.device("meta")  # a device that is not the CPU
    assert profile.counts(model, profile.Settings(), meta) == {"params": 3 * 4 * 9 + 4, "madds": 1, "flops": 1}
    assert seen == [("turn", meta), ("madds", meta), ("flops", meta)]


# ------------------------------------------------------------------- 14. tests that mean the CPU say so


def test_14_the_tiny_cli_settings_pin_the_cpu_on_a_gpu_host(monkeypatch):
    import test_calibrate
    import test_cli
    import test_cli_errors
    import test_constraints

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU host: auto would be CUDA
    for module in (test_calibrate, test_cli, test_cli_errors, test_constraints):
        sets = [v for k, v in zip(module.TINY, module.TINY[1:], strict=False) if k == "--set"]
        spec = spec_mod.load(ROOT / "spaces" / "ndnet.yaml", sets)
        assert resolve_device(spec.target.device) == torch.device("cpu"), module.__name__
    assert devices.resolve_device("auto") == CUDA
