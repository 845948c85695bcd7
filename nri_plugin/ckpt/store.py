"""The checkpoint directory as the engine sees it: private, refused when it already holds a checkpoint, inside the
configured root (daemon mode), and sealed by ``gpucr.json`` (metadata plus a manifest of every image file).

Why a manifest: a truncated or corrupt checkpoint must be caught *before* CRIU restores half a process tree. Sizes are
checked for every file and SHA-256 for the small ones (CRIU's core, inventory and mm images, where a flipped byte
breaks a restore), so sealing a 32 GiB checkpoint does not reread 32 GiB.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import GpucrError

__all__ = ["FORMAT_VERSION", "METADATA", "CheckpointStore", "StoreError"]

METADATA = "gpucr.json"
FORMAT_VERSION = 1
HASH_LIMIT_BYTES = 4 << 20


class StoreError(GpucrError):
    """The checkpoint directory is unusable (exists, outside the root, corrupt, truncated)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file() and p.name != METADATA)


class CheckpointStore:
    """Checkpoint directories, optionally confined to ``root`` (the daemon's configured checkpoint root)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root.resolve() if root else None

    def _confine(self, d: Path) -> Path:
        r = d.resolve()
        if self.root is not None and not r.is_relative_to(self.root):
            raise StoreError(f"checkpoint dir {d} is outside the configured checkpoint root {self.root}; "
                             f"use a directory under {self.root}")
        return r

    def prepare(self, images_dir: Path, *, force: bool) -> None:
        """Create ``images_dir`` (0700); refuse one that holds a checkpoint unless ``force`` (then empty it)."""
        d = self._confine(images_dir)
        if d.exists():
            if not d.is_dir():
                raise StoreError(f"{d} exists and is not a directory")
            holds = (d / METADATA).exists() or any(d.glob("*.img"))
            if holds and not force:
                raise StoreError(f"{d} already holds a checkpoint; pass --force to overwrite it or choose another dir")
            if force:
                for p in d.iterdir():
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)

    def write_metadata(self, images_dir: Path, meta: dict[str, Any]) -> None:
        """Seal the checkpoint: every file 0600, a manifest, then ``gpucr.json`` written atomically."""
        d = self._confine(images_dir)
        manifest = {}
        for p in _files(d):
            os.chmod(p, 0o600)
            st = p.stat()
            entry: dict[str, Any] = {"size": st.st_size}
            if st.st_size <= HASH_LIMIT_BYTES:
                entry["sha256"] = _sha256(p)
            manifest[str(p.relative_to(d))] = entry
        doc = {"format": FORMAT_VERSION, **meta, "manifest": manifest}
        tmp = d / (METADATA + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
        os.replace(tmp, d / METADATA)

    def read_metadata(self, images_dir: Path) -> dict[str, Any]:
        """Read and verify ``gpucr.json`` and the manifest. Raises StoreError naming what is wrong."""
        d = self._confine(images_dir)
        mp = d / METADATA
        if not mp.exists():
            raise StoreError(f"{d} holds no gpucr checkpoint ({METADATA} missing)")
        try:
            doc = json.loads(mp.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"checkpoint {d} is corrupt: {METADATA} unreadable ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION or "manifest" not in doc:
            raise StoreError(f"checkpoint {d}: unsupported or damaged {METADATA} (format {doc.get('format')!r}, "
                             f"expected {FORMAT_VERSION})" if isinstance(doc, dict) else f"checkpoint {d}: damaged")
        for name, entry in doc["manifest"].items():
            p = d / name
            if not p.is_file():
                raise StoreError(f"checkpoint {d} is incomplete: {name} is missing")
            size = p.stat().st_size
            if size != entry["size"]:
                raise StoreError(f"checkpoint {d} is truncated or corrupt: {name} has {size} bytes, "
                                 f"{entry['size']} were written")
            if "sha256" in entry and _sha256(p) != entry["sha256"]:
                raise StoreError(f"checkpoint {d} is corrupt: {name} does not match its checksum")
        return dict(doc)

    @staticmethod
    def host_memory_available() -> int:
        """MemAvailable in bytes (0 when unknown)."""
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0
