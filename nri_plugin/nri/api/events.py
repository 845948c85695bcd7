"""NRI events and event masks (containerd/nri ``pkg/api/event.go``): bit for event N is ``1 << (N - 1)``.

Runtimes with NRI v0.3-v0.9 (containerd 1.7.x, 2.0, 2.1) reject any bit above :data:`VALID_EVENTS_V03` and drop the
plugin; v0.10+ accept up to :data:`VALID_EVENTS_V010`. A mask of 0 means "everything" to the runtime, which on v0.10+
includes validation, so a plugin never sends 0. Pure data: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum, IntFlag

__all__ = ["VALID_EVENTS_V03", "VALID_EVENTS_V010", "Event", "EventMask", "mask_of", "mask_names"]


class Event(IntEnum):
    """``enum Event`` of api.proto."""

    UNKNOWN = 0
    RUN_POD_SANDBOX = 1
    STOP_POD_SANDBOX = 2
    REMOVE_POD_SANDBOX = 3
    CREATE_CONTAINER = 4
    POST_CREATE_CONTAINER = 5
    START_CONTAINER = 6
    POST_START_CONTAINER = 7
    UPDATE_CONTAINER = 8
    POST_UPDATE_CONTAINER = 9
    STOP_CONTAINER = 10
    REMOVE_CONTAINER = 11
    UPDATE_POD_SANDBOX = 12
    POST_UPDATE_POD_SANDBOX = 13
    VALIDATE_CONTAINER_ADJUSTMENT = 14

    @property
    def bit(self) -> int:
        return 1 << (self.value - 1) if self.value else 0

    @property
    def handler_name(self) -> str:
        """The plugin method that handles it: ``create_container``, ``stop_pod_sandbox``, ..."""
        return self.name.lower()


class EventMask(IntFlag):
    """ConfigureResponse.events bits."""

    RUN_POD_SANDBOX = 1 << 0
    STOP_POD_SANDBOX = 1 << 1
    REMOVE_POD_SANDBOX = 1 << 2
    CREATE_CONTAINER = 1 << 3
    POST_CREATE_CONTAINER = 1 << 4
    START_CONTAINER = 1 << 5
    POST_START_CONTAINER = 1 << 6
    UPDATE_CONTAINER = 1 << 7
    POST_UPDATE_CONTAINER = 1 << 8
    STOP_CONTAINER = 1 << 9
    REMOVE_CONTAINER = 1 << 10
    UPDATE_POD_SANDBOX = 1 << 11
    POST_UPDATE_POD_SANDBOX = 1 << 12
    VALIDATE_CONTAINER_ADJUSTMENT = 1 << 13


#: what NRI v0.3-v0.9 runtimes accept (containerd 1.7.x-2.1.x)
VALID_EVENTS_V03 = 0x7FF
#: what NRI v0.10+ runtimes accept (containerd 2.2+)
VALID_EVENTS_V010 = 0x3FFF


def mask_of(events: Iterable[Event]) -> EventMask:
    m = EventMask(0)
    for e in events:
        m |= EventMask(e.bit)
    return m


def mask_names(mask: int) -> list[str]:
    """Handler names of the events in ``mask``, in event order (for logs and ``gpucr plugin --events``)."""
    return [e.handler_name for e in Event if e.value and mask & e.bit]
