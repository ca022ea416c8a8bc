"""The image and the deployments, run under a real container runtime (podman with runc).

A session fixture installs podman with apt (like the other deploy tools),
builds a Debian base image offline (debootstrap, cached: see
podman_helpers.py), builds deploy/docker/Dockerfile on it with no network
from a wheelhouse made on the host, then:

- sidecar: broker, producer and consumer containers that share only a
  volume at /run/bufbroker (no --ipc=host, no shared PID namespace, no
  network at all); the consumer (`bufbroker stream watch --check`) checks
  every numbered frame of `bufbroker stream test-source`; `podman stop` of
  the broker drains; `podman kill` of the producer ends the stream;
- per node: one broker on a host directory, clients of other uids allowed
  by `gid:`/`uid:` rules, one refused;
- `podman kube play` on the manifests, rendered where podman 4.3 lacks a
  feature (each test says what it changed and why).

The broker's fd count is read from the host (/proc/PID/fd of the broker
container's pid 1: root on the host sees every pid namespace) and must be
back at its baseline, taken after one warm-up stream, as tests/conftest.py
does for brokers started on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.apt import APT_TIMEOUT, apt_install
from tests.conftest import fd_count, settled_fd_count, wait_for_fds
from tests.deploy.podman_helpers import (
    APT_PACKAGES,
    IMAGE,
    REPO_ROOT,
    Podman,
    build_image,
    build_wheelhouse,
    containers_conf,
    ensure_base_image,
    podman_works,
    progress,
    show_progress_on,
)

# The first test also waits for the session fixtures: apt (update, install), debootstrap, the wheelhouse
# and the image build, minutes on a cold machine.
pytestmark = pytest.mark.timeout(2 * APT_TIMEOUT + 900)

K8S = REPO_ROOT / "deploy" / "k8s"
SOCKET_DIR = "/run/bufbroker"
BROKER_UID = 10001

# Every container: nothing shared with the host or the others but the socket dir.
ISOLATED = ["--network", "none", "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
CLIENT = [*ISOLATED, "--no-healthcheck"]  # clients use the image's HEALTHCHECK only by hand
FRAME_SIZE = "64x48"


# --- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="session")
def podman_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    show_progress_on(request.config)
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir("bufbroker-podman")) if cache is not None else tmp_path_factory.mktemp("podman")


@pytest.fixture(scope="session")
def podman(podman_cache: Path) -> Iterator[Podman]:
    """podman configured for this host, installed with apt when missing; a loud skip where it cannot run."""
    missing = [tool for tool in ("podman", "runc", "debootstrap", "catatonit") if shutil.which(tool) is None]
    if missing and not Path("/usr/libexec/podman/catatonit").exists():
        apt_install([*APT_PACKAGES, "catatonit"], progress)  # catatonit: the pause process of kube play's pods
    conf = podman_cache / "containers.conf"
    conf.write_text(containers_conf())
    engine = Podman(conf)
    why = podman_works(engine)
    if why is not None:
        pytest.skip(f"NOT TESTED: podman cannot run containers here: {why}")
    yield engine
    engine.cleanup()


@pytest.fixture(scope="session")
def image(podman: Podman, podman_cache: Path) -> dict[str, Any]:
    """The project's image, built on the offline base; what it took."""
    started = time.monotonic()
    base = ensure_base_image(podman, podman_cache)
    probe = podman.run("run", "--rm", *CLIENT, "localhost/bufbroker-base:bookworm", "true", check=False)
    if probe.returncode != 0:
        pytest.skip(f"NOT TESTED: podman cannot start a container here: {probe.stderr.strip()[-1500:]}")
    build_wheelhouse()
    seconds = build_image(podman)
    size = int(podman.run("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    facts = {"base": base, "build_seconds": seconds, "total_seconds": time.monotonic() - started, "size": size}
    progress(
        f"image {IMAGE}: {size / 1e6:.0f} MB, built in {seconds:.0f} s "
        f"({facts['total_seconds']:.0f} s with base and wheels; base {base})"
    )
    return facts


# --- helpers --------------------------------------------------------------------


def start_broker(podman: Podman, name: str, mount: str, *extra: str) -> int:
    """A broker container serving ``mount`` at /run/bufbroker (the image's own CMD, HTTP off); its pid."""
    podman.container(name, *ISOLATED, "-v", f"{mount}:{SOCKET_DIR}", *extra, IMAGE, "serve", "--http", "none")
    podman.wait_for_log(name, "serving grpc=", timeout=30)
    return podman.pid(name)


def source(podman: Podman, name: str, mount: str, stream: str, *args: str) -> str:
    return podman.container(
        name,
        *CLIENT,
        "-v",
        f"{mount}:{SOCKET_DIR}",
        IMAGE,
        "stream",
        "test-source",
        stream,
        "--size",
        FRAME_SIZE,
        "--wait-consumers",
        "1",
        *args,
    )


def watcher(podman: Podman, name: str, mount: str, stream: str, *args: str, user: list[str] | None = None) -> str:
    """`bufbroker stream watch --check` in queue mode: every frame, each one checked."""
    return podman.container(
        name,
        *CLIENT,
        *(user or []),
        "-v",
        f"{mount}:{SOCKET_DIR}",
        IMAGE,
        "stream",
        "watch",
        stream,
        "--check",
        "--mode",
        "queue",
        "--wait",
        "30",
        "--json",
        "--interval",
        "0.5",
        *args,
    )


def reports(log: str) -> list[dict]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def assert_every_frame_checked(podman: Podman, consumer: str, frames: int, timeout: float = 60) -> None:
    assert podman.wait(consumer, timeout) == 0, f"watch --check failed:\n{podman.logs(consumer)[-3000:]}"
    final = reports(podman.logs(consumer))[-1]
    assert final["ended"] is True and final["total"] == frames and final["missed_total"] == 0, final
    assert final["last_seq"] == frames, final


def stream_once(podman: Podman, mount: str, stream: str, frames: int) -> None:
    """A complete stream of ``frames`` checked frames, producer and consumer in their own containers."""
    consumer = watcher(podman, f"bbt-{stream}-watch", mount, stream)
    producer = source(podman, f"bbt-{stream}-source", mount, stream, "--frames", str(frames), "--fps", "0")
    assert_every_frame_checked(podman, consumer, frames)
    assert podman.wait(producer, 30) == 0, podman.logs(producer)
    for name in (consumer, producer):
        podman.run("rm", name)


def assert_fds_at_baseline(podman: Podman, broker: str, pid: int, baseline: int) -> None:
    count = wait_for_fds(pid, baseline, timeout=10)
    assert count == baseline, f"broker fd count {count}, baseline {baseline}: fds leaked"
    held = podman.run(
        "exec",
        broker,
        "python3",
        "-c",
        "import bufbroker\nwith bufbroker.connect(reconnect=False) as s: print(s.stats().fds_held)",
    ).stdout.strip()
    assert held == "0", f"the broker's ledger holds {held} client fds after every client ended"


def warmed_baseline(podman: Podman, mount: str, pid: int) -> int:
    """The broker's fd count after one warm-up stream (its lazily opened fds exist by then)."""
    stream_once(podman, mount, "warmup", 20)
    return settled_fd_count(pid, quiet=0.5, timeout=10)


# --- the image ------------------------------------------------------------------


def test_image_holds_the_daemon_and_sdk_only_runs_as_10001_and_its_healthcheck_passes(podman, image):
    inspected = json.loads(podman.run("image", "inspect", IMAGE).stdout)[0]
    assert inspected["Config"]["User"] == f"{BROKER_UID}:{BROKER_UID}"
    assert inspected["Healthcheck"]["Test"] == ["CMD", "bufbroker", "health"], "build with --format docker"
    listing = podman.run(
        "run",
        "--rm",
        *CLIENT,
        "--entrypoint",
        "sh",
        IMAGE,
        "-c",
        "id -u; stat -c '%u:%g %a' /run/bufbroker; ls /opt/bufbroker/lib/python3*/site-packages; ls / /opt",
    ).stdout.split()
    assert listing[:2] == [str(BROKER_UID), f"{BROKER_UID}:{BROKER_UID}"] and listing[2] == "770", listing
    assert {"bufbroker", "bufbroker_broker"} <= set(listing)
    for absent in ("bench", "examples", "tests", "src", "wheels", "pip", "setuptools"):
        assert absent not in listing, f"{absent} is in the image"

    volume = podman.volume("bbt-health")
    start_broker(podman, "bbt-health-broker", volume)
    # podman's HEALTHCHECK timers need systemd (there is none here); run the check once by hand.
    deadline = time.monotonic() + 20
    while (result := podman.run("healthcheck", "run", "bbt-health-broker", check=False)).returncode != 0:
        assert time.monotonic() < deadline, f"the HEALTHCHECK never passed: {result.stdout}{result.stderr}"
        time.sleep(0.5)
    assert podman.inspect("bbt-health-broker", "{{.State.Health.Status}}") == "healthy"
    # The container case of `bufbroker doctor`, in a real container.
    checks = podman.run(
        "exec",
        "bbt-health-broker",
        "python3",
        "-c",
        "from pathlib import Path\n"
        "from bufbroker_broker.host.container_check import container_checks\n"
        f"for c in container_checks(Path({SOCKET_DIR!r})): print(c.name, c.ok, c.detail, sep='|')",
    ).stdout.splitlines()
    by_name = {line.split("|")[0]: line.split("|") for line in checks}
    assert by_name["container"][2] == "in a container (podman)"
    assert by_name["uid"][1] == "True" and by_name["socket dir"][1] == "True", checks
    podman.run("stop", "bbt-health-broker")
    assert podman.exit_code("bbt-health-broker") == 0


# --- the sidecar pattern ----------------------------------------------------------


def sidecar_script(name: str) -> list[str]:
    """The sidecar manifest's producer or consumer, as `python -c SCRIPT` (it runs in the image too)."""
    deployment = yaml.safe_load((K8S / "sidecar" / "pipeline.yaml").read_text())
    [container] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return ["--entrypoint", container["command"][0], IMAGE, *container["command"][1:], *container["args"]]


def test_sidecar_frames_are_checked_and_podman_stop_drains_the_broker(podman, image):
    volume = podman.volume("bbt-sidecar")
    pid = start_broker(podman, "bbt-sidecar-broker", volume)
    baseline = warmed_baseline(podman, volume, pid)
    progress("sidecar: 300 frames, each checked")
    stream_once(podman, volume, "frames", 300)
    assert_fds_at_baseline(podman, "bbt-sidecar-broker", pid, baseline)

    # A stream running and the manifest's one-buffer producer and consumer, then SIGTERM to the broker.
    watch = watcher(podman, "bbt-sidecar-watch", volume, "live")
    source(podman, "bbt-sidecar-source", volume, "live", "--fps", "50")
    mount = ["-v", f"{volume}:{SOCKET_DIR}"]
    podman.container("bbt-sidecar-consumer", *CLIENT, *mount, *sidecar_script("consumer"))
    podman.container("bbt-sidecar-producer", *CLIENT, *mount, *sidecar_script("producer"))
    podman.wait_for_log("bbt-sidecar-consumer", "consumer: frame", timeout=30, count=2)
    podman.wait_for_log(watch, '"frames"', timeout=30, count=2)
    progress("sidecar: podman stop of the broker")
    podman.run("stop", "--time", "15", "bbt-sidecar-broker", timeout=60)
    assert podman.exit_code("bbt-sidecar-broker") == 0
    log = podman.logs("bbt-sidecar-broker")
    assert "stopping: signal received; draining" in log and "stopped" in log, log[-2000:]
    # The one-buffer importer is told (revoked: broker shutting down) and exits to attach again.
    assert podman.wait("bbt-sidecar-consumer", 20) == 1
    assert "was revoked" in podman.logs("bbt-sidecar-consumer")
    assert podman.wait("bbt-sidecar-producer", 20) == 1, "stats() raises once its broker is gone"
    # Stream frames go over the producer-consumer link, not through the broker: they keep
    # flowing, each still checked, while it is away (README: "frames keep flowing while it restarts").
    seen = len(reports(podman.logs(watch)))
    podman.wait_for_log(watch, '"frames"', timeout=10, count=seen + 2)
    assert reports(podman.logs(watch))[-1]["frames"] > 0 and reports(podman.logs(watch))[-1]["missed_total"] == 0
    podman.run("stop", "--time", "10", watch)
    assert podman.exit_code(watch) == 0, f"a frame failed its check:\n{podman.logs(watch)[-2000:]}"


def test_sidecar_producer_killed_consumer_sees_end_of_stream_and_fds_return(podman, image):
    volume = podman.volume("bbt-kill")
    pid = start_broker(podman, "bbt-kill-broker", volume)
    baseline = warmed_baseline(podman, volume, pid)
    watch = watcher(podman, "bbt-kill-watch", volume, "live")
    producer = source(podman, "bbt-kill-source", volume, "live", "--fps", "100")
    podman.wait_for_log(watch, '"frames"', timeout=30, count=2)
    assert fd_count(pid) > baseline, "the stream's slots are held by the broker"
    progress("sidecar: podman kill of the producer")
    podman.run("kill", producer)
    assert podman.wait(watch, 30) == 0, podman.logs(watch)[-3000:]
    final = reports(podman.logs(watch))[-1]
    assert final["ended"] is True and final["missed_total"] == 0 and final["total"] > 0, final
    assert_fds_at_baseline(podman, "bbt-kill-broker", pid, baseline)
    podman.run("stop", "bbt-kill-broker")
    assert podman.exit_code("bbt-kill-broker") == 0


# --- the per-node pattern ---------------------------------------------------------

# A producer whose stream admits group 20000 and uid 10003 (test-source has no
# --allow): test-source's numbered pattern, so `watch --check` verifies it.
ALLOWING_PRODUCER = """
import time, bufbroker
from bufbroker_broker.cli.stream import SEQ_BYTES, pattern_byte
size = 64 * 48 * 3
with bufbroker.connect(reconnect=False, name="node producer") as session:
    stream = session.create_stream("node", slots=4, size=size, offers=["memfd"], allow=["gid:20000", "uid:10003"])
    while len(stream.consumers()) < 2:
        time.sleep(0.01)
    print("publishing", flush=True)
    for seq in range(1, 201):
        with stream.acquire(timeout=5.0) as frame:
            view = frame.memoryview()
            view[SEQ_BYTES:] = bytes([pattern_byte(seq)]) * (size - SEQ_BYTES)
            view[:SEQ_BYTES] = seq.to_bytes(SEQ_BYTES, "little")
            assert frame.publish() == seq
    stream.drain(timeout=10.0)
    stream.close()
"""


def test_per_node_broker_serves_allowed_uids_and_refuses_the_others(podman, image, tmp_path):
    node_dir = tmp_path / "node-run-bufbroker"  # the node's /run/bufbroker
    node_dir.mkdir()
    os.chown(node_dir, BROKER_UID, BROKER_UID)  # a bind mount keeps the host's owner and mode
    os.chmod(node_dir, 0o770)
    mount = str(node_dir)
    pid = start_broker(podman, "bbt-node-broker", mount)
    baseline = warmed_baseline(podman, mount, pid)

    def as_user(user: str, *groups: str) -> list[str]:
        return ["--user", user, *[flag for group in groups for flag in ("--group-add", group)]]

    # Clients join the socket dir's group 10001; the stream's rules decide who may subscribe.
    by_gid = watcher(podman, "bbt-node-gid", mount, "node", user=as_user("10002:20000", "10001"))
    by_uid = watcher(podman, "bbt-node-uid", mount, "node", user=as_user("10003:10003", "10001"))
    podman.container(
        "bbt-node-producer",
        *CLIENT,
        "-v",
        f"{mount}:{SOCKET_DIR}",
        "--entrypoint",
        "python3",
        IMAGE,
        "-c",
        ALLOWING_PRODUCER,
    )
    podman.wait_for_log("bbt-node-producer", "publishing", timeout=40)
    refused = podman.run(
        "run", "--rm", *CLIENT, *as_user("10004:10004", "10001"), "-v", f"{mount}:{SOCKET_DIR}", IMAGE,
        "stream", "watch", "node", "--wait", "2",
        check=False,
    )  # fmt: skip
    # The broker does not show a stream to a uid its rules leave out: to it, there is none.
    assert refused.returncode == 1 and "no stream named 'node'" in refused.stderr, refused.stderr
    outsider = podman.run(
        "run", "--rm", *CLIENT, "--user", "10005:10005", "-v", f"{mount}:{SOCKET_DIR}", IMAGE,
        "stream", "watch", "node", "--wait", "2",
        check=False,
    )  # fmt: skip
    assert outsider.returncode != 0 and "join the group that owns the socket dir" in outsider.stderr
    for consumer in (by_gid, by_uid):
        assert_every_frame_checked(podman, consumer, 200)
    assert podman.wait("bbt-node-producer", 30) == 0, podman.logs("bbt-node-producer")
    assert_fds_at_baseline(podman, "bbt-node-broker", pid, baseline)


# --- podman kube play ---------------------------------------------------------------


def local_image(container: dict) -> None:
    """The image just built, never pulled: no registry is reachable here."""
    container["image"] = IMAGE
    container["imagePullPolicy"] = "Never"
    # podman runs pods here with --network none (netavark cannot set up a bridge on this
    # host), and refuses containerPort mappings without a network.
    container.pop("ports", None)


def http_probe(podman: Podman, container: str, path: str) -> int:
    """An httpGet probe by hand, from inside the pod (podman 4.3 would turn it into `curl`, not in the image)."""
    code = f"import urllib.request as u\nprint(u.urlopen('http://127.0.0.1:8377{path}', timeout=2).status)"
    return int(podman.run("exec", container, "python3", "-c", code).stdout)


def wait_for_exec_probe(podman: Podman, container: str, command: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (result := podman.run("exec", container, *command, check=False)).returncode != 0:
        assert time.monotonic() < deadline, f"{command} never passed in {container}: {result.stderr}"
        time.sleep(0.5)


def kube_play(podman: Podman, manifest: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(manifest))
    podman.created.append(("kube", str(path)))
    podman.run("kube", "play", "--network", "none", str(path), timeout=180)


def test_kube_play_sidecar_deployment(podman, image, tmp_path):
    """Rendered: the broker moves from initContainers (a native sidecar, restartPolicy: Always)
    to containers, as deploy/README.md says for clusters before 1.29: podman 4.3 runs init
    containers to completion, and a broker never completes. Images are local, ports dropped
    (no network). podman ignores startup and readiness probes and turns httpGet ones into
    curl: those are run by hand; exec liveness probes are healthchecks, run with `podman
    healthcheck run`. The clients may start before the broker: the Deployment's restart
    policy brings them back, as README says for that layout."""
    deployment = yaml.safe_load((K8S / "sidecar" / "pipeline.yaml").read_text())
    spec = deployment["spec"]["template"]["spec"]
    [broker] = spec.pop("initContainers")
    assert broker.pop("restartPolicy") == "Always"
    spec["containers"].insert(0, broker)
    for container in spec["containers"]:
        local_image(container)
    kube_play(podman, deployment, tmp_path / "sidecar.yaml")
    pod = "bufbroker-pipeline-pod-0"
    wait_for_exec_probe(podman, f"{pod}-bufbroker", broker["startupProbe"]["exec"]["command"])
    assert http_probe(podman, f"{pod}-bufbroker", broker["readinessProbe"]["httpGet"]["path"]) == 200
    assert http_probe(podman, f"{pod}-bufbroker", broker["livenessProbe"]["httpGet"]["path"]) == 200
    log = podman.wait_for_log(f"{pod}-consumer", "consumer: frame", timeout=60, count=3)
    frames = [int(line.split()[-1]) for line in log.splitlines() if line.startswith("consumer: frame")]
    assert frames == sorted(frames) and frames[-1] >= 1, frames
    for name in ("producer", "consumer"):
        assert podman.run("healthcheck", "run", f"{pod}-{name}", check=False).returncode == 0
    assert podman.inspect(f"{pod}-bufbroker", "{{.HostConfig.ReadonlyRootfs}}") == "true"
    podman.run("kube", "down", str(tmp_path / "sidecar.yaml"), timeout=60)


def test_kube_play_daemonset_as_a_pod(podman, image, tmp_path):
    """Rendered: podman 4.3 plays Pods and Deployments, not DaemonSets, so the DaemonSet's pod
    template runs as a Pod (serviceAccountName dropped: there is no API server); the hostPath
    is a fresh directory here instead of the host's /run/bufbroker, root-owned 0755 as the
    kubelet makes it, so the socket-dir-owner init container has its job to do. Two podman 4.3
    quirks: a "once" init container (its default) is sometimes removed while still running
    and the play fails, so it is made "always" (io.podman.annotations.init.container.type);
    and podman then restarts it by the pod's restartPolicy, so that is OnFailure here (the
    kubelet never restarts an init container that succeeded). The init runs again on every
    pod start, which is what made its script idempotent."""
    daemonset = yaml.safe_load((K8S / "daemonset" / "daemonset.yaml").read_text())
    spec = daemonset["spec"]["template"]["spec"]
    spec.pop("serviceAccountName")
    node_dir = tmp_path / "node-run-bufbroker"
    node_dir.mkdir(mode=0o755)
    [volume] = spec["volumes"]
    volume["hostPath"]["path"] = str(node_dir)
    for container in [*spec["initContainers"], *spec["containers"]]:
        local_image(container)
    spec["restartPolicy"] = "OnFailure"
    annotations = {"io.podman.annotations.init.container.type": "always"}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bufbroker-node", "annotations": annotations}}
    pod["spec"] = spec
    kube_play(podman, pod, tmp_path / "node.yaml")
    [broker] = spec["containers"]
    name = "bufbroker-node-bufbroker"
    podman.wait_for_log(name, "serving grpc=", timeout=30)
    info = node_dir.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (BROKER_UID, BROKER_UID, 0o770)
    assert http_probe(podman, name, broker["startupProbe"]["httpGet"]["path"]) == 200
    assert http_probe(podman, name, broker["readinessProbe"]["httpGet"]["path"]) == 200
    wait_for_exec_probe(podman, name, broker["livenessProbe"]["exec"]["command"])
    # A frame crosses between two other "pods" of the node, which mount the same host dir.
    stream_once(podman, str(node_dir), "node", 30)
    podman.run("kube", "down", str(tmp_path / "node.yaml"), timeout=60)
