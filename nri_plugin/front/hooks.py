"""The seam where gpucr's engines act during a relayed CRIU operation.

First :meth:`~FrontHooks.wants` decides whether gpucr has work in this session at all. If not, the front hands the
runtime's socket to the real criu (exec, same pid: nothing relayed, no fd renumbering, transparent by construction);
if so, it relays the session and calls the hooks at three points:

* :meth:`~FrontHooks.before_dump` -- the DUMP request arrived and CRIU has not started yet. Under containerd the
  cgroup is already FROZEN here (``request.freeze_cgroup``); a hook that needs live tasks thaws, acts and re-freezes.
* :meth:`~FrontHooks.on_notify` -- each CRIU notification (``pre-dump``, ``network-lock``, ..., ``post-resume``)
  before the runtime sees it. ``post-resume`` is the only point on RESTORE where the restored tasks run.
* :meth:`~FrontHooks.after_response` -- CRIU's final answer, before the runtime sees it.

Raising (preferably :class:`~nri_plugin.front.errors.HookError`) aborts: before the dump, CRIU never runs and the
runtime gets a failed DUMP carrying the hook's explanation; in a notify, CRIU is told the notification failed (which
aborts DUMP/RESTORE up to ``post-restore``; CRIU ignores failures at ``pre-resume``/``post-resume``), and the
explanation is put in front of CRIU's own error (and written to CRIU's log in the work dir, which containerd names in
its error: runc 1.1 itself shows only ``criu failed: type ... errno 125``).

Where the hooks run: on DUMP the front sits in the runtime's cgroups (the root cgroup under containerd), so thawing
and re-freezing the container around a CUDA lock is safe; on RESTORE runc has moved the front into the container's
cgroups before sending the request, so a hook must never freeze the container then (it would freeze the front and
criu), and its memory counts against the container's limit. The default, :class:`NoHooks`, does nothing, so non-CUDA and
unmanaged checkpoints pass through untouched. A hook factory named in the front's configuration (``hooks =
module:callable``) is called with the configuration's key/value mapping and returns the hooks object.
"""

from __future__ import annotations

# typing costs ~26 ms of start-up on every runc call (see _wire): type checkers see a real Protocol, the running
# front a plain base class with the same methods.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from .messages import Request
else:
    Protocol = object

__all__ = ["FrontHooks", "NoHooks"]


class FrontHooks(Protocol):
    """What the relay calls; every method runs in the front's process, synchronously, with the runtime waiting."""

    def wants(self, request: Request) -> bool:
        """True when gpucr must act on this request (a managed or CUDA-holding tree, a gpucr checkpoint image on
        RESTORE); False hands the session to the real criu untouched. Must be cheap: it runs on every call,
        VERSION included. An exception counts as True (the session is relayed and the hooks decide)."""

    def before_dump(self, request: Request) -> None:
        """A DUMP (or PRE_DUMP) request is about to be forwarded to CRIU (``request.pid``, ``freeze_cgroup``,
        ``leave_running``, ``peer_pid``, ``images_dir``)."""

    def on_notify(self, request: Request, name: str, pid: int | None) -> None:
        """CRIU sent the notification ``name`` (``pid`` set for setup-namespaces, post-restore, ...)."""

    def after_response(self, request: Request, success: bool) -> None:
        """CRIU answered the request; ``success`` is CRIU's verdict (``cr_errmsg`` is set even on success)."""


class NoHooks:
    """The default: no work, so every session goes straight to the real criu."""

    def wants(self, request: Request) -> bool:
        return False

    def before_dump(self, request: Request) -> None:
        return None

    def on_notify(self, request: Request, name: str, pid: int | None) -> None:
        return None

    def after_response(self, request: Request, success: bool) -> None:
        return None
