"""Shared start-up of the Snakemake `script:` entry points."""

from __future__ import annotations

import logging
import os
import sys
import traceback

from emlab.core.errors import EMLabError


def run_script(snakemake, main) -> None:
    """Log to snakemake.log[0] (and stderr), set threads, run main(snakemake).

    An EMLabError is reported as one clear line and a non-zero exit; outputs are
    written atomically by the library, so nothing half-written remains.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if snakemake.log:
        handlers.append(logging.FileHandler(str(snakemake.log[0]), mode="w"))
    logging.basicConfig(
        level=logging.INFO, handlers=handlers, force=True, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    threads = max(1, int(snakemake.threads))
    torch = sys.modules.get("torch")  # not imported here: a job that never loads a model never starts torch
    if torch is not None:
        torch.set_num_threads(threads)
    else:  # read when a later import starts torch (its intra-op pool follows OMP_NUM_THREADS)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        main(snakemake)
    except EMLabError as exc:
        logging.getLogger("emlab").error("%s", exc)
        sys.exit(1)
    except Exception:
        logging.getLogger("emlab").error("unexpected failure:\n%s", traceback.format_exc())
        raise


def device_map_of(snakemake):
    """The config's top-level device_map (null: the whole model on `device`).

    Read from the config rather than the rule's params: where the layers sit
    does not change what a stage computes, so changing it re-runs nothing.
    """
    config = getattr(snakemake, "config", None) or {}
    return config.get("device_map") or None
