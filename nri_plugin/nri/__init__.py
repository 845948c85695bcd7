"""NRI for gpucr: the API (``api``), the handler table (``plugin``) and the stub that runs a plugin (``stub``).

A plugin is a class with ``async`` handler methods named after NRI events; :class:`Stub` connects it to a runtime.
"""

from .api import Adjustment, Event, EventMask, container_update, eviction, hook, pb
from .errors import PluginError, RegistrationError
from .plugin import EVENT_HANDLERS, implemented_events
from .stub import DEFAULT_SOCKET_PATH, Stub, describe_events, parse_plugin_name

__all__ = ["DEFAULT_SOCKET_PATH", "EVENT_HANDLERS", "Adjustment", "Event", "EventMask", "PluginError",
           "RegistrationError", "Stub", "container_update", "describe_events", "eviction", "hook",
           "implemented_events", "parse_plugin_name", "pb"]
