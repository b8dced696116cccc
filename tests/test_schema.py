"""The schema registry: JSON Schemas derived from classes, and BACKWARD compatibility checks."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

import belvedere
from belvedere.streams import schema
from tests.support.worker import run_cli


def versioned(version: int, **fields: type) -> type[belvedere.Event]:
    """A fresh ``Order`` event class with these fields (name=type, or name=(type, default))."""
    annotations = {}
    namespace: dict = {}
    for name, spec in fields.items():
        if isinstance(spec, tuple):
            annotations[name], namespace[name] = spec
        else:
            annotations[name] = spec
    namespace["__annotations__"] = annotations
    return type("Order", (belvedere.Event,), namespace, type="Order", version=version)


BASE = {"order_id": str, "amount": Decimal, "quantity": int, "note": (str | None, None)}


def check(tmp_path: Path, old: type[belvedere.Event], new: type[belvedere.Event]) -> schema.Verdict:
    schema.export([old], tmp_path)
    (verdict,) = schema.check([new], tmp_path)
    return verdict


def test_exported_schema_describes_the_data(tmp_path: Path) -> None:
    class Line(belvedere.Record):
        sku: str
        qty: int

    class Placed(belvedere.Event, version=4):
        order_id: str
        lines: list[Line]
        total: Decimal
        note: str | None = None

    (path,) = schema.export([Placed], tmp_path)
    doc = json.loads(path.read_text())
    assert path.name == "Placed.json"
    assert (
        doc["title"] == "Placed"
        and doc["x-belvedere-version"] == 4
        and doc["x-belvedere-kind"] == "notification"
    )
    assert doc["required"] == ["orderId", "lines", "total"]
    assert doc["properties"]["lines"] == {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "sku": {"type": "string"},
                "qty": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
            },
            "required": ["sku", "qty"],
        },
    }
    assert doc["properties"]["note"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}


@pytest.mark.parametrize(
    ("change", "version"),
    [
        ({}, 1),
        ({"note": None}, 1),  # an optional field removed
        ({"channel": (str, "web")}, 1),  # a field added with a default
        ({"channel": (str | None, None)}, 1),
        ({"quantity": float}, 1),  # integer widened to number
        ({"amount": (Decimal | None, None)}, 1),  # now nullable
        ({"gift_wrap": bool}, 2),  # new required field, with an upcaster from v1 (below)
    ],
)
def test_compatible_changes(tmp_path: Path, change: dict, version: int) -> None:
    fields = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    verdict = check(tmp_path, versioned(1, **BASE), versioned(version, **fields))
    assert verdict.compatible, verdict.render()


@belvedere.upcaster("Order", from_version=1)
def order_gift_wrap(data: dict) -> dict:
    return {**data, "giftWrap": False}


@pytest.mark.parametrize(
    ("change", "version", "problem"),
    [
        ({"amount": None}, 1, "required field 'amount' was removed"),
        ({"quantity": str}, 1, "field 'quantity' changed type from integer to string"),
        ({"amount": float}, 1, "field 'amount' changed type from string (decimal) to number"),
        (
            {"note": str},
            1,
            "field 'note' may be null in old events, but the code no longer allows null",
        ),
        ({"channel": str}, 1, "new required field 'channel' has no default"),
        (
            {"channel": str},
            3,
            "new required field 'channel' has no default, and there is no upcaster from v1",
        ),
    ],
)
def test_incompatible_changes(tmp_path: Path, change: dict, version: int, problem: str) -> None:
    fields = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    verdict = check(tmp_path, versioned(1, **BASE), versioned(version, **fields))
    assert not verdict.compatible
    assert problem in verdict.problems
    assert "INCOMPATIBLE" in verdict.render()


def test_nested_changes_are_found_by_path(tmp_path: Path) -> None:
    class Line(belvedere.Record):
        sku: str
        qty: int

    class WideLine(belvedere.Record):
        sku: str
        qty: str

    verdict = check(tmp_path, versioned(1, lines=list[Line]), versioned(1, lines=list[WideLine]))
    assert verdict.problems == ["field 'lines[].qty' changed type from integer to string"]


def test_version_going_down_and_removed_types_are_incompatible(tmp_path: Path) -> None:
    assert (
        "the version went down from 2 to 1"
        in check(tmp_path, versioned(2, **BASE), versioned(1, **BASE)).problems
    )

    class Gone(belvedere.Event):
        x: int

    schema.export([Gone], tmp_path)
    verdicts = {v.event_type: v for v in schema.check([], tmp_path)}
    assert not verdicts["Gone"].compatible


def test_schema_commands_export_and_check_an_app(tmp_path: Path) -> None:
    env = {"ORDERS_NAME": "schemas"}
    exported = run_cli("schema", "export", "tests.apps.orders:app", str(tmp_path), env=env)
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "InvoiceRequested.json", "InvoiceSent.json", "OrderCreated.json", "OrderPaid.json",
    ]  # fmt: skip

    same = run_cli("schema", "check", "tests.apps.orders:app", str(tmp_path), env=env)
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout.strip().endswith("all compatible")

    added = run_cli(
        "schema",
        "check",
        "tests.apps.orders:app",
        str(tmp_path),
        env={**env, "ORDERS_KNOW_CANCELLED": "1"},
    )
    assert added.returncode == 0
    assert "OrderCancelled v2: compatible (new event type)" in added.stdout

    old = json.loads((tmp_path / "OrderPaid.json").read_text())
    old["properties"]["paidAt"] = {"type": "string", "format": "date-time"}
    old["required"].append("paidAt")
    (tmp_path / "OrderPaid.json").write_text(json.dumps(old))
    broken = run_cli("schema", "check", "tests.apps.orders:app", str(tmp_path), env=env)
    assert broken.returncode == 1
    assert "OrderPaid v1: INCOMPATIBLE\n  - required field 'paidAt' was removed" in broken.stdout
    assert "1 incompatible of 4 event types" in broken.stdout


def test_schema_check_without_a_folder_is_one_line(tmp_path: Path) -> None:
    result = run_cli(
        "schema",
        "check",
        "tests.apps.orders:app",
        str(tmp_path / "missing"),
        env={"ORDERS_NAME": "x"},
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"belvedere: no schema folder at {tmp_path / 'missing'} (create one with 'belvedere schema export')"
    )
