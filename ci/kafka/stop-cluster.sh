#!/usr/bin/env bash
# Stop the nodes started by start-cluster.sh (each by its PID, as stop.sh does) and remove
# the work folder.  usage: KAFKA_WORK=/tmp/x bash ci/kafka/stop-cluster.sh
set -u
[ -n "${KAFKA_WORK:-}" ] || exit 0
HERE=$(cd "$(dirname "$0")" && pwd)
for node in "$KAFKA_WORK"/node-*; do
  [ -d "$node" ] && KAFKA_WORK="$node" bash "$HERE/stop.sh" &
done
wait
rm -rf "$KAFKA_WORK"
