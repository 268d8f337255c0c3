"""Issue 22 on a GPU: what only CUDA shows (every test is ``@pytest.mark.cuda``: skipped without a GPU, run by
``benchmarks/gpu_check.py`` as ``pytest -m cuda``). tests/test_cuda.py checks the same paths on the CPU."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import archsearch
from archsearch import builders, data
from archsearch.cost import (
    TimedForward,
    device_id,
    fold_bn,
    latency,
    probe_size,
    profile,
    release_memory,
    runtimes,
)
from archsearch.search import cuda_faults
from archsearch.spec import DataSpec, ProxySpec
from archsearch.training import scoring, train
from batchnorm import randomise_batch_norm

pytestmark = pytest.mark.cuda
GPU = torch.device("cuda")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))


@pytest.fixture
def tiny_set(tmp_path) -> data.SegDataset:
    spec = DataSpec(name="synthetic", size=(128, 256), train_images=8, val_images=8, cache_dir=str(tmp_path))
    return data.load(spec, "train", 1.0)


def _syncs(fn) -> int:
    """How many synchronising CUDA calls ``fn()`` makes (torch's sync debug mode, one warning each)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


# 1 -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", builders.names())
def test_1_fold_bn_passes_with_tf32_convolutions_on_every_builder(name):
    assert torch.backends.cudnn.allow_tf32  # cuDNN's default on the GPU: TF32 convolutions
    model = archsearch.build(name).eval().to(GPU)
    randomise_batch_norm(model)
    folded = fold_bn(model, probe_size((1, 3, 1024, 2048)))  # raised "changed the output" before the fix
    x = torch.randn(1, 3, 64, 128, device=GPU)
    with torch.no_grad():
        ref, out = TimedForward(model)(x), TimedForward(folded)(x)
    assert float((ref - out).abs().max()) <= 1e-2 * max(1.0, float(ref.abs().max()))


def test_1_9_latency_folds_tunes_and_times_channels_last_on_the_gpu():
    before = torch.backends.cudnn.benchmark
    model = archsearch.build("ndnet").eval()
    lat = latency(model, (1, 3, 512, 1024), GPU, warmup=2, repeats=5, fold=True, memory_format="auto")
    assert lat.memory_format == "channels_last" and lat.fold_bn and lat.repeats == 5 and lat.median_ms > 0
    assert lat.device == torch.cuda.get_device_name(GPU) and torch.backends.cudnn.benchmark == before


# 2–5 -------------------------------------------------------------------------------------------------------


def test_2_export_from_a_cuda_model(tmp_path):
    if runtimes.missing(("onnx", "onnxscript")):
        pytest.skip(f"export needs onnx and onnxscript: {runtimes.EXTRA_GPU}")
    timed = TimedForward(archsearch.build("ndnet").eval().to(GPU))
    path = runtimes.export_onnx(timed, (1, 3, 64, 128), tmp_path / "m.onnx")
    assert path.stat().st_size > 10_000


@pytest.fixture
def tensorrt(tmp_path, monkeypatch) -> Path:
    reason = runtimes.unavailable("tensorrt")
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setenv("ARCHSEARCH_TRT_CACHE", str(tmp_path / "trt"))
    return tmp_path / "trt"


def test_3_tensorrt_version_with_onnxruntime_gpu(tensorrt):
    import onnxruntime
    import tensorrt as trt

    assert runtimes.version("tensorrt") == f"tensorrt {trt.__version__}, onnxruntime {onnxruntime.__version__}"


def test_4_5_tensorrt_runs_on_cuda_tensors_with_its_provider_and_caches_its_engine(tensorrt, tmp_path):
    size = (1, 3, 256, 512)
    timed = TimedForward(fold_bn(archsearch.build("ndnet").eval().to(GPU), probe_size(size))).eval()
    x = torch.randn(*size, device=GPU)
    path = runtimes.export_onnx(timed, size, tmp_path / "m.onnx")
    runner = runtimes.prepare("tensorrt", timed, x, 1, path)  # RuntimeUnavailable on a fallback
    out = runner.run()
    assert out.device == x.device and out.shape == (1, 19, 256, 512)
    with torch.inference_mode():
        runtimes.check(runner, timed(x), rtol=runtimes.CHECK_RTOL["tensorrt"])
    assert any(tensorrt.iterdir())  # the engine (and timing) cache
    lat = runtimes.latency(archsearch.build("ndnet"), size, GPU, runtime="tensorrt", repeats=5, max_seconds=120)
    assert lat.runtime == "tensorrt" and lat.median_ms > 0


# 6 -----------------------------------------------------------------------------------------------------------


def test_6_the_lock_name_is_the_gpus_uuid():
    uuid = str(torch.cuda.get_device_properties(0).uuid)
    assert uuid and device_id(torch.device("cuda:0")) == device_id(GPU) == f"cuda-{uuid}"


# 7, 10 -----------------------------------------------------------------------------------------------------


def test_7_training_synchronises_about_once_per_loss_check(tiny_set):
    model = archsearch.build("ndnet", 19)
    proxy = ProxySpec(iterations=50, batch=4, crop=(96, 192))
    n = _syncs(lambda: train.fit(model, tiny_set, proxy, GPU, progress=False))
    assert n <= 50 // train.LOSS_CHECK_EVERY + 4, n  # was ≥ 3 per iteration (loss, scaler, work turn)


def test_10_evaluation_synchronises_once_per_evaluation_not_per_batch(tiny_set):
    model = archsearch.build("ndnet", 19).to(GPU)
    scoring.evaluate(model, tiny_set, GPU, batch=2, progress=False)  # warm: cuDNN's tuning, the loader
    n = _syncs(lambda: scoring.evaluate(model, tiny_set, GPU, batch=1, progress=False))
    assert n <= 4, n  # 8 batches: was ~4 per batch


# 8 -----------------------------------------------------------------------------------------------------------


def test_8_bf16_training_needs_no_scaler(tiny_set):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    proxy = ProxySpec(iterations=5, batch=2, amp=True)
    assert train.amp_dtype(proxy, GPU) == torch.bfloat16 and not train.grad_scaler(proxy, GPU).is_enabled()
    result = train.fit(archsearch.build("ndnet", 19), tiny_set, proxy, GPU, progress=False)
    assert len(result.losses) == 5 and all(math.isfinite(v) for v in result.losses)


def test_8_fp16_phases_share_one_scaler(tiny_set, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    proxy = ProxySpec(iterations=4, batch=2, amp=True)
    scaler = train.grad_scaler(proxy, GPU)
    assert scaler.is_enabled() and train.amp_dtype(proxy, GPU) == torch.float16
    model = archsearch.build("ndnet", 19)
    first = train.fit(model, tiny_set, proxy, GPU, progress=False, scaler=scaler)
    scale = scaler.get_scale()
    train.fit(model, tiny_set, proxy, GPU, progress=False, scaler=scaler, schedule=(4, 8))
    assert all(math.isfinite(v) for v in first.losses) and scaler.get_scale() <= scale  # carried, not reset


# 11 ----------------------------------------------------------------------------------------------------------


def test_11_out_of_memory_is_retried_after_the_cache_is_handed_back():
    free, total = torch.cuda.mem_get_info()
    block = torch.empty(int(free * 0.5), dtype=torch.uint8, device=GPU)
    del block
    cached = torch.cuda.memory_reserved()
    assert cached >= free * 0.5
    with pytest.raises(torch.OutOfMemoryError) as info:
        torch.empty(2 * total, dtype=torch.uint8, device=GPU)
    assert cuda_faults.triage(info.value, GPU, 0) == cuda_faults.Verdict(retry=True)
    assert torch.cuda.memory_reserved() < cached
    release_memory(GPU)


def test_11_a_device_side_assert_is_a_lost_context():
    code = (
        "import torch\n"
        "from archsearch.search import cuda_faults\n"
        "x, i = torch.zeros(2, device='cuda'), torch.tensor([5], device='cuda')\n"
        "try:\n"
        "    x[i] += 1\n"
        "    torch.cuda.synchronize()\n"
        "    raise SystemExit('no error')\n"
        "except RuntimeError as exc:\n"
        "    v = cuda_faults.triage(exc, torch.device('cuda'))\n"
        "print('STOP' if v.stop and v.retry else 'GO')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.stdout.strip().splitlines()[-1] == "STOP", result.stderr[-2000:]


# 12 ----------------------------------------------------------------------------------------------------------


def test_12_parts_train_as_one_fit_with_dropout_on_the_gpu(tiny_set):
    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.5), nn.Conv2d(16, 19, 1))

    proxy = ProxySpec(iterations=6, batch=2, amp=False)
    whole = net()
    train.fit(whole, tiny_set, proxy, GPU, seed=1, progress=False)
    parts = net()
    trainer = train.Trainer(parts, tiny_set, proxy, GPU, seed=1)
    trainer.advance(3)
    train.Trainer(net(), tiny_set, proxy, GPU, seed=2).advance(3)  # reseeds and draws from the GPU generator
    trainer.advance(3)
    for a, b in zip(whole.state_dict().values(), parts.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# 13 ----------------------------------------------------------------------------------------------------------


def test_13_counts_on_the_gpu_equal_those_on_the_cpu():
    settings = profile.Settings(input=(1, 3, 256, 512))
    model = archsearch.build("ndnet", 19)
    on_gpu = profile.counts(model, settings, GPU)
    assert next(model.parameters()).device.type == "cuda"
    assert on_gpu == profile.counts(model, settings, "cpu")
