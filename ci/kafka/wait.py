"""Block until the broker started by start.sh really serves requests.

usage: python ci/kafka/wait.py KAFKA_WORK [timeout_s]

KAFKA_WORK is a broker's folder (start.sh), or a cluster's (start-cluster.sh): then every
node's port must open first, and the probe goes through the cluster's bootstrap list.

1. TCP connect to the bootstrap port (a KRaft broker opens it only once it is caught up
   and unfenced), failing fast if the JVM has exited;
2. an aiokafka produce (auto-creates a topic: proves leader election and the produce path)
   and a group consume (creates __consumer_offsets: proves the group coordinator).

For a broker started with sasl-ssl.properties, the probe logs in as KAFKA_SASL_USERNAME
with KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM, over TLS trusting KAFKA_SSL_CAFILE.
"""

import asyncio
import contextlib
import glob
import os
import socket
import ssl
import sys
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

TOPIC = "ci-readiness"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_tcp(pid: int, host: str, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if not alive(pid):
            raise SystemExit("kafka: the broker JVM exited; see broker.log")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"kafka: timeout, port {port} never opened")


def security() -> dict:
    cafile, mechanism = os.environ.get("KAFKA_SSL_CAFILE"), os.environ.get("KAFKA_SASL_MECHANISM")
    out: dict = {}
    if cafile:
        out.update(security_protocol="SSL", ssl_context=ssl.create_default_context(cafile=cafile))
    if mechanism:
        out.update(
            security_protocol="SASL_SSL" if cafile else "SASL_PLAINTEXT",
            sasl_mechanism=mechanism,
            sasl_plain_username=os.environ["KAFKA_SASL_USERNAME"],
            sasl_plain_password=os.environ["KAFKA_SASL_PASSWORD"],
        )
    return out


async def probe(bootstrap: str, deadline: float) -> None:
    last = None
    auth = security()
    while time.monotonic() < deadline:
        prod = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000, **auth)
        cons = AIOKafkaConsumer(
            TOPIC,
            bootstrap_servers=bootstrap,
            group_id=TOPIC,
            auto_offset_reset="earliest",
            **auth,
        )
        try:
            await prod.start()
            await prod.send_and_wait(TOPIC, b"ping")
            await cons.start()
            await asyncio.wait_for(cons.getone(), timeout=max(1.0, deadline - time.monotonic()))
            return
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.5)
        finally:
            for client in (cons, prod):
                with contextlib.suppress(Exception):
                    await client.stop()
    raise SystemExit(f"kafka: timeout, broker not serving ({last!r})")


def main() -> None:
    work = sys.argv[1]
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 120.0
    nodes = sorted(glob.glob(os.path.join(work, "node-*"))) or [work]
    with open(os.path.join(work, "bootstrap")) as f:
        bootstrap = f.read().strip()
    t0 = time.monotonic()
    deadline = t0 + timeout
    for node in nodes:
        with open(os.path.join(node, "kafka.pid")) as f:
            pid = int(f.read())
        with open(os.path.join(node, "bootstrap")) as f:
            host, port = f.read().strip().rsplit(":", 1)
        wait_tcp(pid, host, int(port), deadline)
    t1 = time.monotonic()
    asyncio.run(probe(bootstrap, deadline))
    print(f"kafka ready at {bootstrap}: tcp {t1 - t0:.1f}s, serving {time.monotonic() - t0:.1f}s")


if __name__ == "__main__":
    main()
