"""The sliding windows tests' app: readings per sensor in sliding windows of 10 s.

``sliding``: by the reading's ``at_ms``, 5 s of grace, late readings dead-lettered,
windows kept 3 hours (the tests compare every window), each sent to ``<name>-final`` once
it closes; an async handler, slowed down by ``SLIDING_DELAY`` seconds per window (so a
test can kill it mid-stream). ``/state`` answers every window of the sensors a test asks about, read through
the view's local reads. Names come from the environment, so tests sharing one Kafka broker
never share a topic.
"""

import asyncio
import os
from datetime import timedelta

import belvedere
from belvedere.tables.windows import is_window_row

NAME = os.environ.get("SLIDING_NAME", "sliding")  # tests/test_sliding.py imports the fold
PARTITIONS = 2

app = belvedere.App(NAME, checkpoint_events=100, checkpoint_interval=0.2)


class Reading(belvedere.Event, key="sensor"):
    sensor: str
    at_ms: int
    amount: int
    rid: str


readings = app.event_topic(f"{NAME}-readings", Reading, partitions=PARTITIONS)
final = app.topic(f"{NAME}-final", partitions=PARTITIONS, key_type=str)
sliding = app.view(
    "sliding",
    value=dict,
    window=belvedere.Sliding(
        seconds=10,
        grace=timedelta(seconds=5),
        retention=timedelta(hours=3),
        time=lambda event: event.at_ms / 1000,
        final_to=final,
    ),
)


def fold_step(value: dict | None, event: Reading) -> dict:
    """Count, sum, max and the set of ids (sorted): folds whose value over a window does
    not depend on the order its events came in (what the tests can compute)."""
    value = value or {"n": 0, "sum": 0, "max": None, "ids": []}
    value["n"] += 1
    value["sum"] += event.amount
    value["max"] = event.amount if value["max"] is None else max(value["max"], event.amount)
    value["ids"] = sorted([*value["ids"], event.rid])  # a seeded copy, changed in place
    return value


#: Seconds the handler waits per window: slow enough for a test to kill it mid-way.
DELAY = float(os.environ.get("SLIDING_DELAY", "0"))


@app.projection(readings, view=sliding)
async def fold(view, event: Reading) -> None:
    if DELAY:
        await asyncio.sleep(DELAY)
    view[event.sensor] = fold_step(view.get(event.sensor), event)


@app.page("/state")
async def state(web, request):
    serving = [s.state == "serving" for s in sliding.status.values()]
    if not app.ready or not serving or not all(serving):
        return web.json({"ready": False}, status=503)
    sensors = [s for s in request.query.get("sensors", "").split(",") if s]
    return web.json(
        {
            "ready": True,
            "windows": {s: sliding.windows(s) for s in sensors},
            "generation": sliding.generation,
            "streamTime": max((sliding.stream_time(p) or 0 for p in sliding.stores), default=0),
            "stored": sum(
                1
                for p in sliding.stores
                for key, _ in sliding.stores[p].rows()
                if is_window_row(key)
            ),
        }
    )
