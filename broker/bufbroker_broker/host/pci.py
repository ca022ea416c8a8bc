"""PCI topology from sysfs, for p2p reachability (the broker's ``pci_p2pdma_distance()``).

Every PCI device has a link ``SYSFS/bus/pci/devices/DDDD:BB:DD.F`` to its
place in the hierarchy, ``SYSFS/devices/pciDDDD:BB/<root port>/<switch
ports...>/<device>``. :func:`probe_pci_topology` reads those places once into
a :class:`~bufbroker_broker.core.host_facts.PciTopology`, plain data from
which the core works out reachability (the rules are documented there).

The sysfs root is a setting (``sysfs_root``) so tests can build synthetic
trees; nothing here writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from bufbroker_broker.core.host_facts import P2PVerdict, PciTopology, check_pci_address

__all__ = [
    "DeviceNotFound",
    "P2PVerdict",
    "check_pci_address",
    "device_path",
    "p2p_reach",
    "pci_devices",
    "probe_pci_topology",
]


class DeviceNotFound(Exception):
    """The address names no PCI device under this sysfs root."""


def device_path(sysfs_root: str, address: str) -> list[str]:
    """The device's place in the hierarchy: [host bridge, bridges..., device].

    Raises DeviceNotFound when SYSFS/bus/pci/devices/ADDRESS is missing or
    does not lead into SYSFS/devices.
    """
    link = os.path.join(sysfs_root, "bus", "pci", "devices", address)
    if not os.path.lexists(link):
        raise DeviceNotFound(f"device {address} is not on this host (no {link})")
    target = os.path.realpath(link)
    devices = os.path.realpath(os.path.join(sysfs_root, "devices"))
    if not target.startswith(devices + os.sep):
        raise DeviceNotFound(f"device {address}: {link} does not lead into {devices}")
    parts = target[len(devices) + 1 :].split(os.sep)
    if not parts or not parts[0].startswith("pci") or parts[-1] != address:
        raise DeviceNotFound(f"device {address}: {target} is not a PCI device path under a host bridge")
    return parts


def probe_pci_topology(sysfs_root: str, addresses: Iterable[str] | None = None) -> PciTopology:
    """The places of ``addresses`` (default: every device listed) under ``sysfs_root``."""
    paths: dict[str, tuple[str, ...]] = {}
    unusable: dict[str, str] = {}
    for address in pci_devices(sysfs_root) if addresses is None else addresses:
        try:
            paths[address] = tuple(device_path(sysfs_root, address))
        except DeviceNotFound as error:
            if os.path.lexists(os.path.join(sysfs_root, "bus", "pci", "devices", address)):
                unusable[address] = str(error)
    return PciTopology(sysfs_root, paths, unusable)


def p2p_reach(sysfs_root: str, provider: str, client: str) -> P2PVerdict:
    """Can ``client`` DMA to ``provider``'s memory peer-to-peer? (Reads sysfs now.)"""
    return probe_pci_topology(sysfs_root, {provider, client}).p2p_reach(provider, client)


def pci_devices(sysfs_root: str) -> list[str]:
    """Every PCI device address under the sysfs root (empty if unreadable)."""
    try:
        return sorted(os.listdir(os.path.join(sysfs_root, "bus", "pci", "devices")))
    except OSError:
        return []
