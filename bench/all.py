#!/usr/bin/env python3
"""`make bench`: every benchmark, then one table of all their rows.

Each program in bench/ measures its contenders side by side (interleaved
rounds, medians) and prints its own detailed table; run here, those go to a
log file (its path is printed) and each row is also appended to one results
file (measure.record), from which the single table below is printed. A
benchmark that fails shows as a row saying so; the others still run.

Other sessions may share the machine: the load average is printed before
each benchmark and in its rows: the load when it started, before its own
processes raised it (BENCH_MAX_LOAD, when set, waits up to ten minutes for
the 1-minute load to fall below it first). BENCH_ONLY="decrypt
run" picks benchmarks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time


HERE = os.path.dirname(os.path.abspath(__file__))
BENCHES = ["decrypt", "run", "scaling", "fetch", "https", "oci", "verify", "openpgp", "s2k", "large"]


def markdown(rows: list[list[str]], header: list[str]) -> str:
    """A Markdown table: readable as text, and pasted as is into an issue."""
    cells = [header, ["---"] * len(header), *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells)


def wait_for_quiet(limit: float) -> None:
    deadline = time.monotonic() + 600
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(15)


def main() -> int:
    only = os.environ.get("BENCH_ONLY", "").split() or BENCHES
    results = os.environ.get("BENCH_RESULTS") or tempfile.mktemp(prefix="modelseal-bench-", suffix=".jsonl")
    log_path = results.rsplit(".", 1)[0] + ".log"
    env = dict(os.environ, BENCH_RESULTS=results)
    limit = float(os.environ.get("BENCH_MAX_LOAD", "0") or 0)
    failed = []
    with open(log_path, "a") as log:
        for name in only:
            if limit:
                wait_for_quiet(limit)
            load = os.getloadavg()[0]
            print(f"# bench/{name}.py (load {load:.2f}) ...", flush=True)
            log.write(f"\n===== bench/{name}.py, load {load:.2f}\n")
            log.flush()
            started = time.monotonic()
            proc = subprocess.run([sys.executable, os.path.join(HERE, f"{name}.py")], stdout=log,
                                  stderr=subprocess.STDOUT, env=dict(env, BENCH_START_LOAD=f"{load:.2f}"), cwd=HERE)
            print(f"#   {'ok' if proc.returncode == 0 else f'FAILED ({proc.returncode})'} "
                  f"in {time.monotonic() - started:.0f} s", flush=True)
            if proc.returncode != 0:
                failed.append(name)
    rows = []
    last = None
    if os.path.exists(results):
        with open(results) as f:
            for line in f:
                r = json.loads(line)
                bench = r["bench"] if r["bench"] != last else ""
                last = r["bench"]
                ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
                goal = ""
                if r["goal"] is not None and r["ratio"] is not None:
                    goal = f"{r['goal']:.2f}: {'met' if r['ratio'] >= r['goal'] else 'NOT MET'}"
                vs = r["vs"] if r["ratio"] is not None and r["vs"] != r["contender"] else ""
                rows.append([bench, r["contender"], f"{r['seconds']:.2f}" if r["seconds"] else "",
                             "" if r["mib_s"] is None else f"{r['mib_s']:.0f}",
                             f"{ratio} {'x ' + vs if vs else ''}".strip() if ratio else "",
                             goal, "" if r["rss_mib"] is None else f"{r['rss_mib']:.0f}",
                             f"{r.get('start_load', r['load']):.2f}",
                             r["note"]])
    for name in failed:
        rows.append([f"bench/{name}.py", "FAILED: see the log", "", "", "", "", "", "", ""])
    print()
    print(f"make bench: medians of interleaved rounds, {len(os.sched_getaffinity(0))} cores "
          "(ratio: the named baseline's time / this one's; above 1 is faster)\n")
    print(markdown(rows, ["benchmark", "contender", "seconds", "MiB/s", "ratio", "goal", "peak RSS MiB", "load at start",
                          "note"]))
    print(f"\ndetails: {log_path}\nrows: {results}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
