"""Which node this is, as a short tag for file names in a checkpoint root that several nodes may share.

A pid names a process on one node only: two nodes writing into one shared checkpoint root could both be pid 4242,
and a dead pid here may be a live writer there. Names that carry a pid (a checkpoint's temporary
``.NAME.gpucr-tmp-<tag>-<pid>``, a restore lock's owner) also carry this tag: the hostname and the first 8 hex
digits of the kernel's boot id (a random UUID per boot, so two nodes that share a hostname still differ, and this
node after a reboot knows its own older names). Imports os only.
"""

from __future__ import annotations

import os

__all__ = ["node_tag", "tag_is_this_node"]

_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_tag: str | None = None


def _clean(s: str) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in s)[:63] or "node"


def node_tag() -> str:
    """``HOSTNAME.BOOT8`` (file-name safe; cached for the process)."""
    global _tag
    if _tag is None:
        try:
            with open(_BOOT_ID, encoding="ascii") as f:
                boot = f.read().strip().replace("-", "")[:8]
        except OSError:
            boot = "noboot"
        _tag = f"{_clean(os.uname().nodename)}.{_clean(boot)}"
    return _tag


def tag_is_this_node(tag: str) -> bool:
    """True for this node's tag, this host's tag of an earlier boot (its processes are gone), and the empty tag of
    names written before tags existed (always local)."""
    if not tag:
        return True
    return tag == node_tag() or tag.rpartition(".")[0] == node_tag().rpartition(".")[0]
