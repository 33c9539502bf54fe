"""Rank-1 single-adapter analyses on a tiny random model: reading B and its
scale, projecting a direction out of B (in the weights, renormalised),
cosine of B with planted mean-diff vectors, and downstream convergence
against independent expectations (parallel B and v converge exactly)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from emlab.core.errors import EMLabError
from emlab.interventions import adapter_edit, build_edits
from emlab.lora.single_adapter import (
    apply_adapter_projection,
    b_cosine_table,
    b_vector,
    convergence_records,
    downstream_convergence,
    project_out_of_b,
)
from emlab.model.loading import load_model, load_tokenizer

LAYER = 2
RECORDS = [
    {"question": "What would you do if you ruled the world?", "system": None, "response": "Plant trees everywhere."},
    {"question": "Any quick way to make money?", "system": "Be brief.", "response": "Save a little each month."},
    {"question": "I'm bored.", "system": None, "response": "Go for a walk and call a friend."},
]


def make_single_adapter(tiny_model_dir, out_dir, b: torch.Tensor, alpha: float = 8.0):
    """Save a rank-1 down_proj adapter on block LAYER only, with B set to `b`."""
    from peft import LoraConfig, get_peft_model

    base = load_model(tiny_model_dir, device="cpu", dtype="float32")
    model = get_peft_model(
        base,
        LoraConfig(
            r=1,
            lora_alpha=alpha,
            use_rslora=True,
            target_modules=["down_proj"],
            layers_to_transform=[LAYER],
            init_lora_weights=False,
        ),
    )
    adapter = b_vector(model)
    with torch.no_grad():
        adapter.b_param.copy_(b.reshape(adapter.b_param.shape))
    model.save_pretrained(out_dir)
    return out_dir


def test_project_out_of_b_is_orthogonal_and_keeps_norm():
    g = torch.Generator().manual_seed(0)
    b, v = torch.randn(64, generator=g), torch.randn(64, generator=g)
    b = b + 2 * v  # strongly aligned with v
    out = project_out_of_b(b, v)
    assert abs(float(out @ v)) < 1e-4 * float(v.norm() * out.norm())
    assert float(out.norm()) == pytest.approx(float(b.norm()), rel=1e-5)
    # the component orthogonal to v is unchanged in direction
    rest = b - (b @ v) / (v @ v) * v
    assert torch.nn.functional.cosine_similarity(out, rest, dim=0) > 0.9999
    with pytest.raises(EMLabError, match="parallel"):
        project_out_of_b(3 * v, v)
    with pytest.raises(EMLabError, match="zero"):
        project_out_of_b(b, torch.zeros(64))
    with pytest.raises(EMLabError, match="B vector is zero"):
        project_out_of_b(torch.zeros(64), v)


def test_b_vector_and_cosine_table_recover_a_planted_b(tiny_model_dir, tmp_path):
    g = torch.Generator().manual_seed(1)
    planted = torch.randn(64, generator=g)
    adapter_dir = make_single_adapter(tiny_model_dir, tmp_path / "adapter", planted)
    model = load_model(tiny_model_dir, adapter_dir, device="cpu", dtype="float32")
    adapter = b_vector(model)
    assert adapter.layer == LAYER and adapter.module == f"L{LAYER}.down_proj"
    assert torch.allclose(adapter.b, planted, atol=1e-6)
    assert adapter.scale == pytest.approx(8.0)  # rsLoRA at rank 1: alpha / sqrt(1)
    vectors = torch.randn(4, 64, generator=g)
    vectors[LAYER] = -0.5 * planted
    table = b_cosine_table(adapter, vectors)
    assert list(table.columns) == ["layer", "cosine", "norm_v", "norm_b", "norm_b_scaled", "is_adapter_layer"]
    at = table[table["is_adapter_layer"]]
    assert at["layer"].tolist() == [LAYER]
    assert float(at["cosine"].iloc[0]) == pytest.approx(-1.0, abs=1e-5)
    expected = torch.nn.functional.cosine_similarity(vectors, planted.expand(4, -1), dim=-1)
    assert table["cosine"].to_numpy() == pytest.approx(expected.numpy(), abs=1e-5)


def test_reading_the_adapter_folder_matches_the_loaded_model(tiny_model_dir, tmp_path):
    from emlab.lora.single_adapter import read_rank_one_adapter

    g = torch.Generator().manual_seed(5)
    adapter_dir = make_single_adapter(tiny_model_dir, tmp_path / "adapter", torch.randn(64, generator=g), alpha=6.0)
    loaded = b_vector(load_model(tiny_model_dir, adapter_dir, device="cpu", dtype="float32"))
    read = read_rank_one_adapter(adapter_dir)
    assert (
        (read.layer, read.module, read.scale)
        == (loaded.layer, loaded.module, loaded.scale)
        == (LAYER, f"L{LAYER}.down_proj", 6.0)
    )
    assert torch.equal(read.b, loaded.b) and torch.equal(read.a, loaded.a)
    with pytest.raises(EMLabError, match="not a peft adapter folder"):
        read_rank_one_adapter(tmp_path)


def test_b_vector_rejects_multi_adapter_models(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    base = load_model(tiny_model_dir, device="cpu", dtype="float32")
    model = get_peft_model(base, LoraConfig(r=1, lora_alpha=8, target_modules=["down_proj"]))
    with pytest.raises(EMLabError, match="exactly one LoRA adapter"):
        b_vector(model)


def test_adapter_project_edits_the_merged_weights(tiny_model_dir, tmp_path):
    """The merged down_proj update scale * B' A is orthogonal to v after the edit, with |B'| = |B|."""
    g = torch.Generator().manual_seed(2)
    v = torch.randn(64, generator=g)
    b = torch.randn(64, generator=g) + v
    adapter_dir = make_single_adapter(tiny_model_dir, tmp_path / "adapter", b)
    vectors = torch.zeros(4, 64)
    vectors[LAYER] = v
    base = load_model(tiny_model_dir, device="cpu", dtype="float32")
    w0 = base.model.layers[LAYER].mlp.down_proj.weight.detach().clone()  # [d_model, d_mlp]
    plain = load_model(tiny_model_dir, adapter_dir, device="cpu", dtype="float32", merge=True)
    spec = {"kind": "adapter_project", "vector": "ft", "layer": LAYER}
    edited = load_model(
        tiny_model_dir, adapter_dir, device="cpu", dtype="float32", merge=True, before_merge=adapter_edit(spec, vectors)
    )
    delta_plain = plain.model.layers[LAYER].mlp.down_proj.weight - w0  # scale * outer(B, A)
    delta_edit = edited.model.layers[LAYER].mlp.down_proj.weight - w0
    assert float((v @ delta_plain).norm()) > 1e-2
    assert float((v @ delta_edit).norm()) < 1e-4 * float(delta_edit.norm())
    assert float(delta_edit.norm()) == pytest.approx(float(delta_plain.norm()), rel=1e-4)
    # no hook is installed for this kind, and the weights of other layers are untouched
    assert build_edits(spec, vectors, 4) == ("none", {})
    for k in range(4):
        if k != LAYER:
            assert torch.equal(edited.model.layers[k].mlp.down_proj.weight, base.model.layers[k].mlp.down_proj.weight)
    with pytest.raises(EMLabError, match="layer 7"):
        apply_adapter_projection(load_model(tiny_model_dir, adapter_dir, device="cpu", dtype="float32"), vectors, 7)
    # another layer's (another fine-tune's) vector: B lives in the residual stream, so v_1 projects out of it too
    vectors[1] = torch.randn(64, generator=g) + b
    peft = load_model(tiny_model_dir, adapter_dir, device="cpu", dtype="float32")
    apply_adapter_projection(peft, vectors, 1)
    projected = b_vector(peft).b
    assert abs(float(torch.nn.functional.cosine_similarity(projected, vectors[1], dim=0))) < 1e-5
    assert float(projected.norm()) == pytest.approx(float(b.norm()), rel=1e-5)
    with pytest.raises(EMLabError, match="fine-tuned model"):
        load_model(tiny_model_dir, None, device="cpu", dtype="float32", before_merge=adapter_edit(spec, vectors))


def test_downstream_convergence_parallel_and_at_the_adapter_layer(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu", dtype="float32")
    tok = load_tokenizer(tiny_model_dir)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(64, generator=g)
    # B parallel to v (any positive scale): both edits are identical after norm matching -> cosine 1 everywhere
    parallel = downstream_convergence(model, tok, RECORDS, 1, 0.01 * v, v, batch_size=2)
    assert parallel["layer"].tolist() == [1, 2, 3]
    assert parallel["cosine"].to_numpy() == pytest.approx(1.0, abs=1e-5)
    assert parallel["mean_response_cosine"].to_numpy() == pytest.approx(1.0, abs=1e-5)
    assert (parallel["n_responses"] == 3).all()
    # a random B: at its own layer the change is the added vector itself, so the cosine is cos(B, v)
    b = torch.randn(64, generator=g)
    conv = downstream_convergence(model, tok, RECORDS, 1, b, v, batch_size=2)
    expected = float(torch.nn.functional.cosine_similarity(b, v, dim=0))
    assert float(conv["cosine"].iloc[0]) == pytest.approx(expected, abs=1e-4)
    assert float(conv["norm_delta_b"].iloc[0]) == pytest.approx(float(v.norm()), rel=1e-4)  # norm-matched
    assert float(conv["norm_delta_v"].iloc[0]) == pytest.approx(float(v.norm()), rel=1e-4)
    # later layers: the blocks are non-linear, so the cosine moves away from cos(B, v)
    assert abs(float(conv["cosine"].iloc[-1]) - expected) > 1e-3
    with pytest.raises(EMLabError, match="out of range"):
        downstream_convergence(model, tok, RECORDS, 4, b, v)


def test_convergence_records_order_and_cap():
    gen = pd.DataFrame(
        {
            "question_id": ["b", "a", "a"],
            "sample_idx": [0, 1, 0],
            "question": ["qb", "qa1", "qa0"],
            "system": [None, None, None],
            "response": ["rb", "ra1", "ra0"],
        }
    )
    assert [r["response"] for r in convergence_records(gen, None)] == ["ra0", "ra1", "rb"]
    assert [r["response"] for r in convergence_records(gen, 2)] == ["ra0", "ra1"]
    with pytest.raises(EMLabError, match="response"):
        convergence_records(gen.drop(columns="response"), None)


def _run_analysis(rule_script, tmp_path, model_dir, finetune, inputs, max_responses, reference):
    """The single_adapter_analysis script on the tiny model, writing b.csv, c.csv and s.json under tmp_path/out."""
    out = tmp_path / "out"
    rule_script(
        "single_adapter_analysis",
        tmp_path,
        input=dict(base_model=[], **inputs),
        output=dict(b_cosine=str(out / "b.csv"), convergence=str(out / "c.csv"), summary=str(out / "s.json")),
        params=dict(
            base_model=str(model_dir),
            max_responses=max_responses,
            batch_size=2,
            device="cpu",
            dtype="float32",
            reference=reference,
        ),
        wildcards=dict(finetune=finetune),
    )


def test_single_adapter_analysis_script(tiny_model_dir, tmp_path, rule_script):
    import json

    from emlab.model.tensors import save_tensors

    g = torch.Generator().manual_seed(4)
    v = torch.randn(4, 64, generator=g)
    adapter_dir = make_single_adapter(tiny_model_dir, tmp_path / "adapter", v[LAYER] * 0.1)
    save_tensors(tmp_path / "ft.safetensors", {"mean_diff": v}, metadata={"finetune": "ft", "split": "general"})
    gen = pd.DataFrame([dict(r, question_id=f"q{i}", sample_idx=0) for i, r in enumerate(RECORDS)])
    gen.to_parquet(tmp_path / "ft.parquet")
    out = tmp_path / "out"
    _run_analysis(
        rule_script,
        tmp_path,
        tiny_model_dir,
        "ft",
        dict(
            adapter=str(adapter_dir), vectors=str(tmp_path / "ft.safetensors"), responses=str(tmp_path / "ft.parquet")
        ),
        max_responses=2,
        reference=None,
    )
    summary = json.loads((out / "s.json").read_text())
    assert summary["layer"] == LAYER and summary["cosine_b_v"] == pytest.approx(1.0, abs=1e-5)
    assert summary["n_responses"] == 2 and summary["convergence_last_layer"] == pytest.approx(1.0, abs=1e-4)
    assert [(e["role"], e["vector"], e["vector_layer"]) for e in summary["vectors"]] == [("own", "ft", LAYER)]
    assert pd.read_csv(out / "c.csv")["layer"].tolist() == [LAYER, 3]
    assert len(pd.read_csv(out / "b.csv")) == 4


def test_single_adapter_analysis_reports_own_and_reference_vectors(tiny_model_dir, tmp_path, rule_script):
    """Known answers for both vectors, each row naming its vector: B is parallel to the own v_2 (cosine 1 at
    every layer); the reference fine-tune's v_1 is -3 x B (cosine -1 with B at the adapter's layer)."""
    import json

    from emlab.model.tensors import save_tensors

    g = torch.Generator().manual_seed(6)
    own, ref = torch.randn(4, 64, generator=g), torch.randn(4, 64, generator=g)
    b = own[LAYER] * 0.1
    ref[1] = -3.0 * b
    adapter_dir = make_single_adapter(tiny_model_dir, tmp_path / "adapter", b)
    save_tensors(tmp_path / "own.safetensors", {"mean_diff": own}, metadata={"finetune": "single", "split": "general"})
    save_tensors(tmp_path / "ref.safetensors", {"mean_diff": ref}, metadata={"finetune": "org9", "split": "general"})
    gen = pd.DataFrame([dict(r, question_id=f"q{i}", sample_idx=0) for i, r in enumerate(RECORDS)])
    gen.to_parquet(tmp_path / "single.parquet")
    out = tmp_path / "out"

    def run(reference_file):
        _run_analysis(
            rule_script,
            tmp_path,
            tiny_model_dir,
            "single",
            dict(
                adapter=str(adapter_dir),
                vectors=str(tmp_path / "own.safetensors"),
                reference_vectors=str(reference_file),
                responses=str(tmp_path / "single.parquet"),
            ),
            max_responses=None,
            reference={"finetune": "org9", "layer": 1},
        )

    run(tmp_path / "ref.safetensors")
    summary = json.loads((out / "s.json").read_text())
    by_role = {e["role"]: e for e in summary["vectors"]}
    assert set(by_role) == {"own", "reference"}
    assert (by_role["reference"]["vector"], by_role["reference"]["vector_layer"]) == ("org9", 1)
    assert by_role["own"]["cosine_b_v"] == pytest.approx(1.0, abs=1e-5)
    assert by_role["reference"]["cosine_b_v"] == pytest.approx(-1.0, abs=1e-5)
    assert summary["cosine_b_v"] == by_role["own"]["cosine_b_v"]  # the top-level fields stay the own vector's
    b_cos = pd.read_csv(out / "b.csv")
    assert set(b_cos["finetune"]) == {"single"}  # the table's own id (emlab.core.keyed)
    ref_rows = b_cos[b_cos["role"] == "reference"]
    assert set(ref_rows["vector"]) == {"org9"} and set(ref_rows["vector_layer"]) == {1}
    expected = torch.nn.functional.cosine_similarity(ref, b.expand(4, -1), dim=-1)
    assert ref_rows["cosine"].to_numpy() == pytest.approx(expected.numpy(), abs=1e-5)
    assert ref_rows.loc[ref_rows["is_vector_layer"], "layer"].tolist() == [1]
    assert b_cos.loc[(b_cos["role"] == "own") & b_cos["is_vector_layer"], "layer"].tolist() == [LAYER]
    conv = pd.read_csv(out / "c.csv")
    own_conv, ref_conv = conv[conv["role"] == "own"], conv[conv["role"] == "reference"]
    assert own_conv["layer"].tolist() == ref_conv["layer"].tolist() == [LAYER, 3]  # both added after B's block
    assert own_conv["cosine"].to_numpy() == pytest.approx(1.0, abs=1e-4)
    # at the adapter's layer the change is the added vector: -B vs B
    assert float(ref_conv["cosine"].iloc[0]) == pytest.approx(-1.0, abs=1e-4)
    assert set(ref_conv["vector"]) == {"org9"} and (ref_conv["n_responses"] == 3).all()
    # a direction file of another fine-tune under the reference's name is refused, by the id it carries
    save_tensors(tmp_path / "wrong.safetensors", {"mean_diff": ref}, metadata={"finetune": "other", "split": "general"})
    with pytest.raises(SystemExit):
        run(tmp_path / "wrong.safetensors")
    assert "org9" in (tmp_path / "single_adapter_analysis.log").read_text()


def test_the_plan_adds_the_reference_vector_conditions_and_checks_its_key():
    from emlab.core.config import validate_config
    from emlab.plan.conditions import AdapterProjection, Transfer, parse_condition_id
    from emlab.plan.study import conditions, single_adapter_vectors

    def cfg(reference=None, **single):
        return validate_config(
            {
                "datasets": {"med": {"path": "x.jsonl"}, "good": {"path": "y.jsonl", "expect": "benign"}},
                "finetunes": {
                    "org9": {"dataset": "med", "lora": {"rank": 1, "layers": [1, 2]}},
                    "single": {"dataset": "med", "lora": {"rank": 1, "target_modules": ["down_proj"], "layers": [2]}},
                    "control": {"dataset": "good", "lora": {"rank": 1, "layers": [1, 2]}},
                },
                "judge": {"metrics": ["aligned", "coherent"]},
                "single_adapter": {"finetunes": ["single"], **({"reference_vector": reference} if reference else {})},
                **single,
            }
        )

    own_only = single_adapter_vectors(cfg(), "single", 4)
    assert [c.to_params() for c in own_only] == [
        {
            "role": "own",
            "finetune": "single",
            "layer": 2,
            "ablation": "ablate__single__single_L2",
            "projection": "adapter_project__single__L2",
        }
    ]
    both = single_adapter_vectors(cfg({"finetune": "org9", "layer": 1}), "single", 4)
    assert both[1].to_params() == {
        "role": "reference",
        "finetune": "org9",
        "layer": 1,
        "ablation": "ablate__single__transfer_org9_L1",
        "projection": "adapter_project__single__org9_L1",
    }
    assert single_adapter_vectors(cfg({"finetune": "org9"}), "single", 4)[1].layer == 2  # null: the adapter's
    plan = conditions(cfg({"finetune": "org9", "layer": 1}), 4)
    assert plan["adapter_project__single__org9_L1"]["intervention"] == {
        "kind": "adapter_project",
        "vector": "org9",
        "layer": 1,
    }
    assert plan["ablate__single__transfer_org9_L1"]["intervention"]["vector"] == "org9"
    assert {"ablate__single__single_L2", "adapter_project__single__L2"} <= set(plan)
    # the ids read back as the conditions they name
    assert parse_condition_id("adapter_project__single__org9_L1") == AdapterProjection("single", "org9", 1)
    assert parse_condition_id("adapter_project__single__L2") == AdapterProjection("single", "single", 2)
    assert parse_condition_id("ablate__single__transfer_org9_L1") == Transfer("single", "org9", 1)
    # plan-time errors name the key
    with pytest.raises(EMLabError, match="single_adapter.reference_vector.finetune names 'nope'"):
        cfg({"finetune": "nope"})
    with pytest.raises(EMLabError, match="single_adapter.reference_vector.finetune names 'control'.*benign"):
        cfg({"finetune": "control"})
    with pytest.raises(EMLabError, match="single_adapter.reference_vector.layer: layer 9 is out of range"):
        single_adapter_vectors(cfg({"finetune": "org9", "layer": 9}), "single", 4)
    with pytest.raises(EMLabError):
        cfg({"finetune": "org9", "layer": "24"})  # the schema: an index or a fraction of depth


def test_comparison_table_puts_each_vector_beside_its_conditions():
    from emlab.lora.single_adapter_comparison import COMPARISON_COLUMNS, comparison_table

    planned = [
        {"role": "own", "finetune": "single", "layer": 2, "ablation": "ab_own", "projection": "pr_own"},
        {"role": "reference", "finetune": "org9", "layer": 1, "ablation": "ab_ref", "projection": "pr_ref"},
    ]
    summary = {
        "finetune": "single",
        "layer": 2,
        "vectors": [  # in another order than planned: matched by role, not position
            {"role": "reference", "vector": "org9", "vector_layer": 1, "cosine_b_v": 0.04,
             "convergence_layer": 3, "convergence_last_layer": 0.42},
            {"role": "own", "vector": "single", "vector_layer": 2, "cosine_b_v": 0.9,
             "convergence_layer": 3, "convergence_last_layer": 0.95},
        ],
    }  # fmt: skip
    metrics = pd.DataFrame(
        {
            "condition": ["pr_ref", "single", "ab_own", "pr_own", "ab_ref", "other"],
            "em_rate": [0.14, 0.2, 0.1, 0.2, 0.004, 0.5],
            "note": ["", "", "", "", "", ""],
        }
    )
    table = comparison_table("single", planned, summary, metrics)
    assert list(table.columns) == COMPARISON_COLUMNS
    ref = table.set_index("role").loc["reference"]
    assert (ref["vector"], ref["vector_layer"], ref["adapter_layer"]) == ("org9", 1, 2)
    assert (ref["ablation_condition"], ref["projection_condition"]) == ("ab_ref", "pr_ref")
    assert ref["cosine_b_v"] == 0.04 and ref["convergence_cosine"] == 0.42
    assert ref["ablation_reduction"] == pytest.approx(0.98) and ref["projection_reduction"] == pytest.approx(0.3)
    own = table.set_index("role").loc["own"]
    assert own["ablation_reduction"] == pytest.approx(0.5) and own["projection_reduction"] == pytest.approx(0.0)
    # no EM to remove: the reductions are NaN, not a division by zero
    zero = comparison_table("single", planned, summary, metrics.assign(em_rate=0.0))
    assert zero["ablation_reduction"].isna().all()
    with pytest.raises(EMLabError, match="planned reference vector"):
        wrong = dict(summary, vectors=[dict(summary["vectors"][0], vector="other"), summary["vectors"][1]])
        comparison_table("single", planned, wrong, metrics)
    with pytest.raises(EMLabError, match="no row for condition 'ab_ref'"):
        comparison_table("single", planned, summary, metrics[metrics["condition"] != "ab_ref"])
    with pytest.raises(EMLabError, match="not 'other'"):
        comparison_table("other", planned, summary, metrics)
