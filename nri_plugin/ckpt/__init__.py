"""Checkpoint engines: CRIU over its RPC protocol (``criu``), the CUDA driver (``cuda``), the checkpoint directory
(``layout``), a checkpoint as an OCI image (``oci_image``) and a container's mounts for CRIU (``container``); host
facts (cgroups, /proc, mounts) are in :mod:`nri_plugin.host`.

This package never imports the NRI protocol layer or the CLI: engines sit below the entry points.
"""

__all__: list[str] = []
