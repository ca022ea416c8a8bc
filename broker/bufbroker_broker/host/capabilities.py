"""What this host's kernel gives bufbroker: probed at start-up and by `bufbroker doctor`.

Each probe returns a :class:`Check`: whether the piece works here, what was
found, and what to do when it does not. ``required`` pieces stop the
broker from working at all; the others only take mapping types away
(udmabuf, dma-heap exporters, p2p reachability). The checks of those read
the same HostFacts the mapping types match with (host/probe.py), and add
what to do about each missing piece.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import resource
from dataclasses import dataclass
from pathlib import Path

from bufbroker_broker.core.host_facts import HostFacts, PciTopology, UdmabufFacts
from bufbroker_broker.host.pci import probe_pci_topology
from bufbroker_broker.host.probe import dma_heaps, probe_host_facts
from bufbroker_broker.host.udmabuf import probe_udmabuf

FD_LIMIT_WANTED = 4096


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""  # what to do when not ok
    required: bool = False


@dataclass(frozen=True)
class HostPaths:
    """Where the probes look; tests point them at synthetic trees."""

    dev: str = "/dev"
    sysfs: str = "/sys"
    boot: str = "/boot"
    modules: str = "/lib/modules"
    proc_config: str = "/proc/config.gz"


def kernel_config(option: str, paths: HostPaths, release: str) -> str | None:
    """``y``, ``m`` or ``n`` for a kernel config option, None when the config is not readable."""
    text = ""
    try:
        with gzip.open(paths.proc_config, "rt") as file:
            text = file.read()
    except OSError:
        try:
            text = Path(paths.boot, f"config-{release}").read_text()
        except OSError:
            return None
    for line in text.splitlines():
        if line.startswith(f"{option}="):
            return line.split("=", 1)[1].strip()
        if line.strip() == f"# {option} is not set":
            return "n"
    return "n"


def _config_source(paths: HostPaths, release: str) -> str:
    return paths.proc_config if os.path.exists(paths.proc_config) else str(Path(paths.boot, f"config-{release}"))


def check_udmabuf(paths: HostPaths = HostPaths(), release: str = "", facts: UdmabufFacts | None = None) -> Check:
    """udmabuf: usable, or why not and what to do (``facts``: already probed, else probed now)."""
    release = release or os.uname().release
    udmabuf = facts if facts is not None else probe_udmabuf(paths.dev, paths.sysfs)
    device = udmabuf.device
    if udmabuf.available:
        detail = f"{device} (buffers up to {udmabuf.size_limit_mb} MiB, {udmabuf.list_limit} extents)"
        return Check("udmabuf", True, detail)
    why = udmabuf.reason
    if os.path.exists(device):
        fix = (
            f"give the broker's user read-write access to {device}, e.g. a udev rule "
            f'KERNEL=="udmabuf", GROUP="bufbroker", MODE="0660"; in a container also pass the '
            f"device in (docker run --device {device}, or a device plugin in Kubernetes)"
        )
        return Check("udmabuf", False, why, fix)
    if os.path.isdir(os.path.join(paths.sysfs, "module", "udmabuf")):
        fix = (
            f"the udmabuf driver is loaded but {device} is missing: mount devtmpfs on {paths.dev}; "
            f"in a container pass the device in (docker run --device {device})"
        )
        return Check("udmabuf", False, f"{device} does not exist", fix)
    module_dir = Path(paths.modules, release, "kernel", "drivers", "dma-buf")
    if any(module_dir.glob("udmabuf.ko*")):
        fix = "load the driver: modprobe udmabuf (and list udmabuf in /etc/modules-load.d/ to keep it)"
        return Check("udmabuf", False, f"{device} does not exist; the udmabuf module is not loaded", fix)
    config = kernel_config("CONFIG_UDMABUF", paths, release)
    if config == "n":
        detail = f"this kernel ({release}) is built without CONFIG_UDMABUF ({_config_source(paths, release)})"
    else:
        detail = f"{device} does not exist and this kernel ({release}) has no udmabuf module"
    fix = (
        "run a kernel with CONFIG_UDMABUF=y or =m (Debian's linux-image-amd64 has it built in); "
        "until then importers fall through to memfd or segments"
    )
    return Check("udmabuf", False, detail, fix)


def check_dma_heaps(paths: HostPaths = HostPaths(), release: str = "", heaps: tuple[str, ...] | None = None) -> Check:
    """dma-heaps: which are there and readable (``heaps``: already probed, else listed now)."""
    release = release or os.uname().release
    heap_dir = os.path.join(paths.dev, "dma_heap")
    heaps = heaps if heaps is not None else dma_heaps(paths.dev)
    if heaps:
        usable = [h for h in heaps if os.access(os.path.join(heap_dir, h), os.R_OK)]
        if usable:
            return Check("dma-heaps", True, f"{', '.join(usable)} in {heap_dir}")
        fix = f'give exporters read access to {heap_dir}/* (e.g. a udev rule for SUBSYSTEM=="dma_heap")'
        return Check("dma-heaps", False, f"{', '.join(heaps)} in {heap_dir}, none readable by uid {os.geteuid()}", fix)
    config = kernel_config("CONFIG_DMABUF_HEAPS_SYSTEM", paths, release)
    if config == "n":
        detail = f"{heap_dir} does not exist: this kernel ({release}) is built without CONFIG_DMABUF_HEAPS_SYSTEM"
    else:
        detail = f"{heap_dir} does not exist"
    fix = (
        "exporters that allocate from a dma-heap (bufbroker.dmabuf.heap_alloc) need a kernel with "
        "CONFIG_DMABUF_HEAPS=y and CONFIG_DMABUF_HEAPS_SYSTEM=y; dma-bufs from device drivers work without"
    )
    return Check("dma-heaps", False, detail, fix)


def check_memfd_sealing() -> Check:
    try:
        fd = os.memfd_create("bufbroker-probe", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    except (OSError, AttributeError) as error:
        return Check(
            "memfd sealing",
            False,
            f"memfd_create failed ({error})",
            "bufbroker needs Linux 3.17 or later with memfd_create and sealing (CONFIG_MEMFD_CREATE)",
            True,
        )
    try:
        os.ftruncate(fd, 4096)
        wanted = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, wanted)
        ok = fcntl.fcntl(fd, fcntl.F_GET_SEALS) & wanted == wanted
    except OSError as error:
        return Check(
            "memfd sealing",
            False,
            f"sealing a memfd failed ({error.strerror})",
            "bufbroker needs memfds that can be sealed (F_ADD_SEALS on tmpfs)",
            True,
        )
    finally:
        os.close(fd)
    return Check("memfd sealing", ok, "memfd_create(MFD_ALLOW_SEALING) and F_SEAL_SHRINK|F_SEAL_GROW work", "", True)


def check_fd_limit() -> Check:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    detail = f"soft {soft}, hard {hard_text}; the broker raises its soft limit to the hard one"
    if hard != resource.RLIM_INFINITY and hard < FD_LIMIT_WANTED:
        fix = (
            f"the broker holds an fd per buffer and mapping: raise the hard limit to at least "
            f"{FD_LIMIT_WANTED} (LimitNOFILE= in the systemd unit, docker run --ulimit nofile=65536)"
        )
        return Check("fd limit", False, detail, fix)
    return Check("fd limit", True, detail)


def check_pci(paths: HostPaths = HostPaths(), topology: PciTopology | None = None) -> Check:
    """The PCI topology p2p reachability reads (``topology``: already probed, else probed now)."""
    devices = (topology if topology is not None else probe_pci_topology(paths.sysfs)).addresses
    where = os.path.join(paths.sysfs, "bus", "pci", "devices")
    if devices:
        return Check("pci topology", True, f"{len(devices)} devices under {where} (for p2p reachability)")
    fix = f"p2p reachability reads {where}: mount sysfs there, or set the broker's sysfs_root"
    return Check(
        "pci topology", False, f"no PCI devices under {where}; dmabuf offers that require p2p will not match", fix
    )


def probe_host(paths: HostPaths = HostPaths(), host: HostFacts | None = None) -> list[Check]:
    """Every check, required ones first; ``host`` is what was already probed (else probed now)."""
    release = os.uname().release
    if host is None:
        host = probe_host_facts(paths.sysfs, paths.dev)
    return [
        check_memfd_sealing(),
        check_fd_limit(),
        check_udmabuf(paths, release, host.udmabuf),
        check_dma_heaps(paths, release, host.dma_heaps),
        check_pci(paths, host.pci),
    ]


def summary(checks: list[Check]) -> str:
    """One line for the start-up log: each piece, yes or no with the reason."""
    return "; ".join(f"{check.name}: {'yes' if check.ok else 'no'} ({check.detail})" for check in checks)
