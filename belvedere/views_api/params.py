"""Query parameters, checked: a bad one is a JSON 400 that names it, never a 500."""

from __future__ import annotations

import math
import struct
from typing import Any

from aiohttp import web

from belvedere.tables.view import View
from belvedere.views_api.errors import BadRequest
from belvedere.views_api.opaque import pack, unpack
from belvedere.views_api.positions import BadToken, Positions, decode_token

__all__ = [
    "BadParam",
    "after_token",
    "cursor_param",
    "encode_cursor",
    "int_param",
    "key_param",
    "timeout_param",
]

#: Longest wait a request may ask for with ``?timeout=``.
MAX_TIMEOUT = 60.0
DEFAULT_TIMEOUT = 5.0


class BadParam(BadRequest):
    """A request parameter that cannot be used; the message says which and why."""

    code = "bad-parameter"


def int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> Any:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadParam(f"{name} must be an integer, not {text[:40]!r}") from None
    if not low <= value <= high:
        raise BadParam(f"{name} must be between {low} and {high}, not {value}")
    return value


def timeout_param(request: web.Request) -> float:
    text = request.query.get("timeout")
    if text is None or text == "":
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_TIMEOUT:  # also refuses nan
        raise BadParam(f"timeout must be seconds between 0 and {MAX_TIMEOUT:g}, not {text[:40]!r}")
    return value


def after_token(request: web.Request) -> Positions | None:
    text = request.query.get("after")
    if not text:
        return None
    try:
        return decode_token(text)
    except BadToken as exc:
        raise BadParam(f"after: {exc}") from None


def key_param(view: View, text: str, name: str = "key") -> Any:
    try:
        return view.parse_key(text)
    except ValueError:
        kind = "signed 64-bit integers" if view.key_type is int else view.key_type.__name__
        raise BadParam(f"{name} {text[:40]!r}: view {view.name!r} is keyed by {kind}") from None


def encode_cursor(key: Any) -> str:
    return pack(key)


def cursor_param(request: web.Request, view: View) -> bytes | None:
    """The store key a page resumes after (from the previous page's ``next`` cursor)."""
    text = request.query.get("cursor")
    if not text:
        return None
    try:
        key = unpack(text)
        if type(key) is not view.key_type:
            raise ValueError
        return view.store_key(key)
    except (ValueError, TypeError, OverflowError, struct.error):
        raise BadParam(f"cursor {text[:40]!r} is not a cursor of view {view.name!r}") from None
