#!/usr/bin/env bash
# Start a throwaway three-node KRaft Kafka cluster on 127.0.0.1, on free ports: three
# combined broker+controller nodes, a controller quorum of three, replication factor 3 and
# min.insync.replicas=2 (ci/kafka/cluster.properties).
#
# usage: KAFKA_WORK=/tmp/x bash ci/kafka/start-cluster.sh
# Writes $KAFKA_WORK/{libs/,bootstrap} and, per node N in 1..3, $KAFKA_WORK/node-N/{data/,
# server.properties,broker.log,kafka.pid,bootstrap}: each node is a broker as start.sh
# leaves one, so wait.py, stop.sh and a restart work on a node's folder alone.
# $KAFKA_WORK/bootstrap lists the three addresses. Stop it with ci/kafka/stop-cluster.sh.
# KAFKA_HEAP (default 512m) is each JVM's -Xmx.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KAFKA_WORK=${KAFKA_WORK:-$(mktemp -d /tmp/belvedere-kafka-cluster.XXXXXX)}
JAVA=${JAVA:-${JAVA_HOME:+$JAVA_HOME/bin/}java}
PYTHON=${PYTHON:-python3}
HEAP=${KAFKA_HEAP:-512m}
NODES=3
mkdir -p "$KAFKA_WORK"

mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_WORK/libs"
CP="$KAFKA_WORK/libs/*"

# Two free loopback ports a node: the client listener and the controller.
read -r -a PORTS < <("$PYTHON" - "$NODES" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(2 * int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
PY
)
VOTERS=""
for n in $(seq "$NODES"); do
  VOTERS="$VOTERS${VOTERS:+,}$n@127.0.0.1:${PORTS[$((2 * n - 1))]}"
done

# The same cluster id on every node (see start.sh for why it must not start with "-").
CLUSTER_ID=$("$PYTHON" -c '
import base64, uuid
while (i := base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()).startswith("-"):
    pass
print(i)')

# Each node's configuration and storage (formatted side by side: a JVM start each).
FORMATS=()
for n in $(seq "$NODES"); do
  NODE="$KAFKA_WORK/node-$n"
  mkdir -p "$NODE/data"
  sed -e "s#@DATA_DIR@#$NODE/data#" -e "s#@PORT@#${PORTS[$((2 * n - 2))]}#g" \
      -e "s#@CONTROLLER_PORT@#${PORTS[$((2 * n - 1))]}#g" \
      -e "s#@NODE_ID@#$n#g" -e "s#@VOTERS@#$VOTERS#g" -e "s#@WORK@#$NODE#g" \
      "$HERE/cluster.properties" > "$NODE/server.properties"
  "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$CP" \
      kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$NODE/server.properties" \
      > "$NODE/format.log" 2>&1 &
  FORMATS+=($!)
done
for n in $(seq "$NODES"); do
  wait "${FORMATS[$((n - 1))]}" || { cat "$KAFKA_WORK/node-$n/format.log" >&2; exit 1; }
done

BOOTSTRAP=""
for n in $(seq "$NODES"); do
  NODE="$KAFKA_WORK/node-$n"
  PORT=${PORTS[$((2 * n - 2))]}
  CPORT=${PORTS[$((2 * n - 1))]}
  nohup "$JAVA" -Xms128m -Xmx"$HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Dorg.slf4j.simpleLogger.showDateTime=true \
      -cp "$CP" kafka.Kafka "$NODE/server.properties" \
      > "$NODE/broker.log" 2>&1 < /dev/null &
  echo $! > "$NODE/kafka.pid"
  echo "127.0.0.1:$PORT" > "$NODE/bootstrap"
  BOOTSTRAP="$BOOTSTRAP${BOOTSTRAP:+,}127.0.0.1:$PORT"
  echo "kafka node $n: pid $(cat "$NODE/kafka.pid"), 127.0.0.1:$PORT, controller $CPORT" >&2
done
echo "$BOOTSTRAP" > "$KAFKA_WORK/bootstrap"
echo "kafka cluster: bootstrap $BOOTSTRAP, work $KAFKA_WORK" >&2
