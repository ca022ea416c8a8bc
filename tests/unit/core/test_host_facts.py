"""HostFacts and p2p reachability on a PCI topology given as plain data (core/host_facts.py)."""

from __future__ import annotations

import pytest

from bufbroker_broker.core.host_facts import NOT_PROBED, HostFacts, PciTopology, check_pci_address

GPU, NIC, NVME, REMOTE = "0000:03:00.0", "0000:04:00.0", "0000:05:00.0", "0000:81:00.0"
TOPOLOGY = PciTopology(
    "/sys",
    {
        GPU: ("pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:01.0", GPU),
        NIC: ("pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:02.0", NIC),
        NVME: ("pci0000:00", "0000:00:02.0", NVME),
        REMOTE: ("pci0000:80", "0000:80:01.0", REMOTE),
    },
    {"0000:0a:00.0": "device 0000:0a:00.0: /sys/bus/pci/devices/0000:0a:00.0 does not lead into /sys/devices"},
)


def test_devices_under_one_switch_reach_each_other_through_it_at_their_distance():
    verdict = TOPOLOGY.p2p_reach(GPU, NIC)
    assert (verdict.reachable, verdict.distance) == (True, 4)
    assert verdict.reason == f"{NIC} reaches {GPU} through bridge 0000:01:00.0 (distance 4)"


def test_a_device_reaches_itself_at_distance_zero():
    assert (TOPOLOGY.p2p_reach(GPU, GPU).reachable, TOPOLOGY.p2p_reach(GPU, GPU).distance) == (True, 0)


def test_devices_meeting_only_at_the_host_bridge_or_under_different_ones_are_unreachable():
    assert "share only the host bridge pci0000:00" in TOPOLOGY.p2p_reach(GPU, NVME).reason
    assert "different host bridges (pci0000:80, pci0000:00)" in TOPOLOGY.p2p_reach(GPU, REMOTE).reason
    assert not TOPOLOGY.p2p_reach(GPU, NVME).reachable and TOPOLOGY.p2p_reach(GPU, REMOTE).distance == -1


def test_a_device_not_listed_or_unusable_is_unreachable_saying_why():
    assert TOPOLOGY.p2p_reach("0000:09:00.0", GPU).reason == (
        "device 0000:09:00.0 is not on this host (no /sys/bus/pci/devices/0000:09:00.0)"
    )
    assert "does not lead into" in TOPOLOGY.p2p_reach(GPU, "0000:0a:00.0").reason
    assert "0000:0a:00.0" in TOPOLOGY.addresses and TOPOLOGY.device_path("0000:0a:00.0") is None


def test_the_topology_cannot_be_changed_after_the_probe():
    given = {GPU: ("pci0000:00", GPU)}
    topology = PciTopology("/sys", given)
    given[NIC] = ("pci0000:00", NIC)  # the caller's dict is copied
    assert topology.device_path(NIC) is None
    with pytest.raises(TypeError):
        topology.paths[NIC] = ()  # type: ignore[index]


def test_unprobed_facts_know_of_nothing():
    facts = HostFacts()
    assert (facts.udmabuf.available, facts.udmabuf.reason) == (False, NOT_PROBED)
    assert facts.dma_heaps == () and facts.pci.addresses == ()


def test_a_pci_address_must_look_like_one():
    assert check_pci_address(" 0000:03:00.0 ".upper()) == GPU
    with pytest.raises(ValueError, match="not a PCI address"):
        check_pci_address("03:00.0")
