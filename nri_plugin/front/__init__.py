"""The CRIU front: a relay between a container runtime and the real ``criu swrk``.

``messages`` and ``relay`` are the sans-I/O part (decode the request, rewrite fd numbers, route each message, call
the hooks); ``swrk`` is the I/O part (SO_PEERCRED, /proc fd reopening, SCM_RIGHTS, half-close, criu's exit status);
``hooks`` is the seam for gpucr's engines; ``config`` says where the real criu is. The entry point is
``hooks/criu_front.py``. Nothing is imported here: the front's start-up path imports only what it uses.
"""

__all__ = ["config", "errors", "hooks", "messages", "relay", "swrk"]
