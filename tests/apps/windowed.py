"""The app of the HTTP tests of windows: clicks per URL per minute, by the click's own time.

``clicks`` stores its rows as a windowed view does (tests/support/windowed.py, until
``app.view`` declares windowed views), and beside them, as a windowed view keeps its stream
time, a row that is no window's; ``pages`` is a plain view, for the refusals.
"""

import os

import belvedere
from tests.support.windowed import Tumbling, WindowedRows

NAME = os.environ["WINDOWED_NAME"]

app = belvedere.App(NAME, checkpoint_interval=0.2)


class Clicked(belvedere.Event, key="url"):
    url: str
    at_ms: int


clicked = app.event_topic(f"{NAME}-clicks", Clicked, partitions=4, http_publish=True)
MINUTE = Tumbling(60_000)
clicks = app._declare_view(WindowedRows(app.conf.id, "clicks", int, str, MINUTE))
pages = app.view("pages", value=int, key=str)


@app.projection(clicked, view=clicks)
def count(view, event: Clicked) -> None:
    start, end = MINUTE.bounds(event.at_ms)
    view[(event.url, start, end)] = view.get((event.url, start, end), 0) + 1
    view.put_local("stream-time", max(view.get("stream-time", 0), event.at_ms))


@app.projection(clicked, view=pages)
def total(view, event: Clicked) -> None:
    view[event.url] = view.get(event.url, 0) + 1
