"""An app with views and no standby replicas: faust would then use Kafka's round-robin
assignor, which shares no partition map, so views could not be routed to."""

import belvedere

app = belvedere.App("no-standbys", table_standby_replicas=0)


class Seen(belvedere.Event, key="id"):
    id: str


seen = app.event_topic("no-standbys-seen", Seen, partitions=1)
latest = app.view("latest", value=str)


@app.projection(seen, view=latest)
def on_seen(view, event: Seen) -> None:
    view[event.id] = event.id
