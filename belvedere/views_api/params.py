"""Request parameters, declared once: each is what the OpenAPI spec says of it and, for
those the worker checks, the parser that checks it (a bad one is a JSON 400 that names
it, never a 500). A route lists its parameters in :mod:`belvedere.views_api.routes`; the
handler parses with the very same objects, so the spec's bounds are the ones enforced.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from aiohttp import web

from belvedere.streams.converters import INT_MAX, INT_MIN, FieldError, timestamp_ms
from belvedere.tables.view import View
from belvedere.views_api.errors import BadRequest
from belvedere.views_api.opaque import pack, unpack
from belvedere.views_api.positions import BadToken, Positions, decode_token
from belvedere.views_api.surface import ServedApp

__all__ = [
    "AFTER",
    "DATE_TIME",
    "MAX_TIMEOUT",
    "PAGE_CURSOR",
    "STRING",
    "TIMEOUT",
    "TOKEN",
    "WHEN",
    "BadParam",
    "Choice",
    "Instant",
    "Integer",
    "Key",
    "KeyCursor",
    "Name",
    "Param",
    "Schema",
    "Seconds",
    "Token",
    "encode_cursor",
]

#: Longest wait a request may ask for with ``?timeout=``.
MAX_TIMEOUT = 60.0
DEFAULT_TIMEOUT = 5.0

Schema = Mapping[str, Any]
STRING: Schema = MappingProxyType({"type": "string"})
#: An opaque token, cursor or feed id as the API writes them (empty: none given).
TOKEN: Schema = MappingProxyType(
    {"type": "string", "pattern": "^[A-Za-z0-9_-]*$", "maxLength": 4096}
)
DATE_TIME: Schema = {"type": "string", "format": "date-time"}
#: A point in time as the API takes it: milliseconds since the epoch, or ISO-8601.
WHEN = [{"type": "string", "pattern": "^[0-9]{1,18}$"}, DATE_TIME]
#: What a ``cursor`` of a listing read a page at a time is.
PAGE_CURSOR = "the `next` of the previous page (empty: the first)"


class BadParam(BadRequest):
    """A request parameter that cannot be used; the message says which and why."""

    code = "bad-parameter"


@dataclass(frozen=True, slots=True, eq=False)
class Param:
    """One parameter of a route, as the spec describes it (only a path's are required).
    The subclasses also parse it."""

    name: str
    description: str
    where: Literal["query", "path", "header"] = "query"
    schema: Schema = field(default_factory=lambda: STRING)

    def text(self, request: web.Request) -> str | None:
        """The parameter as sent (None: not sent)."""
        if self.where == "query":
            return request.query.get(self.name)
        if self.where == "header":
            return request.headers.get(self.name)
        return request.match_info.get(self.name)

    def schema_for(self, app: ServedApp) -> Schema:
        return self.schema

    def explained(self) -> str:
        return self.description

    def described(self, app: ServedApp) -> dict[str, Any]:
        """The parameter object of the OpenAPI spec, for ``app``."""
        return {
            "name": self.name,
            "in": self.where,
            "required": self.where == "path",
            "description": self.explained(),
            "schema": dict(self.schema_for(app)),
        }


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class Name(Param):
    """One of the app's names (views, topics, sagas...): the spec lists those ``known``
    now; the handler answers an unknown one with its own 404."""

    known: Callable[[Any], list[str]]

    def schema_for(self, app: ServedApp) -> Schema:
        return {"type": "string", "enum": self.known(app) or ["none"]}


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class Integer(Param):
    """An integer query parameter in [low, high]; ``default`` when absent (or empty,
    unless ``empty_is_default`` is off)."""

    default: int | None
    low: int
    high: int
    empty_is_default: bool = True

    def schema_for(self, app: ServedApp) -> Schema:
        return {"type": "integer", "minimum": self.low, "maximum": self.high}

    def explained(self) -> str:
        if self.default is None:
            return self.description
        return f"{self.description} (default {self.default})"

    def parse(self, request: web.Request) -> Any:
        text = request.query.get(self.name)
        if not text and (text is None or self.empty_is_default):
            return self.default
        try:
            value = int(text)
        except ValueError:
            raise BadParam(f"{self.name} must be an integer, not {text[:40]!r}") from None
        if not self.low <= value <= self.high:
            raise BadParam(f"{self.name} must be between {self.low} and {self.high}, not {value}")
        return value


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class Seconds(Param):
    """A wait in seconds, from 0 to ``high`` (``default`` when absent or empty)."""

    default: float = DEFAULT_TIMEOUT
    high: float = MAX_TIMEOUT

    def schema_for(self, app: ServedApp) -> Schema:
        high = int(self.high) if self.high.is_integer() else self.high
        return {"type": "number", "minimum": 0, "maximum": high}

    def explained(self) -> str:
        return f"{self.description} (default {self.default:g})"

    def parse(self, request: web.Request) -> float:
        text = request.query.get(self.name)
        if not text:
            return self.default
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= self.high:  # also refuses nan
            raise BadParam(
                f"{self.name} must be seconds between 0 and {self.high:g}, not {text[:40]!r}"
            )
        return value


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class Choice(Param):
    """One of a few words (``default`` when absent). The spec lists them sorted."""

    choices: tuple[str, ...]
    default: str

    def schema_for(self, app: ServedApp) -> Schema:
        return {"type": "string", "enum": sorted(self.choices)}

    def parse(self, request: web.Request) -> str:
        text = request.query.get(self.name, self.default)
        if text not in self.choices:
            # a BadRequest, not a BadParam: its answer has always said bad-request
            raise BadRequest(f"{self.name} must be {' or '.join(self.choices)}, not {text[:20]!r}")
        return text


@dataclass(frozen=True, slots=True, eq=False)
class Instant(Param):
    """A point in time: milliseconds since the epoch, or ISO-8601 (as ``fromTimestamp``)."""

    schema: Schema = field(default_factory=lambda: {"anyOf": WHEN})

    def parse(self, request: web.Request) -> int | None:
        """Milliseconds since the epoch (None: not sent, or empty)."""
        text = request.query.get(self.name)
        if not text:
            return None
        try:
            ms = timestamp_ms(text)
        except (FieldError, ValueError, OverflowError):
            ms = None
        if ms is None or not INT_MIN < ms < INT_MAX:
            raise BadParam(
                f"{self.name} must be milliseconds since the epoch or an ISO-8601 time, "
                f"not {text[:40]!r}"
            )
        return ms


@dataclass(frozen=True, slots=True, eq=False)
class Token(Param):
    """A consistency token: the positions a read waits for."""

    schema: Schema = field(default_factory=lambda: TOKEN)

    def parse(self, request: web.Request) -> Positions | None:
        text = request.query.get(self.name)
        if not text:
            return None
        try:
            return decode_token(text)
        except BadToken as exc:
            raise BadParam(f"{self.name}: {exc}") from None


@dataclass(frozen=True, slots=True, eq=False)
class Key(Param):
    """A key of the view the route names, as text: parsed to the view's key type."""

    def parse(self, view: View, text: str) -> Any:
        try:
            return view.parse_key(text)
        except ValueError:
            kind = "signed 64-bit integers" if view.key_type is int else view.key_type.__name__
            raise BadParam(
                f"{self.name} {text[:40]!r}: view {view.name!r} is keyed by {kind}"
            ) from None


@dataclass(frozen=True, slots=True, eq=False)
class KeyCursor(Param):
    """Where a page of a view's rows resumes: the previous page's ``next``."""

    schema: Schema = field(default_factory=lambda: TOKEN)

    def parse(self, request: web.Request, view: View) -> bytes | None:
        """The store key the page resumes after (None: the first page)."""
        text = request.query.get(self.name)
        if not text:
            return None
        try:
            key = unpack(text)
            if type(key) is not view.key_type:
                raise ValueError
            return view.store_key(key)
        except (ValueError, TypeError, OverflowError, struct.error):
            raise BadParam(
                f"{self.name} {text[:40]!r} is not a cursor of view {view.name!r}"
            ) from None


def encode_cursor(key: Any) -> str:
    return pack(key)


AFTER = Token(
    "after",
    "a consistency token (from X-Belvedere-Position or POST /events): wait until the "
    "view has applied it",
)
TIMEOUT = Seconds("timeout", "seconds to wait for `after`")
