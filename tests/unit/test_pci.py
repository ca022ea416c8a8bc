"""p2p reachability over synthetic sysfs PCI trees (broker/pci.py), and the
dmabuf type's p2p soft mismatches built on it.

The trees have the real layout: SYSFS/bus/pci/devices/ADDR is a relative
symlink into SYSFS/devices/pciDDDD:BB/<root port>/<switch ports>/<device>.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bufbroker.v1 import mapping_types_pb2 as pb

from bufbroker_broker.core.errors import InvalidArgument
from bufbroker_broker.core.mapping_type import Matched, MatchContext, SoftMismatch
from bufbroker_broker.mapping_types.dmabuf import DMABUF
from bufbroker_broker.host.pci import check_pci_address, device_path, p2p_reach

GPU = "0000:03:00.0"       # behind switch 0000:01:00.0, downstream port 0000:02:01.0
NIC = "0000:04:00.0"       # behind the same switch, downstream port 0000:02:02.0
NVME = "0000:05:00.0"      # behind another root port of the same host bridge
REMOTE = "0000:81:00.0"    # under another host bridge (another socket)
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


# --- the dmabuf type's p2p rule --------------------------------------------------------


def ctx(sysfs: str, writable: bool = True) -> MatchContext:
    return MatchContext(1000, 1000, 4096, (4096,), (writable,), sysfs_root=sysfs)


def p2p_offer(device: str = GPU) -> pb.DmabufOffer:
    return DMABUF.check_offer(pb.DmabufOffer(device=device, requires_p2p=True), (4096,), 4096)


def p2p_match(device: str, accepts_p2p: bool = True) -> pb.DmabufMatch:
    return DMABUF.check_match(pb.DmabufMatch(device=device, accepts_p2p=accepts_p2p))


def test_p2p_offer_matches_an_importer_under_the_same_switch(sysfs):
    assert DMABUF.match(p2p_offer(), p2p_match(NIC), ctx(sysfs)) == Matched()


@pytest.mark.parametrize(
    "device, accepts, reason",
    [
        (REMOTE, True, "p2p: 0000:81:00.0 and 0000:03:00.0 are under different host bridges"),
        (NVME, True, "p2p: 0000:05:00.0 and 0000:03:00.0 share only the host bridge"),
        (MISSING, True, "p2p: device 0000:09:00.0 is not on this host"),
        (NIC, False, "the importer's device 0000:04:00.0 does not accept p2p"),
        ("", True, "the importer names no device"),
    ],
)
def test_p2p_offer_is_a_soft_mismatch_with_the_reason_when_unreachable(sysfs, device, accepts, reason):
    result = DMABUF.match(p2p_offer(), p2p_match(device, accepts), ctx(sysfs))
    assert isinstance(result, SoftMismatch)
    assert reason in result.reason


def test_offer_without_p2p_matches_any_importer_device(sysfs):
    offer = DMABUF.check_offer(pb.DmabufOffer(device=GPU), (4096,), 4096)
    assert DMABUF.match(offer, p2p_match(REMOTE, accepts_p2p=False), ctx(sysfs)) == Matched()


def test_p2p_offer_without_a_device_is_refused_at_registration():
    with pytest.raises(InvalidArgument, match="requires p2p but names no device"):
        DMABUF.check_offer(pb.DmabufOffer(requires_p2p=True), (4096,), 4096)


def test_bad_device_address_is_refused_at_registration_and_attach():
    with pytest.raises(InvalidArgument, match="dmabuf offer device: '../x' is not a PCI address"):
        DMABUF.check_offer(pb.DmabufOffer(device="../x"), (4096,), 4096)
    with pytest.raises(InvalidArgument, match="dmabuf match device"):
        DMABUF.check_match(pb.DmabufMatch(device="gpu0"))
