"""The fault run: deploys and rollbacks under the load probe, each with one fault at a random moment.

Every faulted run is followed by a clean deploy, and named invariants are checked after both:
one version live and serving, no orphan app container, the lock released (or held by a dead
holder that the next run takes over), one record per run that says what happened, a clean probe.
The seed decides every choice (the action, the fault, its moment), so a failure replays with it.

It drives the real front door (``inv local.deploy`` / ``inv local.rollback``) in a process of its
own on a stack of its own (project, port, image and a small tmpfs state directory), and is used by
``tests/integration/test_fault_run.py`` (a short run) and ``inv faults`` (a long one).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from invoke.context import Context

from handover import cli
from handover import settings as settings_mod
from handover.engine import Engine, Facts
from handover.lock import FLOCK_FILE
from handover.probe import Probe, ProbeSettings
from handover.probe.report import ProbeReport
from handover.progress import Progress
from handover.record import RELEASE_LOG

ROOT = Path(__file__).resolve().parents[1]
INV = [sys.executable, "-m", "invoke"]
PROJECT = "hfr-local"
PORT = 18400
STATE_DIR = ".state-hfr"
APP_IMAGE = "hfr-app"
VERSIONS = ("fr-a", "fr-b", "fr-c")
TMPFS_SIZE = "16m"
FILL_FILE = "fill.bin"
FILL_CHUNKS = (1 << 20, 1 << 12, 1)  # big first, then down to the last byte
DRAIN_TIMEOUT = "1"
STOP_GRACE_PERIOD = "4"
PROBE_RATE = 20.0
PROBE_WS_CLIENTS = 5
PROBE_SETTLE_SECONDS = 0.2
PROBE_SAMPLES = 2
OUTPUT_LINES = 40  # of a failed run's output, printed with its line
HEALTH_WAIT_SECONDS = 30.0
RUN_TIMEOUT = 180.0
SETUP_TIMEOUT = 600.0
GROUP_EXIT_TIMEOUT = 60.0
SERVE_WAIT_SECONDS = 15.0
HTTP_TIMEOUT = 3.0
POLL_SECONDS = 0.05
STEP_DELAY_MAX = 0.8  # after the "==> <step>" line, the fault waits up to this long
APP_DELAY_MAX = 3.0  # after the new container appears, an app fault waits up to this long
PAUSE_MIN, PAUSE_MAX = 1.0, 3.0
OOM_MARGIN_BYTES = 1 << 20
LIFTED_MEMORY_LIMIT = "1g"  # Docker cannot lift a limit, only raise it
OOM_TINY_FACTOR = 6  # Docker's smallest memory limit is 6 MiB
USAGE_WORDS = re.compile(r"current usage: (\d+)")
EXIT_INTERRUPTED = 130

SIGKILL, SIGINT = "sigkill", "sigint"
APP_KILL, APP_OOM, APP_PAUSE = "app-kill", "app-oom", "app-pause"
PROXY_KILL, DISK_FULL = "proxy-kill", "disk-full"
FAULTS = (SIGKILL, SIGINT, APP_KILL, APP_OOM, APP_PAUSE, PROXY_KILL, DISK_FULL)
APP_FAULTS = (APP_KILL, APP_OOM, APP_PAUSE)
DEPLOY_STEPS = ("lock", "preflight", "proxy config", "build", "start", "health", "switch", "verify", "drain",
                "prune")
ROLLBACK_STEPS = tuple("image" if step == "build" else step for step in DEPLOY_STEPS)
FORWARD_STEPS = ("drain", "prune")  # from the drain on a run finishes instead of undoing
TAKEOVER_WORDS = "took over the deploy lock"
UNWRITTEN_RECORD_WORDS = "could not write the run record"
CLEAN = "clean"
BEFORE_RUN = "(before the run)"  # a disk may be full before the tool even starts
STOPPED = ("exited", "dead")


class FaultRunError(RuntimeError):
    """The fault run could not be set up (no Docker, no tmpfs)."""


@dataclass
class FaultPlan:
    """One run: what it does, which fault, and when."""

    number: int
    action: str  # deploy or rollback
    version: str  # the deploy's version; empty for a rollback (it goes to the previous one)
    fault: str  # one of FAULTS, or CLEAN
    step: str = ""  # the "==> <step>" line the fault waits for (signals, proxy, disk)
    delay: float = 0.0  # then this long (or after the new container appears, for app faults)
    hold: float = 0.0  # how long a pause lasts

    @property
    def moment(self) -> str:
        if self.fault == CLEAN:
            return "-"
        if self.fault in APP_FAULTS:
            when = f"new container +{self.delay:.2f} s"
            return when + (f" for {self.hold:.1f} s" if self.hold else "")
        return self.step if self.step == BEFORE_RUN else f"{self.step} +{self.delay:.2f} s"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class RunResult:
    plan: FaultPlan
    exit_code: int | None
    output: str
    applied: str  # what the fault did, or why it did not happen
    result: str  # the run's record result, "(none)" when no record was written
    serving: str  # the version serving after the run
    probe: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def verdict(self) -> str:
        if self.failed:
            return "FAILED " + ", ".join(c.name for c in self.failed)
        expected = [c.name for c in self.checks if c.ok and c.detail.startswith("expected")]
        return f"ok (expected under this fault: {', '.join(expected)})" if expected else "ok"


@dataclass
class FaultRunReport:
    seed: int
    runs: list[RunResult]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.runs)

    def failures(self) -> list[str]:
        """One line per broken invariant, naming the seed, the run, the fault and the invariant."""
        return [f"seed {self.seed}, run {r.plan.number} ({r.plan.action}), fault {r.plan.fault} at {r.plan.moment}, "
                f"invariant {c.name}: {c.detail}" for r in self.runs for c in r.failed]

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per fault kind: (runs tried, runs whose invariants all held)."""
        tried: Counter[str] = Counter(r.plan.fault for r in self.runs)
        passed: Counter[str] = Counter(r.plan.fault for r in self.runs if r.ok)
        return {kind: (tried[kind], passed[kind]) for kind in (*FAULTS, CLEAN) if tried[kind]}

    def format(self) -> str:
        lines = [f"fault run: seed {self.seed}, {len(self.runs)} runs in {self.seconds:.0f} s", "",
                 f"{'fault':<11} {'tried':>5} {'passed':>6}"]
        lines += [f"{kind:<11} {n:>5} {ok:>6}" for kind, (n, ok) in self.counts().items()]
        lines += ["", f"{'#':>3} {'action':<8} {'fault':<10} {'moment':<28} {'exit':>4} {'record':<11} "
                      f"{'serves':<6} {'probe':<44} invariants / what the fault did"]
        for r in self.runs:
            lines.append(f"{r.plan.number:>3} {r.plan.action:<8} {r.plan.fault:<10} {r.plan.moment:<28} "
                         f"{'-' if r.exit_code is None else r.exit_code:>4} {r.result:<11} {r.serving:<6} "
                         f"{r.probe:<44} {r.verdict}; {r.applied}")
        expected = [f"run {r.plan.number} {r.plan.fault} at {r.plan.moment}, {c.name}: {c.detail}"
                    for r in self.runs for c in r.checks if c.ok and c.detail.startswith("expected")]
        if expected:
            lines += ["", "expected under the fault (not failures):", *expected]
        failures = self.failures()
        if failures:
            lines += ["", "failures:", *failures]
        return "\n".join(lines)


def plan_runs(seed: int, count: int) -> list[FaultPlan]:
    """``count`` faulted runs: the kinds in shuffled rounds (each kind equally often), the rest random."""
    rng = random.Random(seed)
    kinds: list[str] = []
    while len(kinds) < count:
        block = list(FAULTS)
        rng.shuffle(block)
        kinds += block
    plans = []
    for number, kind in enumerate(kinds[:count], start=1):
        action = "rollback" if rng.random() < 0.4 else "deploy"
        steps = ROLLBACK_STEPS if action == "rollback" else DEPLOY_STEPS
        plan = FaultPlan(number=number, action=action, version="", fault=kind)
        if kind in APP_FAULTS:
            plan.delay = round(rng.uniform(0.0, APP_DELAY_MAX), 2)
            plan.hold = round(rng.uniform(PAUSE_MIN, PAUSE_MAX), 1) if kind == APP_PAUSE else 0.0
        else:
            plan.step = rng.choice((BEFORE_RUN, *steps) if kind == DISK_FULL else steps)
            plan.delay = round(rng.uniform(0.0, STEP_DELAY_MAX), 2)
        plans.append(plan)
    return plans


# -- the stack ---------------------------------------------------------------------------------------
def stack_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "INVOKE_DEPLOY_PROJECT": PROJECT,
        "INVOKE_DEPLOY_HTTP_PORT": str(PORT),
        "INVOKE_DEPLOY_STATE_DIR": STATE_DIR,
        "INVOKE_DEPLOY_APP_IMAGE": APP_IMAGE,
        "INVOKE_DEPLOY_DRAIN_TIMEOUT": DRAIN_TIMEOUT,
        "INVOKE_DEPLOY_STOP_GRACE_PERIOD": STOP_GRACE_PERIOD,
    })
    return env


def stack_settings() -> settings_mod.Settings:
    section = dict(cli.defaults()["deploy"])
    section.update({"project": PROJECT, "http_port": PORT, "state_dir": STATE_DIR, "app_image": APP_IMAGE,
                    "drain_timeout": float(DRAIN_TIMEOUT), "stop_grace_period": float(STOP_GRACE_PERIOD)})
    return settings_mod.load(section)


def sh(*argv: str, check: bool = False, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=timeout,
                          stdin=subprocess.DEVNULL)


class Stack:
    """The fault run's own stack: `inv local.*` in subprocesses, facts read in this process."""

    def __init__(self) -> None:
        self.env = stack_env()
        self.settings = stack_settings()
        self.state = Path(self.settings.state_path)
        self.engine = Engine(Context(), self.settings, Progress(quiet=True))
        self.url = f"http://{self.settings.http_bind}:{PORT}"
        self.mounted = False

    def inv(self, *args: str, timeout: float = SETUP_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*INV, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def setup(self) -> None:
        if sh("docker", "info").returncode != 0:
            raise FaultRunError("the Docker engine is not running (scripts/bootstrap.sh starts it)")
        self.inv("local.down")
        self.state.mkdir(exist_ok=True)
        if not os.path.ismount(self.state):
            mounted = sh("mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(self.state))
            if mounted.returncode != 0:
                raise FaultRunError(f"cannot mount a tmpfs on {self.state} for the disk-full fault (needs root): "
                                    f"{mounted.stderr.strip()}")
            self.mounted = True
        for version in VERSIONS[1:]:  # every image of the pool exists, so rollbacks have somewhere to go
            self.deploy_clean(version, "up" if version == VERSIONS[1] else "deploy")
        self.deploy_clean(VERSIONS[0], "deploy")

    def deploy_clean(self, version: str, task: str) -> None:
        args = ["local.up", "--version", version] if task == "up" else ["local.deploy", "--version", version]
        result = self.inv(*args)
        if result.returncode != 0:
            raise FaultRunError(f"inv {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")

    def teardown(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.state / FILL_FILE).unlink()
        self.inv("local.down")
        if self.mounted:
            sh("umount", str(self.state))
            with contextlib.suppress(OSError):
                (self.state / FLOCK_FILE).unlink(missing_ok=True)  # made by a look at the lock while unmounted
                self.state.rmdir()
        images = sh("docker", "image", "ls", APP_IMAGE, "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        if images:
            sh("docker", "image", "rm", *images)

    def facts(self) -> Facts:
        return self.engine.facts()

    def live_stopped(self) -> bool:
        """A live container is stopped for good (``docker kill`` is a manual stop: no restart policy)."""
        return any(c.status in STOPPED for c in self.facts().live)

    def app_ids(self) -> list[str]:
        out = sh("docker", "ps", "--all", "--no-trunc", "--quiet", "--filter",
                 f"label=com.docker.compose.project={PROJECT}", "--filter", "label=com.docker.compose.service=app")
        return out.stdout.split()

    def records(self) -> list[dict[str, object]]:
        path = self.state / RELEASE_LOG
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict):
                    out.append(item)
        return out

    def served_version(self) -> str:
        try:
            response = requests.get(f"{self.url}/api/info", timeout=HTTP_TIMEOUT)
        except requests.RequestException as exc:
            return f"(down: {type(exc).__name__})"
        if response.status_code != requests.codes.ok:
            return f"(HTTP {response.status_code})"
        return str(response.json().get("version", "(no version)"))

    def flock_free(self) -> bool:
        return sh("flock", "-n", str(self.state / FLOCK_FILE), "true").returncode == 0

    def main_pid(self, container_id: str) -> int:
        out = sh("docker", "inspect", "--format", "{{.State.Pid}}", container_id).stdout.strip()
        return int(out) if out.isdigit() else 0


# -- one run -----------------------------------------------------------------------------------------
class Watcher:
    """Reads a run's merged output, noting each "==> <step>:" line as it appears."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self.steps: set[str] = set()
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line)
                if line.startswith("==> ") and ":" in line:
                    self.steps.add(line[4:line.index(":")])
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_step(self, step: str, timeout: float) -> bool:
        """True once the step's line is seen; False if the run ended (or timed out) first."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while step not in self.steps:
                if not self.thread.is_alive() or time.monotonic() > deadline:
                    return False
                self.changed.wait(POLL_SECONDS * 4)
        return True

    @property
    def output(self) -> str:
        self.thread.join(timeout=5)
        return "".join(self.lines)


def fill_disk(path: Path) -> int:
    """Write zeros to ``path`` until its filesystem has no byte left; the bytes written."""
    written = 0
    with path.open("ab", buffering=0) as handle:
        for size in FILL_CHUNKS:
            chunk = bytes(size)
            while True:
                try:
                    handle.write(chunk)
                except OSError:
                    break
                written += size
    return written


def squeeze_memory(container_id: str, serving: Callable[[], bool]) -> tuple[str, bool]:
    """Cap the container's memory just above what it uses now, so its next allocations OOM-kill it.

    Docker refuses a limit below the current usage and says the usage; that figure sets the cap.
    Returns what happened and whether the OOM kill struck while the container was serving.
    """
    tiny = str(OOM_MARGIN_BYTES * OOM_TINY_FACTOR)
    first = sh("docker", "update", "--memory", tiny, "--memory-swap", tiny, container_id)
    if first.returncode == 0:
        limit = int(tiny)
    else:
        usage = USAGE_WORDS.search(first.stderr)
        if not usage:
            return f"not applied: docker update refused ({first.stderr.strip()[:80]})", False
        limit = int(usage.group(1)) + OOM_MARGIN_BYTES
        again = sh("docker", "update", "--memory", str(limit), "--memory-swap", str(limit), container_id)
        if again.returncode != 0:
            return f"not applied: docker update refused ({again.stderr.strip()[:80]})", False
    deadline = time.monotonic() + PAUSE_MAX
    oom, hit_serving = "", False
    while time.monotonic() < deadline and oom not in ("true", "gone"):
        state = sh("docker", "inspect", "--format", "{{.State.OOMKilled}}", container_id)
        oom = state.stdout.strip() if state.returncode == 0 else "gone"
        hit_serving = oom == "true" and serving()
        time.sleep(POLL_SECONDS * 4)
    return f"memory capped at {limit / (1 << 20):.1f} MiB; OOM-killed: {oom}", hit_serving


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class FaultRun:
    """Runs the planned faults on the stack and checks the invariants after each run."""

    def __init__(self, seed: int, count: int, say: Callable[[str], None] = print) -> None:
        self.seed = seed
        self.count = count
        self.say = say
        self.stack = Stack()
        self.rng = random.Random(seed ^ 0x5EED)  # the clean runs' versions; independent of the plans
        self.hit_serving = False  # the fault struck a process that served traffic (the proxy, a switched-to app)
        self.committed = False  # the fault struck after the drain began: the new version alone serves
        self.outage = False  # the last run left nothing serving, as its fault had to
        self.filled = ""  # what a disk-full fault before the run did

    def run(self) -> FaultRunReport:
        self.say(f"fault run: seed {self.seed} ({self.count} faulted runs, each followed by a clean deploy); "
                 f"replay with: inv faults --deploys {self.count} --seed {self.seed}")
        t0 = time.monotonic()
        results: list[RunResult] = []
        try:
            self.say(f"setting up {PROJECT} on port {PORT} with the images {', '.join(VERSIONS)}")
            self.stack.setup()
            for plan in plan_runs(self.seed, self.count):
                for one in (plan, self._clean_plan(plan.number)):
                    result = self.one(one)
                    results.append(result)
                    self.say(self._line(result))
                    if not result.ok:  # what the tool said, to see where the fault struck
                        self.say("\n".join("    | " + line for line in result.output.splitlines()[-OUTPUT_LINES:]))
                    if not result.ok and one.fault == CLEAN:
                        self._repair()
        finally:
            self.stack.teardown()
        return FaultRunReport(self.seed, results, time.monotonic() - t0)

    def _clean_plan(self, number: int) -> FaultPlan:
        return FaultPlan(number=number, action="deploy", version="", fault=CLEAN)

    def _line(self, r: RunResult) -> str:
        status = r.verdict if r.ok else "FAILED " + "; ".join(f"{c.name}: {c.detail}" for c in r.failed)
        return (f"run {r.plan.number} {r.plan.action} {r.plan.fault} at {r.plan.moment}: exit {r.exit_code}, "
                f"record {r.result}, serves {r.serving}; {r.applied}; {r.probe}; {status}")

    def _repair(self) -> None:
        """A clean deploy failed: start over from a fresh stack so the following runs mean something."""
        self.say("! a clean deploy failed; rebuilding the stack before the next run")
        self.stack.inv("local.unlock")
        self.stack.inv("local.down")
        self.stack.deploy_clean(VERSIONS[0], "up")

    def _pick_version(self, live: str) -> str:
        return self.rng.choice([v for v in VERSIONS if v != live])

    # -- one run ---------------------------------------------------------------------------------
    def one(self, plan: FaultPlan) -> RunResult:
        stack = self.stack
        before = stack.facts()
        known = {c.id for c in before.instances}
        records_before = len(stack.records())
        lock_was_stale = stack.engine.lock.holder() is not None
        if plan.action == "deploy":
            plan.version = self._pick_version(before.live_version)
            args = ["local.deploy", "--version", plan.version]
        else:
            args = ["local.rollback"]
        self.hit_serving = plan.fault == PROXY_KILL
        self.committed = False
        probe: Probe | None = None
        if not self.outage:  # else nothing serves: the probe could not even connect
            probe = Probe(ProbeSettings(base_url=stack.url, rate=PROBE_RATE, ws_clients=PROBE_WS_CLIENTS))
            probe.start()
        self.outage = False
        if plan.fault == DISK_FULL and plan.step == BEFORE_RUN:
            self.filled = f"state filesystem filled ({fill_disk(stack.state / FILL_FILE) >> 20} MiB)"
        try:
            process = subprocess.Popen([*INV, *args], cwd=ROOT, env=stack.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
            watcher = Watcher(process)
            try:
                applied = self._apply(plan, process, watcher, known)
                exit_code: int | None = process.wait(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                exit_code = None
                applied = "the run did not end in time"
            finally:
                self._undo_fault(plan)
            self._wait_group(process.pid)
            self._wait_healthy()
            time.sleep(PROBE_SETTLE_SECONDS)
        finally:
            report = probe.stop() if probe else None
        output = watcher.output
        return self._check(plan, before, records_before, lock_was_stale, exit_code, output, applied, report)

    def _apply(self, plan: FaultPlan, process: subprocess.Popen[str], watcher: Watcher, known: set[str]) -> str:
        if plan.fault == CLEAN:
            return "no fault"
        if plan.fault in APP_FAULTS:
            return self._app_fault(plan, process, watcher, known)
        if plan.step == BEFORE_RUN:
            return self.filled  # done before the run started
        if not watcher.wait_step(plan.step, RUN_TIMEOUT):
            return f"not applied: the run never reached {plan.step}"
        time.sleep(plan.delay)
        if process.poll() is not None:
            return f"not applied: the run had ended (exit {process.returncode})"
        if plan.fault == SIGKILL:
            process.kill()  # the tool's own process; its children (compose, the lock's keeper) stay
            return f"SIGKILL to pid {process.pid}"
        if plan.fault == SIGINT:
            os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
            return "SIGINT to the run's process group"
        if plan.fault == PROXY_KILL:
            proxy = self.stack.facts().proxy
            pid = self.stack.main_pid(proxy.id) if proxy else 0
            if not pid:
                return "not applied: no proxy running"
            os.kill(pid, signal.SIGKILL)  # its main process dies; Docker's restart policy brings it back
            return f"proxy's main process {pid} killed"
        if plan.fault == DISK_FULL:
            return f"state filesystem filled ({fill_disk(self.stack.state / FILL_FILE) >> 20} MiB)"
        raise AssertionError(plan.fault)

    def _app_fault(self, plan: FaultPlan, process: subprocess.Popen[str], watcher: Watcher, known: set[str]) -> str:
        stack = self.stack

        def serving() -> bool:  # the new container gets traffic from the switch on
            return "switch" in watcher.steps or process.poll() is not None

        new = ""
        while not new:
            if process.poll() is not None:
                return "not applied: no new container appeared during the run"
            ids = stack.app_ids()
            new = next((cid for cid in ids if cid not in known), "")
            if not new:
                time.sleep(POLL_SECONDS)
        time.sleep(plan.delay)
        if process.poll() is not None:
            return "not applied: the run had ended"
        short = new[:12]
        self.hit_serving = serving()
        self.committed = "drain" in watcher.steps or process.poll() is not None
        if plan.fault == APP_KILL:
            done = sh("docker", "kill", new)
            return f"docker kill {short}: " + ("done" if done.returncode == 0 else done.stderr.strip()[:60])
        if plan.fault == APP_OOM:
            what, self.hit_serving = squeeze_memory(new, serving)
            return f"{short}: {what}"
        if plan.fault == APP_PAUSE:
            self.hit_serving = serving()
            if sh("docker", "pause", new).returncode != 0:
                return f"not applied: {short} could not be paused"
            time.sleep(plan.hold)
            # A switch during the pause sent traffic to a frozen process: what was in it could not finish.
            self.hit_serving = self.hit_serving or serving()
            sh("docker", "unpause", new)
            return f"{short} paused {plan.hold:.1f} s"
        raise AssertionError(plan.fault)

    def _undo_fault(self, plan: FaultPlan) -> None:
        """What the fault left that is not the engine's to clear: the fill file, a paused container."""
        if plan.fault == DISK_FULL:
            with contextlib.suppress(FileNotFoundError):
                (self.stack.state / FILL_FILE).unlink()
        if plan.fault == APP_PAUSE:
            for cid in self.stack.app_ids():
                sh("docker", "unpause", cid)
        if plan.fault == APP_OOM:
            for cid in self.stack.app_ids():
                sh("docker", "update", "--memory", LIFTED_MEMORY_LIMIT, "--memory-swap", LIFTED_MEMORY_LIMIT, cid)

    def _wait_healthy(self) -> None:
        """A live container that a fault crashed is restarted by Docker; the checks look at the state after."""
        deadline = time.monotonic() + HEALTH_WAIT_SECONDS
        while time.monotonic() < deadline:
            live = self.stack.facts().live
            if (live and all(c.is_healthy for c in live)) or self.stack.live_stopped():
                return
            time.sleep(POLL_SECONDS * 4)

    def _wait_group(self, pgid: int) -> None:
        """After a SIGKILL the tool's children (a compose call, the lock's keeper) finish on their own."""
        deadline = time.monotonic() + GROUP_EXIT_TIMEOUT
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS * 4)

    # -- the invariants --------------------------------------------------------------------------
    def _check(self, plan: FaultPlan, before: Facts, records_before: int, lock_was_stale: bool,
               exit_code: int | None, output: str, applied: str, report: ProbeReport | None) -> RunResult:
        stack = self.stack
        killed = plan.fault == SIGKILL and applied.startswith("SIGKILL")
        checks: list[Check] = []
        served = self._wait_serving()
        facts = stack.facts()
        live = facts.live_version
        checks.append(Check("run-ended", exit_code is not None, "the run did not end within "
                                                                 f"{RUN_TIMEOUT:g} s"))
        one_version = bool(facts.serving) and len({c.version for c in facts.live}) == 1 and served == live
        what = f"live {live or '(none)'}, /api/info says {served}, proxy {'up' if facts.proxy else 'down'}"
        # The engine's own record tells best whether the new version died past the commit point (the
        # progress line "==> drain" reaches the watcher a moment after the drain began).
        recorded = stack.records()[records_before:]
        committed = self.committed or any(r.get("failed_step") == "drain" for r in recorded)
        if not one_version and plan.fault == APP_KILL and committed:
            # docker kill is a manual stop: no restart policy brings back the one version left serving.
            self.outage = True
            checks.append(Check("one-version-serving", True, f"expected: the new version was killed after the "
                                                              f"drain began, the clean run restores it ({what})"))
        else:
            checks.append(Check("one-version-serving", one_version, what))
        orphans = [c.name for c in facts.leftovers]
        checks.append(Check("no-orphan", killed or not orphans, f"not live: {', '.join(orphans)}"))
        checks.append(self._lock_check(killed))
        records = stack.records()
        new_lines = len(records) - records_before
        last = records[-1] if new_lines > 0 else {}
        result = str(last.get("result", "(none)"))
        interrupted = plan.fault == SIGINT and applied.startswith("SIGINT")
        checks.append(self._record_check(plan, killed, interrupted, new_lines, last, live, exit_code, output))
        if plan.fault == CLEAN and lock_was_stale:
            taken = TAKEOVER_WORDS in output
            applied += "; the lock's holder was dead: " + ("taken over" if taken else "NOT taken over")
            checks.append(Check("lock-taken-over", TAKEOVER_WORDS in output,
                                "the run after a killed one did not say it took over the lock"))
        if report is None:
            checks.append(Check("probe-clean", True, "skipped: nothing served before this run"))
            return RunResult(plan, exit_code, output, applied, result, served, "probe skipped", checks)
        reasons = "; ".join(report.failure_reasons() + list(report.http.error_samples[:PROBE_SAMPLES]))
        if self.hit_serving and not report.ok:
            checks.append(Check("probe-clean", True, f"expected: the fault hit a serving process ({reasons})"))
        else:
            checks.append(Check("probe-clean", report.ok, reasons))
        return RunResult(plan, exit_code, output, applied, result, served, probe_summary(report), checks)

    def _wait_serving(self) -> str:
        """The version /api/info answers with, waiting a little for a proxy that is coming back."""
        deadline = time.monotonic() + SERVE_WAIT_SECONDS
        served = self.stack.served_version()
        while served.startswith("(") and time.monotonic() < deadline and not self.stack.live_stopped():
            time.sleep(POLL_SECONDS * 4)
            served = self.stack.served_version()
        return served

    def _lock_check(self, killed: bool) -> Check:
        holder = self.stack.engine.lock.holder()
        if holder is None:
            return Check("lock-released", True)
        if killed and self.stack.flock_free():
            return Check("lock-released", True, "held by a dead holder (taken over by the next run)")
        alive = "its flock is still held" if not self.stack.flock_free() else "its holder is dead"
        return Check("lock-released", False, f"still held by {holder.get('action', '?')} "
                                             f"{holder.get('version', '')} ({alive})")

    @staticmethod
    def _record_check(plan: FaultPlan, killed: bool, interrupted: bool, new_lines: int, last: dict[str, object],
                      live: str, exit_code: int | None, output: str) -> Check:
        name = "record"
        allowed = {0, 1} if killed else ({0, 1} if plan.fault == DISK_FULL and UNWRITTEN_RECORD_WORDS in output
                                         else {1})
        if new_lines not in allowed:
            return Check(name, False, f"{new_lines} new lines in the release log (expected "
                                      f"{' or '.join(map(str, sorted(allowed)))})")
        if not last:
            return Check(name, True, "no line: " + ("the run was killed" if killed else "the disk was full"))
        result = str(last.get("result", ""))
        version, previous = str(last.get("version", "")), str(last.get("previous_version", ""))
        if plan.action == "deploy" and version != plan.version:
            return Check(name, False, f"the last line is for {version}, not {plan.version}")
        if result == "success" and live != version:
            return Check(name, False, f"says success for {version} but {live or 'nothing'} is live")
        if result == "failed" and last.get("failed_step") in FORWARD_STEPS:
            if live != version:  # past the commit point nothing is undone: the new version is the live one
                return Check(name, False, f"says failed at {last.get('failed_step')} (after the commit point) but "
                                          f"{live or 'nothing'} is live, not {version}")
        elif result in ("failed", "rolled-back") and live != previous:
            return Check(name, False, f"says {result} but {live or 'nothing'} is live, not {previous}")
        if result not in ("success", "failed", "rolled-back"):
            return Check(name, False, f"unexpected result {result!r}")
        if exit_code is not None and not killed:
            matches = (result == "success") == (exit_code == 0)
            if not matches and not (interrupted and exit_code == EXIT_INTERRUPTED):
                return Check(name, False, f"exit {exit_code} does not match the result {result}")
        return Check(name, True)


def probe_summary(report: ProbeReport) -> str:
    http, ws = report.http, report.ws
    return (f"http {http.completed_ok}/{http.sent} ok, ws {ws.messages_acked}/{ws.messages_sent} acked "
            f"{ws.lost} lost {ws.abnormal_total} abn")


def run_faults(seed: int, count: int, say: Callable[[str], None] = print) -> FaultRunReport:
    """Set up the stack, run ``count`` faulted runs (each then a clean deploy), tear it down."""
    return FaultRun(seed, count, say).run()
