"""How each supported field type is decoded from JSON, encoded to it, checked, and described.

A :class:`Converter` is built once per type hint. Decoding is the hot path (every consumed
event), so each converter names the one JSON type its value arrives as when nothing needs
converting (``fast``); generated record decoders test for it inline and call ``decode``
only otherwise. Errors carry the path to the bad field, added on the way out, so the
success path pays nothing for it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import types
import typing
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["INT_MAX", "INT_MIN", "Converter", "FieldError", "converter_for"]


class FieldError(ValueError):
    """A value that does not fit its declared type; ``path`` says where it is."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def within(self, part: str | int) -> FieldError:
        return FieldError(self.message, (part, *self.path))

    def __str__(self) -> str:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.path).lstrip(".")
        return f"{where}: {self.message}" if where else self.message


def _name(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) is str:
        return f"the string {value[:40]!r}"
    return {dict: "an object", list: "an array", bool: "a boolean"}.get(
        type(value), f"{type(value).__name__} {value!r}"
    )


@dataclass(frozen=True, slots=True)
class Converter:
    #: JSON value -> Python value; raises FieldError.
    decode: Callable[[Any], Any]
    #: Python value -> JSON-native value (orjson serializes the result).
    encode: Callable[[Any], Any]
    #: A Python value given to a constructor -> the stored value; raises FieldError.
    check: Callable[[Any], Any]
    #: The JSON Schema of the encoded value (a function: nested records compile lazily).
    describe: Callable[[], dict[str, Any]]
    #: The JSON type that needs no conversion on decode, if any.
    fast: type | None = None
    #: True when ``encode`` returns its argument unchanged.
    plain: bool = False
    #: For integers: the inclusive range a value of ``fast`` type must also be in.
    bounds: tuple[int, int] | None = None
    #: Every value ``check`` lets through encodes, in a few bytes (a bounded integer, a
    #: boolean): a view of them need not encode each event's writes to find a bad one.
    always_encodes: bool = False


def _identity(value: Any) -> Any:
    return value


def _schema(schema: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    return lambda: dict(schema)


def _scalar(py: type, schema: dict[str, Any], what: str) -> Converter:
    def decode(value: Any) -> Any:
        if type(value) is py:
            return value
        raise FieldError(f"expected {what}, got {_name(value)}")

    return Converter(decode, _identity, decode, _schema(schema), fast=py, plain=True)


#: What an integer field holds: a signed 64-bit value, as Kafka, Java and most stores have
#: it. Wider values decode in Python but cannot be encoded (orjson stops at 64 bits), so a
#: state holding one would fail at its checkpoint: they are refused with the event.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def _int() -> Converter:
    def decode(value: Any) -> int:
        if type(value) is not int:
            raise FieldError(f"expected an integer, got {_name(value)}")
        if INT_MIN <= value <= INT_MAX:
            return value
        raise FieldError(f"integer {value} is out of range (signed 64-bit: {INT_MIN} to {INT_MAX})")

    schema = {"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX}
    return Converter(
        decode,
        _identity,
        decode,
        _schema(schema),
        fast=int,
        plain=True,
        bounds=(INT_MIN, INT_MAX),
        always_encodes=True,
    )


def _bool() -> Converter:
    scalar = _scalar(bool, {"type": "boolean"}, "a boolean")
    return dataclasses.replace(scalar, always_encodes=True)


def _float() -> Converter:
    def decode(value: Any) -> float:
        if type(value) is float:
            return value
        if type(value) is int:
            return float(value)
        raise FieldError(f"expected a number, got {_name(value)}")

    return Converter(decode, _identity, decode, _schema({"type": "number"}), fast=float, plain=True)


def _decimal() -> Converter:
    def decode(value: Any) -> Decimal:
        kind = type(value)
        if kind is float:
            if value - value == 0.0:  # finite
                return Decimal(repr(value))
        elif kind is str or kind is int:
            try:
                result = Decimal(value)
            except InvalidOperation:
                pass
            else:
                if result.is_finite():
                    return result
        raise FieldError(f"expected a decimal number, got {_name(value)}")

    def check(value: Any) -> Decimal:
        if isinstance(value, Decimal) and value.is_finite():
            return value
        if type(value) in (int, str):
            return decode(value)
        raise FieldError(f"expected a Decimal, got {_name(value)}")

    return Converter(decode, str, check, _schema({"type": "string", "format": "decimal"}))


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise FieldError("expected a date-time with a timezone, got a naive one")
    return value.astimezone(dt.UTC)


def format_timestamp(value: dt.datetime) -> str:
    """ISO-8601 in UTC with a ``Z``, as the envelope writes times."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def parse_timestamp(value: Any) -> dt.datetime:
    if type(value) is str:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return _utc(parsed)
    raise FieldError(f"expected an ISO-8601 date-time, got {_name(value)}")


def timestamp_ms(text: str) -> int:
    """A point in time given by a person: milliseconds since the epoch, or ISO-8601."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        when = parse_timestamp(text)
    except FieldError:
        raise FieldError(
            f"expected milliseconds since the epoch or an ISO-8601 date-time, got {text!r}"
        ) from None
    return int(when.timestamp() * 1000)


def _datetime() -> Converter:
    def check(value: Any) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return _utc(value)
        raise FieldError(f"expected a datetime, got {_name(value)}")

    return Converter(
        parse_timestamp, format_timestamp, check, _schema({"type": "string", "format": "date-time"})
    )


def _date() -> Converter:
    def decode(value: Any) -> dt.date:
        if type(value) is str:
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
        raise FieldError(f"expected an ISO-8601 date, got {_name(value)}")

    def check(value: Any) -> dt.date:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        raise FieldError(f"expected a date, got {_name(value)}")

    return Converter(
        decode, dt.date.isoformat, check, _schema({"type": "string", "format": "date"})
    )


def _uuid() -> Converter:
    def decode(value: Any) -> uuid.UUID:
        if type(value) is str:
            try:
                return uuid.UUID(value)
            except ValueError:
                pass
        raise FieldError(f"expected a UUID, got {_name(value)}")

    def check(value: Any) -> uuid.UUID:
        if isinstance(value, uuid.UUID):
            return value
        return decode(value)

    return Converter(decode, str, check, _schema({"type": "string", "format": "uuid"}))


def _enum(cls: type[enum.Enum]) -> Converter:
    by_value = {member.value: member for member in cls}

    def decode(value: Any) -> enum.Enum:
        try:
            return by_value[value]
        except (KeyError, TypeError):
            raise FieldError(
                f"expected one of {sorted(map(str, by_value))}, got {_name(value)}"
            ) from None

    def check(value: Any) -> enum.Enum:
        return value if isinstance(value, cls) else decode(value)

    return Converter(decode, lambda v: v.value, check, _schema({"enum": list(by_value)}))


def _optional(inner: Converter) -> Converter:
    def decode(value: Any) -> Any:
        return None if value is None else inner.decode(value)

    def encode(value: Any) -> Any:
        return None if value is None else inner.encode(value)

    def check(value: Any) -> Any:
        return None if value is None else inner.check(value)

    return Converter(decode, encode, check, lambda: {"anyOf": [inner.describe(), {"type": "null"}]})


def _each(convert: Callable[[Any], Any], values: Sequence[Any]) -> tuple:
    out = []
    for i, value in enumerate(values):
        try:
            out.append(convert(value))
        except FieldError as exc:
            raise exc.within(i) from None
    return tuple(out)


def _sequence(inner: Converter) -> Converter:
    def decode(value: Any) -> tuple:
        if type(value) is not list:
            raise FieldError(f"expected an array, got {_name(value)}")
        return _each(inner.decode, value) if value else ()

    def check(value: Any) -> tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise FieldError(f"expected a list, got {_name(value)}")
        return _each(inner.check, value)

    encode_item = inner.encode
    encode = list if inner.plain else (lambda value: [encode_item(v) for v in value])
    return Converter(decode, encode, check, lambda: {"type": "array", "items": inner.describe()})


def _mapping(inner: Converter) -> Converter:
    def convert(value: Any, each: Callable[[Any], Any]) -> Mapping[str, Any]:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise FieldError(f"expected string keys, got {_name(key)}")
            try:
                out[key] = each(item)
            except FieldError as exc:
                raise exc.within(key) from None
        return types.MappingProxyType(out)

    def decode(value: Any) -> Mapping[str, Any]:
        if type(value) is not dict:
            raise FieldError(f"expected an object, got {_name(value)}")
        return convert(value, inner.decode)

    def check(value: Any) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise FieldError(f"expected a mapping, got {_name(value)}")
        return convert(value, inner.check)

    encode_item = inner.encode
    return Converter(
        decode,
        lambda value: {k: encode_item(v) for k, v in value.items()},
        check,
        lambda: {"type": "object", "additionalProperties": inner.describe()},
    )


def _any() -> Converter:
    return Converter(_identity, _identity, _identity, _schema({}), plain=True)


_SCALARS: dict[Any, Callable[[], Converter]] = {
    str: lambda: _scalar(str, {"type": "string"}, "a string"),
    int: _int,
    bool: _bool,
    float: _float,
    Decimal: _decimal,
    dt.datetime: _datetime,
    dt.date: _date,
    uuid.UUID: _uuid,
    Any: _any,
}


def converter_for(hint: Any) -> Converter:
    """The converter for a resolved type hint; TypeError names what is not supported."""
    factory = _SCALARS.get(hint)
    if factory is not None:
        return factory()
    if hint is dict or hint is list:  # untyped JSON, taken as it is
        return _any()
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum(hint)
    own = getattr(hint, "__belvedere_converter__", None) if isinstance(hint, type) else None
    if own is not None:  # a Record class (belvedere.streams.records), which builds its own
        return own()
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return _optional(converter_for(rest[0]))
        raise TypeError(f"unions other than Optional[X] are not supported: {hint!r}")
    if origin in (list, tuple, Sequence, typing.Sequence) and args:
        if origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
            raise TypeError(f"only tuple[X, ...] is supported, not {hint!r}")
        return _sequence(converter_for(args[0]))
    if origin in (dict, Mapping, typing.Mapping) and len(args) == 2:
        if args[0] is not str:
            raise TypeError(f"mapping keys must be str: {hint!r}")
        return _mapping(converter_for(args[1]))
    raise TypeError(f"unsupported field type {hint!r}")
