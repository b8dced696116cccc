"""Transforms under kill -9, on both brokers: a chain filter -> rekey -> projection and a
branch, each output once (counted by eventId, read committed on Kafka), the view exact."""

from __future__ import annotations

from collections.abc import Callable

from tests.support.brokers import Broker
from tests.support.flows import check_outputs, dead_letters, flows_worker, orders
from tests.support.worker import Worker

EVENTS = 3_000
#: Orders ``receipt`` has handled (checkpointed) when each kill -9 lands.
KILLS_AT = (400, 1_200, 2_000)


def test_transforms_after_kill_9s_send_each_output_once_and_fold_exactly(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    worker = flows_worker(broker, workers, unique_name, FLOWS_SLOW="0.002")
    expected = orders(unique_name, EVENTS, seed=7)
    broker.produce(f"{unique_name}-orders", expected.records)
    seen = []
    for at in KILLS_AT:
        worker.start()
        state = worker.wait_until(
            "/state",
            lambda s, at=at: s["ready"] and s["handled"]["receipt"] >= at,
            timeout=60,
            what=f"{at} orders handled",
        )
        worker.kill()
        seen.append(state["handled"]["receipt"])
    assert seen[-1] < expected.handled["receipt"], f"every kill must land mid-stream: {seen}"

    worker.start()
    state = worker.wait_until(
        "/state",
        lambda s: (
            s["ready"] and s["handled"] == expected.handled and s["totals"] == expected.totals
        ),
        timeout=90,
        what=f"every order through every transform after kills at {seen}",
    )
    assert worker.stop() == 0

    check_outputs(broker, unique_name, unique_name, expected)
    letters = dead_letters(broker, unique_name, unique_name)  # at least once: repeats allowed
    assert {reason.split(":")[0] for _, reason in letters} == {"receipt", "region"}
