"""Benchmark, not a test (run by name): a deploy's own overhead over SSH, this checkout against another.

Two sshd "hosts" of the lab in tests/integration/test_remote.py, one deployed by the copy of the
project at ``HANDOVER_BENCH_OLD`` (e.g. ``git archive <commit> | tar -x -C DIR``), one by this
checkout, in turns: ``fab deploy --force`` of the version live on each, ``HANDOVER_BENCH_RUNS`` times.
Per run: the fab process's wall time, the record's, the new container's time to healthy (the
``start`` and ``health`` steps), every step's seconds, and the SSH commands the host's sshd started
(its log's "Starting session" lines)::

    HANDOVER_BENCH_OLD=/tmp/old HANDOVER_TEST_SSH_NET=127.0.46 PYTHONPATH=$PWD \
        python -m pytest tests/integration/bench_ssh_overhead.py -s -p no:randomly
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from .conftest import LAB_TAG
from .test_remote import ROOT, HostSetup, Lab, loopback, open_lab

RUNS = int(os.environ.get("HANDOVER_BENCH_RUNS", "4"))
OLD = Path(os.environ.get("HANDOVER_BENCH_OLD", "/nonexistent"))
PORT_BASE = int(os.environ.get("HANDOVER_TEST_PORT", "19800")) + 50


def one_run(lab: Lab, config: Path, host: HostSetup, root: Path) -> dict[str, object]:
    log = host.server.log
    sessions = log.read_text(errors="replace").count("Starting session")
    t0 = time.monotonic()
    lab.fab(config, [host], "deploy", "--force", root=root)
    wall = time.monotonic() - t0
    time.sleep(0.5)
    rec = json.loads((host.deploy_dir / ".state" / "releases.jsonl").read_text().splitlines()[-1])
    steps = {s["name"]: s["seconds"] for s in rec["steps"]}
    healthy = steps.get("start", 0.0) + steps.get("health", 0.0)
    started, finished = rec["started_at"], rec["finished_at"]
    from datetime import datetime
    record_wall = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    return {"result": rec["result"], "wall": round(wall, 2), "record": round(record_wall, 2),
            "healthy": round(healthy, 2), "wall-healthy": round(wall - healthy, 2),
            "record-healthy": round(record_wall - healthy, 2),
            "ssh": log.read_text(errors="replace").count("Starting session") - sessions,
            "steps": {k: round(v, 2) for k, v in steps.items()}}


def test_bench(tmp_path_factory: pytest.TempPathFactory) -> None:
    assert (OLD / "fabfile").is_dir(), f"HANDOVER_BENCH_OLD={OLD} is not a copy of the project"
    with open_lab(tmp_path_factory, "bench", f"ssc{LAB_TAG}-bench", [loopback(2), loopback(3)],
                  port_base=PORT_BASE) as lab:
        old, new = lab.hosts("old", lab.ssh.servers[:1]) + lab.hosts("new", lab.ssh.servers[1:2])
        sides = {"old": (old, OLD), "new": (new, ROOT)}
        configs = {}
        for name, (host, root) in sides.items():
            configs[name] = lab.config(f"bench-{name}", [host])
            lab.fab(configs[name], [host], "setup", root=root)
            lab.fab(configs[name], [host], "deploy", root=root)
            lab.fab(configs[name], [host], "deploy", "--force", root=root)  # a release of this tool's own
        for n in range(RUNS):
            for name, (host, root) in sides.items():
                load = os.getloadavg()[0]
                row = one_run(lab, configs[name], host, root)
                print(f"{name} run {n + 1} load {load:.1f}: {json.dumps(row)}", flush=True)
