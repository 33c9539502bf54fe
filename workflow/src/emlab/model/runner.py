"""Shared start-up of the Snakemake `script:` entry points: logging to the job's log, the job's torch
threads, and an EMLabError as one clear line."""

from __future__ import annotations

import logging
import sys
import traceback

from emlab.core.errors import EMLabError
from emlab.model import worker


class _NoTorch:
    """An import hook that refuses torch in a job declared torch-free (run_script(uses_torch=False)): such a job
    never pinned torch's threads, so a computation with torch there would depend on the machine's core count."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):  # an ImportError: a library's optional torch stays off
            raise ImportError(
                f"this script was declared torch-free (run_script(..., uses_torch=False)) but imports {name}; "
                "declare uses_torch=True in its workflow/scripts entry point"
            )
        return None


def run_script(snakemake, main, uses_torch: bool = True) -> None:
    """Log to snakemake.log[0] (and stderr), set threads, run main(snakemake).

    An EMLabError is reported as one clear line and a non-zero exit; outputs are
    written atomically by the library, so nothing half-written remains.
    A script that reads and writes tables and figures only passes `uses_torch=False`: it skips torch's
    import (about a second, most of a small job's start-up), and importing torch there is then an error.
    A model job of a run with EMLAB_WARM_WORKER=1 runs in a fork of the warm worker (emlab.model.worker),
    which has imported torch and transformers once for the whole run; this process then only waits for it.
    """
    if uses_torch:
        status = worker.hand_off(snakemake)  # None unless EMLAB_WARM_WORKER=1 and the worker took the job
        if status is not None:
            sys.exit(status)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if snakemake.log:
        handlers.append(logging.FileHandler(str(snakemake.log[0]), mode="w"))
    logging.basicConfig(
        level=logging.INFO, handlers=handlers, force=True, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    guard = _NoTorch()
    if not uses_torch:
        sys.meta_path.insert(0, guard)
    else:
        try:  # before main imports numpy's BLAS: which thread pools a job's reductions use is part of its result
            import torch

            torch.set_num_threads(max(1, int(snakemake.threads)))
        except ImportError:
            pass
    try:
        main(snakemake)
    except EMLabError as exc:
        logging.getLogger("emlab").error("%s", exc)
        sys.exit(1)
    except Exception:
        logging.getLogger("emlab").error("unexpected failure:\n%s", traceback.format_exc())
        raise
    finally:  # a script run in-process (the tests) leaves the interpreter as it found it
        if guard in sys.meta_path:
            sys.meta_path.remove(guard)


def device_map_of(snakemake):
    """The config's top-level device_map (null: the whole model on `device`).

    Read from the config rather than the rule's params: where the layers sit
    does not change what a stage computes, so changing it re-runs nothing.
    """
    config = getattr(snakemake, "config", None) or {}
    return config.get("device_map") or None
