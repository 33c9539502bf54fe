"""emlab.core.keyed: several files of one kind are matched to their ids by what each file carries, whatever
the order of the list they arrive in, and anything else than exactly the planned ids is one clear error."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from emlab.core.errors import EMLabError
from emlab.core.keyed import checkpoints_by_step, tables_by_id, tensors_by_id, write_checkpoint_id
from emlab.model.tensors import load_tensors, save_tensors


def _table(path, run, value):
    pd.DataFrame({"run": [run, run], "step": [0, 1], "x": [value, value]}).to_csv(path, index=False)
    return path


def test_tables_are_keyed_by_the_id_inside_them(tmp_path):
    a, b = _table(tmp_path / "1.csv", "run_a", 1.0), _table(tmp_path / "2.csv", "run_b", 2.0)
    for order in ([a, b], [b, a]):
        got = tables_by_id(order, "run", ["run_a", "run_b"], "drift tables")
        assert got["run_a"]["x"].tolist() == [1.0, 1.0] and got["run_b"]["x"].tolist() == [2.0, 2.0]
    with pytest.raises(EMLabError, match=r"missing \['run_c'\]"):
        tables_by_id([a, b], "run", ["run_a", "run_b", "run_c"], "drift tables")
    with pytest.raises(EMLabError, match=r"unexpected run_b \(.*2.csv\)"):
        tables_by_id([a, b], "run", ["run_a"], "drift tables")
    dup = _table(tmp_path / "3.csv", "run_a", 3.0)
    with pytest.raises(EMLabError, match="both carry the id 'run_a'"):
        tables_by_id([a, dup], "run", None, "drift tables")
    pd.DataFrame({"step": [0]}).to_csv(tmp_path / "old.csv", index=False)
    with pytest.raises(EMLabError, match="no 'run' column.*re-run"):
        tables_by_id([tmp_path / "old.csv"], "run", None, "drift tables")
    pd.DataFrame({"run": ["a", "b"]}).to_csv(tmp_path / "two.csv", index=False)
    with pytest.raises(EMLabError, match=r"expected one run .*\['a', 'b'\]"):
        tables_by_id([tmp_path / "two.csv"], "run", None, "drift tables")


def test_tensors_are_keyed_by_their_metadata(tmp_path):
    for ft, split, v in (("a", "general", 1.0), ("a", "medical", 2.0)):
        save_tensors(tmp_path / f"{split}.safetensors", {"v": torch.full((2,), v)}, {"finetune": ft, "split": split})
    paths = [tmp_path / "medical.safetensors", tmp_path / "general.safetensors"]
    got = tensors_by_id(paths, ("finetune", "split"), [("a", "general"), ("a", "medical")], "vectors", load_tensors)
    assert float(got[("a", "medical")][0]["v"][0]) == 2.0 and float(got[("a", "general")][0]["v"][0]) == 1.0
    with pytest.raises(EMLabError, match="both carry the id 'a'"):
        tensors_by_id(paths, "finetune", None, "vectors", load_tensors)


def test_exported_checkpoints_name_their_run_and_step(tmp_path):
    folders = []
    for step in (10, 2):
        folder = tmp_path / f"x{step}"
        folder.mkdir()
        write_checkpoint_id(folder, "mon__a__s0", step)
        folders.append(folder)
    assert checkpoints_by_step(folders, "mon__a__s0", [2, 10]) == {10: str(folders[0]), 2: str(folders[1])}
    with pytest.raises(EMLabError, match="checkpoint of 'mon__a__s0', not of 'mon__b__s0'"):
        checkpoints_by_step(folders, "mon__b__s0", [2, 10])
    with pytest.raises(EMLabError, match=r"missing \['20'\]"):
        checkpoints_by_step(folders, "mon__a__s0", [2, 10, 20])
    (tmp_path / "bare").mkdir()
    with pytest.raises(EMLabError, match="no readable emlab_checkpoint.json"):
        checkpoints_by_step([tmp_path / "bare"], "mon__a__s0", [1])
