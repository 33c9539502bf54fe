"""Each figure function writes a non-empty PNG and PDF, for typical and for
degenerate inputs (no conditions of its kind, one fine-tune, missing scores)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from emlab import figures
from emlab.directions import cosine_table
from emlab.metrics import em_tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def conditions():
    conds = {"base": {"model": "base", "group": "model", "intervention": {"kind": "none"}},
             "ft": {"model": "ft", "group": "model", "intervention": {"kind": "none"}},
             "other": {"model": "other", "group": "model", "intervention": {"kind": "none"}}}
    for layer in (1, 2):
        for s in (2.0, 4.0):
            conds[f"steer__ft__L{layer}__s{s:g}"] = {
                "model": "base", "group": "steering",
                "intervention": {"kind": "steer", "vector": "ft", "layer": layer, "scale": s}}
    conds["ablate__ft__layerwise"] = {"model": "ft", "group": "ablation",
                                      "intervention": {"kind": "ablate", "vector": "ft", "mode": "layerwise"}}
    conds["ablate__ft__single_L2"] = {"model": "ft", "group": "ablation",
                                      "intervention": {"kind": "ablate", "vector": "ft", "mode": "single", "layer": 2}}
    conds["ablate__ft__random_L2_seed0"] = {
        "model": "ft", "group": "ablation",
        "intervention": {"kind": "ablate", "vector": "ft", "mode": "random", "layer": 2, "seed": 0}}
    conds["ablate__other__transfer_ft_L2"] = {
        "model": "other", "group": "transfer",
        "intervention": {"kind": "ablate", "vector": "ft", "mode": "single", "layer": 2}}
    return conds


@pytest.fixture(scope="module")
def em_table():
    rng = np.random.default_rng(0)
    frames = []
    for cid in conditions():
        n = 24
        frames.append(pd.DataFrame({
            "condition": cid, "question_id": [f"q{i % 3}" for i in range(n)], "sample_idx": np.arange(n),
            "aligned": rng.uniform(0, 100, n), "aligned_mass": 1.0,
            "coherent": rng.uniform(0, 100, n), "coherent_mass": 1.0}))
    df, _ = em_tables(pd.concat(frames), conditions(),
                      {"bootstrap_samples": 50, "confidence": 0.9}, seed=0)
    return df


def assert_written(tmp_path, name):
    png, pdf = tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def render(fn, df, tmp_path, name):
    fn(df, tmp_path / f"{name}.png", tmp_path / f"{name}.pdf")
    assert_written(tmp_path, name)


@pytest.mark.parametrize("fn", [figures.em_by_condition, figures.steering_sweep, figures.ablation])
def test_condition_figures_typical(fn, em_table, tmp_path):
    render(fn, em_table, tmp_path, fn.__name__)


@pytest.mark.parametrize("fn", [figures.em_by_condition, figures.steering_sweep, figures.ablation])
def test_condition_figures_degenerate(fn, em_table, tmp_path):
    only_models = em_table[em_table.group == "model"]  # no steering / ablation conditions
    render(fn, only_models, tmp_path, "models_only")
    render(fn, em_table.iloc[0:0], tmp_path, "empty")
    unscored = em_table.copy()  # a condition whose responses all lack scores
    for col in ("em_rate", "em_ci_low", "em_ci_high", "coherent_rate", "coherent_ci_low", "coherent_ci_high"):
        unscored.loc[unscored.index[::2], col] = np.nan
    render(fn, unscored, tmp_path, "unscored")


def test_direction_cosine_figure(tmp_path):
    vecs = {name: torch.randn(6, 16) for name in ("a", "b", "c")}
    render(figures.direction_cosine, cosine_table(vecs), tmp_path, "pairs")
    render(figures.direction_cosine, cosine_table({"a": vecs["a"]}), tmp_path, "single")
    render(figures.direction_cosine, pd.DataFrame(), tmp_path, "none")


def test_read_table_of_an_empty_file(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    assert figures.read_table(tmp_path / "empty.csv").empty


@pytest.mark.parametrize("name", ["em_by_condition", "steering_sweep", "ablation", "direction_cosine"])
def test_rule_scripts_figures(name, em_table, tmp_path):
    from test_directions import _Named, run_rule_script

    table = cosine_table({"a": torch.randn(4, 8), "b": torch.randn(4, 8)}) if name == "direction_cosine" else em_table
    table.to_csv(tmp_path / "in.csv", index=False)
    run_rule_script(f"figure_{name}", tmp_path, input=_Named(csv=str(tmp_path / "in.csv")),
                    output=_Named(png=str(tmp_path / f"{name}.png"), pdf=str(tmp_path / f"{name}.pdf")))
    assert_written(tmp_path, name)
