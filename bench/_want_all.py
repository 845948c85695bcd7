"""Bench-only front hooks: want every session (so the front relays it) and do nothing at each point; measures the
relay path's own cost as a managed container would pay it, without any engine work."""

from __future__ import annotations


class WantAll:
    def wants(self, request: object) -> bool:
        return True

    def before_dump(self, request: object) -> None:
        return None

    def on_notify(self, request: object, name: str, pid: int | None) -> None:
        return None

    def after_response(self, request: object, success: bool) -> None:
        return None


def make(values: dict[str, str]) -> WantAll:
    return WantAll()
