"""`bufbroker doctor` and the capability probes behind it (cli/doctor.py,
host/capabilities.py): on this host, and on synthetic /dev and /sys trees
for the cases this host cannot show."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bufbroker_broker.cli.doctor import BROKEN, OK, PARTIAL, doctor_report
from bufbroker_broker.host import capabilities
from bufbroker_broker.host.capabilities import HostPaths, check_dma_heaps, check_udmabuf

HOST_HAS_UDMABUF = os.path.exists("/dev/udmabuf")


def paths(tmp_path: Path, **made: str) -> HostPaths:
    """Empty dev/sys/boot/modules dirs under tmp_path and no kernel config."""
    for name in ("dev", "sys", "boot", "modules"):
        (tmp_path / name).mkdir(exist_ok=True)
    return HostPaths(
        dev=str(tmp_path / "dev"),
        sysfs=str(tmp_path / "sys"),
        boot=str(tmp_path / "boot"),
        modules=str(tmp_path / "modules"),
        proc_config=str(tmp_path / "no-config.gz"),
    )


@pytest.mark.skipif(HOST_HAS_UDMABUF, reason="this host has /dev/udmabuf (the kernel lane runs doctor there)")
def test_doctor_reports_this_host_without_udmabuf_and_says_what_to_do():
    lines, status = doctor_report()
    text = "\n".join(lines)
    assert status == PARTIAL
    assert "ok       memfd sealing" in text
    udmabuf = next(line for line in lines if " udmabuf " in line and "missing" in line)
    assert "/dev/udmabuf" in udmabuf or "CONFIG_UDMABUF" in udmabuf
    assert "fix: run a kernel with CONFIG_UDMABUF=y or =m" in text or "fix: load the driver" in text
    assert "  udmabuf    no   /dev/udmabuf does not exist" in text
    assert "result: the broker runs here without: udmabuf" in text


def test_doctor_names_a_kernel_built_without_udmabuf_from_its_config(tmp_path):
    host = paths(tmp_path)
    Path(host.boot, "config-9.9.9").write_text("# CONFIG_UDMABUF is not set\nCONFIG_DMABUF_HEAPS=y\n")
    check = check_udmabuf(host, release="9.9.9")
    assert not check.ok
    assert check.detail == f"this kernel (9.9.9) is built without CONFIG_UDMABUF ({host.boot}/config-9.9.9)"
    assert "CONFIG_UDMABUF=y or =m" in check.fix


def test_doctor_says_modprobe_when_the_module_exists_but_is_not_loaded(tmp_path):
    host = paths(tmp_path)
    module_dir = Path(host.modules, "9.9.9", "kernel", "drivers", "dma-buf")
    module_dir.mkdir(parents=True)
    (module_dir / "udmabuf.ko.xz").write_bytes(b"")
    assert check_udmabuf(host, release="9.9.9").fix.startswith("load the driver: modprobe udmabuf")


def test_doctor_says_mount_devtmpfs_when_the_driver_is_loaded_but_the_node_is_missing(tmp_path):
    host = paths(tmp_path)
    Path(host.sysfs, "module", "udmabuf").mkdir(parents=True)
    assert "the udmabuf driver is loaded but" in check_udmabuf(host, release="9.9.9").fix


def test_doctor_says_how_to_grant_access_when_the_device_cannot_be_opened(tmp_path):
    host = paths(tmp_path)
    Path(host.dev, "udmabuf").mkdir()  # exists, but open(O_RDWR) fails
    check = check_udmabuf(host, release="9.9.9")
    assert not check.ok and check.detail.startswith("cannot open")
    assert 'KERNEL=="udmabuf"' in check.fix and "--device" in check.fix


def test_doctor_lists_the_dma_heaps_there_are(tmp_path):
    host = paths(tmp_path)
    Path(host.dev, "dma_heap").mkdir()
    Path(host.dev, "dma_heap", "system").write_text("")
    check = check_dma_heaps(host, release="9.9.9")
    assert check.ok and check.detail.startswith("system in ")


def test_missing_dma_heaps_say_which_config_they_need(tmp_path):
    check = check_dma_heaps(paths(tmp_path), release="9.9.9")
    assert not check.ok and "CONFIG_DMABUF_HEAPS_SYSTEM=y" in check.fix


def test_startup_summary_is_one_line_naming_every_piece():
    line = capabilities.summary(capabilities.probe_host())
    assert "\n" not in line
    for name in ("memfd sealing: yes", "fd limit:", "udmabuf:", "dma-heaps:", "pci topology:"):
        assert name in line


def test_doctor_status_is_ok_partial_or_broken():
    assert (OK, PARTIAL, BROKEN) == (0, 1, 2)


def test_bufbroker_doctor_prints_the_report_and_exits_with_its_status(capsys):
    from bufbroker_broker.cli import main

    status = main(["doctor"])
    printed = capsys.readouterr().out
    lines, expected = doctor_report(HostPaths(sysfs=os.environ.get("BUFBROKER_SYSFS_ROOT") or "/sys"), extras=True)
    assert status == expected
    assert printed.splitlines() == lines
    assert "memfd sealing" in printed and "mapping types:" in printed


def test_doctor_judges_the_mapping_types_on_the_facts_it_probed(tmp_path):
    host = paths(tmp_path)
    os.symlink("/dev/null", Path(host.dev, "udmabuf"))  # opens: "usable"
    lines, _ = doctor_report(host)
    assert f"  udmabuf    yes  {host.dev}/udmabuf is usable" in lines
    assert any(line.startswith("  ok       udmabuf") for line in lines)
    assert any(line.startswith("  dmabuf     yes  exporters pass dma-buf fds; no dma-heaps here") for line in lines)
