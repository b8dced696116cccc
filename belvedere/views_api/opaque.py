"""Opaque text for what clients hand back unchanged: consistency tokens, page cursors and
change-feed ids, each JSON in URL-safe base64 without padding."""

from __future__ import annotations

import base64
from typing import Any

import orjson

__all__ = ["pack", "unpack"]


def pack(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()


def unpack(text: str) -> Any:
    """The value ``text`` packs; ValueError if it packs none."""
    return orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
