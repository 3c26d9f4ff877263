"""The short seeded soak (issue 25): bench/soak.py with a fixed seed and a small N, its invariants asserted.

The soak drives the real CLI as a black box: concurrent deliveries (`run`
and the four-stage chain) from s3rver, the registry and nginx through fault
proxies, with kills and retries, a full volume, too few descriptors, a
memory limit below the need and a key service that is slow or gone. What it
checks are deterministic properties (byte-exact or absent, a documented exit
code with its one line, nothing left, no secret logged); where a fault lands
depends on timing, so every documented outcome is accepted (a delivery that
succeeds before its kill fires is fine) and only a violation fails. The plan
covers every scenario (round-robin); SEED replays it: `python bench/soak.py
--seed 2025 --concurrency 8 --deliveries 48`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import need
from support.s3rver import missing as s3rver_missing

REPO = Path(__file__).resolve().parents[1]
SOAK = REPO / "bench" / "soak.py"
SEED, CONCURRENCY, DELIVERIES = 2025, 8, 48
DOCUMENTED = {2, 3, 4, 5, 6, 7, 130, 143}


def test_short_seeded_soak_loses_nothing_and_leaves_nothing(tmp_path: Path) -> None:
    need(s3rver_missing())
    for tool, where in (("nginx", "/usr/sbin:/usr/bin:/sbin:/bin"), ("docker-registry", None)):
        need("" if shutil.which(tool, path=where) else f"{tool} is not installed (tools/host-packages.sh)")
    need("" if os.geteuid() == 0 else "the soak's full volume and memory limit need root (a tmpfs, a cgroup)")
    out = tmp_path / "soak.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    # The timeout only catches a hang: the run takes about two minutes on two shared cores.
    p = subprocess.run([sys.executable, str(SOAK), "--seed", str(SEED), "--concurrency", str(CONCURRENCY),
                        "--deliveries", str(DELIVERIES), "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=1200)
    assert out.exists(), p.stdout[-3000:] + p.stderr[-3000:]
    s = json.loads(out.read_text())
    report = "\n".join(s["violations"]) + "\n" + p.stdout[-4000:]
    assert s["violations"] == [], report
    assert s["corrupt"] == 0 and s["leftovers"] == 0, report
    # a stage killed after its rename and restarted finds its own delivery (issue 25): never refuses it
    assert s["rerun_refused"] == 0, report
    assert p.returncode == 0, report
    assert s["seed"] == SEED and s["deliveries"] == DELIVERIES, report
    # every kind of trouble was planned, each at least three times
    assert len(s["by_scenario"]) == 15 and min(s["by_scenario"].values()) >= 3, s["by_scenario"]
    # every outcome is a delivery or a documented failure
    assert {int(k) for k in s["outcomes"]} <= {0} | DOCUMENTED, s["outcomes"]
    # scenarios that cannot succeed ended as documented: a memory limit below the need (exit 6, checked per
    # attempt by the soak: never an OOM kill) and a key service that never answers (exit 5)
    assert s["outcomes"].get("6", 0) >= s["by_scenario"]["memory-limit"], s["outcomes"]
    assert s["outcomes"].get("5", 0) >= s["by_scenario"]["key-down"], s["outcomes"]
    # and most deliveries arrived: a soak that delivers nothing proves nothing
    assert s["outcomes"].get("0", 0) >= DELIVERIES // 2, s["outcomes"]
    # the faults were served, not only planned (the first request of a delivery always meets its fault)
    for kind in ("reset", "cut", "short", "trickle", "5xx", "stall", "changed", "volume filled", "low nofile",
                 "memory limit", "key-slow"):
        assert s["faults"].get(kind, 0) >= 1, (kind, s["faults"])
