"""probe_host_facts(): the one probe whose result every match reads (host/probe.py)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from bufbroker_broker.host.probe import dma_heaps, probe_host_facts
from tests.unit.host.test_pci import GPU, NIC, TREE, build_sysfs


def test_the_probe_gathers_udmabuf_dma_heaps_and_the_pci_topology(tmp_path: Path):
    dev = tmp_path / "dev"
    (dev / "dma_heap").mkdir(parents=True)
    for heap in ("system", "cma"):
        (dev / "dma_heap" / heap).write_text("")
    os.symlink("/dev/null", dev / "udmabuf")
    facts = probe_host_facts(build_sysfs(tmp_path / "sys"), str(dev))
    assert facts.udmabuf.available and facts.udmabuf.device == f"{dev}/udmabuf"
    assert facts.dma_heaps == ("cma", "system")
    assert facts.heap_dir == f"{dev}/dma_heap"
    assert facts.pci.addresses == tuple(sorted(TREE))
    assert facts.pci.p2p_reach(GPU, NIC).reachable


def test_a_bare_host_is_facts_of_absence_not_an_error(tmp_path: Path):
    facts = probe_host_facts(str(tmp_path / "sys"), str(tmp_path / "dev"))
    assert not facts.udmabuf.available and "does not exist" in facts.udmabuf.reason
    assert facts.dma_heaps == ()
    assert facts.pci.addresses == ()
    assert dma_heaps(str(tmp_path / "dev")) == ()


def test_the_facts_are_frozen_values():
    facts = probe_host_facts()
    assert facts == probe_host_facts()  # the same host gives the same facts
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.dma_heaps = ("x",)  # type: ignore[misc]
    with pytest.raises(TypeError):
        facts.pci.paths["0000:00:00.0"] = ()  # type: ignore[index]
