#!/usr/bin/env python3
"""Where a `weir bench` drain spends each trigger: medians of the stage times
its debug log holds (RUST_LOG=weir=debug, as `benches/scaling.sh` runs it).

For each log: the throughput phase only (the backlog drained as fast as the
pipeline goes), without its first two triggers (the consumer group's join and
the tables' first commits). A stage whose median is near the trigger period is
the one that bounds throughput; `*_wait` near zero means the stage before it
keeps up. `untimed_ms` is what a trigger spends outside its timers: from the
end of the last trigger to this one's commit, less its wait for a batch, its
judge and its commit (dropping the last batch, the sink's lock, the
assignment check).

Usage: benches/stages.py LOG [LOG…]
"""

import re
import statistics
import sys
from datetime import datetime

FIELD = re.compile(r"(\w+)=([0-9.]+)")
STAMP = re.compile(r"^(\S+?)Z")
PREPARED = ("source_wait_ms", "decode_ms", "dedup_ms")
TRIGGER = ("prepared_wait_ms", "judge_ms", "queries_ms", "commit_ms")
# Consecutive spans of a trigger (its queries overlap its commit).
TIMED = ("prepared_wait_ms", "judge_ms", "commit_ms")


def drain_lines(path):
    """The log lines of the throughput phase."""
    inside = False
    with open(path, encoding="utf-8") as log:
        for line in log:
            if "throughput phase" in line:
                inside = True
            elif "latency phase" in line:
                return
            elif inside:
                yield line


def fields(line):
    return {k: float(v) for k, v in FIELD.findall(line)}


def stamp(line):
    return datetime.fromisoformat(STAMP.match(line).group(1))


def summary(path):
    prepared, triggers, raw_writes, untimed = [], [], [], []
    ended = None
    for line in drain_lines(path):
        if "batch prepared" in line:
            prepared.append(fields(line))
        elif "trigger timed" in line:
            at, timed = stamp(line), fields(line)
            triggers.append((at, timed))
            if ended is not None:
                span = (at - ended).total_seconds() * 1e3
                untimed.append(span - sum(timed[k] for k in TIMED))
        elif "trigger events=" in line:
            ended = stamp(line)
        elif "table appended" in line and 'table="raw"' in line:
            raw_writes.append(fields(line)["write_ms"])
    prepared, triggers, raw_writes = prepared[2:], triggers[2:], raw_writes[2:]
    untimed = untimed[1:]
    if len(triggers) < 3:
        return f"{path}: fewer than 3 triggers in the drain"
    periods = [
        (b[0] - a[0]).total_seconds() * 1e3 for a, b in zip(triggers, triggers[1:])
    ]
    columns = {"period_ms": periods, "raw_write_ms": raw_writes, "untimed_ms": untimed}
    for key in PREPARED:
        columns[key] = [p[key] for p in prepared if key in p]
    for key in TRIGGER:
        columns[key] = [t[key] for _, t in triggers if key in t]
    medians = "  ".join(
        f"{k} {statistics.median(v):6.1f}" for k, v in columns.items() if v
    )
    return f"{path}: {len(triggers)} triggers  {medians}"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(summary(arg))
