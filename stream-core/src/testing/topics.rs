//! Typed handles on the driver's topics and stores.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use super::DriverState;
use crate::error::{Result, SerdeError, StoreError};
use crate::record::{Headers, RawRecord};
use crate::serdes::{Serde, SerdeRef};
use crate::state::Store;
use crate::task::Scratch;

/// A record as a test writes or reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct TestRecord<K, V> {
    /// The key.
    pub key: K,
    /// The value.
    pub value: V,
    /// Timestamp in milliseconds.
    pub timestamp: i64,
    /// Headers.
    pub headers: Headers,
    /// The partition it was written to (ignored when piping).
    pub partition: u32,
}

impl<K, V> TestRecord<K, V> {
    /// A record without headers.
    pub fn new(key: K, value: V, timestamp: i64) -> Self {
        TestRecord { key, value, timestamp, headers: Headers::new(), partition: 0 }
    }
}

/// What every typed handle on the driver holds: the driver, a topic or store
/// name, and the serdes to read and write it.
pub(super) struct Binding<K, V> {
    state: Rc<RefCell<DriverState>>,
    name: String,
    keys: SerdeRef<K>,
    values: SerdeRef<V>,
}

impl<K, V> Binding<K, V> {
    pub(super) fn new(state: Rc<RefCell<DriverState>>, name: &str, keys: impl Serde<K>, values: impl Serde<V>) -> Self {
        Binding { state, name: name.to_string(), keys: Arc::new(keys), values: Arc::new(values) }
    }
}

/// Pipes records into a topic of a [`super::TestDriver`].
pub struct TestInputTopic<K, V>(pub(super) Binding<K, V>);

impl<K: 'static, V: 'static> TestInputTopic<K, V> {
    fn encode(&self, record: &TestRecord<K, V>) -> Result<RawRecord> {
        Ok(RawRecord {
            key: Some(self.0.keys.encode(&record.key)?),
            value: Some(self.0.values.encode(&record.value)?),
            timestamp: record.timestamp,
            headers: record.headers.clone(),
        })
    }

    /// Pipes `key`/`value` stamped with the driver's wall-clock time.
    pub fn pipe(&self, key: K, value: V) -> Result<()> {
        let now = self.0.state.borrow().wall_clock;
        self.pipe_record(TestRecord::new(key, value, now))
    }

    /// Pipes `key`/`value` with timestamp `timestamp`.
    pub fn pipe_at(&self, key: K, value: V, timestamp: i64) -> Result<()> {
        self.pipe_record(TestRecord::new(key, value, timestamp))
    }

    /// Pipes a record with headers.
    pub fn pipe_record(&self, record: TestRecord<K, V>) -> Result<()> {
        let raw = self.encode(&record);
        self.0.state.borrow_mut().pipe(&self.0.name, [raw])
    }

    /// Pipes many records and commits once at the end (as a commit interval would).
    pub fn pipe_batch(&self, records: impl IntoIterator<Item = TestRecord<K, V>>) -> Result<()> {
        let raw = records.into_iter().map(|r| self.encode(&r));
        self.0.state.borrow_mut().pipe(&self.0.name, raw)
    }

    /// Pipes raw bytes, for instance a value that does not decode; `None` is a
    /// missing key or a tombstone.
    pub fn pipe_raw(&self, key: Option<&[u8]>, value: Option<&[u8]>, timestamp: i64) -> Result<()> {
        let raw = RawRecord {
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            timestamp,
            headers: Headers::new(),
        };
        self.0.state.borrow_mut().pipe(&self.0.name, [Ok(raw)])
    }
}

/// Reads the records written to a topic of a [`super::TestDriver`], in order.
/// Reading consumes them.
pub struct TestOutputTopic<K, V>(pub(super) Binding<K, V>);

impl<K: 'static, V: 'static> TestOutputTopic<K, V> {
    /// The next unread record, if any; a tombstone or undecodable record is an error.
    pub fn read_record(&self) -> Result<Option<TestRecord<K, V>>, SerdeError> {
        let next = self.0.state.borrow_mut().log_mut(&self.0.name).and_then(|log| log.pop_front());
        let Some(logged) = next else { return Ok(None) };
        let raw = logged.record;
        let key = self.0.keys.decode(raw.key.as_deref().unwrap_or_default())?;
        let value = raw.value.ok_or_else(|| SerdeError::decode("value", "tombstone"))?;
        let value = self.0.values.decode(&value)?;
        Ok(Some(TestRecord { key, value, timestamp: raw.timestamp, headers: raw.headers, partition: logged.partition }))
    }

    /// All unread records.
    pub fn read_records(&self) -> Result<Vec<TestRecord<K, V>>, SerdeError> {
        std::iter::from_fn(|| self.read_record().transpose()).collect()
    }

    /// All unread records as (key, value) pairs.
    pub fn read_key_values(&self) -> Result<Vec<(K, V)>, SerdeError> {
        Ok(self.read_records()?.into_iter().map(|r| (r.key, r.value)).collect())
    }

    /// The number of unread records.
    pub fn len(&self) -> usize {
        self.0.state.borrow_mut().log_mut(&self.0.name).map_or(0, |log| log.len())
    }

    /// True when every record has been read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads a store of a [`super::TestDriver`], across the tasks that hold it.
pub struct TestStore<K, V>(pub(super) Binding<K, V>);

impl<K: 'static, V: 'static> TestStore<K, V> {
    /// The value of `key` in whichever task holds it.
    pub fn get(&self, key: &K) -> Result<Option<V>, StoreError> {
        let mut state = self.0.state.borrow_mut();
        for task in state.tasks.values_mut() {
            if let Some(store) = task.store_mut(&self.0.name) {
                if let Some(value) = Store::new(store, &*self.0.keys, &*self.0.values, &Scratch::default()).get(key)? {
                    return Ok(Some(value));
                }
            }
        }
        Ok(None)
    }

    /// Every entry of every task, task by task, each in key order.
    pub fn all(&self) -> Result<Vec<(K, V)>, StoreError> {
        let mut state = self.0.state.borrow_mut();
        let mut entries = Vec::new();
        for task in state.tasks.values_mut() {
            if let Some(store) = task.store_mut(&self.0.name) {
                entries.extend(Store::new(store, &*self.0.keys, &*self.0.values, &Scratch::default()).all()?);
            }
        }
        Ok(entries)
    }
}
