//! Read-only views of the committed state of stores, for interactive
//! queries from other threads: a view answers with what the store's last
//! commit left, without waiting on the task that writes it (a commit applies
//! to a store at once: one map update under a lock, one RocksDB write batch).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use rocksdb::{IteratorMode, DB};

use super::KeyValue;
use crate::error::StoreError;

/// The committed map of an in-memory store, shared with its views.
pub(crate) type SharedMap = Arc<RwLock<BTreeMap<Vec<u8>, Vec<u8>>>>;

/// A view of one store's committed state; cheap to clone.
#[derive(Clone)]
pub(crate) enum StoreView {
    Memory(SharedMap),
    RocksDb { db: Arc<DB>, name: String },
}

impl StoreView {
    /// The committed value of `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            StoreView::Memory(map) => Ok(map.read().map_err(|_| StoreError::Unavailable)?.get(key).cloned()),
            StoreView::RocksDb { db, name } => {
                let cf = db.cf_handle(name).ok_or_else(|| StoreError::NotConnected(name.clone()))?;
                db.get_cf(cf, key).map_err(|source| StoreError::RocksDb { store: name.clone(), source })
            }
        }
    }

    /// Every committed pair, in key order, as of one commit.
    pub(crate) fn all(&self) -> Result<Vec<KeyValue>, StoreError> {
        match self {
            StoreView::Memory(map) => {
                let map = map.read().map_err(|_| StoreError::Unavailable)?;
                Ok(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            }
            StoreView::RocksDb { db, name } => {
                let cf = db.cf_handle(name).ok_or_else(|| StoreError::NotConnected(name.clone()))?;
                // An iterator reads one implicit snapshot.
                db.iterator_cf(cf, IteratorMode::Start)
                    .map(|item| {
                        item.map(|(k, v)| (k.into_vec(), v.into_vec()))
                            .map_err(|source| StoreError::RocksDb { store: name.clone(), source })
                    })
                    .collect()
            }
        }
    }
}
