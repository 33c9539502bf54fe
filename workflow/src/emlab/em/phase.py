"""Phase transitions of LoRA fine-tunes (docs/model-organisms.md, Turner et al.).

Over training a rank-1 adapter's B vector rotates abruptly at one point, and
the EM rate rises at the same point. From the checkpoints a checkpointed
fine-tune leaves (finetune.save_checkpoint), this module tabulates, for every
checkpoint step and adapter: the Frobenius norms of A and B, the cosine of A
and of B (flattened) to the final adapter's, and the local cosine to the
previous checkpoint's; and it names the step of sharpest rotation.

The live checkpoints/ folder is never a Snakemake output (a failed job's
outputs are deleted, which would destroy resume): the rotation rule reads the
steps the fine-tune's summary.json lists, and the behavioural side exports the
chosen steps' adapters to their own folders.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from emlab.core.atomic import atomic_dir, write_csv, write_json
from emlab.core.errors import EMLabError
from emlab.plan.models import MODEL_ID

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ROTATION_COLUMNS = [
    "step",
    "adapter",
    "layer",
    "module",
    "a_norm",
    "b_norm",
    "cos_a_final",
    "cos_b_final",
    "local_cos_a",
    "local_cos_b",
    "previous_step",
    "source",
]
SHARPEST_DEFINITION = (
    "For each adapter, local_cos_b at checkpoint step s is the cosine between the flattened B matrix at s and "
    "at the previous checkpoint step (the first checkpoint has none). The step of sharpest rotation is the s "
    "with the minimum local_cos_b: B turned most between previous_step and s. The same for A (local_cos_a). "
    "mean_over_adapters uses, per step, the mean of local_cos_b over adapters."
)


# --- reading checkpoints --------------------------------------------------------------


def _read_summary(summary_json) -> dict:
    import json

    try:
        return json.loads(Path(summary_json).read_text())
    except (OSError, ValueError) as exc:
        raise EMLabError(f"cannot read fine-tune summary {summary_json}: {exc}") from None


def checkpoint_path(checkpoint_dir, summary: dict, step: int) -> Path:
    """The checkpoint folder of `step`, checked to belong to the run that wrote `summary`."""
    from emlab.em.finetune import TRAINING_STATE, load_training_state

    steps = summary.get("checkpoint_steps") or []
    if int(step) not in steps:
        raise EMLabError(
            f"step {step} is not a checkpoint of this fine-tune (its checkpoints: {steps or 'none'}); "
            "fix phase.eval_steps or training.checkpoint_every"
        )
    path = Path(checkpoint_dir) / f"step-{int(step)}"
    # an adapter's weights, or a full fine-tune's (one file or shards)
    weights = [path / "adapter_model.safetensors", path / "model.safetensors", *path.glob("model-*.safetensors")]
    if not any(w.is_file() for w in weights) or not (path / TRAINING_STATE).is_file():
        raise EMLabError(f"checkpoint {path} is missing or incomplete; re-run the fine-tune (delete its summary.json)")
    state = load_training_state(path / TRAINING_STATE)
    if state.get("fingerprint") != summary.get("fingerprint"):
        raise EMLabError(
            f"checkpoint {path} was written by a run with other settings than the final adapter; "
            "delete the checkpoints folder and re-run the fine-tune"
        )
    return path


def export_checkpoint(checkpoint_dir, summary_json, step: int, out_dir, finetune: str) -> Path:
    """Copy one checkpoint's loadable adapter (not its optimiser state) to out_dir, atomically; a full
    fine-tune's checkpoint is a whole model folder, copied without its training state. The folder also
    names its fine-tune and step (emlab.core.keyed.CHECKPOINT_ID_FILE), so a reader can check what it got."""
    from emlab.core.keyed import write_checkpoint_id
    from emlab.em.finetune import TRAINING_STATE
    from emlab.model.loading import is_full_model_dir

    src = checkpoint_path(checkpoint_dir, _read_summary(summary_json), step)
    names = ADAPTER_FILES
    if is_full_model_dir(src):
        names = sorted(p.name for p in src.iterdir() if p.is_file() and p.name != TRAINING_STATE)
    with atomic_dir(out_dir) as tmp:
        for name in names:
            shutil.copy2(src / name, tmp / name)
        write_checkpoint_id(tmp, finetune, step)
    log.info("exported %s -> %s", src, out_dir)
    return Path(out_dir)


# --- the analysis ----------------------------------------------------------------------


def cosine(x, y) -> float:
    """Cosine of two tensors flattened; NaN when either is zero (B at initialisation)."""
    a, b = x.flatten().double(), y.flatten().double()
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return float("nan")
    return float(a @ b) / (na * nb)


def rotation_table(checkpoints: dict[int, dict], final: dict, final_step: int):
    """One row per (checkpoint step, adapter), see ROTATION_COLUMNS; `final` is appended as the last
    step when no checkpoint holds it. checkpoints: step -> finetune.saved_adapter_weights()."""
    import pandas as pd

    series = dict(sorted((int(k), v) for k, v in checkpoints.items()))
    sources = {step: "checkpoint" for step in series}
    if final_step not in series:
        series[int(final_step)] = final
        sources[int(final_step)] = "final"
    rows, previous = [], None
    for step, mats in series.items():
        if set(mats) != set(final):
            raise EMLabError(f"checkpoint step {step} has adapters {sorted(mats)}, the final adapter {sorted(final)}")
        for key, ab in mats.items():
            layer, module = key.split(".", 1)
            prev = series[previous][key] if previous is not None else None
            rows.append(
                {
                    "step": step,
                    "adapter": key,
                    "layer": int(layer[1:]),
                    "module": module,
                    "a_norm": float(ab["A"].norm()),
                    "b_norm": float(ab["B"].norm()),
                    "cos_a_final": cosine(ab["A"], final[key]["A"]),
                    "cos_b_final": cosine(ab["B"], final[key]["B"]),
                    "local_cos_a": cosine(ab["A"], prev["A"]) if prev else float("nan"),
                    "local_cos_b": cosine(ab["B"], prev["B"]) if prev else float("nan"),
                    "previous_step": previous if previous is not None else -1,
                    "source": sources[step],
                }
            )
        previous = step
    return pd.DataFrame(rows, columns=ROTATION_COLUMNS)


def _sharpest(df, column: str) -> dict:
    valid = df.dropna(subset=[column])
    if valid.empty:
        return {"step": None, "previous_step": None, column: None}
    row = valid.loc[valid[column].idxmin()]
    return {"step": int(row["step"]), "previous_step": int(row["previous_step"]), column: float(row[column])}


def sharpest_rotation(df) -> dict:
    """Per adapter and averaged over adapters: the step of minimum local cosine of B (and of A)."""
    per_adapter = {}
    for key, g in df.groupby("adapter", sort=False):
        per_adapter[key] = {"b": _sharpest(g, "local_cos_b"), "a": _sharpest(g, "local_cos_a")}
    mean = df.groupby("step", as_index=False).agg(
        local_cos_b=("local_cos_b", "mean"),
        local_cos_a=("local_cos_a", "mean"),
        previous_step=("previous_step", "first"),
    )
    return {
        "definition": SHARPEST_DEFINITION,
        "adapters": per_adapter,
        "mean_over_adapters": {"b": _sharpest(mean, "local_cos_b"), "a": _sharpest(mean, "local_cos_a")},
    }


def phase_analysis(
    finetune: str, checkpoint_dir, adapter_dir, summary_json, out_csv, out_json, base_model: str | None = None
) -> dict:
    """Read every checkpoint the fine-tune's summary lists, write the rotation table and its summary (which
    names `base_model`, when given, under emlab.plan.models.MODEL_ID)."""
    from emlab.em.finetune import saved_adapter_weights

    summary = _read_summary(summary_json)
    steps = summary.get("checkpoint_steps") or []
    if not steps:
        raise EMLabError(
            f"{summary_json}: fine-tune '{finetune}' wrote no checkpoints; set its "
            "training.checkpoint_every > 0 (and at most its number of steps)"
        )
    checkpoints = {s: saved_adapter_weights(checkpoint_path(checkpoint_dir, summary, s)) for s in steps}
    final = saved_adapter_weights(adapter_dir)
    df = rotation_table(checkpoints, final, int(summary["steps"]))
    result = {
        "finetune": finetune,
        "final_step": int(summary["steps"]),
        "checkpoint_steps": [int(s) for s in steps],
        "checkpoint_every": summary.get("checkpoint_every"),
        "n_adapters": int(df["adapter"].nunique()),
        **sharpest_rotation(df),
    }
    if base_model is not None:
        result[MODEL_ID] = base_model
    write_csv(out_csv, df)
    write_json(out_json, result)
    mean_b = result["mean_over_adapters"]["b"]
    log.info(
        "%s: %d checkpoints x %d adapters; sharpest mean rotation of B between steps %s and %s (local cos %s)",
        finetune,
        len(steps),
        result["n_adapters"],
        mean_b["previous_step"],
        mean_b["step"],
        None if mean_b["local_cos_b"] is None else f"{mean_b['local_cos_b']:.3f}",
    )
    return result


def em_by_step(em_table, steps: dict[str, int | str], final_step: int, base_model: str | None = None):
    """EM rate (with CI) against training step, from the em_by_condition table: columns step, condition,
    em_rate, em_ci_low, em_ci_high, n_scored (and emlab.plan.models.MODEL_ID with `base_model`). Conditions
    absent from the table are skipped."""
    import pandas as pd

    rows = []
    for cid, step in steps.items():
        hit = em_table[em_table["condition"] == cid]
        if hit.empty:
            continue
        r = hit.iloc[0]
        rows.append(
            {
                "step": int(final_step) if step == "final" else int(step),
                "condition": cid,
                "em_rate": float(r["em_rate"]),
                "em_ci_low": float(r["em_ci_low"]),
                "em_ci_high": float(r["em_ci_high"]),
                "n_scored": int(r["n_scored"]),
            }
        )
    df = pd.DataFrame(rows, columns=["step", "condition", "em_rate", "em_ci_low", "em_ci_high", "n_scored"])
    if base_model is not None:
        df[MODEL_ID] = base_model
    return df.sort_values("step", kind="stable").reset_index(drop=True)
