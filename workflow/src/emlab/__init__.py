"""emlab: the library behind the emergent-misalignment Snakemake workflow.

One folder per part of the study (core, plan, model, em, lora, interventions,
monitor, rehearsal; docs/stages.md maps them); the Snakemake `script:` entry
points in workflow/scripts/ only read their inputs and call into here.
"""

__version__ = "0.1.0"
