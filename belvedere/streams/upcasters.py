"""Upcasters: functions that turn an older version's ``data`` into the next version's.

``@upcaster("OrderCreated", from_version=1)`` registers ``v1 -> v2``; reading a v1 event
with code at v3 runs the v1 and v2 upcasters in order. They run wherever events are read:
agents, replays and dead-letter replays all decode through :func:`upcast`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["UpcastError", "has_chain", "upcast", "upcaster"]

Data = dict[str, Any]
Upcaster = Callable[[Data], Data]

_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


class UpcastError(ValueError):
    """An event that cannot be brought to the version the code knows."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def upcaster(event_type: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register ``fn(data) -> data`` taking ``event_type`` from ``from_version`` to the next."""

    def register(fn: Upcaster) -> Upcaster:
        existing = _UPCASTERS.get((event_type, from_version))
        if existing is not None and existing.__qualname__ != fn.__qualname__:
            raise ValueError(
                f"two upcasters for {event_type} v{from_version}: "
                f"{existing.__qualname__} and {fn.__qualname__}"
            )
        _UPCASTERS[(event_type, from_version)] = fn
        return fn

    return register


def has_chain(event_type: str, from_version: int, to_version: int) -> bool:
    return all((event_type, v) in _UPCASTERS for v in range(from_version, to_version))


def upcast(event_type: str, version: int, target: int, data: Data) -> Data:
    """``data`` at ``version``, brought to ``target`` through the registered chain."""
    if version > target:
        raise UpcastError(
            "newer-version",
            f"{event_type} v{version} is newer than this code knows (v{target}); deploy the new code, "
            "then replay the dead letters",
        )
    for v in range(version, target):
        fn = _UPCASTERS.get((event_type, v))
        if fn is None:
            raise UpcastError("no-upcaster", f"no upcaster for {event_type} from v{v} to v{v + 1}")
        try:
            data = fn(data)
        except Exception as exc:
            raise UpcastError(
                "upcaster-failed", f"upcaster {fn.__qualname__} ({event_type} v{v}) raised {exc!r}"
            ) from exc
        if type(data) is not dict:
            raise UpcastError(
                "upcaster-failed",
                f"upcaster {fn.__qualname__} returned {type(data).__name__}, not a dict",
            )
    return data
