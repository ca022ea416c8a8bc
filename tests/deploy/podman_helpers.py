"""podman for the container tests: installed with apt, configured for this host, the image built offline.

What this host needs from podman (and what tests/deploy/test_containers.py
writes into its own containers.conf, CONTAINERS_CONF):

- ``runtime = "runc"``: crun refuses hybrid cgroup hierarchies (v1 with a
  named systemd hierarchy) such as this host's; runc runs there.
- ``cgroup_manager = "cgroupfs"`` and ``events_logger = "file"``: there is no
  systemd, so neither its cgroup manager nor the journal.
- ``default_ulimits``: podman asks runc for nofile and nproc limits of its
  own (1048576 for root) and runc fails with EPERM when they exceed the hard
  limits it inherited, unless it has CAP_SYS_RESOURCE, which this host's
  root lacks. podman also caps its own nproc (conmon runs with 32768), so
  the limits are the host's hard nofile and min(host nproc, 32768).
- Healthchecks: podman starts HEALTHCHECK timers as systemd units, which
  fails without systemd (an error line, the container still runs);
  ``podman healthcheck run`` runs the check once by hand and works.

The base image is Debian bookworm from debootstrap (minbase with python3
and python3-venv), trimmed, tarred into the pytest cache and imported with
``podman import``, labelled with a hash of its recipe: a run that finds the
image with that label reuses it, one that finds only the tarball imports it
again (seconds), otherwise debootstrap runs (about a minute).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / "deploy" / "docker" / "Dockerfile.dockerignore"
WHEELHOUSE = REPO_ROOT / "build" / "wheels"  # in the build context; build/ is git-ignored

APT_PACKAGES = ["podman", "runc", "uidmap", "debootstrap", "netavark", "aardvark-dns", "slirp4netns"]
BASE_IMAGE = "localhost/bufbroker-base:bookworm"
BASE_RECIPE_LABEL = "io.bufbroker.base-recipe"
DEBOOTSTRAP = ["debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm"]
# Removed from the base: package caches and docs nobody reads in a container.
BASE_TRIM = ["var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale"]
IMAGE = "localhost/bufbroker:test"
PODMAN_NPROC_CAP = 32768


_terminal: list[Any] = []  # pytest's terminal reporter and capture manager, once show_progress_on() found them


def show_progress_on(config: pytest.Config) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and not _terminal:
        _terminal.extend([reporter, capture])


def progress(message: str) -> None:
    """A progress line on the terminal even under pytest's capture (the cold path takes minutes)."""
    if not _terminal:
        print(f"[podman] {message}", file=sys.stderr, flush=True)
        return
    reporter, capture = _terminal
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"[podman] {message}")


def apt_mirror() -> str:
    """The Debian mirror apt uses here (debootstrap must use the same one: no other is reachable)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            if line.startswith("URIs:"):
                uris = words[1:]
            elif words[:1] == ["deb"]:
                uris = [word for word in words[1:] if "://" in word][:1]
            else:
                continue
            for uri in uris:
                if "security" not in uri:
                    return uri.rstrip("/")
    return "http://deb.debian.org/debian"


def containers_conf() -> str:
    """containers.conf for this host (see the module docstring for each line)."""
    _, nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    _, nproc = resource.getrlimit(resource.RLIMIT_NPROC)
    nofile = 1048576 if nofile == resource.RLIM_INFINITY else nofile
    nproc = PODMAN_NPROC_CAP if nproc == resource.RLIM_INFINITY else min(nproc, PODMAN_NPROC_CAP)
    return (
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )


@dataclass
class Podman:
    """The podman CLI with this run's containers.conf; removes what it created at cleanup."""

    conf: Path
    created: list[tuple[str, str]] = field(default_factory=list)  # (kind, name), for cleanup

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def run(self, *args: str, timeout: float = 120, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
        command = ["podman", *args]
        result = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(
                f"$ {shlex.join(command)}\nexit {result.returncode}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result

    def inspect(self, name: str, template: str) -> str:
        return self.run("inspect", "--format", template, name).stdout.strip()

    def pid(self, name: str) -> int:
        """The container's pid 1 as this (host) pid namespace sees it."""
        return int(self.inspect(name, "{{.State.Pid}}"))

    def exit_code(self, name: str) -> int:
        return int(self.inspect(name, "{{.State.ExitCode}}"))

    def logs(self, name: str) -> str:
        result = self.run("logs", name, check=False)
        return result.stdout + result.stderr

    def wait(self, name: str, timeout: float) -> int:
        """Wait for the container to exit; its exit status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.inspect(name, "{{.State.Status}}") in ("exited", "stopped"):
                return self.exit_code(name)
            time.sleep(0.2)
        raise AssertionError(f"container {name} still runs after {timeout} s; its log:\n{self.logs(name)[-3000:]}")

    def wait_for_log(self, name: str, text: str, timeout: float, count: int = 1) -> str:
        """Wait until the container's log holds ``text`` ``count`` times; the log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.logs(name)
            if log.count(text) >= count:
                return log
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: no {text!r} (x{count}) in its log within {timeout} s:\n{log[-3000:]}")
            time.sleep(0.2)

    def volume(self, name: str) -> str:
        self.run("volume", "rm", "--force", name, check=False)
        self.run("volume", "create", name)
        self.created.append(("volume", name))
        return name

    def container(self, name: str, *args: str) -> str:
        """``podman run -d --name NAME ARGS`` (an old container of that name is removed first)."""
        self.run("rm", "--force", "--time", "0", name, check=False)
        self.created.append(("container", name))
        self.run("run", "-d", "--name", name, *args)
        return name

    def cleanup(self) -> None:
        for kind, name in reversed(self.created):
            if kind == "container":
                self.run("rm", "--force", "--time", "0", name, check=False)
            elif kind == "kube":
                self.run("kube", "down", name, check=False)
            else:
                self.run(kind, "rm", "--force", name, check=False)
        self.created.clear()


def podman_works(podman: Podman) -> str | None:
    """None when podman can run a container here, else why not (from podman itself)."""
    result = podman.run("info", "--format", "json", check=False, timeout=60)
    if result.returncode != 0:
        return f"`podman info` fails: {result.stderr.strip()[-1000:]}"
    return None


# --- the base image ---------------------------------------------------------------


def base_recipe() -> str:
    return hashlib.sha256(json.dumps([DEBOOTSTRAP, BASE_TRIM, apt_mirror()]).encode()).hexdigest()[:16]


def ensure_base_image(podman: Podman, cache: Path) -> str:
    """BASE_IMAGE from podman's storage, the cached tarball or debootstrap; says which it used."""
    recipe = base_recipe()
    found = podman.run(
        "image", "inspect", "--format", f'{{{{index .Labels "{BASE_RECIPE_LABEL}"}}}}', BASE_IMAGE, check=False
    )
    if found.returncode == 0 and found.stdout.strip() == recipe:
        progress(f"base image {BASE_IMAGE} (recipe {recipe}) is in podman's storage: reused")
        return "reused"
    tarball = cache / f"base-{recipe}.tar"
    how = "imported from the cached tarball"
    if not tarball.exists():
        how = "built with debootstrap"
        root = cache / f"rootfs-{recipe}"
        shutil.rmtree(root, ignore_errors=True)
        command = [*DEBOOTSTRAP, str(root), apt_mirror()]
        progress(f"$ {shlex.join(command)} (about a minute)")
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"$ {shlex.join(command)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        progress(f"debootstrap took {time.monotonic() - started:.0f} s")
        for relative in BASE_TRIM:
            for child in (root / relative).glob("*"):
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True, timeout=300)
        partial.rename(tarball)  # complete tarballs only
        shutil.rmtree(root)
    podman.run("import", "--change", f"LABEL {BASE_RECIPE_LABEL}={recipe}", str(tarball), BASE_IMAGE, timeout=300)
    progress(f"base image {BASE_IMAGE}: {how}")
    return how


# --- the wheelhouse and the image -------------------------------------------------


def build_wheelhouse() -> None:
    """deploy/README.md's recipe: every wheel the image needs, built on the host into build/wheels.

    Offline from the wheelhouse first (a warm run needs no index), then from PyPI.
    """
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
    wanted = ["--wheel-dir", str(WHEELHOUSE), "setuptools>=68", "."]
    offline = [*base, "--no-index", "--find-links", str(WHEELHOUSE), *wanted]
    if subprocess.run(offline, cwd=REPO_ROOT, capture_output=True, timeout=600).returncode == 0:
        progress("wheelhouse build/wheels: complete offline")
        return
    progress("wheelhouse build/wheels: pip wheel from the index")
    result = subprocess.run([*base, *wanted], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"pip wheel failed (it needs PyPI once):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def build_image(podman: Podman) -> float:
    """The project's Dockerfile on BASE_IMAGE, with no network; the seconds it took."""
    started = time.monotonic()
    podman.run(
        "build",
        "--format",
        "docker",  # keeps HEALTHCHECK, which the OCI image format has no field for
        "--network",
        "none",  # the wheelhouse is all it gets
        "--ignorefile",
        str(DOCKERIGNORE),
        "--file",
        str(DOCKERFILE),
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "--tag",
        IMAGE,
        str(REPO_ROOT),
        timeout=900,
    )
    return time.monotonic() - started
