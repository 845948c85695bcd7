"""The Linux host read as files: processes (``proc``), cgroups and their freezer (``cgroup``), mount
tables (``mounts``) and which node this is (``nodeid``, for names in a checkpoint root several nodes share).

Imports nothing: the CRIU front's start-up path imports :mod:`.proc` alone and must not pay for the others.
This package imports only :mod:`nri_plugin.errors` below it.
"""

__all__: list[str] = []
