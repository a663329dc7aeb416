"""Which configuration layer wins, as the README states it, with Invoke's and Fabric's own loading:
the collection's defaults (config/deploy.yaml, and config/remote.yaml for fab) < /etc < the user's
file < the project's file < INVOKE_DEPLOY_*/FABRIC_DEPLOY_* variables < the ``-f`` runtime file.

Each layer sets ``deploy.http_port`` to its own value; the run reports the one it got, then the top
layer is taken away and the next one must show through. The front doors' tasks are called by the real
``Program`` with the real collection's configuration; only the files' places are in a temporary
directory (this machine's /etc and home are not touched). Also: ``-f`` after ``deploy`` is no flag of
the task (``--force`` is spelled out), so ``-f`` means a config file only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fabric
import pytest
from invoke import Collection, Config, Program, task

import fabfile
import tasks

LAYERS = ("system", "user", "project", "env", "runtime")  # lowest first, as the README lists them
PORTS = {name: 1001 + n for n, name in enumerate(LAYERS)}
DEFAULT_PORT = 8080  # config/deploy.yaml


@task
def show(c: Any) -> None:
    print(f"http_port={c.config.deploy.http_port} project={c.config.deploy.project}")


def layered(base: type[Config], prefix: str, tmp: Path) -> type[Config]:
    """``base`` with its system, user and project files in ``tmp`` (``prefix``: invoke or fabric)."""

    class Layered(base):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.update(system_prefix=f"{tmp}/etc/", user_prefix=f"{tmp}/home/.",
                          project_location=str(tmp / "project"))
            super().__init__(*args, **kwargs)
            self.load_project()  # what Program does for a collection it finds on disk

    return Layered


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for part in ("etc", "home", "project"):
        (tmp_path / part).mkdir()
    for name in ("INVOKE_DEPLOY_HTTP_PORT", "FABRIC_DEPLOY_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path


def write(path: Path, port: int) -> Path:
    path.write_text(f"deploy:\n  http_port: {port}\n")
    return path


def run_show(config_class: type[Config], namespace: Collection, argv: list[str], capsys: pytest.CaptureFixture[str]
             ) -> int:
    Program(namespace=namespace, config_class=config_class).run([*argv, "show"], exit=False)
    out = capsys.readouterr().out
    return int(out.split("http_port=")[1].split()[0])


@pytest.mark.parametrize("door", ["inv", "fab"])
def test_each_layer_wins_over_the_ones_below_it(door: str, files: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    prefix, base, collection = (("invoke", Config, tasks.ns) if door == "inv" else
                                ("fabric", fabric.Config, fabfile.ns))
    namespace = Collection(show)
    namespace.configure(collection.configuration())  # the defaults: config/deploy.yaml (+ remote.yaml for fab)
    config_class = layered(base, prefix, files)
    placed = {
        "system": write(files / "etc" / f"{prefix}.yaml", PORTS["system"]),
        "user": write(files / "home" / f".{prefix}.yaml", PORTS["user"]),
        "project": write(files / "project" / f"{prefix}.yaml", PORTS["project"]),
        "runtime": write(files / "runtime.yaml", PORTS["runtime"]),
    }
    env_name = f"{prefix.upper()}_DEPLOY_HTTP_PORT"
    monkeypatch.setenv(env_name, str(PORTS["env"]))
    seen = []
    for top in reversed(LAYERS):
        argv = [door, "-f", str(placed["runtime"])] if top == "runtime" else [door]
        seen.append(run_show(config_class, namespace, argv, capsys))
        if top == "env":
            monkeypatch.delenv(env_name)
        elif top != "runtime":
            placed[top].unlink()
    seen.append(run_show(config_class, namespace, [door], capsys))
    assert seen == [PORTS[name] for name in reversed(LAYERS)] + [DEFAULT_PORT]


def test_a_runtime_file_wins_over_the_environment_for_every_key_it_names(
        files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The consequence the README spells out: a key in the ``-f`` file cannot be overridden by a variable;
    a key it does not name can."""
    namespace = Collection(show)
    namespace.configure(tasks.ns.configuration())
    runtime = files / "app.yaml"
    runtime.write_text("deploy:\n  project: shop\n")
    monkeypatch.setenv("INVOKE_DEPLOY_PROJECT", "other")
    monkeypatch.setenv("INVOKE_DEPLOY_HTTP_PORT", "9001")
    Program(namespace=namespace, config_class=layered(Config, "invoke", files)).run(
        ["inv", "-f", str(runtime), "show"], exit=False)
    assert capsys.readouterr().out.strip() == "http_port=9001 project=shop"


@pytest.mark.parametrize(("collection", "name"), [(tasks.ns, "local.deploy"), (tasks.ns, "local.rollback"),
                                                  (fabfile.ns, "deploy"), (fabfile.ns, "rollback")])
def test_deploy_and_rollback_have_no_short_flags(collection: Collection, name: str) -> None:
    """``-f`` is the front doors' config file; after ``deploy`` it must not mean ``--force``."""
    found = collection[name]
    arguments = found.get_arguments()
    assert arguments, name
    assert all(len(a.names) == 1 and len(a.names[0]) > 1 for a in arguments), [a.names for a in arguments]
    if name.endswith("deploy"):
        assert "force" in {a.name for a in arguments}


@pytest.mark.parametrize(("door", "collection", "name"), [("inv", tasks.ns, "local.deploy"),
                                                          ("fab", fabfile.ns, "deploy")])
def test_dash_f_after_deploy_is_the_config_file_not_force(door: str, collection: Collection, name: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Parsed by the real front door's collection: ``deploy -f`` is taken as Invoke's core ``-f FILE``
    (so it wants a file, and nothing runs), never as --force."""
    with pytest.raises(SystemExit) as exited:
        Program(namespace=collection).run([door, name, "-f"], exit=True)
    assert exited.value.code == 1
    assert "Flag <Argument: config (f)> needed value" in capsys.readouterr().err


@task
def show_args(c: Any) -> None:
    print(f"args={dict(c.config.deploy.app_build_args)}")


def test_a_variable_sets_a_build_argument_only_when_a_lower_file_names_it(
        files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    namespace = Collection(show_args)
    namespace.configure(tasks.ns.configuration())
    config_class = layered(Config, "invoke", files)
    monkeypatch.setenv("INVOKE_DEPLOY_APP_BUILD_ARGS_PYTHON_IMAGE", "from-env")

    def args() -> str:
        Program(namespace=namespace, config_class=config_class).run(["inv", "show-args"], exit=False)
        return capsys.readouterr().out.strip()

    assert args() == "args={}"  # no file names it: the variable has nothing to set
    (files / "project" / "invoke.yaml").write_text("deploy:\n  app_build_args: {PYTHON_IMAGE: from-file}\n")
    assert args() == "args={'PYTHON_IMAGE': 'from-env'}"


def test_the_readmes_own_app_config_is_valid_and_reaches_the_public(tmp_path: Path) -> None:
    """The config file of the README's "Deploy your own app", with the app's directory made here: every key
    valid, the host named by -H prod with its address and user, nginx published on every address at :80."""
    import re

    import yaml

    from fabfile import hostconfig
    from handover.settings import PROJECT_ROOT

    text = (PROJECT_ROOT / "README.md").read_text()
    section = text[text.index("## Deploy your own app"):text.index("## What survives what")]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block is not None
    app = tmp_path / "shop"
    app.mkdir()
    (app / "Dockerfile").write_text("FROM scratch\n")
    (app / ".env.production").write_text("SECRET=x\n")
    data = yaml.safe_load(block.group(1).replace("~/code/shop", str(app)))
    merged = {**tasks.ns.configuration()["deploy"], **fabfile.ns.configuration()["deploy"], **data["deploy"]}
    rc = hostconfig.load(merged, ["prod"])
    [target] = rc.targets
    assert (target.host, target.user, target.port) == ("203.0.113.10", "deploy", None)
    s = target.settings
    assert (s.project, s.deploy_dir, s.http_bind, s.http_port) == ("shop", "/srv/shop", "0.0.0.0", 80)  # noqa: S104 - the public address it documents
    assert (s.app_build, s.app_port, s.app_health, s.app_image) == (str(app), 8000, "/healthz", "shop-app")
    assert target.env_file == app / ".env.production" and rc.known_hosts == Path("~/.ssh/known_hosts").expanduser()


def test_inv_takes_the_same_file_and_leaves_the_hosts_to_fab(tmp_path: Path) -> None:
    """`inv -f shop.yaml local.up` with the file that also names the hosts: the local stack's settings,
    without the hosts' overrides (those are `fab`'s)."""
    from handover import cli

    config = Config(overrides={"deploy": {**tasks.ns.configuration()["deploy"], "project": "shop",
                                          "state_dir": ".state-shop", "known_hosts": "~/.ssh/known_hosts",
                                          "hosts": {"prod": {"hostname": "203.0.113.10", "http_port": 80}}}})
    s = cli.settings_from(config)
    assert (s.project, s.state_dir, s.http_port, s.http_bind) == ("shop", ".state-shop", DEFAULT_PORT, "127.0.0.1")
