"""The HTTP reference in Markdown, rendered from the OpenAPI spec, so that the two never
disagree: ``belvedere openapi MODULE:APP --markdown`` prints it (docs/http-reference.md is
the shop's, checked by a test)."""

from __future__ import annotations

from typing import Any

__all__ = ["reference"]

_LIMIT = 8  # enum values listed before "..."


def _schema(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        values = [f"`{v}`" for v in schema["enum"][:_LIMIT]]
        more = ", ..." if len(schema["enum"]) > _LIMIT else ""
        return "one of " + ", ".join(values) + more
    if "anyOf" in schema:
        return " or ".join(_schema(choice) for choice in schema["anyOf"])
    kind = schema.get("type", "any")
    if "format" in schema:
        kind = f"{kind} ({schema['format']})"
    bounds = [
        f"{name} {schema[key]}"
        for key, name in (("minimum", "min"), ("maximum", "max"), ("maxLength", "max length"))
        if key in schema
    ]
    return str(kind) + (f" ({', '.join(bounds)})" if bounds else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference(spec: dict[str, Any]) -> str:
    info = spec["info"]
    lines = [
        f"# HTTP reference: {info['title']}",
        "",
        "Generated from the OpenAPI spec (`GET /openapi.json`) by",
        "`belvedere openapi belvedere.examples.shop:app --markdown`; do not edit by hand.",
        "",
        info.get("description", ""),
        "",
    ]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            lines += [f"## `{method.upper()} {path}`", "", operation.get("summary", ""), ""]
            if "x-scope" in operation:
                lines += [f"Scope: `{operation['x-scope']}`.", ""]
            parameters = operation.get("parameters", [])
            if parameters:
                lines += ["| parameter | in | | what |", "|---|---|---|---|"]
                for p in parameters:
                    required = "required" if p.get("required") else "optional"
                    what = f"{p.get('description', '')}: {_schema(p.get('schema', {}))}"
                    lines.append(f"| `{p['name']}` | {p['in']} | {required} | {_cell(what)} |")
                lines.append("")
            if "requestBody" in operation:
                body = operation["requestBody"]["content"]
                kinds = ", ".join(f"`{kind}`" for kind in body)
                lines += [f"Body: {kinds}.", ""]
            lines += ["| answer | when |", "|---|---|"]
            for status, answer in operation["responses"].items():
                lines.append(f"| {status} | {_cell(answer['description'])} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
