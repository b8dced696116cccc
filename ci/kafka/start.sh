#!/usr/bin/env bash
# Start a throwaway single-node KRaft Kafka broker on 127.0.0.1, on free ports.
#
# usage: KAFKA_WORK=/tmp/x bash ci/kafka/start.sh
# Writes $KAFKA_WORK/{libs/,data/,server.properties,broker.log,kafka.pid,bootstrap}
# and prints the bootstrap address. Stop it with ci/kafka/stop.sh.
#
# Optional: KAFKA_PROPERTIES="a.properties b.properties" appends those files to
# server.properties (a later key wins), e.g. ci/kafka/sasl-ssl.properties for a TLS+SASL
# listener; KAFKA_FORMAT_ARGS adds arguments to the storage format, e.g. SCRAM users
# ("--add-scram SCRAM-SHA-512=[name=alice,password=...]"). In every file, @PORT@,
# @CONTROLLER_PORT@, @DATA_DIR@ and @WORK@ (= $KAFKA_WORK) are filled in.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KAFKA_WORK=${KAFKA_WORK:-$(mktemp -d /tmp/belvedere-kafka.XXXXXX)}
JAVA=${JAVA:-${JAVA_HOME:+$JAVA_HOME/bin/}java}
PYTHON=${PYTHON:-python3}
mkdir -p "$KAFKA_WORK/data"

# 1. Classpath from Maven Central; ~/.m2 caches the downloads between runs.
mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_WORK/libs"
CP="$KAFKA_WORK/libs/*"

# 2. Two free loopback ports: the client listener and the controller.
read -r PORT CPORT < <("$PYTHON" - <<'PY'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
PY
)
read -r -a EXTRA_PROPERTIES <<< "${KAFKA_PROPERTIES:-}"
read -r -a FORMAT_ARGS <<< "${KAFKA_FORMAT_ARGS:-}"
sed -e "s#@DATA_DIR@#$KAFKA_WORK/data#" -e "s#@PORT@#$PORT#g" -e "s#@CONTROLLER_PORT@#$CPORT#g" \
    -e "s#@WORK@#$KAFKA_WORK#g" "$HERE/server.properties" "${EXTRA_PROPERTIES[@]}" \
    > "$KAFKA_WORK/server.properties"

# 3. Format the storage (static quorum, so no --standalone), then start the broker.
# The cluster id is a URL-safe base64 UUID that does not start with "-", as Kafka's own
# random-uuid makes it: one that did (1 start in 64) was taken by kafka-storage for an
# option ("argument --cluster-id/-t: expected one argument"), and the broker never started.
CLUSTER_ID=$("$PYTHON" -c '
import base64, uuid
while (i := base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()).startswith("-"):
    pass
print(i)')
"$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$CP" \
    kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$KAFKA_WORK/server.properties" \
    "${FORMAT_ARGS[@]}" > "$KAFKA_WORK/format.log" 2>&1 || { cat "$KAFKA_WORK/format.log" >&2; exit 1; }
nohup "$JAVA" -Xms256m -Xmx768m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.showDateTime=true \
    -cp "$CP" kafka.Kafka "$KAFKA_WORK/server.properties" \
    > "$KAFKA_WORK/broker.log" 2>&1 < /dev/null &
echo $! > "$KAFKA_WORK/kafka.pid"
echo "127.0.0.1:$PORT" > "$KAFKA_WORK/bootstrap"
echo "kafka: pid $(cat "$KAFKA_WORK/kafka.pid"), bootstrap 127.0.0.1:$PORT, work $KAFKA_WORK" >&2
