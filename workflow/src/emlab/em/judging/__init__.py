"""The LLM judge: rubrics, logprob aggregation, an SQLite cache and two backends
(a local transformers model, any OpenAI-compatible endpoint), tied together by
`judge_responses`.
"""

from emlab.em.judging.aggregation import aggregate_top_logprobs, is_integer_token, score_from_number_probs, thresholded
from emlab.em.judging.cache import JudgeCache, prompt_sha256
from emlab.em.judging.pipeline import JUDGMENT_COLUMNS_FIXED, JudgeResult, judge_responses
from emlab.em.judging.rubrics import Rubric, load_rubric, load_rubrics, render_judge_prompt

__all__ = [
    "JUDGMENT_COLUMNS_FIXED",
    "JudgeCache",
    "JudgeResult",
    "Rubric",
    "aggregate_top_logprobs",
    "is_integer_token",
    "judge_responses",
    "load_rubric",
    "load_rubrics",
    "prompt_sha256",
    "render_judge_prompt",
    "score_from_number_probs",
    "thresholded",
]
