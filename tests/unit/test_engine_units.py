"""Pure logic of the engine: upstream rendering/parsing, settings validation, command quoting."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from handover import settings
from handover.cli import defaults
from handover.errors import ConfigError
from handover.proxies import nginx as upstream
from handover.shell import command_line


def base_config() -> dict[str, object]:
    return dict(defaults()["deploy"])


def test_upstream_names_fixed_socket_slots() -> None:
    text = upstream.render_upstream(2)
    assert "server unix:/run/handover/live-0.sock max_fails=0;" in text
    assert "server unix:/run/handover/live-1.sock max_fails=0;" in text
    # Backups: the old containers while a deploy checks the new ones after the switch.
    assert "server unix:/run/handover/prev-0.sock max_fails=0 backup;" in text
    assert "server unix:/run/handover/prev-1.sock max_fails=0 backup;" in text
    assert "keepalive" not in text  # each request follows the live link afresh
    with pytest.raises(ValueError, match="at least one"):
        upstream.render_upstream(0)


def test_the_upstream_file_is_exactly_the_slots_and_their_backups() -> None:
    assert upstream.render_upstream(1) == (
        "# Written by handover; the live app containers are the targets of these symlinks.\n"
        "upstream handover_app {\n"
        "    server unix:/run/handover/live-0.sock max_fails=0;\n"
        "    server unix:/run/handover/prev-0.sock max_fails=0 backup;\n"
        "}\n"
        "map $uri $handover_target { default handover_app; }\n"
        'map $uri $handover_fallback { default ""; }\n'
    )
    with pytest.raises(ValueError, match=r"^an upstream needs at least one slot$"):
        upstream.render_upstream(-1)


def test_only_workers_that_accept_connections_count() -> None:
    listing = ("1 nginx: master process nginx -g daemon off;\n"
               "7 nginx: worker process \n"
               "8 nginx: worker process is shutting down \n"
               "x nginx: worker process\n"
               "9 sh -c for p in /proc/[0-9]*; do ...; done\n")
    assert upstream.active_workers(listing) == {7}


def test_live_links_are_parsed_to_short_ids() -> None:
    listing = "live-0.sock app-0123456789ab.sock\nlive-1.sock app-ba9876543210.sock\nlive-x.sock app-zz.sock\n"
    assert upstream.parse_links(listing) == {0: "0123456789ab", 1: "ba9876543210"}
    assert upstream.parse_links("") == {}
    assert upstream.parse_links("prev-0.sock app-0123456789ab.sock\n") == {}  # backups are not live
    assert upstream.socket_name("0123456789abcdef") == "app-0123456789ab.sock"


def test_default_settings_are_valid() -> None:
    s = settings.load(base_config())
    assert s.http_port == 8080 and s.stop_grace_period > 2 * s.drain_timeout
    assert s.compose_path.endswith("compose/docker-compose.yml")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("http_port", 70000, "deploy.http_port: expected a whole number from 1 to 65535"),
        ("http_port", "eighty", "deploy.http_port"),
        ("project", "Bad Name;rm", "deploy.project"),
        ("http_bind", "0.0.0.0.0", "deploy.http_bind"),
        ("drain_timeout", -1, "deploy.drain_timeout"),
        ("stop_grace_period", 12, "deploy.stop_grace_period and deploy.drain_timeout"),
        ("app_image", "UPPER/Case", "deploy.app_image"),
        ("compose_file", "a\nb", "deploy.compose_file"),
    ],
)
def test_bad_values_name_the_key(key: str, value: object, message: str) -> None:
    config = base_config()
    config[key] = value
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        settings.load(config)


def test_unknown_and_missing_keys() -> None:
    config = base_config()
    config["htpp_port"] = 1
    with pytest.raises(ConfigError, match=r"unknown config key deploy\.htpp_port"):
        settings.load(config)
    config = base_config()
    del config["project"]
    with pytest.raises(ConfigError, match=r"missing config key deploy\.project"):
        settings.load(config)


@pytest.mark.parametrize("version", ["v1", "2026.11.26-1", "src-abc", "a_b"])
def test_good_versions(version: str) -> None:
    assert settings.check_version(version) == version


@pytest.mark.parametrize("version", ["", "-rf", ".hidden", "v1;reboot", "a b", "x" * 129, "$(id)"])
def test_bad_versions(version: str) -> None:
    with pytest.raises(ConfigError, match="version"):
        settings.check_version(version)


def test_command_line_quotes_everything() -> None:
    nasty = "a b'; touch /tmp/pwned; echo $(id) `id`"
    line = command_line(["echo", nasty], {"X": nasty})
    assert shlex.split(line) == ["env", f"X={nasty}", "echo", nasty]
    out = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True).stdout
    assert out == nasty + "\n"


def test_a_restarted_container_is_described_without_a_stale_exit_status() -> None:
    from handover.backends import Instance as Container

    base = {"id": "0" * 64, "name": "app-2", "service": "app", "version": "v", "image": "i", "created": ""}
    running = Container(**base, status="running", health="starting", restarts=1, exit_code=0)
    assert running.describe() == ("app-2 crashed: it exited and was restarted 1 time(s), now starting "
                                  "(its logs tell why)")
    exited = Container(**base, status="exited", health="unhealthy", restarts=0, exit_code=4)
    assert exited.describe() == "app-2 crashed: exited with status 4"
    assert Container(**base, status="running", health="healthy", restarts=0).describe() == "app-2 is healthy"

