"""The NRI API (package ``nri.pkg.api.v1alpha1``): generated messages plus event-mask and adjustment helpers.

``pb`` is the generated module (from ``proto/api.proto`` by ``tools/genproto.py``); ``events`` and ``adjust`` are
pure helpers. ``PLUGIN_SERVICE``/``RUNTIME_SERVICE`` are the ttrpc service names.
"""

from ._pb import api_pb2 as pb
from .adjust import Adjustment, container_update, eviction, hook
from .events import VALID_EVENTS_V03, VALID_EVENTS_V010, Event, EventMask, mask_names, mask_of

__all__ = ["PLUGIN_SERVICE", "RUNTIME_SERVICE", "VALID_EVENTS_V03", "VALID_EVENTS_V010", "Adjustment", "Event",
           "EventMask", "container_update", "eviction", "hook", "mask_names", "mask_of", "pb"]

PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE = "nri.pkg.api.v1alpha1.Runtime"
