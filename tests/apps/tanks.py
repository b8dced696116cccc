"""The containment tests' app: state that grows past what the store can hold.

A tank's level (an aggregate) and each tank's total (a projection of ``readings``) are sums
of 64-bit quantities, so three of the largest overflow what orjson can encode; a projection into an
untyped view stores a set (no JSON form) for a tag named ``set``, and its handler raises
for a tag named ``boom``; a saga starts on each fill. Every such event must be dead-lettered alone, the rest folded, and the worker stay up.
"""

from __future__ import annotations

import os

import belvedere

NAME = os.environ["TANKS_NAME"]

app = belvedere.App(NAME)


class Filled(belvedere.Event, key="tank"):
    tank: str
    qty: int


class Tagged(belvedere.Event, key="tank"):
    tank: str
    tag: str


class Fill(belvedere.Command, key="tank"):
    tank: str
    qty: int


class Log(belvedere.Command, key="tank"):
    tank: str
    qty: int


class Logged(belvedere.Event, key="tank"):
    tank: str


class Tank(belvedere.Aggregate):
    level: int = 0

    def on_filled(self, event: Filled) -> None:
        self.level += event.qty


events = app.event_topic(f"{NAME}-tank-events", Filled, partitions=2)
commands = app.event_topic(f"{NAME}-tank-commands", Fill, partitions=2)
app.aggregate(Tank, events=events, commands=commands)


@app.command_handler(Tank)
def fill(tank: Tank, command: Fill) -> Filled:
    return Filled(tank=tank.id, qty=command.qty)


log_commands = app.event_topic(f"{NAME}-log-commands", Log, partitions=2)
log_events = app.event_topic(f"{NAME}-log-events", Logged, partitions=2)


class Logbook(belvedere.Aggregate):
    entries: int = 0

    def on_logged(self, event: Logged) -> None:
        self.entries += 1


app.aggregate(Logbook, events=log_events, commands=log_commands)


@app.command_handler(Logbook)
def log(book: Logbook, command: Log) -> Logged:
    return Logged(tank=book.id)


app.saga(  # declared before readings, which carry Filled too
    "fill-log",
    start=Filled,
    steps=[
        belvedere.Step(
            "log",
            command=lambda s: Log(tank=s.start.tank, qty=s.start.qty),
            done=Logged,
        )
    ],
)


readings = app.event_topic(f"{NAME}-readings", Filled, Tagged, partitions=2)
totals = app.view("totals", value=dict)


@app.projection(readings, view=totals)
class Totals:
    def filled(self, view, event: Filled) -> None:
        row = view.get(event.tank) or {"total": 0, "fills": 0, "tags": []}
        view[event.tank] = {**row, "total": row["total"] + event.qty, "fills": row["fills"] + 1}

    def tagged(self, view, event: Tagged) -> None:
        if event.tag == "boom":
            raise ValueError(f"no tank may be tagged {event.tag!r}")  # the user's own error
        row = view.get(event.tank) or {"total": 0, "fills": 0, "tags": []}
        tag = {event.tag} if event.tag == "set" else event.tag  # a set has no JSON form
        view[event.tank] = {**row, "tags": [*row["tags"], tag]}


@app.page("/state")
async def state(web, request):
    counts = {f"{topic}:{kind}": n for (topic, kind), n in app.dead_letters.counts.items()}
    return web.json({"ready": app.ready, "deadLetters": counts})
