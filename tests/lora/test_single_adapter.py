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
    with pytest.raises(EMLabError, match="layer"):
        apply_adapter_projection(load_model(tiny_model_dir, adapter_dir, device="cpu", dtype="float32"), vectors, 1)
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


def test_single_adapter_analysis_script(tiny_model_dir, tmp_path, rule_script):
    import json

    from emlab.model.tensors import save_tensors

    g = torch.Generator().manual_seed(4)
    v = torch.randn(4, 64, generator=g)
    adapter_dir = make_single_adapter(tiny_model_dir, tmp_path / "adapter", v[LAYER] * 0.1)
    save_tensors(tmp_path / "ft.safetensors", {"mean_diff": v})
    gen = pd.DataFrame([dict(r, question_id=f"q{i}", sample_idx=0) for i, r in enumerate(RECORDS)])
    gen.to_parquet(tmp_path / "ft.parquet")
    out = tmp_path / "out"
    rule_script(
        "single_adapter_analysis",
        tmp_path,
        input=dict(
            base_model=[],
            adapter=str(adapter_dir),
            vectors=str(tmp_path / "ft.safetensors"),
            responses=str(tmp_path / "ft.parquet"),
        ),
        output=dict(b_cosine=str(out / "b.csv"), convergence=str(out / "c.csv"), summary=str(out / "s.json")),
        params=dict(base_model=str(tiny_model_dir), max_responses=2, batch_size=2, device="cpu", dtype="float32"),
        wildcards=dict(finetune="ft"),
    )
    summary = json.loads((out / "s.json").read_text())
    assert summary["layer"] == LAYER and summary["cosine_b_v"] == pytest.approx(1.0, abs=1e-5)
    assert summary["n_responses"] == 2 and summary["convergence_last_layer"] == pytest.approx(1.0, abs=1e-4)
    assert pd.read_csv(out / "c.csv")["layer"].tolist() == [LAYER, 3]
    assert len(pd.read_csv(out / "b.csv")) == 4
