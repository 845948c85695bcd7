"""A container's periodic checkpoints: one directory per container under the checkpoint root, one checkpoint per
tick, ``latest`` naming the newest, the oldest removed beyond ``keep``.

Layout (dirs 0700, root's)::

    ROOT/periodic/<pod namespace>/<pod name>/<container name>/20261130T124501Z/   a sealed checkpoint (gpucr.json)
    ROOT/periodic/<pod namespace>/<pod name>/<container name>/latest -> 20261130T124501Z

so ``gpucr.io/restore-from: periodic/<namespace>/<pod>/<container>/latest`` names the newest and
``.../20261130T124501Z`` one in particular (the restore resolves ``latest`` inside the root and locks the checkpoint
it points to). A checkpoint is written under ``.NAME.gpucr-tmp-<node>-<pid>`` (:func:`.layout.staging_path`), sealed and
fsynced by its writer, then renamed into place with the parent fsynced (:meth:`.layout.CheckpointDir.commit`); only
then does ``latest`` move (a symlink renamed over the old one) and only then are old ones removed. Removal takes only
complete gpucr checkpoints of this series (a timestamp name, a real dir of ours, ``gpucr.json`` naming the series)
that no restore holds the lock on, and moves each aside (``.NAME.gpucr-del-<node>-<pid>``) before it is deleted, so a
restore never meets half a checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import time
from pathlib import Path

from ..host.proc import alive
from .durable import fsync_path
from .layout import (
    METADATA, STAGING_MARK, CheckpointDir, LayoutError, Metadata, check_owner, leftover_pid, orphan_pid, own_suffix,
    staging_path,
)

__all__ = ["LATEST", "SERIES_ROOT", "Series", "series_name"]

log = logging.getLogger(__name__)

SERIES_ROOT = "periodic"
LATEST = "latest"
#: a removed checkpoint's name while it is deleted
DELETE_MARK = ".gpucr-del-"
_STAMP = re.compile(r"(\d{8}T\d{6}Z)(?:-(\d{1,6}))?")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _part(text: str) -> str:
    """One path component a restore-from name accepts (policy/annotations.py): letters, digits, '.', '_', '-',
    not starting with '.'."""
    s = _UNSAFE.sub("_", text)[:128] or "_"
    return "_" + s[1:] if s.startswith(".") else s


def series_name(namespace: str, pod: str, container: str) -> str:
    """The series' name under the checkpoint root: ``periodic/<namespace>/<pod>/<container>``."""
    return "/".join((SERIES_ROOT, _part(namespace or "default"), _part(pod), _part(container)))


def _key(name: str) -> tuple[str, int] | None:
    m = _STAMP.fullmatch(name)
    return (m.group(1), int(m.group(2) or 0)) if m else None


def _locked(locks_dir: Path) -> set[str]:
    """The checkpoints that restores hold the lock on (``ckpt.restore_source.acquire_lock``): their real paths on the
    locking node, and their paths relative to the root (the same on every node sharing it)."""
    out: set[str] = set()
    try:
        names = os.listdir(locks_dir)
    except OSError:
        return out
    for n in names:
        if not n.endswith(".lock"):
            continue
        try:
            held = json.loads((locks_dir / n).read_bytes())
            out.update(str(held.get(k) or "") for k in ("checkpoint", "name"))
        except (OSError, ValueError, AttributeError):
            continue
    return out


class Series:
    """The periodic checkpoints of one container, ``root/name``."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.dir = root / name

    def begin(self, now: float | None = None) -> tuple[Path, Path]:
        """Create the series dir (0700, inside the root) and an empty staging dir for the next checkpoint; tidy
        what a killed writer left. Returns (staging dir, final path).

        Raises:
            LayoutError: the series dir is outside the root, not ours, writable by others, or cannot be made.
        """
        CheckpointDir.check_root(self.dir, self.root)
        try:
            missing, d = [], self.dir
            while not os.path.lexists(d):
                missing.append(d)
                d = d.parent
            for d in reversed(missing):  # each 0700: the names of pods are not for every user to read
                os.mkdir(d, 0o700)
        except OSError as exc:
            raise LayoutError(f"cannot create the periodic checkpoint dir {self.dir}: {exc.strerror}") from exc
        CheckpointDir.check_root(self.dir, self.root)
        check_owner(self.dir, what="periodic checkpoint dir")
        self.tidy()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        newest = self.completed()
        last = _key(newest[-1].name) if newest else None
        # names sort in time order even when the clock steps back: never below the newest one
        base, n = (stamp, 0) if last is None or stamp > last[0] else (last[0], last[1] + 1)
        while os.path.lexists(self.dir / (name := f"{base}-{n}" if n else base)):
            n += 1
        final = self.dir / name
        tmp = CheckpointDir.create_empty(staging_path(final), root=self.root)
        return tmp, final

    def commit(self, tmp: Path, final: Path) -> None:
        """The sealed, fsynced checkpoint in ``tmp`` renamed to ``final`` (parent fsynced), then ``latest`` pointed
        at it.

        Raises:
            LayoutError: the rename or an fsync failed (``tmp`` is left for :meth:`discard`).
        """
        cp = CheckpointDir(tmp)
        cp.final = final
        cp.commit()
        link = self.dir / f".{LATEST}{own_suffix('.tmp-')}"
        try:
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(final.name, link)
            os.replace(link, self.dir / LATEST)
            fsync_path(self.dir, directory=True)
        except OSError as exc:
            raise LayoutError(f"checkpoint {final} is complete but {self.dir / LATEST} could not point at it: "
                              f"{exc.strerror or exc}") from exc

    @staticmethod
    def discard(tmp: Path) -> None:
        """Remove a staging dir of ours that did not become a checkpoint."""
        if tmp.name.endswith(own_suffix(STAGING_MARK)):
            shutil.rmtree(tmp, ignore_errors=True)

    def tidy(self) -> None:
        """Remove staging and half-deleted dirs that dead gpucr processes left in the series dir (ours only)."""
        try:
            entries = list(self.dir.iterdir())
        except OSError:
            return
        for p in entries:
            if p.name.startswith(f".{LATEST}.tmp-") and p.is_symlink():  # commit() died before renaming it
                owner = leftover_pid(p, ".tmp-")
                if owner is not None and owner != os.getpid() and not alive(owner):
                    p.unlink(missing_ok=True)
                continue
            mark = STAGING_MARK if STAGING_MARK in p.name else DELETE_MARK if DELETE_MARK in p.name else ""
            if not p.name.startswith(".") or not mark:
                continue
            owner = orphan_pid(p, mark)  # this node's only: the root may be shared (host/nodeid.py)
            if owner is None:
                continue
            log.warning("removing %s, left by gpucr (pid %s) killed mid-checkpoint", p, owner)
            shutil.rmtree(p, ignore_errors=True)

    def completed(self) -> list[Path]:
        """This series' complete gpucr checkpoints, oldest first: timestamp names, real dirs of ours, ``gpucr.json``
        valid and naming this series. Anything else in the dir is never counted nor removed."""
        try:
            names = os.listdir(self.dir)
        except OSError:
            return []
        out = []
        for n in sorted((n for n in names if _key(n) is not None), key=_key):  # type: ignore[arg-type, return-value]
            p = self.dir / n
            try:
                st = os.lstat(p)
                if not stat.S_ISDIR(st.st_mode):
                    continue
                check_owner(p, st)
                meta = Metadata.from_json((p / METADATA).read_text(), str(p / METADATA))
            except (OSError, UnicodeDecodeError, LayoutError):
                continue
            if (meta.extra.get("periodic") or {}).get("series") == self.name:
                out.append(p)
        return out

    def prune(self, keep: int, locks_dir: Path) -> tuple[list[Path], list[Path]]:
        """Remove all but the ``keep`` newest complete checkpoints, except those a restore holds the lock on.
        Returns (removed, kept because a restore holds them)."""
        removed: list[Path] = []
        held: list[Path] = []
        for p in self.completed()[:-keep] if keep > 0 else []:
            real = str(p.resolve())
            keys = {real, os.path.relpath(real, self.root.resolve())}
            if keys & _locked(locks_dir):
                held.append(p)
                continue
            aside = p.with_name(f".{p.name}{own_suffix(DELETE_MARK)}")
            try:
                os.rename(p, aside)
            except OSError as exc:
                log.warning("could not remove old periodic checkpoint %s: %s", p, exc.strerror)
                continue
            if keys & _locked(locks_dir):  # a restore took it meanwhile: it stays
                os.rename(aside, p)
                held.append(p)
                continue
            shutil.rmtree(aside, ignore_errors=True)
            removed.append(p)
        if removed:
            try:
                fsync_path(self.dir, directory=True)
            except OSError as exc:
                log.warning("fsync of %s failed: %s", self.dir, exc.strerror)
        return removed, held
