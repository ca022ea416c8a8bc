"""The PCI topology probe and p2p reachability over synthetic sysfs PCI trees (host/pci.py).

The dmabuf type's p2p soft mismatches, on a probed topology, are in
tests/unit/mapping_types/test_dmabuf.py.

The trees have the real layout: SYSFS/bus/pci/devices/ADDR is a relative
symlink into SYSFS/devices/pciDDDD:BB/<root port>/<switch ports>/<device>.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bufbroker_broker.host.pci import check_pci_address, device_path, p2p_reach, probe_pci_topology

GPU = "0000:03:00.0"  # behind switch 0000:01:00.0, downstream port 0000:02:01.0
NIC = "0000:04:00.0"  # behind the same switch, downstream port 0000:02:02.0
NVME = "0000:05:00.0"  # behind another root port of the same host bridge
REMOTE = "0000:81:00.0"  # under another host bridge (another socket)
MISSING = "0000:09:00.0"

TREE = {
    GPU: "pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:01.0/0000:03:00.0",
    NIC: "pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:02.0/0000:04:00.0",
    NVME: "pci0000:00/0000:00:02.0/0000:05:00.0",
    REMOTE: "pci0000:80/0000:80:01.0/0000:81:00.0",
}


def build_sysfs(root: Path) -> str:
    """A synthetic sysfs root at ``root`` with the devices of TREE (also used by the kernel lane)."""
    by_address = root / "bus" / "pci" / "devices"
    by_address.mkdir(parents=True)
    for address, place in TREE.items():
        (root / "devices" / place).mkdir(parents=True)
        os.symlink(os.path.join("..", "..", "..", "devices", place), by_address / address)
    return str(root)


@pytest.fixture
def sysfs(tmp_path: Path) -> str:
    return build_sysfs(tmp_path)


def test_devices_under_the_same_switch_reach_each_other_through_it(sysfs):
    verdict = p2p_reach(sysfs, GPU, NIC)
    assert verdict.reachable
    assert verdict.distance == 4
    assert "through bridge 0000:01:00.0" in verdict.reason


def test_a_device_reaches_itself_at_distance_zero(sysfs):
    verdict = p2p_reach(sysfs, GPU, GPU)
    assert (verdict.reachable, verdict.distance) == (True, 0)


def test_devices_under_different_host_bridges_are_unreachable(sysfs):
    verdict = p2p_reach(sysfs, GPU, REMOTE)
    assert not verdict.reachable and verdict.distance == -1
    assert "different host bridges (pci0000:80, pci0000:00)" in verdict.reason


def test_devices_sharing_only_the_host_bridge_are_unreachable(sysfs):
    verdict = p2p_reach(sysfs, GPU, NVME)
    assert not verdict.reachable
    assert "share only the host bridge pci0000:00" in verdict.reason


def test_a_missing_device_is_unreachable_and_named(sysfs):
    verdict = p2p_reach(sysfs, GPU, MISSING)
    assert not verdict.reachable
    assert f"device {MISSING} is not on this host" in verdict.reason


def test_device_path_lists_host_bridge_bridges_and_device(sysfs):
    assert device_path(sysfs, NIC) == ["pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:02.0", NIC]


def test_a_pci_address_must_look_like_one():
    assert check_pci_address("0000:03:00.0 ") == GPU
    for bad in ("03:00.0", "0000:03:00.8", "../../etc", "0000:03:00.0/x"):
        with pytest.raises(ValueError, match="not a PCI address"):
            check_pci_address(bad)


def test_this_hosts_sysfs_gives_every_listed_device_a_path():
    """The real /sys has the same layout the synthetic trees copy."""
    devices = sorted(os.listdir("/sys/bus/pci/devices")) if os.path.isdir("/sys/bus/pci/devices") else []
    if not devices:
        pytest.skip("this host lists no PCI devices in /sys/bus/pci/devices")
    for address in devices:
        path = device_path("/sys", address)
        assert path[0].startswith("pci") and path[-1] == address


def test_the_probe_records_every_devices_place_once(sysfs):
    topology = probe_pci_topology(sysfs)
    assert topology.addresses == tuple(sorted(TREE))
    assert topology.device_path(NIC) == ("pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:02.0", NIC)
    assert topology.sysfs_root == sysfs


def test_the_probed_topology_answers_after_sysfs_is_gone(tmp_path: Path):
    topology = probe_pci_topology(build_sysfs(tmp_path / "sys"))
    for place in (tmp_path / "sys" / "bus" / "pci" / "devices").iterdir():
        place.unlink()
    assert topology.p2p_reach(GPU, NIC).reachable  # plain data: no sysfs read at match time
    assert not p2p_reach(str(tmp_path / "sys"), GPU, NIC).reachable


def test_a_listed_device_whose_link_leads_elsewhere_is_unusable_with_the_reason(sysfs, tmp_path: Path):
    stray = "0000:0a:00.0"
    os.symlink(str(tmp_path), Path(sysfs, "bus", "pci", "devices", stray))
    topology = probe_pci_topology(sysfs)
    assert topology.device_path(stray) is None
    assert stray in topology.addresses
    verdict = topology.p2p_reach(GPU, stray)
    assert not verdict.reachable and "does not lead into" in verdict.reason


def test_an_unreadable_sysfs_is_an_empty_topology(tmp_path: Path):
    assert probe_pci_topology(str(tmp_path / "nothing")).addresses == ()
