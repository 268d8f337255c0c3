"""`archsearch dashboard`: the front attached to the study once per change, and optuna-dashboard seen in a real
headless browser (Debian's chromium) showing the study, its trials' records and the attached plot."""

import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.distributions import IntDistribution
from optuna.trial import create_trial
from PIL import Image

from archsearch import cli, search
from archsearch import spec as spec_mod
from archsearch.report import dashboard

ROOT = Path(__file__).resolve().parents[1]
SPEC = str(ROOT / "spaces" / "ndnet.yaml")


def _record(number: int, miou: float, latency: float, store: str) -> dict[str, Any]:
    """A trial record as search.trial writes it (the fields the dashboard and the front read)."""
    return {
        "params": 516_000 + number,
        "madds": 7.9e9,
        "latency_ms": latency,
        "latency_p90_ms": latency * 1.1,
        "latency_half_width_ms": latency * 0.01,
        "device": "cpu",
        "input_size": [1, 3, 64, 128],
        "miou": miou,
        "pixel_acc": 0.9,
        "mean_acc": 0.7,
        "iou_per_class": [0.5] * 19,
        "train_seconds": 1.5,
        "knobs": {"widths": [24, 48, 96], "depths": [3, 8, 3], "expansion": 2 + 2 * (number % 2)},
        "builder": "ndnet",
        "checkpoint_store": store,
    }


def _add(study: optuna.Study, miou: float, latency: float, store: str) -> None:
    number = len(study.get_trials(deepcopy=False))
    study.add_trial(
        create_trial(
            values=[miou, latency],
            user_attrs=_record(number, miou, latency, store),
            params={"expansion": 2 + 2 * (number % 2)},
            distributions={"expansion": IntDistribution(2, 4, step=2)},
        )
    )


@pytest.fixture()
def made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, optuna.Study, str]:
    """A study of spaces/ndnet.yaml as `archsearch run` creates it (spec, fingerprint, objective names) in an
    SQLite file, with three complete trials whose records name the run's artifact store."""
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    url = f"sqlite:///{tmp_path / 'ndnet.db'}"
    spec = spec_mod.load(SPEC, [])
    study = search.open_study(spec, url)
    store = str(tmp_path / "ndnet" / "checkpoints")
    for miou, latency in ((0.31, 12.0), (0.42, 20.0), (0.30, 25.0)):
        _add(study, miou, latency, store)
    return url, study, store


def test_store_location_is_the_runs_store(made: tuple[str, optuna.Study, str], tmp_path: Path) -> None:
    _, study, store = made
    spec = spec_mod.load(SPEC, [])
    assert dashboard.store_location(spec, tmp_path / "x", study.get_trials()) == store
    # no trial has run yet: where a run would put its checkpoints (the spec's artifacts, else checkpoints/)
    assert dashboard.store_location(spec, tmp_path / "x", []) == str((tmp_path / "x" / "checkpoints").resolve())
    spec = spec_mod.load(SPEC, ["artifacts=s3://bucket/ckpt"])
    assert dashboard.store_location(spec, tmp_path / "x", []) == "s3://bucket/ckpt"


def test_attach_front_once_per_change(made: tuple[str, optuna.Study, str]) -> None:
    _, study, store = made
    name, uploaded = dashboard.attach_front(study, "ndnet", store) or ("", False)
    assert uploaded and re.fullmatch(r"ndnet_pareto_3trials_[0-9a-f]{12}\.png", name)
    metas = get_all_artifact_meta(study)
    assert [(m.filename, m.mimetype) for m in metas] == [(name, "image/png")]
    stored = Path(store) / metas[0].artifact_id
    assert stored.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(stored).size[0] > 300
    # the same front again: nothing new is uploaded
    assert dashboard.attach_front(study, "ndnet", store) == (name, False)
    assert len(get_all_artifact_meta(study)) == 1
    # a new trial on the front: one more plot, named after 4 trials
    _add(study, 0.50, 10.0, store)
    again = dashboard.attach_front(study, "ndnet", store)
    assert again is not None and again[1] and again[0].startswith("ndnet_pareto_4trials_")
    assert sorted(m.filename for m in get_all_artifact_meta(study)) == sorted([name, again[0]])


def test_attach_front_without_a_complete_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    study = search.open_study(spec_mod.load(SPEC, []), f"sqlite:///{tmp_path / 'e.db'}")
    study.add_trial(create_trial(state=optuna.trial.TrialState.FAIL))
    assert dashboard.attach_front(study, "ndnet", str(tmp_path / "store")) is None
    assert get_all_artifact_meta(study) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "argument --port: 70000; allowed: 1–65535"),
        (["--port", "x"], "argument --port: 'x' is not an integer"),
        (["--storage", "sqlite:///{tmp}/none.db"], "no study named 'ndnet' (no such file"),
    ],
)
def test_dashboard_bad_input_is_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(["dashboard", SPEC, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_dashboard_without_optuna_dashboard(
    made: tuple[str, optuna.Study, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, study, _ = made
    real = dashboard.importlib.util.find_spec
    monkeypatch.setattr(
        dashboard.importlib.util, "find_spec", lambda name, *a: None if name == "optuna_dashboard" else real(name, *a)
    )
    assert cli.main(["dashboard", SPEC, "--storage", url]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == "archsearch: error: the dashboard needs the package optuna-dashboard: pip install 'archsearch[dashboard]'\n"
    )
    assert get_all_artifact_meta(study) == []  # nothing written before the check


def _chromium() -> str:
    """Debian's chromium; skips when missing, except in CI (``CI`` set), where the test must run."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "the dashboard browser test needs chromium (apt-get install chromium)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{reason}; CI is set: .ci/run installs it", pytrace=False)
        pytest.skip(reason)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _browse(chromium: str, url: str, tmp: Path, *extra: str) -> str:
    """What a headless chromium shows at ``url`` after the page's scripts ran: its DOM as text (no markup)."""
    args = [chromium, "--headless", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # chromium refuses root without it (CI containers run as root)
    out = subprocess.run(
        [*args, "--virtual-time-budget=20000", *extra, url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    out = re.sub(r"<(style|script)\b.*?</\1>", " ", out, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", out)))


@pytest.mark.slow
def test_dashboard_in_a_headless_browser(made: tuple[str, optuna.Study, str], tmp_path: Path) -> None:
    chromium = _chromium()
    url, study, _ = made
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "archsearch.cli", "dashboard", SPEC, "--storage", url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/studies", timeout=5).read()
                break
            except OSError:
                assert server.poll() is None, server.communicate()[1]
                assert time.monotonic() < deadline, "the dashboard did not answer within 90 s"
                time.sleep(0.5)
        page = f"{base}/dashboard/studies/{study._study_id}"
        trials = _browse(chromium, f"{page}/trials", tmp_path, "--dump-dom")
        # the study and each trial's record (its user attributes), under the objectives' names
        assert "ndnet (id=" in trials and "3 Trials" in trials
        assert all(f"Trial {n} Complete" in trials for n in range(3))
        assert "User Attributes" in trials and "latency_half_width_ms" in trials and "checkpoint_store" in trials
        assert '"widths": [24, 48, 96]' in trials
        overview = _browse(chromium, page, tmp_path, "--dump-dom")
        (attached,) = get_all_artifact_meta(study)  # the front, attached by the command before it served
        assert "Study Artifacts" in overview and attached.filename in overview
        assert "Objective X: miou" in overview and "latency_ms" in overview
        shot = tmp_path / "dashboard.png"
        _browse(chromium, page, tmp_path, "--window-size=1280,900", f"--screenshot={shot}")
        image = Image.open(shot).convert("RGB")
        assert image.size == (1280, 900)
        assert len(image.getcolors(1 << 20) or []) > 50  # a drawn page (plots, text), not a blank one
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0 and err.rstrip().endswith("archsearch: dashboard stopped")  # Ctrl-C: its normal end
    assert out.startswith("study 'ndnet': 3 trials in sqlite:///") and "Pareto front attached as ndnet_pareto_3" in out
    assert f"serving http://127.0.0.1:{port}/dashboard/studies/{study._study_id}" in out
