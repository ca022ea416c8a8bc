"""container_check: the container case of `bufbroker doctor`, on synthetic roots and real dirs."""

from __future__ import annotations

import os
import resource

import pytest

from bufbroker_broker.host.container_check import (
    check_container_fd_limit,
    check_socket_dir,
    check_uid,
    container_checks,
    container_engine,
)


def test_engine_is_read_from_the_files_engines_write(tmp_path):
    assert container_engine(tmp_path, environ={}) is None
    (tmp_path / ".dockerenv").touch()
    assert container_engine(tmp_path, environ={}) == "docker"
    (tmp_path / "run").mkdir()
    (tmp_path / "run/.containerenv").touch()
    assert container_engine(tmp_path, environ={}) == "podman"


def test_engine_falls_back_to_the_environment_then_pid_1s_cgroup(tmp_path):
    assert container_engine(tmp_path, environ={"container": "systemd-nspawn"}) == "systemd-nspawn"
    (tmp_path / "proc/1").mkdir(parents=True)
    (tmp_path / "proc/1/cgroup").write_text("12:memory:/kubepods/besteffort/pod1234/abcd\n")
    assert container_engine(tmp_path, environ={}) == "kubernetes"
    (tmp_path / "proc/1/cgroup").write_text("0::/init.scope\n")
    assert container_engine(tmp_path, environ={}) is None


def test_on_a_plain_host_only_the_container_check_is_given(tmp_path):
    [check] = container_checks(tmp_path / "run-bufbroker", tmp_path, environ={})
    assert check.name == "container" and check.ok and "not in a container" in check.detail


def test_in_a_container_the_uid_socket_dir_and_fd_limit_are_checked(tmp_path):
    (tmp_path / ".dockerenv").touch()
    socket_dir = tmp_path / "run-bufbroker"
    socket_dir.mkdir(mode=0o770)
    os.chmod(socket_dir, 0o770)
    checks = {check.name: check for check in container_checks(socket_dir, tmp_path, environ={})}
    assert list(checks) == ["container", "uid", "socket dir", "fd limit"]
    assert checks["container"].detail == "in a container (docker)"
    assert checks["socket dir"].ok, checks["socket dir"]
    assert f"uid {os.geteuid()}" in checks["uid"].detail
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert f"soft {soft}" in checks["fd limit"].detail


def test_root_in_a_container_is_told_to_run_as_the_image_user():
    check = check_uid(0, "podman")
    assert not check.ok and "--user 10001:10001" in check.fix and "runAsUser: 10001" in check.fix
    assert check_uid(0, None).ok, "root on a plain host is the host checks' business"
    assert check_uid(10001, "podman").ok


def test_socket_dir_missing_says_what_to_mount(tmp_path):
    check = check_socket_dir(tmp_path / "absent", 10001, {10001})
    assert not check.ok and "does not exist" in check.detail and "-v bufbroker-sock:" in check.fix


@pytest.mark.parametrize(
    "mode,uid,groups,ok",
    [
        (0o770, "owner", set(), True),  # the broker, owner of its dir
        (0o770, 4242, "group", True),  # a client in the dir's group
        (0o770, 4242, set(), False),  # a client outside the group
        (0o755, 4242, "group", False),  # a host dir bind-mounted as the kubelet makes it
        (0o777, "owner", set(), False),  # any uid could replace the sockets
    ],
)
def test_socket_dir_access_follows_owner_group_and_mode(tmp_path, mode, uid, groups, ok):
    socket_dir = tmp_path / "sock"
    socket_dir.mkdir()
    os.chmod(socket_dir, mode)
    info = socket_dir.stat()
    uid = info.st_uid if uid == "owner" else uid
    groups = {info.st_gid} if groups == "group" else groups
    check = check_socket_dir(socket_dir, uid, groups)
    assert check.ok is ok, check
    assert f"mode {mode:04o}" in check.detail
    if not ok:
        assert check.fix


def test_socket_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "sock"
    path.touch()
    check = check_socket_dir(path, os.geteuid(), set())
    assert not check.ok and "not a directory" in check.detail


def test_fd_limit_below_what_the_broker_wants_names_the_ulimit_flag():
    low = check_container_fd_limit((1024, 1024))
    assert not low.ok and "--ulimit nofile=" in low.fix and "CAP_SYS_RESOURCE" in low.fix
    assert check_container_fd_limit((1024, 1 << 20)).ok, "the broker raises soft to hard itself"
    assert check_container_fd_limit((1024, resource.RLIM_INFINITY)).ok
