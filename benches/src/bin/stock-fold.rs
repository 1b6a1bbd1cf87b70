//! The keyed stock fold on stream-core, the peer of `benches/peers/` (Kafka
//! Streams, Quix Streams) in the side-by-side benchmark
//! (`benches/benches/peers.rs`): JSON movements keyed by product id, the
//! stock per product in a RocksDB store, each new stock written to the
//! output as decimal text; exactly-once, 100 ms commit interval. Runs until
//! it is killed.
//!
//! ```text
//! stock-fold BOOTSTRAP APPLICATION_ID STATE_DIR INPUT OUTPUT
//! ```
//!
//! `GROUP_INSTANCE_ID` makes it a static member of its group under that id.

use serde::{Deserialize, Serialize};
use stream_core::runtime::{Membership, Runtime, RuntimeConfig};
use stream_core::serdes::{Json, Utf8, I64};
use stream_core::state::StateBackend;
use stream_core::{Consumed, Grouped, Materialized, Produced, StreamsBuilder, StreamsConfig};

/// A stock movement, `{"id":7,"amount":3,"type":"IN"}`.
#[derive(Clone, Serialize, Deserialize)]
struct Movement {
    amount: i64,
    #[serde(rename = "type")]
    direction: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, application, state, input, output] = args.as_slice() else {
        return Err("usage: stock-fold BOOTSTRAP APPLICATION_ID STATE_DIR INPUT OUTPUT".into());
    };
    let builder = StreamsBuilder::new();
    builder
        .stream(input, Consumed::with(Utf8, Json::<Movement>::new()))
        .map_values(|m: Movement| if m.direction == "IN" { m.amount } else { -m.amount })
        .group_by_key(Grouped::with(Utf8, I64))
        .aggregate(|| 0, |_, delta, stock| stock + delta, Materialized::new("stock", I64))
        .to_stream()
        .map_values(|stock: i64| stock.to_string())
        .to(output, Produced::with(Utf8, Utf8));
    let streams = StreamsConfig::new(application.as_str()).state(StateBackend::RocksDb(state.into()));
    let mut config = RuntimeConfig::new(streams, bootstrap.as_str());
    if let Ok(id) = std::env::var("GROUP_INSTANCE_ID") {
        config.membership = Membership::StaticAs(id);
    }
    Runtime::new(builder.build()?, config)?.run(|_| false)?;
    Ok(())
}
