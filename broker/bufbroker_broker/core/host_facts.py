"""HostFacts: what this host offers the mapping types, as plain data.

The broker probes the host once, at start (``bufbroker_broker.host.probe``),
and ``bufbroker doctor`` probes it on demand; a mapping type's ``match``
reads the result from ``MatchContext.host`` and never looks at /dev or /sys
itself, so a match is a pure function of its inputs.

The PCI topology is kept as each device's place in the hierarchy, and p2p
reachability (the broker's version of the kernel's ``pci_p2pdma_distance()``)
is worked out from it here: two devices can exchange TLPs directly when their
paths share a PCI bridge below the host bridge (the same switch, or the same
device). Devices that meet only at the host bridge would route through the
root complex, which the kernel allows only for a short whitelist; devices
under different host bridges would cross the CPU interconnect. Both count as
unreachable. Not modelled: ACS redirection and the host-bridge whitelist.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")

# Kernel defaults of the udmabuf module parameters (drivers/dma-buf/udmabuf.c).
UDMABUF_SIZE_LIMIT_MB = 64
UDMABUF_LIST_LIMIT = 1024


def check_pci_address(address: str) -> str:
    """The address, lowercased, or ValueError saying what a PCI address looks like."""
    normalised = address.strip().lower()
    if not PCI_ADDRESS.match(normalised):
        raise ValueError(f"{address!r} is not a PCI address; give DOMAIN:BUS:DEVICE.FUNCTION, e.g. 0000:03:00.0")
    return normalised


@dataclass(frozen=True)
class UdmabufFacts:
    """Whether the broker can build udmabufs here, why (not), and the module's limits.

    ``reason`` is one line either way ("/dev/udmabuf is usable", or why
    not and what is missing). ``device`` is the node the probe opened, the
    one a map opens again.
    """

    available: bool
    reason: str
    device: str = "/dev/udmabuf"
    size_limit_mb: int = UDMABUF_SIZE_LIMIT_MB
    list_limit: int = UDMABUF_LIST_LIMIT


@dataclass(frozen=True)
class P2PVerdict:
    """Whether ``client`` can reach ``provider`` by p2p DMA, and why (or why not).

    ``distance`` counts the links between the two devices through their
    closest shared bridge (0 for the same device); -1 when unreachable.
    """

    reachable: bool
    distance: int
    reason: str


@dataclass(frozen=True)
class PciTopology:
    """Every PCI device's place in the hierarchy, as sysfs showed it.

    ``paths`` maps an address to [host bridge, bridges..., device] (the
    components of its SYSFS/devices path); ``unusable`` maps the addresses
    whose SYSFS/bus/pci/devices entry leads nowhere useful to why.
    ``sysfs_root`` is where they were read, for messages only.
    """

    sysfs_root: str = "/sys"
    paths: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    unusable: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", MappingProxyType(dict(self.paths)))
        object.__setattr__(self, "unusable", MappingProxyType(dict(self.unusable)))

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every device listed, usable or not, sorted."""
        return tuple(sorted({*self.paths, *self.unusable}))

    def device_path(self, address: str) -> tuple[str, ...] | None:
        """The device's [host bridge, bridges..., device], or None when it is not usable here."""
        return self.paths.get(address)

    def why_missing(self, address: str) -> str:
        """Why ``address`` has no path: not on this host, or its sysfs entry is broken."""
        return self.unusable.get(address) or (
            f"device {address} is not on this host (no {self.sysfs_root.rstrip('/')}/bus/pci/devices/{address})"
        )

    def p2p_reach(self, provider: str, client: str) -> P2PVerdict:
        """Can ``client`` DMA to ``provider``'s memory peer-to-peer?"""
        provider_path = self.paths.get(provider)
        if provider_path is None:
            return P2PVerdict(False, -1, self.why_missing(provider))
        client_path = self.paths.get(client)
        if client_path is None:
            return P2PVerdict(False, -1, self.why_missing(client))
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
        for a, b in zip(provider_path, client_path, strict=False):
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


NOT_PROBED = "the broker did not probe this host"
NO_UDMABUF = UdmabufFacts(False, NOT_PROBED)
NO_PCI = PciTopology()


@dataclass(frozen=True)
class HostFacts:
    """What the mapping types may know about this host, probed once.

    The default value knows nothing: no udmabuf, no dma-heaps, no PCI
    devices (what a test or a dry run without a probe gets).
    """

    udmabuf: UdmabufFacts = NO_UDMABUF
    dma_heaps: tuple[str, ...] = ()  # names under /dev/dma_heap
    heap_dir: str = "/dev/dma_heap"
    pci: PciTopology = NO_PCI


# What a MatchContext made without a probe knows of the host: nothing.
UNPROBED = HostFacts()
