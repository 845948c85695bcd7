"""Can this node's CRIU and kernel restore a checkpoint: the CRIU that dumped it and the kernel it ran on (both in
``gpucr.json``) against the node's. One check for both restore paths: ``gpucr.io/restore-from`` at CreateContainer
(:mod:`nri_plugin.handlers.nri_restore`) and ``gpucr restore DIR`` (:mod:`.engine`), each before anything is touched:
a newer CRIU's images or a newer kernel's state would otherwise fail inside CRIU with a message that names neither.
"""

from __future__ import annotations

import os
import re

from .criu.binary import cli_version, node_criu
from .criu.errors import CriuError

__all__ = ["node_version_problems", "version_numbers", "version_problems"]

_NUMBERS = re.compile(r"\d+(?:\.\d+)*")


def version_numbers(text: str) -> tuple[int, ...]:
    """The first dotted number in a version: "Version: 4.1" -> (4, 1), "4.2.1 (v4.2.1-3-gabc)" -> (4, 2, 1),
    "6.1.0-28-amd64" -> (6, 1, 0); () when there is none."""
    m = _NUMBERS.search(text)
    return tuple(int(x) for x in m.group(0).split(".")) if m else ()


def _newer(then: tuple[int, ...], now: tuple[int, ...]) -> bool:
    width = max(len(then), len(now))
    return then + (0,) * (width - len(then)) > now + (0,) * (width - len(now))


def version_problems(*, criu_then: str | None, criu_now: str, criu_path: str, kernel_then: str | None,
                     kernel_now: str, allow_older_kernel: bool) -> list[str]:
    """Why this node cannot restore a checkpoint dumped by CRIU ``criu_then`` on kernel ``kernel_then`` (None or
    unparsable: unknown, not compared): CRIU reads the images of older CRIUs, not necessarily of newer ones; and CRIU
    may have saved kernel state that an older kernel (major.minor) lacks, unless the node accepts that
    (``allow_older_kernel``). Pure: the callers pass the versions."""
    problems: list[str] = []
    then, now = version_numbers(criu_then or ""), version_numbers(criu_now)
    if then and now and _newer(then, now):
        problems.append(f"the checkpoint was dumped by CRIU {criu_then} and this node's CRIU ({criu_path}) is "
                        f"{criu_now}, older: install gpucr-criu or a CRIU >= {criu_then} (criu_path in "
                        "/etc/gpucr/config.toml names the one gpucr uses)")
    k_then, k_now = version_numbers(kernel_then or "")[:2], version_numbers(kernel_now)[:2]
    if len(k_then) == 2 and len(k_now) == 2 and k_then > k_now and not allow_older_kernel:
        need = ".".join(map(str, k_then))
        problems.append(f"the checkpoint was dumped on kernel {kernel_then} and this node runs kernel {kernel_now}, "
                        f"older: restore on a node with kernel >= {need}, or set restore_allow_older_kernel = true "
                        "in /etc/gpucr/config.toml to accept it")
    return problems


def node_version_problems(*, criu_then: str | None, kernel_then: str | None, criu: str,
                          allow_older_kernel: bool) -> list[str]:
    """:func:`version_problems` against this node: the CRIU the restore runs (``criu``, as :func:`node_criu` takes
    it: the node config's ``criu_path`` or the CLI's binary; empty: the default) and the running kernel. The CRIU is
    asked ``--version`` only when the checkpoint recorded a version (once per installed binary: cached).

    Raises:
        CriuError: the checkpoint recorded a CRIU version and the node's is unknown (no CRIU, or it prints none).
    """
    criu_now = binary = ""
    if criu_then:
        try:
            binary = node_criu(criu)
            criu_now = cli_version(binary)
        except CriuError as exc:
            raise CriuError(f"the checkpoint was dumped by CRIU {criu_then} and this node's CRIU version is unknown: "
                            f"{exc}") from exc
    return version_problems(criu_then=criu_then, criu_now=criu_now, criu_path=binary, kernel_then=kernel_then,
                            kernel_now=os.uname().release, allow_older_kernel=allow_older_kernel)
