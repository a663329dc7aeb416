"""A three-node Docker swarm on this machine, for ``inv bench --only swarm`` (and for trying
``deploy.backend: swarm`` by hand): one manager and two workers, each a Docker-in-Docker container
(:mod:`tests.integration.dind`, as the Swarm integration test builds its swarm), on a network of
their own. This machine's own engine never joins a swarm.

``up`` builds the demo app's image (``<project>-app:lab``) and the proxy's (``<project>-nginx:1``)
here and loads them into the nodes (the app into every node, the proxy into the manager), as an
operator provisions a swarm without a registry. Each node's engine also listens on a socket in
``<state dir>/run/`` (the manager's is the ``DOCKER_HOST`` for ``inv``); nginx's host-mode port 8080
on the manager is published on 127.0.0.1 here. It writes what it made to ``<state dir>/lab.json``
(the bench reads it: the manager, every node's engine, the URL, the images) and prints it.
``down`` removes the nodes, their volumes, the network and the images it made.

    PYTHONPATH=$PWD .venv/bin/python scripts/swarm_lab.py up --http-port 18140
    PYTHONPATH=$PWD .venv/bin/inv bench --deploys 5 --only engine,swarm --swarm-lab .state-swarm-lab/lab.json
    PYTHONPATH=$PWD .venv/bin/python scripts/swarm_lab.py down
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the dind helpers live with the integration tests

from invoke.context import Context  # noqa: E402

from handover import images  # noqa: E402
from handover.progress import Progress  # noqa: E402
from handover.swarm_bench import INNER_HTTP_PORT, LAB_FILE, Lab, lab_json, load_lab  # noqa: E402
from tests.integration.dind import BUILD_TIMEOUT, docker, form_swarm, host_image, load_images, run_node  # noqa: E402

BASE = "debian:bookworm"
APP_TAG = "lab"


def node_names(prefix: str) -> tuple[str, str, str]:
    return (f"{prefix}-m", f"{prefix}-w1", f"{prefix}-w2")


def remove(prefix: str) -> None:
    for node in node_names(prefix):
        docker("rm", "--force", "--volumes", node, check=False)
        docker("volume", "rm", f"{node}-lib", check=False)
    docker("network", "rm", f"{prefix}-net", check=False)


def up(args: argparse.Namespace) -> None:
    state = Path(args.state_dir).resolve()
    prefix, project = args.prefix, args.project
    nodes = node_names(prefix)
    manager = nodes[0]
    network = f"{prefix}-net"
    app_image, proxy_image = f"{project}-app", f"{project}-nginx:1"
    run_dir = state / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    say = print
    say(f"==> images: the nodes' ({prefix}-dind-host), {app_image}:{APP_TAG}, {proxy_image}")
    minbase = images.ensure_base_image(Context(), BASE, Progress(quiet=True))
    with tempfile.TemporaryDirectory() as tmp:
        node_image = host_image(Path(tmp), minbase, f"{prefix}-dind-host")
    images.build_wheelhouse(ROOT / "server", Progress(quiet=True))
    docker("build", "--quiet", "--build-arg", f"BASE_IMAGE={minbase}", "--tag", f"{app_image}:{APP_TAG}",
           str(ROOT / "server"), timeout=BUILD_TIMEOUT)
    docker("build", "--quiet", "--build-arg", f"BASE_IMAGE={minbase}", "--tag", proxy_image, str(ROOT / "nginx"),
           timeout=BUILD_TIMEOUT)
    say(f"==> nodes {', '.join(nodes)} on network {network}")
    remove(prefix)
    docker("network", "create", network)
    for node in nodes:
        publish = ["--publish", f"127.0.0.1:{args.http_port}:{INNER_HTTP_PORT}"] if node == manager else []
        run_node(node, network, node_image, ["-v", f"{run_dir}:/run/outer", *publish],
                 outer_socket=f"/run/outer/{node}.sock")
    form_swarm(nodes, network)
    say("==> loading the images into the nodes (docker save | docker load)")
    for node in nodes:
        load_images(node, f"{app_image}:{APP_TAG}", *([proxy_image] if node == manager else []))
    lab = Lab(prefix=prefix, project=project, url=f"http://127.0.0.1:{args.http_port}",
              nodes={node: f"unix://{run_dir}/{node}.sock" for node in nodes}, manager=manager,
              app_image=app_image, app_tag=APP_TAG, proxy_image=proxy_image, base_image=minbase,
              node_image=node_image)
    (state / LAB_FILE).write_text(lab_json(lab))
    say(f"==> swarm lab up: {len(nodes)} nodes, manager {manager}")
    say(f"    DOCKER_HOST={lab.docker_host}")
    say(f"    URL {lab.url}  (nginx's port {INNER_HTTP_PORT} on the manager, once a stack runs)")
    say(f"    state {state / LAB_FILE}")
    say(f"    inv bench --only engine,swarm --swarm-lab {state / LAB_FILE}")


def down(args: argparse.Namespace) -> None:
    state = Path(args.state_dir).resolve()
    path = state / LAB_FILE
    if not path.exists():
        raise SystemExit(f"no swarm lab at {path} (nothing to remove)")
    lab = load_lab(path)
    remove(lab.prefix)
    tags = docker("image", "ls", lab.app_image, "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    docker("image", "rm", *tags, lab.proxy_image, check=False)
    if not args.keep_node_image:
        docker("image", "rm", lab.node_image, check=False)
    shutil.rmtree(state, ignore_errors=True)
    print(f"==> swarm lab {lab.prefix} removed (nodes, volumes, network, images)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--state-dir", default=str(ROOT / ".state-swarm-lab"),
                        help="where lab.json and the nodes' sockets go (default: .state-swarm-lab)")
    parser.add_argument("--prefix", default="swarm-lab", help="container, volume and network names start with it")
    parser.add_argument("--project", default="swarm-bench", help="the stack's name (its images are named after it)")
    parser.add_argument("--http-port", type=int, default=18140, help="nginx on 127.0.0.1 here")
    parser.add_argument("--keep-node-image", action="store_true", help="down: keep the nodes' image for next time")
    args = parser.parse_args()
    up(args) if args.action == "up" else down(args)


if __name__ == "__main__":
    main()
