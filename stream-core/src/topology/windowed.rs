//! Time windows: tumbling and hopping, on record timestamps.

use std::sync::Arc;
use std::time::Duration;

use super::ops::aggregate::{aggregator, reducer, Update};
use super::ops::window::WindowAggregateProcessor;
use super::stream::KStream;
use super::table::{KTable, Materialized};
use super::NodeFactory;
use crate::error::SerdeError;
use crate::processor::Data;
use crate::serdes::{Serde, SerdeRef, I64};
use crate::task::node::ProcessorNode;

/// Window definition for windowed aggregations.
///
/// A record with timestamp `t` belongs to every window `[start, start + size)`
/// containing `t`, where `start` is a multiple of `advance`. A window closes
/// when stream time reaches `end + grace`: records arriving later for it are
/// dropped and counted ([`crate::TaskMetrics::late_dropped`]). Windows are
/// deleted from the store once stream time passes `end + retention` (checked
/// at most once per `advance` of stream time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindows {
    pub(crate) size: i64,
    pub(crate) advance: i64,
    pub(crate) grace: i64,
    retention: i64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl TimeWindows {
    /// Non-overlapping windows of `size` (at least 1 ms), no grace period.
    pub fn tumbling(size: Duration) -> Self {
        Self::hopping(size, size)
    }

    /// Overlapping windows of `size` starting every `advance` (clamped to `1 ms ..= size`).
    pub fn hopping(size: Duration, advance: Duration) -> Self {
        let size = millis(size).max(1);
        let advance = millis(advance).clamp(1, size);
        TimeWindows { size, advance, grace: 0, retention: 24 * 3_600_000 }
    }

    /// Accepts out-of-order records up to `grace` after a window's end.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = millis(grace);
        self
    }

    /// Keeps windows in the store for `retention` after their end (default
    /// one day; never less than the grace period).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = millis(retention);
        self
    }

    pub(crate) fn retention_ms(&self) -> i64 {
        self.retention.max(self.grace)
    }

    /// The windows containing `timestamp`, earliest first.
    pub fn windows_for(&self, timestamp: i64) -> impl Iterator<Item = Window> {
        let (size, advance) = (self.size, self.advance);
        let last_start = timestamp - timestamp.rem_euclid(advance);
        // Starts s = last_start - i * advance with s > timestamp - size.
        let count = (last_start - (timestamp - size) + advance - 1).div_euclid(advance).max(0);
        let first_start = last_start - (count - 1) * advance;
        (0..count).map(move |i| {
            let start = first_start + i * advance;
            Window { start, end: start + size }
        })
    }
}

/// A time window `[start, end)` in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// Inclusive start.
    pub start: i64,
    /// Exclusive end.
    pub end: i64,
}

/// A key within a window: the key of windowed tables.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Windowed<K> {
    /// The record key.
    pub key: K,
    /// The window.
    pub window: Window,
}

/// Order-preserving encoding of a window start (sign bit flipped, big endian).
pub(crate) fn encode_window_start(start: i64) -> [u8; 8] {
    ((start as u64) ^ (1 << 63)).to_be_bytes()
}

/// Serde of windowed keys: the window start (8 bytes, ordered) then the key;
/// the end is start + the window size. Windows sort by start, then key.
pub struct WindowedSerde<K> {
    inner: SerdeRef<K>,
    size: i64,
}

impl<K> Clone for WindowedSerde<K> {
    fn clone(&self) -> Self {
        WindowedSerde { inner: self.inner.clone(), size: self.size }
    }
}

impl<K> WindowedSerde<K> {
    /// Windowed keys with `inner` keys, for windows of `size`.
    pub fn new(inner: impl Serde<K>, size: Duration) -> Self {
        WindowedSerde { inner: Arc::new(inner), size: millis(size) }
    }

    pub(crate) fn from_parts(inner: SerdeRef<K>, size: i64) -> Self {
        WindowedSerde { inner, size }
    }
}

impl<K: 'static> Serde<Windowed<K>> for WindowedSerde<K> {
    fn encode_into(&self, value: &Windowed<K>, buf: &mut Vec<u8>) -> Result<(), SerdeError> {
        buf.extend_from_slice(&encode_window_start(value.window.start));
        self.inner.encode_into(&value.key, buf)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Windowed<K>, SerdeError> {
        if bytes.len() < 8 {
            return Err(SerdeError::decode("windowed", "shorter than a window start"));
        }
        let (start, key) = bytes.split_at(8);
        let start = (u64::from_be_bytes(start.try_into().unwrap_or_default()) ^ (1 << 63)) as i64;
        Ok(Windowed { key: self.inner.decode(key)?, window: Window { start, end: start + self.size } })
    }
}

/// A grouped stream cut into time windows; see [`super::KGroupedStream::windowed_by`].
pub struct TimeWindowedKStream<K, V> {
    pub(crate) stream: KStream<K, V>,
    pub(crate) keys: SerdeRef<K>,
    pub(crate) values: SerdeRef<V>,
    pub(crate) windows: TimeWindows,
}

impl<K: Data, V: Data> TimeWindowedKStream<K, V> {
    /// Counts records per key and window, in store `name`.
    pub fn count(&self, name: &str) -> KTable<Windowed<K>, i64> {
        self.aggregate(|| 0, |_, _, count| count + 1, Materialized::new(name, I64))
    }

    /// Folds records per key and window, starting from `init()`.
    pub fn aggregate<A: Data>(
        &self,
        init: impl Fn() -> A + Send + Sync + 'static,
        add: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
        materialized: Materialized<A>,
    ) -> KTable<Windowed<K>, A> {
        self.fold(aggregator(init, add), materialized)
    }

    /// Combines the values per key and window with `reduce`.
    pub fn reduce(&self, name: &str, reduce: impl Fn(V, V) -> V + Send + Sync + 'static) -> KTable<Windowed<K>, V> {
        self.fold(reducer(reduce), Materialized { name: name.to_string(), values: self.values.clone() })
    }

    fn fold<A: Data>(&self, update: Update<K, V, A>, materialized: Materialized<A>) -> KTable<Windowed<K>, A> {
        let keys = WindowedSerde::from_parts(self.keys.clone(), self.windows.size);
        let (store, values, windows) = (materialized.name.clone(), materialized.values.clone(), self.windows);
        let node_keys = keys.clone();
        let factory: NodeFactory = Arc::new(move |_| {
            ProcessorNode::boxed(WindowAggregateProcessor {
                store: store.clone(),
                keys: node_keys.clone(),
                values: values.clone(),
                windows,
                update: update.clone(),
                handle: None,
                purged_at: i64::MIN,
            })
        });
        KTable::from_processor(
            &self.stream,
            "KSTREAM-WINDOWAGGREGATE",
            factory,
            materialized.name,
            Arc::new(keys),
            materialized.values,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(w: TimeWindows, t: i64) -> Vec<i64> {
        w.windows_for(t).map(|w| w.start).collect()
    }

    #[test]
    fn window_membership() {
        let tumbling = TimeWindows::tumbling(Duration::from_millis(10));
        assert_eq!(starts(tumbling, 0), [0]);
        assert_eq!(starts(tumbling, 9), [0]);
        assert_eq!(starts(tumbling, 10), [10]);
        assert_eq!(starts(tumbling, -1), [-10]);
        let hopping = TimeWindows::hopping(Duration::from_millis(10), Duration::from_millis(3));
        assert_eq!(starts(hopping, 7), [0, 3, 6]);
        assert_eq!(starts(hopping, 9), [0, 3, 6, 9]);
        for t in -50..50 {
            for w in hopping.windows_for(t) {
                assert!(w.start <= t && t < w.end && w.start.rem_euclid(3) == 0);
            }
        }
    }

    #[test]
    fn windowed_keys_sort_by_start_then_key() {
        let serde = WindowedSerde::new(crate::serdes::Utf8, Duration::from_millis(10));
        let key = |k: &str, start| Windowed { key: k.to_string(), window: Window { start, end: start + 10 } };
        let a = serde.encode(&key("b", -20)).unwrap();
        let b = serde.encode(&key("a", 0)).unwrap();
        let c = serde.encode(&key("b", 0)).unwrap();
        assert!(a < b && b < c);
        assert_eq!(serde.decode(&c).unwrap(), key("b", 0));
        assert!(serde.decode(&[1, 2]).is_err());
    }
}
