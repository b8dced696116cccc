"""What reading a topic costs the reading process, per record: Belvedere's KafkaReader
(record batches unpacked by aiokafka's C code, belvedere/streams/fetcher.py) against an
aiokafka consumer's ``getmany`` (a ``ConsumerRecord`` per record, in Python), the way
Belvedere's reader read before run E of docs/benchmarks.md.

The input: N of the projection bench's ``OrderPlaced`` envelopes (about 330 bytes each) in
a 6-partition topic, written once before the timed reads. Each variant reads all of it
``--rounds`` times; the figure is the median of the process's CPU time per record (both
threads: the reader works on a thread of its own), and the wall time. The CPU time is the
one that matters to a worker: the reader's Python holds the GIL the fold needs. Both are
measured twice: with Python's garbage collector settings, and with the worker's
(``belvedere.cli.tune_gc``), which change the figures more than the reader does.

Usage (from the repository root):

    python bench/reader_unpack.py [--kafka HOST:PORT] [--events N] [--rounds R] [--json PATH]

Without ``--kafka`` a private broker is started (ci/kafka/start.sh) and stopped after.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import harness  # noqa: E402
from bench.projection_throughput import make_events  # noqa: E402

PARTITIONS = 6


async def belvedere_reader(bootstrap: str, topic: str) -> AsyncIterator[int]:
    from faust.types import TP

    from belvedere.streams.readers import KafkaReader

    reader = KafkaReader(bootstrap)
    try:
        ranges = await reader.offsets([TP(topic, p) for p in range(PARTITIONS)])
        async for _, batch in reader.read(ranges):
            yield len(batch)
    finally:
        await reader.close()


async def aiokafka_consumer(bootstrap: str, topic: str) -> AsyncIterator[int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_bytes=4 << 20,
        max_partition_fetch_bytes=4 << 20, fetch_max_wait_ms=10,
    )  # fmt: skip
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        left = set(tps)
        while left:
            found = await consumer.getmany(*left, timeout_ms=1000, max_records=10_000)
            for records in found.values():
                yield len(records)
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
    finally:
        await consumer.stop()


VARIANTS: dict[str, Callable[[str, str], AsyncIterator[int]]] = {
    "belvedere-reader": belvedere_reader,
    "aiokafka-consumer": aiokafka_consumer,
}


async def measure(
    read: Callable[[str, str], AsyncIterator[int]], bootstrap: str, topic: str, n: int
) -> tuple[float, float]:
    cpu, wall, count = time.process_time(), time.perf_counter(), 0
    async for k in read(bootstrap, topic):
        count += k
    if count != n:
        raise harness.Failed(f"read {count:,} records, not {n:,}")
    return (time.process_time() - cpu) / n * 1e6, time.perf_counter() - wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kafka", metavar="HOST:PORT")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with harness.environment(args.kafka, ["reader-kafka"], keep=False) as env:
        if env.bootstrap is None:
            print(f"skipped: {env.kafka_problem}")
            return 1
        topic = f"bench-reader-{uuid.uuid4().hex[:8]}"
        events, _ = make_events(args.events, 1000)
        asyncio.run(harness.fill_kafka(env.bootstrap, topic, events, PARTITIONS))
        results: dict[str, Any] = {}
        for settings in ("python", "worker"):
            if settings == "worker":
                from belvedere.cli import tune_gc

                tune_gc()
            for name, read in VARIANTS.items():
                runs = [
                    asyncio.run(measure(read, env.bootstrap, topic, args.events))
                    for _ in range(args.rounds)
                ]
                cpu = statistics.median(c for c, _ in runs)
                wall = statistics.median(w for _, w in runs)
                results[f"{name}, {settings} gc"] = {
                    "cpu_us_per_record": round(cpu, 2),
                    "wall_s": round(wall, 3),
                    "records_per_s": round(args.events / wall),
                }
                print(
                    f"{name:18} {settings:6} gc: {cpu:5.2f} CPU-us per record, {wall:.3f} s "
                    f"wall ({args.events / wall:,.0f} records/s), median of {args.rounds}"
                )
        gc.unfreeze()
        harness.write_json(
            args.json,
            {
                "events": args.events,
                "rounds": args.rounds,
                "machine": harness.machine(),
                "commit": harness.commit(),
                "variants": results,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
