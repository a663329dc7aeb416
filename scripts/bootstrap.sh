#!/usr/bin/env bash
# Make this machine ready to run the stack and the tests: Docker engine + Compose v2 plugin, sshd,
# rsync, a local image registry on 127.0.0.1:5000 (Debian's docker-registry), a virtualenv with the
# project. Idempotent: quick when everything is already there.
# Needs root (or sudo) for the system packages; Debian/Ubuntu only.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

step() { printf '==> %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

# Docker engine, the Compose v2 plugin, rsync, dockerd running: the same installer that
# `fab setup --install` runs on a deploy host (it says what it found and what it did).
step "Docker engine, Compose v2 plugin, rsync"
if [ "$(id -u)" -eq 0 ]; then
  sh scripts/host-install.sh
else
  $SUDO sh scripts/host-install.sh --user "$(id -un)"
fi

system=()   # what the tests need besides: the debootstrap base image, sshd, curl, the image registry
have debootstrap || system+=(debootstrap)
have sshd || [ -x /usr/sbin/sshd ] || system+=(openssh-server)
have curl || system+=(curl)
have docker-registry || system+=(docker-registry)
browser=()  # only what headless Chromium needs
if [ "${HANDOVER_BROWSER:-1}" = 1 ]; then
  have chromium || browser+=(chromium)
  have chromedriver || browser+=(chromium-driver)
fi
if [ ${#system[@]} -gt 0 ] || [ ${#browser[@]} -gt 0 ]; then
  step "installing ${system[*]} ${browser[*]}"
  $SUDO apt-get update -qq
  apt=($SUDO env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq)
  [ ${#system[@]} -eq 0 ] || "${apt[@]}" "${system[@]}" >/dev/null
  [ ${#browser[@]} -eq 0 ] || "${apt[@]}" --no-install-recommends "${browser[@]}" >/dev/null
fi

# The tests push images here and deploy them by reference. Docker allows plain HTTP to a registry on
# 127.0.0.0/8 without configuration. Our own config: loopback only, no auth (the package's has htpasswd).
REGISTRY=127.0.0.1:5000
if ! curl -fsS --max-time 2 "http://$REGISTRY/v2/" >/dev/null 2>&1; then
  step "starting the image registry on $REGISTRY"
  $SUDO sh -c "nohup setsid docker-registry serve '$here/scripts/registry.yml' >/var/log/docker-registry.log 2>&1 </dev/null &"
  for _ in $(seq 1 40); do curl -fsS --max-time 2 "http://$REGISTRY/v2/" >/dev/null 2>&1 && break; sleep 0.25; done
  curl -fsS --max-time 2 "http://$REGISTRY/v2/" >/dev/null \
    || { echo "the registry did not start on $REGISTRY; see /var/log/docker-registry.log" >&2; exit 1; }
fi

if [ ! -x .venv/bin/python ]; then
  step "creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import handover, fabric, pytest" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.installed ]; then
  step "installing the project into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check -e ".[dev]"
  touch .venv/.installed
fi
step "ready: $($SUDO docker version --format 'docker {{.Server.Version}}'), $($SUDO docker compose version --short | sed 's/^/compose /')"
