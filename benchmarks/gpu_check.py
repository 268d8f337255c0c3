"""The GPU check (issues 19 and 22): one prepared command that fits 8 minutes on one GPU and records what the CUDA
path does there.

    python benchmarks/gpu_check.py             # on a CUDA machine: results/gpu_<device>.md/.json, RESULTS.md
    python benchmarks/gpu_check.py --smoke     # the same code on the CPU: tiny sizes, 1–2 iterations (a test)

Stages, each in a process of its own with a time box (``--time-box STAGE=S``); a stage that fails, crashes or
runs out of time is recorded as such with what it measured so far, and the next one runs:

1. ``tests`` — the CUDA-only tests: ``pytest -m cuda`` on the test files that mark any (``--smoke`` collects
   them only);
2. ``train`` — per builder, proxy training images/s with AMP on and off, NCHW and channels_last, the training
   loop beside a model-bound ceiling (the same kind of batches already on the device), and peak memory
   (``torch.cuda.max_memory_allocated``); see ``benchmarks/_gpu_stages.py``;
3. ``latency`` — per builder, CUDA latency at 1024×2048 under the adaptive protocol with its 95% half-width;
4. ``runtimes`` — TensorRT and ONNX Runtime's CUDA provider, when importable;
5. ``run`` — a 2-trial ``archsearch run spaces/ndnet.yaml`` with ``target.device: cuda`` on synthetic scenes of
   Cityscapes size (1024×2048, proxy scale 0.5).

On a machine without a package index, install first from carried wheels (benchmarks/gpu/fetch_wheels.sh).
The exit status is 0 when every stage passed, 1 when one failed or ran out of time, 2 for bad options.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _gpu_stages as stages
import collect
from _common import RESULTS, ROOT, markdown_table, write_results

STAGES = ("tests", "train", "latency", "runtimes", "run")
#: seconds per stage on a GPU: 455 in all, so that the whole check with start-up stays within 8 minutes
GPU_BOXES = {"tests": 70.0, "train": 170.0, "latency": 55.0, "runtimes": 50.0, "run": 110.0}
#: --smoke: generous (a loaded CPU); they bound a hang, not the work
SMOKE_BOXES = {"tests": 180.0, "train": 240.0, "latency": 120.0, "runtimes": 180.0, "run": 300.0}
SMOKE_OUT = ROOT / "benchmarks" / "out"
RUN_SPEC = ROOT / "spaces" / "ndnet.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="the same code on the CPU, tiny sizes (default: off)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma list (default: {','.join(STAGES)})")
    ap.add_argument("--builders", default="", help="comma list (default: every builder, cheapest first)")
    ap.add_argument(
        "--time-box", action="append", default=[], metavar="STAGE=S", help="a stage's seconds (default: built in)"
    )
    ap.add_argument("--out", type=Path, help="folder for gpu_*.md/.json (default: results/; --smoke: out/)")
    ap.add_argument("--child", choices=tuple(stages.STAGES), help=argparse.SUPPRESS)
    ap.add_argument("--settings", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--items", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def settings(smoke: bool, names: tuple[str, ...], cache_dir: Path) -> stages.Settings:
    if smoke:
        return stages.Settings(
            device="cpu",
            smoke=True,
            builders=names,
            input=(1, 3, 64, 128),
            data_size=(64, 128),
            proxy_scale=1.0,
            batch=2,
            train_images=4,
            warmup_its=1,
            timed_seconds=0.0,
            min_its=1,
            max_its=2,
            latency_repeats=2,
            latency_seconds=2.0,
            rel_ci=0.5,
            cache_dir=str(cache_dir),
        )
    return stages.Settings(
        device="cuda",
        smoke=False,
        builders=names,
        input=(1, 3, 1024, 2048),
        data_size=(1024, 2048),
        proxy_scale=0.5,  # 512×1024 proxy images
        batch=8,
        train_images=16,
        warmup_its=3,
        timed_seconds=1.5,
        min_its=3,
        max_its=40,
        latency_repeats=10,
        latency_seconds=5.0,
        rel_ci=0.02,
        cache_dir=str(cache_dir),
    )


def run_args(smoke: bool, cache_dir: Path) -> list[str]:
    """``--set`` options of the ``run`` stage: synthetic scenes of Cityscapes size on the GPU (tiny on the CPU)."""
    common = {"data.name": "synthetic", "data.cache_dir": str(cache_dir)}
    if smoke:
        sets = {
            **common,
            "target.device": "cpu",
            "data.size": "[64,128]",
            "data.train_images": "4",
            "data.val_images": "2",
            "proxy.scale": "1.0",
            "proxy.batch": "2",
            "proxy.iterations": "2",
            "target.input": "[1,3,64,128]",
            "target.repeats": "2",
            "target.warmup": "1",
            "target.max_seconds": "2",
        }
    else:
        sets = {
            **common,
            "target.device": "cuda",
            "data.size": "[1024,2048]",
            "data.train_images": "16",
            "data.val_images": "4",
            "proxy.scale": "0.5",
            "proxy.batch": "8",
            "proxy.iterations": "60",
            "target.repeats": "10",
            "target.max_seconds": "10",
        }
    return [item for k, v in sets.items() for item in ("--set", f"{k}={v}")]


# ------------------------------------------------------------------------------------------- environment


def environment(smoke: bool) -> dict[str, Any]:
    """The device and software the numbers come from (and ``pip check``'s findings)."""
    import torch

    from archsearch import cost

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    if smoke:
        env["device"] = cost.device_name(torch.device("cpu"), 1)
    else:
        props = torch.cuda.get_device_properties(0)
        env |= {
            "device": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "bf16": torch.cuda.is_bf16_supported(),
        }
    for package in ("onnxruntime", "tensorrt", "optuna", "pydantic"):
        try:
            module = __import__(package)
            env[package] = getattr(module, "__version__", "?")
        except Exception as exc:  # noqa: BLE001 — a broken install is recorded, not fatal
            env[package] = f"not importable ({exc.__class__.__name__})"
    try:
        check = subprocess.run(
            [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=60, check=False
        )
        env["pip_check"] = [line for line in check.stdout.splitlines() if line.strip()][:20]
    except (OSError, subprocess.TimeoutExpired) as exc:
        env["pip_check"] = [f"pip check did not run ({exc.__class__.__name__})"]
    return env


# ------------------------------------------------------------------------------------------------ stages


def _child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def call(cmd: list[str], seconds: float, cwd: Path) -> dict[str, Any]:
    """Run ``cmd`` in a session of its own for at most ``seconds`` (then its whole process group is killed):
    status ``ok``, ``failed`` (exit status ≠ 0) or ``timed out``, with the tails of its output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=_child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=seconds)
        status = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        status = "timed out"
    return {
        "status": status,
        "returncode": proc.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "box_s": seconds,
        "stdout_tail": out.splitlines()[-15:],
        "stderr_tail": err.splitlines()[-15:],
    }


def stage_tests(smoke: bool, box: float, work: Path) -> dict[str, Any]:
    files = sorted(str(p) for p in (ROOT / "tests").glob("test_*.py") if "mark.cuda" in p.read_text())
    if not files:
        return {"status": "none", "seconds": 0.0, "note": "no test file marks a test with @pytest.mark.cuda"}
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rfEs", "-p", "no:cacheprovider"]
    cmd += ["--continue-on-collection-errors", *(["--collect-only"] if smoke else []), *files]
    result = call(cmd, box, ROOT)
    if result["returncode"] == 5:
        result |= {"status": "none", "note": "no test is marked cuda"}
    summary = next((line for line in reversed(result["stdout_tail"]) if re.search(r"\d+ \w+", line)), "")
    result["counts"] = {
        k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|tests?)", summary)
    }
    result["failures"] = [line for line in result["stdout_tail"] if line.startswith(("FAILED", "ERROR"))]
    result["files"] = [Path(f).name for f in files]
    return result


def stage_child(name: str, s: stages.Settings, box: float, work: Path) -> dict[str, Any]:
    path, items = work / "settings.json", work / f"{name}.jsonl"
    s.write(path)
    margin = min(20.0, 0.2 * box)  # the child stops starting items here; the parent kills it at the box
    cmd = [sys.executable, __file__, "--child", name, "--settings", str(path), "--items", str(items)]
    result = call([*cmd, "--seconds", str(box - margin)], box, ROOT)
    result["items"] = [json.loads(line) for line in items.read_text().splitlines()] if items.is_file() else []
    if result["status"] == "ok" and any("error" in it for it in result["items"]):
        result["status"] = "failed"
    return result


def stage_run(smoke: bool, box: float, work: Path) -> dict[str, Any]:
    import optuna

    url = f"sqlite:///{work / 'run.db'}"
    cmd = [sys.executable, "-m", "archsearch.cli", "run", str(RUN_SPEC), "--storage", url, "--trials", "2", "-q"]
    cmd += ["--out", str(work / "run_out"), *run_args(smoke, work / "cache")]
    result = call(cmd, box, work)
    shown = [a for a in cmd[cmd.index("-q") + 3 :] if not a.startswith("data.cache_dir=")]
    result["command"] = "archsearch run spaces/ndnet.yaml --trials 2 " + " ".join(shown).replace("--set --set", "--set")
    trials = []
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name="ndnet", storage=url)
        keys = ("miou", "latency_ms", "latency_half_width_ms", "train_seconds", "images_per_s", "device")
        for t in study.get_trials(deepcopy=False):
            record = {"number": t.number, "state": t.state.name, **{k: t.user_attrs.get(k) for k in keys}}
            reason = t.user_attrs.get("fail_reason") or t.user_attrs.get("pruned_reason")
            trials.append(record | ({"reason": str(reason)[:300]} if reason else {}))
    except Exception as exc:  # noqa: BLE001 — no study (the run failed early): recorded
        result["study_error"] = stages.error_text(exc)
    result["trials"] = trials
    if result["status"] == "ok" and sum(t["state"] == "COMPLETE" for t in trials) < 2:
        result["status"] = "failed"
    return result


# ------------------------------------------------------------------------------------------------ report


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "∞" if value == float("inf") else f"{value:.{digits}g}"
    return str(value)


def _ms(item: dict[str, Any]) -> str:
    return f"{_num(item['median_ms'], 4)} ± {_num(item['half_width_ms'], 2)}" if "median_ms" in item else "—"


def _note(item: dict[str, Any]) -> str:
    return str(item.get("error") or item.get("skipped") or item.get("error_unfolded") or "")


def report(result: dict[str, Any]) -> str:
    env, st = result["environment"], result["stages"]
    lines = [
        f"Device: **{env['device']}**"
        + (
            f" ({env['multiprocessors']} SMs, {env['memory_gib']} GiB, compute {env['capability']}), CUDA "
            f"{env['cuda']}, cuDNN {env['cudnn']}, TF32 matmul {env['tf32_matmul']} / cuDNN {env['tf32_cudnn']}"
            if "cuda" in env
            else " (--smoke: the code path on the CPU, tiny sizes; no GPU number here)"
        )
        + f"; torch {env['torch']}, Python {env['python']}, onnxruntime {env['onnxruntime']}, "
        f"TensorRT {env['tensorrt']}. Load average at the start {env['load_average']}, at the end "
        f"{result['load_average_end']}; {result['seconds']:.0f} s in all.",
        "",
        "`pip check`: " + ("; ".join(env["pip_check"]).rstrip(".") or "no output") + ".",
        "",
        markdown_table(
            ["stage", "status", "seconds (box)", "note"],
            [
                [name, s["status"], f"{_num(s.get('seconds'))} ({_num(s.get('box_s'))})", s.get("note", "")]
                for name, s in st.items()
            ],
        ),
    ]
    if "tests" in st:
        t = st["tests"]
        counts = ", ".join(f"{n} {k}" for k, n in t.get("counts", {}).items()) or t.get("note", "")
        lines += ["", f"CUDA tests ({', '.join(t.get('files', [])) or 'none'}): {counts}."]
        lines += [f"- {f}" for f in t.get("failures", [])]
    if "train" in st:
        items = [i for i in st["train"]["items"] if "builder" in i]
        data = next((i for i in st["train"]["items"] if i.get("item") == "data"), None)
        rows = [
            [
                i["builder"],
                "on" if i["amp"] else "off",
                i["memory_format"],
                _num(i.get("loop_images_per_s")),
                _num(i.get("ceiling_images_per_s")),
                _num(i.get("loop_share"), 2),
                f"{_num(i.get('loop_peak_mib'), 5)} / {_num(i.get('ceiling_peak_mib'), 5)}",
                _note(i),
            ]
            for i in items
        ]
        shape = f"{data['images']} synthetic scenes at {data['size'][0]}×{data['size'][1]}" if data else "—"
        lines += [
            "",
            f"Proxy training ({shape}, batch {items[0].get('batch', '?') if items else '?'}, loader workers "
            f"{items[0].get('workers', '?') if items else '?'}): images/s of the training loop (Trainer: loader, "
            "copy, augmentation, loss check) and of its model-bound ceiling (the same kind of batches already on "
            "the device: forward, backward, step); AMP = fp16 autocast + GradScaler.",
            "",
            markdown_table(
                ["builder", "AMP", "layout", "loop img/s", "ceiling img/s", "loop/ceiling", "peak MiB", "note"], rows
            ),
        ]
    if "latency" in st:
        items = st["latency"]["items"]
        rows = [
            [
                i["builder"],
                _ms(i),
                _num(i.get("p90_ms"), 4),
                _num(i.get("repeats")),
                _num(i.get("fold_bn")),
                _num(i.get("peak_mib"), 5),
                _note(i),
            ]
            for i in items
        ]
        size = items[0]["input"] if items else []
        lines += [
            "",
            f"Latency (eager, batch 1 at {'×'.join(map(str, size[2:]))}, float32, batch norm folded unless that "
            "failed): median ms ± 95% half-width, repeats until it is within the protocol's rel_ci.",
            "",
            markdown_table(["builder", "median ± hw ms", "p90 ms", "repeats", "folded", "peak MiB", "note"], rows),
        ]
    if "runtimes" in st:
        items = st["runtimes"]["items"]
        rows = [
            [
                i["builder"],
                i["runtime"] + (f" ({i['provider']})" if "provider" in i else ""),
                _ms(i),
                _num(i.get("repeats")),
                _num(i.get("max_abs_diff"), 2),
                _note(i),
            ]
            for i in items
            if "builder" in i
        ]
        lines += ["", "Deployment runtimes on the device:", ""]
        lines += [f"- {i['runtime']}: not run ({i['not_run']})" for i in items if "not_run" in i]
        if rows:
            lines += ["", markdown_table(["builder", "runtime", "median ± hw ms", "repeats", "max diff", "note"], rows)]
    if "run" in st:
        r = st["run"]
        rows = [
            [
                t["number"],
                t["state"],
                _num(t.get("miou")),
                _num(t.get("latency_ms"), 4),
                _num(t.get("train_seconds")),
                _num(t.get("images_per_s")),
                t.get("device") or "",
                t.get("reason", ""),
            ]
            for t in r.get("trials", [])
        ]
        lines += ["", f"`{r.get('command', 'archsearch run')}`: exit {r.get('returncode')}, {r['status']}.", ""]
        lines += [
            markdown_table(["trial", "state", "mIoU", "latency ms", "train s", "img/s", "device", "reason"], rows)
        ]
        if r["status"] != "ok":
            lines += ["", "Its last lines:", "", *(f"    {x}" for x in r.get("stderr_tail", [])[-8:])]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- main


def _boxes(args: argparse.Namespace) -> dict[str, float]:
    boxes = dict(SMOKE_BOXES if args.smoke else GPU_BOXES)
    for item in args.time_box:
        stage, _, seconds = item.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if stage not in boxes or not value > 0:
            raise SystemExit(f"gpu_check: --time-box {item}: expected STAGE=SECONDS, STAGE one of {', '.join(boxes)}")
        boxes[stage] = value
    return boxes


def run(args: argparse.Namespace) -> dict[str, Any]:
    from archsearch import builders

    chosen = [s for s in args.stages.split(",") if s]
    unknown = [s for s in chosen if s not in STAGES]
    names = [n for n in args.builders.split(",") if n] or builders.names()
    unknown += [n for n in names if n not in builders.names()]
    if unknown:
        raise SystemExit(
            f"gpu_check: unknown stage or builder {', '.join(unknown)}; stages: {', '.join(STAGES)}; "
            f"builders: {', '.join(builders.names())}"
        )
    boxes = _boxes(args)
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device here; --smoke runs the same code on the CPU")
    start = time.perf_counter()
    result: dict[str, Any] = {"smoke": args.smoke, "environment": environment(args.smoke), "stages": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        s = settings(args.smoke, stages.ordered(names), work / "cache")
        result["settings"] = s.__dict__ | {"time_boxes": boxes}
        for name in chosen:
            print(f"gpu_check: {name} (at most {boxes[name]:.0f} s) ...", flush=True)
            try:
                if name == "tests":
                    out = stage_tests(args.smoke, boxes[name], work)
                elif name == "run":
                    out = stage_run(args.smoke, boxes[name], work)
                else:
                    out = stage_child(name, s, boxes[name], work)
            except Exception as exc:  # noqa: BLE001 — the check itself broke in this stage: recorded, go on
                out = {"status": "failed", "seconds": None, "note": stages.error_text(exc), "items": []}
            result["stages"][name] = out
            print(f"gpu_check: {name} {out['status']} in {_num(out.get('seconds'))} s", flush=True)
    result["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        stages.run_child(args.child, args.settings, args.items, args.seconds)
        return 0
    try:
        result = run(args)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    body = report(result)
    device = result["environment"]["device"]
    slug = "smoke" if args.smoke else re.sub(r"[^a-z0-9]+", "_", device.lower()).strip("_")
    out = args.out or (SMOKE_OUT if args.smoke else RESULTS)
    cmd = "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    title = f"GPU check on {device}" + (" (--smoke, CPU)" if args.smoke else "") + " (issues 19, 22)"
    path = write_results(f"gpu_{slug}", title, body + f"\n\nReproduce: `{cmd.strip()}`", result, out=out)
    print(body)
    print(f"wrote {path}")
    if out == RESULTS:
        collect.main()
    failed = [n for n, s in result["stages"].items() if s["status"] in ("failed", "timed out")]
    if failed:
        print(f"gpu_check: stages not passed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
