"""The CRIU front: a relay between a container runtime and the real ``criu swrk``.

``messages`` and ``relay`` are the sans-I/O part (decode the request, rewrite fd numbers, route each message, call
the hooks, decide between relaying and handing over); ``runtime`` is the runtime's socket (SO_PEERCRED, peeking at
the request, the real criu's cached VERSION answer); ``swrk`` is the relay's I/O (/proc fd reopening, SCM_RIGHTS,
half-close, criu's exit status);
``hooks`` is the seam for gpucr's engines; ``config`` says where the real criu is. The entry point is
``hooks/criu_front.py``. Nothing is imported here: the front's start-up path imports only what it uses.
"""

__all__ = ["config", "errors", "hooks", "messages", "relay", "runtime", "swrk"]
