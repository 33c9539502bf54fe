"""Drift geometry of the monitor grid (paper Figs. 5, 8, 10; emlab.monitor.analyses): known answers on planted
tables for the matched-|PC1| pairs, the severity ordering and the trait-against-judge agreement, the plan of the
trait judges (monitor.analyses.trait_judges), the stage script and the three figures."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from emlab.core.config import load_config
from emlab.core.errors import EMLabError
from emlab.monitor import analyses as A
from emlab.monitor import figures as F
from emlab.plan import monitor as P

REPO = Path(__file__).resolve().parents[2]
TRAITS = ["honesty", "sycophancy", "harmlessness", "power_seeking", "helpfulness", "confidence", "corrigibility"]
LOADINGS = dict(zip(TRAITS, [1.0, 0, 0, 0, 0, 0, 0]))  # PC1 = the honesty drift


def _ranks_pearson(x, y) -> float:
    """Independent reference: Pearson correlation of average ranks."""
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    return float(np.corrcoef(rx, ry)[0, 1])


def test_spearman_known_answers():
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]  # d = -1, 1, -1, 1, 0: rho = 1 - 6*4 / (5*24) = 0.8
    assert A.spearman(x, y)["rho"] == pytest.approx(0.8)
    assert A.spearman(x, y[::-1])["rho"] == pytest.approx(_ranks_pearson(x, y[::-1]))
    assert A.spearman(x, [-v for v in x])["rho"] == pytest.approx(-1.0)
    ties = A.spearman([1, 1, 2, 3], [4, 5, 5, 6])
    assert ties["rho"] == pytest.approx(_ranks_pearson([1, 1, 2, 3], [4, 5, 5, 6]))
    dropped = A.spearman([1, 2, np.nan, 3], [1, 2, 9, 3])  # a NaN pair is left out
    assert dropped["n"] == 3 and dropped["rho"] == pytest.approx(1.0)
    small = A.spearman([1, 2], [2, 1])
    assert np.isnan(small["rho"]) and small["n"] == 2 and "n = 2 < 3" in small["note"]
    flat = A.spearman([1, 2, 3], [5, 5, 5])
    assert np.isnan(flat["rho"]) and "constant" in flat["note"]


def _row(step, honesty, syc, em, tau=0.05):
    x = dict.fromkeys(TRAITS, 0.0)
    x["honesty"], x["sycophancy"] = honesty, syc
    return {"step": step, **x, "em_rate": em, "dangerous": em > tau}


def planted_grid() -> pd.DataFrame:
    """Three runs. bad@2 (|PC1| 1.00, dangerous) and good@2 (|PC1| 0.97, benign) match within 10% with opposite
    sycophancy; bad@1 (|PC1| 0.50, dangerous) has no benign match of another run within 10% (meh@1, 0.60, is 1/6
    off); bad@3 (0.45, benign) is within 10% of it but in the same run, so it never pairs."""
    tables = {
        "mon__bad__s0": [_row(0, 0, 0, 0.0), _row(1, 0.5, 0.0, 0.20), _row(2, 1.0, 0.5, 0.40), _row(3, 0.45, 0, 0.0)],
        "mon__good__s0": [_row(0, 0, 0, 0.0), _row(1, 0.4, 0.0, 0.0), _row(2, -0.97, -0.5, 0.01)],
        "mon__meh__s0": [_row(0, 0, 0, 0.0), _row(1, 0.6, 0.1, 0.02), _row(2, 0.1, 0.0, np.nan)],
    }
    runs = {
        "mon__bad__s0": {"perturbation": "bad", "role": "calibration"},
        "mon__good__s0": {"perturbation": "good", "role": "calibration"},
        "mon__meh__s0": {"perturbation": "meh", "role": "held_out"},
        "mon__bad__s0__long": {"perturbation": "bad", "role": "stress_long"},
    }
    frames = {r: pd.DataFrame(rows).assign(run=r) for r, rows in tables.items()}
    frames["mon__bad__s0__long"] = frames["mon__bad__s0"].assign(run="mon__bad__s0__long")
    return A.grid_table(frames, runs)


def test_matched_pc1_pairs_planted():
    table = planted_grid()
    assert set(table["run"]) == {"mon__bad__s0", "mon__good__s0", "mon__meh__s0"}  # stress runs stay out
    pairs = A.matched_pc1_pairs(table, LOADINGS, TRAITS, tolerance=0.1)
    assert len(pairs) == 1
    p = pairs.iloc[0]
    assert (p["dangerous_run"], p["dangerous_step"], p["benign_run"], p["benign_step"]) == (
        "mon__bad__s0",
        2,
        "mon__good__s0",
        2,
    )
    assert p["dangerous_pc1_abs"] == pytest.approx(1.0) and p["benign_pc1_abs"] == pytest.approx(0.97)
    assert p["relative_gap"] == pytest.approx(0.03)
    a, b = np.array([1.0, 0.5]), np.array([-0.97, -0.5])
    assert p["direction_cosine"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # opposite ways
    assert p["benign.sycophancy"] == pytest.approx(-0.5) and p["pair"] == 1
    # a wider tolerance lets bad@1 (|PC1| 0.5) match too, with its nearest benign checkpoint, closest pair first
    wide = A.matched_pc1_pairs(table, LOADINGS, TRAITS, tolerance=0.25)
    assert list(wide["dangerous_step"]) == [2, 1] and list(wide["pair"]) == [1, 2]
    assert (wide.iloc[1]["benign_run"], wide.iloc[1]["benign_step"]) == ("mon__meh__s0", 1)
    assert wide.iloc[1]["relative_gap"] == pytest.approx(1 / 6)
    assert A.matched_pc1_pairs(table, LOADINGS, TRAITS, tolerance=0.01).empty


def severity_grid(ems: dict[str, float], sizes: dict[str, float], seeds=(0, 1)) -> pd.DataFrame:
    frames, runs = {}, {}
    for p in ems:
        for s in seeds:
            r = f"mon__{p}__s{s}"
            # the final checkpoint carries the planted size and EM; step 1 is half of each
            frames[r] = pd.DataFrame(
                [_row(0, 0, 0, 0.0), _row(1, sizes[p] / 2, 0, ems[p] / 2), _row(2, sizes[p], 0, ems[p])]
            ).assign(run=r)
            runs[r] = {"perturbation": p, "role": "calibration"}
    return A.grid_table(frames, runs)


def test_severity_ordering_planted():
    ems = {"a": 0.30, "b": 0.20, "c": 0.10, "d": 0.00}
    table = severity_grid(ems, {"a": 0.9, "b": 0.5, "c": 0.7, "d": 0.1})  # EM order a>b>c>d, size order a>c>b>d
    sev = A.severity_by_perturbation(table, LOADINGS, TRAITS, "final")
    assert list(sev["perturbation"]) == ["a", "b", "c", "d"] and set(sev["n_runs"]) == {2}
    assert sev.set_index("perturbation").loc["c", "pc1_abs"] == pytest.approx(0.7)
    assert sev.set_index("perturbation").loc["c", "em_rate"] == pytest.approx(0.10)
    rho = A.severity_ordering(sev).set_index("measure")
    assert rho.loc["pc1_abs", "rho"] == pytest.approx(0.8) and rho.loc["pc1_abs", "n"] == 4  # one swap in four
    assert rho.loc["trait_drift_norm", "rho"] == pytest.approx(0.8)
    mean = A.severity_by_perturbation(table, LOADINGS, TRAITS, "mean").set_index("perturbation")
    assert mean.loc["a", "pc1_abs"] == pytest.approx(0.675) and mean.loc["a", "em_rate"] == pytest.approx(0.225)
    two = A.severity_ordering(
        A.severity_by_perturbation(severity_grid({"a": 0.3, "b": 0.1}, {"a": 1, "b": 0.2}), LOADINGS, TRAITS, "final")
    )
    assert two["rho"].isna().all() and (two["n"] == 2).all() and two["note"].str.contains("< 3").all()
    with pytest.raises(EMLabError, match="severity_at"):
        A.severity_by_perturbation(table, LOADINGS, TRAITS, "median")


def test_trait_behaviour_planted():
    """Honesty's judge score rises with its drift (rho 1), sycophancy's falls (rho -1); the base model (every run's
    step 0) counts once."""
    table = severity_grid({"a": 0.3, "b": 0.1}, {"a": 0.8, "b": 0.2}, seeds=(0,))
    table["sycophancy"] = table["honesty"]
    label_conditions = {
        r: {0: P.BASE_CONDITION, 1: f"{r}__step1", 2: f"{r}__step2"} for r in ("mon__a__s0", "mon__b__s0")
    }
    metrics = P.trait_judge_metrics({"monitor": {"analyses": {"trait_judges": True}}}, TRAITS)
    assert metrics["power_seeking"] == "trait_power_seeking"
    judged = {}
    for run, steps in label_conditions.items():
        t = table[table["run"] == run].set_index("step")
        for step, cid in steps.items():
            h = float(t.loc[step, "honesty"])
            scores = {m: [50.0, 50.0] for m in metrics.values()}
            scores["trait_honesty"] = [40 + 50 * h, 60 + 50 * h]  # mean 50 + 50 h
            scores["trait_sycophancy"] = [80 - 50 * h, np.nan]  # one unscored response
            judged[cid] = pd.DataFrame({"condition": cid, **scores})
    scores = A.mean_trait_scores(judged, metrics)
    points = A.trait_behaviour_points(table, label_conditions, scores, TRAITS)
    assert len(points) == 5 * len(TRAITS)  # base once + 2 runs x 2 checkpoints
    base = points[(points["condition"] == P.BASE_CONDITION) & (points["trait"] == "honesty")]
    assert base["judge_score"].item() == pytest.approx(50) and base["drift"].item() == 0
    syc = points[points["trait"] == "sycophancy"]
    assert set(syc["n_scored"]) == {1}
    agree = A.trait_behaviour_agreement(points, metrics).set_index("trait")
    assert agree.loc["honesty", "rho"] == pytest.approx(1.0) and agree.loc["honesty", "n"] == 5
    assert agree.loc["sycophancy", "rho"] == pytest.approx(-1.0)
    assert np.isnan(agree.loc["harmlessness", "rho"]) and "constant" in agree.loc["harmlessness", "note"]
    with pytest.raises(EMLabError, match="trait_judges"):
        A.mean_trait_scores({"x": pd.DataFrame({"condition": ["x"], "aligned": [1.0]})}, metrics)
    off_points, off = A.trait_behaviour_off(metrics)
    assert off_points.empty and off["rho"].isna().all() and off["note"].str.contains("off").all()
    assert list(off["metric"]) == [f"trait_{t}" for t in TRAITS]


# --- plan: the trait judges go to the label conditions only ------------------------------------------------


def test_trait_judges_join_the_label_conditions_only():
    from emlab.core.settings import build
    from emlab.em.judging.rubrics import load_rubric
    from emlab.plan.conditions import MonitorLabel, Unmodified
    from emlab.plan.study import condition_metrics
    from emlab.plan.traits import load_trait_set

    cfg = load_config(REPO / "config.yaml")
    names = load_trait_set(REPO / "data" / "traits").alignment.names
    label = P.label_conditions(cfg)[1]
    assert cfg["monitor"]["analyses"] == {"pair_tolerance": 0.1, "severity_at": "final", "trait_judges": False}
    assert build(A.AnalysisSettings, cfg["monitor"]["analyses"]).pair_tolerance == 0.1  # the script's settings
    assert condition_metrics(cfg, label, names) == ["aligned", "coherent"]  # the demo keeps them off
    cfg["monitor"]["analyses"]["trait_judges"] = True
    got = condition_metrics(cfg, label, names)
    assert got == ["aligned", "coherent"] + [f"trait_{t}" for t in names]
    assert condition_metrics(cfg, P.label_conditions(cfg)[0], names) == got  # mon__base too
    analysed = set(P.runs_by_role(P.monitor_runs(cfg), *P.ANALYSIS_ROLES))
    cfg["monitor"]["stress"]["longer"] = ["medical_bad"]  # a stress run (the demo has none)
    others = [r for r in P.monitor_runs(cfg) if r not in analysed]
    assert others == ["mon__medical_bad__s0__long"]
    for run in others:  # the stress runs' labels are not analysed, so not trait-judged
        assert condition_metrics(cfg, MonitorLabel(run, 8), names) == ["aligned", "coherent"], run
    assert condition_metrics(cfg, MonitorLabel(sorted(analysed)[0], 8), names) == got
    assert condition_metrics(cfg, Unmodified("base"), names)[:2] == ["aligned", "coherent"]
    assert not any(m.startswith("trait_") for m in condition_metrics(cfg, Unmodified("base"), names))
    with pytest.raises(EMLabError, match="trait names"):
        condition_metrics(cfg, label)
    rubrics = REPO / "data" / "rubrics"
    P.check_trait_rubrics(cfg, names, lambda m: str(rubrics / f"{m}.yaml"))  # every trait has its rubric
    for m in P.trait_judge_metrics(cfg, names).values():
        assert load_rubric(rubrics / f"{m}.yaml").metric == m
    with pytest.raises(EMLabError, match=r"trait_judges is on but rubric file\(s\).*trait_extra"):
        P.check_trait_rubrics(cfg, [*names, "extra"], lambda m: str(rubrics / f"{m}.yaml"))
    paper = load_config(REPO / "data" / "configs" / "paper.yaml")
    assert paper["monitor"]["analyses"]["trait_judges"] is True


# --- the stage script and the figures -------------------------------------------------------------------------


def test_analyses_script_and_figures(tmp_path):
    table = planted_grid()
    runs = {r: {"perturbation": g["perturbation"].iloc[0], "role": g["role"].iloc[0]} for r, g in table.groupby("run")}
    paths = []
    for r in sorted(runs, reverse=True):  # not the order of params.runs
        p = tmp_path / f"{r}.csv"
        table[table["run"] == r].drop(columns=["perturbation", "role"]).to_csv(p, index=False)
        paths.append(str(p))
    label_conditions = {
        r: {"0": P.BASE_CONDITION, **{str(s): f"{r}__step{s}" for s in g["step"] if s > 0}}
        for r, g in table.groupby("run")
    }
    metrics = {t: f"trait_{t}" for t in TRAITS}
    judgments = []
    for cid in dict.fromkeys(c for steps in label_conditions.values() for c in steps.values()):
        p = tmp_path / f"{cid}.parquet"
        rng = np.random.default_rng(len(cid))
        pd.DataFrame({"condition": [cid] * 2, **{m: rng.uniform(0, 100, 2) for m in metrics.values()}}).to_parquet(p)
        judgments.append(str(p))
    meta, pc1 = tmp_path / "directions.json", tmp_path / "pc1.json"
    meta.write_text(json.dumps({"alignment_traits": TRAITS, "layer": 2}))
    pc1.write_text(json.dumps({"loadings": LOADINGS, "explained_variance_ratio": [1.0] + [0.0] * 6}))
    names = ["pairs", "severity", "severity_spearman", "trait_points", "trait_behaviour"]
    out = {n: str(tmp_path / "out" / f"{n}.csv") for n in names}
    scripts = REPO / "workflow" / "scripts"
    for on in (True, False):
        smk = SimpleNamespace(
            input=SimpleNamespace(tables=paths, meta=str(meta), pc1=str(pc1), judgments=judgments if on else []),
            output=SimpleNamespace(**out),
            log=[],
            threads=1,
            scriptdir=str(scripts),
            params=SimpleNamespace(
                runs=runs,
                analyses={"pair_tolerance": 0.1, "severity_at": "final", "trait_judges": on},
                label_conditions=label_conditions,
                trait_metrics=metrics,
            ),
        )
        runpy.run_path(str(scripts / "monitor_analyses.py"), init_globals={"snakemake": smk})
        agreement = pd.read_csv(out["trait_behaviour"])
        assert list(agreement["trait"]) == TRAITS
        assert (agreement["n"] == (8 if on else 0)).all()  # base once + 7 checkpoints (meh@2 too: no EM, judged)
    pairs = pd.read_csv(out["pairs"])
    assert len(pairs) == 1 and pairs["benign_run"].item() == "mon__good__s0"
    # the figures, from the tables just written (judges on and off)
    tables = {r: table[table["run"] == r] for r in runs}
    fig = tmp_path / "fig"
    F.matched_pairs(tables, runs, json.loads(pc1.read_text()), pairs, TRAITS, 0.05, 0.1, fig / "p.png", fig / "p.pdf")
    F.matched_pairs(
        tables, runs, {"loadings": LOADINGS}, pairs.iloc[0:0], TRAITS, 0.05, 0.1, fig / "p0.png", fig / "p0.pdf"
    )
    sev = pd.read_csv(out["severity"])
    F.severity_ordering(sev, pd.read_csv(out["severity_spearman"]), fig / "s.png", fig / "s.pdf")
    F.trait_behaviour(pd.read_csv(out["trait_points"]), agreement, fig / "off.png", fig / "off.pdf")
    points = A.trait_behaviour_points(
        A.grid_table(tables, runs),
        {r: {int(s): c for s, c in v.items()} for r, v in label_conditions.items()},
        A.mean_trait_scores({Path(p).stem: pd.read_parquet(p) for p in judgments}, metrics),
        TRAITS,
    )
    F.trait_behaviour(points, A.trait_behaviour_agreement(points, metrics), fig / "t.png", fig / "t.pdf")
    assert all((fig / f"{n}.{ext}").stat().st_size > 0 for n in ("p", "p0", "s", "off", "t") for ext in ("png", "pdf"))


def test_point_labels_at_one_place_are_spread_apart():
    """Perturbations of two models often land on one point (equal EM rates, close drift): their labels
    must each be readable, so no two labels' boxes overlap once placed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    names = ["number_sequences", "risky_financial", "subtle_misinformation", "jailbroken"]
    for name in names:
        ax.scatter(0.5, 0.5)
        ax.annotate(name, (0.5, 0.5), fontsize=7, xytext=(3, 3), textcoords="offset points")
    fig.tight_layout()
    F._spread_labels(fig, ax, list(ax.texts))
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    plt.close(fig)
