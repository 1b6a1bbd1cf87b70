"""The keyed stock fold in Quix Streams 3.28, as its documentation writes it:
JSON movements keyed by product id, the stock per product in a stateful
apply (RocksDB, with its changelog topic), one output per input (the new
stock, as decimal text), exactly-once, 100 ms commit interval.

    python fold.py BOOTSTRAP APPLICATION_ID STATE_DIR INPUT OUTPUT

GROUP_INSTANCE_ID makes it a static member of its group under that id.
Run by the side-by-side benchmark, benches/benches/peers.rs.
"""

import os
import sys

from quixstreams import Application


def main() -> None:
    bootstrap, application_id, state_dir, source, sink = sys.argv[1:6]
    app = Application(
        broker_address=bootstrap,
        consumer_group=application_id,
        state_dir=state_dir,
        auto_offset_reset="earliest",
        commit_interval=0.1,
        processing_guarantee="exactly-once",
        loglevel="WARNING",
        consumer_extra_config={"group.instance.id": os.environ["GROUP_INSTANCE_ID"]}
        if "GROUP_INSTANCE_ID" in os.environ
        else None,
    )
    movements = app.topic(source, key_deserializer="str", value_deserializer="json")
    totals = app.topic(sink, key_serializer="str", value_serializer="str")

    def fold(movement: dict, state) -> str:
        delta = movement["amount"] if movement["type"] == "IN" else -movement["amount"]
        stock = state.get("stock", 0) + delta
        state.set("stock", stock)
        return str(stock)

    sdf = app.dataframe(movements)
    sdf = sdf.apply(fold, stateful=True)
    sdf.to_topic(totals)
    app.run()


if __name__ == "__main__":
    main()
