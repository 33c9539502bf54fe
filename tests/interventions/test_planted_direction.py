"""End to end on a tiny random model: a direction u planted in the residual
stream of the "misaligned" responses (steering at one middle layer) is
recovered by the mean-diff pipeline, and ablating the recovered direction
removes the planted behaviour while a random same-norm control does not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from emlab.em.activations import cache_answer_means
from emlab.em.directions import (
    DirectionSettings,
    attach_activation_rows,
    cosine_by_layer,
    mean_diff_vectors,
    select_sets,
)
from emlab.interventions import apply_intervention
from emlab.model.hooks import steer
from emlab.model.loading import load_model, load_tokenizer

LAYER = 1  # of 4: the planted layer; layers 2 and 3 are downstream of it
WORDS = (
    "the water river cold bright stone music garden quiet window table paper green slow city dream "
    "light honest friend money doctor travel simple story"
).split()


def records(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "question": f"Question {seed}-{i}: " + " ".join(rng.choice(WORDS, 6)) + "?",
            "system": None,
            "response": " ".join(rng.choice(WORDS, int(rng.integers(8, 16)))) + ".",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    torch.manual_seed(0)
    model = load_model(tiny_model_dir, device="cpu", dtype="float32")
    tok = load_tokenizer(tiny_model_dir)
    aligned_recs, misaligned_recs = records(12, seed=1), records(12, seed=2)
    base_aligned, _, tokens_a = cache_answer_means(model, tok, aligned_recs, batch_size=8, progress=False)
    base_misaligned, _, tokens_m = cache_answer_means(model, tok, misaligned_recs, batch_size=8, progress=False)
    typical = base_aligned[:, LAYER].norm(dim=-1).median()
    u = torch.randn(base_aligned.shape[-1], generator=torch.Generator().manual_seed(123))
    u = u / u.norm()  # [d] unit direction to plant
    planted = 3.0 * typical * u  # [d] well above the spread of answer means, not absurdly so
    return dict(
        model=model,
        tok=tok,
        aligned_recs=aligned_recs,
        misaligned_recs=misaligned_recs,
        base_aligned=base_aligned,
        base_misaligned=base_misaligned,
        tokens=torch.cat([tokens_a, tokens_m]),
        u=u,
        planted=planted,
    )


def steered_means(s, recs, extra=None):
    """Answer means [n, L, d] with the planted vector added at LAYER (and an optional extra intervention)."""
    with steer(s["model"], {LAYER: s["planted"]}):
        if extra is None:
            return cache_answer_means(s["model"], s["tok"], recs, batch_size=8, progress=False)[0]
        spec, vectors = extra
        with apply_intervention(s["model"], spec, vectors):
            return cache_answer_means(s["model"], s["tok"], recs, batch_size=8, progress=False)[0]


def unsteered_means(s, recs, extra):
    spec, vectors = extra
    with apply_intervention(s["model"], spec, vectors):
        return cache_answer_means(s["model"], s["tok"], recs, batch_size=8, progress=False)[0]


@pytest.fixture(scope="module")
def recovered(setup):
    s = setup
    misaligned = steered_means(s, s["misaligned_recs"])
    answer_mean = torch.cat([s["base_aligned"], misaligned])  # [24, L, d]; rows 0-11 aligned, 12-23 misaligned
    n = len(answer_mean)
    # Judgments in a different order from the activation rows; joined by key.
    judg = (
        pd.DataFrame(
            {
                "condition": "ft",
                "question_id": [f"q{i}" for i in range(n)],
                "sample_idx": 0,
                "aligned": [90.0] * 12 + [10.0] * 12,
                "coherent": 90.0,
            }
        )
        .iloc[::-1]
        .reset_index(drop=True)
    )
    index = pd.DataFrame(
        {"row": np.arange(n), "condition": "ft", "question_id": [f"q{i}" for i in range(n)], "sample_idx": 0}
    )
    sets = select_sets(
        attach_activation_rows(judg, index, s["tokens"]), DirectionSettings(70.0, 30.0, 50.0, True, None)
    )
    md = mean_diff_vectors(answer_mean, sets.aligned["row"], sets.misaligned["row"], True, seed=0)
    return md, misaligned


def test_recovers_planted_direction(setup, recovered):
    md, _ = recovered
    cos = cosine_by_layer(md.mean_diff, setup["u"].expand_as(md.mean_diff))
    assert cos[LAYER] > 0.9, cos
    # Upstream of the planted layer nothing differs systematically: no alignment with u there.
    assert abs(float(cos[0])) < 0.5, cos
    # The recovered vector's size matches the planted one (up to the prompt-set noise).
    assert float(md.mean_diff[LAYER] @ setup["u"]) == pytest.approx(float(setup["planted"].norm()), rel=0.25)


def shift_norms(s, extra) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer: norm of the mean shift that steering causes on the misaligned prompts under `extra`
    ([L]), and the steered answer means under `extra` ([n, L, d])."""
    steered = steered_means(s, s["misaligned_recs"], extra)
    shift = (steered - unsteered_means(s, s["misaligned_recs"], extra)).mean(0)  # [L, d]
    return shift.norm(dim=-1), steered


def test_ablating_recovered_direction_removes_behaviour(setup, recovered):
    md, misaligned = recovered
    s = setup
    vectors = md.mean_diff  # [L, d] as written by mean_diff_directions
    before = (misaligned - s["base_misaligned"]).mean(0).norm(dim=-1)  # [L]
    assert before[0] < 1e-4 * before[LAYER]  # steering acts from LAYER on
    ablated, steered_ablated = shift_norms(
        s, ({"kind": "ablate", "vector": "ft", "mode": "single", "layer": LAYER}, vectors)
    )
    control, _ = shift_norms(
        s, ({"kind": "ablate", "vector": "ft", "mode": "random", "layer": LAYER, "seed": 0}, vectors)
    )
    for layer in range(LAYER, len(before)):
        assert ablated[layer] < 0.3 * before[layer], (layer, ablated, before)
        assert control[layer] > 0.7 * before[layer], (layer, control, before)
    # The projection on u of the steered, ablated misaligned responses is back near the aligned baseline's.
    u = s["u"]
    gap_before = float((misaligned[:, LAYER] @ u).mean() - (s["base_aligned"][:, LAYER] @ u).mean())
    gap_after = float((steered_ablated[:, LAYER] @ u).mean() - (s["base_aligned"][:, LAYER] @ u).mean())
    assert abs(gap_after) < 0.2 * abs(gap_before), (gap_before, gap_after)
