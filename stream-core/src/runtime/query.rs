//! Interactive queries: reading a running application's stores from another
//! thread (an HTTP endpoint, a status command).

use std::ops::Bound;
use std::sync::{Arc, Mutex};

use super::engine::Engine;
use crate::error::StoreError;
use crate::serdes::Serde;
use crate::state::Store;
use crate::task::Scratch;

/// Reads the stores of the tasks a runtime currently runs; cheap to clone.
///
/// Reads see the latest writes, including those of the commit in progress.
/// Each task holds the keys of its partition, so a reader sees the keys of
/// the partitions assigned to this instance only.
#[derive(Clone)]
pub struct StoreReader(pub(super) Arc<Mutex<Engine>>);

impl StoreReader {
    /// The value of `key` in store `store`, if a task of this instance has it.
    pub fn get<K: 'static, V: 'static>(
        &self,
        store: &str,
        key: &K,
        keys: impl Serde<K>,
        values: impl Serde<V>,
    ) -> Result<Option<V>, StoreError> {
        let mut found = None;
        self.each(store, |inner, scratch| {
            if found.is_none() {
                found = Store::new(inner, &keys, &values, scratch).get(key)?;
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Every pair of store `store` held by this instance, in encoded-key order
    /// within each partition.
    pub fn all<K: 'static, V: 'static>(
        &self,
        store: &str,
        keys: impl Serde<K>,
        values: impl Serde<V>,
    ) -> Result<Vec<(K, V)>, StoreError> {
        let mut pairs = Vec::new();
        self.each(store, |inner, scratch| {
            pairs.extend(Store::new(inner, &keys, &values, scratch).range(Bound::Unbounded, Bound::Unbounded)?);
            Ok(())
        })?;
        Ok(pairs)
    }

    fn each(
        &self,
        store: &str,
        mut f: impl FnMut(&mut dyn crate::state::KeyValueStore, &Scratch) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut engine = self.0.lock().map_err(|_| StoreError::Unavailable)?;
        let scratch = Scratch::default();
        engine.for_each_store(store, |inner| f(inner, &scratch))
    }
}
