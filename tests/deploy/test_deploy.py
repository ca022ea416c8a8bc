"""The deployment artifacts under deploy/, checked offline with the real tools.

hadolint and kubernetes-validate come with the test extras and are found
next to the running python; a missing one fails the test (CI installs them).
checkov pins packaging<24, which pytest 9 cannot use, so it lives in a venv
of its own that a session fixture builds once under .pytest_cache/.
Nothing here needs a container engine or a cluster: the image is never
built and the manifests are never applied.
"""

from __future__ import annotations

import configparser
import functools
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bufbroker_broker.cli import build_parser
from bufbroker_broker.cli.launch import wait_until_serving

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
K8S = DEPLOY / "k8s"
CHECKOV_CONFIG = DEPLOY / ".checkov.yaml"
UNIT = DEPLOY / "systemd" / "bufbroker.service"
SYSUSERS = DEPLOY / "systemd" / "bufbroker.sysusers.conf"

SOCKET_DIR = "/run/bufbroker"
BROKER_UID = 10001
METRICS_PORT_NAME = "http-metrics"
METRICS_PORT = 8377

# checkov's own venv: bump here to upgrade it.
CHECKOV_REQUIREMENT = "checkov==3.3.30"
# Native sidecars (restartPolicy on init containers) are on by default from
# 1.29; also check against the newest schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.29.0", "newest"]
# Kinds kubernetes-validate has no schema for; tested by hand below.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# The one container allowed to run as root and add a capability (see
# deploy/k8s/daemonset/daemonset.yaml); CKV_K8S_25 is skipped for it.
ROOT_INIT_CONTAINER = ("daemonset.yaml", "socket-dir-owner", ["CHOWN"])

INSTALL_HINT = "install the test extras: pip install -e '.[test]'"


# --- helpers --------------------------------------------------------------------


def venv_tool(name: str) -> Path:
    """A console script installed next to the running python, or fail."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in {path.parent}: {INSTALL_HINT}", pytrace=False)
    return path


def run(command: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=300, **kwargs)


def manifest_files() -> list[Path]:
    return sorted(path for path in K8S.rglob("*.yaml") if path.name != "kustomization.yaml")


def load_manifest(path: Path) -> dict:
    """The one resource a manifest file holds (one per file keeps failures legible)."""
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert len(documents) == 1, f"{path.relative_to(REPO_ROOT)} holds {len(documents)} resources; keep one per file"
    return documents[0]


def resources(kind: str) -> list[tuple[Path, dict]]:
    return [(path, doc) for path in manifest_files() if (doc := load_manifest(path))["kind"] == kind]


def workload_files() -> list[Path]:
    return [path for path in manifest_files() if load_manifest(path)["kind"] in ("Deployment", "DaemonSet", "Pod")]


def pod_spec(workload: dict) -> dict:
    return workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]


def containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"use the exec (JSON) form, not {arguments!r}"
    return value


@functools.cache
def no_network_prefix() -> tuple[str, ...]:
    """`unshare -n` where we may: checkov then has no network at all, which
    proves the offline settings are enough (and a call out fails at once
    instead of hanging). Without it the same settings still apply."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    for flags in (("-n",), ("-r", "-n")):
        if subprocess.run([unshare, *flags, "true"], capture_output=True).returncode == 0:
            return (unshare, *flags)
    return ()


# --- checkov, in its own venv ---------------------------------------------------


@pytest.fixture(scope="session")
def checkov(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """checkov in a venv of its own, built on first use (about 25 s), kept in
    .pytest_cache/ and rebuilt when CHECKOV_REQUIREMENT or python changes."""
    cache = getattr(request.config, "cache", None)
    base = cache.mkdir("bufbroker-deploy-tools") if cache is not None else tmp_path_factory.mktemp("deploy-tools")
    venv = base / "checkov"
    executable = venv / "bin" / "checkov"
    stamp = venv / "bufbroker-requirement.txt"  # written last: marks a complete venv
    wanted = f"{CHECKOV_REQUIREMENT}\n{sys.version}\n"
    if executable.exists() and stamp.exists() and stamp.read_text() == wanted:
        return executable
    shutil.rmtree(venv, ignore_errors=True)
    steps = [
        [sys.executable, "-m", "venv", venv],
        [
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            CHECKOV_REQUIREMENT,
        ],
    ]
    for step in steps:
        result = subprocess.run([str(part) for part in step], capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.fail(
                f"could not install {CHECKOV_REQUIREMENT} into its own venv {venv} (it needs PyPI):\n"
                f"$ {shlex.join(map(str, step))}\n{result.stdout[-2000:]}{result.stderr[-4000:]}",
                pytrace=False,
            )
    if not executable.exists():
        pytest.fail(f"installing {CHECKOV_REQUIREMENT} made no {executable}", pytrace=False)
    stamp.write_text(wanted)
    return executable


def run_checkov(checkov: Path, framework: str, target: list[str]) -> list[dict]:
    """Run checkov offline with deploy/.checkov.yaml; its JSON reports for ``framework``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BC_", "PRISMA_", "CKV_"))}
    env.update(BC_SKIP_MAPPING="TRUE", CKV_SKIP_PACKAGE_UPDATE_CHECK="TRUE")
    command = [
        *no_network_prefix(),
        str(checkov),
        "--config-file",
        str(CHECKOV_CONFIG.relative_to(REPO_ROOT)),
        "--framework",
        framework,
        *target,
        "--output",
        "json",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    try:
        output = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"checkov printed no JSON (exit {result.returncode}):\n$ {shlex.join(command)}\n"
            f"{result.stdout[-2000:]}{result.stderr[-4000:]}",
            pytrace=False,
        )
    reports = [
        report for report in (output if isinstance(output, list) else [output]) if report.get("check_type") == framework
    ]
    assert reports, f"checkov scanned nothing for {framework}: {result.stdout[-2000:]}"
    return reports


@pytest.fixture(scope="session")
def checkov_kubernetes(checkov: Path) -> list[dict]:
    return run_checkov(checkov, "kubernetes", ["--directory", str(K8S.relative_to(REPO_ROOT))])


@pytest.fixture(scope="session")
def checkov_dockerfile(checkov: Path) -> list[dict]:
    return run_checkov(checkov, "dockerfile", ["--file", str(DOCKERFILE.relative_to(REPO_ROOT))])


def failed_checks(reports: list[dict]) -> list[str]:
    return [
        f"{check['check_id']} {check['check_name']}: {check['resource']} in {check['file_path']}"
        for report in reports
        for check in report["results"]["failed_checks"]
    ]


def test_checkov_finds_no_failed_kubernetes_checks(checkov_kubernetes):
    summary = checkov_kubernetes[0]["summary"]
    assert failed_checks(checkov_kubernetes) == [] and summary["failed"] == 0
    assert summary["parsing_errors"] == 0
    # Every manifest was scanned (checkov counts the resources it understood).
    assert summary["resource_count"] >= len(manifest_files())


def test_checkov_finds_no_failed_dockerfile_checks(checkov_dockerfile):
    summary = checkov_dockerfile[0]["summary"]
    assert failed_checks(checkov_dockerfile) == [] and summary["failed"] == 0
    assert summary["parsing_errors"] == 0 and summary["resource_count"] >= 1


def test_every_checkov_skip_says_why():
    config = yaml.safe_load(CHECKOV_CONFIG.read_text())
    assert config["skip-download"] is True, "checkov must not fetch from its platform"
    lines = CHECKOV_CONFIG.read_text().splitlines()
    for check in config.get("skip-check", []):
        index = next(i for i, line in enumerate(lines) if line.strip() == f"- {check}")
        assert lines[index - 1].strip().startswith("#"), f"{check} is skipped without a comment giving the reason"


def test_the_only_added_capability_is_chown_for_the_socket_dir_owner():
    # Stands in for checkov's CKV_K8S_25, which deploy/.checkov.yaml skips
    # because checkov cannot skip it for one container.
    exception_file, exception_name, exception_caps = ROOT_INIT_CONTAINER
    for path in workload_files():
        for container in containers(pod_spec(load_manifest(path))):
            added = container["securityContext"]["capabilities"].get("add", [])
            if (path.name, container["name"]) == (exception_file, exception_name):
                assert added == exception_caps
            else:
                assert added == [], f"{container['name']} in {path.name} adds {added}"


# --- hadolint and the Dockerfile ------------------------------------------------


def test_hadolint_passes():
    result = run([venv_tool("hadolint"), "--no-color", DOCKERFILE])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_non_root_with_healthcheck_and_socket_volume():
    instructions = dockerfile_instructions()

    def values(keyword: str) -> list[str]:
        return [arguments for name, arguments in instructions if name == keyword]

    bases = values("FROM")
    assert len(bases) >= 2, "multi-stage: a builder and a runtime stage"
    # FROM ${BASE_IMAGE}: the base is a build argument; its default must be pinned.
    defaults = dict(arg.split("=", 1) for arg in values("ARG") if "=" in arg)
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda match: defaults[match.group(1)], base.split()[0])
        assert ":" in image and not image.endswith(":latest"), f"pin the base image tag: {base}"
        assert image.startswith("python:3.11"), base
    # Everything after the last FROM is the runtime stage.
    runtime = instructions[max(i for i, (name, _) in enumerate(instructions) if name == "FROM") :]
    users = [arguments for name, arguments in runtime if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the runtime stage must end as a non-root USER"
    assert users[-1].split(":")[0] == str(BROKER_UID)
    healthchecks = [arguments for name, arguments in runtime if name == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert exec_form(healthchecks[0].partition("CMD ")[2]) == ["bufbroker", "health"]
    volumes = " ".join(arguments for name, arguments in runtime if name == "VOLUME")
    assert SOCKET_DIR in volumes.replace('"', " ").replace("[", " ").replace("]", " ").split()
    environment = " ".join(arguments for name, arguments in runtime if name == "ENV")
    assert f"BUFBROKER_SOCKET_DIR={SOCKET_DIR}" in environment.split()
    assert exec_form(values("ENTRYPOINT")[-1]) == ["bufbroker"]
    assert str(METRICS_PORT) in " ".join(values("EXPOSE")).split()
    assert any(
        "--no-cache-dir" in arguments for name, arguments in instructions if name == "RUN" and "pip " in arguments
    )


def test_dockerignore_admits_everything_the_build_copies():
    allowed = {line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")}
    sources = []
    for name, arguments in dockerfile_instructions():
        if name == "COPY" and "--from=" not in arguments:
            sources += arguments.split()[:-1]
    assert sources
    for source in sources:
        assert source.rstrip("/") in allowed, f"COPY {source}: add !{source} to {DOCKERIGNORE.name}"
    # The wheel needs every folder pyproject.toml finds packages in.
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    for package_root in pyproject["tool"]["setuptools"]["packages"]["find"]["where"]:
        top = package_root.split("/")[0]
        assert top in [source.rstrip("/") for source in sources], f"the Dockerfile does not COPY {top}/"


# --- kubernetes-validate and the manifests --------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: str(path.relative_to(K8S)))
def test_manifest_is_valid_against_the_kubernetes_schema(path, version):
    manifest = load_manifest(path)
    if (manifest["apiVersion"], manifest["kind"]) in CRD_KINDS:
        pytest.skip(f"{manifest['kind']} is a CRD kubernetes-validate has no schema for; see test_servicemonitor_*")
    command = [venv_tool("kubernetes-validate"), "--strict", path]
    if version != "newest":
        command[1:1] = ["--kubernetes-version", version]
    result = run(command)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # kubernetes-validate passes a kind it has no schema for with a warning.
    assert "Couldn't find schema" not in output and "passed" in output, output


SERVICEMONITOR_SCHEMA = {
    # The part of monitoring.coreos.com/v1 ServiceMonitor this project uses,
    # with its field types; unknown fields are refused, as --strict does.
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "additionalProperties": False,
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                    "additionalProperties": False,
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                        "any": {"type": "boolean"},
                    },
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def test_servicemonitor_matches_its_schema_and_scrapes_the_service():
    [(_, monitor)] = resources("ServiceMonitor")
    jsonschema.validate(monitor, SERVICEMONITOR_SCHEMA)
    [(_, service)] = resources("Service")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == METRICS_PORT_NAME and endpoint["path"] == "/metrics"
    assert METRICS_PORT_NAME in [port["name"] for port in service["spec"]["ports"]]


def test_headless_service_selects_the_broker_pods_and_their_metrics_port():
    [(_, service)] = resources("Service")
    [(_, daemonset)] = resources("DaemonSet")
    assert service["spec"]["clusterIP"] == "None"
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [port] = service["spec"]["ports"]
    [broker] = pod_spec(daemonset)["containers"]
    assert {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"} in broker["ports"]
    assert port == {"name": METRICS_PORT_NAME, "port": METRICS_PORT, "targetPort": METRICS_PORT_NAME, "protocol": "TCP"}


@pytest.mark.parametrize("directory", ["sidecar", "daemonset"])
def test_kustomization_lists_every_manifest_and_sets_its_namespace(directory):
    kustomization = yaml.safe_load((K8S / directory / "kustomization.yaml").read_text())
    listed = sorted(kustomization["resources"])
    assert listed == sorted(path.name for path in (K8S / directory).glob("*.yaml") if path.name != "kustomization.yaml")
    namespace = kustomization["namespace"]
    for name in listed:
        manifest = load_manifest(K8S / directory / name)
        if manifest["kind"] == "Namespace":
            assert manifest["metadata"]["name"] == namespace
        else:
            assert manifest["metadata"]["namespace"] == namespace, name
    # The NetworkPolicy selects the directory's pods.
    [policy] = [doc for path, doc in resources("NetworkPolicy") if path.parent.name == directory]
    [workload] = [load_manifest(path) for path in workload_files() if path.parent.name == directory]
    assert (
        policy["spec"]["podSelector"]["matchLabels"].items()
        <= workload["spec"]["template"]["metadata"]["labels"].items()
    )


@pytest.mark.parametrize("path", workload_files(), ids=lambda path: str(path.relative_to(K8S)))
def test_workload_is_hardened_and_every_container_has_requests_and_limits(path):
    workload = load_manifest(path)
    spec = pod_spec(workload)
    for host_field in ("hostIPC", "hostPID", "hostNetwork"):
        assert not spec.get(host_field), f"{host_field} in {path.name}"
    assert spec["automountServiceAccountToken"] is False
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] == BROKER_UID
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["terminationGracePeriodSeconds"] > 5, "longer than the broker's --drain-timeout (5 s)"
    for container in containers(spec):
        where = f"{container['name']} in {path.name}"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= container.get("resources", {}).get(kind, {}).keys(), (
                f"{where}: resources.{kind}"
            )
        security = container["securityContext"]
        assert security.get("privileged", False) is False, where
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["capabilities"]["drop"] == ["ALL"], where
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
        if (path.name, container["name"]) != ROOT_INIT_CONTAINER[:2]:
            assert security["runAsNonRoot"] is True and security["runAsUser"] == BROKER_UID, where
        image, _, tag = container["image"].rpartition(":")
        assert image == "ghcr.io/bufbroker/bufbroker" and tag and tag != "latest" and "@" not in tag, where
        assert container["imagePullPolicy"] == "Always", where
        assert {"name": "bufbroker-sock", "mountPath": SOCKET_DIR} in container["volumeMounts"], where


def broker_containers(spec: dict) -> list[dict]:
    """Containers that run the broker (the image's entrypoint with `serve`)."""
    return [c for c in containers(spec) if "command" not in c and c.get("args", [])[:1] == ["serve"]]


@pytest.mark.parametrize("path", workload_files(), ids=lambda path: str(path.relative_to(K8S)))
def test_broker_container_has_probes_on_its_named_port(path):
    spec = pod_spec(load_manifest(path))
    [broker] = broker_containers(spec)
    assert {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"} in broker["ports"]
    assert broker["args"] == ["serve", "--socket-dir", SOCKET_DIR, "--http", f"0.0.0.0:{METRICS_PORT}"]
    assert {"name": "BUFBROKER_SOCKET_DIR", "value": SOCKET_DIR} in broker["env"]
    for probe_name in ("readinessProbe", "livenessProbe"):
        probe = broker[probe_name]
        if "httpGet" in probe:
            assert probe["httpGet"]["port"] == METRICS_PORT_NAME
            assert probe["httpGet"]["path"] in ("/healthz", "/readyz")
        else:
            assert probe["exec"]["command"] == ["bufbroker", "health"]
    assert broker["readinessProbe"].get("httpGet", {}).get("path", "/readyz") == "/readyz"


def test_sidecar_pod_shares_an_emptydir_socket_dir_between_three_containers():
    [(_, deployment)] = resources("Deployment")
    spec = pod_spec(deployment)
    assert deployment["spec"]["replicas"] == 1
    [volume] = spec["volumes"]
    assert volume == {"name": "bufbroker-sock", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    assert spec["securityContext"]["fsGroup"] == BROKER_UID, "gives the emptyDir the broker's group"
    [broker] = spec["initContainers"]
    assert broker["restartPolicy"] == "Always", "a native sidecar: started first, stopped last"
    assert broker["startupProbe"]["exec"]["command"] == ["bufbroker", "health"]
    assert [c["name"] for c in spec["containers"]] == ["producer", "consumer"]
    for container in containers(spec):
        assert {"name": "BUFBROKER_SOCKET_DIR", "value": SOCKET_DIR} in container["env"]


def test_daemonset_serves_the_host_socket_dir():
    [(_, daemonset)] = resources("DaemonSet")
    spec = pod_spec(daemonset)
    [volume] = spec["volumes"]
    assert volume == {"name": "bufbroker-sock", "hostPath": {"path": SOCKET_DIR, "type": "DirectoryOrCreate"}}
    [(_, account)] = resources("ServiceAccount")
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False
    [owner] = spec["initContainers"]
    assert owner["name"] == ROOT_INIT_CONTAINER[1]
    script = owner["args"][0]
    assert f'os.chown("{SOCKET_DIR}", {BROKER_UID}, {BROKER_UID})' in script and "0o770" in script


# --- the commands the artifacts run are ones the CLI accepts ---------------------


def artifact_commands() -> Iterator[tuple[str, list[str]]]:
    """(where, argv after `bufbroker`) for every bufbroker command in deploy/."""
    instructions = dockerfile_instructions()
    entrypoint = exec_form([a for n, a in instructions if n == "ENTRYPOINT"][-1])
    cmd = exec_form([a for n, a in instructions if n == "CMD"][-1])
    assert entrypoint == ["bufbroker"]
    yield "Dockerfile CMD", cmd
    healthcheck = exec_form([a for n, a in instructions if n == "HEALTHCHECK"][-1].partition("CMD ")[2])
    yield "Dockerfile HEALTHCHECK", healthcheck[1:]
    for path in workload_files():
        for container in containers(pod_spec(load_manifest(path))):
            where = f"{path.name} {container['name']}"
            if "command" not in container:
                yield f"{where} args", container["args"]
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                command = container.get(probe_name, {}).get("exec", {}).get("command")
                if command:
                    assert command[0] == "bufbroker", f"{where} {probe_name}"
                    yield f"{where} {probe_name}", command[1:]
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    exec_start = shlex.split(parser["Service"]["ExecStart"])
    assert exec_start[0] == "/usr/local/bin/bufbroker"
    yield "ExecStart", exec_start[1:]


ARTIFACT_COMMANDS = list(artifact_commands())


@pytest.mark.parametrize("where,argv", ARTIFACT_COMMANDS, ids=[where for where, _ in ARTIFACT_COMMANDS])
def test_artifact_command_is_accepted_by_the_cli(where, argv, capsys):
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `bufbroker {shlex.join(argv)}` is refused: {capsys.readouterr().err}", pytrace=False)


# --- the image's command and the sidecar's scripts, run for real ------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_line_containing(process: subprocess.Popen, text: str, timeout: float) -> str:
    """Read the process's stdout until a line contains ``text``."""
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if text in line:
                return line
    raise AssertionError(f"no line with {text!r} within {timeout} s; got {seen}")


def sidecar_script(name: str) -> list[str]:
    [(_, deployment)] = resources("Deployment")
    [container] = [c for c in pod_spec(deployment)["containers"] if c["name"] == name]
    assert container["command"][0] == "python"
    return [sys.executable, *container["command"][1:], *container["args"]]


def test_image_command_serves_and_the_sidecar_scripts_share_a_buffer(tmp_path):
    """The Dockerfile's CMD (socket dir and HTTP address moved to this test's),
    its HEALTHCHECK, then the sidecar's consumer and producer scripts: the
    consumer sees the producer's frames, and both exit when the broker stops."""
    socket_dir = tmp_path / "run"
    http = f"127.0.0.1:{free_port()}"
    argv = dict(ARTIFACT_COMMANDS)["Dockerfile CMD"]
    argv = [
        socket_dir.as_posix() if arg == SOCKET_DIR else http if arg == f"0.0.0.0:{METRICS_PORT}" else arg
        for arg in argv
    ]
    env = {**os.environ, "BUFBROKER_SOCKET_DIR": str(socket_dir), "PYTHONUNBUFFERED": "1"}
    bufbroker = venv_tool("bufbroker")
    log = open(tmp_path / "broker.log", "w")
    broker = subprocess.Popen([str(bufbroker), *argv], env=env, stderr=log)
    clients: list[subprocess.Popen] = []
    try:
        wait_until_serving(socket_dir, broker)
        health = run([bufbroker, "health"], env=env)
        assert health.returncode == 0, health.stdout + health.stderr
        with urllib.request.urlopen(f"http://{http}/readyz", timeout=5) as response:
            assert response.status == 200

        consumer = subprocess.Popen(
            sidecar_script("consumer"),
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        clients.append(consumer)
        producer = subprocess.Popen(
            sidecar_script("producer"),
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        clients.append(producer)
        read_line_containing(producer, "exported buffer", timeout=30)
        assert "as segments" in read_line_containing(consumer, "attached to 'frames'", timeout=30)
        # The counter the producer writes, read through the consumer's own
        # mapping of the same pages (0 if it looked before the first write).
        frames = [int(read_line_containing(consumer, "frame", timeout=10).split()[-1]) for _ in range(3)]
        assert frames == sorted(frames) and frames[-1] >= 1, frames

        broker.send_signal(signal.SIGTERM)
        assert broker.wait(timeout=30) == 0
        read_line_containing(consumer, "was revoked", timeout=10)
        assert consumer.wait(timeout=10) == 1
        assert producer.wait(timeout=10) == 1
    finally:
        for process in [*clients, broker]:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        log.close()


# --- systemd --------------------------------------------------------------------


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read_string(UNIT.read_text())
    return parser


def unit_values(key: str) -> list[str]:
    """Every value of a key systemd lets repeat (configparser keeps the last)."""
    return [line.partition("=")[2] for line in UNIT.read_text().splitlines() if line.startswith(f"{key}=")]


EXPECTED_SERVICE = {
    "Type": "simple",
    "ExecStart": f"/usr/local/bin/bufbroker serve --socket-dir {SOCKET_DIR}",
    "User": "bufbroker",
    "Group": "bufbroker",
    "RuntimeDirectory": "bufbroker",
    "RuntimeDirectoryMode": "0770",
    "KillSignal": "SIGTERM",
    "TimeoutStopSec": "10",
    "Restart": "on-failure",
    "LimitNOFILE": "1048576",
    "NoNewPrivileges": "true",
    "CapabilityBoundingSet": "",
    "ProtectSystem": "strict",
    "ProtectHome": "true",
    "PrivateTmp": "true",
    "PrivateDevices": "false",
    "DevicePolicy": "closed",
    "ProtectKernelTunables": "true",
    "ProtectKernelModules": "true",
    "ProtectControlGroups": "true",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "true",
    "LockPersonality": "true",
    "MemoryDenyWriteExecute": "true",
    "SystemCallArchitectures": "native",
}


def test_unit_has_the_hardening_keys():
    service = unit()["Service"]
    wrong = {key: service.get(key) for key, value in EXPECTED_SERVICE.items() if service.get(key) != value}
    assert wrong == {}, "differs from the expected hardening"
    assert unit_values("DeviceAllow") == ["/dev/udmabuf rw", "char-dma_heap rw"]
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} is not installed here (Debian: apt-get install systemd); the unit is checked by parsing only"
        )
    return path


def verifiable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's bufbroker: `verify`
    insists that the binary exists, and /usr/local/bin/bufbroker does not here."""
    text = UNIT.read_text().replace("ExecStart=/usr/local/bin/bufbroker ", f"ExecStart={venv_tool('bufbroker')} ")
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = systemd_tool("systemd-analyze")
    result = run([analyze, "verify", "--man=no", verifiable_unit(tmp_path)])
    assert result.returncode == 0 and "bufbroker" not in result.stderr, result.stdout + result.stderr


def test_unit_security_exposure_is_ok(tmp_path):
    analyze = systemd_tool("systemd-analyze")
    result = run([analyze, "security", "--offline=true", "--no-pager", verifiable_unit(tmp_path)])
    match = re.search(r"Overall exposure level for bufbroker.service: ([0-9.]+)", result.stdout)
    if match is None and "--offline" in result.stderr:
        pytest.skip("this systemd-analyze has no `security --offline` (systemd < 250)")
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_sysusers_creates_the_bufbroker_user_and_group(tmp_path):
    sysusers = systemd_tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    (tmp_path / "usr/lib/sysusers.d").mkdir(parents=True)
    shutil.copy(SYSUSERS, tmp_path / "usr/lib/sysusers.d/bufbroker.conf")
    result = run([sysusers, f"--root={tmp_path}"])
    assert result.returncode == 0, result.stderr
    [user] = [
        line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines() if line.startswith("bufbroker:")
    ]
    [group] = [
        line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines() if line.startswith("bufbroker:")
    ]
    assert user[3] == group[2], "the user's primary group is bufbroker"
    assert int(user[2]) < 1000 and user[6] == "/usr/sbin/nologin"


def test_broker_and_sdk_run_with_memory_deny_write_execute(tmp_path):
    """The unit sets MemoryDenyWriteExecute=true; the kernel's PR_SET_MDWE
    (Linux >= 6.3) is the same rule, inherited across fork and exec, so the
    demo (broker, exporter, importer) runs under it here."""
    wrapper = (
        "import ctypes, os, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN\n"
        "    sys.exit(77)\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'bufbroker_broker', 'demo', '--frames', '20'])\n"
    )
    result = run([sys.executable, "-c", wrapper], cwd=tmp_path)
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "20 frames" in result.stdout
