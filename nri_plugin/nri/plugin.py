"""The handler table: which plugin method serves which NRI event, and how requests and responses are packed.

A plugin is any object; it handles an event by having an ``async def`` method named after it in snake_case
(``create_container``, ``stop_pod_sandbox``, ...). :data:`EVENT_HANDLERS` is the single table that drives the event
mask (:func:`implemented_events`), the dedicated RPCs of NRI v0.12+, and StateChange dispatch for older runtimes
(NRI v0.3-v0.9 deliver events 1, 2, 3, 5, 6, 7, 9, 11 as ``StateChange``). Handlers see domain objects (PodSandbox,
Container, LinuxResources messages) and return domain results, never ttrpc requests or responses.

Handler signatures (all ``async``; returning None is always allowed):
    configure(config: str, runtime_name: str, runtime_version: str) -> EventMask | int | None
    synchronize(pods, containers) -> list[ContainerUpdate] | None
    shutdown() -> None
    create_container(pod, container) -> Adjustment | ContainerAdjustment | (adjust, updates) | None
    update_container(pod, container, resources) -> list[ContainerUpdate] | None
    stop_container(pod, container) -> list[ContainerUpdate] | None
    update_pod_sandbox(pod, overhead, resources) -> None
    validate_container_adjustment(request) -> None (accept) | str (reject, with this reason)
    run/stop/remove/post_update_pod_sandbox(pod) -> None
    post_create/start/post_start/post_update/remove_container(pod, container) -> None
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from .api import Adjustment, Event, EventMask, pb
from .errors import PluginError

__all__ = ["EVENT_HANDLERS", "EventHandler", "create_response", "handler_for", "implemented_events"]

_Call = Callable[[Callable[..., Awaitable[Any]], Any], Awaitable[Message]]


def _updates(result: Any, what: str) -> list[pb.ContainerUpdate]:
    if result is None:
        return []
    if isinstance(result, pb.ContainerUpdate):
        return [result]
    if isinstance(result, Sequence) and all(isinstance(u, pb.ContainerUpdate) for u in result):
        return list(result)
    raise PluginError(f"{what} handler returned {type(result).__name__}, expected a list of ContainerUpdate or None")


def create_response(result: Any) -> pb.CreateContainerResponse:
    """Normalise what ``create_container`` returned into a CreateContainerResponse."""
    if isinstance(result, pb.CreateContainerResponse):
        return result
    updates: Any = None
    if isinstance(result, tuple):
        if len(result) != 2:
            raise PluginError("create_container returned a tuple; expected (adjustment, updates)")
        result, updates = result
    resp = pb.CreateContainerResponse(update=_updates(updates, "create_container"))
    if isinstance(result, Adjustment):
        resp.adjust.CopyFrom(result.pb)
    elif isinstance(result, pb.ContainerAdjustment):
        resp.adjust.CopyFrom(result)
    elif result is not None:
        raise PluginError(f"create_container returned {type(result).__name__}, expected an Adjustment, "
                          "a ContainerAdjustment, (adjustment, updates) or None")
    return resp


async def _pod(h: Callable[..., Awaitable[Any]], req: Any) -> Message:
    await h(req.pod)
    return pb.Empty()


async def _pod_container(h: Callable[..., Awaitable[Any]], req: Any) -> Message:
    await h(req.pod, req.container)
    return pb.Empty()


async def _create(h: Callable[..., Awaitable[Any]], req: Any) -> Message:
    return create_response(await h(req.pod, req.container))


async def _update(h: Callable[..., Awaitable[Any]], req: Any) -> Message:
    return pb.UpdateContainerResponse(update=_updates(await h(req.pod, req.container, req.linux_resources),
                                                      "update_container"))


async def _stop(h: Callable[..., Awaitable[Any]], req: Any) -> Message:
    return pb.StopContainerResponse(update=_updates(await h(req.pod, req.container), "stop_container"))


async def _update_pod(h: Callable[..., Awaitable[Any]], req: Any) -> Message:
    await h(req.pod, req.overhead_linux_resources, req.linux_resources)
    return pb.UpdatePodSandboxResponse()


async def _validate(h: Callable[..., Awaitable[Any]], req: Any) -> Message:
    reason = await h(req)
    if reason is None:
        return pb.ValidateContainerAdjustmentResponse()
    return pb.ValidateContainerAdjustmentResponse(reject=True, reason=str(reason))


@dataclass(frozen=True, slots=True)
class EventHandler:
    """One row of the table. ``state_change``: the event can arrive as StateChange (pre-v0.12 runtimes)."""

    event: Event
    rpc: str
    request: type[Message]
    call: _Call
    state_change: bool

    @property
    def name(self) -> str:
        return self.event.handler_name


def _row(event: Event, call: _Call, state_change: bool) -> EventHandler:
    rpc = "".join(w.capitalize() for w in event.name.split("_"))
    return EventHandler(event, rpc, getattr(pb, rpc + "Request"), call, state_change)


#: the one table: event -> handler name (event.handler_name), dedicated RPC, request type, how to call
EVENT_HANDLERS: dict[Event, EventHandler] = {r.event: r for r in [
    _row(Event.RUN_POD_SANDBOX, _pod, True),
    _row(Event.STOP_POD_SANDBOX, _pod, True),
    _row(Event.REMOVE_POD_SANDBOX, _pod, True),
    _row(Event.CREATE_CONTAINER, _create, False),
    _row(Event.POST_CREATE_CONTAINER, _pod_container, True),
    _row(Event.START_CONTAINER, _pod_container, True),
    _row(Event.POST_START_CONTAINER, _pod_container, True),
    _row(Event.UPDATE_CONTAINER, _update, False),
    _row(Event.POST_UPDATE_CONTAINER, _pod_container, True),
    _row(Event.STOP_CONTAINER, _stop, False),
    _row(Event.REMOVE_CONTAINER, _pod_container, True),
    _row(Event.UPDATE_POD_SANDBOX, _update_pod, False),
    _row(Event.POST_UPDATE_POD_SANDBOX, _pod, True),
    _row(Event.VALIDATE_CONTAINER_ADJUSTMENT, _validate, False),
]}
_POD_ONLY = {Event.RUN_POD_SANDBOX, Event.STOP_POD_SANDBOX, Event.REMOVE_POD_SANDBOX, Event.POST_UPDATE_POD_SANDBOX}


def handler_for(plugin: object, name: str) -> Callable[..., Awaitable[Any]] | None:
    """The plugin's bound ``async`` method ``name``, or None; a sync method of that name is an error."""
    h = getattr(plugin, name, None)
    if h is None:
        return None
    if not inspect.iscoroutinefunction(h):
        raise PluginError(f"{type(plugin).__name__}.{name} must be 'async def' (NRI handlers run on the event loop)")
    return h  # type: ignore[no-any-return]


def implemented_events(plugin: object) -> EventMask:
    """The mask of events ``plugin`` has handlers for (may include events newer runtimes only send)."""
    mask = EventMask(0)
    for ev, row in EVENT_HANDLERS.items():
        if handler_for(plugin, row.name) is not None:
            mask |= EventMask(ev.bit)
    return mask


async def dispatch_state_change(plugin: object, event: pb.StateChangeEvent) -> bool:
    """Deliver a StateChange to the plugin's handler; False when it has none (or the event never comes this way)."""
    try:
        ev = Event(event.event)
    except ValueError:
        return False
    row = EVENT_HANDLERS.get(ev)
    h = handler_for(plugin, ev.handler_name)
    if row is None or not row.state_change or h is None:
        return False
    if ev in _POD_ONLY:
        await h(event.pod)
    else:
        await h(event.pod, event.container)
    return True
