"""Alignment and semantic trait directions of the base model at every layer, the chosen layer, the 7x7 cosines."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import device_map_of, run_script


def main(smk):
    import pandas as pd
    from emlab.core.atomic import write_csv
    from emlab.core.settings import build
    from emlab.model.loading import load_model, load_tokenizer, set_threads
    from emlab.monitor.metas import model_key_of
    from emlab.monitor.stage import TraitSubsample, subsample_trait_set
    from emlab.monitor.traits import DirectionSettings, cosine_matrix, extract_directions, save_directions
    from emlab.plan.traits import load_trait_set

    set_threads(smk.threads)
    settings = build(DirectionSettings, smk.params.directions, "config traits")
    trait_set = subsample_trait_set(
        load_trait_set(smk.params.folder), build(TraitSubsample, smk.params.subsample, "config traits")
    )
    model = load_model(
        smk.params.base_model, device=smk.params.device, dtype=smk.params.dtype, device_map=device_map_of(smk)
    )
    tok = load_tokenizer(smk.params.base_model)
    # the model's key (`default` for base_model:) goes into directions.json, so readers of several models'
    # directions match each file by the key it carries
    model_key = model_key_of(smk)
    dirs = extract_directions(model, tok, trait_set, settings, smk.params.model_id, model_key)
    save_directions(dirs, smk.output.tensors, smk.output.meta)
    cos = cosine_matrix(dirs.alignment[dirs.layer]).numpy()
    names = list(dirs.alignment_names)
    write_csv(smk.output.cosine, pd.DataFrame(cos, index=pd.Index(names, name="trait"), columns=names).reset_index())


run_script(snakemake, main)
