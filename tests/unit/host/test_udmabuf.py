"""Probing /dev/udmabuf and its module limits (host/udmabuf.py), on synthetic /dev and /sys trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bufbroker_broker.host.udmabuf import (
    DEFAULT_LIST_LIMIT,
    DEFAULT_SIZE_LIMIT_MB,
    UDMABUF_CREATE,
    UDMABUF_CREATE_LIST,
    module_parameter,
    probe_udmabuf,
)


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    dev, sys = tmp_path / "dev", tmp_path / "sys"
    dev.mkdir()
    sys.mkdir()
    return dev, sys


def test_ioctl_numbers_match_the_kernel_uapi():
    # _IOW('u', 0x42, struct udmabuf_create) and _IOW('u', 0x43, struct udmabuf_create_list)
    assert (UDMABUF_CREATE, UDMABUF_CREATE_LIST) == (0x40187542, 0x40087543)


def test_a_missing_device_is_unavailable_saying_the_kernel_needs_config_udmabuf(roots):
    dev, sys = roots
    facts = probe_udmabuf(str(dev), str(sys))
    assert not facts.available
    assert facts.reason == f"{dev}/udmabuf does not exist (the kernel needs CONFIG_UDMABUF)"
    assert facts.device == f"{dev}/udmabuf"


def test_a_device_that_cannot_be_opened_is_unavailable_saying_why(roots):
    dev, sys = roots
    (dev / "udmabuf").mkdir()  # exists, but open(O_RDWR) fails
    facts = probe_udmabuf(str(dev), str(sys))
    assert not facts.available
    assert facts.reason.startswith(f"cannot open {dev}/udmabuf as uid {os.geteuid()} (")


def test_a_device_that_opens_is_available_and_the_probe_closes_it(roots):
    dev, sys = roots
    os.symlink("/dev/null", dev / "udmabuf")
    before = len(os.listdir("/proc/self/fd"))
    facts = probe_udmabuf(str(dev), str(sys))
    assert (facts.available, facts.reason) == (True, f"{dev}/udmabuf is usable")
    assert len(os.listdir("/proc/self/fd")) == before


def test_module_limits_come_from_sysfs_or_the_kernel_defaults(roots):
    dev, sys = roots
    assert probe_udmabuf(str(dev), str(sys)).size_limit_mb == DEFAULT_SIZE_LIMIT_MB
    assert probe_udmabuf(str(dev), str(sys)).list_limit == DEFAULT_LIST_LIMIT
    parameters = sys / "module" / "udmabuf" / "parameters"
    parameters.mkdir(parents=True)
    (parameters / "size_limit_mb").write_text("1\n")
    (parameters / "list_limit").write_text("not a number\n")
    facts = probe_udmabuf(str(dev), str(sys))
    assert (facts.size_limit_mb, facts.list_limit) == (1, DEFAULT_LIST_LIMIT)
    assert module_parameter(str(sys), "size_limit_mb", 99) == 1
