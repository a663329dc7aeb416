"""What a person sees while a deploy runs: the progress lines of a plan, a success and two rollbacks.

The output is the product's interface as much as its exit status: each step's line, in order, the
recovery steps by name, and where the lock and the record went. Timings, IDs and the test's
directory are normalised; everything else must read exactly as here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re

import pytest

from handover.engine import DeployOptions, Engine
from handover.errors import HealthCheckFailed, ReleaseFailed
from handover.progress import Progress

from .fakehost import Behaviour, FakeHost, Outcome

DRY_RUN = """\
==> plan (dry run: nothing changes)
    lock: take the deploy lock at <tmp>/deploy/.state/lock
    preflight: docker, compose v2, the compose file
    proxy config: validate the proxy's configuration if it changed (loaded at the switch)
    build: image handover-app:v2
    start: 1 new container of v2 beside 1 live
    health: wait until the new containers are healthy (up to 2 s), else remove them
    switch: route the proxy to them (atomic swap of nginx's live socket links; no reload)
    verify: the new containers keep serving for N s, the old ones still up, else switch back
    drain: stop handover-app-1 (grace 25 s), remove by ID
    prune: keep the last 5 release images
"""

SUCCESS = """\
==> lock: take the deploy lock at <tmp>/deploy/.state/lock
    ok in N s
==> preflight: docker, compose v2, the compose file
    ok in N s
==> proxy config: validate the proxy's configuration if it changed (loaded at the switch)
    ok in N s (unchanged)
==> build: image handover-app:v2
    ok in N s
==> start: 1 new container of v2 beside 1 live
    ok in N s (handover-app-2)
==> health: wait until the new containers are healthy (up to 2 s), else remove them
    ok in N s
==> switch: route the proxy to them (atomic swap of nginx's live socket links; no reload)
    ok in N s
==> verify: the new containers keep serving for N s, the old ones still up, else switch back
    ok in N s
==> drain: stop handover-app-1 (grace 25 s), remove by ID
    ok in N s
==> prune: keep the last 5 release images
    ok in N s
    lock released
    record appended to <tmp>/deploy/.state/releases.jsonl
"""

HEALTH = """\
==> lock: take the deploy lock at <tmp>/deploy/.state/lock
    ok in N s
==> preflight: docker, compose v2, the compose file
    ok in N s
==> proxy config: validate the proxy's configuration if it changed (loaded at the switch)
    ok in N s (unchanged)
==> build: image handover-app:v2
    ok in N s
==> start: 1 new container of v2 beside 1 live
    ok in N s (handover-app-2)
==> health: wait until the new containers are healthy (up to 2 s), else remove them
    failed in N s
==> rollback: remove the new containers; the old version keeps serving
    ok in N s
    lock released
    record appended to <tmp>/deploy/.state/releases.jsonl
"""

VERIFY = """\
==> lock: take the deploy lock at <tmp>/deploy/.state/lock
    ok in N s
==> preflight: docker, compose v2, the compose file
    ok in N s
==> proxy config: validate the proxy's configuration if it changed (loaded at the switch)
    ok in N s (unchanged)
==> build: image handover-app:v2
    ok in N s
==> start: 1 new container of v2 beside 1 live
    ok in N s (handover-app-2)
==> health: wait until the new containers are healthy (up to 2 s), else remove them
    ok in N s
==> switch: route the proxy to them (atomic swap of nginx's live socket links; no reload)
    ok in N s
==> verify: the new containers keep serving for N s, the old ones still up, else switch back
    failed in N s
==> switch back: route the proxy to the old containers again
    ok in N s
==> rollback: remove the new containers; the old version keeps serving
    ok in N s
    lock released
    record appended to <tmp>/deploy/.state/releases.jsonl
"""



def normalised(text: str, host: FakeHost) -> str:
    text = text.replace(str(host.root), "<tmp>")
    text = re.sub(r"\d+\.\d\d s", "N s", text)
    return re.sub(r"[0-9a-f]{12}", "<id>", text)


def run(host: FakeHost, options: DeployOptions) -> str:
    assert Engine(host.runner, host.settings, Progress(quiet=True)).up("v1").result == "success"
    stream = io.StringIO()
    engine = Engine(host.runner, host.settings, Progress(stream=stream))
    with contextlib.suppress(HealthCheckFailed):
        engine.deploy(options)
    return normalised(stream.getvalue(), host)


@pytest.mark.parametrize(
    ("behaviour", "options", "expected"),
    [
        (None, DeployOptions(version="v2", dry_run=True), DRY_RUN),
        (None, DeployOptions(version="v2"), SUCCESS),
        (Behaviour(never_healthy=True), DeployOptions(version="v2"), HEALTH),
        (Behaviour(dies_after=2), DeployOptions(version="v2"), VERIFY),
    ],
    ids=["dry-run", "success", "health-fails", "dies-after-the-switch"],
)
def test_the_progress_a_person_reads(fake_host: FakeHost, behaviour: Behaviour | None, options: DeployOptions,
                                     expected: str) -> None:
    if behaviour is not None:
        fake_host.behave("v2", behaviour)
    assert run(fake_host, options) == expected
    fake_host._end_background()


RELEASE_FAILS = """\
==> lock: take the deploy lock at <tmp>/deploy/.state/lock
    ok in N s
==> preflight: docker, compose v2, the compose file
    ok in N s
==> proxy config: validate the proxy's configuration if it changed (loaded at the switch)
    ok in N s (unchanged)
==> build: image handover-app:v2
    ok in N s
==> release: run `python -m app.migrate` once in a one-off container of handover-app:v2 with the app's env file \
(up to 300 s); not undone: it must suit the running version too
    failed in N s
    lock released
    record appended to <tmp>/deploy/.state/releases.jsonl
"""


def test_the_progress_of_a_failed_release_command(fake_host: FakeHost) -> None:
    """The release step's plan line, and a failure that stops the run before anything starts."""
    fake_host.settings = dataclasses.replace(fake_host.settings, release_command=("python", "-m", "app.migrate"))
    assert Engine(fake_host.runner, fake_host.settings, Progress(quiet=True)).up("v1").result == "success"
    fake_host.release_outcome = lambda argv, env: Outcome(stderr="no such table: users\n", exited=1)
    stream = io.StringIO()
    with pytest.raises(ReleaseFailed, match=r"exited 1; no new container was started.*\nno such table: users"):
        Engine(fake_host.runner, fake_host.settings, Progress(stream=stream)).deploy(DeployOptions(version="v2"))
    assert normalised(stream.getvalue(), fake_host) == RELEASE_FAILS
