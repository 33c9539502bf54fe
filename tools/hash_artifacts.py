"""Content hashes of the generation and judgment tables of a results folder.

A refactor that must not change behaviour is checked by running the same
config and seed on the commit before and after, then comparing:

    python tools/hash_artifacts.py results > after.json
    python tools/hash_artifacts.py --compare before.json after.json

The hash covers column names, dtypes and every value in row order, not the
parquet file bytes: file-level metadata (provenance such as library versions
and thread counts, which a run records on purpose) does not count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import pandas as pd

KINDS = ("generations", "judgments")


def table_hash(path: Path) -> str:
    df = pd.read_parquet(path)
    h = hashlib.sha256()
    h.update(json.dumps([[c, str(t)] for c, t in df.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    return h.hexdigest()


def hash_results(results: Path) -> dict[str, str]:
    out = {}
    for kind in KINDS:
        for path in sorted((results / kind).glob("*.parquet")):
            out[f"{kind}/{path.name}"] = table_hash(path)
    if not out:
        raise SystemExit(f"{results}: no generation or judgment parquets found; run the workflow first")
    return out


def compare(before: dict[str, str], after: dict[str, str]) -> int:
    same = sorted(k for k in before if after.get(k) == before[k])
    differ = sorted(k for k in before if k in after and after[k] != before[k])
    only_before = sorted(set(before) - set(after))
    only_after = sorted(set(after) - set(before))
    print(
        f"{len(same)} identical, {len(differ)} different, {len(only_before)} only before, {len(only_after)} only after"
    )
    for label, keys in (("different", differ), ("only before", only_before), ("only after", only_after)):
        for k in keys:
            print(f"  {label}: {k}")
    return 0 if not (differ or only_before or only_after) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", default="results", type=Path)
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), type=Path)
    args = ap.parse_args(argv)
    if args.compare:
        return compare(*(json.loads(p.read_text()) for p in args.compare))
    json.dump(hash_results(args.results), sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
