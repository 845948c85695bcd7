"""Checkpoint engines: CRIU over its RPC protocol (``criu``), cgroup freezing (``cgroup``), the checkpoint directory
(``layout``) and the network identity of a netns (``netid``).

This package never imports the NRI protocol layer or the CLI: engines sit below the entry points.
"""

__all__: list[str] = []
