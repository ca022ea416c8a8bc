"""PCI topology from sysfs: can one device reach another by peer-to-peer DMA?

This is the broker's version of the kernel's ``pci_p2pdma_distance()``,
read from sysfs instead of the kernel's device tree. Every PCI device has a
link ``SYSFS/bus/pci/devices/DDDD:BB:DD.F`` to its place in the hierarchy,
``SYSFS/devices/pciDDDD:BB/<root port>/<switch ports...>/<device>``. Two
devices can exchange TLPs directly when their paths share a PCI bridge
below the host bridge (the same switch, or the same device): the traffic
turns around in that bridge. Devices whose paths meet only at the host
bridge would route through the root complex, which the kernel allows only
for a short whitelist of host bridges; devices under different host
bridges would cross the CPU interconnect. Both count as unreachable here.

Not modelled: ACS redirection on switch ports (which sends p2p traffic up
to the root complex) and the kernel's host-bridge whitelist.

The sysfs root is a setting (``sysfs_root``) so tests can build synthetic
trees; nothing here writes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def check_pci_address(address: str) -> str:
    """The address, lowercased, or ValueError saying what a PCI address looks like."""
    normalised = address.strip().lower()
    if not PCI_ADDRESS.match(normalised):
        raise ValueError(f"{address!r} is not a PCI address; give DOMAIN:BUS:DEVICE.FUNCTION, e.g. 0000:03:00.0")
    return normalised


@dataclass(frozen=True)
class P2PVerdict:
    """Whether ``client`` can reach ``provider`` by p2p DMA, and why (or why not).

    ``distance`` counts the links between the two devices through their
    closest shared bridge (0 for the same device); -1 when unreachable.
    """

    reachable: bool
    distance: int
    reason: str


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


def p2p_reach(sysfs_root: str, provider: str, client: str) -> P2PVerdict:
    """Can ``client`` DMA to ``provider``'s memory peer-to-peer?"""
    try:
        provider_path = device_path(sysfs_root, provider)
        client_path = device_path(sysfs_root, client)
    except DeviceNotFound as error:
        return P2PVerdict(False, -1, str(error))
    if provider == client:
        return P2PVerdict(True, 0, f"{client} is the exporting device itself")
    if provider_path[0] != client_path[0]:
        return P2PVerdict(
            False,
            -1,
            f"{client} and {provider} are under different host bridges ({client_path[0]}, "
            f"{provider_path[0]}): p2p would cross the CPU interconnect",
        )
    shared = 0
    for a, b in zip(provider_path, client_path):
        if a != b:
            break
        shared += 1
    if shared < 2:
        return P2PVerdict(
            False,
            -1,
            f"{client} and {provider} share only the host bridge {provider_path[0]}: p2p would "
            "route through the root complex, which is not assumed to forward it",
        )
    bridge = provider_path[shared - 1]
    distance = (len(provider_path) - shared) + (len(client_path) - shared)
    return P2PVerdict(True, distance, f"{client} reaches {provider} through bridge {bridge} (distance {distance})")


def pci_devices(sysfs_root: str) -> list[str]:
    """Every PCI device address under the sysfs root (empty if unreadable)."""
    try:
        return sorted(os.listdir(os.path.join(sysfs_root, "bus", "pci", "devices")))
    except OSError:
        return []
