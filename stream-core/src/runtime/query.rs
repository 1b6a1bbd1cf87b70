//! Interactive queries: reading a running application's stores from another
//! thread (an HTTP endpoint, a status command).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::error::StoreError;
use crate::serdes::Serde;
use crate::state::StoreView;
use crate::topology::TaskId;

/// The stores of the open tasks, by task: (store name, view of its committed state).
pub(super) type Views = Arc<RwLock<BTreeMap<TaskId, Vec<(String, StoreView)>>>>;

/// Reads the stores of the tasks a runtime currently runs; cheap to clone.
///
/// Reads see the state of each task's last commit, and never wait for the
/// runtime: it goes on processing, committing and restoring meanwhile. Each
/// task holds the keys of its partition, so a reader sees the keys of the
/// partitions whose tasks are open on this instance only (not those still
/// restoring).
#[derive(Clone)]
pub struct StoreReader(pub(super) Views);

impl StoreReader {
    /// The value of `key` in store `store`, if a task of this instance has it.
    pub fn get<K: 'static, V: 'static>(
        &self,
        store: &str,
        key: &K,
        keys: impl Serde<K>,
        values: impl Serde<V>,
    ) -> Result<Option<V>, StoreError> {
        let serde = |source| StoreError::Serde { store: store.to_string(), source };
        let key = keys.encode(key).map_err(serde)?;
        let mut found = None;
        self.each(store, |view| {
            if found.is_none() {
                found = view.get(&key)?;
            }
            Ok(())
        })?;
        found.map(|value| values.decode(&value).map_err(serde)).transpose()
    }

    /// Every pair of store `store` held by this instance, in encoded-key order
    /// within each partition.
    pub fn all<K: 'static, V: 'static>(
        &self,
        store: &str,
        keys: impl Serde<K>,
        values: impl Serde<V>,
    ) -> Result<Vec<(K, V)>, StoreError> {
        let serde = |source| StoreError::Serde { store: store.to_string(), source };
        let mut pairs = Vec::new();
        self.each(store, |view| {
            for (key, value) in view.all()? {
                pairs.push((keys.decode(&key).map_err(serde)?, values.decode(&value).map_err(serde)?));
            }
            Ok(())
        })?;
        Ok(pairs)
    }

    /// Up to `limit` pairs of store `store` held by this instance whose
    /// encoded keys come after `after`'s (from the first when `None`), in
    /// encoded-key order across all its partitions: a page of a large store.
    /// The next page starts after the last key of this one; a page shorter
    /// than `limit` is the last.
    pub fn page<K: 'static, V: 'static>(
        &self,
        store: &str,
        after: Option<&K>,
        limit: usize,
        keys: impl Serde<K>,
        values: impl Serde<V>,
    ) -> Result<Vec<(K, V)>, StoreError> {
        let serde = |source| StoreError::Serde { store: store.to_string(), source };
        let after = after.map(|key| keys.encode(key)).transpose().map_err(serde)?;
        // The first `limit` keys overall are among the first `limit` of each partition.
        let mut pairs = Vec::new();
        self.each(store, |view| {
            pairs.extend(view.page(after.as_deref(), limit)?);
            Ok(())
        })?;
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        pairs.truncate(limit);
        pairs
            .into_iter()
            .map(|(key, value)| Ok((keys.decode(&key).map_err(serde)?, values.decode(&value).map_err(serde)?)))
            .collect()
    }

    /// Runs `f` on the view of store `store` of every open task that has one.
    /// The views are held for the call only: a task closing waits for it to
    /// end before it closes its stores.
    fn each(&self, store: &str, mut f: impl FnMut(&StoreView) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let views = self.0.read().map_err(|_| StoreError::Unavailable)?;
        for view in views.values().flatten().filter(|(name, _)| name == store).map(|(_, view)| view) {
            f(view)?;
        }
        Ok(())
    }
}
