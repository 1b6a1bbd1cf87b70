//! # stream-core
//!
//! A Kafka Streams-style stream processing library: describe a topology of
//! typed, keyed operators once, then run it in process with the deterministic
//! [`TestDriver`] (this crate) or on a Kafka cluster.
//!
//! The model, at a glance:
//!
//! | piece | what it is |
//! |---|---|
//! | [`StreamsBuilder`] → [`Topology`] | the description: sources, operators, stores, sinks; [`Topology::describe`] prints it |
//! | [`KStream`], [`KTable`], [`KGroupedStream`], [`TimeWindowedKStream`] | the DSL: `map`, `filter`, `flat_map`, `split`, `merge`, `select_key`, `group_by`, `count`/`reduce`/`aggregate`, windows, stream–table joins |
//! | [`processor::Processor`] | the low-level API the DSL is built on: init / process / punctuate / close, typed store access, forwarding |
//! | [`state`] | key-value stores (in memory or RocksDB) with staged writes that become durable at commit and report their changes for the changelog |
//! | [`serdes`] | JSON, bincode, UTF-8, bytes, `i64`, or your own [`serdes::Serde`] |
//! | [`StreamsConfig`] | application id, [`ErrorPolicy`] for undecodable and failing records (fail, skip, dead letter), state backend |
//! | [`TestDriver`] | runs a topology with one task per partition, deterministically, without a broker |
//! | [`runtime::Runtime`] | runs it on a Kafka cluster, exactly-once (Kafka transactions) or at-least-once, waiting out broker outages |
//!
//! # Example: a keyed fold
//!
//! Stock movements keyed by product id are folded into a stock level per
//! product, materialised in the store `stock` and written to `stock-levels`.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use stream_core::serdes::{Json, Utf8, I64};
//! use stream_core::{Grouped, Materialized, Produced, StreamsBuilder, TestDriver, Consumed};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Movement {
//!     amount: i64,
//! }
//!
//! let builder = StreamsBuilder::new();
//! builder
//!     .stream("stock", Consumed::with(Utf8, Json::<Movement>::new()))
//!     .group_by_key(Grouped::with(Utf8, Json::new()))
//!     .aggregate(|| 0, |_id, movement: Movement, stock| stock + movement.amount, Materialized::new("stock", I64))
//!     .to_stream()
//!     .to("stock-levels", Produced::with(Utf8, I64));
//! let topology = builder.build()?;
//!
//! let driver = TestDriver::builder(topology).partitions(4).build()?;
//! let input = driver.input_topic("stock", Utf8, Json::<Movement>::new());
//! input.pipe("apple".to_string(), Movement { amount: 10 })?;
//! input.pipe("apple".to_string(), Movement { amount: -3 })?;
//! input.pipe("pear".to_string(), Movement { amount: 5 })?;
//!
//! let levels = driver.output_topic("stock-levels", Utf8, I64).read_key_values()?;
//! assert_eq!(levels, [("apple".to_string(), 10), ("apple".to_string(), 7), ("pear".to_string(), 5)]);
//! assert_eq!(driver.store("stock", Utf8, I64).get(&"apple".to_string())?, Some(7));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod config;
mod error;
mod metrics;
mod partitioner;
pub mod processor;
mod record;
pub mod runtime;
pub mod serdes;
pub mod state;
mod task;
pub mod testing;
mod topology;

pub use config::{dead_letter, ErrorPolicy, StreamsConfig};
pub use error::{Result, SerdeError, StoreError, StreamError, TopologyError};
pub use metrics::TaskMetrics;
pub use partitioner::{murmur2, partition_for_key};
pub use record::{Change, Headers, OutputRecord, RawRecord, Record, RecordMetadata};
pub use testing::TestDriver;
pub use topology::{
    changelog_topic, Consumed, Grouped, KGroupedStream, KStream, KTable, Materialized, PartitionPlan, Produced,
    Repartitioned, Split, StreamsBuilder, TaskId, TimeWindowedKStream, TimeWindows, Topology, TopologyDescription,
    Window, Windowed, WindowedSerde,
};
