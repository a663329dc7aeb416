"""HTTPS: the rendered nginx TLS includes, the pair's checks and their messages, the HTTPS keys, and
how the pair is written on a host (modes, never on a command line, renewal, restore)."""

from __future__ import annotations

import datetime as dt
import os
import shlex
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from invoke.context import Context
from invoke.runners import Result

from handover import settings as settings_module
from handover.backends import Instance
from handover.errors import CommandError, ConfigError, ProxyConfigInvalid
from handover.probe import ProbeError, ProbeSettings
from handover.probe.http_client import HttpTarget
from handover.proxies import tls
from tests.tlsfiles import Authority, other_key

DEFAULTS = settings_module.DEFAULTS_FILE


@pytest.fixture
def ca() -> Authority:
    return Authority.make()


@pytest.fixture
def pair(ca: Authority, tmp_path: Path) -> tuple[Path, Path]:
    return ca.server_pair(tmp_path, "site")


def config(**overrides: object) -> dict[str, object]:
    import yaml

    data: dict[str, object] = yaml.safe_load(DEFAULTS.read_text())["deploy"]
    data.update(overrides)
    return data


# -- rendering ---------------------------------------------------------------------------------------
def test_plain_http_listens_on_the_http_port_only() -> None:
    text = tls.render_listen(False)
    assert "listen 8080 default_server;" in text
    assert "ssl" not in text
    assert "server {" not in tls.render_redirect(None)


def test_tls_listen_has_sane_protocols_ciphers_session_cache_and_no_hsts_by_default() -> None:
    text = tls.render_listen(True)
    assert "listen 8443 ssl default_server;" in text
    # Loaded at each handshake through the live link (the variable is always empty): no reload to renew.
    assert "ssl_certificate /etc/nginx/tls/live.pem$handover_tls_pair;" in text
    assert "ssl_certificate_key /etc/nginx/tls/live.pem$handover_tls_pair;" in text
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert "TLSv1.1" not in text and "TLSv1 " not in text
    ciphers = next(line for line in text.splitlines() if line.startswith("ssl_ciphers"))
    assert all(suite.startswith("ECDHE-") and ("GCM" in suite or "CHACHA20" in suite)
               for suite in ciphers.removeprefix("ssl_ciphers ").rstrip(";").split(":"))
    assert "ssl_session_cache shared:" in text and "ssl_session_tickets off;" in text
    assert "Strict-Transport-Security" not in text
    assert "listen 8080" not in text


def test_hsts_header_when_asked() -> None:
    text = tls.render_listen(True, hsts=31536000)
    assert 'add_header Strict-Transport-Security "max-age=31536000" always;' in text
    with pytest.raises(ValueError):
        tls.render_listen(True, hsts=-1)


@pytest.mark.parametrize("generation", ["../etc/passwd", "0123", "0123456789ABCDEF"])
def test_only_a_generation_digest_can_name_the_files(generation: str) -> None:
    with pytest.raises(ValueError):
        tls.render_check(generation)


def test_the_check_config_loads_only_the_new_pair() -> None:
    text = tls.render_check("0123456789abcdef")
    assert "ssl_certificate /etc/nginx/tls/0123456789abcdef.pem;" in text
    assert "ssl_certificate_key /etc/nginx/tls/0123456789abcdef.pem;" in text
    assert "include" not in text and "listen 127.0.0.1:9 ssl;" in text


@pytest.mark.parametrize(("port", "target"), [(8443, "https://$host:8443$request_uri"),
                                              (443, "https://$host$request_uri")])
def test_plain_http_redirects_to_https_keeping_path_and_query(port: int, target: str) -> None:
    text = tls.render_redirect(port)
    assert "listen 8080 default_server;" in text
    assert f"return 308 {target};" in text
    assert "location = /nginx-health" in text
    assert "map $server_port $handover_tls_pair {" in text


def test_the_live_link_names_its_pair() -> None:
    assert tls.generation_of("0123456789abcdef.pem\n") == "0123456789abcdef"
    assert tls.generation_of("../x.pem") is None
    assert tls.generation_of(None) is None


# -- the pair's checks -------------------------------------------------------------------------------
def test_a_good_pair_passes_and_its_generation_follows_its_content(pair: tuple[Path, Path], ca: Authority,
                                                                   tmp_path: Path) -> None:
    checked = tls.check_pair(str(pair[0]), str(pair[1]))
    assert checked.key == pair[1].read_bytes()
    assert tls.check_pair(str(pair[0]), str(pair[1])).generation == checked.generation
    renewed = ca.server_pair(tmp_path, "renewed")
    assert tls.check_pair(str(renewed[0]), str(renewed[1])).generation != checked.generation


def test_an_expired_certificate_is_named(ca: Authority, tmp_path: Path) -> None:
    cert, key = ca.server_pair(tmp_path, "old", expired=True)
    with pytest.raises(ConfigError, match=rf"deploy.tls_certificate: the certificate in {cert} expired on "):
        tls.check_pair(str(cert), str(key))


def test_a_certificate_not_valid_yet_is_named(pair: tuple[Path, Path]) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=5)
    with pytest.raises(ConfigError, match="is not valid before"):
        tls.check_pair(str(pair[0]), str(pair[1]), now=past)


def test_a_key_of_another_certificate_is_named(ca: Authority, tmp_path: Path) -> None:
    cert, key = ca.server_pair(tmp_path, "mixed", key=other_key())
    with pytest.raises(ConfigError) as caught:
        tls.check_pair(str(cert), str(key))
    message = str(caught.value)
    assert "deploy.tls_certificate and deploy.tls_key" in message
    assert f"the key {key} does not belong to the certificate {cert}" in message
    assert "PRIVATE KEY" not in message and key.read_text().splitlines()[1] not in message


def test_an_unreadable_or_missing_file_is_named(pair: tuple[Path, Path], tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(ConfigError, match=rf"deploy.tls_key: cannot read {missing} \(No such file or directory\)"):
        tls.check_pair(str(pair[0]), str(missing))
    with pytest.raises(ConfigError, match=rf"deploy.tls_certificate: cannot read {tmp_path} \(Is a directory\)"):
        tls.check_pair(str(tmp_path), str(pair[1]))


def test_garbage_is_named_without_quoting_it(pair: tuple[Path, Path], tmp_path: Path) -> None:
    secret = "material-never-shown"  # noqa: S105
    junk = tmp_path / "junk.pem"
    junk.write_text(f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as caught:
        tls.check_pair(str(pair[0]), str(junk))
    assert f"deploy.tls_key: {junk} holds no PEM private key" in str(caught.value) and secret not in str(caught.value)
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        tls.check_pair(str(junk), str(pair[1]))


def test_an_encrypted_key_is_refused_with_the_reason(pair: tuple[Path, Path], tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pair[1].read_bytes(), password=None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(ConfigError, match="encrypted with a passphrase; nginx needs it unencrypted"):
        tls.check_pair(str(pair[0]), str(locked))


def test_an_rsa_key_is_read_and_compared(ca: Authority, tmp_path: Path) -> None:
    cert, key_path = ca.server_pair(tmp_path, "ec")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_path.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    with pytest.raises(ConfigError, match="does not belong"):  # an RSA key is read, and compared
        tls.check_pair(str(cert), str(key_path))


# -- the keys ----------------------------------------------------------------------------------------
def test_tls_is_off_by_default() -> None:
    s = settings_module.load(config())
    assert (s.tls, s.tls_certificate, s.tls_key, s.https_port, s.hsts) == (False, "", "", 8443, 0)


def test_both_files_or_neither(pair: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match=r"config key deploy.tls_key: deploy.tls_certificate is set, so "
                                          r"deploy.tls_key must be too"):
        settings_module.load(config(tls_certificate=str(pair[0])))
    with pytest.raises(ConfigError, match=r"config key deploy.tls_certificate: deploy.tls_key is set"):
        settings_module.load(config(tls_key=str(pair[1])))


def test_https_port_must_differ_from_http_port(pair: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match=r"config key deploy\.https_port: 8080 is deploy\.http_port too"):
        settings_module.load(config(tls_certificate=str(pair[0]), tls_key=str(pair[1]), https_port=8080))


@pytest.mark.parametrize(("key", "value", "words"), [("https_port", 70000, "a whole number from 1 to 65535"),
                                                     ("hsts", -1, "a whole number from 0 to 63072000"),
                                                     ("hsts", "year", "a whole number")])
def test_bad_values_name_the_key(key: str, value: object, words: str) -> None:
    with pytest.raises(ConfigError, match=f"config key deploy.{key}: expected {words}"):
        settings_module.load(config(**{key: value}))


def test_relative_paths_are_taken_from_the_project_root(pair: tuple[Path, Path]) -> None:
    relative = os.path.relpath(pair[0], settings_module.PROJECT_ROOT)
    s = settings_module.load(config(tls_certificate=relative, tls_key=str(pair[1]), hsts="600"))
    assert s.tls and Path(s.tls_certificate).resolve() == pair[0].resolve() and s.hsts == 600


def test_the_proxy_gets_the_https_port_only_with_tls(pair: tuple[Path, Path], tmp_path: Path) -> None:
    from handover.backends.compose import ComposeBackend
    from handover.proxies.nginx import NginxProxy

    plain = settings_module.load(config(), deploy_dir=str(tmp_path))
    assert "HTTPS_PORT" not in NginxProxy(Context(), plain, ComposeBackend(Context(), plain)).build_env()
    on = settings_module.load(config(tls_certificate=str(pair[0]), tls_key=str(pair[1]), https_port=9443),
                              deploy_dir=str(tmp_path))
    assert NginxProxy(Context(), on, ComposeBackend(Context(), on)).build_env()["HTTPS_PORT"] == "9443"


# -- the files on the host ---------------------------------------------------------------------------
class Recording:
    """A local runner that keeps every command line it ran."""

    def __init__(self) -> None:
        self.context = Context()
        self.lines: list[str] = []

    def run(self, command: str, **kwargs: Any) -> Any:
        self.lines.append(command)
        return self.context.run(command, **kwargs)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_writes_the_pair_0600_never_on_a_command_line_and_renewal_swaps_one_link(
        ca: Authority, pair: tuple[Path, Path], tmp_path: Path) -> None:
    runner = Recording()
    home = tmp_path / "state" / "tls"
    given: list[str] = []
    checked: list[str] = []
    files = tls.TlsFiles(runner, str(home), str(pair[0]), str(pair[1]), 8443, 0,
                         give_to_workers=given.append, validate=checked.append)
    assert files.install() is True  # the include files changed: a reload is due
    first = tls.check_pair(str(pair[0]), str(pair[1])).generation
    pem = home / f"{first}.pem"
    assert pem.read_bytes() == pair[0].read_bytes().rstrip(b"\n") + b"\n" + pair[1].read_bytes()
    assert _mode(pem) == 0o600 and _mode(home) == 0o711
    assert given == [str(pem)] and checked == ["/etc/nginx/tls/pair-check.nginx"]
    assert os.readlink(home / "live.pem") == f"{first}.pem" and files.renewed
    body = "".join(pair[1].read_text().splitlines()[1:-1])
    assert all(body[:40] not in line for line in runner.lines), "the key must never be on a command line"
    assert "return 308" in (home / tls.REDIRECT_FILE).read_text()
    assert files.install() is False and not files.renewed  # nothing changed: nothing written
    assert len(given) == 1

    renewed = ca.server_pair(tmp_path, "renewed")
    files.cert, files.key = str(renewed[0]), str(renewed[1])
    assert files.install() is False  # a renewal: no include file changes, so no reload
    second = tls.check_pair(*map(str, renewed)).generation
    assert files.renewed and os.readlink(home / "live.pem") == f"{second}.pem"
    assert {p.name for p in home.glob("*.pem") if not p.is_symlink()} == {f"{first}.pem", f"{second}.pem"}
    assert files.restore() is False  # a failed deploy: the previous pair is live again, still no reload
    assert os.readlink(home / "live.pem") == f"{first}.pem"

    third = ca.server_pair(tmp_path, "third")
    files.cert, files.key = str(third[0]), str(third[1])
    files.install()
    generation = tls.check_pair(*map(str, third)).generation
    assert {p.name for p in home.glob("*.pem") if not p.is_symlink()} == {f"{first}.pem", f"{generation}.pem"}


def test_a_pair_nginx_refuses_is_not_put_live(ca: Authority, pair: tuple[Path, Path], tmp_path: Path) -> None:
    home = tmp_path / "tls"
    files = tls.TlsFiles(Recording(), str(home), str(pair[0]), str(pair[1]))
    files.install()
    renewed = ca.server_pair(tmp_path, "renewed")

    def refuse(conf: str) -> None:
        raise ConfigError("nginx -t refused it")

    refusing = tls.TlsFiles(Recording(), str(home), str(renewed[0]), str(renewed[1]), validate=refuse)
    with pytest.raises(ConfigError, match="refused"):
        refusing.install()
    assert tls.generation_of(os.readlink(home / "live.pem")) == tls.check_pair(*map(str, pair)).generation


def test_a_bad_pair_writes_nothing(ca: Authority, tmp_path: Path) -> None:
    cert, key = ca.server_pair(tmp_path, "old", expired=True)
    home = tmp_path / "tls"
    files = tls.TlsFiles(Recording(), str(home), str(cert), str(key))
    with pytest.raises(ConfigError, match="expired"):
        files.install()
    assert not home.exists()


def test_turning_tls_off_writes_the_plain_listen(pair: tuple[Path, Path], tmp_path: Path) -> None:
    home = tmp_path / "tls"
    tls.TlsFiles(Recording(), str(home), str(pair[0]), str(pair[1])).install()
    assert tls.TlsFiles(Recording(), str(home)).install() is True
    assert "listen 8080 default_server;" in (home / tls.LISTEN_FILE).read_text()
    assert "server {" not in (home / tls.REDIRECT_FILE).read_text()


# -- the probe ---------------------------------------------------------------------------------------
def test_the_probe_takes_a_ca_file_for_https(ca: Authority, tmp_path: Path) -> None:
    bundle = ca.write(tmp_path / "ca.pem")
    settings = ProbeSettings(base_url="https://127.0.0.1:8443", ca_file=str(bundle))
    context = settings.tls_context()
    assert context is not None and context.check_hostname
    assert any(c.get("subject") == ((("commonName", "handover test CA"),),) for c in context.get_ca_certs())
    assert settings.ws_url == "wss://127.0.0.1:8443/ws"
    assert HttpTarget.from_url(settings.base_url, settings.ca_file).ca_file == str(bundle)
    assert ProbeSettings(base_url="http://127.0.0.1:8080").tls_context() is None
    with pytest.raises(ProbeError, match=r"ca_file .* is not a readable file"):
        ProbeSettings(base_url="https://127.0.0.1:8443", ca_file=str(tmp_path / "none.pem"))


# -- through the engine (fake Docker host) -----------------------------------------------------------
def test_a_deploy_with_an_expired_pair_stops_before_the_lock_and_is_recorded(ca: Authority, tmp_path: Path) -> None:
    from handover.engine import DeployOptions, Engine
    from handover.progress import Progress
    from tests.unit.fakehost import FakeHost, fake_settings

    host = FakeHost(tmp_path)
    assert Engine(host.runner, host.settings, Progress(quiet=True)).up("v1").result == "success"
    cert, key = ca.server_pair(tmp_path, "old", expired=True)
    expired = fake_settings(tmp_path, tls_certificate=str(cert), tls_key=str(key))  # the same host's tree
    calls = len(host.calls)
    engine = Engine(host.runner, expired, Progress(quiet=True))
    with pytest.raises(ConfigError, match=f"the certificate in {cert} expired on"):
        engine.deploy(DeployOptions(version="v2"))
    made = [c.command.line for c in host.calls[calls:]]
    assert not any(line.endswith("/lock") or " up " in line or " build " in line or "docker exec" in line
                   for line in made), made
    assert not host.lock_held()
    record = host.records()[-1]
    assert (record["version"], record["result"], record["failed_step"]) == ("v2", "failed", "proxy config")
    assert not (tmp_path / "deploy" / ".state" / "tls" / "live.pem").exists()


@pytest.mark.parametrize(("tls_on", "renewed", "reloaded", "words"), [
    (True, True, False, "new certificate and key live (nginx -t passed; new TLS connections get them, no reload)"),
    (True, False, True, "TLS configuration changed (nginx -t passed, nginx reloaded)"),
    (True, False, False, "certificate and key unchanged; nothing done"),
    (False, False, False, "TLS is off (deploy.tls_certificate is empty); nothing to do"),
])
def test_certs_says_what_it_did(pair: tuple[Path, Path], tls_on: bool, renewed: bool, reloaded: bool,
                                words: str) -> None:
    from handover import cli
    from handover.backends.compose import ComposeBackend
    from handover.proxies.nginx import NginxProxy

    keys = {"tls_certificate": str(pair[0]), "tls_key": str(pair[1])} if tls_on else {}
    s = settings_module.load(config(**keys))
    proxy = NginxProxy(Context(), s, ComposeBackend(Context(), s))
    assert cli.certs_outcome(s, proxy, renewed=renewed, reloaded=reloaded) == words


# -- the pair through nginx's proxy: checked by the running nginx, made the workers' own ------------
class HostRunner(Recording):
    """Runs everything on this machine but ``docker``, whose command lines it keeps and answers with
    exit 0; with ``sftp``, files are written as over a Fabric connection (the remote path)."""

    def __init__(self, sftp: bool = False, docker_says: str = "") -> None:
        super().__init__()
        self.docker: list[str] = []
        self.docker_says = docker_says
        if sftp:
            self.sftp = LocalSftp

    def run(self, command: str, **kwargs: Any) -> Any:
        if command.startswith("docker "):
            self.docker.append(command)
            return Result(command=command, stdout=self.docker_says, exited=0)
        return super().run(command, **kwargs)


class LocalSftp:
    """The two SFTP calls write_private makes, on this machine's files."""

    def open(self, path: str, mode: str) -> Any:
        out = open(path, mode + "b")  # noqa: SIM115 - closed by the caller's with block
        out.chmod = lambda m: os.chmod(path, m)  # type: ignore[attr-defined]
        return out

    def posix_rename(self, old: str, new: str) -> None:
        os.replace(old, new)


class ProxyBackend:
    """The backend as the proxy uses it here: its running container (or none) and `docker exec` in it,
    which answers ``exited`` and ``says`` on stderr."""

    def __init__(self, running: bool, exited: int = 0, says: str = "") -> None:
        self.instance = Instance(id="f00d" * 16, name="p-nginx-1", service="nginx", version="", image="p-nginx",
                                 status="running", health="", restarts=0, created="") if running else None
        self.exited, self.says = exited, says
        self.execs: list[tuple[str, list[str]]] = []

    def proxy_instance(self, service: str) -> Instance | None:
        return self.instance

    def exec(self, instance: Instance, argv: list[str], *, check: bool = True) -> Result:
        self.execs.append((instance.id, list(argv)))
        if check and self.exited:
            raise CommandError(shlex.join(argv), self.exited, self.says)
        return Result(command=" ".join(argv), stderr=self.says, exited=self.exited)


def nginx_proxy(pair: tuple[Path, Path], tmp_path: Path, runner: HostRunner, backend: ProxyBackend) -> Any:
    from handover.proxies.nginx import NginxProxy

    s = settings_module.load(config(tls_certificate=str(pair[0]), tls_key=str(pair[1])), deploy_dir=str(tmp_path))
    return NginxProxy(runner, s, backend)  # type: ignore[arg-type]


@pytest.fixture
def chowned(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """The chowns made on this machine, kept instead of made (a test need not run as root)."""
    calls: list[tuple[str, int, int]] = []
    monkeypatch.setattr(os, "chown", lambda path, uid, gid: calls.append((str(path), uid, gid)))
    return calls


def _live_pem(proxy: Any) -> Path:
    return Path(proxy.tls_dir) / os.readlink(Path(proxy.tls_dir) / "live.pem")


def test_the_running_nginx_checks_a_new_pair_before_it_goes_live(
        ca: Authority, pair: tuple[Path, Path], tmp_path: Path, chowned: list[tuple[str, int, int]]) -> None:
    backend = ProxyBackend(running=True)
    proxy = nginx_proxy(pair, tmp_path, HostRunner(), backend)
    proxy.tls.install()
    assert backend.execs == [("f00d" * 16, ["nginx", "-t", "-q", "-c", "/etc/nginx/tls/pair-check.nginx"])]
    assert tls.generation_of(_live_pem(proxy).name) == tls.check_pair(*map(str, pair)).generation


def test_a_pair_the_running_nginx_refuses_is_named_with_its_words_and_not_put_live(
        ca: Authority, pair: tuple[Path, Path], tmp_path: Path, chowned: list[tuple[str, int, int]]) -> None:
    first = nginx_proxy(pair, tmp_path, HostRunner(), ProxyBackend(running=False))
    first.tls.install()  # the first start: no nginx runs yet to check it (the pair was checked alone)
    live = _live_pem(first)
    renewed = ca.server_pair(tmp_path, "renewed")
    refusing = ProxyBackend(running=True, exited=1, says='nginx: [emerg] SSL_CTX_use_PrivateKey("x") failed\n')
    proxy = nginx_proxy(renewed, tmp_path, HostRunner(), refusing)
    with pytest.raises(ProxyConfigInvalid) as info:
        proxy.tls.install()
    assert str(info.value) == ("nginx -t refused the new certificate and key (nothing changed):\n"
                               'nginx: [emerg] SSL_CTX_use_PrivateKey("x") failed')
    assert _live_pem(proxy) == live


def test_without_a_running_nginx_the_pair_goes_live_unchecked(
        pair: tuple[Path, Path], tmp_path: Path, chowned: list[tuple[str, int, int]]) -> None:
    backend = ProxyBackend(running=False)
    proxy = nginx_proxy(pair, tmp_path, HostRunner(), backend)
    proxy.tls.install()
    assert backend.execs == [] and _live_pem(proxy).is_file()


@pytest.mark.parametrize(("euid", "sftp", "in_a_container"), [
    (0, False, False),  # root on this machine: a chown here
    (1000, False, True),  # a user in the docker group: the file is root's to give only inside a container
    (0, True, True),  # a host over SSH: the chown runs there, in a container of the proxy's image
])
def test_the_pair_becomes_the_workers_own(pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          chowned: list[tuple[str, int, int]], euid: int, sftp: bool,
                                          in_a_container: bool) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    runner = HostRunner(sftp=sftp)
    proxy = nginx_proxy(pair, tmp_path, runner, ProxyBackend(running=False))
    proxy.tls.install()
    pem = _live_pem(proxy)
    assert _mode(pem) == 0o600
    workers = f"{tls.WORKER_UID}:{tls.WORKER_UID}"
    chown = (f"docker run --rm --network none --user 0 --volume {proxy.tls_dir}:/tls --entrypoint chown "
             f"{proxy.settings.project}-nginx:1 {workers} /tls/{pem.name}")
    assert (runner.docker, chowned) == (([chown], []) if in_a_container else
                                        ([], [(str(pem), tls.WORKER_UID, tls.WORKER_UID)]))


def test_turning_tls_on_is_put_back_by_the_proxys_restore(
        pair: tuple[Path, Path], tmp_path: Path, chowned: list[tuple[str, int, int]]) -> None:
    """A deploy that turned TLS on and then failed: the plain includes come back, and restore()
    says so (a reload is due), though the routes were not touched."""
    from handover.proxies.nginx import NginxProxy

    plain = settings_module.load(config(), deploy_dir=str(tmp_path))
    NginxProxy(HostRunner(), plain, ProxyBackend(running=False)).tls.install()  # type: ignore[arg-type]
    home = Path(plain.state_path) / "tls"
    includes = (tls.LISTEN_FILE, tls.REDIRECT_FILE)
    before = {name: (home / name).read_text() for name in includes}
    proxy = nginx_proxy(pair, tmp_path, HostRunner(), ProxyBackend(running=False))
    assert proxy.tls.install() is True
    assert proxy.restore() is True
    assert {name: (home / name).read_text() for name in includes} == before
    assert not (home / "live.pem").exists()
    assert proxy.restore() is False


@pytest.mark.parametrize(("tls_on", "running", "published", "refused"), [
    (True, True, "127.0.0.1:8443\n", False),
    (True, True, "127.0.0.1:9443\n", True),  # made with another https_port
    (True, True, "", True),  # made with TLS off: nothing published
    (True, False, "", False),  # no proxy yet: its first start publishes the port
    (False, True, "", False),  # TLS off: no HTTPS port to publish
])
def test_a_proxy_made_without_the_https_port_is_refused_before_anything_changes(
        pair: tuple[Path, Path], tmp_path: Path, tls_on: bool, running: bool, published: str, refused: bool) -> None:
    from handover.proxies.nginx import NginxProxy

    keys = {"tls_certificate": str(pair[0]), "tls_key": str(pair[1])} if tls_on else {}
    s = settings_module.load(config(**keys, https_port=8443), deploy_dir=str(tmp_path))
    runner = HostRunner(docker_says=published)
    proxy = NginxProxy(runner, s, ProxyBackend(running=running))  # type: ignore[arg-type]
    if refused:
        with pytest.raises(ConfigError) as info:
            proxy.check()
        assert str(info.value).startswith(
            f"config key deploy.https_port: nginx's container p-nginx-1 does not publish {s.http_bind}:8443 "
            "(it was made with TLS off or another port)")
    else:
        proxy.check()
    asked = [f"docker port {'f00d' * 16} 8443/tcp"] if tls_on and running else []
    assert runner.docker == asked
    assert not Path(s.state_path).exists()  # a check changes nothing


def test_nginxs_tls_files_follow_the_https_port_and_hsts_settings(
        pair: tuple[Path, Path], tmp_path: Path, chowned: list[tuple[str, int, int]]) -> None:
    from handover.proxies.nginx import NginxProxy

    s = settings_module.load(config(tls_certificate=str(pair[0]), tls_key=str(pair[1]), https_port=9443,
                                    hsts=3600), deploy_dir=str(tmp_path))
    proxy = NginxProxy(HostRunner(), s, ProxyBackend(running=False))  # type: ignore[arg-type]
    proxy.tls.install()
    home = Path(proxy.tls_dir)
    assert (home / tls.REDIRECT_FILE).read_text() == tls.render_redirect(9443)
    assert (home / tls.LISTEN_FILE).read_text() == tls.render_listen(True, 3600)
