"""The reactor tests' app: a concurrent reactor over jobs, and a projection on the same
topic to show it is not held up.

Each handled job is appended to ``REACTORS_LOG`` (one JSON line: key, seq, offset,
idempotency key, attempt), so what a killed worker did survives it. A job with ``meet``
waits until that key's job has started (two keys that wait on each other only finish if
they run at once); one with ``block`` waits until ``/release``; one with ``fail`` raises;
one with ``publish`` publishes a JobDone, kept in the ``published`` view.
"""

import asyncio
import os
from collections import defaultdict

import faust.web
import orjson

import belvedere

NAME = os.environ["REACTORS_NAME"]
LOG = os.environ["REACTORS_LOG"]
PARTITIONS = int(os.environ.get("REACTORS_PARTITIONS", "2"))
#: Seconds a job takes (the kill -9 test's: long enough for a kill to land mid-way).
DELAY = float(os.environ.get("REACTORS_DELAY", "0"))

app = belvedere.App(NAME, checkpoint_interval=0.2)


class Job(belvedere.Event, key="key"):
    key: str
    seq: int
    meet: str = ""
    block: bool = False
    fail: bool = False
    publish: bool = False


class JobDone(belvedere.Event, key="job"):
    job: str


jobs = app.event_topic(f"{NAME}-jobs", Job, partitions=PARTITIONS)
done = app.event_topic(f"{NAME}-done", JobDone, partitions=1)
counts = app.view("counts", value=int, key=str)
#: Each JobDone's envelope: what a concurrent reactor publishes continues its event's flow.
published = app.view("published", value=dict)


@app.projection(done, view=published)
def on_done(view, event: JobDone) -> None:
    meta = event.meta
    view[event.job] = {
        "eventId": meta.event_id,
        "correlationId": meta.correlation_id,
        "causationId": meta.causation_id,
    }


started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
released = asyncio.Event()
failed: list[int] = []  # the attempt numbers of failing jobs
cancelled: list[str] = []  # the jobs in flight when their partition was given up
log = open(LOG, "ab", buffering=0)  # noqa: SIM115 - for the worker's life


@app.projection(jobs, view=counts)
def count(view, event: Job) -> None:
    view[event.key] = view.get(event.key, 0) + 1


@app.reactor(
    Job, concurrency=4, retries=1, drain_timeout=float(os.environ.get("REACTORS_DRAIN", 10))
)
async def work(event: Job, ctx: belvedere.ReactorContext) -> None:
    started[event.key].set()
    if event.meet:
        await started[event.meet].wait()
    if event.block:
        try:
            await released.wait()
        except asyncio.CancelledError:
            cancelled.append(event.meta.event_id)
            raise
    if event.fail:
        failed.append(ctx.attempt)
        raise ValueError(f"job {event.key}/{event.seq} refused")
    for _ in range(event.seq % 4):  # let other lanes run in between
        await asyncio.sleep(0)
    if event.publish:
        await done.publish(JobDone(job=event.meta.event_id), event_id=ctx.idempotency_key)
    if DELAY:  # every tenth job ten times as long: some span checkpoints
        await asyncio.sleep(DELAY * (10 if event.seq % 10 == 0 else 1))
    line = {
        "key": event.key,
        "seq": event.seq,
        "offset": ctx.offset,
        "partition": ctx.partition,
        "eventId": event.meta.event_id,
        "idempotencyKey": ctx.idempotency_key,
        "pid": os.getpid(),
        "attempt": ctx.attempt,
    }
    log.write(orjson.dumps(line) + b"\n")


def progress() -> dict[int, dict[str, int]]:
    """Per partition of the jobs: the next offset the reactor takes, the one its last
    checkpoint stored, and the events taken since."""
    found = {}
    for (view, tp), part in app.engine.partitions.active.items():
        if view == "reactor-work":
            stored = part.status.positions.get((tp.topic, tp.partition), 0)
            found[tp.partition] = {"next": part.next_offset, "stored": stored, "dirty": part.dirty}
    return found


@app.page("/state")
async def state(web, request):
    return web.json(
        {
            "ready": app.ready,
            "progress": progress(),
            "failed": failed,
            "cancelled": cancelled,
            "deadLetters": {
                f"{topic}:{kind}": n for (topic, kind), n in app.dead_letters.counts.items()
            },
        }
    )


@app.page("/release")
async def release(web, request):
    released.set()
    return web.json({"released": True})


@app.page("/produce")
class Produce(faust.web.View):
    """Appends ``[[key, envelope], ...]`` to the jobs topic: on the embedded broker, while
    the worker runs, nothing else can."""

    async def post(self, request):
        topic = jobs.get_topic_name()
        futures = [
            await app.producer.send(topic, key.encode(), orjson.dumps(value), None, None, None)
            for key, value in orjson.loads(await request.read())
        ]
        await asyncio.gather(*futures)
        return self.json({"produced": len(futures)})
