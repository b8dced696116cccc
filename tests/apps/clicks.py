"""The windows tests' app: clicks counted per URL in windows of event time.

- ``per-minute``: tumbling minutes, by the envelope's timestamp, 30 s of grace, late
  events dead-lettered, windows kept 10 minutes, each window's count sent to
  ``<name>-minutes-final`` once it closes;
- ``per-two-minutes``: hopping 2-minute windows every minute, by the ``at`` field (seconds),
  no grace, late events counted; kept 4 minutes; an async handler, slowed down by
  ``CLICKS_DELAY`` seconds per window (so a test can kill it mid-stream);
- ``visits``: sessions of 20 s of inactivity, merged by adding their counts, by the
  envelope's timestamp, 10 s of grace, late events counted; kept 10 minutes.

``/state`` answers every window of every URL the test asks about, read through the view's
own local reads. Names come from the environment, so tests sharing one Kafka broker never
share a topic.
"""

import asyncio
import operator
import os
from datetime import timedelta

import belvedere

NAME = os.environ["CLICKS_NAME"]
PARTITIONS = 2

app = belvedere.App(NAME, checkpoint_events=200, checkpoint_interval=0.2)


class Clicked(belvedere.Event, key="url"):
    url: str
    at: float


clicks = app.event_topic(f"{NAME}-clicks", Clicked, partitions=PARTITIONS, http_publish=True)

minutes_final = app.topic(f"{NAME}-minutes-final", partitions=PARTITIONS, key_type=str)
per_minute = app.view(
    "per-minute",
    value=int,
    window=belvedere.Tumbling(
        minutes=1,
        grace=timedelta(seconds=30),
        retention=timedelta(minutes=10),
        final_to=minutes_final,
    ),
)
per_two_minutes = app.view(
    "per-two-minutes",
    value=int,
    window=belvedere.Hopping(
        timedelta(minutes=2),
        timedelta(minutes=1),
        time="at",
        on_late="count",
        retention=timedelta(minutes=4),
    ),
)


visits = app.view(
    "visits",
    value=int,
    window=belvedere.Session(
        seconds=20,
        merge=operator.add,
        grace=timedelta(seconds=10),
        retention=timedelta(minutes=10),
        on_late="count",
    ),
)


@app.projection(clicks, view=visits)
def visit(view, event: Clicked) -> None:
    view[event.url] = view.get(event.url, 0) + 1


@app.projection(clicks, view=per_minute)
def count(view, event: Clicked) -> None:
    view[event.url] = view.get(event.url, 0) + 1


#: Seconds the hopping handler waits per window: slow enough for a test to kill it mid-way.
DELAY = float(os.environ.get("CLICKS_DELAY", "0"))


@app.projection(clicks, view=per_two_minutes)
async def count_hopping(view, event: Clicked) -> None:
    if DELAY:
        await asyncio.sleep(DELAY)
    view[event.url] = view.get(event.url, 0) + 1


def _stored(view) -> int:
    return sum(1 for p in view.stores for key, _ in view.stores[p].rows() if len(key) >= 17)


@app.page("/state")
async def state(web, request):
    serving = [s.state == "serving" for v in app.views.values() for s in v.status.values()]
    if not app.ready or not all(serving):
        return web.json({"ready": False}, status=503)
    urls = request.query.get("urls", "").split(",")
    return web.json(
        {
            "ready": True,
            "minutes": {u: per_minute.windows(u) for u in urls if u},
            "hopping": {u: per_two_minutes.windows(u) for u in urls if u},
            "sessions": {u: visits.windows(u) for u in urls if u},
            "sessionsLate": visits.late_count(),
            "late": per_two_minutes.late_count(),
            "generation": per_minute.generation,
            "deadLetters": app.dead_letters.total,
            "stored": {
                "minutes": _stored(per_minute),
                "hopping": _stored(per_two_minutes),
                "sessions": _stored(visits),
            },
            "hoppingStreamTime": max(
                (per_two_minutes.stream_time(p) or 0 for p in per_two_minutes.stores), default=0
            ),
        }
    )
