"""Probe this host once into the HostFacts every match reads.

The broker calls :func:`probe_host_facts` at start (server/daemon.py) and
``bufbroker doctor`` calls it on demand; nothing else looks at /dev or /sys
for the mapping types.
"""

from __future__ import annotations

import os

from bufbroker_broker.core.host_facts import HostFacts
from bufbroker_broker.host.pci import probe_pci_topology
from bufbroker_broker.host.udmabuf import probe_udmabuf


def dma_heaps(dev_root: str = "/dev") -> tuple[str, ...]:
    """The dma-heaps under DEV/dma_heap, sorted (empty when there is none)."""
    try:
        return tuple(sorted(os.listdir(os.path.join(dev_root, "dma_heap"))))
    except OSError:
        return ()


def probe_host_facts(sysfs_root: str = "/sys", dev_root: str = "/dev") -> HostFacts:
    """What this host offers: udmabuf (and its limits), dma-heaps, the PCI topology.

    Reads sysfs and /dev, and opens DEV/udmabuf once (closing it again);
    never fails: what cannot be read is reported as absent, with the reason.
    """
    return HostFacts(
        udmabuf=probe_udmabuf(dev_root, sysfs_root),
        dma_heaps=dma_heaps(dev_root),
        heap_dir=os.path.join(dev_root, "dma_heap"),
        pci=probe_pci_topology(sysfs_root),
    )
