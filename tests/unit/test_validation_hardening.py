"""Validation edges: trailing newlines, option-like host names, paths that leave deploy_dir, drain budget."""

from __future__ import annotations

from typing import Any

import pytest

from fabfile import hostconfig
from handover import settings
from handover.cli import defaults
from handover.errors import ConfigError
from server.webapp import settings as webapp_settings


def base_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = dict(defaults()["deploy"])
    config.update(overrides)
    return config


def remote_section(**overrides: Any) -> dict[str, Any]:
    merged: dict[str, Any] = dict(defaults()["deploy"])
    merged.update(defaults(hostconfig.REMOTE_DEFAULTS_FILE)["deploy"])
    merged.update(overrides)
    return merged


# --- trailing newlines: '$' matched before them ------------------------------------------------

def test_a_version_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ConfigError, match="version"):
        settings.check_version("v1\n")


@pytest.mark.parametrize(("key", "value"), [
    ("http_bind", "127.0.0.1\n"),
    ("project", "handover\n"),
    ("app_image", "handover-app\n"),
    ("base_image", "debian:bookworm-slim\n"),
])
def test_settings_values_with_a_trailing_newline_are_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"deploy\\.{key}"):
        settings.load(base_config(**{key: value}))


@pytest.mark.parametrize(("entry", "key"), [
    ({"hostname": "web1\n"}, "hostname"),
    ({"user": "deploy\n"}, "user"),
    ({"hostname": "-oBatchMode=no"}, "hostname"),
    ({"hostname": "-H"}, "hostname"),
    ({"user": "-oProxyCommand"}, "user"),
])
def test_host_entries_with_newlines_or_options_are_refused(entry: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=f"deploy\\.hosts\\.web1\\.{key}"):
        hostconfig.load(remote_section(hosts={"web1": entry}), ["web1"])


@pytest.mark.parametrize("spec", ["-oBatchMode", "-H", "root@-oBatchMode", "-x:2222", "web1:²"])
def test_option_like_host_specs_are_refused(spec: str) -> None:
    with pytest.raises(ConfigError, match="host"):
        hostconfig.load(remote_section(), [spec])


@pytest.mark.parametrize("spec", ["web1", "root@10.0.0.5:2222", "::1", "host_a.example.org"])
def test_ordinary_host_specs_still_pass(spec: str) -> None:
    assert hostconfig.load(remote_section(), [spec]).targets


def test_a_port_of_non_ascii_digits_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"deploy\.http_port"):
        settings.load(base_config(http_port="\uff18\uff10"))  # fullwidth digits: isdigit() but not ASCII


# --- state_dir and compose_file stay inside ------------------------------------------------------

@pytest.mark.parametrize("value", ["/var/lib", "/", "../..", "..", "a/../../b", ".", "./", "a/..//.."])
def test_state_dir_must_stay_inside_deploy_dir(value: str) -> None:
    with pytest.raises(ConfigError, match=r"deploy\.state_dir: expected a relative directory inside deploy_dir"):
        settings.load(base_config(state_dir=value))


@pytest.mark.parametrize("value", [".state", "state/deploy", ".state-bench", "./.state"])
def test_relative_state_dirs_pass(value: str) -> None:
    s = settings.load(base_config(state_dir=value), deploy_dir="/srv/shop")
    assert s.state_path.startswith("/srv/shop/")


@pytest.mark.parametrize("value", ["/etc/compose.yml", "../other/docker-compose.yml", ".", "compose/../../x.yml"])
def test_compose_file_must_stay_inside_the_source(value: str) -> None:
    with pytest.raises(ConfigError, match=r"deploy\.compose_file"):
        settings.load(base_config(compose_file=value))


def test_a_host_entry_naming_a_system_state_dir_names_the_entry() -> None:
    with pytest.raises(ConfigError, match=r"deploy\.hosts\.web1\.state_dir"):
        hostconfig.load(remote_section(hosts={"web1": {"state_dir": "/var/lib"}}), ["web1"])


# --- the drain budget against what docker stop really waits ----------------------------------------

def test_a_fractional_grace_period_counts_only_its_whole_seconds() -> None:
    # 20.5 > 2 x 10 was accepted; docker stop --time 20 cannot cover 0.5 + 10 + 10 + margin.
    with pytest.raises(ConfigError) as caught:
        settings.load(base_config(drain_timeout=10, stop_grace_period=20.5))
    message = str(caught.value)
    assert "deploy.stop_grace_period" in message and "deploy.drain_timeout" in message
    assert "only 20 s" in message and "at least 22" in message


@pytest.mark.parametrize(("drain", "grace"), [(10, 21), (1, 3), (2, 5)])
def test_grace_below_the_apps_whole_stop_time_is_refused(drain: float, grace: float) -> None:
    with pytest.raises(ConfigError, match=r"deploy\.stop_grace_period and deploy\.drain_timeout"):
        settings.load(base_config(drain_timeout=drain, stop_grace_period=grace))


@pytest.mark.parametrize(("drain", "grace"), [(10, 22), (5, 15), (2, 6), (1, 4)])
def test_grace_covering_the_whole_stop_passes(drain: float, grace: float) -> None:
    s = settings.load(base_config(drain_timeout=drain, stop_grace_period=grace))
    assert int(s.stop_grace_period) >= settings.app_stop_seconds(s.drain_timeout)


def test_the_default_settings_meet_the_drain_budget() -> None:
    s = settings.load(base_config())
    assert int(s.stop_grace_period) >= settings.app_stop_seconds(s.drain_timeout)


def test_the_budget_uses_the_apps_own_spread_default() -> None:
    assert settings.APP_DRAIN_SPREAD == webapp_settings.DEFAULT_DRAIN_SPREAD
