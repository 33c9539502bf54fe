"""benchmarks/rule_times.py reads job spans from a Snakemake log and compares two runs side by side: a
known-answer check on a written log (no timing is measured here)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import rule_times  # noqa: E402


def _log(jobs: list[tuple[int, str, str, int, int]]) -> str:
    """A Snakemake log of (jobid, rule, wildcards, start second, end second) jobs, in event order."""
    events = []
    for jobid, rule, wildcards, start, end in jobs:
        events.append((start, 0, f"rule {rule}:\n    jobid: {jobid}\n    wildcards: {wildcards}\n"))
        events.append((end, 1, f"Finished jobid: {jobid} (Rule: {rule})\n"))
    return "".join(f"[Fri Dec  4 20:{t // 60:02d}:{t % 60:02d} 2026]\n{text}" for t, _, text in sorted(events))


def test_two_runs_compared_per_part_rule_and_wall_time(tmp_path):
    before = tmp_path / "before.log"
    after = tmp_path / "after.log"
    before.write_text(
        _log(
            [
                (1, "generate", "condition=base", 0, 30),
                (2, "judge", "condition=base", 30, 90),
                (3, "generate", "condition=mon__base", 90, 100),
                (4, "figure_monitor", "", 100, 104),
                (6, "monitor_labels__mon__x__s0", "", 106, 110),
                (5, "figure_ablation", "", 100, 106),  # two light jobs at once: wall < job-seconds
            ]
        )
    )
    after.write_text(
        _log([(1, "generate", "condition=base", 0, 20), (2, "judge", "condition=base", 20, 50), (3, "all", "", 50, 50)])
    )
    b, a = rule_times.read_jobs([str(before)]), rule_times.read_jobs([str(after)])
    assert [j["rule"] for j in a] == ["generate", "judge"]  # `all` is not a job's work
    assert rule_times.wall_seconds(b) == 110 and rule_times.wall_seconds(a) == 50
    rows = {(p, r): (nb, sb, na, sa) for p, r, nb, sb, na, sa in rule_times.compare(b, a)}
    assert rows[("study", "judge")] == (1, 60.0, 1, 30.0)
    assert rows[("monitor", "*")] == (3, 18.0, 0, 0.0)
    assert rows[("monitor", "monitor_labels__<run>")] == (1, 4.0, 0, 0.0)  # one row for every run's label rule
    assert rows[("study", "figure_ablation")] == (1, 6.0, 0, 0.0)
    assert rows[("total", "*")] == (6, 114.0, 2, 50.0)
