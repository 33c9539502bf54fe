"""The rehearsal's single-adapter check (emlab.rehearsal.checks.check_single_adapter) on a synthetic results
folder: a correctly wired run passes it, and each wiring mistake it is there for fails it."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from emlab.lora.single_adapter_comparison import comparison_table
from emlab.model.tensors import save_tensors
from emlab.rehearsal.checks import Run, check_single_adapter

N_LAYERS, D, LAYER = 4, 8, 2
CFG = {
    "base_model": {"num_layers": N_LAYERS},
    "datasets": {"med": {"path": "x.jsonl", "expect": "misaligned"}},
    "finetunes": {
        "org9": {"dataset": "med", "lora": {"rank": 1, "layers": [1, 2]}},
        "single": {"dataset": "med", "lora": {"rank": 1, "target_modules": ["down_proj"], "layers": [LAYER]}},
    },
    "judge": {"metrics": ["aligned", "coherent"]},
    "single_adapter": {"finetunes": ["single"], "reference_vector": {"finetune": "org9", "layer": 1}},
}
EM = {
    "single": 0.4,
    "ablate__single__single_L2": 0.1,
    "adapter_project__single__L2": 0.3,
    "ablate__single__transfer_org9_L1": 0.02,
    "adapter_project__single__org9_L1": 0.28,
}


def write_run(res, em=EM, cos_vector="org9", generated_with="org9"):
    """A finished run's single-adapter files for CFG; `cos_vector`: whose v_1 the reference cosine was taken
    with; `generated_with`: the vector the reference conditions' generation tables name."""
    g = torch.Generator().manual_seed(0)
    b, own, ref = (
        torch.randn(D, generator=g),
        torch.randn(N_LAYERS, D, generator=g),
        torch.randn(N_LAYERS, D, generator=g),
    )
    adapter = res / "finetunes" / "single" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 1, "lora_alpha": 8, "use_rslora": True}))
    prefix = f"base_model.model.model.layers.{LAYER}.mlp.down_proj"
    save_tensors(adapter / "adapter_model.safetensors",
                 {f"{prefix}.lora_A.weight": torch.randn(1, 16, generator=g), f"{prefix}.lora_B.weight": b[:, None]})  # fmt: skip
    (res / "directions").mkdir(parents=True)
    save_tensors(res / "directions" / "org9.safetensors", {"mean_diff": ref}, metadata={"finetune": "org9"})
    save_tensors(res / "directions" / "single.safetensors", {"mean_diff": own}, metadata={"finetune": "single"})
    vectors = {"org9": ref, "single": own}

    def cos(v):
        return float(torch.nn.functional.cosine_similarity(b.double(), v.double(), dim=0))

    summary = {
        "finetune": "single",
        "layer": LAYER,
        "vectors": [
            {"role": "own", "vector": "single", "vector_layer": LAYER, "cosine_b_v": cos(own[LAYER]),
             "convergence_layer": 3, "convergence_last_layer": 0.9},
            {"role": "reference", "vector": "org9", "vector_layer": 1, "cosine_b_v": cos(vectors[cos_vector][1]),
             "convergence_layer": 3, "convergence_last_layer": 0.4},
        ],
    }  # fmt: skip
    metrics = pd.DataFrame({"condition": list(em), "em_rate": list(em.values()), "note": ""})
    (res / "metrics").mkdir(parents=True)
    metrics.to_csv(res / "metrics" / "em_by_condition.csv", index=False)
    planned = [
        {"role": "own", "finetune": "single", "layer": LAYER, "ablation": "ablate__single__single_L2",
         "projection": "adapter_project__single__L2"},
        {"role": "reference", "finetune": "org9", "layer": 1, "ablation": "ablate__single__transfer_org9_L1",
         "projection": "adapter_project__single__org9_L1"},
    ]  # fmt: skip
    (res / "single_adapter" / "single").mkdir(parents=True)
    comparison_table("single", planned, summary, metrics).to_csv(
        res / "single_adapter" / "single" / "comparison.csv", index=False
    )
    conv = pd.DataFrame(
        {
            "finetune": "single",
            "role": ["own", "own", "reference", "reference"],
            "vector": ["single", "single", "org9", "org9"],
            "vector_layer": [LAYER, LAYER, 1, 1],
            "layer": [LAYER, 3, LAYER, 3],
            "cosine": [cos(own[LAYER]), 0.9, cos(vectors[cos_vector][1]), 0.4],
        }
    )
    conv.to_csv(res / "single_adapter" / "single" / "convergence.csv", index=False)
    (res / "generations").mkdir(parents=True)
    for cid, kind in (
        ("ablate__single__transfer_org9_L1", "ablate"),
        ("adapter_project__single__org9_L1", "adapter_project"),
    ):
        spec = {"kind": kind, "vector": generated_with, "layer": 1}
        pd.DataFrame({"condition": [cid] * 2, "intervention": [json.dumps(spec)] * 2}).to_parquet(
            res / "generations" / f"{cid}.parquet"
        )


def checks(tmp_path, **kw) -> tuple[dict, dict]:
    """(the table check, the ablation check) of a synthetic run written with `kw`."""
    write_run(tmp_path / "results", **kw)
    table, ablation = check_single_adapter(Run(tmp_path, CFG))
    return table, ablation


def test_a_correctly_wired_run_passes(tmp_path):
    table, ablation = checks(tmp_path)
    assert table["pass"] and ablation["pass"], (table, ablation)
    assert table["name"] == "the single-adapter table of single reports its own and the reference vector"
    ref = table["measured"]["reference"]
    assert (ref["vector"], ref["vector_layer"]) == ("org9", 1)
    assert ablation["measured"]["ablation_reduction"] == pytest.approx(0.95)


@pytest.mark.parametrize(
    "mistake, table_passes, ablation_passes",
    [
        ({"cos_vector": "single"}, False, True),  # the reference row computed with the run's own vector
        ({"generated_with": "single"}, False, True),  # the reference conditions generated with the own vector
        ({"em": {**EM, "ablate__single__transfer_org9_L1": 0.35}}, True, False),  # EM not removed
    ],
)
def test_wiring_mistakes_fail(tmp_path, mistake, table_passes, ablation_passes):
    table, ablation = checks(tmp_path, **mistake)
    assert (table["pass"], ablation["pass"]) == (table_passes, ablation_passes), (table, ablation)


def test_a_paper_config_without_a_reference_fails(tmp_path):
    write_run(tmp_path / "results")
    cfg = {**CFG, "single_adapter": {"finetunes": ["single"]}}
    table, ablation = check_single_adapter(Run(tmp_path, cfg))
    assert not table["pass"] and "null" in json.dumps(table["measured"])
    assert not ablation["pass"]
