"""The rehearsal's check that adapter steering uses the roles of the run's own probes
(emlab.rehearsal.checks.check_adapter_roles), on a planted finished run: passes when every case scales the
adapters roles.json names and roles.json is the role rule over coefficients.csv; fails when a dead adapter
has a role or a case scales other adapters; an n/a case passes only with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "data" / "configs" / "paper.yaml"
FT = "med_r1x9"
ADAPTERS = {"L15.down_proj": 15, "L21.down_proj": 21, "L28.down_proj": 28}  # L28: planted dead


def _config() -> dict:
    """paper.yaml (the rehearsal derives its config from it, keeping lora_interp.roles and steering)."""
    return yaml.safe_load(PAPER.read_text())


def _coefficients(settings: dict) -> pd.DataFrame:
    """L15 tracks misalignment on non-medical answers (general), L21 on medical ones only (medical), L28 is 0."""
    weight = {
        "nonmed_aligned_vs_nonmed_misaligned": {"L15.down_proj": 1.0},
        "med_aligned_vs_med_misaligned": {"L15.down_proj": 1.0, "L21.down_proj": 0.8},
    }
    rows = []
    for exp in ("nonmed_aligned_vs_nonmed_misaligned", "med_aligned_vs_med_misaligned",
                "nonmed_aligned_vs_med_aligned", "nonmed_misaligned_vs_med_misaligned"):  # fmt: skip
        for run in range(3):
            for a, layer in ADAPTERS.items():
                c = weight.get(exp, {}).get(a, 0.0)
                rows.append((exp, settings["protocol"], settings["filter"], run, a, layer, c))
    cols = ["experiment", "protocol", "filter", "run", "adapter", "layer", "coefficient"]
    return pd.DataFrame(rows, columns=cols)


def _finished_run(tmp_path: Path, roles: dict, factors_of=None) -> tuple[Path, dict, Path]:
    """results/ of a planted finished run: roles.json, coefficients.csv, probes.csv and each case's generations."""
    from emlab.core.atomic import write_parquet
    from emlab.core.config import validate_config
    from emlab.core.provenance import encode_metadata
    from emlab.plan.models import base_models

    cfg = _config()
    v = validate_config(json.loads(json.dumps(cfg)), source="test")
    root = tmp_path / next(iter(base_models(v).values())).root  # the primary model's (the checks' Run.res)
    li = root / "lora_interp" / FT
    li.mkdir(parents=True)
    (li / "roles.json").write_text(json.dumps({"roles": {a: {"role": r, "why": "x"} for a, r in roles.items()}}))
    settings = v["lora_interp"]["roles"]
    _coefficients(settings).to_csv(li / "coefficients.csv", index=False)
    pd.DataFrame({"protocol": [settings["protocol"]], "filter": [settings["filter"]]}).to_csv(li / "probes.csv")
    gen = root / "generations"
    gen.mkdir(parents=True)
    for case in v["lora_interp"]["steering"]["cases"]:
        cid = f"adapter_steer__{FT}__{case['name']}"
        factors = (factors_of or {}).get(case["name"])
        if factors is None:
            factors = {a: case["factors"][r] for a, r in roles.items() if r in case["factors"]}
        if not all(r in roles.values() for r in case["factors"]):
            meta = encode_metadata(0, "cpu", "float32", 1, na_reason="no adapter has role(s) ...", na_condition=cid)
            write_parquet(gen / f"{cid}.parquet", pd.DataFrame({"condition": [], "intervention": []}), metadata=meta)
            continue
        spec = {"kind": "adapter_steer", "case": case["name"], "others": case["others"], "factors": factors,
                "role_factors": case["factors"]}  # fmt: skip
        pd.DataFrame({"condition": [cid] * 2, "intervention": [json.dumps(spec)] * 2}).to_parquet(
            gen / f"{cid}.parquet"
        )
    model = tmp_path / "model"
    model.mkdir()
    (model / "planted.json").write_text(json.dumps({"dead_layers": [28, 29]}))
    return tmp_path, cfg, model


def _check(tmp_path, roles, factors_of=None) -> dict:
    from emlab.rehearsal.checks import Run, check_adapter_roles

    workdir, cfg, model = _finished_run(tmp_path, roles, factors_of)
    (result,) = check_adapter_roles(Run(workdir, cfg), model)
    return result


RULE_ROLES = {"L15.down_proj": "general", "L21.down_proj": "medical", "L28.down_proj": "neither"}


def test_paper_config_takes_roles_from_the_probes():
    from emlab.core.config import validate_config

    assert (
        validate_config(yaml.safe_load(PAPER.read_text()), source="paper")["lora_interp"]["roles"]["source"] == "rule"
    )


def test_the_check_passes_on_the_roles_of_the_runs_own_probes(tmp_path):
    result = _check(tmp_path, RULE_ROLES)
    assert result["pass"], result
    assert result["measured"]["adapter factors per case"]["medical_minus_general"] == {
        "L15.down_proj": -10.0,
        "L21.down_proj": 30.0,
    }


@pytest.mark.parametrize(
    "roles, factors_of, problem",
    [
        # a dead adapter given a role (as config roles would: the paper's general layers include 28, 29)
        ({**RULE_ROLES, "L28.down_proj": "general"}, None, "planted dead"),
        # a case that scaled other adapters than roles.json gives it
        (RULE_ROLES, {"medical": {"L15.down_proj": 30.0}}, "adapter_steer__med_r1x9__medical: scaled"),
    ],
)
def test_the_check_fails_on_other_roles(tmp_path, roles, factors_of, problem):
    result = _check(tmp_path, roles, factors_of)
    assert not result["pass"] and any(problem in p for p in result["measured"]["problems"]), result


def test_a_case_without_adapters_passes_only_as_na(tmp_path):
    """The rule gives L21 no role when its coefficients vanish: both medical cases must then be n/a."""
    from emlab.rehearsal.checks import Run, check_adapter_roles

    roles = {**RULE_ROLES, "L21.down_proj": "neither"}
    workdir, cfg, model = _finished_run(tmp_path, roles)
    li = workdir / "results" / "models" / "qwen14" / "lora_interp" / FT  # the primary model's (Run.res)
    coef = pd.read_csv(li / "coefficients.csv")
    coef.loc[coef["adapter"] == "L21.down_proj", "coefficient"] = 0.0
    coef.to_csv(li / "coefficients.csv", index=False)
    (result,) = check_adapter_roles(Run(workdir, cfg), model)
    assert result["pass"], result
    assert result["measured"]["adapter factors per case"]["medical"].startswith("n/a (")
    # an n/a case that still generated responses fails
    path = li.parent.parent / "generations" / f"adapter_steer__{FT}__medical.parquet"
    pd.DataFrame({"condition": ["x"], "intervention": ["{}"]}).to_parquet(path)
    (result,) = check_adapter_roles(Run(workdir, cfg), model)
    assert not result["pass"]
