"""Pure logic of the SSH front door: known_hosts files and lines, messages, timeouts, the rsync ssh command."""

from __future__ import annotations

import base64
import shlex
import shutil
import socket
import subprocess
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from fabric import Config, Connection
from paramiko import HostKeys, SSHClient, SSHConfig
from paramiko.ed25519key import Ed25519Key

from fabfile import connect, hostconfig, hostkeys
from fabfile.connect import Remote
from handover.cli import defaults

ED25519_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBFuXpm+CXc6yBGUtRvp3CZzirTz3UgmHVEyGnAIT/0K"


def section(**overrides: Any) -> dict[str, Any]:
    merged = dict(defaults()["deploy"])
    merged.update(defaults(hostconfig.REMOTE_DEFAULTS_FILE)["deploy"])
    merged.update(overrides)
    return merged


def fabric_config(tmp_path: Path, ssh_config: str, **overrides: Any) -> Config:
    path = tmp_path / "ssh_config"
    path.write_text(ssh_config)
    return Config(runtime_ssh_path=str(path), overrides=overrides)


# --- known_hosts files and lines ------------------------------------------------------------------


def _lookup(text: str, host: str = "web1") -> Any:
    config = SSHConfig()
    config.parse(StringIO(text))
    return config.lookup(host).get("userknownhostsfile")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", ["DEFAULT"]),
        ("UserKnownHostsFile none", ["DEFAULT"]),
        ("UserKnownHostsFile ~/kh", ["HOME/kh"]),
        ("UserKnownHostsFile %d/a %d/b", ["HOME/a", "HOME/b"]),
        ('UserKnownHostsFile "/x y/kh" /z', ["/x y/kh", "/z"]),
        ('UserKnownHostsFile "/x y/kh" "/z w"', ["/x y/kh", "/z w"]),  # Paramiko strips the outer pair
        ("UserKnownHostsFile /k/%h_hosts", ["/k/web1.example_hosts"]),
    ],
)
def test_user_known_hosts_file_from_ssh_config(line: str, expected: list[str], monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    default = Path("/default/known_hosts")
    value = _lookup(f"Host web1\n  HostName web1.example\n  {line}\n")
    files = hostkeys.known_hosts_files(value, default, "web1.example")
    wanted = [Path(str(default) if e == "DEFAULT" else e.replace("HOME", str(tmp_path))) for e in expected]
    assert list(files) == wanted


@pytest.mark.parametrize("bad", [ED25519_LINE[:-3], "ssh-ed25519 AAAA!!notbase64", "ssh-rsa AAAAB3NzaC1yc2E="])
def test_corrupt_known_hosts_line_is_named(bad: str, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"good.example {ED25519_LINE}\nbad.example {bad}\n")
    with pytest.raises(hostkeys.KnownHostsUnreadable) as info:
        hostkeys.harden(SSHClient(), known, 22)
    assert f"{known} line 2 is not a valid known_hosts entry" in str(info.value)
    assert "sed -i '2d'" in str(info.value)


def test_unreadable_known_hosts_is_named(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.mkdir()
    with pytest.raises(hostkeys.KnownHostsUnreadable) as info:
        hostkeys.harden(SSHClient(), known, 22)
    assert f"cannot read the known_hosts file {known}" in str(info.value)


def test_good_known_hosts_lines_are_loaded(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    hashed = HostKeys.hash_host("[hashed.example]:2222")
    known.write_text(f"# a comment of several words\n\n[good.example]:2222,alias {ED25519_LINE}\n"
                     f"{hashed} {ED25519_LINE}\n@cert-authority *.example {ED25519_LINE}\n"
                     f"other.example ssh-unknown-type AAAA\n")
    client = SSHClient()
    hostkeys.harden(client, [tmp_path / "absent", known], 2222)
    keys = client.get_host_keys()
    for name in ("[good.example]:2222", "alias", "[hashed.example]:2222"):
        assert keys.lookup(name) is not None, name
    assert keys.lookup("*.example") is None and keys.lookup("other.example") is None


def test_revoked_key_is_not_trusted_even_when_listed(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"good.example {ED25519_LINE}\n@revoked * {ED25519_LINE}\n")
    client = SSHClient()
    hostkeys.harden(client, known, 22)
    assert client.get_host_keys().lookup("good.example") is None


def test_unknown_key_message_creates_the_directory_first_and_asks_for_out_of_band_checking() -> None:
    key = Ed25519Key(data=base64.b64decode(ED25519_LINE.split()[1]))
    message = hostkeys.unknown_key_message("web1", 2222, key, Path("/home/me/no dir/known_hosts"), " (x)")
    lines = message.splitlines()
    mkdir = next(i for i, line in enumerate(lines) if "mkdir -p -m 700 '/home/me/no dir'" in line)
    add = "ssh-keyscan -p 2222 web1 >> '/home/me/no dir/known_hosts'"
    scan = next(i for i, line in enumerate(lines) if add in line)
    assert mkdir < scan
    assert "out of band" in message and key.fingerprint in message
    assert message.startswith("the host key of [web1]:2222 (x) is not in")


# --- messages -----------------------------------------------------------------------------------


def test_unresolved_name_lists_the_configured_hosts_closest_first() -> None:
    message = connect.unresolved_message("prdo", "prdo", "Name or service not known", ["staging", "web1", "prod"])
    assert message.startswith("the host name 'prdo' does not resolve (Name or service not known); prdo is not one")
    listed = message.split("deploy.hosts: ")[1]
    assert listed.startswith("prod, ") and "staging" in listed and "web1" in listed
    assert message.endswith("(did you mean -H prod?)")


@pytest.mark.parametrize(
    ("given", "host", "configured", "listed", "guess"),
    [
        ("prod", "prod.internal", ["prod", "staging"], False, False),  # configured: its hostname fails
        ("prod:2200", "prod", ["prod", "staging"], False, False),
        ("prod", "prod", [], False, False),  # nothing configured: nothing to list
        ("zzzz", "zzzz", ["prod", "staging"], True, False),  # nothing close: the list without a guess
        ("web2", "10.bad", ["web1"], True, True),  # an ssh_config alias whose HostName fails
    ],
)
def test_unresolved_name_lists_only_when_useful(given: str, host: str, configured: list[str], listed: bool,
                                                guess: bool) -> None:
    message = connect.unresolved_message(given, host, "Name or service not known", configured)
    assert f"the host name {host!r}" in message and given.partition(":")[0] in message
    assert ("deploy.hosts:" in message) is listed
    assert ("did you mean" in message) is guess


def test_auth_hint_without_any_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    hint = connect.auth_hint(Connection("web1"))
    assert hint.startswith("no key was found")
    assert "SSH_AUTH_SOCK is not set" in hint and "-i KEY" in hint and "IdentityFile" in hint


def test_auth_hint_names_the_keys_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("key")
    hint = connect.auth_hint(Connection("web1", connect_kwargs={"key_filename": ["/keys/gone"]}))
    assert hint.startswith("the keys tried were /keys/gone (missing), ~/.ssh/id_ed25519, the keys of the SSH agent")


@pytest.mark.parametrize(
    ("given", "ssh_config", "expected"),
    [(None, "", connect.SSH_CONNECT_TIMEOUT), (None, "ConnectTimeout 7", 7), (3, "ConnectTimeout 7", 3)],
)
def test_connect_timeout_precedence(given: int | None, ssh_config: str, expected: int, tmp_path: Path) -> None:
    cfg = fabric_config(tmp_path, f"Host web1\n  {ssh_config}\n", timeouts={"connect": given})
    target = hostconfig.load(section(), ["web1"]).targets[0]
    conn = connect.hardened_connection(cfg, target, tmp_path / "known_hosts")
    assert conn.connect_timeout == expected
    assert conn.connect_kwargs["banner_timeout"] == expected
    left, right = socket.socketpair()
    try:  # Paramiko's own 15 s key-exchange limit follows too, a little later than the connect timeout
        transport = conn.connect_kwargs["transport_factory"](left)
        assert transport.handshake_timeout == expected + connect.HANDSHAKE_GRACE
    finally:
        left.close()
        right.close()


def test_host_config_records_configured_hosts_and_explicit_known_hosts() -> None:
    target = hostconfig.load(section(hosts={"prod": {}, "staging": {}}), ["prdo"]).targets[0]
    assert target.configured_hosts == ("prod", "staging") and not target.known_hosts_set
    assert hostconfig.load(section(known_hosts="/k"), ["web1"]).targets[0].known_hosts_set


# --- the rsync ssh command ------------------------------------------------------------------------

JUMPS = """\
Host web1
    HostName 10.0.0.5
    Port 2200
    User deploy
    ProxyJump ops@bastion1:2201,bastion2
    IdentityFile "/keys/web1 key"
Host bastion2
    HostName 10.0.0.2
    UserKnownHostsFile /kh/bastion2%%
"""


def _remote(tmp_path: Path, ssh_config: str, **overrides: Any) -> Remote:
    cfg = fabric_config(tmp_path, ssh_config, timeouts={"connect": 9}, **overrides)
    target = hostconfig.load(section(), ["web1"]).targets[0]
    known = tmp_path / "known 100%"
    conn = connect.hardened_connection(cfg, target, known)
    return Remote(target, conn, known)


def _option(args: list[str], name: str) -> str:
    values = [args[i + 1].partition("=")[2] for i, a in enumerate(args[:-1]) if a == "-o" and
              args[i + 1].startswith(f"{name}=")]
    assert len(values) == 1, (name, args)
    return values[0]


def test_rsync_shell_goes_through_each_hop_with_the_same_checks(tmp_path: Path) -> None:
    remote = _remote(tmp_path, JUMPS)
    hops = [c for c in connect.chain(remote.conn)]
    assert [(c.host, c.port, c.user) for c in hops][1:] == [("10.0.0.2", 22, "root"), ("bastion1", 2201, "ops")]
    assert all(c.connect_timeout == 9 for c in hops)

    target_args = shlex.split(connect.rsync_shell(remote))
    assert target_args[-2:] == ["-F", str(tmp_path / "ssh_config")]
    assert _option(target_args, "UserKnownHostsFile") == f'"{tmp_path}/known 100%%"'
    assert target_args[target_args.index("-i") + 1] == "/keys/web1 key"
    # ssh expands %-tokens once per ProxyCommand level: undo that to read each level's command.
    via_bastion2 = shlex.split(_option(target_args, "ProxyCommand").replace("%%", "%"))
    assert via_bastion2[-3:] == ["-W", "10.0.0.5:2200", "10.0.0.2"]
    assert _option(via_bastion2, "UserKnownHostsFile") == "/kh/bastion2%%"
    via_bastion1 = shlex.split(_option(via_bastion2, "ProxyCommand").replace("%%", "%"))
    assert via_bastion1[-3:] == ["-W", "10.0.0.2:22", "bastion1"]
    assert _option(via_bastion1, "ProxyCommand") == "none"
    for args in (target_args, via_bastion2, via_bastion1):
        assert _option(args, "StrictHostKeyChecking") == "yes" and _option(args, "BatchMode") == "yes"
        assert _option(args, "ConnectTimeout") == "9" and _option(args, "ForwardAgent") == "no"
    assert _option(via_bastion1, "UserKnownHostsFile") == f'"{tmp_path}/known 100%%"'
    assert via_bastion1[via_bastion1.index("-p") + 1] == "2201" and via_bastion1[via_bastion1.index("-l") + 1] == "ops"


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_openssh_reads_the_rsync_shell_as_meant(tmp_path: Path) -> None:
    remote = _remote(tmp_path, JUMPS)
    args = shlex.split(connect.rsync_shell(remote))
    done = subprocess.run([*args, "-G", "10.0.0.5"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    resolved = done.stdout
    settings = dict(line.partition(" ")[::2] for line in resolved.splitlines())
    assert settings["stricthostkeychecking"] == "true" and settings["port"] == "2200"
    assert settings["proxycommand"].startswith("ssh -o BatchMode=yes")
    assert "proxyjump" not in settings


def test_rsync_shell_without_hops_keeps_ssh_config_hops_away(tmp_path: Path) -> None:
    remote = _remote(tmp_path, "Host web1\n    HostName 10.0.0.5\n")
    assert _option(shlex.split(connect.rsync_shell(remote)), "ProxyCommand") == "none"
    custom = _remote(tmp_path, "Host web1\n    ProxyCommand nc -X 5 -x proxy:1080 %h %p\n")
    assert _option(shlex.split(connect.rsync_shell(custom)), "ProxyCommand") == "nc -X 5 -x proxy:1080 web1 22"


def test_rsync_shell_reads_no_ssh_config_when_fabric_reads_none(tmp_path: Path) -> None:
    cfg = Config(overrides={"load_ssh_configs": False})
    target = hostconfig.load(section(), ["web1"]).targets[0]
    remote = Remote(target, connect.hardened_connection(cfg, target, tmp_path / "kh"), tmp_path / "kh")
    assert shlex.split(connect.rsync_shell(remote))[-2:] == ["-F", "/dev/null"]
