"""Synchronous client for containerd's content store, image records and leases over grpcio (the subset ``gpucr
export``/``import`` need).

Blobs are written through ``Content.Write`` (one stream per blob: WRITE messages, then COMMIT with the expected
digest and size, which containerd checks) and read through ``Content.Read``. While an export writes its blobs they
are referenced by nothing, so they are written under a lease (gRPC metadata ``containerd-lease``) that expires by
itself if gpucr dies; the manifest carries containerd's ``containerd.io/gc.ref.content.*`` labels, so once the
image record exists it keeps its config and layer alive and the lease is dropped. The namespace travels as
``containerd-namespace`` (``ctr``'s default is ``default``).
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from ..errors import GpucrError
from ._pb import content_pb2 as cpb
from ._pb import content_pb2_grpc as cpb_grpc
from ._pb import images_pb2 as ipb
from ._pb import images_pb2_grpc as ipb_grpc
from ._pb import leases_pb2 as lpb
from ._pb import leases_pb2_grpc as lpb_grpc

__all__ = ["CHUNK_BYTES", "ContentClient", "ContentError", "Descriptor", "ImageExistsError", "NotFoundError"]

#: bytes per Write/Read message (containerd's gRPC server accepts 16 MiB)
CHUNK_BYTES = 1 << 20
_GC_EXPIRE = "containerd.io/gc.expire"


class ContentError(GpucrError):
    """A content, image or lease call failed; ``code`` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class NotFoundError(ContentError):
    """No such image or blob in this namespace."""


class ImageExistsError(ContentError):
    """An image record of that name exists already."""


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (``containerd.types.Descriptor``)."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)


class ContentClient:
    """One channel to containerd's gRPC socket, in one namespace. A context manager."""

    def __init__(self, address: str, namespace: str = "default", *, timeout_s: float = 60.0) -> None:
        self.address = address.removeprefix("unix://")
        self.namespace = namespace
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(f"unix://{self.address}",
                                              options=[("grpc.max_receive_message_length", 4 * CHUNK_BYTES)])
        self._content = cpb_grpc.ContentStub(self._channel)
        self._images = ipb_grpc.ImagesStub(self._channel)
        self._leases = lpb_grpc.LeasesStub(self._channel)
        self._lease: str | None = None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ContentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        md = (("containerd-namespace", self.namespace),)
        return md + ((("containerd-lease", self._lease),) if self._lease else ())

    def _error(self, exc: grpc.RpcError, what: str) -> ContentError:
        code = exc.code() if hasattr(exc, "code") else None
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        cls = NotFoundError if code == grpc.StatusCode.NOT_FOUND else \
            ImageExistsError if code == grpc.StatusCode.ALREADY_EXISTS and what.startswith("image create") \
            else ContentError
        return cls(f"containerd {what} (namespace {self.namespace}) failed on {self.address}: "
                   f"{code.name if code else 'UNKNOWN'}: {detail}", code)

    def _call(self, stub: Any, method: str, request: Any, what: str) -> Any:
        try:
            return getattr(stub, method)(request, timeout=self.timeout_s, metadata=self._metadata())
        except grpc.RpcError as exc:
            raise self._error(exc, what) from exc

    # -- leases --------------------------------------------------------------------------------------------------

    @contextmanager
    def lease(self, expire_s: float = 3600.0) -> Iterator[str]:
        """Calls inside the block write under a new lease (expiring by itself after ``expire_s``), deleted after."""
        expire = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=expire_s)
        lid = f"gpucr-{secrets.token_hex(8)}"
        self._call(self._leases, "Create", lpb.CreateRequest(
            id=lid, labels={_GC_EXPIRE: expire.strftime("%Y-%m-%dT%H:%M:%SZ")}), "lease create")
        self._lease = lid
        try:
            yield lid
        finally:
            self._lease = None
            try:
                self._call(self._leases, "Delete", lpb.DeleteRequest(id=lid), "lease delete")
            except ContentError:
                pass  # it expires by itself

    # -- blobs ---------------------------------------------------------------------------------------------------

    def has(self, digest: str) -> bool:
        try:
            self._call(self._content, "Info", cpb.InfoRequest(digest=digest), f"content info {digest}")
        except NotFoundError:
            return False
        return True

    def write(self, digest: str, size: int, chunks: Iterable[bytes], *, labels: dict[str, str] | None = None) -> None:
        """Store ``chunks`` (``size`` bytes in all) as blob ``digest``; containerd refuses the commit unless both
        match. A blob already there is kept (its labels updated through this commit are not needed: the image's
        manifest is always written with its labels, and a manifest with the same digest has the same labels).

        Raises:
            ContentError: the write failed or the data does not match ``digest``/``size``.
        """
        if self.has(digest):
            return
        ref = f"gpucr-{digest.replace(':', '-')}-{secrets.token_hex(4)}"

        def requests() -> Iterator[cpb.WriteContentRequest]:
            offset = 0
            for chunk in chunks:
                if chunk:
                    yield cpb.WriteContentRequest(action=cpb.WRITE, ref=ref, total=size, expected=digest,
                                                  offset=offset, data=chunk)
                    offset += len(chunk)
            yield cpb.WriteContentRequest(action=cpb.COMMIT, ref=ref, total=size, expected=digest, offset=offset,
                                          labels=labels or {})

        try:
            for _ in self._content.Write(requests(), timeout=max(self.timeout_s, 3600.0), metadata=self._metadata()):
                pass
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:  # another writer committed the same blob meanwhile
                return
            try:
                self._content.Abort(cpb.AbortRequest(ref=ref), timeout=10, metadata=self._metadata())
            except grpc.RpcError:
                pass
            raise self._error(exc, f"content write {digest}") from exc

    def read(self, digest: str) -> Iterator[bytes]:
        """The blob ``digest``, in chunks as containerd sends them (the caller checks the digest).

        Raises:
            NotFoundError: no such blob here. ContentError: the read failed.
        """
        try:
            for r in self._content.Read(cpb.ReadContentRequest(digest=digest), timeout=max(self.timeout_s, 3600.0),
                                        metadata=self._metadata()):
                yield r.data
        except grpc.RpcError as exc:
            raise self._error(exc, f"content read {digest}") from exc

    # -- images --------------------------------------------------------------------------------------------------

    def image(self, name: str) -> Descriptor:
        """The target of image ``name``. Raises NotFoundError when there is none."""
        r = self._call(self._images, "Get", ipb.GetImageRequest(name=name), f"image get {name}")
        t = r.image.target
        return Descriptor(t.media_type, t.digest, int(t.size), dict(t.annotations))

    def create_image(self, name: str, target: Descriptor, labels: dict[str, str] | None = None) -> None:
        """A new image record ``name`` -> ``target``. Raises ImageExistsError when the name is taken."""
        img = ipb.Image(name=name, labels=labels or {},
                        target=ipb.Descriptor(media_type=target.media_type, digest=target.digest, size=target.size,
                                              annotations=target.annotations))
        self._call(self._images, "Create", ipb.CreateImageRequest(image=img), f"image create {name}")

    def delete_image(self, name: str) -> None:
        self._call(self._images, "Delete", ipb.DeleteImageRequest(name=name, sync=True), f"image delete {name}")
