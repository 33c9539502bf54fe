"""The live trait monitor (docs/trait-monitoring.md, "Live monitor"): the saved monitor run
inside training.

Every `every` optimiser steps the fine-tune measures its own mean last-token
activation over the measurement prompts at the monitored layer, turns it into
the 7-D alignment drift against the step-0 (base model) measurement, and asks
the saved monitor for a predicted EM rate. The alarm is prediction > tau (the
monitor's own). `warn` only records; `stop` asks the training loop to end at
the first alarm, keeping that step's adapter.

Hook (finetune.train_steps calls its `on_step` callbacks as
`callback(step, loss, model)` after each optimiser step, its log row and any
checkpoint): pass a LiveMonitor in `on_step`; after the callbacks, the loop
adds `monitor.log_columns(step)` to that step's log row and breaks when
`monitor.stop_requested` is set; write_outputs adds `monitor.summary_fields()`
(`stopped_by_monitor: {step, prediction}`, or null) to summary.json. A stopped
run is a finished fine-tune: its adapter, train_log.csv and summary.json are
written as usual, and summary["steps"] says where it stopped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from emlab.core.errors import EMLabError

log = logging.getLogger(__name__)

ACTIONS = ("warn", "stop")


@dataclass(frozen=True)
class LiveMonitorSettings:
    """`training.monitor` of the config, less the monitor path: measure every N steps; warn or stop."""

    every: int
    action: str  # warn | stop


@dataclass(frozen=True)
class Decision:
    """What the live monitor said at one measured step."""

    step: int
    drift: tuple[float, ...]  # 7-D alignment drift, in the monitor's feature order
    prediction: float  # predicted EM rate
    alarm: bool  # prediction > tau
    stop: bool  # alarm and action == "stop"


class LiveMonitor:
    """A training-step callback `(step, loss, model) -> Decision | None` (None on unmeasured steps).

    monitor: a monitor.TraitMonitor (load_monitor checks that its models include this base model, and the
      trait version).
    basis: the alignment directions at the monitor's layer [7, d], rows in `monitor.features` order.
    base_mean, base_norm: the step-0 measurement (drift.MeanActivation .mean and .mean_norm).
    measure: model -> mean last-token activation [d] over the measurement prompts at the layer
      (see `measure_with`); the model is put in eval mode for it and its mode restored after.
    """

    def __init__(
        self,
        monitor,
        basis: torch.Tensor,
        base_mean: torch.Tensor,
        base_norm: float,
        measure: Callable[[object], torch.Tensor],
        settings: LiveMonitorSettings,
    ):
        if settings.action not in ACTIONS:
            raise EMLabError(f"training.monitor.action must be one of {list(ACTIONS)} (got {settings.action!r})")
        if settings.every < 1:
            raise EMLabError(f"training.monitor.every must be >= 1 (got {settings.every})")
        if basis.ndim != 2 or basis.shape[0] != len(monitor.features) or basis.shape[1] != base_mean.shape[0]:
            raise EMLabError(
                f"live monitor: basis of shape {tuple(basis.shape)} does not fit {len(monitor.features)} "
                f"features and activations of width {base_mean.shape[0]}"
            )
        if not base_norm > 0:
            raise EMLabError("live monitor: the step-0 mean activation norm is 0; cannot normalise drift")
        self.monitor, self.basis, self.settings = monitor, basis.float(), settings
        self.base_proj = self.basis @ base_mean.float()
        self.base_norm = float(base_norm)
        self.measure = measure
        self.decisions: list[Decision] = []
        self.stop_requested: Decision | None = None

    def drift(self, mean: torch.Tensor) -> np.ndarray:
        """(B h̄_t - B h̄_0) / mean ||h_0||: [7] (drift.basis_drift, with B h̄_0 precomputed)."""
        return ((self.basis @ mean.float() - self.base_proj) / self.base_norm).numpy()

    def __call__(self, step: int, loss: float = math.nan, model=None) -> Decision | None:
        if step % self.settings.every or self.stop_requested is not None:
            return None
        was_training = bool(getattr(model, "training", False))
        if hasattr(model, "eval"):
            model.eval()
        try:
            mean = self.measure(model)
        finally:
            if was_training:
                model.train()
        d = self.drift(mean)
        pred = float(self.monitor.predict_drift(d[None, :])[0])
        alarm = pred > self.monitor.tau
        decision = Decision(
            int(step), tuple(float(x) for x in d), pred, alarm, alarm and self.settings.action == "stop"
        )
        self.decisions.append(decision)
        if alarm:
            log.warning(
                "live monitor: step %d predicted EM %.3f > tau %.3f (%s)",
                step,
                pred,
                self.monitor.tau,
                "stopping" if decision.stop else "warning only",
            )
        if decision.stop:
            self.stop_requested = decision
        return decision

    def log_columns(self, step: int) -> dict:
        """train_log.csv columns of one step: monitor_prediction, monitor_alarm (NaN/False when not measured)."""
        for d in reversed(self.decisions):
            if d.step == step:
                return {"monitor_prediction": d.prediction, "monitor_alarm": d.alarm}
        return {"monitor_prediction": float("nan"), "monitor_alarm": False}

    def summary_fields(self) -> dict:
        """summary.json: stopped_by_monitor {step, prediction} (null when training ran to the end)."""
        s = self.stop_requested
        return {"stopped_by_monitor": None if s is None else {"step": s.step, "prediction": s.prediction}}


def measure_with(tokenizer, prompts, layer: int, batch_size: int) -> Callable[[object], torch.Tensor]:
    """The default `measure`: drift.measure's mean activation (one batched forward, last token only)."""
    from emlab.monitor.drift import measure

    return lambda model: measure(model, tokenizer, prompts, layer, batch_size).mean


def build_live_monitor(
    monitor_path,
    directions_tensors,
    directions_json,
    trait_set,
    base_model_id: str,
    model,
    tokenizer,
    settings: LiveMonitorSettings,
    batch_size: int,
) -> LiveMonitor:
    """A LiveMonitor from the saved monitor and directions; `model` (before its first step) gives step 0.

    The directions must be this base model's, and the monitor fitted on a pool of
    models that includes it (one model, or several pooled: it then reads this
    model's layer), with the same trait files (an EMLabError otherwise).
    """
    from emlab.monitor.drift import measure
    from emlab.monitor.regressor import load_monitor
    from emlab.monitor.traits import load_directions

    dirs = load_directions(directions_tensors, directions_json)
    mon = load_monitor(monitor_path, base_model_id, trait_set.version)
    if dirs.model_id != base_model_id or dirs.trait_version != trait_set.version:
        raise EMLabError(
            f"trait directions {directions_json} are for `{dirs.model_id}` / `{dirs.trait_version}`, "
            f"not `{base_model_id}` / `{trait_set.version}`; re-run trait_directions"
        )
    if mon.layer != dirs.layer:
        raise EMLabError(f"monitor {monitor_path} reads layer {mon.layer}, the directions chose layer {dirs.layer}")
    index = [list(dirs.alignment_names).index(f) for f in mon.features]
    basis = dirs.alignment[dirs.layer][index]
    was_training = model.training
    model.eval()
    base = measure(model, tokenizer, trait_set.measurement, dirs.layer, batch_size)
    if was_training:
        model.train()
    return LiveMonitor(
        mon,
        basis,
        base.mean,
        base.mean_norm,
        measure_with(tokenizer, trait_set.measurement, dirs.layer, batch_size),
        settings,
    )


class LiveMonitorCallback:
    """The live monitor as a fine-tune step callback (an emlab.em.finetune.StepCallback).

    Built from files before the model exists; `start` takes the step-0 measurement on the model the
    fine-tune is about to train, with its LoRA adapters disabled (peft's `disable_adapter`), which is the
    base model exactly, also after a resume. A full fine-tune has no base to disable back to: refused.
    """

    def __init__(
        self,
        monitor_path,
        directions_tensors,
        directions_json,
        trait_set,
        base_model_id: str,
        settings: LiveMonitorSettings,
        batch_size: int,
    ):
        self._build = (monitor_path, directions_tensors, directions_json, trait_set, base_model_id)
        self.settings, self.batch_size = settings, int(batch_size)
        self.live: LiveMonitor | None = None

    def start(self, model, tokenizer) -> None:
        disable = getattr(model, "disable_adapter", None)
        if disable is None:
            raise EMLabError(
                "training.monitor needs a LoRA fine-tune: its step-0 measurement is the model "
                "with the adapters disabled, which a full fine-tune does not have"
            )
        monitor_path, tensors, meta, trait_set, model_id = self._build
        with disable():
            self.live = build_live_monitor(
                monitor_path, tensors, meta, trait_set, model_id, model, tokenizer, self.settings, self.batch_size
            )

    def _started(self) -> LiveMonitor:
        if self.live is None:
            raise EMLabError("live monitor used before start(model, tokenizer)")
        return self.live

    def __call__(self, step: int, loss: float = math.nan, model=None) -> Decision | None:
        return self._started()(step, loss, model)

    @property
    def stop_requested(self) -> Decision | None:
        return None if self.live is None else self.live.stop_requested

    def log_columns(self, step: int) -> dict:
        return self._started().log_columns(step)

    def summary_fields(self) -> dict:
        return self._started().summary_fields()
