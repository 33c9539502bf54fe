"""All responses of one condition: the model loaded (merged, or with its adapters for the kinds that edit
them), the condition's intervention applied (emlab.interventions), sampled by emlab.em.generation (or
by the scalar-patching sampler of emlab.lora.patching), and the generations table with its run metadata."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from emlab.core.errors import EMLabError
from emlab.em.directions import DirectionUnavailable, load_mean_diff
from emlab.em.generation import (
    GenerationSettings,
    generate_responses,
    generate_responses_vllm,
    generation_backend,
    merged_model_folder,
)
from emlab.em.questions import load_questions
from emlab.interventions import adapter_edit, apply_intervention
from emlab.lora.patching import patched_responses
from emlab.model.loading import load_model, load_tokenizer, resolve_device, resolve_dtype
from emlab.model.runtime import pinned_threads, run_metadata
from emlab.plan.conditions import AdapterSteering, ScalarPatching, as_condition
from emlab.plan.roles import RolesMissing, read_roles

log = logging.getLogger(__name__)

GENERATION_COLUMNS = [
    "condition",
    "model",
    "intervention",
    "question_id",
    "sample_idx",
    "question",
    "system",
    "prompt",
    "response",
    "n_response_tokens",
    "finish_reason",
    "temperature",
    "top_p",
    "max_new_tokens",
    "seed",
]


def _na_table(condition: str, reason: str, seed: int, device: str, dtype: str, backend: str):
    """(an empty generations table, its metadata with the reason): a condition recorded as n/a, which judging
    and the metrics carry through."""
    dev = resolve_device(device)
    dtype_name = str(resolve_dtype(dtype, dev)).replace("torch.", "")
    metadata = run_metadata(seed, str(dev), dtype_name, backend=backend, na_reason=reason, na_condition=condition)
    return pd.DataFrame({c: pd.Series(dtype=object) for c in GENERATION_COLUMNS}), metadata


def generate_condition(
    condition: str,
    spec: dict,
    questions_path,
    base_model,
    adapter,
    vectors_path,
    settings: GenerationSettings,
    seed: int,
    device: str,
    dtype: str,
    scratch_dir,
    device_map=None,
    medical_questions_path=None,
    roles_path=None,
):
    """All responses of one condition (model + intervention): the documented generations
    table and its run metadata (emlab.provenance: seed, device, dtype, threads, versions),
    meant for the parquet's schema metadata.

    Bad question files and a missing vllm package fail before any model is loaded.
    settings.threads pins torch's intra-op threads while the model is loaded and sampled.
    `device_map` (config device_map) spreads the model over several GPUs (models.load_model).
    A scalar-patching condition also answers the medical questions (`medical_questions_path`).
    An adapter-steering case given by role (roles from the probes) takes its adapters from the fine-tune's
    roles.json (`roles_path`); the table's `intervention` column then names them. A role of the case that
    no adapter has makes the condition n/a: an empty table whose metadata say why.
    """
    questions = load_questions(questions_path)
    condition_obj = as_condition(spec)
    if isinstance(condition_obj, AdapterSteering) and not condition_obj.resolved:
        if roles_path is None:
            raise EMLabError(
                f"condition {condition}: its adapters' roles come from the probes (lora_interp.roles.source rule), "
                "but the job was given no roles.json"
            )
        try:
            condition_obj = condition_obj.with_roles(read_roles(roles_path))
        except RolesMissing as exc:
            reason = (
                f"no adapter of {condition_obj.model} has role(s) {exc.roles} in {roles_path} (the roles its "
                f"probes gave); case {condition_obj.case} needs {dict(condition_obj.role_factors)}"
            )
            log.warning("condition %s: %s; recorded as n/a", condition, reason)
            return _na_table(condition, reason, seed, device, dtype, "hf")
        spec = condition_obj.to_params()
        log.info("condition %s: adapter factors %s from %s", condition, dict(condition_obj.factors), roles_path)
    patching = isinstance(condition_obj, ScalarPatching)
    if patching and condition_obj.needs_medical_questions and medical_questions_path is None:
        raise EMLabError(
            f"condition {condition}: scalar patching pair {condition_obj.pair} needs the medical questions"
        )
    medical = load_questions(medical_questions_path) if patching and medical_questions_path else []
    backend = generation_backend(settings.backend, spec, condition)
    tokenizer = load_tokenizer(base_model)
    sampling = dict(
        samples_per_question=settings.samples_per_question,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=seed,
    )
    with pinned_threads(settings.threads):
        if backend == "vllm":  # no intervention: a plain (merged) model folder
            Path(scratch_dir).mkdir(parents=True, exist_ok=True)
            merged = merged_model_folder(base_model, adapter, dtype, parent=Path(scratch_dir)) if adapter else None
            try:
                records = generate_responses_vllm(
                    merged.name if merged else base_model,
                    tokenizer,
                    questions,
                    dtype=dtype,
                    condition=condition,
                    **sampling,
                )
            finally:
                if merged is not None:
                    merged.cleanup()
            metadata = run_metadata(seed, "cuda", dtype, backend=backend)  # vLLM runs on the GPU
        else:
            try:
                vectors = load_mean_diff(vectors_path) if vectors_path else None  # [L, d_model]
            except DirectionUnavailable as exc:
                # e.g. a semantic split with no misaligned response: nothing to steer or ablate with. The
                # condition records n/a and why (an empty table); judging and the metrics carry it through.
                log.warning("condition %s: %s; recorded as n/a", condition, exc)
                return _na_table(condition, exc.note, seed, device, dtype, backend)
            # Merged: sampling needs the adapted weights, not the adapter modules (faster for all-adapter fine-tunes),
            # unless the intervention edits the adapters themselves (adapter steering).
            merge = not condition_obj.NEEDS_ADAPTERS
            model = load_model(
                base_model,
                adapter,
                device=device,
                dtype=dtype,
                merge=merge,
                before_merge=adapter_edit(spec["intervention"], vectors),
                device_map=device_map,
            )
            if patching:
                records = patched_responses(
                    model, tokenizer, condition_obj, questions, medical, batch_size=settings.batch_size, **sampling
                )
            else:
                with apply_intervention(model, spec["intervention"], vectors):
                    records = generate_responses(
                        model, tokenizer, questions, batch_size=settings.batch_size, **sampling
                    )
            dev = resolve_device(device)
            metadata = run_metadata(
                seed, str(dev), str(resolve_dtype(dtype, dev)).replace("torch.", ""), backend=backend
            )
    df = pd.DataFrame.from_records(records)
    df.insert(0, "condition", condition)
    df.insert(1, "model", spec["model"])
    df.insert(2, "intervention", json.dumps(spec["intervention"], sort_keys=True))
    table = df[GENERATION_COLUMNS].astype(
        {
            "sample_idx": "int64",
            "n_response_tokens": "int64",
            "max_new_tokens": "int64",
            "seed": "int64",
            "temperature": "float64",
            "top_p": "float64",
            "system": "string",
        }
    )
    return table, metadata
