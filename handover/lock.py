"""One deploy at a time per host: an atomic ``mkdir`` lock in the state directory."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from .errors import LockHeld
from .shell import Runner, read_file, run, write_file

LOCK_DIR = "lock"
HOLDER_FILE = "holder.json"


@dataclass
class DeployLock:
    runner: Runner
    state_path: str

    @property
    def path(self) -> str:
        return f"{self.state_path}/{LOCK_DIR}"

    def holder(self) -> dict[str, str] | None:
        text = read_file(self.runner, f"{self.path}/{HOLDER_FILE}")
        if text is None:
            exists = run(self.runner, ["test", "-d", self.path], check=False).exited == 0
            return {"holder": "unknown (lock without holder file)"} if exists else None
        try:
            data = json.loads(text)
        except ValueError:
            return {"holder": "unknown (unreadable holder file)"}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None

    def acquire(self, info: dict[str, str]) -> None:
        run(self.runner, ["mkdir", "-p", self.state_path])
        # mkdir is atomic: exactly one of two concurrent deploys creates the directory.
        created = run(self.runner, ["sh", "-c", f"mkdir {shlex.quote(self.path)} 2>/dev/null"], check=False)
        if created.exited != 0:
            held = self.holder() or {}
            who = ", ".join(f"{k}={v}" for k, v in held.items()) or "unknown"
            raise LockHeld(
                f"another deploy holds the lock at {self.path} ({who}). If no deploy is running, "
                "release it with the unlock task."
            )
        write_file(self.runner, f"{self.path}/{HOLDER_FILE}", json.dumps(info, sort_keys=True))

    def release(self) -> None:
        run(self.runner, ["rm", "-rf", self.path], check=False)
