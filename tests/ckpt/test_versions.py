"""A checkpoint's CRIU and kernel against this node's, the check both restore paths make first (gpucr.io/restore-from
at CreateContainer, ``gpucr restore``): the comparison (pure) and the node's side (a CRIU binary that prints its
version; the running kernel)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nri_plugin.ckpt.criu import CriuError
from nri_plugin.ckpt.versions import node_version_problems, version_numbers, version_problems


@pytest.mark.parametrize("text,numbers", [
    ("4.2.1", (4, 2, 1)), ("Version: 4.1", (4, 1)), ("4.1.1 (v4.1.1-12-gdeadbee)", (4, 1, 1)),
    ("v4.2-3-g1234abc", (4, 2)), ("6.1.0-28-amd64", (6, 1, 0)), ("6.18.44-fc-v657", (6, 18, 44)), ("dev", ()),
])
def test_version_numbers(text: str, numbers: tuple[int, ...]) -> None:
    assert version_numbers(text) == numbers


def _problems(criu_then: str | None = None, criu_now: str = "4.2.1", kernel_then: str | None = None,
              kernel_now: str = "6.1.0-28-amd64", allow: bool = False) -> list[str]:
    return version_problems(criu_then=criu_then, criu_now=criu_now, criu_path="/usr/sbin/criu",
                            kernel_then=kernel_then, kernel_now=kernel_now, allow_older_kernel=allow)


@pytest.mark.parametrize("then,now", [("4.2.1", "4.2.1"), ("4.2", "4.2.0"), ("4.1", "4.2.1"), ("4.2.0", "4.2"),
                                      (None, "4.1"), ("4.2.1", "4.2.1 (v4.2.1-5-gabc)"), ("unknown", "4.1")])
def test_same_or_older_criu_passes(then: str | None, now: str) -> None:
    assert _problems(criu_then=then, criu_now=now) == []


@pytest.mark.parametrize("then,now", [("4.2.1", "4.2"), ("99.0", "4.2.1"), ("4.2", "Version: 4.1")])
def test_newer_criu_is_refused_naming_both_and_the_fix(then: str, now: str) -> None:
    (p,) = _problems(criu_then=then, criu_now=now)
    assert f"dumped by CRIU {then}" in p and f"/usr/sbin/criu) is {now}" in p
    assert f"install gpucr-criu or a CRIU >= {then}" in p


@pytest.mark.parametrize("then,now", [("6.1.0-28-amd64", "6.1.0-28-amd64"), ("6.1.0-28-amd64", "6.18.44-fc-v657"),
                                      ("6.1.99", "6.1.0-28-amd64"), (None, "5.4.0"), ("", "5.4.0")])
def test_same_or_newer_kernel_passes(then: str | None, now: str) -> None:
    assert _problems(kernel_then=then, kernel_now=now) == []


def test_newer_kernel_is_refused_unless_the_node_accepts_it() -> None:
    (p,) = _problems(kernel_then="6.18.44-fc-v657", kernel_now="6.1.0-28-amd64")
    assert "kernel 6.18.44-fc-v657" in p and "runs kernel 6.1.0-28-amd64" in p
    assert "restore on a node with kernel >= 6.18" in p and "restore_allow_older_kernel = true" in p
    assert _problems(kernel_then="6.18.44-fc-v657", kernel_now="6.1.0-28-amd64", allow=True) == []
    assert len(_problems(criu_then="99.0", kernel_then="99.0.0", allow=False)) == 2


def _criu(tmp_path: Path, version: str) -> str:
    fake = tmp_path / f"criu-{version}"
    fake.write_text(f"#!/bin/sh\necho 'Version: {version}'\n")
    fake.chmod(0o755)
    return str(fake)


def test_node_side_asks_the_given_criu_and_the_running_kernel(tmp_path: Path) -> None:
    criu, kernel = _criu(tmp_path, "4.2"), os.uname().release
    kw = {"criu": criu, "allow_older_kernel": False}
    assert node_version_problems(criu_then="4.2", kernel_then=kernel, **kw) == []  # type: ignore[arg-type]
    (p,) = node_version_problems(criu_then="4.2.1", kernel_then=kernel, **kw)  # type: ignore[arg-type]
    assert f"dumped by CRIU 4.2.1 and this node's CRIU ({criu}) is 4.2, older" in p
    (p,) = node_version_problems(criu_then=None, kernel_then="99.0.0", **kw)  # type: ignore[arg-type]
    assert f"dumped on kernel 99.0.0 and this node runs kernel {kernel}, older" in p
    assert node_version_problems(criu_then=None, kernel_then="99.0.0", criu=criu, allow_older_kernel=True) == []


def test_node_criu_asked_only_when_the_checkpoint_recorded_one(tmp_path: Path) -> None:
    assert node_version_problems(criu_then=None, kernel_then=None, criu="/nonexistent/criu",
                                 allow_older_kernel=False) == []
    with pytest.raises(CriuError, match=r"^the checkpoint was dumped by CRIU 4.2 and this node's CRIU version is "
                                        r"unknown: cannot run criu '/nonexistent/criu'.*set criu_path in /etc/gpucr"):
        node_version_problems(criu_then="4.2", kernel_then=None, criu="/nonexistent/criu", allow_older_kernel=False)
