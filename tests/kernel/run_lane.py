"""Run the real-kernel test lane: pytest on tests/kernel inside a qemu VM.

    python tests/kernel/run_lane.py [--timeout SECONDS] [PYTEST_ARGS...]

This host's kernel has neither /dev/udmabuf nor /dev/dma_heap; Debian's
``linux-image-6.12.*+deb12-amd64`` has both built in (CONFIG_UDMABUF=y,
CONFIG_DMABUF_HEAPS_SYSTEM=y). The runner:

1. installs ``qemu-system-x86`` with apt if ``qemu-system-x86_64`` is
   missing, and downloads (``apt-get download``, nothing installed) the
   newest such kernel and ``busybox-static``;
2. builds, once, an initramfs with busybox, the kernel's 9p modules
   (``netfs``, ``9pnet``, ``9pnet_virtio``, ``9p``) and ``vgem`` with the
   modules it depends on (``drm``, ``drm_kms_helper``, ``drm_shmem_helper``,
   ...: read from the package's modules.dep, loaded with insmod in
   dependency order, no modprobe), cached with the kernel under
   tests/kernel/.cache/ (gitignored);
3. boots it with TCG (nested KVM fails at boot here), shares this host's
   root read-only over virtio-9p, mounts tmpfs on /tmp, /run and
   /dev/shm, chroots into it and runs this Python on
   ``pytest -m kernel tests/kernel`` against a real broker and real
   client processes;
4. streams the guest console to stdout and exits with the in-guest
   pytest's status.

Exit status: pytest's (0 passed), 77 when the lane cannot be set up on
this machine (qemu or the kernel cannot be installed; the reason is the
last line printed), 3 when the VM did not report a result (boot failure,
timeout). Only the standard library is used.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import io
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
SKIP_STATUS = 77
NO_RESULT_STATUS = 3
RESULT_MARKER = "BUFBROKER-LANE-STATUS:"
KERNEL_PACKAGE = re.compile(r"^linux-image-(6\.12\.\d+)\+deb12-amd64(-unsigned)?$")
MODULES = ("netfs", "9pnet", "9pnet_virtio", "9p")  # in load order
# vgem: a DRM driver with no hardware whose fences the tests signal (tests/kernel/vgem.py).
# Loaded after the 9p modules, with its dependencies first (from modules.dep).
EXTRA_MODULES = ("vgem",)
# Bump when the initramfs layout or the init script changes.
INITRAMFS_VERSION = "2"

INIT_SCRIPT = r"""#!/bin/busybox sh
# bufbroker kernel lane: mount the host root read-only, chroot, run the job.
/bin/busybox mkdir -p /proc /sys /dev /host /keep /usr/bin /sbin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "bufbroker-lane: $*"; }
finish() { echo "BUFBROKER-LANE-STATUS: $1"; sync; poweroff -f; }
for m in $(cat /lib/modules/order); do
    insmod /lib/modules/$m.ko || { say "insmod $m failed"; finish 125; }
done
# vgem and its DRM dependencies, in dependency order; a failure is reported, and the vgem tests say so.
for m in $(cat /lib/modules/extra-order); do
    insmod /lib/modules/$m.ko 2>/dev/null || say "insmod $m failed (the vgem tests will fail)"
done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host \
    || { say "cannot mount the host root (9p)"; finish 125; }
job=""; keep=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        lane.job=*) job="${arg#lane.job=}" ;;
        lane.keep=*) keep="${arg#lane.keep=}" ;;
    esac
done
cp "/host$job" /job.sh || { say "no job script at $job"; finish 125; }
# Paths the tmpfs mounts below would hide (a venv under /tmp): keep them.
i=0
for p in $(echo "$keep" | tr ':' ' '); do
    mkdir -p /keep/$i && mount -o bind "/host$p" /keep/$i; i=$((i+1))
done
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/shm /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/tmp
mount -t tmpfs tmpfs /host/run
i=0
for p in $(echo "$keep" | tr ':' ' '); do
    mkdir -p "/host$p" && mount -o move /keep/$i "/host$p"; i=$((i+1))
done
ip link set lo up 2>/dev/null
cp /job.sh /host/tmp/.bufbroker-lane-job.sh
chroot /host /bin/sh /tmp/.bufbroker-lane-job.sh
finish $?
"""


class LaneUnavailable(Exception):
    """The lane cannot be set up on this machine (the test skips, loudly)."""


def log(message: str) -> None:
    print(f"[kernel-lane] {message}", flush=True)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, text=True, capture_output=True, **kwargs)
    except FileNotFoundError:
        raise LaneUnavailable(f"{command[0]} is not installed: this runner needs a Debian-like host with apt") from None


def apt_env() -> dict[str, str]:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def ensure_qemu() -> str:
    """qemu-system-x86_64, installed with apt if missing."""
    found = shutil.which("qemu-system-x86_64")
    if found:
        return found
    if os.geteuid() != 0:
        raise LaneUnavailable(
            "qemu-system-x86_64 is missing and installing it needs root (apt-get install qemu-system-x86)"
        )
    log("installing qemu-system-x86 with apt")
    command = ["apt-get", "install", "-y", "--no-install-recommends", "qemu-system-x86"]
    result = run(command, env=apt_env())
    if result.returncode != 0:
        run(["apt-get", "update"], env=apt_env())
        result = run(command, env=apt_env())
    found = shutil.which("qemu-system-x86_64")
    if result.returncode != 0 or not found:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LaneUnavailable(f"qemu-system-x86 cannot be installed here (apt-get: {tail[0]})")
    return found


def newest_kernel_package() -> str:
    """The newest linux-image-6.12.*+deb12-amd64[-unsigned] apt knows."""

    def search() -> list[str]:
        result = run(["apt-cache", "search", "--names-only", r"^linux-image-6\.12\.[0-9]+\+deb12-amd64"])
        return [line.split(" ", 1)[0] for line in result.stdout.splitlines()]

    names = [n for n in search() if KERNEL_PACKAGE.match(n)]
    if not names:
        run(["apt-get", "update"], env=apt_env())
        names = [n for n in search() if KERNEL_PACKAGE.match(n)]
    if not names:
        raise LaneUnavailable(
            "apt knows no linux-image-6.12.*+deb12-amd64 package (is bookworm-security or -updates configured?)"
        )

    def version(name: str) -> tuple[int, int]:
        match = KERNEL_PACKAGE.match(name)
        assert match is not None  # names were filtered by this pattern
        patch = int(match.group(1).split(".")[2])
        return patch, 1 if name.endswith("-unsigned") else 0  # prefer -unsigned: nothing to verify

    return max(names, key=version)


def apt_download(package: str, into: Path) -> Path:
    result = run(["apt-get", "download", package], cwd=into, env=apt_env())
    debs = sorted(into.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LaneUnavailable(f"cannot download {package} with apt ({tail[0]})")
    return debs[-1]


def extract_deb(deb: Path, into: Path) -> None:
    if shutil.which("dpkg-deb") is None:
        raise LaneUnavailable("dpkg-deb is missing: this runner needs a Debian-like host")
    result = run(["dpkg-deb", "-x", str(deb), str(into)])
    if result.returncode != 0:
        raise RuntimeError(f"dpkg-deb -x {deb} failed: {result.stderr.strip()}")


def cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (path, mode, data) entries (dirs have S_IFDIR modes)."""
    out = io.BytesIO()

    def pad(n: int) -> None:
        out.write(b"\0" * ((4 - n % 4) % 4))

    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out.write(header + encoded)
        pad(len(header) + len(encoded))
        out.write(data)
        pad(len(data))
    return out.getvalue()


def module_name(path: str) -> str:
    """``kernel/drivers/gpu/drm/drm_kms_helper.ko.xz`` -> ``drm_kms_helper`` (the kernel's spelling: ``_``)."""
    name = path.rsplit("/", 1)[-1]
    return name.split(".ko", 1)[0].replace("-", "_")


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.suffix == ".xz" else data


def module_depends(data: bytes) -> list[str]:
    """The ``depends=`` of a module's .modinfo (what depmod turns into modules.dep)."""
    at = data.find(b"\0depends=")
    if at < 0:
        return []
    value = data[at + len(b"\0depends=") : data.index(b"\0", at + 1)].decode()
    return [module_name(n) for n in value.split(",") if n]


class ModuleTree:
    """A kernel package's modules: where each is, and what each needs.

    From modules.dep when the tree has one; a package's tree does not
    (depmod writes it at install), so otherwise from each module's own
    ``depends=``, read only for the modules load_order() visits.
    """

    def __init__(self, modules_dir: Path) -> None:
        releases = sorted(d for d in modules_dir.glob("*") if d.is_dir())
        if not releases:
            raise LaneUnavailable(f"the kernel package has no modules under {modules_dir}")
        self.release_dir = releases[-1]
        self.paths: dict[str, Path] = {}
        self.needs: dict[str, list[str]] = {}
        deps_file = self.release_dir / "modules.dep"
        if deps_file.exists():
            for line in deps_file.read_text().splitlines():
                relative, sep, needs = line.partition(":")
                if sep:
                    self.paths[module_name(relative)] = self.release_dir / relative
                    self.needs[module_name(relative)] = [module_name(n) for n in needs.split()]
        else:
            for path in self.release_dir.rglob("*.ko*"):
                if path.name.endswith((".ko", ".ko.xz")):
                    self.paths[module_name(path.name)] = path

    def dependencies(self, name: str) -> list[str]:
        if name not in self.paths:
            raise LaneUnavailable(f"the kernel package has no module {name}")
        if name not in self.needs:
            self.needs[name] = module_depends(read_module(self.paths[name]))
        return self.needs[name]

    def load_order(self, roots: tuple[str, ...]) -> list[str]:
        """``roots`` and everything they need, each after its dependencies (what modprobe would insmod)."""
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order:
                return
            if name in visiting:
                raise RuntimeError(f"the modules' dependencies have a cycle through {name}")
            visiting.add(name)
            for needed in self.dependencies(name):
                visit(needed)
            visiting.discard(name)
            order.append(name)

        for root in roots:
            visit(root)
        return order


def build_initramfs(modules_dir: Path, busybox: Path) -> bytes:
    entries: list[tuple[str, int, bytes]] = []
    for directory in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "host", "keep"):
        entries.append((directory, 0o040755, b""))
    entries.append(("bin/busybox", 0o100755, busybox.read_bytes()))
    entries.append(("init", 0o100755, INIT_SCRIPT.encode()))
    tree = ModuleTree(modules_dir)
    order = tree.load_order(MODULES)
    extra = [m for m in tree.load_order(EXTRA_MODULES) if m not in order]
    for module in [*order, *extra]:
        entries.append((f"lib/modules/{module}.ko", 0o100644, read_module(tree.paths[module])))
    entries.append(("lib/modules/order", 0o100644, "".join(f"{m}\n" for m in order).encode()))
    entries.append(("lib/modules/extra-order", 0o100644, "".join(f"{m}\n" for m in extra).encode()))
    log(f"initramfs modules: {' '.join(order)}; then {' '.join(extra)}")
    return gzip.compress(cpio_newc(entries), compresslevel=6)


def ensure_guest_image() -> tuple[Path, Path]:
    """(vmlinuz, initramfs), downloaded and built once, cached in CACHE_DIR.

    A lock file serialises concurrent runs; the stamp is written last, so
    an interrupted build is redone.
    """
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_guest_image()


def _ensure_guest_image() -> tuple[Path, Path]:
    vmlinuz, initramfs, stamp = CACHE_DIR / "vmlinuz", CACHE_DIR / "initramfs.cpio.gz", CACHE_DIR / "stamp"
    if vmlinuz.exists() and initramfs.exists() and stamp.exists() and stamp.read_text().split()[0] == INITRAMFS_VERSION:
        log(f"using the cached kernel and initramfs ({stamp.read_text().split()[1]})")
        return vmlinuz, initramfs
    stamp.unlink(missing_ok=True)
    package = newest_kernel_package()
    log(f"downloading {package} and busybox-static (apt-get download; nothing is installed)")
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as scratch:
        work = Path(scratch)
        os.chmod(work, 0o755)  # apt's _apt user writes the download here
        kernel_deb = apt_download(package, work)
        busybox_deb = apt_download("busybox-static", work)
        extract_deb(kernel_deb, work / "kernel")
        extract_deb(busybox_deb, work / "busybox")
        kernels = sorted((work / "kernel" / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise LaneUnavailable(f"{package} has no /boot/vmlinuz-*")
        image = build_initramfs(work / "kernel" / "lib" / "modules", work / "busybox" / "bin" / "busybox")
        shutil.copyfile(kernels[-1], vmlinuz)
        initramfs.write_bytes(image)
    stamp.write_text(f"{INITRAMFS_VERSION} {package}\n")
    return vmlinuz, initramfs


def hidden_by_tmpfs(paths: list[Path]) -> list[str]:
    """Those of ``paths`` the guest's tmpfs mounts (/tmp, /run, /dev/shm) would hide."""
    keep: list[str] = []
    for path in paths:
        text = str(path)
        if any(text == top or text.startswith(top + "/") for top in ("/tmp", "/run", "/dev/shm")):
            if ":" in text or " " in text:
                raise LaneUnavailable(f"{text} is under a guest tmpfs and has ':' or a space; use a venv elsewhere")
            keep.append(text)
    return sorted(set(keep))


def job_script(python: str, pytest_args: list[str]) -> str:
    args = " ".join(shlex.quote(a) for a in pytest_args)
    return f"""set -u
cd {shlex.quote(str(REPO_ROOT))}
export HOME=/tmp PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 BUFBROKER_KERNEL_LANE=1 TMPDIR=/tmp
# Python under TCG emulation starts slowly, more so on a loaded host.
export BUFBROKER_START_TIMEOUT=120
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
echo "bufbroker-lane: guest kernel $(uname -r), up $(cut -d' ' -f1 /proc/uptime) s; $(ls /dev/udmabuf /dev/dma_heap/* /dev/dri/* 2>&1 | tr '\\n' ' ')"
# Plugins the kernel tests do not use cost seconds of start-up under TCG.
{shlex.quote(python)} -m pytest -p no:cacheprovider -p no:schemathesis -p no:anyio -p no:hypothesispytest \\
    -o addopts= -ra --strict-markers --color=no --durations=10 -m kernel tests/kernel {args}
status=$?
echo "bufbroker-lane: pytest ended with status $status, up $(cut -d' ' -f1 /proc/uptime) s"
exit $status
"""


def boot(qemu: str, vmlinuz: Path, initramfs: Path, job: Path, keep: list[str], timeout: float) -> int:
    """Boot the guest, stream its console, return the job's exit status."""
    append = f"console=ttyS0 quiet loglevel=3 panic=-1 lane.job={job}"
    if keep:
        append += f" lane.keep={':'.join(keep)}"
    command = [
        qemu,
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-smp",
        str(min(os.cpu_count() or 1, 2)),
        "-m",
        "1024",
        "-nographic",
        "-no-reboot",
        "-kernel",
        str(vmlinuz),
        "-initrd",
        str(initramfs),
        "-append",
        append,
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    ]
    log("booting: " + " ".join(shlex.quote(c) for c in command))
    status = None
    started = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert process.stdout is not None
        deadline = started + timeout
        for raw in process.stdout:
            line = raw.decode(errors="replace").replace("\r", "").rstrip("\n")
            print(line, flush=True)
            if line.startswith(RESULT_MARKER):
                status = int(line[len(RESULT_MARKER) :].strip() or NO_RESULT_STATUS)
            if time.monotonic() > deadline:
                log(f"timed out after {timeout:.0f} s; stopping the VM")
                break
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    log(f"the VM ran for {time.monotonic() - started:.1f} s")
    return NO_RESULT_STATUS if status is None else status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=1200, help="seconds before the VM is stopped (default 1200)")
    parser.add_argument("--python", default=sys.executable, help="the Python (with bufbroker installed) the guest runs")
    args, pytest_args = parser.parse_known_args(argv)
    started = time.monotonic()
    try:
        qemu = ensure_qemu()
        vmlinuz, initramfs = ensure_guest_image()
        python = str(Path(args.python).absolute())
        prefixes = [Path(sys.prefix), Path(sys.base_prefix), Path(python).resolve().parent, REPO_ROOT, CACHE_DIR]
        keep = hidden_by_tmpfs(prefixes)
    except LaneUnavailable as error:
        log(f"SKIP: {error}")
        return SKIP_STATUS
    digest = hashlib.sha1(f"{os.getpid()} {time.time()}".encode()).hexdigest()[:8]
    job = CACHE_DIR / f"job-{digest}.sh"
    job.write_text(job_script(python, pytest_args))
    try:
        status = boot(qemu, vmlinuz, initramfs, job, keep, args.timeout)
    finally:
        job.unlink(missing_ok=True)
    log(f"lane finished with status {status} in {time.monotonic() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
