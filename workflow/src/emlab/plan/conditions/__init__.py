"""Study conditions as typed values: which model, what is done to it, its
condition id, its JSON spec (through Snakemake params into the generation
tables), its row group, and its names in figures and tables. The plan
(emlab.plan.study) builds them from the config; emlab.interventions applies
them to a loaded model. Nothing here imports torch.

  condition.py   the shared shape (Condition), the Group of a row, the registry, parse_condition_id, from_params
  unmodified.py  Unmodified (base / fine-tune as trained), Checkpoint (a saved training step),
                 MonitorLabel (a checkpoint of a trait-monitor calibration run)
  steering.py    Steer
  ablation.py    LayerwiseAblation, SingleAblation, RandomAblation, Transfer
  adapter.py     AdapterProjection (a weights edit of a rank-1 adapter)
  adapter_steering.py  AdapterSteering (rank-1 adapters' contributions scaled, unmerged model)
  scalar_patching.py   ScalarPatching (rank-1 adapters' prompt scalars taken from a donor prompt)
"""

from __future__ import annotations

from .ablation import Ablation, LayerwiseAblation, RandomAblation, SingleAblation, Transfer
from .adapter import AdapterProjection
from .adapter_steering import AdapterSteering
from .condition import Condition, Group, as_condition, from_params, kinds, parse_condition_id
from .scalar_patching import ScalarPatching
from .steering import Steer, format_scale
from .unmodified import Checkpoint, MonitorLabel, Unmodified

__all__ = [
    "Ablation",
    "AdapterProjection",
    "AdapterSteering",
    "Checkpoint",
    "Condition",
    "Group",
    "LayerwiseAblation",
    "MonitorLabel",
    "RandomAblation",
    "ScalarPatching",
    "SingleAblation",
    "Steer",
    "Transfer",
    "Unmodified",
    "as_condition",
    "format_scale",
    "from_params",
    "kinds",
    "parse_condition_id",
]
