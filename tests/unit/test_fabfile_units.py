"""Pure logic of the Fabric front door: host config, the rsync ssh command, the rolling order."""

from __future__ import annotations

import shlex
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fabric import Connection
from invoke.config import Config
from invoke.context import Context

from fabfile import hostconfig, rollout
from fabfile.connect import Remote, rsync_destination, rsync_shell
from fabfile.executor import HOSTS_KEY
from handover.cli import defaults
from handover.errors import ConfigError, HandoverError
from handover.record import RunRecord


def section(**overrides: Any) -> dict[str, Any]:
    merged = dict(defaults()["deploy"])
    merged.update(defaults(hostconfig.REMOTE_DEFAULTS_FILE)["deploy"])
    merged.update(overrides)
    return merged


def test_host_entry_overrides_and_connection_keys() -> None:
    cfg = section(hosts={"web1": {"project": "shop", "http_port": 9000},
                         "prod": {"hostname": "203.0.113.10", "user": "deploy", "port": 2200}})
    rc = hostconfig.load(cfg, ["root@web1:2222", "prod", "other"])
    web1, prod, other = rc.targets
    assert (web1.name, web1.host, web1.user, web1.port) == ("web1:2222", "web1", "root", 2222)
    assert web1.settings.project == "shop" and web1.settings.http_port == 9000
    assert web1.settings.source_subdir == "current" and web1.settings.deploy_dir == "/srv/shop"  # its project's
    assert other.settings.deploy_dir == "/srv/handover"
    assert (prod.host, prod.user, prod.port) == ("203.0.113.10", "deploy", 2200)
    assert other.settings.project == "handover" and rc.parallel == 1


@pytest.mark.parametrize(
    ("cfg", "hosts", "names"),
    [
        (section(hosts={"web1": {"http_port": "eighty"}}), ["web1"], "deploy.hosts.web1.http_port"),
        (section(hosts={"web1": {"colour": "blue"}}), ["web1"], "deploy.hosts.web1.colour"),
        (section(deploy_dir="srv/rel"), ["web1"], "deploy.deploy_dir"),
        (section(deploy_dir=None, project="../etc"), ["web1"], "deploy.project"),
        (section(hosts={"web1": {"deploy_dir": "/srv/../etc"}}), ["web1"], "deploy.hosts.web1.deploy_dir"),
        (section(parallel=0), ["web1"], "deploy.parallel"),
        (section(), [], "-H"),
        (section(), ["web1;rm -rf /"], "[user@]host[:port]"),
        (section(hosts={"web1": {"port": "22; id"}}), ["web1"], "deploy.hosts.web1.port"),
    ],
)
def test_invalid_config_names_the_key(cfg: dict[str, Any], hosts: list[str], names: str) -> None:
    with pytest.raises(ConfigError) as info:
        hostconfig.load(cfg, hosts)
    assert names in str(info.value)
    assert info.value.exit_code == 2


def test_rsync_shell_keeps_host_key_policy_and_quotes_paths() -> None:
    target = hostconfig.load(section(), ["deploy@web1:2200"]).targets[0]
    conn = Connection("web1", user="deploy", port=2200, connect_kwargs={"key_filename": ["/keys/my key"]})
    remote = Remote(target, conn, Path("/home/me/known hosts"))
    args = shlex.split(rsync_shell(remote))
    assert args[0] == "ssh"
    assert "StrictHostKeyChecking=yes" in args and "ForwardAgent=no" in args and "BatchMode=yes" in args
    assert 'UserKnownHostsFile="/home/me/known hosts"' in args
    assert args[args.index("-p") + 1] == "2200" and args[args.index("-i") + 1] == "/keys/my key"
    assert rsync_destination(remote, "/srv/x/") == "deploy@web1:/srv/x/"


def _targets(n: int) -> list[hostconfig.Target]:
    return hostconfig.load(section(), [f"h{i}" for i in range(n)]).targets


def _work(fail: set[str], seen: list[str], delay: float = 0.0) -> Any:
    lock = threading.Lock()

    def work(target: hostconfig.Target) -> RunRecord:
        with lock:
            seen.append(target.name)
        time.sleep(delay)
        if target.name in fail:
            raise HandoverError(f"{target.name} broke")
        rec = RunRecord(action="deploy", version="v2", project="p", host=target.name)
        rec.finish("success")
        return rec

    return work


@pytest.mark.parametrize("parallel", [1, 2])
def test_rollout_stops_at_the_first_failure(parallel: int) -> None:
    seen: list[str] = []
    failures: list[str] = []
    outcomes = rollout.roll(_targets(5), _work({"h1"}, seen, 0.05), parallel, lambda o: failures.append(o.name))
    states = [o.state for o in outcomes]
    assert failures == ["h1"]
    assert states[:2] == [rollout.DONE, rollout.FAILED]
    assert states[-2:] == [rollout.NOT_STARTED, rollout.NOT_STARTED]
    assert sorted(seen[:2]) == ["h0", "h1"] and "h3" not in seen and "h4" not in seen
    if parallel == 1:
        assert seen == ["h0", "h1"]
    assert "stopped at the first failure" in rollout.format_summary("deploy", "v2", outcomes)


def test_rollout_runs_k_at_a_time() -> None:
    seen: list[str] = []
    t0 = time.monotonic()
    outcomes = rollout.roll(_targets(3), _work(set(), seen, 0.3), 3, lambda o: None)
    assert time.monotonic() - t0 < 0.8
    assert [o.state for o in outcomes] == [rollout.DONE] * 3
    assert [rollout.served_version(o) for o in outcomes] == ["v2"] * 3


def test_remote_config_reads_the_host_list_of_the_run() -> None:
    c = Context(Config(overrides={"deploy": section(parallel=2), HOSTS_KEY: ["web1", "deploy@web2:2200"]}))
    rc = hostconfig.remote_config(c)
    assert [t.name for t in rc.targets] == ["web1", "web2:2200"] and rc.parallel == 2
    assert hostconfig.remote_config(c, parallel=3).parallel == 3
    assert hostconfig.host_specs(Connection("web3", user="ops", port=2222)) == ["ops@web3:2222"]
    with pytest.raises(ConfigError, match="missing config section 'deploy'"):
        hostconfig.remote_config(Context(Config(overrides={HOSTS_KEY: ["web1"]})))


def test_a_failed_host_keeps_its_run_record() -> None:
    """`fab deploy --json` shows the failed host's record, not null."""
    failed = RunRecord(action="deploy", version="v2", project="p", host="h0")
    failed.fail("health", "not healthy", rolled_back=True)

    def work(target: hostconfig.Target) -> RunRecord:
        error = HandoverError("not healthy")
        error.record = failed
        raise error

    [outcome] = rollout.roll(_targets(1), work, 1, lambda o: None)
    assert outcome.state == rollout.FAILED and outcome.record is failed
    assert rollout.served_version(outcome) is None  # a failed run does not tell what serves
