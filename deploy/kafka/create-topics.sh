#!/bin/sh
# Creates the OPSCI topics (the kafka-init service of docker-compose.yml).
# Idempotent: a topic that already exists is left as it is, with a warning
# when its partition count differs from PARTITIONS.
#
# Settings (environment):
#   BOOTSTRAP_SERVER      Kafka to talk to (kafka:9092)
#   PARTITIONS            partitions of every topic (6); each input partition
#                         is one task of opsci-app, so this caps how many
#                         replicas of the app have work
#   REPLICATION_FACTOR    replicas of every partition (1: one broker)
#   PRODUCT_TOPIC, EVENT_TOPIC, STOCK_TOPIC, ERROR_TOPIC, CATALOGUE_TOPIC
#                         topic names (product, event, stock, error, catalogue)
#   KAFKA_BIN_DIR         where kafka-topics.sh is (/opt/kafka/bin)
set -eu

bootstrap="${BOOTSTRAP_SERVER:-kafka:9092}"
partitions="${PARTITIONS:-6}"
replication="${REPLICATION_FACTOR:-1}"
topics="${KAFKA_BIN_DIR:-/opt/kafka/bin}/kafka-topics.sh"

# create NAME [kafka-topics.sh options...]
create() {
    name="$1"
    shift
    echo "create-topics: $name ($partitions partitions, replication $replication $*)"
    "$topics" --bootstrap-server "$bootstrap" --create --if-not-exists \
        --topic "$name" --partitions "$partitions" --replication-factor "$replication" "$@"
    # A topic created earlier with another partition count keeps it: growing
    # it would move keys to other partitions, away from their stored state.
    actual="$("$topics" --bootstrap-server "$bootstrap" --describe --topic "$name" |
        sed -n 's/.*PartitionCount:[[:space:]]*\([0-9][0-9]*\).*/\1/p' | head -n 1)"
    if [ "$actual" != "$partitions" ]; then
        echo "create-topics: WARNING: $name has ${actual:-an unknown number of} partitions, not $partitions" >&2
    fi
}

create "${PRODUCT_TOPIC:-product}"
create "${EVENT_TOPIC:-event}"
create "${STOCK_TOPIC:-stock}"
create "${ERROR_TOPIC:-error}"
# The catalogue is a table (latest record per product id): compacted.
create "${CATALOGUE_TOPIC:-catalogue}" --config cleanup.policy=compact

echo "create-topics: done"
