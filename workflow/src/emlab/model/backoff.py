"""Batches that shrink when the accelerator runs out of memory.

Generation halves its batch on an out-of-memory error (emlab.em.generation); the
activation caching pass and the hf judge use `in_batches` for the same rule:
the failed batch is retried at half the size, and the rest of the run keeps
the smaller size. Every row's result depends only on its own batch, so a run
that backed off once equals a run started at the smaller batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from emlab.core.errors import EMLabError

log = logging.getLogger(__name__)


def is_out_of_memory(err: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error: torch's OOM type or a RuntimeError saying so."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


def release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def in_batches(n: int, batch_size: int, run: Callable[[int, int], None], what: str, config_key: str) -> int:
    """Call run(start, size) for consecutive slices [start, start + size) of n items.

    On an out-of-memory error the same slice is retried at half the size (down
    to 1, then an EMLabError naming `config_key`). Returns the batch size the run ended at.
    """
    if batch_size < 1:
        raise EMLabError(f"{config_key} must be >= 1 (got {batch_size})")
    done = 0
    while done < n:
        size = min(batch_size, n - done)
        failed = False
        try:
            run(done, batch_size)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            if batch_size == 1:
                raise EMLabError(
                    f"{what} ran out of GPU memory even at batch size 1; use a smaller dtype, "
                    "a device_map over several GPUs or a larger GPU"
                ) from err
            batch_size = max(1, batch_size // 2)
            log.warning(
                "%s: out of memory on a batch of %d; retrying it and continuing at batch size %d "
                "(set %s to %d to skip this)",
                what,
                size,
                batch_size,
                config_key,
                batch_size,
            )
            failed = True
        if failed:
            release_cached_memory()  # outside the except block, so the failed batch's tensors are freed
            continue
        done += size
    return batch_size
