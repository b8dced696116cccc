"""Typed, immutable records and events, declared with type hints.

``class OrderCreated(belvedere.Event, version=2, key="order_id")`` becomes a frozen
dataclass. Its fields travel in the envelope's ``data`` under camelCase names
(``order_id`` -> ``orderId``). Sequences are stored as tuples and mappings as read-only
views, so an event cannot change after it is made.

Each class gets a codec, compiled on first use (so forward references resolve): a
generated decoder with one inline type test per field for the common case, and an encoder.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from belvedere.streams.converters import Converter, FieldError, converter_for

__all__ = ["Command", "Document", "Event", "EventKind", "Record", "camel_case", "record_converter"]

EventKind = Literal["notification", "command", "document"]

_MISSING = object()


def camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    wire: str
    converter: Converter
    required: bool
    default: Any
    default_factory: Callable[[], Any] | None
    #: Left out of the encoded data when None (metadata ``omit_none``).
    omit_none: bool = False


class Codec:
    """The compiled decode/encode pair of one record class."""

    def __init__(self, cls: type[Record]) -> None:
        hints = typing.get_type_hints(cls, localns=cls.__dict__.get("__belvedere_localns__"))
        self.fields: list[FieldSpec] = []
        for f in dataclasses.fields(cls):
            try:
                converter = converter_for(hints[f.name])
            except TypeError as exc:
                raise TypeError(f"{cls.__qualname__}.{f.name}: {exc}") from None
            has_default = f.default is not dataclasses.MISSING
            has_factory = f.default_factory is not dataclasses.MISSING
            self.fields.append(
                FieldSpec(
                    f.name,
                    f.metadata.get("wire", camel_case(f.name)),
                    converter,
                    not (has_default or has_factory),
                    f.default if has_default else _MISSING,
                    f.default_factory if has_factory else None,
                    bool(f.metadata.get("omit_none")),
                )
            )
        self.decode: Callable[[Any], Record] = _compile_decoder(cls, self.fields)
        self.encode: Callable[[Record], dict[str, Any]] = _compile_encoder(self.fields)

    def check(self, record: Record) -> None:
        """Validate and normalize the fields a constructor was given (lists -> tuples)."""
        values = record.__dict__
        for spec in self.fields:
            try:
                value = spec.converter.check(values[spec.name])
            except FieldError as exc:
                raise TypeError(f"{type(record).__qualname__}.{exc.within(spec.name)}") from None
            values[spec.name] = value

    def schema(self) -> dict[str, Any]:
        properties = {}
        required = []
        for spec in self.fields:
            prop = spec.converter.describe()
            if spec.default is not _MISSING and spec.default is not None:
                prop["default"] = spec.converter.encode(spec.default)
            properties[spec.wire] = prop
            if spec.required:
                required.append(spec.wire)
        return {"type": "object", "properties": properties, "required": required}


def _compile_decoder(cls: type, fields: list[FieldSpec]) -> Callable[[Any], Any]:
    """Generate ``decode(data) -> instance`` with the fields unrolled."""
    env: dict[str, Any] = {
        "cls": cls,
        "FieldError": FieldError,
        "MISSING": _MISSING,
        "new": object.__new__,
    }
    lines = [
        "def decode(data):",
        "    if type(data) is not dict:",
        "        raise FieldError(f'expected an object, got {type(data).__name__}')",
        "    obj = new(cls)",
        "    values = obj.__dict__",
    ]
    for i, spec in enumerate(fields):
        env[f"dec{i}"] = spec.converter.decode
        env[f"default{i}"] = spec.default
        env[f"factory{i}"] = spec.default_factory
        env[f"fast{i}"] = spec.converter.fast
        if spec.required:
            missing = f"raise FieldError('is required', ({spec.wire!r},))"
        elif spec.default_factory is not None:
            missing = f"v = factory{i}()"
        else:
            missing = f"v = default{i}"
        lines += [
            f"    v = data.get({spec.wire!r}, MISSING)",
            "    if v is MISSING:",
            f"        {missing}",
        ]
        convert = [
            "        try:",
            f"            v = dec{i}(v)",
            "        except FieldError as exc:",
            f"            raise exc.within({spec.wire!r}) from None",
        ]
        if spec.converter.bounds is not None:
            low, high = spec.converter.bounds
            lines += [f"    elif type(v) is not fast{i} or not {low} <= v <= {high}:", *convert]
        elif spec.converter.fast is not None:
            lines += [f"    elif type(v) is not fast{i}:", *convert]
        else:
            lines += ["    else:", *convert]
        lines.append(f"    values[{spec.name!r}] = v")
    lines.append("    return obj")
    exec("\n".join(lines), env)
    return env["decode"]


def _compile_encoder(fields: list[FieldSpec]) -> Callable[[Any], dict[str, Any]]:
    env: dict[str, Any] = {}
    items = []
    optional = []
    for i, spec in enumerate(fields):
        value = f"obj.{spec.name}"
        if not spec.converter.plain:
            env[f"enc{i}"] = spec.converter.encode
            value = f"enc{i}({value})"
        if spec.omit_none:
            optional.append(
                f"    if obj.{spec.name} is not None:\n        out[{spec.wire!r}] = {value}"
            )
        else:
            items.append(f"{spec.wire!r}: {value}")
    body = "    out = {" + ", ".join(items) + "}\n" + "".join(f"{o}\n" for o in optional)
    exec("def encode(obj):\n" + body + "    return out", env)
    return env["encode"]


def _defining_scope(caller: str = __file__) -> dict[str, Any] | None:
    """The local names where a class statement ran, if inside a function (``caller``: the
    file of the ``__init_subclass__`` asking, whose frames are skipped too).

    With ``from __future__ import annotations`` a hint naming a class defined in the same
    function cannot be resolved later without them.
    """
    here = inspect.currentframe()
    frame = here.f_back if here is not None else None
    while frame is not None and frame.f_code.co_filename in (__file__, caller):
        frame = frame.f_back
    if frame is None or frame.f_locals is frame.f_globals:
        return None
    return dict(frame.f_locals)


class Record:
    """An immutable, typed value, used as a nested field of events.

    Fields are keyword-only, so a field with a default may come before one without.
    """

    __belvedere_codec__: ClassVar[Codec | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__belvedere_codec__ = None
        cls.__belvedere_localns__ = _defining_scope()
        dataclass(frozen=True, kw_only=True)(cls)

    def __post_init__(self) -> None:
        codec(type(self)).check(self)

    def to_data(self) -> dict[str, Any]:
        """The JSON-ready ``data`` dict, with camelCase keys."""
        return codec(type(self)).encode(self)

    @classmethod
    def from_data(cls, data: Any) -> typing.Self:
        """Build from a ``data`` dict; FieldError says which field is wrong."""
        return codec(cls).decode(data)

    @classmethod
    def __belvedere_converter__(cls) -> Converter:
        """How a field, a view value or a nested value of this type converts: the hook
        :func:`~belvedere.streams.converters.converter_for` calls, as it cannot import records."""
        return record_converter(cls)


def codec(cls: type[Record]) -> Codec:
    compiled = cls.__dict__.get("__belvedere_codec__")
    if compiled is None:
        compiled = Codec(cls)
        cls.__belvedere_codec__ = compiled
    return compiled


def record_converter(cls: type[Record]) -> Converter:
    def decode(value: Any) -> Record:
        return codec(cls).decode(value)

    def encode(value: Record) -> dict[str, Any]:
        return codec(cls).encode(value)

    def check(value: Any) -> Record:
        if isinstance(value, cls):
            return value
        raise FieldError(f"expected {cls.__name__}, got {type(value).__name__}")

    return Converter(decode, encode, check, lambda: codec(cls).schema())


class Event(Record):
    """Something that happened (a notification), as carried in the envelope.

    Class keywords: ``type`` (the stable wire name; the class name by default), ``version``
    (an integer, 1 by default; bump it with an upcaster when ``data`` changes shape), and
    ``key`` (the field whose value is the Kafka key, so each entity keeps its order).
    """

    event_type: ClassVar[str]
    event_version: ClassVar[int]
    event_key: ClassVar[str | None]
    kind: ClassVar[EventKind] = "notification"
    #: Envelope fields of an event that was read from a topic; None on a new event.
    meta: ClassVar[Any] = None

    def __init_subclass__(
        cls, *, type: str | None = None, version: int = 1, key: str | None = None, **kwargs: Any
    ) -> None:
        if not isinstance(version, int) or version < 1:
            raise TypeError(f"{cls.__qualname__}: version must be an integer >= 1, not {version!r}")
        cls.event_type = type or cls.__name__
        cls.event_version = version
        cls.event_key = key if key is not None else getattr(cls, "event_key", None)
        super().__init_subclass__(**kwargs)
        if cls.event_key is not None and cls.event_key not in {
            f.name for f in dataclasses.fields(cls)
        }:
            raise TypeError(f"{cls.__qualname__}: key {cls.event_key!r} is not one of its fields")


Event.event_key = None


class Command(Event):
    """A request for an action, addressed to one handler; it may be rejected.

    ``expected_version`` (``expectedVersion`` on the wire), when given, is the version
    of the aggregate the sender saw: the command is refused if it has moved on since.
    """

    kind: ClassVar[EventKind] = "command"
    expected_version: int | None = dataclasses.field(default=None, metadata={"omit_none": True})


class Document(Event):
    """A snapshot of an entity's data, for consumers that want the whole state."""

    kind: ClassVar[EventKind] = "document"
