"""containerd's content store, image records and leases through gpucr's client (containerd/content.py), on the
private containerd (both versions): what ``gpucr export``/``import`` rely on."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from nri_plugin.containerd import ContentClient, ContentError, Descriptor, ImageExistsError, NotFoundError
from tests.testenv import Containerd

pytestmark = pytest.mark.integration


def _d(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def test_blob_round_trip_under_a_lease(containerd: Containerd) -> None:
    """A blob of several chunks written under a lease reads back whole; writing it again is a no-op; the lease is
    gone afterwards (ctr lists none of gpucr's): the blob is then containerd's garbage to collect."""
    data = os.urandom(3 * (1 << 20) + 123)
    with ContentClient(containerd.address, "gpucr-test") as cc:
        with cc.lease() as lid:
            assert lid.startswith("gpucr-")
            cc.write(_d(data), len(data), [data[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)])
            cc.write(_d(data), len(data), [data])
            # read while the lease holds it: once the lease is gone nothing references the blob and containerd's
            # garbage collector may remove it at any moment (2.1.9 did, in one CI run)
            assert cc.has(_d(data)) and b"".join(cc.read(_d(data))) == data
    assert "gpucr-" not in containerd.ctr("leases", "ls", namespace="gpucr-test").stdout


def test_containerd_refuses_data_that_does_not_match_its_digest(containerd: Containerd) -> None:
    data = b"checkpoint bytes"
    with ContentClient(containerd.address, "gpucr-test") as cc, cc.lease():
        with pytest.raises(ContentError) as ei:
            cc.write(_d(b"other bytes"), len(data), [data])
        assert not isinstance(ei.value, NotFoundError) and "content write" in str(ei.value)
        assert not cc.has(_d(b"other bytes")) and not cc.has(_d(data))


def test_image_record_create_get_and_the_typed_errors(containerd: Containerd) -> None:
    """An image record whose manifest keeps its config alive (gc.ref labels); a second record of that name is an
    ImageExistsError, a missing one a NotFoundError; ctr sees the image."""
    config = b'{"gpucr": {}}'
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.gpucr.test+json", "digest": _d(config),
                                      "size": len(config)}, "layers": []}).encode()
    ref = "localhost/gpucr-test/content:1"
    with ContentClient(containerd.address, "gpucr-test") as cc:
        with cc.lease():
            cc.write(_d(config), len(config), [config])
            cc.write(_d(manifest), len(manifest), [manifest],
                     labels={"containerd.io/gc.ref.content.config": _d(config)})
            target = Descriptor("application/vnd.oci.image.manifest.v1+json", _d(manifest), len(manifest))
            cc.create_image(ref, target)
        try:
            assert cc.image(ref) == target
            with pytest.raises(ImageExistsError):
                cc.create_image(ref, target)
            assert ref in containerd.ctr("images", "ls", "-q", namespace="gpucr-test").stdout.split()
        finally:
            cc.delete_image(ref)
        with pytest.raises(NotFoundError, match="image get localhost/gpucr-test/content:1"):
            cc.image(ref)
        with pytest.raises(NotFoundError):
            b"".join(cc.read(_d(b"never written")))
