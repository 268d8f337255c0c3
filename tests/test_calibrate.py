"""`archsearch calibrate`: fidelity ladders, the statistics on hand-made runs, end to end on tiny synthetic data,
resuming, and bad input."""

import itertools
import math
import re
import socket
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy.stats import kendalltau, spearmanr

from archsearch import calibrate as cal
from archsearch import cli
from archsearch import spec as spec_mod
from archsearch.search import workers

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--set",
    "data.name=synthetic",
    "--set",
    "data.train_images=4",
    "--set",
    "data.val_images=2",
    "--set",
    "proxy.batch=2",
    "--set",
    "data.size=[256,512]",  # fidelities 1x0.125 and 2x0.25 train at 32×64 and 64×128
    "--set",
    "target.device=cpu",  # the CPU is meant (auto would be CUDA on a GPU host)
]
F = cal.Fidelity


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    return tmp_path


# ------------------------------------------------------------------------------------------------- fidelities


def test_fidelities_parse_and_order():
    assert cal.parse_fidelity("150x0.5") == F(150, 0.5)
    assert cal.parse_fidelity("150X.5").label == "150x0.5"
    assert F(600, 0.5).cost == 150.0 and F(150, 0.25).cost == 150 / 16
    ladder, top = cal.resolve_ladder(cal.parse_ladder("600x0.5,50x0.25,150x0.5,150x0.25"), None)
    assert [f.label for f in ladder] == ["50x0.25", "150x0.25", "150x0.5", "600x0.5"] and top == F(600, 0.5)
    # --top not in the list joins it; the default ladder: I/4 x S, I/2 x S/2, I/2 x S, I x S (by cost)
    ladder, top = cal.resolve_ladder([F(10, 0.5)], F(20, 0.5))
    assert ladder == [F(10, 0.5), F(20, 0.5)] and top == F(20, 0.5)
    assert cal.default_ladder(150, 0.125) == [F(37, 0.125), F(75, 0.0625), F(75, 0.125), F(150, 0.125)]
    assert cal.default_ladder(2, 0.5) == [F(1, 0.25), F(1, 0.5), F(2, 0.5)]  # 2 // 4 = 0 iterations: left out


@pytest.mark.parametrize("text", ["150", "x0.5", "0x0.5", "10x0", "10x1.5", "ten x0.5", "10x0.5x2"])
def test_bad_fidelity(text):
    with pytest.raises(cal.CalibrationError, match=r"fidelit|allowed"):
        cal.parse_fidelity(text)


def test_bad_ladders():
    with pytest.raises(cal.CalibrationError, match="listed twice"):
        cal.parse_ladder("10x0.5,10x0.50")
    with pytest.raises(cal.CalibrationError, match=r"not the most expensive.*40x0\.5"):
        cal.resolve_ladder([F(10, 0.5), F(40, 0.5)], F(20, 0.5))
    with pytest.raises(cal.CalibrationError, match="cost the same"):
        cal.resolve_ladder([F(10, 0.5), F(40, 0.25)], None)  # 2.5 both
    with pytest.raises(cal.CalibrationError, match="at least two"):
        cal.resolve_ladder([F(10, 0.5)], None)


# --------------------------------------------------------------------------------------------- architectures


def test_architectures_sampled_distinct_and_stable():
    spec = spec_mod.load(ROOT / "spaces" / "stage_pooling.yaml")
    archs = cal.architectures(spec, 6)
    assert len(archs) == 6 and len({a.key for a in archs}) == 6
    assert [a.key for a in cal.architectures(spec, 6)] == [a.key for a in archs]  # search.seed decides
    other = spec_mod.load(ROOT / "spaces" / "stage_pooling.yaml", ["search.seed=1"])
    assert [a.key for a in cal.architectures(other, 6)] != [a.key for a in archs]
    for a in archs:
        assert a.resolved["expansion"] == 6 and a.resolved["pooling"] == a.params["pooling"]


def test_architectures_of_rows():
    spec = spec_mod.parse(
        {
            "name": "r",
            "builder": "ndnet",
            "rows": [
                {"label": "narrow", "knobs": {"widths": [16, 32, 64]}},
                {"label": "wide", "knobs": {"widths": [24, 48, 96]}},
            ],
        },
        file="r.yaml",
    )
    archs = cal.architectures(spec, 6)
    assert [a.label for a in archs] == ["narrow", "wide"]
    assert archs[1].resolved["widths"] == [24, 48, 96] and archs[0].params == {"row": 0}


# ------------------------------------------------------------------------------------------------ statistics


def _frame(values: dict[str, dict[str, list[float]]]) -> pd.DataFrame:
    """Runs from {fidelity: {arch: [miou per seed]}}; 2 s wall and 3 s CPU per run."""
    rows = [
        {"arch": a, "fidelity": f, "seed_index": i, "value": m, "train_seconds": 2.0, "train_cpu_seconds": 3.0}
        for f, per in values.items()
        for a, ms in per.items()
        for i, m in enumerate(ms)
    ]
    return pd.DataFrame(rows)


TOP = F(8, 0.5)
CHEAP = F(2, 0.25)
HAND = {
    "8x0.5": {"a": [0.50], "b": [0.45], "c": [0.40], "d": [0.35], "e": [0.30]},
    # means 0.41 0.44 0.35 0.36 0.20: b and a swap, c and d swap
    "2x0.25": {"a": [0.40, 0.42], "b": [0.43, 0.45], "c": [0.33, 0.37], "d": [0.36, 0.36], "e": [0.19, 0.21]},
}


def test_statistics_match_scipy_and_hand_numbers():
    table = cal.statistics_table(_frame(HAND), [CHEAP, TOP], TOP, k=2, resamples=400).set_index("fidelity")
    r = table.loc["2x0.25"]
    cheap = [np.mean(HAND["2x0.25"][a]) for a in "abcde"]
    top = [HAND["8x0.5"][a][0] for a in "abcde"]
    # τ and ρ of ONE cheap run per architecture against the top means, over all 32 seed combinations: a < b in
    # every run (discordant), c < d in half of them (0.33 vs 0.36) → (10 − 2 − 2·½) / 10 pairs of 10 = 0.7;
    # the means would give 0.6 (c 0.35 < d 0.36 always)
    picks = itertools.product([0, 1], repeat=5)
    runs = [[HAND["2x0.25"][a][i] for a, i in zip("abcde", pick, strict=True)] for pick in picks]
    assert r["tau"] == pytest.approx(np.mean([kendalltau(x, top).statistic for x in runs])) == pytest.approx(0.7)
    assert r["rho"] == pytest.approx(np.mean([spearmanr(x, top).statistic for x in runs])) == pytest.approx(0.85)
    assert kendalltau(cheap, top).statistic == pytest.approx(0.6)
    assert r["tau_lo"] <= r["tau"] <= r["tau_hi"] and r["rho_lo"] <= r["rho"] <= r["rho_hi"]
    assert -1 <= r["tau_lo"] < r["tau_hi"] <= 1
    # pooled within-architecture std: squared deviations 2e-4, 2e-4, 8e-4, 0, 2e-4 over 5 degrees of freedom
    assert r["seed_noise"] == pytest.approx(math.sqrt(14e-4 / 5))
    assert r["spread"] == pytest.approx(np.std(cheap, ddof=1))
    assert r["median_gap"] == pytest.approx(np.median(np.diff(sorted(cheap))))  # gaps .15 .01 .05 .03 → .04
    assert r["topk"] == 1.0  # {a, b} best at both, in another order
    assert r["runs"] == 10 and r["archs"] == 5 and r["wall_s"] == 20 and r["cpu_s"] == 30 and r["per_run_s"] == 2
    assert r["cost"] == pytest.approx(CHEAP.cost / TOP.cost)
    t = table.loc["8x0.5"]
    assert t["top"] and t["tau"] == 1 and math.isnan(t["seed_noise"]) and t["runs"] == 5
    k3 = cal.statistics_table(_frame(HAND), [CHEAP, TOP], TOP, k=3, resamples=50).set_index("fidelity")
    assert k3.loc["2x0.25", "topk"] == pytest.approx(2 / 3)  # cheap best 3: b a d; top: a b c
    # seeded: the same numbers again
    again = cal.statistics_table(_frame(HAND), [CHEAP, TOP], TOP, k=2, resamples=400).set_index("fidelity")
    assert again.loc["2x0.25", "tau_lo"] == r["tau_lo"]


def test_bootstrap_draws_one_cheap_seed_and_resamples_the_top_mean():
    rng = np.random.default_rng(0)
    one = cal.one_seed_each([[1.0, 3.0], [5.0]], 4000, rng)
    assert set(one[:, 0]) == {1.0, 3.0} and set(one[:, 1]) == {5.0}
    assert np.mean(one[:, 0] == 1.0) == pytest.approx(0.5, abs=0.03)
    means = cal.resampled_means([[1.0, 3.0], [5.0]], 4000, rng)  # {1,1} {1,3} {3,1} {3,3}: 1, 2, 2, 3
    assert set(means[:, 1]) == {5.0}
    assert [np.mean(means[:, 0] == v) for v in (1.0, 2.0, 3.0)] == pytest.approx([0.25, 0.5, 0.25], abs=0.03)
    three = cal.resampled_means([[1.0, 3.0, 5.0], [1.0, 3.0]], 4000, rng)  # 3 draws of 3 seeds, 2 of 2
    assert np.mean(three[:, 0] == 1.0) == pytest.approx(1 / 27, abs=0.01)
    assert np.mean(three[:, 1] == 1.0) == pytest.approx(1 / 4, abs=0.03)
    # the top's seeds of a and b overlap (0.40 < 0.42), their means do not: the cheap runs agree with the means
    # (τ = 1), and a resample whose top draw puts b above a ({0.40, 0.40} against {0.42, 0.42}) lowers τ
    cheap, top = [[0.2], [0.1], [0.0]], [[0.50, 0.40], [0.42, 0.30], [0.0, 0.0]]
    assert cal.agreement(cheap, top, 100, 0) == pytest.approx((1.0, 1.0))
    taus, _ = cal.bootstrap(cheap, top, 2000, 0)
    assert np.nanmedian(taus) == pytest.approx(1.0) and np.nanmin(taus) < 0.9


def test_vectorised_correlations_equal_scipy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(30, 7)).astype(float)  # many ties
    y = rng.integers(0, 4, size=(30, 7)).astype(float)
    tau, rho = cal.kendall_tau_b(x, y), cal.spearman_rho(x, y)
    for i in range(30):
        expected_tau = kendalltau(x[i], y[i]).statistic
        expected_rho = spearmanr(x[i], y[i]).statistic
        assert (math.isnan(tau[i]) and math.isnan(expected_tau)) or tau[i] == pytest.approx(expected_tau)
        assert (math.isnan(rho[i]) and math.isnan(expected_rho)) or rho[i] == pytest.approx(expected_rho)


def test_pooled_std():
    assert cal.pooled_std([[1.0, 3.0], [2.0, 2.0, 5.0], [7.0]]) == pytest.approx(math.sqrt((2 + 6) / 3))
    assert math.isnan(cal.pooled_std([[1.0], [2.0]]))


def test_recommendation_cheapest_clearing_and_none():
    ranks = {"a": 0.5, "b": 0.4, "c": 0.3, "d": 0.2, "e": 0.1}
    runs = _frame(
        {
            "8x0.5": {a: [v] for a, v in ranks.items()},
            "4x0.5": {a: [v - 0.05, v - 0.051] for a, v in ranks.items()},  # same order, small noise: τ = 1
            "2x0.5": {a: [v, v + 0.002] for a, v in ranks.items()},  # same order too, and cheaper
            "1x0.5": {a: [-v, -v - 0.001] for a, v in ranks.items()},  # reversed: τ = -1
        }
    )
    ladder = [F(1, 0.5), F(2, 0.5), F(4, 0.5), F(8, 0.5)]
    table = cal.statistics_table(runs, ladder, F(8, 0.5), resamples=200)
    by = table.set_index("fidelity")
    assert by.loc["2x0.5", "tau_lo"] == pytest.approx(1.0) and by.loc["1x0.5", "tau"] == pytest.approx(-1)
    assert by.loc["1x0.5", "tau_hi"] == pytest.approx(-1)
    assert cal.recommend(table, 0.6) == "2x0.5"
    assert "Recommended proxy: 2x0.5 (proxy.iterations=2, proxy.scale=0.5)" in cal.recommendation_line(
        table, 0.6, F(8, 0.5)
    )
    only_reversed = cal.statistics_table(runs, [F(1, 0.5), F(8, 0.5)], F(8, 0.5), resamples=200)
    assert cal.recommend(only_reversed, 0.6) is None
    assert cal.recommendation_line(only_reversed, 0.6, F(8, 0.5)).startswith("No cheap fidelity clears")


# ------------------------------------------------------------------------------------------------ end to end


def _trials(url):
    return optuna.load_study(study_name="ndnet.calibrate", storage=url).get_trials()


@pytest.mark.slow
def test_calibrate_end_to_end_and_resume(in_tmp, capsys):
    url = f"sqlite:///{in_tmp / 'C.db'}"
    spec_file = str(ROOT / "spaces" / "ndnet.yaml")
    args = [
        "calibrate",
        spec_file,
        "--storage",
        url,
        "--archs",
        "2",
        "--top-k",
        "1",
        "--out",
        str(in_tmp / "cal"),
        "-q",
        *TINY,
    ]
    assert cli.main([*args, "--fidelities", "1x0.125,2x0.25"]) == 0
    out = capsys.readouterr().out
    assert "2 architectures × 2 fidelities (1x0.125, 2x0.25; top 2x0.25) = 6 runs, 0 stored, 6 to train" in out
    assert "Kendall τ [95% CI]" in out and "[6/6]" in out
    trials = _trials(url)
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:
        a = t.user_attrs
        assert a["fidelity"] in ("1x0.125", "2x0.25") and a["iterations"] in (1, 2)
        assert 0 <= a["miou"] <= 1 and t.value == a["miou"] and a["train_seconds"] > 0
        assert a["train_cpu_seconds"] > 0 and set(a["knobs"]) == {"widths", "depths", "expansion"}
        assert "latency_ms" not in a  # calibration times nothing
    cheap = sorted(
        (t.user_attrs["arch_key"], t.user_attrs["seed_index"]) for t in trials if t.user_attrs["fidelity"] == "1x0.125"
    )
    assert len(set(cheap)) == 4 and {s for _, s in cheap} == {0, 1}
    seeds = {t.user_attrs["seed"] for t in trials if t.user_attrs["fidelity"] == "1x0.125"}
    assert len(seeds) == 4  # two seeds of two architectures, all different

    frame = pd.read_csv(in_tmp / "cal" / "calibration.csv")
    assert len(frame) == 6 and set(frame["fidelity"]) == {"1x0.125", "2x0.25"}
    assert frame["miou_pct"].tolist() == pytest.approx((100 * frame["miou"]).tolist())
    md = re.sub(r" {2,}", " ", (in_tmp / "cal" / "calibration.md").read_text())  # cells without padding
    assert "| 1x0.125 |" in md and "| 2x0.25 (top) |" in md
    assert "Recommended proxy: 1x0.125" in md or "No cheap fidelity clears" in md
    assert "| A1 |" in md and "| A2 |" in md
    assert (in_tmp / "cal" / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a run left RUNNING by a dead worker is failed (and trained again if it is one of the plan's)
    study = optuna.load_study(study_name="ndnet.calibrate", storage=url)
    ghost = study.ask()
    ghost.set_user_attr("worker", {"host": socket.gethostname(), "boot_id": workers.boot_id(), "pid": 1, "start": "x"})
    # resumed: nothing new to train; the same numbers
    assert cli.main([*args, "--fidelities", "1x0.125,2x0.25"]) == 0
    out = capsys.readouterr().out
    assert "= 6 runs, 6 stored, 0 to train" in out
    trials = _trials(url)
    assert len(trials) == 7 and trials[ghost.number].state == optuna.trial.TrialState.FAIL
    assert pd.read_csv(in_tmp / "cal" / "calibration.csv")["miou"].tolist() == frame["miou"].tolist()

    # another ladder reuses the runs it shares: only 1x0.25 (2 architectures × 2 seeds) trains
    assert cli.main([*args, "--fidelities", "1x0.125,1x0.25,2x0.25"]) == 0
    assert "= 10 runs, 6 stored, 4 to train" in capsys.readouterr().out
    assert len(_trials(url)) == 11


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--fidelities", "abc"], "--fidelities: 'abc' is not a fidelity; expected ITERxSCALE"),
        (["--fidelities", "1x0.125,2x0.25", "--top", "1x0.125"], "--top 1x0.125 is not the most expensive"),
        (["--seeds", "1"], "--seeds: 1; allowed: ≥ 2"),
        (["--archs", "1"], "--archs: 1; allowed: ≥ 2"),
        (["--threshold", "1.5"], "--threshold 1.5; allowed"),
        (["--fidelities", "1x0.125,2x0.25", "--top-k", "30", "--archs", "2"], "--top-k 30; allowed: at most the 2"),
        (["--set", "proxy.batch=0"], "proxy.batch"),
    ],
)
def test_calibrate_bad_input(in_tmp, capsys, extra, message):
    url = f"sqlite:///{in_tmp / 'C.db'}"
    code = cli.main(["calibrate", str(ROOT / "spaces" / "ndnet.yaml"), "--storage", url, "-q", *TINY, *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (in_tmp / "C.db").exists()  # refused before anything is written


def test_time_left_per_fidelity_then_by_cost():
    arch = cal.Arch("k", "a", {}, {}, {})
    left = [cal.Run(arch, F(10, 0.5), 0), cal.Run(arch, F(10, 0.5), 1), cal.Run(arch, F(20, 0.5), 0)]
    done = [(4.0, F(10, 0.5)), (6.0, F(10, 0.5))]  # 5 s each at cost 2.5: 2 s per unit of cost
    assert cal.time_left(done, left) == pytest.approx(5 + 5 + 2 * F(20, 0.5).cost)


# ---------------------------------------------------------------------------------------------- zero-cost rungs


def test_zero_cost_fidelities_parse_and_sort_first():
    zc = cal.parse_fidelity("zc:NASWOT")
    assert zc == cal.ZeroCost("naswot") and zc.label == "zc:naswot" and zc.cost == 0 and not zc.trained
    ladder, top = cal.resolve_ladder(cal.parse_ladder("10x0.5,zc:params,zc:naswot,20x0.5"), None)
    assert [f.label for f in ladder] == ["zc:naswot", "zc:params", "10x0.5", "20x0.5"] and top == F(20, 0.5)
    assert ladder[0].scale == 0.5 and ladder[0].key == "zc:naswot@0.5"  # scored at the top's scale
    assert ladder[1].key == "zc:params"  # a count does not depend on the images
    with pytest.raises(cal.CalibrationError, match=r"unknown zero-cost score; allowed: zc:naswot, .*zc:madds"):
        cal.parse_fidelity("zc:flops")
    with pytest.raises(cal.CalibrationError, match="the top fidelity is a trained one"):
        cal.parse_fidelity("zc:params", option="--top")
    with pytest.raises(cal.CalibrationError, match="zero-cost scores only"):
        cal.resolve_ladder(cal.parse_ladder("zc:params,zc:naswot"), None)


@pytest.mark.slow
def test_calibrate_with_zero_cost_fidelities(in_tmp, capsys):
    from archsearch import builders, cost, data
    from archsearch.training import seeds, zerocost

    url = f"sqlite:///{in_tmp / 'Z.db'}"
    args = ["calibrate", str(ROOT / "spaces" / "ndnet.yaml"), "--storage", url, "--archs", "3", "--top-k", "1"]
    args += ["--out", str(in_tmp / "cal"), "-q", *TINY, "--fidelities", "zc:naswot,zc:params,1x0.125,2x0.25"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    # 3 architectures: 3 top runs + 2 seeds × 3 at each of 1x0.125, zc:naswot and zc:params
    assert "3 architectures × 4 fidelities (zc:naswot, zc:params, 1x0.125, 2x0.25; top 2x0.25) = 21 runs" in out
    trials = optuna.load_study(study_name="ndnet.calibrate", storage=url).get_trials()
    zc = [t for t in trials if t.user_attrs["fidelity"].startswith("zc:")]
    assert len(zc) == 12 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all("miou" not in t.user_attrs and t.user_attrs["iterations"] == 0 for t in zc)  # nothing trained
    spec = spec_mod.load(ROOT / "spaces" / "ndnet.yaml", [s for s in TINY if s != "--set"] + ["proxy.scale=0.25"])
    train_set = data.load(spec.data, "train", 0.25)  # the top's scale
    for t in zc:
        a = t.user_attrs
        seeds.seed_everything(a["seed"])
        model = builders.build("ndnet", 19, **a["knobs"])
        if a["fidelity"] == "zc:params":
            assert t.value == a["value"] == cost.count_params(model)
        else:  # the score of the architecture initialised under the run's seed, on a batch drawn with it
            assert t.value == zerocost.on_dataset(model, train_set, a["seed"], names=["naswot"])["naswot"]
    frame = pd.read_csv(in_tmp / "cal" / "calibration.csv")
    table = cal.statistics_table(
        frame, cal.resolve_ladder(cal.parse_ladder("zc:naswot,zc:params,1x0.125,2x0.25"), None)[0], F(2, 0.25)
    )
    row = table.set_index("fidelity").loc["zc:params"]
    assert row["seed_noise"] == 0 and row["cost"] == 0 and not row["trained"]  # a count has no seed noise
    assert -1 <= row["tau"] <= 1 and row["tau_lo"] <= row["tau"] <= row["tau_hi"]
    md = re.sub(r" {2,}", " ", (in_tmp / "cal" / "calibration.md").read_text())  # cells without padding
    assert "| zc:naswot |" in md and "| zc:params | 0 |" in md and "| 2x0.25 (top) |" in md
    assert "zero-cost score" in md.lower() and ("No zero-cost score clears it" in md or "without training" in md)
