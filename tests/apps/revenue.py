"""The agents tests' app: the README's first example on the engine, and agents around it.

- ``total``: the README's example (``revenue[user] += order["amount"]``);
- ``count_amounts``: the same orders re-keyed by amount (``stream.group_by``);
- ``inspect``: ``stream.events()`` into ``seen``; raises on ``{"boom": true}``, writes
  the key ``{"write_to": ...}`` names (another partition's, for wrong-partition), and
  sends what it handled on to ``echoes`` (a real await inside the step);
- ``echoed``: ``async for value in stream``, no table (a progress view);
- ``legacy``: faust's path (``engine=False``), into a faust table.

Names come from the environment, so tests sharing one Kafka broker never share a topic.
"""

import os

import belvedere

NAME = os.environ["REVENUE_NAME"]

app = belvedere.App(NAME)

orders = app.topic(f"{NAME}-orders", key_type=str, partitions=4)
revenue = app.Table("revenue", default=float, partitions=4)


@app.agent(orders)
async def total(stream):
    async for user, order in stream.items():
        revenue[user] += order["amount"]


orders_by_amount = app.Table("orders-by-amount", default=int, partitions=2)


@app.agent(orders)
async def count_amounts(stream):
    async for order in stream.group_by(lambda order: str(order["amount"]), name="amount"):
        orders_by_amount[str(order["amount"])] += 1


audit = app.topic(f"{NAME}-audit", key_type=str, partitions=2)
echoes = app.topic(f"{NAME}-echoes", key_type=str, partitions=2)
legacy_topic = app.topic(f"{NAME}-legacy", key_type=str, partitions=2)
seen = app.Table("seen", default=dict, partitions=2)
legacy_counts = app.Table("legacy-counts", default=int, partitions=2, engine=False)
echoed_values: list = []


@app.agent(audit)
async def inspect(stream):
    async for event in stream.events():
        if event.value.get("boom"):
            raise ValueError("boom")
        key = event.value.get("write_to", event.key)
        row = seen[key]
        seen[key] = {
            "n": row.get("n", 0) + 1,
            "partition": event.message.partition,
            "offset": event.message.offset,
            "current": stream.current_event.message.offset,
        }
        await echoes.send(key=event.key, value=event.value)


@app.agent(echoes)
async def echoed(stream):
    async for value in stream:
        echoed_values.append(value)


@app.agent(legacy_topic, engine=False)
async def legacy(stream):
    async for key, _ in stream.items():
        legacy_counts[key] += 1


@app.page("/state")
async def state(web, request):
    return web.json(
        {
            "ready": app.ready,
            "echoed": echoed_values,
            "legacy": dict(legacy_counts.items()),
            "deadLetters": {
                f"{topic}:{kind}": n for (topic, kind), n in app.dead_letters.counts.items()
            },
        }
    )
