//! The RocksDB store: one RocksDB instance per task, a column family per store.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, WriteBatch, DB};

use super::staged::{Changes, Committed, Staged};
use super::view::StoreView;
use super::KvIter;
use crate::error::StoreError;

/// One task's RocksDB instance, holding a column family per store.
#[derive(Clone)]
pub struct RocksDbInstance {
    db: Arc<DB>,
}

/// The committed part of a RocksDB store: its column family.
pub struct RocksBase {
    db: Arc<DB>,
}

/// A store kept in a column family of its task's RocksDB instance.
pub type RocksDbStore = Staged<RocksBase>;

fn rocks_err(store: &str) -> impl FnOnce(rocksdb::Error) -> StoreError + '_ {
    move |source| StoreError::RocksDb { store: store.to_string(), source }
}

impl RocksDbInstance {
    /// Opens (creating when missing) the instance at `path` with a column family per store.
    pub fn open(path: impl AsRef<Path>, stores: &[String]) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path.as_ref())
            .map_err(|e| StoreError::Io { path: path.as_ref().display().to_string(), source: e })?;
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let families = stores.iter().map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&options, path.as_ref(), families).map_err(rocks_err("<instance>"))?;
        Ok(RocksDbInstance { db: Arc::new(db) })
    }

    /// A view of the committed state of the store kept in column family `name`.
    pub(crate) fn view(&self, name: &str) -> StoreView {
        StoreView::RocksDb { db: self.db.clone(), name: name.to_string() }
    }

    /// The store kept in column family `name`.
    pub fn store(&self, name: &str) -> Result<RocksDbStore, StoreError> {
        if self.db.cf_handle(name).is_none() {
            return Err(StoreError::NotConnected(name.to_string()));
        }
        Ok(Staged::with_base(name.to_string(), RocksBase { db: self.db.clone() }))
    }
}

impl RocksBase {
    fn cf(&self, name: &str) -> Result<&ColumnFamily, StoreError> {
        self.db.cf_handle(name).ok_or_else(|| StoreError::NotConnected(name.to_string()))
    }
}

/// The smallest key after `key`.
pub(super) fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

impl Committed for RocksBase {
    fn get(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get_cf(self.cf(name)?, key).map_err(rocks_err(name))
    }

    fn with_value(&self, name: &str, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) -> Result<(), StoreError> {
        let value = self.db.get_pinned_cf(self.cf(name)?, key).map_err(rocks_err(name))?;
        f(value.as_deref());
        Ok(())
    }

    fn range<'a>(&'a self, name: &str, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Result<KvIter<'a>, StoreError> {
        let mut read = ReadOptions::default();
        let lower = match from {
            Bound::Included(k) => Some(k.to_vec()),
            Bound::Excluded(k) => Some(successor(k)),
            Bound::Unbounded => None,
        };
        match to {
            Bound::Included(k) => read.set_iterate_upper_bound(successor(k)),
            Bound::Excluded(k) => read.set_iterate_upper_bound(k.to_vec()),
            Bound::Unbounded => {}
        }
        let mode = match &lower {
            Some(k) => IteratorMode::From(k, Direction::Forward),
            None => IteratorMode::Start,
        };
        let store = name.to_string();
        let iter = self.db.iterator_cf_opt(self.cf(name)?, read, mode);
        Ok(Box::new(iter.map(move |item| item.map(|(k, v)| (k.into_vec(), v.into_vec())).map_err(rocks_err(&store)))))
    }

    fn apply(&mut self, name: &str, changes: &Changes) -> Result<(), StoreError> {
        let cf = self.cf(name)?;
        let mut batch = WriteBatch::default();
        for (key, change) in changes {
            match change {
                Some(value) => batch.put_cf(cf, key, value),
                None => batch.delete_cf(cf, key),
            }
        }
        self.db.write(batch).map_err(rocks_err(name))
    }

    /// Writes are not synced one by one (a commit is durable in the
    /// changelog first); syncing the write-ahead log makes all of them durable.
    fn sync(&self, name: &str) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(rocks_err(name))
    }
}
