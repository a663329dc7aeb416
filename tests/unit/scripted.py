"""A runner that answers commands from a script: for the backends' and benches' pure command sequences.

Each answer is keyed by a part of the command line (the first key found in the command wins, in the
order given); a command no key matches exits 0 with no output. Every command is kept, in order, for the
test to read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Answer:
    stdout: str = ""
    stderr: str = ""
    exited: int = 0


@dataclass
class Scripted:
    answers: dict[str, Answer] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    def run(self, command: str, **kwargs: Any) -> Answer:
        self.asked.append(command)
        return next((a for part, a in self.answers.items() if part in command), Answer())
