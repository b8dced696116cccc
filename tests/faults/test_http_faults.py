"""The HTTP layer under faults and abuse, on real Kafka: workers scaling out and in under a
read load, slow and greedy clients, and the admin token."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

from tests.support.brokers import Broker
from tests.support.http import call
from tests.support.load import ReadLoad
from tests.support.worker import Worker, wait_for
from tests.test_projections import movements
from tests.test_views_api import scan_all

pytestmark = pytest.mark.kafka

APP = "tests.apps.ledger:app"


def ready(worker: Worker) -> dict:
    return worker.wait_until("/state", lambda s: s["ready"], what="every view serving")


def owned(worker: Worker) -> set[str]:
    parts = worker.get("/partitions") or {}
    active = parts.get("balances", {}).get("active", {})
    return {p for p, s in active.items() if s["state"] == "serving"}


def test_scaling_out_and_in_under_a_read_load_answers_200_404_or_503_and_loses_nothing(
    kafka: Broker, spawn: Callable[..., Worker], unique_name: str
) -> None:
    kafka.create_ledger_topics(unique_name)
    records, fold = movements(12_000, accounts=300, seed=61)
    env = {"LEDGER_NAME": unique_name}
    a = spawn(APP, kafka.url, env, "a").start()
    ready(a)
    rotation = [a]  # what the load balancer sends reads to
    paths = [f"/views/balances/{k}" for k in sorted(fold)]
    paths += [f"/views/balances/no-{i}" for i in range(30)]
    load = ReadLoad(lambda: [w.url for w in rotation], paths, rate=120, seed=62)
    load.start()
    chunks = [records[i : i + 1000] for i in range(0, len(records), 1000)]
    for chunk in chunks[:3]:
        kafka.produce(f"{unique_name}-movements", chunk)

    # Scale out twice mid-stream: b takes two of a's four, then c one of theirs (faust's
    # own assignor left c none: belvedere.streams.assignor).
    for name, batch in (("b", chunks[3:6]), ("c", chunks[6:8])):
        joined = spawn(APP, kafka.url, env, name).start()
        ready(joined)
        rotation.append(joined)
        for chunk in batch:
            kafka.produce(f"{unique_name}-movements", chunk)
    b, c = rotation[1:]
    wait_for(
        lambda: owned(b) and owned(c), timeout=120, what="both joined workers taking partitions"
    )

    stopping_at = time.monotonic()  # scale in: a leaves while still in the rotation
    assert a.stop() == 0
    rotation.remove(a)
    for chunk in chunks[8:]:
        kafka.produce(f"{unique_name}-movements", chunk)
    wait_for(
        lambda: owned(b) | owned(c) == {"0", "1", "2", "3"},
        timeout=120,
        what="b and c owning every partition",
    )

    seen: list[dict] = []

    def folded() -> bool:
        rows, _ = scan_all(f"{b.url}/views/balances", 500)
        seen[:] = [dict(rows)]
        return dict(rows) == fold

    try:
        wait_for(folded, timeout=180, what="the view equal to the fold after scaling out and in")
    except AssertionError as exc:
        have = seen[0] if seen else {}
        wrong = {k: (have.get(k), v) for k, v in fold.items() if have.get(k) != v}
        parts = {w.url: w.get("/partitions") for w in (b, c)}
        raise AssertionError(
            f"{exc}\n{len(wrong)} rows differ (have, fold), e.g. {list(wrong.items())[:5]}\n"
            f"partitions: {parts}\n--- b ---\n{b.log_tail(30)}\n--- c ---\n{c.log_tail(30)}"
        ) from None
    outcomes = load.stop()

    counts = load.counts()
    assert len(outcomes) > 200, counts  # reads went on throughout (120/s; the run can be short)
    odd = [o for o in outcomes if o.status not in (200, 404, 503) and o.failure != "refused"]
    assert not odd, (counts, odd[:5])
    unanswered_503 = [o for o in outcomes if o.status == 503 and not o.retry_after]
    assert not unanswered_503, unanswered_503[:3]
    # Refused: only by the leaving worker, once its stop began. The refusal comes when it
    # comes (at + latency); a busy test process may stamp the request a moment earlier.
    refused = [o for o in outcomes if o.failure == "refused"]
    early = [o for o in refused if not o.url.startswith(a.url) or o.at + o.latency < stopping_at]
    assert not early, (f"a: {a.url}, stop began at {stopping_at:.3f}", early[:3])
    assert counts[200] > 0 and counts[503] < len(outcomes) / 2, counts
    assert not [o for o in outcomes if "/no-" in o.url and o.status == 200]  # never made up
    print(f"scaling: {len(records):,} events, reads by outcome {dict(counts)}")
    # Afterwards both survivors answer every key (a forward for what the other owns).
    for worker in (b, c):
        answers = [call(f"{worker.url}/views/balances/{k}") for k in sorted(fold)]
        assert {x.status for x in answers} == {200}, worker.url
        assert {k: x.body for k, x in zip(sorted(fold), answers, strict=True)} == fold


def test_slow_clients_huge_bodies_and_many_idle_connections_leave_the_worker_serving_others(
    kafka: Broker, spawn: Callable[..., Worker], unique_name: str
) -> None:
    kafka.create_ledger_topics(unique_name)
    records, fold = movements(1_000, accounts=50, seed=71)
    kafka.produce(f"{unique_name}-movements", records)
    worker = spawn(APP, kafka.url, {"LEDGER_NAME": unique_name}).start()
    ready(worker)
    wait_for(
        lambda: dict(scan_all(f"{worker.url}/views/balances", 500)[0]) == fold,
        timeout=90,
        what="every event folded",
    )
    host, port = "127.0.0.1", worker.port
    done = threading.Event()

    idle = [socket.create_connection((host, port), timeout=10) for _ in range(300)]

    def slowloris(sock: socket.socket) -> None:  # a request's head, a byte at a time
        head = b"GET /views/balances/acct-1 HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 500
        for byte in head:
            if done.wait(0.05):
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return

    slow = [socket.create_connection((host, port), timeout=10) for _ in range(20)]
    slow_threads = [threading.Thread(target=slowloris, args=(s,), daemon=True) for s in slow]
    for thread in slow_threads:
        thread.start()

    huge: dict[str, object] = {}

    def post_huge() -> None:  # 64 MiB of JSON array, sent as fast as the worker takes it
        huge["answer"] = call(
            f"{worker.url}/events/{unique_name}-movements",
            "POST",
            b"[" + b"1," * (32 << 20) + b"1]",
        )

    poster = threading.Thread(target=post_huge, daemon=True)
    poster.start()

    keys = [f"/views/balances/{k}" for k in sorted(fold)]
    load = ReadLoad(lambda: [worker.url], keys, rate=100, seed=72, timeout=5)
    load.start()
    wait_for(lambda: len(load.outcomes) >= 800, timeout=60, what="800 reads beside the abuse")
    outcomes = load.stop()
    done.set()
    poster.join(60)
    for sock in idle + slow:
        sock.close()

    assert {o.status for o in outcomes} == {200}, load.counts()
    latencies = sorted(o.latency for o in outcomes)  # reported; bench/ bounds latency
    answer = huge["answer"]
    assert answer.status == 413, answer.raw[:300]  # type: ignore[attr-defined]
    assert answer.body["error"], answer.raw[:300]  # type: ignore[attr-defined]
    assert worker.get("/state")["ready"]
    print(
        f"abuse: {len(outcomes)} reads all 200, p99 {latencies[int(0.99 * len(latencies))] * 1000:.1f}"
        f" ms, beside 300 idle connections, 20 slowloris heads and a 64 MiB POST ({answer.status})"  # type: ignore[attr-defined]
    )


def test_admin_endpoints_refuse_a_missing_or_wrong_token_and_tokens_are_never_logged(
    kafka: Broker, spawn: Callable[..., Worker], unique_name: str
) -> None:
    kafka.create_ledger_topics(unique_name)
    admin, api, wrong = "adm-7f3c9e1a", "api-52d1b0c4", "not-it-e93a"
    env = {"LEDGER_NAME": unique_name, "BELVEDERE_ADMIN_TOKEN": admin, "BELVEDERE_API_TOKEN": api}
    worker = spawn(APP, kafka.url, env).start()
    wait_for(
        lambda: call(f"{worker.url}/ready").status == 200, timeout=90, what="every view serving"
    )
    rebuild = f"{worker.url}/views/balances/rebuild"

    missing = call(rebuild, "POST", {})
    assert missing.status == 401 and missing.body["error"], missing.raw
    refused = call(rebuild, "POST", {}, headers={"Authorization": f"Bearer {wrong}"})
    assert refused.status == 403 and refused.body["error"], refused.raw
    as_api = call(rebuild, "POST", {}, headers={"Authorization": f"Bearer {api}"})
    assert as_api.status == 403, as_api.raw
    accepted = call(rebuild, "POST", {}, headers={"Authorization": f"Bearer {admin}"})
    assert accepted.status == 202, accepted.raw
    read = call(f"{worker.url}/views/balances/x", headers={"Authorization": f"Bearer {api}"})
    assert read.status == 404, read.raw

    pages = [
        call(worker.url + p, headers={"Authorization": f"Bearer {api}"})
        for p in ("/", "/state", "/health", "/metrics")
    ]
    shown = b"".join(p.raw for p in pages) + worker.logfile.read_bytes()
    for secret in (admin, api, wrong):
        assert secret.encode() not in shown, secret
