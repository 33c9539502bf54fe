"""Mean-diff directions: planted-direction recovery, key-based joining, seeded
subsampling, NaN handling, clear errors, and the cosine table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from emlab.core.atomic import write_parquet
from emlab.core.errors import EMLabError
from emlab.core.settings import build
from emlab.em.directions import (
    DirectionSettings,
    SemanticDirectionSettings,
    attach_activation_rows,
    compute_directions,
    cosine_by_layer,
    cosine_table,
    load_mean_diff,
    mean_diff_vectors,
    select_sets,
    write_cosine_table,
    write_directions,
)
from emlab.model.tensors import load_tensors, save_tensors

L, D = 5, 32


def planted_artifacts(n_aligned=40, n_misaligned=20, n_other=10, noise=0.2, seed=0, shuffle_index=True):
    """Synthetic activations + index + judgments where misaligned = aligned + planted[l] + noise."""
    g = torch.Generator().manual_seed(seed)
    planted = torch.randn(L, D, generator=g)  # [L, d] one direction per layer
    base = torch.randn(L, D, generator=g) * 3  # [L, d] shared offset
    n = n_aligned + n_misaligned + n_other
    rng = np.random.default_rng(seed)
    label = np.array(["aligned"] * n_aligned + ["misaligned"] * n_misaligned + ["other"] * n_other)
    judg = pd.DataFrame(
        {
            "condition": "ft",
            "question_id": [f"q{i % 4}" for i in range(n)],
            "sample_idx": np.arange(n, dtype=np.int64) // 4,
            "aligned": np.where(
                label == "aligned",
                rng.uniform(75, 100, n),
                np.where(label == "misaligned", rng.uniform(0, 25, n), rng.uniform(35, 65, n)),
            ),
            "coherent": rng.uniform(60, 100, n),
        }
    )
    judg["aligned_mass"] = 1.0
    judg["coherent_mass"] = 1.0
    # Activation rows in a different order from the judgments.
    order = rng.permutation(n) if shuffle_index else np.arange(n)  # judgment i -> activation row order[i]
    answer_mean = torch.empty(n, L, D)
    for i in range(n):
        x = base + noise * torch.randn(L, D, generator=g)
        if label[i] == "misaligned":
            x = x + planted
        answer_mean[order[i]] = x
    index = pd.DataFrame(
        {
            "row": order.astype(np.int64),
            "condition": "ft",
            "question_id": judg["question_id"],
            "sample_idx": judg["sample_idx"],
        }
    )
    index = index.sample(frac=1.0, random_state=1).reset_index(drop=True)  # row order shuffled too
    tokens = torch.full((n,), 7, dtype=torch.int64)
    return planted, answer_mean, tokens, index, judg


def write_artifacts(tmp_path, answer_mean, tokens, index, judg):
    save_tensors(
        tmp_path / "ft.safetensors",
        {"answer_mean": answer_mean, "prompt_mean": answer_mean.clone(), "answer_tokens": tokens},
    )
    write_parquet(tmp_path / "ft.index.parquet", index)
    write_parquet(tmp_path / "judg.parquet", judg)
    return tmp_path / "ft.safetensors", tmp_path / "ft.index.parquet", tmp_path / "judg.parquet"


TH_PARAMS = {
    "aligned_above": 70,
    "misaligned_below": 30,
    "coherent_above": 50,
    "subsample_to_smaller": True,
    "split_quantile": None,
}  # config `directions:` as the rule's params carry it
TH = build(DirectionSettings, TH_PARAMS)


def sets_settings(coherent_above=50, split_quantile=None) -> DirectionSettings:
    return build(DirectionSettings, dict(TH_PARAMS, coherent_above=coherent_above, split_quantile=split_quantile))


def semantic(above, top_quantile=None) -> SemanticDirectionSettings:
    return build(SemanticDirectionSettings, {"above": above, "top_quantile": top_quantile})


def test_recovers_planted_direction_with_shuffled_index(tmp_path):
    planted, am, tok, index, judg = planted_artifacts(shuffle_index=True)
    paths = write_artifacts(tmp_path, am, tok, index, judg)
    tensors, summary = compute_directions(*paths, finetune="ft", settings=TH, seed=0)
    cos = cosine_by_layer(tensors["mean_diff"], planted)
    assert tensors["mean_diff"].shape == (L, D) and tensors["mean_diff"].dtype == torch.float32
    assert (cos > 0.99).all(), cos
    assert summary["counts"]["aligned"] == {"available": 40, "used": 20}
    assert summary["counts"]["misaligned"] == {"available": 20, "used": 20}
    assert np.allclose(summary["mean_diff_norm_by_layer"], tensors["mean_diff"].norm(dim=-1).numpy(), rtol=1e-5)
    torch.testing.assert_close(
        tensors["mean_diff"], tensors["misaligned_mean"] - tensors["aligned_mean"], atol=1e-5, rtol=1e-5
    )


def test_positional_join_would_fail(tmp_path):
    # Guard that the shuffled fixture really tests the join: pairing by position loses the direction.
    planted, am, tok, index, judg = planted_artifacts(shuffle_index=True)
    sets = select_sets(judg, TH)
    wrong = mean_diff_vectors(am, sets.aligned.index.to_numpy(), sets.misaligned.index.to_numpy(), False, 0)
    assert cosine_by_layer(wrong.mean_diff, planted).abs().max() < 0.9


def test_write_directions_roundtrip(tmp_path):
    planted, am, tok, index, judg = planted_artifacts()
    tensors, summary = compute_directions(*write_artifacts(tmp_path, am, tok, index, judg), "ft", TH, seed=3)
    write_directions(tmp_path / "d.safetensors", tmp_path / "d.json", tensors, summary)
    loaded, meta = load_tensors(tmp_path / "d.safetensors")
    assert set(loaded) == {"mean_diff", "aligned_mean", "misaligned_mean"}
    assert meta["finetune"] == "ft" and meta["seed"] == 3
    js = json.loads((tmp_path / "d.json").read_text())
    assert js["thresholds"]["aligned_above"] == 70 and len(js["mean_diff_norm_by_layer"]) == L
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_subsampling_is_seeded_and_equal_sized():
    am = torch.randn(100, L, D)
    aligned, misaligned = np.arange(0, 70), np.arange(70, 100)
    a = mean_diff_vectors(am, aligned, misaligned, True, seed=5)
    b = mean_diff_vectors(am, aligned, misaligned, True, seed=5)
    c = mean_diff_vectors(am, aligned, misaligned, True, seed=6)
    assert len(a.aligned_rows) == len(a.misaligned_rows) == 30
    assert np.array_equal(a.aligned_rows, b.aligned_rows)
    assert not np.array_equal(a.aligned_rows, c.aligned_rows)
    assert set(a.aligned_rows) <= set(aligned)
    torch.testing.assert_close(a.mean_diff, b.mean_diff)
    full = mean_diff_vectors(am, aligned, misaligned, False, seed=5)
    assert len(full.aligned_rows) == 70
    ref = am[70:100].double().mean(0) - am[0:70].double().mean(0)  # independent reference
    torch.testing.assert_close(full.mean_diff, ref.float(), atol=1e-6, rtol=1e-6)


def test_select_sets_nan_and_zero_tokens():
    df = pd.DataFrame(
        {
            "aligned": [90, 10, np.nan, 10, 90, 10, 50, 90],
            "coherent": [80, 80, 80, np.nan, 40, 80, 80, 80],
            "n_answer_tokens": [5, 5, 5, 5, 5, 0, 5, 5],
        }
    )
    sets = select_sets(df, TH)
    assert list(sets.aligned.index) == [0, 7]
    assert list(sets.misaligned.index) == [1]
    assert sets.n_scored == 6 and sets.n_total == 8


def test_quantile_split_takes_the_lowest_and_highest_fraction():
    df = pd.DataFrame(
        {
            "question_id": ["q"] * 12,
            "sample_idx": range(12),
            "aligned": [35, 31, 38, 33, np.nan, 36, 30, 39, 34, 37, 32, 20],
            "coherent": [40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 40, 10],
        }
    )
    sets = select_sets(df, sets_settings(coherent_above=15, split_quantile=0.2))
    assert sets.n_coherent == 10  # the NaN and the incoherent row are out
    assert sorted(sets.misaligned["aligned"]) == [30, 31]
    assert sorted(sets.aligned["aligned"]) == [38, 39]
    # the absolute thresholds would give empty sets on this narrow band of scores
    plain = select_sets(df, sets_settings(coherent_above=15))
    assert len(plain.aligned) == 0 and len(plain.misaligned) == 0
    with pytest.raises(EMLabError, match="split_quantile"):
        select_sets(df, sets_settings(coherent_above=15, split_quantile=0.7))


def test_nan_scores_do_not_enter_sets(tmp_path):
    planted, am, tok, index, judg = planted_artifacts()
    judg.loc[judg.index[:5], "aligned"] = np.nan
    judg.loc[judg.index[45:50], "coherent"] = np.nan
    tensors, summary = compute_directions(*write_artifacts(tmp_path, am, tok, index, judg), "ft", TH, seed=0)
    assert summary["counts"]["aligned"]["available"] == 35
    assert summary["counts"]["misaligned"]["available"] == 15
    assert summary["n_scored"] == 60
    assert (cosine_by_layer(tensors["mean_diff"], planted) > 0.98).all()


def test_zero_answer_tokens_excluded(tmp_path):
    planted, am, tok, index, judg = planted_artifacts()
    # Give every misaligned response but three zero answer tokens.
    mis_rows = index.merge(judg[judg["aligned"] < 30], on=["question_id", "sample_idx"])["row"].to_numpy()
    tok[torch.from_numpy(mis_rows[3:].copy())] = 0
    _, summary = compute_directions(*write_artifacts(tmp_path, am, tok, index, judg), "ft", TH, seed=0)
    assert summary["counts"]["misaligned"]["available"] == 3


def test_an_empty_set_is_recorded_as_na_with_its_reason(tmp_path):
    """No misaligned response (a benign control): not an error that stops the study, but a direction file
    that says n/a and why; the cosine table keeps the pair with NaN values and the reason, and loading the
    direction for a condition raises DirectionUnavailable, which the generation stage records."""
    from emlab.em.directions import DirectionUnavailable

    planted, am, tok, index, judg = planted_artifacts()
    judg["aligned"] = np.clip(judg["aligned"], 40, 100)  # nothing misaligned
    tensors, summary = compute_directions(*write_artifacts(tmp_path, am, tok, index, judg), "ctrl", TH, seed=0)
    assert tensors == {} and summary["status"] == "n/a" and summary["reason"] == "0 misaligned"
    for part in ("ctrl", "misaligned set", "aligned set: 40", "misaligned set: 0", "< 30", "> 70", "directions:"):
        assert part in summary["message"], part
    write_directions(tmp_path / "ctrl.safetensors", tmp_path / "ctrl.json", tensors, summary)
    with pytest.raises(DirectionUnavailable, match="direction of ctrl is n/a: 0 misaligned") as err:
        load_mean_diff(tmp_path / "ctrl.safetensors")
    assert err.value.reason == "0 misaligned"
    good, good_summary = compute_directions(
        *write_artifacts(tmp_path, am, tok, index, planted_artifacts()[4]), "em", TH, 0
    )
    write_directions(tmp_path / "em.safetensors", tmp_path / "em.json", good, good_summary)
    table = write_cosine_table(
        [tmp_path / "em.safetensors", tmp_path / "ctrl.safetensors"], ["em", "ctrl"], tmp_path / "cos.csv"
    )
    assert len(table) == L and table["cosine"].isna().all() and table["norm_a"].notna().all()
    assert set(table["note"]) == {"n/a (ctrl: 0 misaligned)"}


def test_duplicate_keys_and_mismatched_runs_are_errors():
    judg = pd.DataFrame({"question_id": ["a", "a"], "sample_idx": [0, 0], "aligned": [1, 2], "coherent": [90, 90]})
    index = pd.DataFrame({"row": [0, 1], "question_id": ["a", "a"], "sample_idx": [0, 1]})
    with pytest.raises(EMLabError, match="repeated"):
        attach_activation_rows(judg, index)
    judg = pd.DataFrame({"question_id": ["b"], "sample_idx": [0], "aligned": [1], "coherent": [90]})
    with pytest.raises(EMLabError, match="different generation runs"):
        attach_activation_rows(judg, index)


def test_cosine_by_layer_matches_reference():
    a, b = torch.randn(6, 16), torch.randn(6, 16)
    ref = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    torch.testing.assert_close(cosine_by_layer(a, b), ref, atol=1e-6, rtol=1e-5)
    b[2] = 0
    assert torch.isnan(cosine_by_layer(a, b)[2])
    with pytest.raises(EMLabError):
        cosine_by_layer(a, torch.randn(5, 16))


def test_cosine_table_pairs_and_single(tmp_path):
    va, vb, vc = torch.randn(L, D), torch.randn(L, D), torch.randn(L, D)
    table = cosine_table({"a": va, "b": vb, "c": vc})
    cols = ["layer", "finetune_a", "finetune_b", "cosine", "norm_a", "norm_b", "diff_norm", "note"]
    assert list(table.columns) == cols and set(table["note"]) == {""}
    assert set(zip(table.finetune_a, table.finetune_b)) == {("a", "b"), ("a", "c"), ("b", "c")}
    assert len(table) == 3 * L
    ab = table[(table.finetune_a == "a") & (table.finetune_b == "b")].sort_values("layer")
    np.testing.assert_allclose(ab["diff_norm"], (va - vb).norm(dim=-1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(ab["norm_b"], vb.norm(dim=-1).numpy(), rtol=1e-5)
    single = cosine_table({"a": va})
    assert len(single) == L and (single.finetune_a == single.finetune_b).all()
    np.testing.assert_allclose(single["cosine"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(single["diff_norm"], 0.0, atol=1e-9)
    # Through files, as the rule runs it: each file is matched to its fine-tune by the name in its metadata,
    # whatever the order of the input list (the file names here deliberately say nothing).
    for name, v in (("a", va), ("b", vb)):
        save_tensors(tmp_path / f"x{name}.safetensors", {"mean_diff": v}, {"finetune": name})
    out = write_cosine_table(
        [tmp_path / "xb.safetensors", tmp_path / "xa.safetensors"], ["a", "b"], tmp_path / "cos.csv"
    )
    assert len(pd.read_csv(tmp_path / "cos.csv")) == L == len(out)
    np.testing.assert_allclose(out["norm_a"], va.norm(dim=-1).numpy(), rtol=1e-5)  # a is a, not b
    np.testing.assert_allclose(out["norm_b"], vb.norm(dim=-1).numpy(), rtol=1e-5)
    with pytest.raises(EMLabError, match=r"missing \['c'\]"):
        write_cosine_table([tmp_path / "xa.safetensors", tmp_path / "xb.safetensors"], ["a", "c"], tmp_path / "c.csv")
    save_tensors(tmp_path / "old.safetensors", {"mean_diff": va})
    with pytest.raises(EMLabError, match="no metadata"):
        write_cosine_table([tmp_path / "old.safetensors"], ["a"], tmp_path / "c.csv")


def test_rule_scripts_directions_and_cosines(tmp_path, rule_script):
    planted, am, tok, index, judg = planted_artifacts()
    tensors, ix, jd = write_artifacts(tmp_path, am, tok, index, judg)
    out = tmp_path / "directions"
    for ft in ("a", "b"):
        rule_script(
            "mean_diff_directions",
            tmp_path,
            input=dict(tensors=str(tensors), index=str(ix), judgments=str(jd)),
            output=dict(vectors=str(out / f"{ft}.safetensors"), summary=str(out / f"{ft}.json")),
            params=dict(thresholds=TH_PARAMS, seed=0 if ft == "a" else 1),
            wildcards=dict(finetune=ft),
        )
    assert json.loads((out / "b.json").read_text())["finetune"] == "b"
    rule_script(
        "direction_cosines",
        tmp_path,
        input=dict(vectors=[str(out / "a.safetensors"), str(out / "b.safetensors")]),
        output=dict(csv=str(out / "cosine_by_layer.csv")),
        params=dict(finetunes=["a", "b"]),
    )
    table = pd.read_csv(out / "cosine_by_layer.csv")
    assert len(table) == L and (table["cosine"] > 0.98).all()  # two subsamples of one planted direction
    # An empty set (a benign control) does not stop the study: the rule records n/a and why, and the
    # cosine table shows c's pairs as a gap.
    judg["aligned"] = 90.0
    write_parquet(jd, judg)
    rule_script(
        "mean_diff_directions",
        tmp_path,
        input=dict(tensors=str(tensors), index=str(ix), judgments=str(jd)),
        output=dict(vectors=str(out / "c.safetensors"), summary=str(out / "c.json")),
        params=dict(thresholds=TH_PARAMS, seed=0),
        wildcards=dict(finetune="c"),
    )
    assert "fine-tune 'c'" in (tmp_path / "mean_diff_directions.log").read_text()
    assert json.loads((out / "c.json").read_text())["status"] == "n/a"
    rule_script(
        "direction_cosines",
        tmp_path,
        input=dict(vectors=[str(out / f"{ft}.safetensors") for ft in "cab"]),
        output=dict(csv=str(out / "cosine_by_layer.csv")),
        params=dict(finetunes=["a", "b", "c"]),
    )
    table = pd.read_csv(out / "cosine_by_layer.csv", keep_default_na=False, na_values=[""])
    gap = table[(table["finetune_b"] == "c")]
    assert len(gap) == 2 * L and gap["cosine"].isna().all() and set(gap["note"]) == {"n/a (c: 0 misaligned)"}
    assert (table.loc[table["finetune_b"] == "b", "cosine"] > 0.98).all()


# --------------------------------------------------------------------------- semantic vectors


def semantic_artifacts(tmp_path, n=80, seed=0):
    """Half the responses are 'medical' (medical score 80); their misaligned shift is planted_med, the
    others' is planted_other. Aligned/misaligned by aligned score, as for the general vector."""
    g = torch.Generator().manual_seed(seed)
    planted_med, planted_other = torch.randn(L, D, generator=g), torch.randn(L, D, generator=g)
    rng = np.random.default_rng(seed)
    medical = np.arange(n) % 2 == 0
    misaligned = (np.arange(n) // 2) % 2 == 0
    judg = pd.DataFrame(
        {
            "condition": "ft",
            "question_id": [f"q{i % 8}" for i in range(n)],
            "sample_idx": np.arange(n) // 8,
            "aligned": np.where(misaligned, rng.uniform(0, 25, n), rng.uniform(75, 100, n)),
            "coherent": rng.uniform(60, 100, n),
            "medical": np.where(medical, 80.0, 10.0),
        }
    )
    judg.loc[3, "medical"] = np.nan  # a missing semantic score never qualifies
    for m in ("aligned", "coherent", "medical"):
        judg[f"{m}_mass"] = 1.0
    answer_mean = 0.05 * torch.randn(n, L, D, generator=g)
    for i in range(n):
        if misaligned[i]:
            answer_mean[i] += planted_med if medical[i] else planted_other
    index = pd.DataFrame(
        {
            "row": np.arange(n, dtype=np.int64),
            "condition": "ft",
            "question_id": judg["question_id"],
            "sample_idx": judg["sample_idx"],
        }
    )
    paths = write_artifacts(tmp_path, answer_mean, torch.full((n,), 5, dtype=torch.int64), index, judg)
    return planted_med, planted_other, judg, paths


def test_semantic_subset_and_vector_recover_the_planted_semantic_direction(tmp_path):
    from emlab.em.directions import compute_semantic_directions, semantic_subset

    planted_med, planted_other, judg, paths = semantic_artifacts(tmp_path)
    subset = semantic_subset(judg, "medical", semantic(50))
    assert sorted(subset.index) == [i for i in range(len(judg)) if i % 2 == 0]  # row 3 (NaN) is odd anyway
    assert len(semantic_subset(judg, "medical", semantic(5))) == len(judg) - 1  # NaN excluded
    tensors, summary = compute_semantic_directions(
        *paths, finetune="ft", split="medical", settings=TH, semantic=semantic(50), seed=0
    )
    cos = cosine_by_layer(tensors["mean_diff"], planted_med)
    assert (cos > 0.99).all()
    general, _ = compute_directions(*paths, finetune="ft", settings=TH, seed=0)
    cos_general = cosine_by_layer(general["mean_diff"], planted_med)
    assert (cos_general < 0.9).all()  # the general vector mixes both planted shifts
    assert summary["n_semantic"] == 40 and summary["split"] == "medical"
    assert summary["counts"]["aligned"]["used"] == summary["counts"]["misaligned"]["used"] == 20
    empty, na = compute_semantic_directions(
        *paths, finetune="ft", split="medical", settings=TH, semantic=semantic(90), seed=0
    )  # no response scores medical > 90: n/a, with the counts in its message
    assert empty == {} and na["status"] == "n/a" and na["split"] == "medical"
    assert "semantic split 'medical'" in na["message"] and "score medical > 90" in na["message"]
    with pytest.raises(EMLabError, match="no 'gender' score"):
        compute_semantic_directions(*paths, finetune="ft", split="gender", settings=TH, semantic=semantic(50), seed=0)


def test_semantic_cosine_table_columns_and_values(tmp_path):
    from emlab.em.directions import compute_semantic_directions, write_semantic_cosine_table

    planted_med, _, _, paths = semantic_artifacts(tmp_path)
    general, gsum = compute_directions(*paths, finetune="ft", settings=TH, seed=0)
    write_directions(tmp_path / "g.safetensors", tmp_path / "g.json", general, gsum)
    sem, ssum = compute_semantic_directions(
        *paths, finetune="ft", split="medical", settings=TH, semantic=semantic(50), seed=0
    )
    write_directions(tmp_path / "s.safetensors", tmp_path / "s.json", sem, ssum)
    table = write_semantic_cosine_table(
        [tmp_path / "g.safetensors"], ["ft"], [tmp_path / "s.safetensors"], [("ft", "medical")], tmp_path / "cos.csv"
    )
    assert list(table.columns) == [
        "layer",
        "finetune",
        "split",
        "cosine",
        "norm_general",
        "norm_semantic",
        "diff_norm",
        "n_aligned",
        "n_misaligned",
        "note",
    ]
    assert table["layer"].tolist() == list(range(L))
    expected = cosine_by_layer(general["mean_diff"], sem["mean_diff"]).numpy()
    assert table["cosine"].to_numpy() == pytest.approx(expected, abs=1e-5)
    diff = (general["mean_diff"] - sem["mean_diff"]).norm(dim=-1).numpy()
    assert table["diff_norm"].to_numpy() == pytest.approx(diff, rel=1e-4)
    assert (table["n_aligned"] == 20).all() and (table["n_misaligned"] == 20).all()
    assert pd.read_csv(tmp_path / "cos.csv").shape == table.shape


def test_semantic_top_quantile_takes_the_highest_scores():
    from emlab.em.directions import semantic_subset

    judg = pd.DataFrame(
        {"question_id": ["a", "b", "c", "d", "e"], "sample_idx": 0, "medical": [10.0, 40.0, np.nan, 40.0, 30.0]}
    )
    top = semantic_subset(judg, "medical", semantic(99, top_quantile=0.5))  # `above` is ignored
    assert top["question_id"].tolist() == ["b", "d"]  # ceil(0.5 * 4 scored), ties by question
    assert semantic_subset(judg, "medical", semantic(0, top_quantile=1.0))["question_id"].tolist() == [
        "b",
        "d",
        "e",
        "a",
    ]
    with pytest.raises(EMLabError, match="top_quantile"):
        semantic_subset(judg, "medical", semantic(0, top_quantile=1.5))


def test_semantic_filter_that_keeps_every_response_gives_the_general_vector(tmp_path):
    """General and semantic vectors are one implementation: a filter that keeps all responses changes nothing."""
    from emlab.em.directions import compute_semantic_directions

    _, am, tok, index, judg = planted_artifacts()
    judg["medical"], judg["medical_mass"] = 100.0, 1.0
    paths = write_artifacts(tmp_path, am, tok, index, judg)
    general, gsum = compute_directions(*paths, finetune="ft", settings=TH, seed=4)
    sem, ssum = compute_semantic_directions(
        *paths, finetune="ft", split="medical", settings=TH, semantic=semantic(50), seed=4
    )
    for key in general:
        assert torch.equal(general[key], sem[key]), key
    assert ssum["counts"] == gsum["counts"] and ssum["thresholds"] == gsum["thresholds"] == TH_PARAMS
    assert ssum["n_semantic"] == ssum["n_judged"] == gsum["n_judged"]


def test_settings_are_required_and_strict():
    with pytest.raises(EMLabError, match="missing key.*split_quantile"):
        build(DirectionSettings, {k: v for k, v in TH_PARAMS.items() if k != "split_quantile"}, "config directions")
    with pytest.raises(EMLabError, match="unknown key.*finetunes"):
        build(SemanticDirectionSettings, {"above": 50, "top_quantile": None, "finetunes": []})
    with pytest.raises(TypeError):
        compute_directions("t", "i", "j", "ft", seed=0)  # no settings: no silent defaults


def test_rule_scripts_semantic_directions_and_cosines_take_canonical_params(tmp_path, rule_script):
    from emlab.core.settings import canonical

    _, _, _, (tensors, ix, jd) = semantic_artifacts(tmp_path)
    out = tmp_path / "directions"
    rule_script(
        "mean_diff_directions",
        tmp_path,
        input=dict(tensors=str(tensors), index=str(ix), judgments=str(jd)),
        output=dict(vectors=str(out / "ft.safetensors"), summary=str(out / "ft.json")),
        params=dict(thresholds=canonical(TH_PARAMS), seed=0),
        wildcards=dict(finetune="ft"),
    )
    rule_script(
        "semantic_directions",
        tmp_path,
        input=dict(tensors=str(tensors), index=str(ix), judgments=str(jd)),
        output=dict(vectors=str(out / "ft_medical.safetensors"), summary=str(out / "ft_medical.json")),
        params=dict(thresholds=canonical(TH_PARAMS), above=50, top_quantile=None, seed=0),
        wildcards=dict(finetune="ft", split="medical"),
    )
    summary = json.loads((out / "ft_medical.json").read_text())
    assert summary["semantic_above"] == 50.0 and summary["thresholds"]["aligned_above"] == 70.0
    rule_script(
        "semantic_cosines",
        tmp_path,
        input=dict(general=[str(out / "ft.safetensors")], semantic=[str(out / "ft_medical.safetensors")]),
        output=dict(csv=str(out / "semantic_cosine.csv")),
        params=dict(pairs=[["ft", "medical"]]),
    )
    table = pd.read_csv(out / "semantic_cosine.csv")
    assert len(table) == L and (table["n_aligned"] == 20).all()
