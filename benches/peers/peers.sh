#!/usr/bin/env bash
# The peers of the side-by-side benchmark (benches/benches/peers.rs): the
# same work written in Kafka Streams 4.4 (kafka-streams/, a Maven module)
# and Quix Streams 3.28 (quix/). Builds and environments live outside the
# clone, in ~/.cache/opsci.
#
#   peers.sh install            compile the Kafka Streams peers and copy their
#                               jars; create Quix Streams' virtualenv (once each)
#   peers.sh kafka-streams ARGS run peers.Main ARGS (see Main.java), in the foreground
#   peers.sh quix ARGS          run quix/fold.py ARGS, in the foreground
#
# Environment: KS_HEAP, the Kafka Streams JVM's maximum heap (512m).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="$HOME/.cache/opsci"
KS="$CACHE/peers-kafka-streams"
QUIX="$CACHE/peers-quix"

install() {
    # Again whenever a source changed since the last build.
    if [[ ! -f "$KS/.complete" || -n "$(find "$HERE/kafka-streams" -newer "$KS/.complete" -type f)" ]]; then
        echo "building the Kafka Streams peers into $KS" >&2
        mvn -q -B -f "$HERE/kafka-streams/pom.xml" package dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$KS/lib" -Dmaven.test.skip >&2
        touch "$KS/.complete"
    fi
    if [[ ! -f "$QUIX/.complete" ]]; then
        echo "installing Quix Streams into $QUIX" >&2
        python3 -m venv "$QUIX"
        "$QUIX/bin/pip" install -q -r "$HERE/quix/requirements.txt" >&2
        touch "$QUIX/.complete"
    fi
}

case "${1:-}" in
    install) install ;;
    kafka-streams)
        shift
        exec java -Xms64m "-Xmx${KS_HEAP:-512m}" -cp "$KS/build/*:$KS/lib/*" peers.Main "$@"
        ;;
    quix)
        shift
        exec "$QUIX/bin/python" "$HERE/quix/fold.py" "$@"
        ;;
    *)
        sed -n '2,13p' "$0" >&2
        exit 2
        ;;
esac
