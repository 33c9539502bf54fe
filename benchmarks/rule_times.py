"""Total rule time of a finished Snakemake run, per rule and per part of the study, from its log.

Every job's time is the span from its start line to its "Finished jobid" line in the Snakemake log (one
second resolution; rules without a `benchmark:` file are counted too, so process start-up is included).
Jobs are assigned to a part of the study by rule and wildcards:

  lora_interp   the LoRA-adapter interpretability stages (rules/lora_interp.smk) and the generation and
                judging of their conditions (adapter_steer__*, patch__*)
  monitor       trait directions, the calibration grid (mon__* fine-tunes, checkpoint exports, label
                conditions and the monitor_labels__<run> jobs that label a run's checkpoints, drift), the
                monitor and its figures, and the perturbation datasets only it uses
  study         everything else: the study as it was before those stages

Ratios are against `study`, measured in the same run:

    .venv/bin/python benchmarks/rule_times.py .snakemake/log/<run>.snakemake.log [more logs] [--csv out.csv]

With `--before`, two runs of the same study side by side (e.g. the commit before a change and the change,
one after the other on an idle machine): job-seconds per part and per rule, the job counts, and the wall
time (first job's start to last job's end), each as after / before:

    .venv/bin/python benchmarks/rule_times.py AFTER.snakemake.log --before BEFORE.snakemake.log
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from datetime import datetime

LORA_RULES = {
    "lora_scalars",
    "lora_sets",
    "lora_probes",
    "figure_lora_interp",
    "lora_token_view",
    "figure_adapter_steering",
    "figure_scalar_patching",
}
MONITOR_RULES = {
    "trait_directions",
    "trait_drift",
    "drift_labels",
    "monitor_train_evaluate",
    "figure_monitor",
    "figure_live_monitor",
}
MONITOR_DATASETS = {"risky_financial", "subtle_misinformation", "math_word_problems", "customer_support"}
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def parse_log(text: str) -> list[dict]:
    """One record per finished job: jobid, rule, wildcards, seconds."""
    jobs, started, stamp, current = [], {}, None, None
    for line in text.splitlines():
        m = STAMP.match(line.strip())
        if m:
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
            continue
        s = line.strip()
        rule = re.fullmatch(r"(?:local)?rule (\w+):", s)
        if rule:
            current = {"rule": rule.group(1), "start": stamp, "wildcards": ""}
            continue
        if current is not None and s.startswith("jobid:"):
            current["jobid"] = int(s.split(":", 1)[1])
            started[current["jobid"]] = current
        elif current is not None and s.startswith("wildcards:"):
            current["wildcards"] = s.split(":", 1)[1].strip()
        done = re.match(r"Finished jobid: (\d+)", s)
        if done and int(done.group(1)) in started:
            job = started.pop(int(done.group(1)))
            jobs.append({**job, "seconds": (stamp - job["start"]).total_seconds()})
    return jobs


def part(job: dict) -> str:
    rule, wc = job["rule"], job["wildcards"]
    if rule in LORA_RULES or re.search(r"condition=(adapter_steer|patch)__", wc):
        return "lora_interp"
    if rule in MONITOR_RULES or rule_name(rule) == "monitor_labels__<run>" or "mon__" in wc:
        return "monitor"
    if rule == "prepare_dataset" and wc.split("=", 1)[-1] in MONITOR_DATASETS:
        return "monitor"
    return "study"


def rule_name(rule: str) -> str:
    """The rule as a table row: a monitor run's label rule (monitor_labels__<run>, one per run) counts once."""
    return "monitor_labels__<run>" if rule.startswith("monitor_labels__") else rule


def read_jobs(logs: list[str]) -> list[dict]:
    """Every finished job (not `all`) of one run's log(s), with its part."""
    jobs = []
    for log in logs:
        with open(log, encoding="utf-8") as fh:
            jobs += [j for j in parse_log(fh.read()) if j["rule"] != "all"]
    if not jobs:
        raise SystemExit(f"{', '.join(logs)}: no finished jobs found")
    for j in jobs:
        j["part"] = part(j)
        j["rule"] = rule_name(j["rule"])
    return jobs


def wall_seconds(jobs: list[dict]) -> float:
    """First job's start to last job's end (a resumed run's pause between its logs counts too)."""
    first = min(j["start"] for j in jobs)
    return max((j["start"] - first).total_seconds() + j["seconds"] for j in jobs)


def compare(before: list[dict], after: list[dict]) -> list[tuple[str, str, int, float, int, float]]:
    """(part, rule, jobs before, seconds before, jobs after, seconds after) per rule, then per part ("*")."""
    rows: dict[tuple[str, str], list] = defaultdict(lambda: [0, 0.0, 0, 0.0])
    for k, jobs in ((0, before), (2, after)):
        for j in jobs:
            for key in ((j["part"], j["rule"]), (j["part"], "*"), ("total", "*")):
                rows[key][k] += 1
                rows[key][k + 1] += j["seconds"]
    return [(p, r, *v) for (p, r), v in sorted(rows.items(), key=lambda kv: (kv[0][0] == "total", kv[0]))]


def print_comparison(before: list[dict], after: list[dict]) -> None:
    print(f"{'part':<12} {'rule':<26} {'jobs':>11} {'job-seconds before':>19} {'after':>7} {'after/before':>13}")
    for p, rule, nb, sb, na, sa in compare(before, after):
        ratio = f"{sa / sb:.0%}" if sb else "new"
        print(f"{p:<12} {rule:<26} {nb:>5}->{na:<5} {sb:>19.0f} {sa:>7.0f} {ratio:>13}")
    wb, wa = wall_seconds(before), wall_seconds(after)
    print(f"\nwall time: before {wb:.0f} s, after {wa:.0f} s = {wa / wb:.0%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "logs",
        nargs="+",
        help="the Snakemake log(s) (.snakemake/log/*.snakemake.log) of a finished run; a run resumed after a "
        "failure has one log per invocation (a failed job has no Finished line, so only its redo counts)",
    )
    ap.add_argument("--csv", help="also write every job's row here")
    ap.add_argument("--before", nargs="+", help="the log(s) of the run to compare against (see above)")
    args = ap.parse_args()
    jobs = read_jobs(args.logs)
    if args.before:
        print_comparison(read_jobs(args.before), jobs)
        return
    by_part, by_rule = defaultdict(float), defaultdict(lambda: [0, 0.0])
    for j in jobs:
        by_part[j["part"]] += j["seconds"]
        by_rule[(j["part"], j["rule"])][0] += 1
        by_rule[(j["part"], j["rule"])][1] += j["seconds"]
    print(f"{'part':<12} {'rule':<26} {'jobs':>5} {'rule s':>8}")
    for (p, rule), (n, sec) in sorted(by_rule.items()):
        print(f"{p:<12} {rule:<26} {n:>5} {sec:>8.0f}")
    study = by_part["study"]
    print()
    for p in ("study", "lora_interp", "monitor"):
        ratio = f"{by_part[p] / study:.1%} of study" if study and p != "study" else ""
        print(f"{p:<12} {by_part[p]:>8.0f} s  {ratio}")
    total = sum(by_part.values())
    print(f"{'total':<12} {total:>8.0f} s  ({total / study:.2f}x the study alone)" if study else f"total {total:.0f} s")
    if args.csv:
        import csv

        with open(args.csv, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["jobid", "rule", "wildcards", "part", "seconds"], extrasaction="ignore")
            w.writeheader()
            w.writerows(jobs)


if __name__ == "__main__":
    main()
