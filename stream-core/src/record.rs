//! Records as processors see them, and as topics store them.

use std::sync::Arc;

/// Record headers: an ordered list of (name, bytes) pairs, as in Kafka.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Vec<u8>)>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// Appends a header (Kafka allows repeated names).
    pub fn add(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.0.push((name.into(), value.into()));
        self
    }

    /// Builder form of [`Headers::add`].
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.add(name, value);
        self
    }

    /// The last value of header `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// The last value of header `name`, as UTF-8 text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is no header.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A typed record flowing between processors.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<K, V> {
    /// The key.
    pub key: K,
    /// The value.
    pub value: V,
    /// Event time in milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Headers, carried along unchanged unless a processor changes them.
    pub headers: Headers,
}

impl<K, V> Record<K, V> {
    /// A record with no headers.
    pub fn new(key: K, value: V, timestamp: i64) -> Self {
        Record { key, value, timestamp, headers: Headers::new() }
    }

    /// The same record with another key and value (timestamp and headers kept).
    pub fn with_key_value<K2, V2>(self, key: K2, value: V2) -> Record<K2, V2> {
        Record { key, value, timestamp: self.timestamp, headers: self.headers }
    }

    /// The same record with another value.
    pub fn with_value<V2>(self, value: V2) -> Record<K, V2> {
        Record { key: self.key, value, timestamp: self.timestamp, headers: self.headers }
    }
}

/// A record as bytes, the way a topic holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// Key bytes; `None` for a record without key.
    pub key: Option<Vec<u8>>,
    /// Value bytes; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Event time in milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Headers.
    pub headers: Headers,
}

/// Where the record being processed came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Source topic.
    pub topic: Arc<str>,
    /// Source partition.
    pub partition: u32,
    /// Offset in that partition.
    pub offset: i64,
}

/// A record produced by a task, on its way to a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    /// Destination topic.
    pub topic: Arc<str>,
    /// Destination partition; `None` lets the producer choose (murmur2 of the key).
    pub partition: Option<u32>,
    /// The record itself.
    pub record: RawRecord,
}

/// The old and new value of a table row, as a table's change stream carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<V> {
    /// The previous value, `None` when the row is new.
    pub old: Option<V>,
    /// The new value, `None` when the row was deleted.
    pub new: Option<V>,
}
