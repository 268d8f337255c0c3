"""Deployment runtimes: ONNX Runtime and OpenVINO agree with eager PyTorch and are timed under the protocol;
fast inference and tensorrt without a GPU are refused with one line; `profile --runtime all` prints one table;
`export` writes an ONNX file that ONNX Runtime runs with the checkpoint's output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import archsearch
from archsearch import cli
from archsearch import spec as spec_mod
from archsearch.cost import TimedForward, count_params, fold_bn, runtimes
from archsearch.training import checkpoint
from archsearch.util.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]
SIZE = (1, 3, 32, 64)


@pytest.fixture(autouse=True)
def _lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))


class _Net(nn.Module):
    """conv-bn-relu at stride 2, a 1×1 classifier: logits at half the input (the up-sampling is timed)."""

    def __init__(self) -> None:
        super().__init__()
        bn = nn.BatchNorm2d(8)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), bn, nn.ReLU())
        self.head = nn.Conv2d(8, 5, 1)
        assert bn.running_mean is not None and bn.running_var is not None  # tracked: the default
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.mark.slow  # the dynamo exporter: ~5 s per export, ~15 s for the first in a process
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_exported_runtimes_agree_with_eager_and_are_timed(runtime, tmp_path):
    torch.manual_seed(0)
    model = _Net().eval()
    timed = TimedForward(fold_bn(model, SIZE))
    path = runtimes.export_onnx(timed, SIZE, tmp_path / "net.onnx")
    x = torch.randn(*SIZE)
    runner = runtimes.prepare(runtime, timed, x, threads=1, onnx_path=path)
    out = runner.run()
    with torch.no_grad():
        ref = TimedForward(model)(x)
    assert out.shape == (1, 5, 32, 64)
    assert float((out - ref).abs().max()) < 1e-4  # the exported, folded model computes the same logits
    assert runtimes.check(runner, ref) < 1e-4

    lat = runtimes.latency(
        model, SIZE, "cpu", runtime=runtime, threads=1, repeats=10, rel_ci=0.5, max_seconds=5, onnx_path=path
    )
    assert lat.runtime == runtime and lat.runtime_version.startswith(runtime.replace("onnxruntime", "onnxruntime "))
    assert lat.repeats >= 10 and lat.median_ms > 0 and 0 <= lat.half_width_ms <= 0.5 * lat.median_ms
    assert lat.fold_bn and lat.threads == 1


def test_an_exported_model_that_disagrees_is_not_timed():
    runner = runtimes.Runner("onnxruntime", "onnxruntime x", lambda: torch.ones(1, 5, 4, 4))
    with pytest.raises(runtimes.RuntimeMismatch, match="differs from eager PyTorch by 1"):
        runtimes.check(runner, torch.zeros(1, 5, 4, 4))
    with pytest.raises(runtimes.RuntimeMismatch, match="output shape"):
        runtimes.check(runner, torch.zeros(1, 5, 8, 8))


def test_fast_inference_is_refused_for_exported_runtimes_only():
    model = archsearch.build("sparse_two_column", inference="fast")
    for runtime in ("onnxruntime", "openvino"):
        with pytest.raises(runtimes.RuntimeUnavailable, match=r"fast inference .* cannot be exported to ONNX"):
            runtimes.latency(model, SIZE, runtime=runtime)
    assert runtimes.refusal("eager", archsearch.builders.config_of(model).knobs.as_dict()) is None
    assert runtimes.refusal("onnxruntime", {"inference": "classic"}) is None
    # in a spec: at load, naming the key (the builder's default is fast inference)
    with pytest.raises(SpecError, match=r"wu2017_table3.yaml: rows\[0\].knobs: runtime 'openvino': fast inference"):
        spec_mod.load(ROOT / "studies" / "wu2017_table3.yaml", ["target.runtime=openvino"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a GPU")
def test_tensorrt_without_a_gpu_is_one_clear_line(capsys):
    reason = runtimes.unavailable("tensorrt")
    assert reason is not None and "tensorrt' needs a CUDA GPU" in reason
    assert cli.main(["profile", "ndnet", "--input", "1,3,32,64", "--runtime", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs a CUDA GPU" in err
    with pytest.raises(SpecError, match=r"target.runtime: runtime 'tensorrt' needs a CUDA GPU"):
        spec_mod.load(ROOT / "spaces" / "ndnet.yaml", ["target.runtime=tensorrt"])


def test_a_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert (
        runtimes.unavailable("openvino")
        == "runtime 'openvino' needs the package(s) openvino: pip install -e \".[runtimes]\""
    )
    assert runtimes.unavailable("onnxruntime") is None


@pytest.mark.slow
def test_profile_runtime_all_prints_one_table(capsys, monkeypatch):
    # torch.compile of NDNet takes minutes on a loaded CPU; the table's compile row runs the model uncompiled here
    # (tests/test_runtimes.py::test_compile_matches_eager compiles a small model for real)
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)
    args = ["profile", "ndnet", "--input", "1,3,32,64", "--runtime", "all", "--max-seconds", "1", "--rel-ci", "0.5"]
    args += ["--device", "cpu"]  # the CPU runtimes are meant (auto: CUDA on a GPU host, which they refuse)
    assert cli.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(out) if line.startswith("runtime "))
    assert out[head].split() == ["runtime", "version", "median", "±", "half-width", "p90", "repeats"]
    rows = {line.split()[0]: line for line in out[head + 1 : head + 5]}
    assert set(rows) == {"eager", "compile", "onnxruntime", "openvino"}
    for line in rows.values():
        cells = line.split()
        assert "ms" in cells and "±" in cells and int(cells[-1]) >= 10, line
    if not torch.cuda.is_available():
        assert out[head + 5].startswith("(not run: runtime 'tensorrt' needs a CUDA GPU")
    assert any("1 thread, batch norm folded, logits up-sampled to the input" in line for line in out)


@pytest.mark.slow
def test_compile_matches_eager():
    torch.manual_seed(0)
    lat = runtimes.latency(_Net(), SIZE, "cpu", runtime="compile", threads=1, repeats=10, rel_ci=0.5, max_seconds=5)
    assert lat.runtime == "compile" and "inductor" in lat.runtime_version and lat.repeats >= 10


SPEC = """
name: export
builder: ndnet
knobs:
  expansion: {choices: [2]}
objectives: [{name: miou, direction: maximize}, {name: latency_ms, direction: minimize}]
data: {name: synthetic, train_images: 2, val_images: 2}
proxy: {iterations: 2, batch: 2, scale: 0.03125}
target: {input: [1, 3, 32, 64], device: cpu, warmup: 0, repeats: 3, max_seconds: 2}
search: {sampler: random, trials: 1, seed: 0}
"""


@pytest.mark.slow
def test_export_writes_the_trials_model_that_onnxruntime_runs(tmp_path, monkeypatch, capsys):
    import onnxruntime as ort

    monkeypatch.chdir(tmp_path)
    (tmp_path / "export.yaml").write_text(SPEC)
    url = f"sqlite:///{tmp_path / 'export.db'}"
    assert cli.main(["run", "export.yaml", "--storage", url, "-q"]) == 0
    capsys.readouterr()
    out = tmp_path / "model.onnx"
    assert cli.main(["export", "export.yaml", "--trial", "0", "--storage", url, "--out", str(out)]) == 0
    assert out.is_file() and f"wrote {out}: trial 0 of 'export' (ndnet)" in capsys.readouterr().out

    import optuna

    trial = optuna.load_study(study_name="export", storage=url).trials[0]
    model, _ = checkpoint.load(trial.user_attrs["checkpoint"])
    x = torch.randn(1, 3, 32, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = TimedForward(model.eval())(x).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == (1, 19, 32, 64)
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    # the trial recorded the protocol it was timed under
    cost = trial.user_attrs["cost"]
    assert cost["runtime"] == "eager" and cost["fold_bn"] is True and cost["threads"] == 1
    assert cost["latency_repeats"] >= 3 and cost["latency_half_width_ms"] >= 0

    assert cli.main(["export", "export.yaml", "--trial", "7", "--storage", url, "--out", str(out)]) == 2
    assert "--trial 7: study 'export' has no checkpoint for it" in capsys.readouterr().err
    assert cli.main(["export", "export.yaml", "--trial", "0", "--storage", url, "--out", "x.pt"]) == 2


@pytest.mark.slow
def test_one_profile_for_trials_and_the_profile_command(capsys):
    """profile.profile is the trial's cost record; trial.profile reads its settings from target:, and
    `archsearch profile` counts and times through the same functions."""
    import dataclasses

    from archsearch import builders
    from archsearch.cost import profile
    from archsearch.search import cost_record

    torch.manual_seed(0)
    model = _Net()
    settings = profile.Settings(input=SIZE, warmup=0, repeats=3, rel_ci=0.5, max_seconds=2)
    cost = profile.profile(model, settings, torch.device("cpu"))
    assert cost["params"] == 8 * 3 * 9 + 2 * 8 + 8 * 5 + 5 == count_params(model)
    # multiply-adds: the 3×3 convolution at 16×32 outputs and the 1×1 classifier (bias adds not counted)
    assert cost["madds"] == 16 * 32 * (8 * 3 * 9 + 8 * 5)
    assert cost["flops"] >= cost["madds"] and cost["latency_ms"] > 0 and cost["latency_repeats"] >= 3
    assert set(cost) == set(cost_record.COST_FIELDS) - {"key"}
    assert cost["input_size"] == list(SIZE) and cost["threads"] == 1 and cost["fold_bn"] is True

    spec = spec_mod.load(ROOT / "spaces" / "ndnet.yaml", ["target.input=[1,3,32,64]", "target.fold_bn=false"])
    of_spec = profile.Settings.of(spec.target, 2)
    for f in dataclasses.fields(of_spec):  # every setting comes from target: (threads as given)
        expected = 2 if f.name == "threads" else getattr(spec.target, f.name)
        assert getattr(of_spec, f.name) == (tuple(expected) if f.name == "input" else expected), f.name

    args = [
        "profile",
        "ndnet",
        "--input",
        "1,3,32,64",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--max-seconds",
        "1",
        "--rel-ci",
        "0.5",
        "--device",
        "cpu",
    ]
    assert cli.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    ndnet = builders.build("ndnet", 19)
    params = count_params(ndnet)
    assert f"params      {params:,} ({params / 1e6:.3f}M)" in out
    assert any(line.startswith("flops       ") and "fvcore's total" in line for line in out)
    head = next(i for i, line in enumerate(out) if line.startswith("runtime "))
    assert out[head].split() == ["runtime", "version", "median", "±", "half-width", "p90", "repeats"]
    assert out[head + 1].split()[0] == "eager" and int(out[head + 1].split()[-1]) >= 1
