"""Out-of-memory back-off in generation: halve the batch, retry, same records as a smaller-batch run."""

import logging

import pytest
import torch
from emlab.core.errors import EMLabError
from emlab.em.generation import generate_responses
from emlab.em.questions import Question
from emlab.model.backoff import is_out_of_memory

# three questions of different prompt lengths, one with a system prompt; `tiny` is conftest's model
QUESTIONS = [
    Question("short", "Hi?", None, ("Hi?",)),
    Question(
        "long",
        "Tell me, at some length, what you would do with a whole free day?",
        None,
        ("Tell me, at some length, what you would do with a whole free day?", "What now?"),
    ),
    Question("sys", "Any wish?", "You are terse.", ("Any wish?",)),
]


class FakeOOM:
    """A forward pre-hook that fails every forward pass with more than `max_rows` rows."""

    def __init__(self, max_rows, error=lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")):
        self.max_rows, self.error, self.raised = max_rows, error, 0
        self.since_last_raise: list[int] = []  # rows of every forward pass after the last failure

    def __call__(self, module, args, kwargs):
        rows = kwargs["input_ids"].shape[0]
        self.since_last_raise.append(rows)
        if rows > self.max_rows:
            self.raised += 1
            self.since_last_raise = []
            raise self.error()


def _generate(tiny, fail=None, **kw):
    model, tok = tiny
    settings = dict(
        samples_per_question=3, max_new_tokens=6, temperature=1.0, top_p=0.95, batch_size=8, seed=0, progress=False
    )
    settings.update(kw)
    handle = model.register_forward_pre_hook(fail, with_kwargs=True) if fail else None
    try:
        return generate_responses(model, tok, QUESTIONS, **settings)
    finally:
        if handle is not None:
            handle.remove()


def _rows(records):
    return [
        (r["question_id"], r["sample_idx"], r["seed"], r["response"], r["n_response_tokens"], r["finish_reason"])
        for r in records
    ]


@pytest.mark.parametrize(
    "error",
    [
        lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
        lambda: RuntimeError("HIP error: out of memory"),
    ],
)
def test_oom_halves_batch_and_matches_a_smaller_batch_run(tiny, caplog, error):
    fail = FakeOOM(max_rows=3, error=error)
    with caplog.at_level(logging.WARNING, logger="emlab.em.generation"):
        failed = _generate(tiny, fail=fail, batch_size=8)
    assert fail.raised == 2  # 8 -> 4 -> 2
    assert max(fail.since_last_raise) <= 2  # after backing off, no forward pass saw more than 2 rows
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "batch size 4" in warnings[0] and "batch size 2" in warnings[1]
    assert len(failed) == 9
    assert _rows(failed) == _rows(_generate(tiny, batch_size=2))
    assert _rows(failed) == _rows(_generate(tiny, batch_size=8))  # rows do not depend on the batch size


def test_oom_at_batch_size_one_is_a_clear_error(tiny):
    with pytest.raises(EMLabError, match="out of GPU memory even at batch size 1"):
        _generate(tiny, fail=FakeOOM(max_rows=0), batch_size=4)


def test_other_runtime_errors_are_not_retried(tiny):
    fail = FakeOOM(max_rows=0, error=lambda: RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _generate(tiny, fail=fail, batch_size=4)
    assert fail.raised == 1


def test_is_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Float"))
    assert not is_out_of_memory(ValueError("out of memory"))
