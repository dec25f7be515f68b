#!/usr/bin/env python3
"""Where a `weir bench` drain spends each trigger: medians of the stage times
its debug log holds (RUST_LOG=weir=debug, as `benches/scaling.sh` runs it).

For each log: the first throughput phase (the backlog drained as fast as the
pipeline goes), or with --latency the first latency phase (events at the
offered rate; its p50 and p99 too), without its first two triggers (the
consumer group's join and the tables' first commits). A stage whose median
is near the trigger period is the one that bounds throughput; `*_wait` near
zero means the stage before it keeps up. `untimed_ms` is what a trigger
spends outside its timers: from the end of the last trigger to this one's
commit, less its wait for a batch, its judge and its commit (dropping the
last batch, the sink's lock, the assignment check; counted only for triggers
not staged ahead, whose judge ran before the trigger ahead of them committed,
of which `staged_ahead` gives the share). `oldest_age_ms` and
`newest_age_ms` are how long before its decode a batch's oldest and newest
events were produced: the newest's is the way in (producer, broker, poll),
the oldest's that and the batch filling.

Usage: benches/stages.py [--latency] LOG [LOG…]
"""

import argparse
import re
from datetime import datetime

FIELD = re.compile(r"(\w+)=([0-9.]+)")
STAMP = re.compile(r"^(\S+?)Z")
PREPARED = ("source_wait_ms", "oldest_age_ms", "newest_age_ms", "decode_ms", "dedup_ms")
PHASES = ("throughput phase", "latency phase")
TRIGGER = ("prepared_wait_ms", "judge_ms", "queries_ms", "commit_ms")
# Consecutive spans of a trigger (its queries overlap its commit).
TIMED = ("prepared_wait_ms", "judge_ms", "commit_ms")


def phase_lines(path, phase):
    """The log lines of the first `phase` (one of PHASES)."""
    inside = False
    with open(path, encoding="utf-8") as log:
        for line in log:
            if phase in line:
                inside = True
            elif any(p in line for p in PHASES) and inside:
                return
            elif inside:
                yield line


def fields(line):
    return {k: float(v) for k, v in FIELD.findall(line)}


def stamp(line):
    return datetime.fromisoformat(STAMP.match(line).group(1))


def quantile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(path, phase=PHASES[0], quantiles=(0.5,)):
    prepared, triggers, raw_writes, untimed, ahead = [], [], [], [], []
    ended = None
    for line in phase_lines(path, phase):
        if "batch prepared" in line:
            prepared.append(fields(line))
        elif "trigger timed" in line:
            at, timed = stamp(line), fields(line)
            triggers.append((at, timed))
            ahead.append("staged_ahead=true" in line)
            if ended is not None and not ahead[-1]:
                span = (at - ended).total_seconds() * 1e3
                untimed.append(span - sum(timed[k] for k in TIMED))
        elif "trigger events=" in line:
            ended = stamp(line)
        elif "table appended" in line and 'table="raw"' in line:
            raw_writes.append(fields(line)["write_ms"])
    prepared, triggers, raw_writes = prepared[2:], triggers[2:], raw_writes[2:]
    ahead = ahead[2:]
    untimed = untimed[1:]
    if len(triggers) < 3:
        return f"{path}: fewer than 3 triggers in the {phase}"
    periods = [
        (b[0] - a[0]).total_seconds() * 1e3 for a, b in zip(triggers, triggers[1:])
    ]
    columns = {"period_ms": periods, "raw_write_ms": raw_writes, "untimed_ms": untimed}
    for key in PREPARED:
        columns[key] = [p[key] for p in prepared if key in p]
    for key in TRIGGER:
        columns[key] = [t[key] for _, t in triggers if key in t]
    figures = "  ".join(
        f"{k} " + "/".join(f"{quantile(v, q):.1f}" for q in quantiles)
        for k, v in columns.items()
        if v
    )
    share = sum(ahead) / len(ahead)
    return f"{path}: {len(triggers)} triggers  staged_ahead {share:.0%}  {figures}"


def arguments():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--latency", action="store_true", help="the latency phase, p50 and p99"
    )
    parser.add_argument("logs", nargs="+", metavar="LOG", help="a bench's debug log")
    return parser.parse_args()


if __name__ == "__main__":
    args = arguments()
    phase, quantiles = (PHASES[1], (0.5, 0.99)) if args.latency else (PHASES[0], (0.5,))
    for log in args.logs:
        print(summary(log, phase, quantiles))
