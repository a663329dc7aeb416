"""Two projects on one Docker host share no name: images, compose project, proxy image, deploy
directory, state directory and lock are all their own, unless the config names them on purpose."""

from __future__ import annotations

from typing import Any

import pytest

from fabfile import hostconfig
from handover import settings
from handover.cli import defaults
from handover.engine import Engine
from handover.errors import ConfigError


class NoHost:
    """A runner for building an engine without running anything."""

    def run(self, command: str, **kwargs: Any) -> Any:
        raise AssertionError(f"nothing should run here: {command}")


def local(**overrides: Any) -> settings.Settings:
    return settings.load({**defaults()["deploy"], **overrides})


def remote_section(**overrides: Any) -> dict[str, Any]:
    return {**defaults()["deploy"], **defaults(hostconfig.REMOTE_DEFAULTS_FILE)["deploy"], **overrides}


def test_the_app_image_is_the_projects_own_unless_set() -> None:
    assert local().app_image == "handover-app"
    assert local(project="shop").app_image == "shop-app"
    explicit = "registry.example:5000/team/web"
    assert local(project="shop", app_image=explicit).app_image == explicit
    assert local(project="shop", app_image="").app_image == "shop-app"


@pytest.mark.parametrize(("overrides", "names"), [
    ({"app_image": "Shop/App"}, "deploy.app_image: expected an image name"),  # an explicit value is checked
    ({"project": "a__b"}, "deploy.app_image is not set and its default 'a__b-app'"),
    ({"project": "Shop"}, "deploy.project"),
])
def test_bad_image_names_are_named(overrides: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        local(**overrides)


def names_on_the_host(s: settings.Settings) -> dict[str, str]:
    engine = Engine(NoHost(), s)
    env = engine.backend.env()
    return {"app image": env["APP_IMAGE"], "proxy image": env["PROXY_IMAGE"], "compose project": s.project,
            "deploy dir": s.deploy_dir, "state dir": s.state_path, "lock": engine.lock.path,
            "flock": engine.lock.flock_path}


def test_two_projects_on_one_remote_host_share_nothing() -> None:
    """The same host given twice with nothing but ``project`` told apart."""
    rc = hostconfig.load(remote_section(hosts={"web1": {"project": "shop"}, "web1:2222": {"project": "blog"}}),
                         ["web1", "web1:2222"])
    shop, blog = (names_on_the_host(t.settings) for t in rc.targets)
    assert shop["deploy dir"] == "/srv/shop" and blog["deploy dir"] == "/srv/blog"
    assert shop["app image"] == "shop-app" and blog["proxy image"] == "blog-nginx"
    shared = {key for key in shop if shop[key] == blog[key]}
    assert not shared, f"shared between two projects on one host: {sorted(shared)}"


def test_an_explicit_deploy_dir_stays() -> None:
    rc = hostconfig.load(remote_section(deploy_dir="/opt/apps/x", hosts={"web1": {"project": "shop"}}), ["web1"])
    assert rc.targets[0].settings.deploy_dir == "/opt/apps/x"


def test_the_benchmark_stack_has_names_of_its_own() -> None:
    import tasks

    mine, bench = names_on_the_host(local()), names_on_the_host(tasks.bench_settings(local(), 18100))
    shared = {key for key in mine if mine[key] == bench[key]} - {"deploy dir"}  # the same checkout
    assert not shared, f"shared between the stack and the benchmark: {sorted(shared)}"
