#!/usr/bin/env bash
# Stop the broker started by start.sh (by its PID: SIGTERM, then SIGKILL after 30 s)
# and remove its work folder.  usage: KAFKA_WORK=/tmp/x bash ci/kafka/stop.sh
set -u
[ -n "${KAFKA_WORK:-}" ] || exit 0
PID=$(cat "$KAFKA_WORK/kafka.pid" 2>/dev/null) || { rm -rf "$KAFKA_WORK"; exit 0; }
kill -TERM "$PID" 2>/dev/null || true
for _ in $(seq 60); do kill -0 "$PID" 2>/dev/null || break; sleep 0.5; done
kill -KILL "$PID" 2>/dev/null || true
rm -rf "$KAFKA_WORK"
