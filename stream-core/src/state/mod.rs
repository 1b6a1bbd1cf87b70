//! State stores.
//!
//! A store is a sorted key-value map of bytes ([`KeyValueStore`]). Writes are
//! *staged*: they are visible to reads at once, but become durable only when
//! the task commits ([`KeyValueStore::commit`]) and are thrown away when it
//! aborts ([`KeyValueStore::abort`]). The staged writes are also the store's
//! changes since the last commit, which the runtime writes to the store's
//! changelog topic in the same commit ([`KeyValueStore::pending_changes`]).
//!
//! Two implementations share that staging logic: [`InMemoryStore`]
//! and [`RocksDbStore`] (one RocksDB instance per task, a column family per
//! store). Processors use them through the typed view [`Store`].

mod memory;
mod rocks;
mod staged;
mod typed;
mod view;

use std::ops::Bound;

pub use memory::InMemoryStore;
pub use rocks::{RocksDbInstance, RocksDbStore};
pub use typed::Store;
pub(crate) use view::StoreView;

use crate::error::StoreError;

/// A key-value pair of bytes.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// An iterator over key-value pairs in key order.
pub type KvIter<'a> = Box<dyn Iterator<Item = Result<KeyValue, StoreError>> + 'a>;

/// A sorted key-value store of bytes with staged (transactional) writes.
pub trait KeyValueStore: Send {
    /// The store's name.
    fn name(&self) -> &str;

    /// The value of `key`, staged writes included.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Calls `f` with the value of `key` (staged writes included) without
    /// copying it.
    fn with_value(&self, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) -> Result<(), StoreError> {
        f(self.get(key)?.as_deref());
        Ok(())
    }

    /// Stages `key = value`.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;

    /// Stages the deletion of `key`.
    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError>;

    /// The pairs whose keys are within the bounds, in key order.
    fn range(&self, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Result<KvIter<'_>, StoreError>;

    /// The pairs whose keys start with `prefix`, in key order.
    fn prefix_scan(&self, prefix: &[u8]) -> Result<KvIter<'_>, StoreError> {
        let end = prefix_successor(prefix);
        let to = match &end {
            Some(end) => Bound::Excluded(end.as_slice()),
            None => Bound::Unbounded,
        };
        self.range(Bound::Included(prefix), to)
    }

    /// The changes staged since the last commit, in key order: `None` is a deletion.
    fn pending_changes(&self) -> Vec<(Vec<u8>, Option<Vec<u8>>)>;

    /// Marks the start of one record's writes, so that a failing record can be
    /// undone with [`KeyValueStore::rollback_record`].
    fn begin_record(&mut self);

    /// Undoes the writes staged since [`KeyValueStore::begin_record`].
    fn rollback_record(&mut self);

    /// Makes the staged writes durable.
    fn commit(&mut self) -> Result<(), StoreError>;

    /// Discards the staged writes.
    fn abort(&mut self);

    /// Waits until what was committed would survive a power loss (before a
    /// local checkpoint says the store holds it). Nothing to do by default.
    fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Where a task keeps its stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StateBackend {
    /// In memory; lost when the process ends.
    #[default]
    InMemory,
    /// RocksDB, one instance per task under this directory.
    RocksDb(std::path::PathBuf),
}

impl StateBackend {
    /// Deletes the local state of one task (RocksDB only): the Kafka runtime
    /// rebuilds it from the changelogs, which alone say what was committed.
    pub fn wipe_task(&self, application: &str, task: &str) -> Result<(), StoreError> {
        let StateBackend::RocksDb(dir) = self else { return Ok(()) };
        let path = dir.join(application).join(task);
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::Io { path: path.display().to_string(), source: e })
            }
            _ => Ok(()),
        }
    }

    /// Opens the stores of one task, kept (for RocksDB) under `<dir>/<application>/<task>`.
    pub fn open_task_stores(
        &self,
        application: &str,
        task: &str,
        names: &[String],
    ) -> Result<Vec<Box<dyn KeyValueStore>>, StoreError> {
        Ok(self.open_viewed(application, task, names)?.into_iter().map(|(store, _)| store).collect())
    }

    /// Opens the stores of one task, each with a view of its committed state.
    pub(crate) fn open_viewed(
        &self,
        application: &str,
        task: &str,
        names: &[String],
    ) -> Result<Vec<(Box<dyn KeyValueStore>, StoreView)>, StoreError> {
        match self {
            StateBackend::InMemory => Ok(names
                .iter()
                .map(|n| {
                    let store = InMemoryStore::new(n.clone());
                    let view = store.base().view();
                    (Box::new(store) as Box<dyn KeyValueStore>, view)
                })
                .collect()),
            StateBackend::RocksDb(dir) => {
                if names.is_empty() {
                    return Ok(Vec::new());
                }
                let instance = RocksDbInstance::open(dir.join(application).join(task), names)?;
                let open = |n: &String| Ok((Box::new(instance.store(n)?) as Box<dyn KeyValueStore>, instance.view(n)));
                names.iter().map(open).collect()
            }
        }
    }
}

/// The smallest key greater than every key starting with `prefix`, if any.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// True when no key can lie within the bounds (where `BTreeMap::range` would panic).
fn is_empty_range(from: Bound<&[u8]>, to: Bound<&[u8]>) -> bool {
    use Bound::*;
    match (from, to) {
        (Included(a), Included(b)) => a > b,
        (Included(a), Excluded(b)) | (Excluded(a), Included(b)) | (Excluded(a), Excluded(b)) => a >= b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_successor_skips_max_bytes() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
        assert_eq!(prefix_successor(b""), None);
    }
}
