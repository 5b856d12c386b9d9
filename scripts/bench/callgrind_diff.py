#!/usr/bin/env python3
"""Where two builds' instructions per send differ, by function and by crate.

    scripts/bench/callgrind_diff.py BEFORE_DIR AFTER_DIR [SENDS]

Each DIR holds the two callgrind files `scripts/bench/instructions.sh` keeps with KEEP=DIR
(SENDS.out and 1.out, SENDS 2000 by default). Per function, the self cost per send is
(Ir of the SENDS run - Ir of the 1-send run) / (SENDS - 1), as instructions.sh computes the
total; the script prints AFTER - BEFORE grouped by crate, then the functions that grew and
shrank most. One-time work whose cost depends on time (a clock's calibration spin) shows up
too: read the names before trusting a line.
"""
import collections
import re
import subprocess
import sys


def self_costs(path):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    costs = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(\S.*)$", line)
        if m and "PROGRAM TOTALS" not in line:
            name = re.sub(r"^(\?\?\?|/[^:]*):", "", m.group(2), count=1)
            name = re.sub(r" \[[^]]*\]$", "", name)
            costs[name] += int(m.group(1).replace(",", ""))
    return costs


def per_send(directory, sends):
    many, one = self_costs(f"{directory}/{sends}.out"), self_costs(f"{directory}/1.out")
    return {k: (many[k] - one.get(k, 0)) / (sends - 1) for k in set(many) | set(one)}


GROUPS = [("sqlite3|sqlite", "SQLite (C)"), ("mi_|malloc|free|memcpy|memmove|memset|realloc", "allocator, memcpy"),
          ("hyper::", "hyper"), ("tokio::", "tokio"), ("axum", "axum"), ("serde_json|serde", "serde"),
          ("chatcore_sqlite", "chatcore_sqlite"), ("chatcore_axum", "chatcore_axum"), ("chatcore::", "chatcore"),
          ("chat_server", "chat_server"), ("tower", "tower"), ("tracing", "tracing"), ("metrics|quanta", "metrics"),
          ("tungstenite", "tungstenite"), ("rusqlite", "rusqlite"), ("http::|httparse", "http"),
          ("hashbrown|hash", "hashing"), ("core::|alloc::|std::", "std")]


def group(name):
    for pattern, label in GROUPS:
        if re.search(pattern, name):
            return label
    return "other"


def main():
    before_dir, after_dir = sys.argv[1], sys.argv[2]
    sends = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    before, after = per_send(before_dir, sends), per_send(after_dir, sends)
    diff = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    print(f"instructions per send, after - before: {sum(diff.values()):+.0f}")
    groups = collections.Counter()
    for name, value in diff.items():
        groups[group(name)] += value
    for label, value in groups.most_common():
        print(f"  {label:20} {value:+9.0f}")
    print("grew most:")
    for name, value in sorted(diff.items(), key=lambda kv: -kv[1])[:30]:
        print(f"  {value:+8.0f}  {name[:150]}")
    print("shrank most:")
    for name, value in sorted(diff.items(), key=lambda kv: kv[1])[:15]:
        print(f"  {value:+8.0f}  {name[:150]}")


if __name__ == "__main__":
    main()
