"""Decode + validate + construct throughput of the envelope, on one core.

The input is an OrderCreated envelope (docs/events.md's shape), as bytes. Each variant turns
those bytes into a typed object, in a loop, best of several rounds:

- belvedere: ``EnvelopeCodec.decode`` (orjson, envelope checks, typed OrderCreated with
  a Decimal amount, a UTC timestamp in its meta);
- faust: the anchor, a ``faust.Record`` with the same fields, through faust's own
  ``loads`` (json codec + model construction), with ``validation=True``;
- orjson: ``orjson.loads`` alone, the floor under any JSON decoder.

Rates are events per CPU-second of the benchmark process, best of the rounds.

usage: python bench/events_decode.py [--events N] [--rounds R] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import faust
import orjson

import belvedere
from belvedere.streams.envelope import EnvelopeCodec

ENVELOPE = orjson.dumps(
    {
        "eventId": "5f2b8a4e-9c1d-4e8a-b7a3-2d6f0c9e1a42",
        "eventType": "OrderCreated",
        "eventVersion": 1,
        "timestamp": "2024-01-15T10:30:00Z",
        "correlationId": "order-123",
        "causationId": "command-456",
        "producer": "order-service",
        "data": {"orderId": "order-789", "userId": "user-456", "amount": 99.99, "items": []},
    }
)


class Item(belvedere.Record):
    sku: str
    qty: int


class OrderCreated(belvedere.Event, key="order_id"):
    order_id: str
    user_id: str
    amount: Decimal
    items: list[Item] = ()


class FaustData(faust.Record, validation=True):
    orderId: str
    userId: str
    amount: float
    items: list


class FaustEnvelope(faust.Record, validation=True, serializer="json"):
    eventId: str
    eventType: str
    eventVersion: int
    timestamp: str
    correlationId: str
    causationId: str
    producer: str
    data: FaustData


def variants() -> dict[str, Callable[[bytes], Any]]:
    codec = EnvelopeCodec([OrderCreated])
    return {
        "belvedere": codec.decode,
        "faust": FaustEnvelope.loads,
        "orjson": orjson.loads,
    }


def measure(decode: Callable[[bytes], Any], events: int, rounds: int) -> float:
    """Best rate over the rounds, in events per CPU-second of this process (one core).

    CPU time rather than wall time, so that another process on the machine does not
    count against us; on an idle machine the two agree within a few percent.
    """
    best = 0.0
    data = ENVELOPE
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(events):
            decode(data)
        best = max(best, events / (time.process_time() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "events.json"
    )
    args = parser.parse_args()

    decoded = EnvelopeCodec([OrderCreated]).decode(ENVELOPE)
    assert decoded == OrderCreated(
        order_id="order-789", user_id="user-456", amount=Decimal("99.99")
    )
    results = {name: measure(fn, args.events, args.rounds) for name, fn in variants().items()}

    print(f"{'variant':<10} {'events/s':>12} {'vs faust':>9}")
    for name, rate in results.items():
        print(f"{name:<10} {rate:>12,.0f} {rate / results['faust']:>8.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "decode_events_per_s": round(results["belvedere"]),
                "faust_record_events_per_s": round(results["faust"]),
                "orjson_loads_per_s": round(results["orjson"]),
                "python": platform.python_version(),
                "machine": platform.processor() or platform.machine(),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
