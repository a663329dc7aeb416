"""The release log on a real file: a run that died mid-write does not cost the next record."""

from __future__ import annotations

import json
from pathlib import Path

from invoke import Context

from handover import record
from handover.record import RELEASE_LOG, RunRecord


def make(version: str) -> RunRecord:
    rec = RunRecord(action="deploy", version=version, project="p", host="h")
    rec.finish("success")
    return rec


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    state = tmp_path / "state"
    c = Context()
    record.append(c, str(state), make("v1"))
    log = state / RELEASE_LOG
    with log.open("a") as out:  # a run killed in the middle of its append
        out.write('{"action": "deploy", "version": "v2", "res')
    record.append(c, str(state), make("v3"))
    record.append(c, str(state), make("v4"))
    versions = [item["version"] for item in record.history(c, str(state))]
    assert versions == ["v1", "v3", "v4"]
    lines = log.read_text().splitlines()
    assert json.loads(lines[-2])["version"] == "v3"  # on a line of its own
    assert log.read_text().endswith("\n")


def test_history_recovers_a_record_glued_to_a_torn_one(tmp_path: Path) -> None:
    # A log written before appends started a new line: the good record follows the torn one.
    good = json.dumps(make("v5").to_dict(), sort_keys=True)
    (tmp_path / RELEASE_LOG).write_text(
        json.dumps(make("v4").to_dict(), sort_keys=True) + "\n"
        + '{"action": "deploy", "steps": [{"name": "lock"' + good + "\n"
        + "not json at all\n"
        + "[1, 2]\n"
    )
    versions = [item["version"] for item in record.history(Context(), str(tmp_path))]
    assert versions == ["v4", "v5"]


def test_an_empty_or_missing_log_is_an_empty_history(tmp_path: Path) -> None:
    assert record.history(Context(), str(tmp_path)) == []
    (tmp_path / RELEASE_LOG).write_text("")
    record.append(Context(), str(tmp_path), make("v1"))
    assert (tmp_path / RELEASE_LOG).read_text().count("\n") == 1
