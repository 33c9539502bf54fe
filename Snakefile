# Emergent-misalignment study: dataset prep -> LoRA fine-tunes -> generation ->
# LLM-judge scores -> activations -> mean-diff directions -> steering /
# ablation / transfer (conditions planned by workflow/src/emlab/plan/study.py,
# kinds in workflow/src/emlab/plan/conditions/; generated and judged by
# rules/generate.smk and rules/judge.smk like every condition) -> metrics and
# figures (rules/figures.smk). Each rules/<stage>.smk holds its stage's rules.
# See README.md.
from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the default; a --configfile on the command line replaces it
# (merging would leak the demo's fine-tunes and datasets into e.g. paper.yaml).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "rules/common.smk"


if config["judge"]["backend"] == "openai":

    # The key is read from the environment by the judge client; it never passes
    # through params, config files or logs.
    envvars:
        config["judge"]["openai"]["api_key_env"],


report: "workflow/report/workflow.rst"


include: "rules/base_model.smk"
include: "rules/synthesis.smk"
include: "rules/data.smk"
include: "rules/finetune.smk"
include: "rules/generate.smk"
include: "rules/judge.smk"
include: "rules/activations.smk"
include: "rules/directions.smk"
include: "rules/single_adapter.smk"
include: "rules/lora_interp.smk"
include: "rules/metrics.smk"
include: "rules/figures.smk"
include: "rules/phase.smk"
include: "rules/traits.smk"
include: "rules/monitor.smk"
include: "rules/cross_model.smk"


rule all:
    default_target: True
    input:
        final_targets(),
