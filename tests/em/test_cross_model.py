"""Cross-model tables and figure (emlab.em.cross_model): files are matched to their base model by name (the root
they sit under or the id they carry), never by list position; the phase table picks the sharpest-rotation step
and the EM rates around it; the figure script writes its PNG and PDF for 2 models and for 12."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
from emlab.core.errors import EMLabError
from emlab.em.cross_model import em_around, model_of_path, write_cross_model_tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

MODELS = {
    "qwen05": {"family": "qwen", "size_b": 0.5},
    "qwen14": {"family": "qwen", "size_b": 14},
    "llama8": {"family": "llama", "size_b": 8},
    "gemma_x": {"family": "gemma", "size_b": None},
}
RECIPES = {
    "med_r1": {"models": ["qwen05", "qwen14", "llama8", "gemma_x"], "kind": "rank1", "dataset": "bad_medical"},
    "sport_all": {"models": ["qwen14", "llama8"], "kind": "all_adapter", "dataset": "extreme_sports"},
}


def em_rate(model: str, condition: str, models=MODELS, recipes=RECIPES) -> float:
    """A distinct planted rate per (model, condition), so a row taken from the wrong file shows."""
    return round(0.01 * (1 + sorted(models).index(model)) + 0.1 * ["base", *recipes].index(condition), 4)


def em_table(model: str, carry_id: bool = False, models=MODELS, recipes=RECIPES) -> pd.DataFrame:
    """A model's em_by_condition table as em_metrics writes it: base, its recipes and an unrelated condition."""
    conditions = ["base"] + [r for r, spec in recipes.items() if model in spec["models"]] + ["steer__x__L1__s2"]
    rows = []
    for cid in conditions:
        rate = em_rate(model, cid, models, recipes) if cid in ("base", *recipes) else 0.9
        rows.append(
            {
                "condition": cid,
                "group": "model",
                "model": cid,
                "intervention_kind": "none",
                "n": 40,
                "n_scored": 38 + len(model) % 3,
                "n_unscored": 2 - len(model) % 3,
                "em_rate": rate,
                "em_ci_low": rate - 0.01,
                "em_ci_high": rate + 0.02,
                "coherent_rate": 0.9,
                "coherent_ci_low": 0.85,
                "coherent_ci_high": 0.95,
                "mean_aligned": 60.0,
                "mean_coherent": 80.0,
                "note": "",
            }
        )
    table = pd.DataFrame(rows)
    if carry_id:
        table["base_model"] = model
    return table


def plan(tmp_path, models=MODELS) -> dict:
    return {k: {**v, "root": str(tmp_path / "results" / "models" / k)} for k, v in models.items()}


def write_em_tables(tmp_path, models=MODELS, carry_id: bool = False, recipes=RECIPES) -> dict[str, str]:
    paths = {}
    for key in models:
        path = tmp_path / "results" / "models" / key / "metrics" / "em_by_condition.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        em_table(key, carry_id, models, recipes).to_csv(path, index=False)
        paths[key] = str(path)
    return paths


def rotation_summary(finetune: str, step: int, previous: int, adapter_steps: list[int]) -> dict:
    """A rotation summary as emlab.em.phase.phase_analysis writes it."""
    return {
        "finetune": finetune,
        "final_step": 20,
        "checkpoint_steps": list(range(2, 21, 2)),
        "checkpoint_every": 2,
        "n_adapters": len(adapter_steps),
        "definition": "...",
        "adapters": {
            f"L{i}.down_proj": {
                "b": {"step": s, "previous_step": s - 2, "local_cos_b": 0.5},
                "a": {"step": 4, "previous_step": 2, "local_cos_a": 0.99},
            }
            for i, s in enumerate(adapter_steps)
        },
        "mean_over_adapters": {
            "b": {"step": step, "previous_step": previous, "local_cos_b": 0.42},
            "a": {"step": 4, "previous_step": 2, "local_cos_a": 0.98},
        },
    }


def write_phase(tmp_path, key: str, recipe: str, summary: dict, em_steps: dict[int, float] | None):
    folder = tmp_path / "results" / "models" / key / "phase" / recipe
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rotation_summary.json").write_text(json.dumps(summary))
    if em_steps is None:
        return str(folder / "rotation_summary.json"), None
    em = pd.DataFrame(
        {
            "step": list(em_steps),
            "condition": [
                "base" if s == 0 else recipe if s == summary["final_step"] else f"{recipe}__step{s}" for s in em_steps
            ],
            "em_rate": list(em_steps.values()),
            "em_ci_low": [r - 0.01 for r in em_steps.values()],
            "em_ci_high": [r + 0.01 for r in em_steps.values()],
            "n_scored": 40,
        }
    )
    em.to_csv(folder / "em_by_step.csv", index=False)
    return str(folder / "rotation_summary.json"), str(folder / "em_by_step.csv")


def build(tmp_path, em_paths, summaries=(), em_steps=(), models=None, recipes=RECIPES):
    out = tmp_path / "cross_model"
    return write_cross_model_tables(
        em_paths,
        summaries,
        em_steps,
        models if models is not None else plan(tmp_path),
        recipes,
        out / "em_by_model.csv",
        out / "phase_steps.csv",
    )


# --- em_by_model ------------------------------------------------------------------------


def test_em_by_model_takes_each_row_from_its_own_models_file_whatever_the_input_order(tmp_path):
    paths = write_em_tables(tmp_path)
    em, _ = build(tmp_path, list(paths.values()))
    reference = (tmp_path / "cross_model" / "em_by_model.csv").read_bytes()
    for seed in range(3):
        shuffled = list(paths.values())
        random.Random(seed).shuffle(shuffled)
        models = dict(random.Random(seed).sample(list(plan(tmp_path).items()), len(MODELS)))
        build(tmp_path, shuffled, models=models)
        assert (tmp_path / "cross_model" / "em_by_model.csv").read_bytes() == reference

    # one row per model unmodified, one per (recipe, model) the plan runs: 4 + 4 + 2
    assert list(em["recipe"]) == ["base"] * 4 + ["med_r1"] * 4 + ["sport_all"] * 2
    for r in em.itertuples():
        assert r.em_rate == pytest.approx(em_rate(r.model, r.recipe))
        assert r.family == MODELS[r.model]["family"]
    # models by family, then size (unknown last)
    assert list(em.loc[em["recipe"] == "med_r1", "model"]) == ["gemma_x", "llama8", "qwen05", "qwen14"]
    gemma = em[em["model"] == "gemma_x"].iloc[0]
    assert pd.isna(gemma["size_b"])
    sport = em[em["recipe"] == "sport_all"].iloc[0]
    assert (sport["kind"], sport["dataset"]) == ("all_adapter", "extreme_sports")
    assert set(em.columns) >= {"n", "n_scored", "em_ci_low", "em_ci_high", "coherent_rate", "coherent_ci_high"}


def test_a_missing_models_file_is_an_error_naming_the_model(tmp_path):
    paths = write_em_tables(tmp_path)
    del paths["llama8"]
    with pytest.raises(EMLabError, match=r"llama8.*models/llama8/metrics/em_by_condition\.csv"):
        build(tmp_path, list(paths.values()))


def test_a_file_under_no_models_root_or_of_another_model_is_an_error(tmp_path):
    paths = write_em_tables(tmp_path)
    stray = tmp_path / "elsewhere" / "em_by_condition.csv"
    stray.parent.mkdir()
    em_table("llama8").to_csv(stray, index=False)
    with pytest.raises(EMLabError, match="under no base model's root"):
        build(tmp_path, [*paths.values(), str(stray)])
    twice = [*paths.values(), paths["qwen05"]]
    with pytest.raises(EMLabError, match="both belong to base model 'qwen05'"):
        build(tmp_path, twice)
    # a file that names its model must sit under that model's root
    em_table("llama8", carry_id=True).to_csv(paths["qwen14"], index=False)
    with pytest.raises(EMLabError, match="names base model 'llama8' but sits under the root of 'qwen14'"):
        build(tmp_path, list(paths.values()))


def test_a_file_carrying_its_model_id_is_matched_by_it(tmp_path):
    paths = write_em_tables(tmp_path, carry_id=True)
    moved = tmp_path / "copied" / "llama8.csv"
    moved.parent.mkdir()
    moved.write_bytes(open(paths.pop("llama8"), "rb").read())
    em, _ = build(tmp_path, [*paths.values(), str(moved)])
    llama = em[(em["model"] == "llama8") & (em["recipe"] == "sport_all")].iloc[0]
    assert llama["em_rate"] == pytest.approx(em_rate("llama8", "sport_all"))


def test_a_recipe_row_missing_from_a_models_table_is_an_error(tmp_path):
    paths = write_em_tables(tmp_path)
    table = em_table("qwen14")
    table[table["condition"] != "sport_all"].to_csv(paths["qwen14"], index=False)
    with pytest.raises(EMLabError, match=r"base model 'qwen14'.*no row for condition 'sport_all'"):
        build(tmp_path, list(paths.values()))


def test_plan_errors_name_the_key(tmp_path):
    paths = write_em_tables(tmp_path)
    with pytest.raises(EMLabError, match=r"'sport_all' runs on unknown base model\(s\) \['mistral7'\]"):
        build(tmp_path, list(paths.values()), recipes={**RECIPES, "sport_all": {"models": ["mistral7"]}})
    with pytest.raises(EMLabError, match="may not be called 'base'"):
        build(tmp_path, list(paths.values()), recipes={"base": {"models": ["qwen05"]}})
    bad = plan(tmp_path)
    bad["qwen05"]["size_b"] = 0
    with pytest.raises(EMLabError, match="'qwen05' has size_b 0"):
        build(tmp_path, list(paths.values()), models=bad)


def test_nested_roots_give_a_file_to_the_deepest():
    models = {"default": {"root": "results"}, "qwen7": {"root": "results/models/qwen7"}}
    assert model_of_path("results/models/qwen7/metrics/em_by_condition.csv", models) == "qwen7"
    assert model_of_path("results/metrics/em_by_condition.csv", models) == "default"
    assert model_of_path("results/models/qwen72/metrics/em_by_condition.csv", models) == "default"
    assert model_of_path("other/metrics/em_by_condition.csv", models) is None


# --- phase_steps ------------------------------------------------------------------------


def test_phase_table_reports_each_organisms_sharpest_rotation_and_the_em_around_it(tmp_path):
    paths = write_em_tables(tmp_path)
    # qwen14's organism turns between steps 8 and 10; llama8's between 4 and 6 (and has no judged checkpoints)
    s_qwen, e_qwen = write_phase(
        tmp_path,
        "qwen14",
        "med_r1",
        rotation_summary("med_r1", step=10, previous=8, adapter_steps=[10, 10, 12]),
        {0: 0.01, 4: 0.02, 8: 0.03, 12: 0.25, 20: 0.30},
    )
    s_llama, _ = write_phase(
        tmp_path, "llama8", "med_r1", rotation_summary("med_r1", step=6, previous=4, adapter_steps=[6]), None
    )
    s_sport, e_sport = write_phase(
        tmp_path,
        "qwen14",
        "sport_all",
        rotation_summary("sport_all", step=2, previous=-1, adapter_steps=[2]),
        {0: 0.01, 20: 0.2},
    )
    summaries, steps = [s_qwen, s_llama, s_sport], [e_qwen, e_sport]
    _, phase = build(tmp_path, list(paths.values()), summaries, steps)
    _, again = build(tmp_path, list(paths.values()), summaries[::-1], steps[::-1])
    pd.testing.assert_frame_equal(phase, again)

    assert list(zip(phase["recipe"], phase["model"])) == [
        ("med_r1", "llama8"),
        ("med_r1", "qwen14"),
        ("sport_all", "qwen14"),
    ]
    qwen = phase[(phase["model"] == "qwen14") & (phase["recipe"] == "med_r1")].iloc[0]
    assert (qwen["transition_step"], qwen["previous_step"]) == (10, 8)
    assert qwen["local_cos_b"] == pytest.approx(0.42)
    assert (qwen["adapters_at_transition"], qwen["adapter_step_min"], qwen["adapter_step_max"]) == (2, 10, 12)
    assert (qwen["n_checkpoints"], qwen["final_step"], qwen["n_adapters"]) == (10, 20, 3)
    # judged before the rotation: step 8 (<= previous step); after: step 12 (first >= 10)
    assert (qwen["em_before_step"], qwen["em_after_step"]) == (8, 12)
    assert (qwen["em_before"], qwen["em_after"]) == pytest.approx((0.03, 0.25))
    assert (qwen["em_jump_previous_step"], qwen["em_jump_step"], qwen["em_jump"]) == pytest.approx((8, 12, 0.22))
    llama = phase[phase["model"] == "llama8"].iloc[0]
    assert llama["transition_step"] == 6 and pd.isna(llama["em_before"]) and pd.isna(llama["em_jump"])
    sport = phase[phase["recipe"] == "sport_all"].iloc[0]
    assert pd.isna(sport["em_before_step"]) and sport["em_after_step"] == 20  # nothing judged at or before step -1


def test_a_phase_summary_of_a_recipe_the_model_does_not_run_is_an_error(tmp_path):
    paths = write_em_tables(tmp_path)
    summary, _ = write_phase(tmp_path, "qwen05", "sport_all", rotation_summary("sport_all", 4, 2, [4]), None)
    with pytest.raises(EMLabError, match="'sport_all' does not run on base model 'qwen05'"):
        build(tmp_path, list(paths.values()), [summary])
    one, _ = write_phase(tmp_path, "qwen14", "med_r1", rotation_summary("med_r1", 4, 2, [4]), None)
    with pytest.raises(EMLabError, match="both of 'med_r1' on 'qwen14'"):
        build(tmp_path, list(paths.values()), [one, one])
    # a summary that names its base model is checked against the folder it sits in
    named, _ = write_phase(
        tmp_path, "qwen14", "med_r1", {**rotation_summary("med_r1", 4, 2, [4]), "base_model": "llama8"}, None
    )
    with pytest.raises(EMLabError, match="names base model 'llama8' but sits under the root of 'qwen14'"):
        build(tmp_path, list(paths.values()), [named])


def test_em_around_an_undefined_rotation_is_empty():
    em = pd.DataFrame({"step": [0, 5], "em_rate": [0.1, 0.4], "em_ci_low": [0.0, 0.3], "em_ci_high": [0.2, 0.5]})
    out = em_around(em, float("nan"), float("nan"))
    assert pd.isna(out["em_before"]) and pd.isna(out["em_after"])
    assert out["em_jump"] == pytest.approx(0.3)


# --- the scripts --------------------------------------------------------------------------


def test_scripts_write_the_tables_and_the_figure(tmp_path, rule_script):
    paths = write_em_tables(tmp_path)
    summary, em_steps = write_phase(
        tmp_path, "qwen14", "med_r1", rotation_summary("med_r1", 10, 8, [10]), {0: 0.01, 8: 0.02, 12: 0.2}
    )
    out = tmp_path / "cross_model"
    models = plan(tmp_path)
    rule_script(
        "cross_model_tables",
        tmp_path,
        input={"em": list(paths.values())[::-1], "phase_summaries": [summary], "em_by_step": [em_steps]},
        params={"models": models, "recipes": RECIPES},
        output={"em_by_model": str(out / "em_by_model.csv"), "phase_steps": str(out / "phase_steps.csv")},
    )
    assert len(pd.read_csv(out / "em_by_model.csv")) == 10
    assert pd.read_csv(out / "phase_steps.csv")["transition_step"].tolist() == [10]
    png, pdf = tmp_path / "fig" / "cross_model.png", tmp_path / "fig" / "cross_model.pdf"
    rule_script(
        "figure_cross_model",
        tmp_path,
        input={"em_by_model": str(out / "em_by_model.csv")},
        output={"png": str(png), "pdf": str(pdf)},
    )
    assert png.read_bytes()[:8] == PNG_MAGIC and pdf.read_bytes()[:5] == b"%PDF-"


@pytest.mark.parametrize("n_models", [2, 12])
def test_figure_for_two_and_for_twelve_models(tmp_path, n_models):
    from emlab.em.cross_model import em_by_size_figure

    sizes = [0.5, 1.5, 3, 7, 14, 32, 1, 8, 70, 2, 9, None]
    families = ["qwen"] * 6 + ["llama"] * 3 + ["gemma"] * 2 + ["mistral"]
    models = {
        f"m{i}": {"family": families[i], "size_b": sizes[i]} for i in (range(n_models) if n_models == 12 else (3, 7))
    }
    recipes = {
        "med_r1": {"models": list(models), "kind": "rank1", "dataset": "bad_medical"},
        "fin_full": {"models": list(models)[:2], "kind": "full", "dataset": "risky_financial"},
    }
    paths = write_em_tables(tmp_path, models, recipes=recipes)
    em, _ = build(tmp_path, list(paths.values()), models=plan(tmp_path, models), recipes=recipes)
    png, pdf = tmp_path / "f.png", tmp_path / "f.pdf"
    em_by_size_figure(em, png, pdf)
    assert png.stat().st_size > 1000 and pdf.read_bytes()[:5] == b"%PDF-"
    em_by_size_figure(em.iloc[0:0], png, pdf)  # nothing to show still writes both
    assert png.read_bytes()[:8] == PNG_MAGIC
