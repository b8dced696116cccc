"""Security of the Kafka transport, on a real broker whose one client listener is SASL_SSL.

The broker (ci/kafka with sasl-ssl.properties) is started once for the module, with a CA and
a server certificate made here with openssl, and one user who logs in with SCRAM-SHA-512 or
PLAIN. Workers are real ``belvedere worker`` processes given ``--broker-ssl-cafile`` and
``--broker-sasl-mechanism`` and the credentials in their environment. The password is new
for each run, so finding it anywhere it should not be is a real leak.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError

from belvedere.streams.clients import KafkaClient, NewRecord
from tests.support.brokers import Broker
from tests.support.kafka import (
    KafkaStartFailed,
    SecuredKafka,
    kafka_unavailable,
    make_tls,
    missing_tools,
    private_secured_kafka,
)
from tests.support.worker import Worker, run_cli, wait_for
from tests.test_projections import movements, total_ops

pytestmark = pytest.mark.kafka

USER = "alice"
PASSWORD = f"pw-{secrets.token_hex(12)}"
EVENTS = 2_000
#: What a refused worker may take to say so and exit: the probe waits 5 s at the most.
REFUSAL_DEADLINE = 30
STATUS_PATHS = ("/", "/health", "/ready", "/metrics", "/views", "/openapi.json")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    missing = missing_tools("openssl")
    if missing:
        kafka_unavailable(missing)
    try:
        with private_secured_kafka(tmp_path_factory.mktemp("kafka"), USER, PASSWORD) as kafka:
            yield kafka
    except KafkaStartFailed as exc:
        kafka_unavailable(f"starting it with SASL_SSL failed: {exc}")


@pytest.fixture
def spawn(secured: SecuredKafka, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Make (not start) ledger workers on the secured broker; all are killed at the end."""
    made: list[Worker] = []

    def make(
        name: str,
        mechanism: str | None = "SCRAM-SHA-512",
        password: str = PASSWORD,
        cafile: Path | None = None,
        data_dir: str = "data",
        loglevel: str = "info",
    ) -> Worker:
        args = ["--loglevel", loglevel]
        env = {"LEDGER_NAME": name}
        if mechanism is not None:
            args += ["--broker-ssl-cafile", str(cafile or secured.cafile)]
            args += ["--broker-sasl-mechanism", mechanism]
            env |= {"BELVEDERE_BROKER_USERNAME": USER, "BELVEDERE_BROKER_PASSWORD": password}
        worker = Worker(
            "tests.apps.ledger:app",
            broker_url=secured.url,
            data_dir=tmp_path / data_dir,
            env=env,
            args=args,
        )
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.kill()


def ledger(secured: SecuredKafka, name: str, mechanism: str, events: list[NewRecord]) -> Broker:
    """The ledger's topics, created, and ``events`` produced, over ``mechanism``."""
    broker = Broker("kafka", KafkaClient(secured.bootstrap, secured.security(mechanism)))
    broker.create_ledger_topics(name)
    broker.produce(f"{name}-movements", events)
    return broker


def refusal(worker: Worker) -> list[str]:
    """The lines a worker printed before it exited with the status of a usage error."""
    proc = worker.proc
    assert proc is not None
    wait_for(lambda: proc.poll() is not None, timeout=REFUSAL_DEADLINE, what="the worker to exit")
    assert proc.returncode == 2
    return [line for line in worker.logfile.read_text().splitlines() if line.strip()]


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_a_worker_over_scram_sha_512_and_tls_projects_events_and_serves_them(
    secured: SecuredKafka, spawn: Callable[..., Worker], unique_name: str
) -> None:
    records, fold = movements(EVENTS)
    ledger(secured, unique_name, "SCRAM-SHA-512", records)
    worker = spawn(unique_name)
    worker.args.append("--verbose")  # aiokafka says who logged in at INFO
    worker.start()
    state = worker.wait_until(
        "/state", lambda s: s["ready"] and total_ops(s) == EVENTS, what="the events folded"
    )
    assert state["rows"] == fold
    key = next(iter(fold))
    assert worker.get(f"/views/balances/{key}") == fold[key]
    assert "Authenticated as alice via SCRAM-SHA-512" in worker.logfile.read_text()


def test_plain_over_tls_a_fresh_worker_restores_the_views_and_the_cli_lists_dead_letters(
    secured: SecuredKafka, spawn: Callable[..., Worker], unique_name: str
) -> None:
    records, fold = movements(EVENTS, seed=2)
    records.append(NewRecord(b"acct-x", b'{"not": "an envelope"}', 0))  # a dead letter
    ledger(secured, unique_name, "PLAIN", records)
    first = spawn(unique_name, "PLAIN", data_dir="first").start()
    first.wait_until("/state", lambda s: s["ready"] and total_ops(s) == EVENTS, what="the fold")
    assert first.stop() == 0
    second = spawn(unique_name, "PLAIN", data_dir="second").start()  # no local state
    state = second.wait_until("/state", lambda s: s["ready"], what="the views restored")
    assert state["rows"] == fold
    restored = second.get("/partitions")["balances"]["active"]
    assert sum(p["restoreTotal"] for p in restored.values()) > 0
    assert state["calls"]["balances"] == 0, "restored from the changelogs, not refolded"

    listing = run_cli(
        "dlq", "list", "tests.apps.ledger:app", f"{unique_name}-movements",
        "--broker", secured.url, "--broker-ssl-cafile", str(secured.cafile),
        "--broker-sasl-mechanism", "PLAIN",
        env={"LEDGER_NAME": unique_name, "BELVEDERE_BROKER_USERNAME": USER,
             "BELVEDERE_BROKER_PASSWORD": PASSWORD},
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert "1 dead letter(s)" in listing.stdout


def test_a_worker_with_a_wrong_password_exits_with_one_line_saying_so(
    secured: SecuredKafka, spawn: Callable[..., Worker], unique_name: str
) -> None:
    wrong = f"wrong-{secrets.token_hex(8)}"
    began = time.monotonic()
    lines = refusal(spawn(unique_name, password=wrong).start())
    assert lines == [
        f"belvedere: the Kafka broker at {secured.bootstrap} refused the credentials of user "
        "'alice' (SASL SCRAM-SHA-512): authentication failed"
    ]
    assert time.monotonic() - began < REFUSAL_DEADLINE
    assert wrong not in "\n".join(lines) and PASSWORD not in "\n".join(lines)


def test_plaintext_clients_are_refused(
    secured: SecuredKafka, spawn: Callable[..., Worker], unique_name: str
) -> None:
    async def plaintext_consumer() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=secured.bootstrap, request_timeout_ms=5000)
        try:
            async with asyncio.timeout(15):
                await consumer.start()
        finally:
            await consumer.stop()

    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        asyncio.run(plaintext_consumer())

    lines = refusal(spawn(unique_name, mechanism=None).start())
    assert lines == [
        f"belvedere: the Kafka broker at {secured.bootstrap} closed the connection (plaintext): "
        "it may expect TLS: give its CA with --broker-ssl-cafile"
    ]


def test_a_worker_that_does_not_trust_the_brokers_certificate_exits_with_one_line(
    secured: SecuredKafka, spawn: Callable[..., Worker], unique_name: str, tmp_path: Path
) -> None:
    other = make_tls(tmp_path / "other", "other CA") / "ca.pem"
    lines = refusal(spawn(unique_name, cafile=other).start())
    assert lines == [
        f"belvedere: the Kafka broker at {secured.bootstrap} presented a TLS certificate that "
        f"{other} does not vouch for: unable to get local issuer certificate"
    ]


def test_the_password_appears_in_no_worker_log_and_no_status_answer(
    secured: SecuredKafka, spawn: Callable[..., Worker], unique_name: str
) -> None:
    # PLAIN sends the password as it is, and at debug level aiokafka logs every request.
    ledger(secured, unique_name, "PLAIN", movements(100)[0])
    worker = spawn(unique_name, "PLAIN", loglevel="debug").start()
    worker.wait_until("/state", lambda s: s["ready"] and total_ops(s) == 100, what="the fold")
    answers = {path: fetch(worker.url + path) for path in STATUS_PATHS}
    assert all(answers.values())
    leaked = [path for path, body in answers.items() if PASSWORD in body]
    assert leaked == [], f"the password is in the answers of {leaked}"
    log = worker.logfile.read_text()
    assert "SaslAuthenticateRequest" in log, "the debug log shows the login requests"
    assert PASSWORD not in log
