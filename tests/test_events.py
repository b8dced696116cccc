"""Typed events, the envelope, upcasters and correlation, without a broker."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from decimal import Decimal

import orjson
import pytest

import belvedere
from belvedere.streams.context import caused_by, current_cause
from belvedere.streams.converters import FieldError
from belvedere.streams.envelope import BadEvent, EnvelopeCodec, new_meta, parse_version
from belvedere.streams.upcasters import UpcastError, upcast


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(belvedere.Record):
    street: str
    zip_code: str | None = None


class Everything(belvedere.Event, type="Everything.v", version=3, key="entity_id"):
    entity_id: str
    count: int
    ratio: float
    flag: bool
    price: Decimal
    at: dt.datetime
    day: dt.date
    ident: uuid.UUID
    color: Color
    address: Address
    addresses: list[Address]
    tags: tuple[str, ...]
    scores: dict[str, int]
    maybe: int | None = None
    nested_optional: list[Address | None] = ()


def everything() -> Everything:
    return Everything(
        entity_id="e-1",
        count=3,
        ratio=0.5,
        flag=True,
        price=Decimal("1234.5678"),
        at=dt.datetime(2024, 1, 15, 10, 30, 0, 123456, tzinfo=dt.UTC),
        day=dt.date(2024, 2, 29),
        ident=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        color=Color.BLUE,
        address=Address(street="1 Main St"),
        addresses=[Address(street="a", zip_code="1"), Address(street="b")],
        tags=("x", "y"),
        scores={"a": 1},
        maybe=None,
        nested_optional=[None, Address(street="c")],
    )


def test_every_supported_field_type_round_trips_through_json() -> None:
    event = everything()
    data = orjson.loads(orjson.dumps(event.to_data()))
    assert data["entityId"] == "e-1"
    assert data["price"] == "1234.5678"
    assert data["at"] == "2024-01-15T10:30:00.123456Z"
    assert data["color"] == "blue"
    assert data["address"] == {"street": "1 Main St", "zipCode": None}
    assert Everything.from_data(data) == event


def test_decoding_accepts_json_numbers_for_decimals_and_floats() -> None:
    data = everything().to_data()
    data.update(price=99.99, ratio=2)
    decoded = Everything.from_data(data)
    assert decoded.price == Decimal("99.99")
    assert decoded.ratio == 2.0 and type(decoded.ratio) is float


def test_times_are_kept_in_utc() -> None:
    data = everything().to_data()
    data["at"] = "2024-01-15T12:30:00+02:00"
    assert Everything.from_data(data).at == dt.datetime(2024, 1, 15, 10, 30, tzinfo=dt.UTC)
    data["at"] = "2024-01-15T12:30:00"
    with pytest.raises(FieldError, match="at: expected a date-time with a timezone"):
        Everything.from_data(data)


def test_events_are_immutable() -> None:
    event = everything()
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.count = 4  # type: ignore[misc]
    assert isinstance(event.addresses, tuple)
    with pytest.raises(TypeError):
        event.scores["b"] = 2  # type: ignore[index]


def test_constructors_check_types_and_name_the_field() -> None:
    with pytest.raises(TypeError, match=r"Address.street: expected a string, got int 5"):
        Address(street=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"addresses\[1\]: expected Address, got dict"):
        dataclasses.replace(everything(), addresses=[Address(street="a"), {"street": "b"}])


def test_decode_errors_give_the_path_to_the_bad_value() -> None:
    data = everything().to_data()
    data["addresses"][1]["street"] = 7
    with pytest.raises(FieldError, match=r"^addresses\[1\]\.street: expected a string, got int 7$"):
        Everything.from_data(data)
    del data["count"]
    data["addresses"][1]["street"] = "ok"
    with pytest.raises(FieldError, match=r"^count: is required$"):
        Everything.from_data(data)
    data["count"] = True
    with pytest.raises(FieldError, match="count: expected an integer, got a boolean"):
        Everything.from_data(data)


def test_names_versions_keys_and_kinds() -> None:
    class OrderCreated(belvedere.Event):
        order_id: str

    class ReserveStock(belvedere.Command, version=2):
        sku: str

    class Stock(belvedere.Document):
        sku: str

    assert (OrderCreated.event_type, OrderCreated.event_version, OrderCreated.kind) == (
        "OrderCreated",
        1,
        "notification",
    )
    assert (ReserveStock.kind, ReserveStock.event_version) == ("command", 2)
    assert Stock.kind == "document"
    assert Everything.event_type == "Everything.v" and Everything.event_key == "entity_id"
    with pytest.raises(TypeError, match="key 'nope' is not one of its fields"):

        class Broken(belvedere.Event, key="nope"):
            order_id: str

    with pytest.raises(TypeError, match="version must be an integer >= 1"):

        class Zero(belvedere.Event, version=0):
            order_id: str


def test_unsupported_field_types_are_named() -> None:
    class Odd(belvedere.Event):
        blob: bytes

    with pytest.raises(TypeError, match=r"Odd.blob: unsupported field type <class 'bytes'>"):
        Odd.from_data({"blob": "x"})


class Ping(belvedere.Event, key="ping_id"):
    ping_id: str
    n: int = 0


def test_envelope_is_exactly_the_standard_fields() -> None:
    codec = EnvelopeCodec([Ping])
    event = Ping(ping_id="p-1", n=2)
    meta = new_meta(event, producer="svc")
    doc = orjson.loads(codec.encode(event, meta))
    assert list(doc) == [
        "eventId", "eventType", "eventVersion", "timestamp", "correlationId", "causationId", "producer", "data",
    ]  # fmt: skip
    assert doc["eventType"] == "Ping" and doc["eventVersion"] == 1
    assert doc["timestamp"].endswith("Z")
    assert doc["correlationId"] == doc["eventId"] and doc["causationId"] is None
    assert doc["data"] == {"pingId": "p-1", "n": 2}
    assert codec.headers(event) == [("eventType", b"Ping"), ("eventVersion", b"1")]

    back = codec.decode(codec.encode(event, meta))
    assert back == event
    assert back.meta == meta


def test_new_events_continue_the_cause() -> None:
    codec = EnvelopeCodec([Ping])
    cause = codec.decode(codec.encode(Ping(ping_id="a"), new_meta(Ping(ping_id="a"), producer="x")))
    assert current_cause() is None
    with caused_by(cause):
        assert current_cause() is cause.meta
        meta = new_meta(Ping(ping_id="b"), producer="y", cause=current_cause())
    assert current_cause() is None
    assert meta.correlation_id == cause.meta.correlation_id
    assert meta.causation_id == cause.meta.event_id
    with (
        pytest.raises(ValueError, match="needs an event read from a topic"),
        caused_by(Ping(ping_id="new")),
    ):
        pass


@pytest.mark.parametrize(
    ("raw", "kind", "reason"),
    [
        (b"{", "not-json", "not JSON"),
        (b"[1]", "bad-envelope", "must be a JSON object, not list"),
        (b'{"eventVersion": 1, "data": {}}', "bad-envelope", "no eventType"),
        (b'{"eventType": "Nope", "eventVersion": 1, "data": {}}', "unknown-type", "unknown eventType 'Nope'"),
        (b'{"eventType": "Ping", "eventVersion": "v1", "data": {}}', "bad-envelope", "eventVersion must be an integer or a version string"),
        (b'{"eventType": "Ping", "eventVersion": "1.", "data": {}}', "bad-envelope", "not '1.'"),
        (b'{"eventType": "Ping", "eventVersion": 1.0, "data": {}}', "bad-envelope", "not 1.0"),
        (b'{"eventType": "Ping", "eventVersion": true, "data": {}}', "bad-envelope", "not True"),
        (b'{"eventType": "Ping", "data": {}}', "bad-envelope", "not None"),
        (b'{"eventType": "Ping", "eventVersion": "2.0", "data": {"pingId": "p"}}', "newer-version", "Ping v2 is newer"),
        (b'{"eventType": "Ping", "eventVersion": 1, "data": []}', "bad-envelope", "no data object"),
        (b'{"eventType": "Ping", "eventVersion": 1, "data": {"n": 1}}', "invalid-data", "data.pingId: is required"),
        (b'{"eventType": "Ping", "eventVersion": 2, "data": {}}', "newer-version", "Ping v2 is newer than this code knows (v1)"),
        (b'{"eventType": "Ping", "eventVersion": 1, "eventId": 5, "data": {"pingId": "p"}}', "bad-envelope", "eventId must be a string"),
        (b'{"eventType": "Ping", "eventVersion": 1, "timestamp": "soon", "data": {"pingId": "p"}}', "bad-envelope", "timestamp: expected an ISO-8601"),
        (None, "not-json", "no value"),
    ],
)  # fmt: skip
def test_bad_envelopes_say_what_is_wrong(raw: bytes | None, kind: str, reason: str) -> None:
    with pytest.raises(BadEvent) as caught:
        EnvelopeCodec([Ping]).decode(raw)
    assert caught.value.kind == kind
    assert reason in caught.value.reason


def test_oversized_and_header_routed_events_are_refused_before_decoding() -> None:
    codec = EnvelopeCodec([Ping], max_bytes=10)
    with pytest.raises(BadEvent, match="over the 10-byte limit"):
        codec.decode(b"x" * 11)
    with pytest.raises(BadEvent, match=r"unknown eventType 'Pong' \(from its header\)"):
        EnvelopeCodec([Ping]).decode(b"not even json", headers=[("eventType", b"Pong")])


def test_two_classes_with_one_type_name_cannot_share_a_topic() -> None:
    class Other(belvedere.Event, type="Ping"):
        x: int

    with pytest.raises(TypeError, match="two classes named 'Ping'"):
        EnvelopeCodec([Ping, Other])


# -- upcasters ----------------------------------------------------------------------------


class Shipment(belvedere.Event, version=3):
    shipment_id: str
    weight_grams: int
    carrier: str


@belvedere.upcaster("Shipment", from_version=1)
def shipment_v1_to_v2(data: dict) -> dict:
    return {"shipmentId": data["id"], "weightKg": data["kg"]}


@belvedere.upcaster("Shipment", from_version=2)
def shipment_v2_to_v3(data: dict) -> dict:
    return {
        "shipmentId": data["shipmentId"],
        "weightGrams": int(data["weightKg"] * 1000),
        "carrier": "unknown",
    }


def test_upcasters_chain_from_any_older_version() -> None:
    codec = EnvelopeCodec([Shipment])
    v1 = codec.decode(
        b'{"eventType": "Shipment", "eventVersion": 1, "data": {"id": "s1", "kg": 1.5}}'
    )
    v2 = codec.decode(
        b'{"eventType": "Shipment", "eventVersion": 2, "data": {"shipmentId": "s1", "weightKg": 1.5}}'
    )
    assert v1 == v2 == Shipment(shipment_id="s1", weight_grams=1500, carrier="unknown")
    assert v1.meta.event_version == 1


#: The envelope as other frameworks write it: eventVersion "1.0", a string.
FOREIGN_V1 = b"""{
"eventId": "uuid",
"eventType": "Shipment",
"eventVersion": "1.0",
"timestamp": "2024-01-15T10:30:00Z",
"correlationId": "order-123",
"causationId": "command-456",
"producer": "order-service",
"data": { "id": "s1", "kg": 1.5 }
}"""


def test_a_version_string_selects_the_class_and_upcasters_by_its_major_number() -> None:
    codec = EnvelopeCodec([Shipment])
    old = codec.decode(FOREIGN_V1)
    assert old == Shipment(shipment_id="s1", weight_grams=1500, carrier="unknown")
    assert (old.meta.event_version, old.meta.version_string) == (1, "1.0")
    assert (old.meta.event_id, old.meta.correlation_id) == ("uuid", "order-123")
    for written in ("3", "3.1", "3.12.7"):  # a minor change is compatible: extra fields ignored
        raw = orjson.dumps(
            {
                "eventType": "Shipment",
                "eventVersion": written,
                "data": {"shipmentId": "s2", "weightGrams": 7, "carrier": "c", "new": 1},
            }
        )
        event = codec.decode(raw)
        assert event == Shipment(shipment_id="s2", weight_grams=7, carrier="c")
        assert (event.meta.event_version, event.meta.version_string) == (3, written)
        assert event.meta.written_version == written
    with pytest.raises(BadEvent, match="Shipment v4 is newer than this code knows"):
        codec.decode(b'{"eventType": "Shipment", "eventVersion": "4.0", "data": {}}')
    assert parse_version(2) == (2, None) and parse_version("10.2") == (10, "10.2")


def test_an_event_written_back_keeps_its_producers_form_of_the_version() -> None:
    codec = EnvelopeCodec([Shipment])
    event = codec.decode(FOREIGN_V1)
    same = event.meta.at_version(1)
    assert same.written_version == "1.0"
    upcast_meta = event.meta.at_version(Shipment.event_version)
    assert (upcast_meta.event_version, upcast_meta.written_version) == (3, "3.0")
    doc = orjson.loads(codec.encode(event, upcast_meta))
    assert doc["eventVersion"] == "3.0" and doc["eventId"] == "uuid"
    assert codec.headers(event, upcast_meta) == [
        ("eventType", b"Shipment"),
        ("eventVersion", b"3.0"),
    ]
    bare = codec.decode(
        b'{"eventType": "Shipment", "eventVersion": "1", "data": {"id": "s", "kg": 1}}'
    )
    assert bare.meta.at_version(3).written_version == "3"
    number = codec.decode(
        b'{"eventType": "Shipment", "eventVersion": 1, "data": {"id": "s", "kg": 1}}'
    )
    assert number.meta.version_string is None
    assert number.meta.at_version(3).written_version == 3
    assert orjson.loads(codec.encode(number, number.meta.at_version(3)))["eventVersion"] == 3
    # Belvedere's own events carry an integer, as before.
    fresh = Shipment(shipment_id="s9", weight_grams=1, carrier="c")
    meta = new_meta(fresh, producer="p")
    assert orjson.loads(codec.encode(fresh, meta))["eventVersion"] == 3
    assert codec.headers(fresh) == [("eventType", b"Shipment"), ("eventVersion", b"3")]


def test_a_missing_link_or_a_failing_upcaster_is_a_clear_error() -> None:
    with pytest.raises(UpcastError, match="no upcaster for Ghost from v1 to v2") as caught:
        upcast("Ghost", 1, 2, {})
    assert caught.value.kind == "no-upcaster"
    with pytest.raises(
        UpcastError, match=r"shipment_v1_to_v2 \(Shipment v1\) raised KeyError"
    ) as caught:
        upcast("Shipment", 1, 3, {"nope": 1})
    assert caught.value.kind == "upcaster-failed"


def test_an_upcaster_cannot_be_registered_twice_for_one_step() -> None:
    with pytest.raises(ValueError, match="two upcasters for Shipment v1"):

        @belvedere.upcaster("Shipment", from_version=1)
        def another(data: dict) -> dict:
            return data
