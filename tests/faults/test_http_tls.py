"""HTTPS for the query layer, on real Kafka: two workers serving TLS with a certificate made
here with openssl, forwarding to each other over TLS; plain HTTP gets no answer."""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from belvedere.streams.clients import KafkaClient
from tests.support.brokers import Broker
from tests.support.http import call
from tests.support.kafka import make_tls, missing_tools
from tests.support.worker import Worker, run_cli, wait_for
from tests.test_projections import movements

pytestmark = pytest.mark.kafka

APP = "tests.apps.ledger:app"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = missing_tools("openssl")
    if missing:
        pytest.skip(f"no openssl to make the test's certificates: {missing}")
    return make_tls(tmp_path_factory.mktemp("web-tls"), "web")


@pytest.fixture
def https_workers(
    kafka_bootstrap: str, certificates: Path, tmp_path: Path
) -> Iterator[Callable[..., Worker]]:
    made: list[Worker] = []

    def make(name: str, data_dir: str) -> Worker:
        args = [
            "--web-ssl-certfile", str(certificates / "server.pem"),
            "--web-ssl-cafile", str(certificates / "ca.pem"),
        ]  # fmt: skip
        worker = Worker(
            APP,
            broker_url=f"kafka://{kafka_bootstrap}",
            data_dir=tmp_path / data_dir,
            env={"LEDGER_NAME": name},
            args=args,
            https_cafile=certificates / "ca.pem",
        )
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.kill()


def test_two_workers_serve_https_and_forward_to_each_other_over_tls(
    kafka_bootstrap: str,
    https_workers: Callable[..., Worker],
    certificates: Path,
    unique_name: str,
) -> None:
    kafka = Broker("kafka", KafkaClient(kafka_bootstrap))
    kafka.create_ledger_topics(unique_name)
    records, fold = movements(2_000, accounts=80, seed=91)
    kafka.produce(f"{unique_name}-movements", records)
    pair = [https_workers(unique_name, d).start() for d in ("first", "second")]
    for worker in pair:
        assert worker.url.startswith("https://")
        worker.wait_until("/state", lambda s: s["ready"], what="every view serving")
    first, second = pair

    def answers_from(worker: Worker) -> dict[str, str]:
        found = {}
        for key in fold:
            answer = call(f"{worker.url}/views/balances/{key}", context=worker.tls)
            if answer.status != 200 or answer.body != fold[key]:
                return {}
            found[key] = answer.headers["X-Belvedere-Worker"]
        return found

    served = wait_for(lambda: answers_from(first), timeout=120, what="every key over HTTPS")
    assert set(served.values()) == {first.url, second.url}  # some were forwarded over TLS

    plain = http.client.HTTPConnection("127.0.0.1", first.port, timeout=10)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        plain.request("GET", "/health")
        plain.getresponse().read()
    plain.close()
    assert first.get("/health")["status"] == "ok"  # and it still serves TLS


def test_a_missing_or_unusable_certificate_ends_the_worker_in_one_line(
    kafka_bootstrap: str, tmp_path: Path, unique_name: str
) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    for given, says in (
        (tmp_path / "nowhere.pem", "does not exist (--web-ssl-certfile)"),
        (tmp_path / "junk.pem", "cannot use"),
    ):
        done = run_cli(
            "worker", APP, "--broker", f"kafka://{kafka_bootstrap}",
            "--data-dir", str(tmp_path / "data"), "--web-ssl-certfile", str(given),
            env={"LEDGER_NAME": unique_name},
        )  # fmt: skip
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and says in lines[0], done.stderr
