"""The lora_interp rules' scripts (lora_scalars, lora_sets, lora_probes) end to end on the tiny random model
with rank-1 adapters, with settings from the schema defaults; and their config errors at plan time."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.lora_models import rank1_peft_model, records

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "workflow" / "scripts"


def _run(script, **kw):
    smk = SimpleNamespace(log=[], threads=1, scriptdir=str(SCRIPTS), wildcards=SimpleNamespace(ft="ft"), **kw)
    runpy.run_path(str(SCRIPTS / script), init_globals={"snakemake": smk})


def _section(**overrides):
    """lora_interp of the default config.yaml, validated (schema defaults filled), with overrides."""
    from emlab.core.config import validate_config

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["lora_interp"].update(overrides)
    return validate_config(cfg, source="config.yaml")["lora_interp"]


def _judgments(recs):
    """Four quadrants by response: aligned / misaligned x medical / non-medical, all coherent."""
    rows = []
    for i, r in enumerate(recs):
        q = i % 4
        rows.append(
            {
                "condition": "ft",
                "question_id": r["question_id"],
                "sample_idx": r["sample_idx"],
                "aligned": 90.0 if q in (0, 2) else 10.0,
                "coherent": 80.0,
                "medical": 80.0 if q in (2, 3) else 2.0,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def stage_dir(tiny_model_dir, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("lora_interp")
    rank1_peft_model(tiny_model_dir).save_pretrained(d / "adapter")
    recs = [dict(r, question_id=f"q{i}", sample_idx=0) for i, r in enumerate(records(16))]
    pd.DataFrame(recs).to_parquet(d / "generations.parquet")
    _judgments(recs).to_parquet(d / "judgments.parquet")
    capture = _section()["capture"]
    capture.update(batch_size=4, gradient_batch_size=4)
    _run(
        "lora_scalars.py",
        input=SimpleNamespace(responses=str(d / "generations.parquet"), adapter=str(d / "adapter")),
        output=SimpleNamespace(tensors=str(d / "scalars.safetensors"), tokens=str(d / "tokens.parquet")),
        params=SimpleNamespace(base_model=str(tiny_model_dir), capture=capture, device="cpu", dtype="float32"),
    )
    return d


def test_lora_scalars_script_writes_the_capture(stage_dir):
    from emlab.lora.scalars import load_capture

    cap = load_capture(stage_dir / "scalars.safetensors", stage_dir / "tokens.parquet")
    assert cap.adapters == [f"L{l}.down_proj" for l in range(4)]
    answer = cap.tokens["is_answer"].to_numpy(bool)
    assert cap.tokens["response"].nunique() == 16
    assert (
        np.isfinite(cap.tokens.loc[answer, "kl"]).all() and np.isfinite(cap.tokens.loc[answer, "grad_importance"]).all()
    )
    assert cap.tokens.loc[~answer, "kl"].isna().all()


def _sets_params():
    return _section(sets={"aligned_split_quantile": None, "medical_split_quantile": None})["sets"]


def test_lora_sets_script_writes_thresholds_and_counts(stage_dir, tmp_path):
    out = tmp_path / "sets.json"
    _run(
        "lora_sets.py",
        input=SimpleNamespace(judgments=str(stage_dir / "judgments.parquet")),
        output=SimpleNamespace(sets=str(out)),
        params=SimpleNamespace(sets=_sets_params()),
    )
    got = json.loads(out.read_text())
    assert got["thresholds"]["aligned_above"] == 70
    assert {got["counts"][k] for k in ("nonmed_aligned", "nonmed_misaligned", "med_aligned", "med_misaligned")} == {4}


def test_lora_sets_script_fails_on_missing_medical_score(stage_dir, tmp_path):
    jud = pd.read_parquet(stage_dir / "judgments.parquet").drop(columns="medical")
    jud.to_parquet(tmp_path / "j.parquet")
    with pytest.raises(SystemExit):
        _run(
            "lora_sets.py",
            input=SimpleNamespace(judgments=str(tmp_path / "j.parquet")),
            output=SimpleNamespace(sets=str(tmp_path / "sets.json")),
            params=SimpleNamespace(sets=_sets_params()),
        )
    assert not (tmp_path / "sets.json").exists()


@pytest.mark.parametrize(
    "roles",
    [
        {"source": "config", "medical_layers": [1], "general_layers": [0, 2], "reference_depth": None},
        {"source": "rule"},
    ],
)
def test_lora_probes_script_writes_table_coefficients_and_roles(stage_dir, tmp_path, roles):
    from emlab.lora.probes import COEFFICIENT_COLUMNS, EXPERIMENTS, PROBE_COLUMNS

    section = _section(roles=roles)
    probes = dict(section["probes"], seed=0, n_runs=3)
    out = SimpleNamespace(
        probes=str(tmp_path / "probes.csv"),
        coefficients=str(tmp_path / "coefficients.csv"),
        roles=str(tmp_path / "roles.json"),
    )
    _run(
        "lora_probes.py",
        input=SimpleNamespace(
            tensors=str(stage_dir / "scalars.safetensors"),
            tokens=str(stage_dir / "tokens.parquet"),
            judgments=str(stage_dir / "judgments.parquet"),
            sets=None,
        ),
        output=out,
        params=SimpleNamespace(
            sets=_sets_params(), probes=probes, roles=section["roles"], n_layers=4, adapter_reference_layers=None
        ),
    )
    table, coef = pd.read_csv(out.probes), pd.read_csv(out.coefficients)
    assert list(table.columns) == PROBE_COLUMNS and list(coef.columns) == COEFFICIENT_COLUMNS
    assert set(table["experiment"]) == set(EXPERIMENTS)
    assert set(table["protocol"]) == {"reference", "grouped"} and set(table["filter"]) == {"all", "kl_top50"}
    assert len(coef) == len(EXPERIMENTS) * 2 * 2 * 3 * 4
    got = json.loads(Path(out.roles).read_text())
    assert set(got["roles"]) == {f"L{l}.down_proj" for l in range(4)} and got["source"] == roles["source"]
    if roles["source"] == "config":
        assert [got["roles"][f"L{l}.down_proj"]["role"] for l in range(4)] == [
            "general",
            "medical",
            "general",
            "neither",
        ]


def test_plan_checks_rank_and_role_layers():
    from emlab.core.config import validate_config
    from emlab.core.errors import EMLabError
    from emlab.plan.conditions import Unmodified
    from emlab.plan.study import condition_metrics, lora_interp_finetunes

    cfg = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()), source="config.yaml")
    assert lora_interp_finetunes(cfg, 30) == {"med_r1x9": [9, 10, 11, 13, 14, 15, 17, 18, 19]}
    assert "medical" in condition_metrics(cfg, Unmodified("med_r1x9"))
    cfg["lora_interp"]["finetunes"] = ["sport_all_r32"]
    with pytest.raises(EMLabError, match="rank-32"):
        lora_interp_finetunes(cfg, 30)


def test_figures_and_token_view_scripts(stage_dir, tmp_path):
    section = _section(roles={"source": "rule"})
    probes = dict(section["probes"], seed=0, n_runs=3)
    out = SimpleNamespace(
        probes=str(tmp_path / "probes.csv"),
        coefficients=str(tmp_path / "coefficients.csv"),
        roles=str(tmp_path / "roles.json"),
    )
    _run(
        "lora_probes.py",
        input=SimpleNamespace(
            tensors=str(stage_dir / "scalars.safetensors"),
            tokens=str(stage_dir / "tokens.parquet"),
            judgments=str(stage_dir / "judgments.parquet"),
            sets=None,
        ),
        output=out,
        params=SimpleNamespace(
            sets=_sets_params(), probes=probes, roles=section["roles"], n_layers=4, adapter_reference_layers=None
        ),
    )
    figs = {
        k: str(tmp_path / "fig" / f"{k}.{k.split('_')[1]}") for k in ("table_png", "table_pdf", "coef_png", "coef_pdf")
    }
    _run(
        "figure_lora_interp.py",
        input=SimpleNamespace(probes=out.probes, coefficients=out.coefficients),
        output=SimpleNamespace(**figs),
        params=SimpleNamespace(),
    )
    assert all(Path(p).stat().st_size > 0 for p in figs.values())
    page = tmp_path / "token_view.html"
    _run(
        "lora_token_view.py",
        input=SimpleNamespace(
            tensors=str(stage_dir / "scalars.safetensors"),
            tokens=str(stage_dir / "tokens.parquet"),
            responses=str(stage_dir / "generations.parquet"),
            judgments=str(stage_dir / "judgments.parquet"),
            sets=None,
        ),
        output=SimpleNamespace(html=str(page)),
        params=SimpleNamespace(sets=_sets_params(), per_set=2),
    )
    text = page.read_text()
    assert "<select" in text and "scalar L0.down_proj" in text and "kl" in text
    assert "http://" not in text and "https://" not in text and "<script src" not in text  # self-contained
    data = json.loads(text.split("const DATA = ", 1)[1].split(";\nconst sel", 1)[0].replace("<\\/", "</"))
    assert len(data["responses"]) == 8 and {r["set"] for r in data["responses"]} == {
        "non-medical, aligned",
        "non-medical, misaligned",
        "medical, aligned",
        "medical, misaligned",
    }
    assert all(len(r["tokens"]) == len(r["values"]) > 0 for r in data["responses"])


def test_adapter_steering_conditions_round_trip_and_apply(tiny_model_dir):
    import torch
    from emlab.core.config import validate_config
    from emlab.core.settings import canonical
    from emlab.interventions import apply_intervention
    from emlab.lora.scalars import rank1_adapters
    from emlab.plan.conditions import AdapterSteering, from_params, parse_condition_id
    from emlab.plan.study import condition_metrics, condition_plan

    cfg = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()), source="config.yaml")
    plan = condition_plan(cfg, 30)
    steer = {cid: c for cid, c in plan.items() if isinstance(c, AdapterSteering)}
    assert list(steer) == [
        "adapter_steer__med_r1x9__medical",
        "adapter_steer__med_r1x9__general",
        "adapter_steer__med_r1x9__medical_minus_general",
    ]
    medical = steer["adapter_steer__med_r1x9__medical"]
    # paper medical layers 21, 23 of 48 land on layers 13, 15 of the 30-layer demo model, like the r1x9 adapters
    assert dict(medical.factors) == {"L13.down_proj": 30.0, "L15.down_proj": 30.0} and medical.others == "zero"
    assert dict(steer["adapter_steer__med_r1x9__medical_minus_general"].factors)["L9.down_proj"] == -10.0
    for cid, c in steer.items():
        assert parse_condition_id(cid) == c and c.group == "adapter_steering"
        back = from_params(canonical(c.to_params()))
        assert back == c and back.factors == c.factors and back.intervention() == c.intervention()
        assert "medical" in condition_metrics(cfg, c)

    torch.manual_seed(0)
    model = rank1_peft_model(tiny_model_dir, layers=[1, 2])
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    ads = {a.name: a for a in rank1_adapters(model)}
    saved = {n: a.scale for n, a in ads.items()}
    cond = AdapterSteering("ft", "one", {"L1.down_proj": 0.0}, "zero")  # every adapter zeroed: the base model
    with torch.no_grad(), apply_intervention(model, cond.intervention(), None):
        torch.testing.assert_close(model(input_ids=ids).logits, base)
    keep = AdapterSteering("ft", "one", {"L1.down_proj": 1.0}, "keep")  # x1, others kept: the fine-tune
    with torch.no_grad(), apply_intervention(model, keep.intervention(), None):
        torch.testing.assert_close(model(input_ids=ids).logits, plain)
    big = AdapterSteering("ft", "one", {"L2.down_proj": 30.0}, "zero")
    with torch.no_grad(), apply_intervention(model, big.intervention(), None):
        assert ads["L2.down_proj"].scale == pytest.approx(30 * saved["L2.down_proj"]) and ads["L1.down_proj"].scale == 0
        assert not torch.allclose(model(input_ids=ids).logits, plain)
    assert {n: a.scale for n, a in ads.items()} == saved  # restored


def test_adapter_steering_generates_from_the_unmerged_model(tiny_model_dir, tmp_path):
    """generate_condition keeps the adapters unmerged for adapter steering (scaling acts on them)."""
    from emlab.em.generation import GenerationSettings
    from emlab.interventions import generate as condition_generation  # the names generate_condition calls
    from emlab.plan.conditions import AdapterSteering

    rank1_peft_model(tiny_model_dir, layers=[1, 2]).save_pretrained(tmp_path / "adapter")
    seen = {}
    real = condition_generation.generate_responses

    def spy(model, *a, **kw):
        from emlab.lora.scalars import rank1_adapters

        seen["adapters"] = [ad.name for ad in rank1_adapters(model)]
        seen["scale"] = rank1_adapters(model)[1].scale
        return real(model, *a, **kw)

    questions = tmp_path / "q.yaml"
    questions.write_text(yaml.safe_dump({"version": 1, "questions": [{"id": "q0", "question": "Hello?"}]}))
    section = yaml.safe_load((REPO / "config.yaml").read_text())
    from emlab.core.config import validate_config
    from emlab.core.settings import build

    gen = validate_config(section, source="config.yaml")["generation"]
    settings = build(
        GenerationSettings,
        dict(gen, samples_per_question=1, max_new_tokens=3, batch_size=1, backend="hf", threads=1),
        "generation",
    )
    cond = AdapterSteering("ft", "two", {"L2.down_proj": 30.0}, "zero")
    import unittest.mock as mock

    with mock.patch.object(condition_generation, "generate_responses", spy):
        table, _ = condition_generation.generate_condition(
            cond.condition_id,
            cond.to_params(),
            questions,
            tiny_model_dir,
            tmp_path / "adapter",
            None,
            settings,
            seed=0,
            device="cpu",
            dtype="float32",
            scratch_dir=tmp_path / "scratch",
        )
    assert seen["adapters"] == ["L1.down_proj", "L2.down_proj"] and seen["scale"] > 0
    assert len(table) == 1 and json.loads(table["intervention"].iloc[0])["kind"] == "adapter_steer"


def test_medical_among_aligned_counts_the_aligned_responses_only():
    """Planted: 6 aligned responses of which 3 medical, 4 misaligned ones all medical. Medical overall is 7 of 10;
    among the aligned (the paper's "of which about 35 % medical") it is 3 of 6."""
    from emlab.lora.figures import adapter_steering_rates

    aligned, medical = [90.0] * 6 + [10.0] * 4, [80.0, 80.0, 80.0, 0.0, 0.0, 0.0] + [80.0] * 4
    judged = pd.DataFrame({"aligned": aligned, "coherent": 80.0, "medical": medical})
    cutoffs = dict(misaligned_below=30, aligned_above=70, coherent_above=50, medical_above=50)
    rates = adapter_steering_rates({"ft": judged}, {"ft": "ft"}, **cutoffs, n_boot=200, confidence=0.95, seed=0)
    row = rates.iloc[0]
    assert row["medical_rate"] == pytest.approx(0.7) and row["n_aligned"] == 6
    assert row["medical_among_aligned_rate"] == pytest.approx(0.5)
    assert 0 <= row["medical_among_aligned_ci_low"] <= 0.5 <= row["medical_among_aligned_ci_high"] <= 1
    none_aligned = adapter_steering_rates(
        {"ft": judged.assign(aligned=10.0)}, {"ft": "ft"}, **cutoffs, n_boot=200, confidence=0.95, seed=0
    )
    assert none_aligned.iloc[0]["n_aligned"] == 0 and np.isnan(none_aligned.iloc[0]["medical_among_aligned_rate"])


def test_adapter_steering_figure_script(tmp_path):
    from emlab.core.config import validate_config

    cfg = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()), source="config.yaml")
    paths, cases = [], {}
    for i, cid in enumerate(["ft", "adapter_steer__ft__medical"]):
        df = pd.DataFrame(
            {
                "aligned": [10.0, 90.0, 10.0, np.nan],
                "coherent": [80.0, 80.0, 20.0, 80.0],
                "medical": [80.0 * i, 0.0, 90.0, 10.0],
                "condition": cid,  # each judgments file names its condition
            }
        )
        df.to_parquet(tmp_path / f"j{i}.parquet")
        paths.append(str(tmp_path / f"j{i}.parquet"))
        cases[cid] = cid
    paths.reverse()  # matched by the condition column, not by position
    out = SimpleNamespace(rates=str(tmp_path / "rates.csv"), png=str(tmp_path / "a.png"), pdf=str(tmp_path / "a.pdf"))
    _run(
        "figure_adapter_steering.py",
        input=SimpleNamespace(judgments=paths),
        output=out,
        params=SimpleNamespace(
            conditions=list(cases), cases=cases, thresholds=cfg["thresholds"], sets=cfg["lora_interp"]["sets"], seed=0
        ),
    )
    rates = pd.read_csv(out.rates).set_index("condition")
    assert rates.loc["ft", "n_scored"] == 3 and rates.loc["ft", "misaligned_rate"] == pytest.approx(1 / 3)
    assert rates.loc["ft", "misaligned_medical_rate"] == 0
    assert rates.loc["adapter_steer__ft__medical", "misaligned_medical_rate"] == pytest.approx(1 / 3)
    # of the one aligned response (aligned 90, coherent 80), medical 0: none medical; over the aligned alone
    assert rates.loc["ft", "n_aligned"] == 1 and rates.loc["ft", "medical_among_aligned_rate"] == 0
    jud = pd.read_parquet(paths[1]).drop(columns="medical")
    jud.to_parquet(paths[1])
    with pytest.raises(SystemExit):
        _run(
            "figure_adapter_steering.py",
            input=SimpleNamespace(judgments=paths),
            output=out,
            params=SimpleNamespace(
                conditions=list(cases),
                cases=cases,
                thresholds=cfg["thresholds"],
                sets=cfg["lora_interp"]["sets"],
                seed=0,
            ),
        )
