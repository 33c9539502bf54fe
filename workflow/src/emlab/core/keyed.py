"""Several files of one kind, matched to their runs or conditions by the id each file carries.

A rule that takes many files of one kind (every monitor run's drift table, every
fine-tune's direction) gets them as a list. Snakemake keeps that list in the
order the rule wrote it, and nothing ties that order to a params list that is
sorted, filtered or written elsewhere: pairing the two by position once gave
each monitor run another run's drift table. So every such file carries its own
id (a column of a table, a metadata key of a safetensors file, an identity file
in an exported checkpoint), and readers key the files by that id and check that
exactly the expected ids arrived, once each.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path

import pandas as pd

from emlab.core.errors import EMLabError

CHECKPOINT_ID_FILE = "emlab_checkpoint.json"  # in an exported checkpoint: {"finetune": ..., "step": ...}


def _read_table(path) -> pd.DataFrame:
    path = str(path)
    return pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)


def table_id(table: pd.DataFrame, column: str, path) -> str:
    """The one id a per-run (per-condition) table carries in `column`."""
    if column not in table.columns:
        raise EMLabError(
            f"{path} has no {column!r} column, so it cannot be matched to its {column} by name; it was written "
            "by an older version of this workflow: delete it and re-run the rule that writes it"
        )
    ids = sorted({str(v) for v in table[column].dropna().unique()})
    if len(ids) != 1:
        raise EMLabError(f"{path}: expected one {column} in column {column!r}, found {ids or 'none'}")
    return ids[0]


def check_ids(found: Mapping[str, object], expected: Collection[str] | None, what: str) -> None:
    """`found` (id -> where) holds exactly `expected` (when given)."""
    if expected is None:
        return
    missing = sorted(set(map(str, expected)) - set(found))
    extra = sorted(set(found) - set(map(str, expected)))
    if missing or extra:
        raise EMLabError(
            f"{what}: the input files do not match the plan: "
            + "; ".join(
                part
                for part in (
                    f"missing {missing}" if missing else "",
                    "unexpected " + ", ".join(f"{i} ({found[i]})" for i in extra) if extra else "",
                )
                if part
            )
            + ". Re-run the rules that write them (snakemake --forcerun <rule>)."
        )


def add_keyed(found: dict, key: str, path, what: str) -> None:
    """found[key] = path, an error when another file already carries `key`."""
    if key in found:
        raise EMLabError(f"{what}: {path} and {found[key]} both carry the id {key!r}")
    found[key] = path


def tables_by_id(
    paths: Iterable,
    column: str,
    expected: Collection[str] | None,
    what: str,
    read: Callable[[str], pd.DataFrame] = _read_table,
) -> dict[str, pd.DataFrame]:
    """Read per-run tables (CSV or parquet) and key each by the single id in its `column`."""
    tables: dict[str, pd.DataFrame] = {}
    where: dict[str, str] = {}
    for path in paths:
        table = read(str(path))
        key = table_id(table, column, path)
        add_keyed(where, key, path, what)
        tables[key] = table
    check_ids(where, expected, what)
    return tables


def tensors_by_id(
    paths: Iterable,
    meta_keys: str | tuple[str, ...],
    expected: Collection | None,
    what: str,
    read: Callable[[str], tuple[dict, dict]],
) -> dict:
    """Read tensor files with `read` (emlab.model.tensors.load_tensors: (tensors, metadata)) and key each by
    its metadata value(s) (a tuple key for several meta keys)."""
    keys = (meta_keys,) if isinstance(meta_keys, str) else tuple(meta_keys)
    out: dict = {}
    where: dict[str, str] = {}
    for path in paths:
        tensors, meta = read(str(path))
        missing = [k for k in keys if k not in meta]
        if missing:
            raise EMLabError(
                f"{path} has no metadata {missing}, so it cannot be matched by name; it was written by an older "
                "version of this workflow: delete it and re-run the rule that writes it"
            )
        key = str(meta[keys[0]]) if len(keys) == 1 else tuple(str(meta[k]) for k in keys)
        label = key if isinstance(key, str) else "/".join(key)
        add_keyed(where, label, path, what)
        out[key] = (tensors, meta)
    check_ids(where, None if expected is None else ["/".join(e) if isinstance(e, tuple) else e for e in expected], what)
    return out


def write_checkpoint_id(folder, finetune: str, step: int) -> None:
    """Name an exported checkpoint folder's run and step inside it."""
    (Path(folder) / CHECKPOINT_ID_FILE).write_text(json.dumps({"finetune": finetune, "step": int(step)}) + "\n")


def checkpoints_by_step(folders: Iterable, finetune: str, expected_steps: Collection[int]) -> dict[int, str]:
    """Exported checkpoint folders keyed by the step each names inside itself, all of `finetune`."""
    out: dict[int, str] = {}
    where: dict[str, str] = {}
    for folder in folders:
        path = Path(folder) / CHECKPOINT_ID_FILE
        try:
            ident = json.loads(path.read_text())
        except (OSError, ValueError):
            raise EMLabError(
                f"{folder} has no readable {CHECKPOINT_ID_FILE}, so its step cannot be checked; it was exported by an "
                "older version of this workflow: delete it and re-run export_checkpoint"
            ) from None
        if ident.get("finetune") != finetune:
            raise EMLabError(f"{folder} is a checkpoint of {ident.get('finetune')!r}, not of {finetune!r}")
        add_keyed(where, str(ident["step"]), folder, f"checkpoints of {finetune}")
        out[int(ident["step"])] = str(folder)
    check_ids(where, [str(s) for s in expected_steps], f"checkpoints of {finetune}")
    return out
