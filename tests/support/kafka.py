"""A throwaway single-node Kafka broker from ci/kafka, for the test session and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from belvedere.streams.security import BrokerSecurity

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() == "true"


class KafkaStartFailed(RuntimeError):
    pass


def kafka_unavailable(reason: str) -> None:
    """Skip the test for want of a broker; under ``CI=true``, fail it instead."""
    import pytest

    if IN_CI:
        pytest.fail(f"Kafka is required when CI=true: {reason}", pytrace=False)
    pytest.skip(f"no Kafka broker: {reason}")


def missing_tools(*tools: str) -> str | None:
    """What a private broker lacks to start here (Java, Maven...), in words; None if nothing."""
    missing = [tool for tool in ("java", "mvn", *tools) if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


@contextlib.contextmanager
def private_kafka(
    work: Path | None = None, settings: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Start a broker (jars from Maven Central, fresh data folder), yield its bootstrap
    address, and stop it (removing its folder) afterwards.

    ``work`` is its folder, made by the caller when files must be there first (``tls/``);
    ``settings`` go to ci/kafka/start.sh and wait.py (``KAFKA_PROPERTIES``, ``KAFKA_SSL_CAFILE``...).
    """
    folder = Path(work or tempfile.mkdtemp(prefix="belvedere-kafka-"))
    env = {**os.environ, **(settings or {}), "KAFKA_WORK": str(folder), "PYTHON": sys.executable}
    try:
        _start(env, folder, "start.sh", wait=120, tails=lambda: broker_log_tail(folder))
        yield Path(folder, "bootstrap").read_text().strip()
    finally:
        subprocess.run(["bash", str(REPO / "ci/kafka/stop.sh")], env=env, timeout=90)


def _start(env: Mapping[str, str], work: Path, script: str, *, wait: int, tails: Any) -> None:
    """Run ci/kafka/``script``, then wait.py until it serves; KafkaStartFailed with what
    it said and the end of its logs (``tails()``) if not."""
    try:
        for command, timeout in (
            (["bash", str(REPO / "ci/kafka" / script)], 600),
            ([sys.executable, str(REPO / "ci/kafka/wait.py"), str(work), str(wait)], wait + 60),
        ):
            subprocess.run(
                command, env=env, check=True, capture_output=True, text=True, timeout=timeout
            )
    except subprocess.CalledProcessError as exc:
        said = (exc.stderr or exc.stdout or "")[-500:]
        raise KafkaStartFailed(f"{said}\n{tails()}") from None


@dataclass(frozen=True)
class KafkaCluster:
    """A private three-node cluster of ci/kafka/start-cluster.sh: every node's folder is
    laid out as start.sh leaves a single broker's (``kafka.pid``, ``bootstrap``...)."""

    work: Path

    @property
    def bootstrap(self) -> str:
        return (self.work / "bootstrap").read_text().strip()

    @property
    def nodes(self) -> dict[int, Path]:
        """Each node's folder, by its node id (the broker id in partition metadata)."""
        return {int(p.name.removeprefix("node-")): p for p in sorted(self.work.glob("node-*"))}

    def partitions(self) -> dict[tuple[str, int], PartitionState]:
        """Every partition of every topic: its leader, replicas and in-sync replicas, as
        the cluster's metadata says now (a dead leader shows until the controller moves it)."""

        async def describe() -> dict[tuple[str, int], PartitionState]:
            from aiokafka.admin import AIOKafkaAdminClient
            from aiokafka.errors import KafkaError

            deadline = time.monotonic() + 60
            while True:  # a node just killed is still in the metadata: ask again
                admin = AIOKafkaAdminClient(
                    bootstrap_servers=self.bootstrap, request_timeout_ms=10_000
                )
                try:
                    await admin.start()
                    found = await admin.describe_topics(list(await admin.list_topics()))
                    break
                except KafkaError:
                    if time.monotonic() > deadline:
                        raise
                finally:
                    await admin.close()
                await asyncio.sleep(0.5)
            return {
                (topic["topic"], part["partition"]): PartitionState(
                    part["leader"], tuple(part["replicas"]), tuple(part["isr"])
                )
                for topic in found
                for part in topic["partitions"]
            }

        return asyncio.run(describe())


@dataclass(frozen=True)
class PartitionState:
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@contextlib.contextmanager
def private_kafka_cluster(work: Path | None = None) -> Iterator[KafkaCluster]:
    """Start a three-node KRaft cluster (replication factor 3, ``min.insync.replicas=2``),
    yield it once every node serves, and stop every node (removing the folder) afterwards."""
    work = Path(work or tempfile.mkdtemp(prefix="belvedere-kafka-cluster-"))
    env = {**os.environ, "KAFKA_WORK": str(work), "PYTHON": sys.executable}
    try:
        _start(
            env,
            work,
            "start-cluster.sh",
            wait=180,
            tails=lambda: "\n".join(
                broker_log_tail(node, 15) for node in sorted(work.glob("node-*"))
            ),
        )
        yield KafkaCluster(work)
    finally:
        subprocess.run(["bash", str(REPO / "ci/kafka/stop-cluster.sh")], env=env, timeout=120)


def broker_log_tail(work: Path, lines: int = 40) -> str:
    """The end of a ci/kafka broker's log (stop.sh deletes it with the folder): why it
    would not start, in a failure's message."""
    try:
        tail = (work / "broker.log").read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "(no broker.log)"
    return "--- broker.log ---\n" + "\n".join(tail)


def make_tls(folder: Path, name: str = "ca") -> Path:
    """With openssl, a fresh CA and a server certificate it signs for IP:127.0.0.1 and
    DNS:localhost: ``ca.pem`` (what a client trusts) and ``server.pem`` (the server's
    PKCS#8 key, then its certificate: Kafka's PEM keystore). Returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", f"/CN=belvedere test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    openssl("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.crt",
    )  # fmt: skip
    (folder / "server.pem").write_text(
        (folder / "server.key").read_text() + (folder / "server.crt").read_text()
    )
    return folder


@dataclass(frozen=True)
class SecuredKafka:
    """A private broker whose one client listener wants SASL over TLS."""

    bootstrap: str
    cafile: Path
    user: str
    password: str = field(repr=False)

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def security(self, mechanism: str, password: str | None = None) -> BrokerSecurity:
        return BrokerSecurity(
            cafile=str(self.cafile),
            mechanism=mechanism,
            username=self.user,
            password=password or self.password,
        )


@contextlib.contextmanager
def private_secured_kafka(work: Path, user: str, password: str) -> Iterator[SecuredKafka]:
    """A private broker (ci/kafka/sasl-ssl.properties) in ``work``, with certificates made
    here, on which ``user`` logs in with ``password`` by SCRAM-SHA-512 or PLAIN; the broker
    logs in to itself as another user, with a password of its own. No spaces in either."""
    tls = make_tls(work / "tls")
    own = secrets.token_hex(16)
    users = work / "users.properties"
    users.write_text(
        "listener.name.sasl_ssl.plain.sasl.jaas.config="
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="broker" password="{own}" user_broker="{own}" user_{user}="{password}";\n'
    )
    settings = {
        "KAFKA_PROPERTIES": f"{REPO / 'ci/kafka/sasl-ssl.properties'} {users}",
        "KAFKA_FORMAT_ARGS": f"--add-scram SCRAM-SHA-512=[name={user},password={password}]",
        "KAFKA_SSL_CAFILE": str(tls / "ca.pem"),
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": user,
        "KAFKA_SASL_PASSWORD": password,
    }
    with private_kafka(work, settings) as bootstrap:
        yield SecuredKafka(bootstrap, tls / "ca.pem", user, password)
