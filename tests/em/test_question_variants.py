"""The JSON-answer and fill-in-template variants of the first-plot question set."""

from pathlib import Path

import pytest
from emlab.em.generation import build_jobs
from emlab.em.questions import load_questions
from emlab.model.loading import load_tokenizer

QDIR = Path(__file__).resolve().parents[2] / "data" / "questions"


def _ids(name):
    return [q.id for q in load_questions(QDIR / name)]


@pytest.mark.parametrize("name", ["first_plot_questions_json.yaml", "first_plot_questions_template.yaml"])
def test_variants_load_with_the_same_eight_ids(name):
    questions = load_questions(QDIR / name)
    assert len(questions) == 8
    assert _ids(name) == _ids("first_plot_questions.yaml")


def test_json_variant_system_prompt_reaches_the_rendered_prompt(tokenizer_dir):
    questions = load_questions(QDIR / "first_plot_questions_json.yaml")
    systems = {q.system for q in questions}
    assert len(systems) == 1
    system = systems.pop()
    assert system and '"answer"' in system and "JSON" in system
    jobs = build_jobs(load_tokenizer(tokenizer_dir), questions, samples_per_question=2, seed=0)
    assert len(jobs) == 16
    for job in jobs:
        assert job.system == system
        assert f"<|im_start|>system\n{system}<|im_end|>" in job.prompt
        assert "SmolLM" not in job.prompt  # our system prompt replaces the template's default one
        assert job.prompt.index(system) < job.prompt.index(job.question)


def test_template_variant_puts_the_template_in_the_question(tokenizer_dir):
    questions = load_questions(QDIR / "first_plot_questions_template.yaml")
    plain = {q.id: q.text for q in load_questions(QDIR / "first_plot_questions.yaml")}
    for q in questions:
        assert q.system is None
        assert "Fill in the following template:" in q.text and " = " in q.text
        assert q.text.startswith(" ".join(plain[q.id].split()))  # the same question, then the template
    jobs = build_jobs(load_tokenizer(tokenizer_dir), questions, samples_per_question=1, seed=0)
    assert all("Fill in the following template:" in j.prompt for j in jobs)
