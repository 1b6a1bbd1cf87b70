#!/usr/bin/env bash
# Apache Kafka 4.4.0 from Maven Central, without a Kafka distribution: the
# broker's jars are resolved with Maven (pom.xml beside this script) into a
# cache outside the clone, and KRaft nodes (broker and controller in one
# process) run from them. The integration tests start their brokers with
# this script too (tests/src/kafka.rs).
#
#   kafka.sh install        resolve the jars into $KAFKA_CACHE/jars (once)
#   kafka.sh single [PORT]  one node on 127.0.0.1:PORT (9092), in the foreground
#   kafka.sh cluster [PORT] three nodes on PORT, PORT+1, PORT+2 (19092...), in the foreground
#   kafka.sh node OPTIONS   one node of a cluster, in the foreground (exec java):
#       --dir DIR                 its configuration, data and log (created)
#       --port PORT               client listener on 127.0.0.1
#       --controller-port PORT    controller listener on 127.0.0.1
#       --node-id N               (1)
#       --voters V                controller quorum, N@127.0.0.1:PORT,... (this node alone)
#       --advertised HOST:PORT    what clients are told to connect to (127.0.0.1:PORT)
#       --nodes N                 cluster size, for the internal topics' replication (1)
#
# Environment: KAFKA_CACHE (~/.cache/opsci/kafka-4.4.0), KAFKA_HEAP (512m).
# Data lives in the node's directory and survives a restart of the node.
set -euo pipefail

VERSION=4.4.0
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${KAFKA_CACHE:-$HOME/.cache/opsci/kafka-$VERSION}"
JARS="$CACHE/jars"
# Every node formatted by this script belongs to this cluster id; separate
# clusters on separate ports never meet, so they may share it.
CLUSTER_ID=zr7J1SxdQLuS80KHn2bwjg

install() {
    [[ -f "$JARS/.complete" ]] && return 0
    echo "resolving Apache Kafka $VERSION into $JARS" >&2
    local tmp="$CACHE/jars.tmp.$$"
    rm -rf "$tmp"
    mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >&2
    touch "$tmp/.complete"
    rm -rf "$JARS"
    mv "$tmp" "$JARS"
}

java_run() {
    exec java -Xms128m "-Xmx${KAFKA_HEAP:-512m}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true -cp "$JARS/*" "$@"
}

# Writes DIR/server.properties and DIR/log4j2.properties.
configure() {
    local dir=$1 port=$2 cport=$3 id=$4 voters=$5 advertised=$6 nodes=$7
    local replicas=$((nodes < 3 ? nodes : 3)) isr=$((nodes < 2 ? nodes : 2))
    cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://$advertised
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
offsets.topic.replication.factor=$replicas
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$isr
default.replication.factor=$replicas
# Small internal topics and no initial rebalance delay: quick to start, as a
# test or a laptop wants; the rest is Kafka's defaults.
offsets.topic.num.partitions=10
transaction.state.log.num.partitions=10
group.initial.rebalance.delay.ms=0
EOF
    cat >"$dir/log4j2.properties" <<EOF
rootLogger.level=WARN
rootLogger.appenderRef.out.ref=out
appender.out.type=Console
appender.out.name=out
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka.server.KafkaServer
logger.kafka.level=INFO
EOF
}

# Formats DIR/data for node ID, copying a formatted template (formatting
# starts a JVM: about 4 s) kept in the cache per node id.
format() {
    local dir=$1 id=$2
    [[ -f "$dir/data/meta.properties" ]] && return 0
    local template="$CACHE/formatted/node-$id"
    if [[ ! -f "$template/meta.properties" ]]; then
        local tmp="$CACHE/formatted/tmp.$$.$id"
        rm -rf "$tmp"
        mkdir -p "$tmp"
        sed "s#^log.dirs=.*#log.dirs=$tmp/data#" "$dir/server.properties" >"$tmp/server.properties"
        java -cp "$JARS/*" kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$tmp/server.properties" \
            >"$tmp/format.log" 2>&1 || { cat "$tmp/format.log" >&2; exit 1; }
        # Another node may have made the template meanwhile: either is fine.
        mv -T "$tmp/data" "$template" 2>/dev/null || true
        rm -rf "$tmp"
    fi
    mkdir -p "$dir/data"
    cp -r "$template/." "$dir/data/"
}

node() {
    local dir="" port="" cport="" id=1 voters="" advertised="" nodes=1
    while (($#)); do
        case $1 in
            --dir) dir=$2 ;;
            --port) port=$2 ;;
            --controller-port) cport=$2 ;;
            --node-id) id=$2 ;;
            --voters) voters=$2 ;;
            --advertised) advertised=$2 ;;
            --nodes) nodes=$2 ;;
            *) echo "kafka.sh node: unknown option $1" >&2; exit 2 ;;
        esac
        shift 2
    done
    [[ -n $dir && -n $port && -n $cport ]] || { echo "kafka.sh node: --dir, --port and --controller-port are required" >&2; exit 2; }
    install
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    configure "$dir" "$port" "$cport" "$id" "${voters:-$id@127.0.0.1:$cport}" "${advertised:-127.0.0.1:$port}" "$nodes"
    format "$dir" "$id"
    java_run "-Dlog4j2.configurationFile=$dir/log4j2.properties" kafka.Kafka "$dir/server.properties"
}

wait_port() {
    local port=$1
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $port after 30 s" >&2
    return 1
}

# Starts `count` nodes on ports base.. (controllers on base+100..) in
# ${KAFKA_DATA:-/tmp/opsci-kafka-base}; stops them on exit.
run_nodes() {
    local count=$1 base=$2
    local data="${KAFKA_DATA:-/tmp/opsci-kafka-$base}" voters="" pids=()
    for i in $(seq 1 "$count"); do
        voters+="${voters:+,}$i@127.0.0.1:$((base + 99 + i))"
    done
    install
    trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
    for i in $(seq 1 "$count"); do
        "$0" node --dir "$data/node-$i" --port $((base + i - 1)) --controller-port $((base + 99 + i)) \
            --node-id "$i" --voters "$voters" --nodes "$count" &
        pids+=($!)
    done
    local bootstrap=""
    for i in $(seq 1 "$count"); do
        wait_port $((base + i - 1))
        bootstrap+="${bootstrap:+,}127.0.0.1:$((base + i - 1))"
    done
    echo "Apache Kafka $VERSION: KAFKA_BROKERS=$bootstrap (data in $data; Ctrl-C stops)"
    wait
}

case "${1:-}" in
    install) install ;;
    node) shift; node "$@" ;;
    single) run_nodes 1 "${2:-9092}" ;;
    cluster) run_nodes 3 "${2:-19092}" ;;
    *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
