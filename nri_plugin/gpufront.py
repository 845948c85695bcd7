"""Kept for installed front.conf files that say ``hooks = nri_plugin.gpufront:make``: the hooks now live in
:mod:`nri_plugin.handlers.front_cuda`."""
from .handlers.front_cuda import make as make  # noqa: F401  (``__all__`` below names it)

__all__ = ["make"]
