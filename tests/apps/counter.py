"""The app the broker tests run as a worker: it folds keyed, numbered events into tables.

It runs on faust's per-event path on purpose (``engine=False``): the broker tests check the
transports under faust's consumer, agents and RocksDB tables (tests/apps/revenue.py is the
same kind of app on the engine).

Each event is ``{"seq": n}``, numbered from 0 per key. The fold keeps, per key, the count,
the last seq and how many events arrived out of order (or twice), so order and
exactly-once-per-commit can be checked from the outside. Names come from the environment,
so tests sharing one Kafka broker never share a topic or a consumer group.
"""

import os

import belvedere

NAME = os.environ["COUNTER_NAME"]
PARTITIONS = int(os.environ.get("COUNTER_PARTITIONS", "4"))

app = belvedere.App(NAME)

events = app.topic(
    f"{NAME}-events",
    partitions=PARTITIONS,
    key_type=str,
    key_serializer="raw",
    value_serializer="json",
)
singles = app.topic(
    f"{NAME}-singles", partitions=1, key_type=str, key_serializer="raw", value_serializer="json"
)

folds = app.Table("folds", partitions=PARTITIONS, engine=False)
single_counts = app.Table("single-counts", default=int, partitions=1, engine=False)

processed = 0


@app.agent(events, engine=False)
async def fold(stream):
    global processed
    async for key, event in stream.items():
        current = folds.get(key) or {"count": 0, "last": -1, "disorder": 0}
        in_order = event["seq"] == current["last"] + 1
        folds[key] = {
            "count": current["count"] + 1,
            "last": event["seq"],
            "disorder": current["disorder"] + (0 if in_order else 1),
        }
        processed += 1


@app.agent(singles, engine=False)
async def count_singles(stream):
    global processed
    async for key, _event in stream.items():
        single_counts[key] += 1
        processed += 1


@app.page("/state")
async def state(web, request):
    return web.json(
        {
            "ready": app.ready,
            "processed": processed,
            "folds": dict(folds.items()),
            "singles": dict(single_counts.items()),
            "deadLetters": {
                f"{topic}:{kind}": n for (topic, kind), n in app.dead_letters.counts.items()
            },
        }
    )
