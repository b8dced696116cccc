"""The app of the HTTP tests of windows: clicks per URL per minute, by the click's own time.

``clicks`` is a windowed view (tumbling minutes); its grace outlasts the tests' spread of
click times, so no click is late and no window expires while they read. ``pages`` is a
plain view, for the refusals.
"""

import os
from datetime import timedelta

import belvedere

NAME = os.environ["WINDOWED_NAME"]

app = belvedere.App(NAME, checkpoint_interval=0.2)


class Clicked(belvedere.Event, key="url"):
    url: str
    at_ms: int


clicked = app.event_topic(f"{NAME}-clicks", Clicked, partitions=4, http_publish=True)
MINUTE = belvedere.Tumbling(
    minutes=1, grace=timedelta(minutes=10), time=lambda event: event.at_ms / 1000
)
clicks = app.view("clicks", value=int, key=str, window=MINUTE)
pages = app.view("pages", value=int, key=str)


@app.projection(clicked, view=clicks)
def count(view, event: Clicked) -> None:
    view[event.url] = view.get(event.url, 0) + 1


@app.projection(clicked, view=pages)
def total(view, event: Clicked) -> None:
    view[event.url] = view.get(event.url, 0) + 1
