"""A small client for the Kubernetes CRI runtime v1 API (what kubelet and crictl speak to containerd).

Product code: the CLI uses it for crictl-like flows and for CRI CheckpointContainer; the tests use it to drive a real
containerd. The messages come from the CRI ``api.proto`` that Debian ships, compiled by ``tools/genproto.py``.
"""

from .client import (
    DEFAULT_ADDRESS,
    CriClient,
    CriError,
    container_config,
    pod_config,
)

__all__ = ["DEFAULT_ADDRESS", "CriClient", "CriError", "container_config", "pod_config"]
