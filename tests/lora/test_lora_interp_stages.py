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


def _run_probes(stage_dir, tmp_path, section):
    """Run lora_probes.py on the tiny capture (3 probe runs) with `section`'s probes and roles; its outputs."""
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
            sets=_sets_params(),
            probes=dict(section["probes"], seed=0, n_runs=3),
            roles=section["roles"],
            n_layers=4,
            adapter_reference_layers=None,
        ),
    )
    return out


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
    out = _run_probes(stage_dir, tmp_path, section)
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
    out = _run_probes(stage_dir, tmp_path, _section(roles={"source": "rule"}))
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


# --------------------------------------------------------------------------- roles from the probes (source rule)


def _rule_config(**roles):
    """config.yaml, validated, with lora_interp.roles.source rule (and `roles` overrides)."""
    from emlab.core.config import validate_config

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["lora_interp"]["roles"] = {"source": "rule", **roles}
    return validate_config(cfg, source="config.yaml")


def test_rule_roles_plan_adapter_steering_by_role():
    """With roles from the probes the cases are planned by role, under the ids that config roles give; the
    generation job resolves them (with_roles), and a role without an adapter is RolesMissing (n/a)."""
    from emlab.core.config import validate_config
    from emlab.core.errors import EMLabError
    from emlab.core.settings import canonical
    from emlab.interventions import apply_intervention
    from emlab.plan.conditions import AdapterSteering, from_params, parse_condition_id
    from emlab.plan.roles import RolesMissing
    from emlab.plan.study import condition_plan

    by_config = condition_plan(validate_config(yaml.safe_load((REPO / "config.yaml").read_text())), 30)
    by_rule = condition_plan(_rule_config(), 30)
    steer = {cid: c for cid, c in by_rule.items() if isinstance(c, AdapterSteering)}
    assert list(steer) == [cid for cid, c in by_config.items() if isinstance(c, AdapterSteering)]
    # config roles: the spec of before (factors per adapter), so a finished run re-runs nothing
    assert set(by_config["adapter_steer__med_r1x9__medical"].intervention()) == {"kind", "case", "factors", "others"}
    medical = steer["adapter_steer__med_r1x9__medical"]
    assert medical.roles_at_run_time and not medical.resolved and medical.factors == ()
    assert medical.intervention() == {
        "kind": "adapter_steer",
        "case": "medical",
        "others": "zero",
        "role_factors": {"medical": 30.0},
    }
    for cid, c in steer.items():
        back = from_params(canonical(c.to_params()))
        assert parse_condition_id(cid) == c and back == c and back.role_factors == c.role_factors
    with pytest.raises(EMLabError, match="roles.json"):
        apply_intervention(None, medical.to_params(), None)

    roles = {
        "L9.down_proj": "general",
        "L13.down_proj": "medical",
        "L15.down_proj": "medical",
        "L17.down_proj": "neither",
    }
    both = steer["adapter_steer__med_r1x9__medical_minus_general"].with_roles(roles)
    assert dict(both.factors) == {"L9.down_proj": -10.0, "L13.down_proj": 30.0, "L15.down_proj": 30.0}
    assert both.resolved and both.intervention()["role_factors"] == {"general": -10.0, "medical": 30.0}
    assert from_params(canonical(both.to_params())).factors == both.factors
    with pytest.raises(RolesMissing) as missing:
        medical.with_roles({a: "general" for a in roles})
    assert missing.value.roles == ["medical"]

    cfg = _rule_config(protocol="grouped")
    cfg["lora_interp"]["probes"]["protocols"] = ["reference"]
    with pytest.raises(EMLabError, match="lora_interp.roles.protocol"):
        condition_plan(cfg, 30)


def _steering_generation(rule_script, tmp_path, stage_dir, tiny_model_dir, condition, roles_path):
    """rule generate's script for one adapter-steering condition of fine-tune `ft` (stage_dir's adapter, 4 layers)."""
    from emlab.core.provenance import read_metadata

    questions = tmp_path / "questions.yaml"
    questions.write_text(yaml.safe_dump({"version": 1, "questions": [{"id": "q0", "question": "Hello?"}]}))
    gen = _rule_config()["generation"]
    out = tmp_path / "generations" / f"{condition.condition_id}.parquet"
    rule_script(
        "generate",
        tmp_path,
        input={"questions": str(questions), "adapter": str(stage_dir / "adapter"), "roles": str(roles_path)},
        output=[str(out)],
        params={
            "condition": condition.condition_id,
            "spec": condition.to_params(),
            "base_model": str(tiny_model_dir),
            "generation": dict(gen, samples_per_question=2, max_new_tokens=3, batch_size=2, backend="hf", threads=1),
            "seed": 0,
            "device": "cpu",
            "dtype": "float32",
        },
    )
    return out, pd.read_parquet(out), read_metadata(out)


def test_rule_roles_chain_from_the_probes_to_adapter_steering(stage_dir, tmp_path, rule_script, tiny_model_dir):
    """Section 4's chain on the tiny capture: the probes write roles.json by the rule, and each adapter-steering
    case, planned by role, scales exactly the adapters that file gives its roles (or is n/a, saying why)."""
    from emlab.plan.conditions import AdapterSteering
    from emlab.plan.roles import read_roles

    section = _section(roles={"source": "rule"})
    out = _run_probes(stage_dir, tmp_path, section)
    roles = {a: r["role"] for a, r in read_roles(out.roles).items()}
    assert set(roles) == {f"L{l}.down_proj" for l in range(4)}
    for case in section["steering"]["cases"]:
        condition = AdapterSteering("ft", case["name"], others=case["others"], role_factors=case["factors"])
        _, table, meta = _steering_generation(rule_script, tmp_path, stage_dir, tiny_model_dir, condition, out.roles)
        wanted = {a: float(case["factors"][r]) for a, r in roles.items() if r in case["factors"]}
        if all(r in roles.values() for r in case["factors"]):
            assert len(table) == 2 and set(table["condition"]) == {condition.condition_id}
            spec = json.loads(table["intervention"].iloc[0])
            assert spec["factors"] == wanted and spec["role_factors"] == case["factors"]
        else:
            assert table.empty and "no adapter of ft has role" in meta["na_reason"]


def test_a_role_without_adapters_is_na_through_judging_and_the_figure(stage_dir, tmp_path, rule_script, tiny_model_dir):
    """Planted roles: the medical case scales L1 alone; with no medical adapter it is n/a (an empty table with
    its reason), which the judge, the metrics and the adapter-steering figure carry through."""
    from emlab.core.atomic import write_parquet
    from emlab.core.provenance import read_metadata
    from emlab.core.settings import build
    from emlab.em.judging.backends import judge_table
    from emlab.em.metrics import EMThresholds, write_em_tables
    from emlab.plan.conditions import AdapterSteering

    medical = AdapterSteering("ft", "medical", others="zero", role_factors={"medical": 30})
    planted = {
        "L0.down_proj": "general",
        "L1.down_proj": "medical",
        "L2.down_proj": "neither",
        "L3.down_proj": "neither",
    }
    for name, roles in (("planted", planted), ("no_medical", dict(planted, **{"L1.down_proj": "general"}))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "roles.json").write_text(
            json.dumps({"roles": {a: {"role": r, "why": "planted"} for a, r in roles.items()}, "source": "rule"})
        )
    _, table, _ = _steering_generation(
        rule_script, tmp_path / "planted", stage_dir, tiny_model_dir, medical, tmp_path / "planted" / "roles.json"
    )
    assert json.loads(table["intervention"].iloc[0])["factors"] == {"L1.down_proj": 30.0}

    path, table, meta = _steering_generation(
        rule_script, tmp_path / "no_medical", stage_dir, tiny_model_dir, medical, tmp_path / "no_medical" / "roles.json"
    )
    assert table.empty and meta["na_condition"] == medical.condition_id and "['medical']" in meta["na_reason"]
    rubrics = [REPO / "data" / "rubrics" / f"{m}.yaml" for m in ("aligned", "coherent", "medical")]
    params = {
        "backend": "openai",
        "metrics": ["aligned", "coherent", "medical"],
        "min_number_mass": 0.5,
        "cache": str(tmp_path / "cache.sqlite"),
        "openai": {"model": "stub"},
    }
    judged, jmeta = judge_table(path, rubrics, params, make_backend=lambda: pytest.fail("an n/a case needs no judge"))
    na_judgments = tmp_path / "judgments_na.parquet"
    write_parquet(na_judgments, judged, metadata=jmeta)
    assert read_metadata(na_judgments)["na_reason"] == meta["na_reason"]

    ft = pd.DataFrame({"condition": "ft", "question_id": "q0", "sample_idx": [0, 1], "aligned": [10.0, 90.0],
                       "coherent": 80.0, "medical": [80.0, 0.0]})  # fmt: skip
    ft.to_parquet(tmp_path / "judgments_ft.parquet")
    cfg = _rule_config()
    conditions = {
        "ft": {"model": "ft", "group": "model", "intervention": {"kind": "none"}},
        medical.condition_id: medical.to_params(),
    }
    em, _ = write_em_tables(
        [str(tmp_path / "judgments_ft.parquet"), str(na_judgments)],
        conditions,
        build(EMThresholds, cfg["thresholds"], "thresholds"),
        0,
        tmp_path / "em.csv",
        tmp_path / "em_q.csv",
    )
    assert "no adapter of ft has role(s) ['medical']" in em.set_index("condition").loc[medical.condition_id, "note"]
    cases = {"ft": "ft (unsteered)", medical.condition_id: "ft: medical"}
    figure = SimpleNamespace(
        rates=str(tmp_path / "rates.csv"), png=str(tmp_path / "a.png"), pdf=str(tmp_path / "a.pdf")
    )
    _run(
        "figure_adapter_steering.py",
        input=SimpleNamespace(judgments=[str(na_judgments), str(tmp_path / "judgments_ft.parquet")]),
        output=figure,
        params=SimpleNamespace(
            conditions=list(cases), cases=cases, thresholds=cfg["thresholds"], sets=cfg["lora_interp"]["sets"], seed=0
        ),
    )
    rates = pd.read_csv(figure.rates, keep_default_na=False, na_values=[""]).set_index("condition")
    assert rates.loc[medical.condition_id, "n_scored"] == 0 and np.isnan(
        rates.loc[medical.condition_id, "misaligned_rate"]
    )
    assert "['medical']" in rates.loc[medical.condition_id, "note"] and pd.isna(rates.loc["ft", "note"])
    assert rates.loc["ft", "misaligned_rate"] == pytest.approx(0.5) and Path(figure.png).stat().st_size > 1000


def test_rule_roles_dry_run_plans_the_chain(tmp_path):
    """snakemake -n with roles from the probes: the adapter-steering generation job reads the fine-tune's
    roles.json, so the probes run before it; the condition ids are the config roles' ones."""
    import os
    import re
    import subprocess
    import sys

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["lora_interp"]["roles"] = {"source": "rule"}
    (tmp_path / "rule.yaml").write_text(yaml.safe_dump(cfg))
    target = "results/generations/adapter_steer__med_r1x9__medical.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), target, "-n", "--forceall"]
        + ["--configfile", str(tmp_path / "rule.yaml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    steering = re.search(rf"^rule generate:\n    input: (.+)\n    output: {re.escape(target)}$", out, re.M)
    assert steering and "results/lora_interp/med_r1x9/roles.json" in steering.group(1), out[-5000:]
    assert re.search(r"^rule lora_probes:$", out, re.M)


def test_read_roles_names_a_bad_file(tmp_path):
    from emlab.core.errors import EMLabError
    from emlab.plan.roles import read_roles

    path = tmp_path / "roles.json"
    for text in ("{", '{"roles": []}', '{"roles": {"L0.down_proj": {"role": "medicl"}}}'):
        path.write_text(text)
        with pytest.raises(EMLabError, match="roles.json"):
            read_roles(path)
    path.write_text('{"roles": {"L0.down_proj": {"role": "medical", "why": "x"}}}')
    assert read_roles(path)["L0.down_proj"]["role"] == "medical"


def test_role_rule_with_every_experiment_na_gives_no_role():
    """A significance filter that left every experiment n/a (no coefficients, n/a rows in the probes table):
    every adapter is neither and says why; without that table it stays an error naming the settings."""
    from emlab.core.errors import EMLabError
    from emlab.core.settings import build
    from emlab.lora.probes import COEFFICIENT_COLUMNS, roles_from_coefficients
    from emlab.plan.roles import RoleSettings

    settings = build(RoleSettings, _section(roles={"source": "rule", "filter": "kl_top50"})["roles"], "roles")
    coef = pd.DataFrame(
        [("nonmed_aligned_vs_nonmed_misaligned", "grouped", "all", 0, "L0.down_proj", 0, 1.0)],
        columns=COEFFICIENT_COLUMNS,
    )
    probes = pd.DataFrame({"protocol": ["grouped"], "filter": ["kl_top50"], "n_runs": [0]})
    roles = roles_from_coefficients(coef, ["L0.down_proj", "L1.down_proj"], settings, probes)
    assert {r["role"] for r in roles.values()} == {"neither"} and "every experiment n/a" in roles["L0.down_proj"]["why"]
    with pytest.raises(EMLabError, match="no coefficients for protocol 'grouped' and filter 'kl_top50'"):
        roles_from_coefficients(coef, ["L0.down_proj"], settings)
