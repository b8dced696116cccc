"""How the engine reads a plain topic (``app.topic(...)``): values through the topic's
value serializer and type, as faust's agents get them, keys through its key serializer.

The engine decodes every record of a batch with its topic's ``codec``; an event topic's is
the envelope (:mod:`belvedere.streams.envelope`), a plain topic's is this. What does not
decode is a ``BadEvent`` (``bad-value``, ``bad-key``), dead-lettered with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from belvedere.streams.envelope import BadEvent

__all__ = ["PlainCodec", "decode_failure"]


def decode_failure(exc: Exception) -> str:
    """A deserializer's error (faust's, or the serializer's under it), in one line."""
    cause = exc.__cause__ or exc.__context__ or exc
    return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]


class PlainCodec:
    """Decodes a plain topic's records as faust would hand them to an agent."""

    def __init__(self, topic: Any) -> None:
        conf = topic.app.conf
        self._registry = topic.app.serializers
        self.value_type = topic.value_type
        self.value_serializer = topic.value_serializer or conf.value_serializer
        self.key_type = topic.key_type
        self.key_serializer = topic.key_serializer or conf.key_serializer
        #: The common case, taken without faust's registry: JSON into plain Python values.
        self._json = self.value_type is None and self.value_serializer == "json"
        self._str_keys = self.key_type in (str, None) and self.key_serializer == "raw"
        #: No event types: the engine hands every value to an agent's one handler.
        self.types: dict[str, type] = {}

    def decode(
        self,
        value: bytes | None,
        *,
        headers: Sequence[tuple[str, bytes]] | None = None,
        timestamp: float | None = None,
        source: str = "",
    ) -> Any:
        if self._json and value is not None:
            try:
                data = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise BadEvent("bad-value", f"JSONDecodeError: {exc}") from None
            if not (isinstance(data, dict) and "__faust" in data):
                return data
        try:
            return self._registry.loads_value(
                self.value_type, value, serializer=self.value_serializer
            )
        except Exception as exc:
            raise BadEvent("bad-value", decode_failure(exc)) from None

    def key(self, raw: bytes | None) -> Any:
        """A record's key, as faust's ``stream.items()`` gives it."""
        if raw is None:
            return None
        if self._str_keys:
            try:
                return raw.decode()
            except UnicodeDecodeError:
                raise BadEvent("bad-key", "the key is not UTF-8") from None
        try:
            return self._registry.loads_key(self.key_type, raw, serializer=self.key_serializer)
        except Exception as exc:
            raise BadEvent("bad-key", decode_failure(exc)) from None
