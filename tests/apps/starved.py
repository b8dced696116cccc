"""An app whose faust agent (``engine=False``) reads the same topic as a projection: it
would get no events."""

import belvedere

app = belvedere.App("starved")


class Seen(belvedere.Event, key="id"):
    id: str


seen = app.event_topic("starved-seen", Seen, partitions=1)
latest = app.view("latest", value=str)


@app.projection(seen, view=latest)
def on_seen(view, event: Seen) -> None:
    view[event.id] = event.id


@app.agent(seen, engine=False)
async def also_reads(stream):
    async for _ in stream:
        pass
