"""The schema registry: each event type's JSON Schema, exported to files and checked.

``export`` writes ``<eventType>.json`` per event type: the JSON Schema of its ``data``,
with its version and kind. ``check`` compares the code's event types against such a
folder: code at the new version must be able to read events written at the old one
(Confluent's BACKWARD mode), and, stricter than BACKWARD, no required field may be
removed, since during a rolling deploy the workers still on the old code read what the
new code writes. A version bump with a chain of upcasters from the old version is
compatible by construction (the upcasters adapt the old data); otherwise these are
refused: a removed required field, a changed type, a field that may no longer be null,
an enum that lost values, a new required field without a default, a removed event type,
and a version that went down.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from belvedere.streams.records import Event, codec
from belvedere.streams.upcasters import has_chain

__all__ = ["Verdict", "check", "event_schema", "export"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def event_schema(cls: type[Event]) -> dict[str, Any]:
    return {
        "$schema": DIALECT,
        "title": cls.event_type,
        "x-belvedere-version": cls.event_version,
        "x-belvedere-kind": cls.kind,
        **codec(cls).schema(),
    }


def export(event_types: Iterable[type[Event]], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for cls in sorted(event_types, key=lambda c: c.event_type):
        path = folder / f"{cls.event_type}.json"
        path.write_text(json.dumps(event_schema(cls), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


@dataclass
class Verdict:
    event_type: str
    old_version: int | None
    new_version: int | None
    problems: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def compatible(self) -> bool:
        return not self.problems

    def render(self) -> str:
        versions = f"v{self.new_version}" if self.new_version is not None else "removed"
        if self.old_version is not None and self.old_version != self.new_version:
            versions += f" (was v{self.old_version})"
        head = (
            f"{self.event_type} {versions}: {'compatible' if self.compatible else 'INCOMPATIBLE'}"
        )
        if self.note:
            head += f" ({self.note})"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


def check(event_types: Iterable[type[Event]], folder: Path) -> list[Verdict]:
    current = {cls.event_type: cls for cls in event_types}
    old = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    verdicts = []
    for name in sorted(set(old) | set(current)):
        cls = current.get(name)
        before = old.get(name)
        if cls is None:
            assert before is not None
            verdicts.append(
                Verdict(
                    name,
                    before["x-belvedere-version"],
                    None,
                    ["the event type was removed; old events can no longer be read"],
                )
            )
        elif before is None:
            verdicts.append(Verdict(name, None, cls.event_version, note="new event type"))
        else:
            verdicts.append(_compare(cls, before))
    return verdicts


def _compare(cls: type[Event], before: dict[str, Any]) -> Verdict:
    old_version, new_version = before["x-belvedere-version"], cls.event_version
    verdict = Verdict(cls.event_type, old_version, new_version)
    if new_version < old_version:
        verdict.problems.append(f"the version went down from {old_version} to {new_version}")
    elif new_version > old_version and has_chain(cls.event_type, old_version, new_version):
        verdict.note = f"upcasters from v{old_version}"
    else:
        no_upcaster = (
            f"and there is no upcaster from v{old_version}" if new_version > old_version else ""
        )
        verdict.problems += _diff(before, event_schema(cls), "", no_upcaster)
    return verdict


def _nullable(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    options = schema.get("anyOf")
    if options and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        if len(rest) == 1:
            return rest[0], True
    return schema, False


def _describe(schema: dict[str, Any]) -> str:
    kind = schema.get("type", "enum" if "enum" in schema else "any")
    return f"{kind} ({schema['format']})" if "format" in schema else str(kind)


def _diff(old: dict[str, Any], new: dict[str, Any], path: str, no_upcaster: str) -> list[str]:
    where = f"field '{path}'" if path else "data"
    old, old_null = _nullable(old)
    new, new_null = _nullable(new)
    problems = []
    if old_null and not new_null:
        problems.append(f"{where} may be null in old events, but the code no longer allows null")
    if not old or not new:  # "any" on either side reads everything
        return problems
    old_kind, new_kind = _describe(old), _describe(new)
    widened = old_kind == "integer" and new_kind == "number"
    if old_kind != new_kind and not widened:
        return [*problems, f"{where} changed type from {old_kind} to {new_kind}"]
    if "enum" in old:
        lost = [v for v in old["enum"] if v not in new.get("enum", [])]
        if lost:
            problems.append(f"{where} no longer accepts {lost}, which old events may hold")
    if old.get("type") == "array":
        problems += _diff(old.get("items", {}), new.get("items", {}), f"{path}[]", no_upcaster)
    if "additionalProperties" in old and "additionalProperties" in new:
        problems += _diff(
            old["additionalProperties"], new["additionalProperties"], f"{path}{{}}", no_upcaster
        )
    if "properties" in old or "properties" in new:
        problems += _diff_fields(old, new, path, no_upcaster)
    return problems


def _diff_fields(
    old: dict[str, Any], new: dict[str, Any], path: str, no_upcaster: str
) -> list[str]:
    problems = []
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    old_required, new_required = set(old.get("required", [])), set(new.get("required", []))
    prefix = f"{path}." if path else ""
    for name, schema in old_props.items():
        if name not in new_props:
            if name in old_required:
                problems.append(f"required field '{prefix}{name}' was removed")
        else:
            problems += _diff(schema, new_props[name], prefix + name, no_upcaster)
    for name in new_props:
        if name not in old_props and name in new_required:
            problems.append(
                f"new required field '{prefix}{name}' has no default{', ' + no_upcaster if no_upcaster else ''}"
            )
    return problems
