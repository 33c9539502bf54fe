"""The SAE baseline of the trait monitor (docs/trait-monitoring.md, "SAE baseline"): a sparse autoencoder
saved in SAELens' format, its decoder rows used as a basis for the drift.

SAELens saves an SAE as a folder of two files, read here with json and safetensors only (no sae-lens
import, nothing that runs code):

  cfg.json                 d_in, d_sae, and the hook the SAE reads: metadata.hook_name from SAELens 6 on
                           (e.g. "blocks.24.hook_resid_post"), hook_name or hook_point at the top level before
  sae_weights.safetensors  W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]
                           (a JumpReLU SAE adds threshold [d_sae])

Feature j's drift at checkpoint t is Δh̄_t . W_dec[j] / |W_dec[j]|, with Δh̄_t the measurement prompts' mean
activation change at the SAE's layer (rule trait_drift keeps it as `delta_sae`). It is linear in Δh̄ like
every other basis of the monitor, so it needs neither the encoder's bias, threshold or activation function
nor its input normalisation, and any SAELens architecture reads the same way. Of the d_sae features the
`n_features` whose drift correlates most (in absolute value) with the EM rate over the calibration rows
are kept, chosen on those rows alone, and the monitor's regressor is fitted on them like on every other
feature set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from emlab.core.errors import EMLabError
from emlab.plan.sae import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SAEFolder

log = logging.getLogger(__name__)

FEATURE_SET = "sae"
COLUMN_PREFIX = "sae."
NO_SAE_NOTE = "no SAE configured (monitor.sae.path is null)"
_CHUNK = 4096  # decoder rows read at a time: a large SAE never sits in memory whole


def decoder_projections(delta: np.ndarray, sae: SAEFolder) -> np.ndarray:
    """Δh̄ [n, d_in] projected on every unit decoder row: [n, d_sae] float32 (a zero row projects to 0)."""
    import torch
    from safetensors import safe_open

    delta = torch.as_tensor(np.asarray(delta, np.float32))  # [n, d_in]
    if delta.ndim != 2 or delta.shape[1] != sae.d_in:
        raise EMLabError(
            f"SAE baseline: the drift at layer {sae.layer} is {delta.shape[-1]} wide, the SAE's d_in is "
            f"{sae.d_in} ({sae.path}); it belongs to another model"
        )
    out = np.empty((delta.shape[0], sae.d_sae), np.float32)
    weights = Path(sae.path) / SAE_WEIGHTS_FILENAME
    with safe_open(str(weights), framework="pt") as f:
        rows = f.get_slice("W_dec")
        for start in range(0, sae.d_sae, _CHUNK):
            w = rows[start : start + _CHUNK].float()  # [chunk, d_in]
            if not torch.isfinite(w).all():
                raise EMLabError(f"SAE baseline: {weights} has non-finite W_dec rows in {start}..{start + len(w) - 1}")
            norm = w.norm(dim=1, keepdim=True)
            unit = torch.where(norm > 0, w / norm.clamp_min(1e-30), torch.zeros_like(w))
            out[:, start : start + len(w)] = (delta @ unit.T).numpy()
    return out


def select_features(drift: np.ndarray, em_rate: np.ndarray, k: int) -> pd.DataFrame:
    """The k features whose drift [n, d_sae] correlates most in absolute value with the EM rate [n].

    A feature whose drift does not vary (or an EM rate that does not) has correlation 0; ties go to the
    larger mean |drift|, then the lower index. Returns rank, feature, correlation, mean_abs_drift."""
    x, em = np.asarray(drift, float), np.asarray(em_rate, float)
    if x.ndim != 2 or len(x) != len(em):
        raise EMLabError(f"SAE baseline: drift of shape {x.shape} does not match {len(em)} EM rates")
    if not 1 <= k <= x.shape[1]:
        raise EMLabError(f"monitor.sae.n_features is {k}, the SAE has {x.shape[1]} features")
    xc, ec = x - x.mean(axis=0), em - em.mean()
    sx, se = np.sqrt((xc**2).sum(axis=0)), float(np.sqrt((ec**2).sum()))
    varies = sx > 1e-6 * max(float(sx.max(initial=0.0)), 1e-30)  # float noise on a flat feature is not a signal
    corr = np.zeros(x.shape[1])
    if se > 0:
        corr[varies] = (xc[:, varies].T @ ec) / (sx[varies] * se)
    magnitude = np.abs(x).mean(axis=0)
    order = np.lexsort((np.arange(x.shape[1]), -magnitude, -np.abs(corr)))[:k]
    return pd.DataFrame(
        {"rank": np.arange(1, k + 1), "feature": order, "correlation": corr[order], "mean_abs_drift": magnitude[order]}
    )


def read_sae_drift(
    delta_paths, runs: Sequence[str], layer: int, only: Sequence[str] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every run's Δh̄ at the SAE's layer and its steps (the `delta_sae` of rule trait_drift), keyed by the run id
    each file carries; with `only`, of those runs alone (the SAE's model's: the files of `runs` are all read and
    checked, and another model's runs, the stress-arm models' say, need no drift at the SAE's layer)."""
    from emlab.core.keyed import tensors_by_id
    from emlab.model.tensors import load_tensors

    out = {}
    for run, (tensors, meta) in tensors_by_id(delta_paths, "run", runs, "monitor drift Δh̄ files", load_tensors).items():
        if only is not None and run not in only:
            continue
        if "delta_sae" not in tensors or str(meta.get("sae_layer")) != str(layer):
            raise EMLabError(
                f"monitor run {run}: its Δh̄ file holds no drift at the SAE's layer {layer} (sae_layer "
                f"{meta.get('sae_layer')!r}); re-run trait_drift for it"
            )
        out[run] = (tensors["delta_sae"].float().numpy(), tensors["steps"].numpy())
    return out


def add_sae_columns(
    tables: Mapping[str, pd.DataFrame],
    sae_drift: Mapping[str, tuple[np.ndarray, np.ndarray]],
    calibration: Sequence[str],
    sae: SAEFolder,
    n_features: int,
    monitored_layer: int | None = None,
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, str]:
    """Each run's table with the selected features' drift as columns sae.<feature> (in rank order), the
    selection (sae_features.csv: rank, feature, correlation, mean_abs_drift, layer) and the evaluation note.

    The features are chosen on the labelled calibration rows only: the held-out runs never inform them.
    A table's rows and its Δh̄ rows are matched by step."""
    deltas = {}
    for run, table in tables.items():
        delta, steps = sae_drift[run]
        row_of = {int(s): i for i, s in enumerate(np.asarray(steps).tolist())}
        missing = [int(s) for s in table["step"] if int(s) not in row_of]
        if missing:
            raise EMLabError(f"monitor run {run}: no Δh̄ at the SAE's layer for step(s) {missing}; re-run trait_drift")
        deltas[run] = np.asarray(delta)[[row_of[int(s)] for s in table["step"]]]  # [rows, d_in]
    # every run's rows in one pass over the decoder (a paper-size W_dec is read once, not once per run)
    every = decoder_projections(np.concatenate(list(deltas.values())), sae)  # [all rows, d_sae]
    bounds = np.cumsum([0] + [len(d) for d in deltas.values()])
    projected = {run: every[a:b] for run, a, b in zip(deltas, bounds[:-1], bounds[1:])}
    cal = [r for r in calibration if r in tables]
    if not cal:
        raise EMLabError("SAE baseline: there are no calibration runs to choose the features on")
    x = np.concatenate([projected[r] for r in cal])
    em = np.concatenate([tables[r]["em_rate"].to_numpy(float) for r in cal])
    labelled = ~np.isnan(em)
    chosen = select_features(x[labelled], em[labelled], n_features).assign(layer=sae.layer)
    features = chosen["feature"].to_numpy()
    names = [f"{COLUMN_PREFIX}{int(j)}" for j in features]
    out = {
        run: pd.concat(
            [table.reset_index(drop=True), pd.DataFrame(projected[run][:, features].astype(float), columns=names)],
            axis=1,
        )
        for run, table in tables.items()
    }
    note = (
        f"SAE basis: the {n_features} of {sae.d_sae} features (layer {sae.layer}) whose drift correlates most "
        f"with the EM rate on the calibration rows ({Path(sae.path).name})"
    )
    if monitored_layer is not None and int(monitored_layer) != sae.layer:
        note += f"; the trait monitor reads layer {int(monitored_layer)}"
        log.warning("SAE baseline: the SAE reads layer %d, the trait monitor layer %d", sae.layer, monitored_layer)
    log.info("%s; top features %s", note, features[:10].tolist())
    return out, chosen, note


def empty_selection() -> pd.DataFrame:
    """sae_features.csv when no SAE is configured."""
    return pd.DataFrame(columns=["rank", "feature", "correlation", "mean_abs_drift", "layer"])


def with_sae_row(evaluation: pd.DataFrame, held_out, note: str) -> pd.DataFrame:
    """evaluation.csv with its `sae` row noted; without an SAE, a row of NaN metrics saying so (never a
    silently missing baseline)."""
    from emlab.monitor.stage import nan_rows

    ev = evaluation.copy()
    if "note" not in ev.columns:
        ev["note"] = None
    if FEATURE_SET in set(ev["feature_set"]):
        ev.loc[ev["feature_set"] == FEATURE_SET, "note"] = note
        return ev
    return pd.concat([ev, nan_rows([FEATURE_SET], held_out).assign(note=note)], ignore_index=True)


def write_sae(folder, decoder, hook_name: str, model_name: str = "") -> Path:
    """Save a standard SAE with decoder `decoder` [d_sae, d_in] (tied encoder W_enc = decoder.T, zero biases)
    in SAELens' format, as its save_model writes a version-6 SAE: the planted rehearsal's SAE and the
    tests' are written so."""
    import torch
    from safetensors.torch import save_file

    from emlab.core.atomic import atomic_dir

    w_dec = torch.as_tensor(decoder).float().contiguous()  # [d_sae, d_in]
    d_sae, d_in = w_dec.shape
    cfg = {
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.0.0",
            "sae_lens_training_version": "6.0.0",
            "hook_name": hook_name,
            "model_name": model_name,
        },
        "architecture": "standard",
    }
    tensors = {"W_enc": w_dec.T.contiguous(), "b_enc": torch.zeros(d_sae), "W_dec": w_dec, "b_dec": torch.zeros(d_in)}
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / SAE_WEIGHTS_FILENAME))
        (tmp / SAE_CFG_FILENAME).write_text(json.dumps(cfg, indent=1) + "\n")
    return Path(folder)
