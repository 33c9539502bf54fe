"""Trait prompt loader, trait directions (planted-vector known answer), layer choice, random bases."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from emlab.core.errors import EMLabError
from emlab.model.batching import shared_prefix_length
from emlab.monitor import traits
from emlab.plan import traits as trait_files

TRAITS_DIR = REPO / "data" / "traits"
MARKER = " zebra"  # a word only the planted trait's positive prompts contain


# --- loader --------------------------------------------------------------------


def test_shipped_trait_files_load():
    ts = trait_files.load_trait_set(TRAITS_DIR)
    assert ts.alignment.names == [
        "honesty",
        "sycophancy",
        "harmlessness",
        "power_seeking",
        "helpfulness",
        "confidence",
        "corrigibility",
    ]
    assert ts.semantic.names == [
        "verbosity",
        "formality",
        "technicality",
        "humour",
        "concreteness",
        "warmth",
        "creativity",
    ]
    for f in (ts.alignment, ts.semantic):
        assert all(len(t.positive) == 5 and len(t.negative) == 5 for t in f.traits)
    assert len(ts.questions) == 30
    counts = {c: sum(p.category == c for p in ts.measurement) for c in trait_files.MEASUREMENT_CATEGORIES}
    assert counts == {"technical": 25, "ethical": 25, "emotional": 25, "casual": 25, "adversarial": 15}
    assert ts.version == "alignment=1;extraction=1;measurement=1;semantic=1"


def _copy(tmp_path: Path) -> Path:
    out = tmp_path / "traits"
    shutil.copytree(TRAITS_DIR, out)
    return out


def _edit(path: Path, fn) -> None:
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize(
    "file,edit,match",
    [
        (
            "alignment.yaml",
            lambda d: d["traits"]["honesty"].update(negative=["only one"]),
            r"alignment.yaml: trait `honesty` has 1 negative prompt\(s\); a direction needs at least 2",
        ),
        (
            "semantic.yaml",
            lambda d: d["traits"]["warmth"]["positive"].__setitem__(2, "  "),
            r"semantic.yaml: trait `warmth` positive prompt 2 must be a non-empty string",
        ),
        (
            "alignment.yaml",
            lambda d: d["traits"]["confidence"].update(neutral=["x", "y"]),
            r"alignment.yaml: trait `confidence` must have exactly the keys positive and negative",
        ),
        ("alignment.yaml", lambda d: d.pop("version"), r"alignment.yaml: missing `version`"),
        ("alignment.yaml", lambda d: d.update(notes="hi"), r"alignment.yaml: unknown key\(s\) \['notes'\]"),
        (
            "measurement_prompts.yaml",
            lambda d: d["prompts"][5].update(id="technical_01"),
            r"measurement_prompts.yaml: duplicate id `technical_01` \(prompts 0 and 5\)",
        ),
        (
            "measurement_prompts.yaml",
            lambda d: d["prompts"][3].update(text=""),
            r"measurement_prompts.yaml: prompt `technical_04` `text` must be a non-empty string",
        ),
        (
            "measurement_prompts.yaml",
            lambda d: d["prompts"][0].update(category="poetry"),
            r"prompt `technical_01` has category `poetry`",
        ),
        (
            "measurement_prompts.yaml",
            lambda d: d["prompts"][0].update(weight=2),
            r"measurement_prompts.yaml: prompt 0 must have exactly the keys id, category, text",
        ),
        (
            "extraction_questions.yaml",
            lambda d: d["questions"].append(d["questions"][0]),
            r"extraction_questions.yaml: duplicate question",
        ),
        ("extraction_questions.yaml", lambda d: d.update(version="one"), r"`version` must be a positive integer"),
    ],
)
def test_loader_errors_name_file_trait_and_entry(tmp_path, file, edit, match):
    folder = _copy(tmp_path)
    _edit(folder / file, edit)
    with pytest.raises(EMLabError, match=match):
        trait_files.load_trait_set(folder)


def test_missing_file_is_named(tmp_path):
    folder = _copy(tmp_path)
    (folder / "semantic.yaml").unlink()
    with pytest.raises(EMLabError, match=r"trait file .*semantic.yaml does not exist"):
        trait_files.load_trait_set(folder)


# --- chat formatting -------------------------------------------------------------


NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DROPPING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.padding_side = "left"
    return tok


def test_system_role_detection(tokenizer):
    import copy

    assert traits.supports_system_role(tokenizer)
    for template in (NO_SYSTEM_TEMPLATE, DROPPING_TEMPLATE):
        tok = copy.deepcopy(tokenizer)
        tok.chat_template = template
        assert not traits.supports_system_role(tok)
    msgs = traits.trait_messages("Be honest.", "Why?", system_role=False)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[0]["content"] == "Be honest." and msgs[1]["content"] == traits.ACKNOWLEDGEMENT


# --- planted direction -----------------------------------------------------------------


@contextlib.contextmanager
def plant(model, marker_id: int, vector: torch.Tensor, layer: int):
    """Add `vector` to the residual stream after block `layer` (every position) in rows containing marker_id."""
    from emlab.model.loading import decoder_layers

    rows = {}

    def pre(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        rows["mask"] = (ids == marker_id).any(dim=1)  # [batch]

    def post(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + rows["mask"][:, None, None].to(hidden.dtype) * vector.to(hidden.dtype)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    h1 = model.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = decoder_layers(model)[layer].register_forward_hook(post)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()


def _toy_traits(n_questions: int = 6) -> trait_files.TraitSet:
    pos = [f"You are kind{MARKER} and honest.", f"Always tell{MARKER} the truth.", f"Honesty{MARKER} first."]
    neg = ["You are sly and dishonest.", "Always tell lies.", "Deception first."]
    other_pos = ["Be very brief.", "Use few words.", "Short answers only."]
    other_neg = ["Be very wordy.", "Use many words.", "Long answers only."]
    tf = trait_files.TraitFile(
        "toy.yaml",
        1,
        (
            trait_files.Trait("honesty", tuple(pos), tuple(neg)),
            trait_files.Trait("brevity", tuple(other_pos), tuple(other_neg)),
        ),
    )
    questions = tuple(f"Question number {i}: what is {i} plus {i}?" for i in range(n_questions))
    return trait_files.TraitSet(
        tf, tf, questions, (), {"alignment": 1, "semantic": 1, "extraction": 1, "measurement": 1}
    )


@pytest.mark.parametrize("template", [None, NO_SYSTEM_TEMPLATE])
def test_planted_direction_is_recovered(tiny_model_dir, tokenizer, template):
    import copy

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = copy.deepcopy(tokenizer)
    if template is not None:
        tok.chat_template = template
    marker_ids = tok(MARKER, add_special_tokens=False)["input_ids"]
    assert len(marker_ids) == 1
    ts = _toy_traits()
    gen = torch.Generator().manual_seed(3)
    planted = torch.randn(64, generator=gen)
    planted = 3.0 * planted / planted.norm()
    with plant(model, marker_ids[0], planted, layer=1):
        dirs = traits.extract_directions(model, tok, ts, traits.DirectionSettings("auto", 4, 3), model_id="tiny")
    assert dirs.alignment.shape == (4, 2, 64) and dirs.semantic.shape == (4, 2, 64)
    unit = planted / planted.norm()
    for layer in (1, 2, 3):
        assert float(dirs.alignment[layer, 0] @ unit) > 0.9, layer
    assert float(dirs.alignment[1, 1] @ unit) < 0.5  # the other trait does not pick it up
    # prompt-basis stability: each half of the prompts (0, 2 | 1) carries the marker, so both find it too
    assert dirs.alignment_halves.shape == (2, 4, 2, 64)
    for layer in (1, 2, 3):
        a, b = dirs.alignment_halves[:, layer, 0]
        assert float(a @ unit) > 0.9 and float(b @ unit) > 0.9 and float(a @ b) > 0.9, layer
    assert dirs.layer >= 1  # before the planted block the marker is invisible at the last token
    assert dirs.scores.auroc.shape == (4,)
    assert dirs.scores.auroc[dirs.layer] > 0.9  # mean over traits: honesty 1.0, the unplanted one lower
    norms = dirs.alignment.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_last_token_matches_hidden_states(tiny_model_dir, tokenizer):
    """The hook read equals hidden_states[l + 1] at the last token of an unpadded single forward."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    convs = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "A much longer question about the sea?"}],
    ]
    got = traits.last_token_residuals(model, tokenizer, convs, [0, 2, 3], batch_size=2)  # [2, 3, 64]
    for i, conv in enumerate(convs):
        ids = torch.tensor([traits.encode_prompts(tokenizer, [conv])[0]])
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        for k, layer in enumerate([0, 2, 3]):
            ref = hs[layer + 1][0, -1]
            if layer == 3:  # HF applies the final norm to the last entry
                continue
            assert torch.allclose(got[i, k], ref, atol=1e-4), (i, layer)


def test_last_token_read_stops_after_the_deepest_layer(tiny_model_dir, tokenizer):
    """Reading layer 1 runs blocks 0-1 only (after one full pass over the shared chat-template prefix),
    and still equals the full, unpadded forward's hidden_states[2] at each prompt's last token."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    convs = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Tell me about rivers."}]]
    ran = []
    blocks = model.model.layers
    handles = [b.register_forward_hook(lambda _m, _i, _o, k=k: ran.append(k)) for k, b in enumerate(blocks)]
    try:
        got = traits.last_token_residuals(model, tokenizer, convs, [1], batch_size=1)  # [2, 1, 64]
    finally:
        for h in handles:
            h.remove()
    assert shared_prefix_length(traits.encode_prompts(tokenizer, convs)) > 0
    assert ran == [0, 1, 2, 3, 0, 1, 0, 1]  # the prefix pass, then two batches stopping after block 1
    for i, conv in enumerate(convs):
        ids = torch.tensor([traits.encode_prompts(tokenizer, [conv])[0]])
        with torch.no_grad():
            ref = model(input_ids=ids, output_hidden_states=True).hidden_states[2][0, -1]
        assert torch.allclose(got[i, 0], ref, atol=1e-4), i


def test_directions_round_trip(tmp_path):
    d = traits.TraitDirections(
        torch.randn(3, 2, 8),
        torch.randn(3, 2, 8),
        ("a", "b"),
        ("c", "d"),
        1,
        traits.LayerScores(torch.rand(3).numpy(), torch.rand(3).numpy()),
        "v",
        "m",
    )
    traits.save_directions(d, tmp_path / "d.safetensors", tmp_path / "d.json")
    back = traits.load_directions(tmp_path / "d.safetensors", tmp_path / "d.json")
    assert torch.equal(back.alignment, d.alignment) and back.layer == 1 and back.semantic_names == ("c", "d")
    assert back.metadata() == d.metadata()


# --- layer choice, cosines, random bases ---------------------------------------------------


def test_choose_layer():
    s = traits.LayerScores(torch.tensor([0.5, 1.0, 1.0, 0.9]).numpy(), torch.tensor([0.1, 2.0, 3.0, 5.0]).numpy())
    assert trait_files.choose_layer("auto", 4, s) == 2  # AUROC tie broken by separation
    assert trait_files.choose_layer(3, 4) == 3
    assert trait_files.choose_layer(0.5, 32) == 16
    for bad, match in [
        (4, "out of range"),
        (1.0, "strictly between 0 and 1"),
        ("middle", "integer index"),
        (True, "integer index"),
    ]:
        with pytest.raises(EMLabError, match=match):
            trait_files.choose_layer(bad, 4)


def test_random_bases_and_cosines():
    b = traits.random_bases(32, [0, 1])
    assert b[0].shape == (7, 32)
    assert torch.allclose(b[0] @ b[0].T, torch.eye(7), atol=1e-5)
    assert torch.equal(traits.random_basis(32, 0), b[0])
    assert not torch.allclose(b[0], b[1])
    cos = traits.cosine_matrix(torch.randn(7, 32) * 5)
    assert cos.shape == (7, 7) and torch.allclose(cos.diagonal(), torch.ones(7), atol=1e-5)
    assert traits.auroc([2, 3], [1, 0]) == 1.0 and traits.auroc([1], [1]) == 0.5
