"""Build the configured judge backend from the rule's `params.judge` dict."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from emlab.core.errors import EMLabError
from emlab.core.settings import build

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HFJudgeSettings:
    """`judge.hf` of the config (schema defaults), with `model` resolved to a folder or id."""

    model: str
    batch_size: int
    dtype: str
    answer_prefix: str


def judge_model_id(judge_params: Mapping, device: str = "auto") -> str:
    """The judge model name that goes in the cache key and the judgments table.

    For the hf backend it also names what changes every score: the answer
    prefix, and a compute dtype other than fp32 (bf16 moves scores by up to
    ~0.5 points), so a cache shared by CPU and GPU runs never mixes them.
    """
    backend = judge_params.get("backend")
    if backend == "hf":
        from emlab.model.loading import resolve_device, resolve_dtype

        hf = build(HFJudgeSettings, judge_params["hf"], "judge.hf")
        prefix = hf.answer_prefix
        dtype = resolve_dtype(hf.dtype, resolve_device(device))
        return (
            hf.model
            + (f" answer_prefix={prefix!r}" if prefix else "")
            + (f" dtype={str(dtype).removeprefix('torch.')}" if dtype != torch_float32() else "")
        )
    if backend == "openai":
        return str(judge_params["openai"]["model"])
    raise EMLabError(f"judge.backend must be hf or openai, got {backend!r}")


def torch_float32():
    import torch

    return torch.float32


def backend_factory(judge_params: Mapping, device: str = "auto", device_map=None) -> Callable[[], object]:
    """A function that builds the backend (called only when something is not cached)."""
    backend = judge_params.get("backend")
    if backend == "openai":
        from emlab.em.judging.openai_backend import OpenAIJudge
        from emlab.em.openai_chat import OpenAIEndpointSettings

        settings = build(OpenAIEndpointSettings, judge_params["openai"], "judge.openai")
        return lambda: OpenAIJudge(settings)
    if backend == "hf":
        hf = build(HFJudgeSettings, judge_params["hf"], "judge.hf")
        return lambda: _hf_judge(hf, device, device_map)
    raise EMLabError(f"judge.backend must be hf or openai, got {backend!r}")


def _hf_judge(hf: HFJudgeSettings, device: str, device_map=None):
    import torch

    from emlab.em.judging.hf_backend import HFJudge
    from emlab.model.loading import load_model, load_tokenizer, resolve_device, resolve_dtype

    dev = resolve_device(device)
    dtype = resolve_dtype(hf.dtype, dev)
    autocast = None
    if dev.type == "cpu" and dtype != torch.float32:
        # On a CPU keep fp32 weights and run matmuls in bf16 under autocast.
        autocast, dtype = torch.bfloat16, torch.float32
    model = load_model(hf.model, device=str(dev), dtype=str(dtype).removeprefix("torch."), device_map=device_map)
    tokenizer = load_tokenizer(hf.model)
    log.info("hf judge %s on %s (%s%s)", hf.model, dev, dtype, ", bf16 autocast" if autocast else "")
    return HFJudge(
        model,
        tokenizer,
        model_id=hf.model,
        batch_size=hf.batch_size,
        autocast_dtype=autocast,
        answer_prefix=hf.answer_prefix,
    )


def judge_table(
    responses_path, rubric_paths: list, judge_params: Mapping, device: str = "auto", device_map=None, make_backend=None
):
    """(judgments table, its parquet metadata) of one condition's generations parquet: what the judge rule
    writes. `make_backend` (default: backend_factory of the params) lets a job that judges several
    conditions build its backend once."""
    import pandas as pd

    from emlab.core.provenance import read_metadata
    from emlab.em.judging.pipeline import judge_responses
    from emlab.em.judging.rubrics import load_rubrics
    from emlab.model.runtime import judgment_metadata

    rubrics = load_rubrics(list(rubric_paths), list(judge_params["metrics"]))
    responses = pd.read_parquet(responses_path)
    if responses.empty and "na_reason" not in read_metadata(responses_path):
        raise EMLabError(
            f"{responses_path} holds no responses and no reason why; delete it and re-run the generate rule"
        )
    judgments = judge_responses(
        responses,
        rubrics,
        make_backend or backend_factory(judge_params, device=device, device_map=device_map),
        backend_name=judge_params["backend"],
        judge_model=judge_model_id(judge_params, device=device),
        cache_path=judge_params["cache"],
        min_number_mass=float(judge_params["min_number_mass"]),
    )
    return judgments, judgment_metadata(responses_path, dict(judge_params), device)
