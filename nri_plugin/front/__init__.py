"""The CRIU front: what a container runtime runs as ``criu`` (the launcher is ``hooks/criu_front.py``).

``main`` is the session driver (read the runtime's first request once, decide, act); ``messages`` and ``relay`` are
the sans-I/O part (decode the request, rewrite fd numbers, route each message, call the hooks, the first-move
decision); ``runtime`` is the runtime's socket (SO_PEERCRED, peeking at the request, the real criu's cached VERSION
answer); ``swrk`` is the relay's I/O (the front becomes the real criu, a detached helper relays: fd reopening,
SCM_RIGHTS, half-close); ``trust`` checks that only root can change the front's code, configuration and caches;
``hooks`` is the seam for gpucr's engines; ``config`` says where the real criu is. Nothing is imported here: the
front's start-up path imports only what it uses.
"""

__all__ = ["config", "errors", "hooks", "main", "messages", "relay", "runtime", "swrk", "trust"]
