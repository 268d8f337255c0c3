"""benchmarks/gpu_check.py: ``--smoke`` runs every stage's code on the CPU (so the GPU check never rots), a stage
that fails or runs out of time is recorded and the check goes on, and the report renders a GPU run."""

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402 — the benchmark scripts are imported by name, from their folder


def test_bad_options_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["--smoke", "--builders", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpu_check: unknown stage or builder nosuch; stages: tests, train") and err.count("\n") == 1
    assert gpu_check.main(["--smoke", "--time-box", "train=x"]) == 2
    assert "--time-box train=x: expected STAGE=SECONDS" in capsys.readouterr().err


def test_a_time_box_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "grandchild"
    grandchild = tmp_path / "grandchild.py"
    grandchild.write_text(f"import time\ntime.sleep(3)\nopen({str(marker)!r}, 'w').close()\n")
    child = tmp_path / "child.py"
    child.write_text(
        f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, {str(grandchild)!r}])\ntime.sleep(60)\n"
    )
    t0 = time.perf_counter()
    result = gpu_check.call([sys.executable, str(child)], 1.0, tmp_path)
    assert result["status"] == "timed out" and result["returncode"] == -9 and time.perf_counter() - t0 < 30
    time.sleep(4)
    assert not marker.exists()  # the grandchild was killed with it


def test_a_stage_out_of_time_is_recorded_and_the_rest_runs(tmp_path: Path) -> None:
    # no process imports torch in 0.2 s: the latency stage runs out of its box; tests (none marked) still run
    argv = ["--smoke", "--stages", "latency,tests", "--builders", "ndnet", "--time-box", "latency=0.2"]
    assert gpu_check.main([*argv, "--out", str(tmp_path)]) == 1
    result = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert result["stages"]["latency"]["status"] == "timed out" and result["stages"]["latency"]["items"] == []
    assert result["stages"]["tests"]["status"] in ("ok", "none")
    md = re.sub(r" {2,}", " ", (tmp_path / "gpu_smoke.md").read_text())  # table cells without their padding
    assert "| latency | timed out | " in md


def _gpu_result() -> dict[str, Any]:
    """A result as a GPU run writes it (device, peaks, a failing test, a failed fold, runtimes not run)."""
    env = {
        "python": "3.12.3",
        "torch": "2.11.0+cu130",
        "cpus": 16,
        "load_average": [0.1, 0.2, 0.3],
        "device": "NVIDIA H100 80GB HBM3",
        "memory_gib": 79.2,
        "multiprocessors": 132,
        "capability": "9.0",
        "cuda": "13.0",
        "cudnn": 91300,
        "tf32_matmul": False,
        "tf32_cudnn": True,
        "bf16": True,
        "onnxruntime": "1.30.0",
        "tensorrt": "not importable (ModuleNotFoundError)",
        "pip_check": ["cityscapesscripts 2.3.0 requires typing, which is not installed."],
    }
    train = {"builder": "ndnet", "amp": True, "memory_format": "channels_last", "batch": 8, "workers": 0}
    train |= {"loop_images_per_s": 210.0, "ceiling_images_per_s": 840.0, "loop_share": 0.25}
    train |= {"loop_peak_mib": 5123.4, "ceiling_peak_mib": 4987.0}
    return {
        "environment": env,
        "load_average_end": [1.0, 0.5, 0.3],
        "seconds": 431.0,
        "stages": {
            "tests": {
                "status": "failed",
                "seconds": 41.0,
                "box_s": 70.0,
                "counts": {"passed": 7, "failed": 1},
                "failures": ["FAILED tests/test_x.py::test_fold_under_tf32"],
                "files": ["test_x.py"],
            },
            "train": {
                "status": "ok",
                "seconds": 150.0,
                "box_s": 170.0,
                "items": [{"item": "data", "images": 16, "size": [512, 1024]}, train],
            },
            "latency": {
                "status": "failed",
                "seconds": 30.0,
                "box_s": 55.0,
                "items": [
                    {"builder": "ndnet", "input": [1, 3, 1024, 2048], "median_ms": 3.21, "half_width_ms": 0.02}
                    | {"p90_ms": 3.3, "repeats": 120, "fold_bn": False, "peak_mib": 812.0}
                    | {"error": "RuntimeError: folding batch norm changed the output by 0.00312 (> 0.0001)"}
                ],
            },
            "runtimes": {
                "status": "ok",
                "seconds": 1.0,
                "box_s": 50.0,
                "items": [{"runtime": "tensorrt", "not_run": "runtime 'tensorrt' needs the package(s) tensorrt"}],
            },
            "run": {
                "status": "ok",
                "seconds": 80.0,
                "box_s": 110.0,
                "returncode": 0,
                "command": "archsearch run spaces/ndnet.yaml --trials 2 --set target.device=cuda",
                "trials": [
                    {"number": 0, "state": "COMPLETE", "miou": 0.05, "latency_ms": 3.1, "train_seconds": 9.0}
                    | {"images_per_s": 400.0, "device": "NVIDIA H100 80GB HBM3"}
                ],
            },
        },
    }


def test_the_report_of_a_gpu_run() -> None:
    md = re.sub(r" {2,}", " ", gpu_check.report(_gpu_result()))  # table cells without their column padding
    assert md.startswith("Device: **NVIDIA H100 80GB HBM3** (132 SMs, 79.2 GiB, compute 9.0), CUDA 13.0")
    assert "TF32 matmul False / cuDNN True; torch 2.11.0+cu130, Python 3.12.3" in md
    assert "`pip check`: cityscapesscripts 2.3.0 requires typing, which is not installed." in md
    assert "| tests | failed | 41 (70) | |" in md and "CUDA tests (test_x.py): 7 passed, 1 failed." in md
    assert "- FAILED tests/test_x.py::test_fold_under_tf32" in md
    assert "16 synthetic scenes at 512×1024, batch 8, loader workers 0" in md
    assert "| ndnet | on | channels_last | 210 | 840 | 0.25 | 5123.4 / 4987 | |" in md
    assert "| ndnet | 3.21 ± 0.02 | 3.3 | 120 | False | 812 | RuntimeError: folding batch norm changed" in md
    assert "- tensorrt: not run (runtime 'tensorrt' needs the package(s) tensorrt)" in md
    assert "| 0 | COMPLETE | 0.05 | 3.1 | 9 | 400 | NVIDIA H100 80GB HBM3 | |" in md


@pytest.mark.slow
def test_smoke_runs_every_stage_on_the_cpu(tmp_path: Path) -> None:
    """The acceptance run of ``--smoke``, as a user starts it: every stage passes on the CPU and records what
    the GPU check records there."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--builders", "ndnet"]
    proc = subprocess.run([*cmd, "--out", str(tmp_path)], capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_smoke.json").read_text())
    st = result["stages"]
    assert list(st) == ["tests", "train", "latency", "runtimes", "run"]
    assert {name: s["status"] for name, s in st.items() if name != "tests"} == dict.fromkeys(
        ["train", "latency", "runtimes", "run"], "ok"
    )
    assert st["tests"]["status"] in ("ok", "none")  # collected only (--smoke); none while no test is marked cuda
    train = [i for i in st["train"]["items"] if "builder" in i]
    assert {(i["amp"], i["memory_format"]) for i in train} == {
        (a, f) for a in (False, True) for f in ("nchw", "channels_last")
    }
    for i in train:
        assert i["loop_images_per_s"] > 0 and i["ceiling_images_per_s"] > 0 and i["amp_used"] is False
        assert i["loop_share"] == pytest.approx(i["loop_images_per_s"] / i["ceiling_images_per_s"])
        assert 1 <= i["loop_iterations"] <= 2 and i["loop_peak_mib"] is None  # peaks are CUDA's only
    (lat,) = st["latency"]["items"]
    assert lat["builder"] == "ndnet" and lat["median_ms"] > 0 and lat["fold_bn"] is True and lat["repeats"] >= 2
    assert lat["input"] == [1, 3, 64, 128] and "error" not in lat
    by_runtime = {i["runtime"]: i for i in st["runtimes"]["items"]}
    assert "needs a CUDA GPU" in by_runtime["tensorrt"]["not_run"]
    ort = by_runtime["onnxruntime-cuda"]  # the CPU provider stands in for CUDA's in --smoke
    assert ort["provider"] == "CPUExecutionProvider" and ort["median_ms"] > 0 and ort["max_abs_diff"] < 1e-3
    trials = st["run"]["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"] and st["run"]["returncode"] == 0
    assert all(math.isfinite(t["latency_ms"]) and 0 <= t["miou"] <= 1 for t in trials)
    md = re.sub(r" {2,}", " ", (tmp_path / "gpu_smoke.md").read_text())  # table cells without their padding
    assert md.startswith("## GPU check on ") and "(--smoke, CPU) (issues 19, 22)" in md.splitlines()[0]
    assert "| ndnet | off | nchw |" in md and "Reproduce: `python benchmarks/gpu_check.py --smoke" in md
