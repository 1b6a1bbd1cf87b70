//! Read-only views of the committed state of stores, for interactive
//! queries from other threads: a view answers with what the store's last
//! commit left, without waiting on the task that writes it (a commit applies
//! to a store at once: one map update under a lock, one RocksDB write batch).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use std::ops::Bound;

use rocksdb::{Direction, IteratorMode, DB};

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

    /// Up to `limit` committed pairs with keys after `after` (from the
    /// first key when `None`), in key order, as of one commit.
    pub(crate) fn page(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        match self {
            StoreView::Memory(map) => {
                let map = map.read().map_err(|_| StoreError::Unavailable)?;
                let from = after.map_or(Bound::Unbounded, Bound::Excluded);
                Ok(map
                    .range::<[u8], _>((from, Bound::Unbounded))
                    .take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect())
            }
            StoreView::RocksDb { db, name } => {
                let cf = db.cf_handle(name).ok_or_else(|| StoreError::NotConnected(name.clone()))?;
                let from = after.map(super::rocks::successor);
                let mode =
                    from.as_deref().map_or(IteratorMode::Start, |key| IteratorMode::From(key, Direction::Forward));
                db.iterator_cf(cf, mode)
                    .take(limit)
                    .map(|item| {
                        item.map(|(k, v)| (k.into_vec(), v.into_vec()))
                            .map_err(|source| StoreError::RocksDb { store: name.clone(), source })
                    })
                    .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{InMemoryStore, KeyValueStore, RocksDbInstance};

    fn keys(pairs: Vec<KeyValue>) -> Vec<Vec<u8>> {
        pairs.into_iter().map(|(k, _)| k).collect()
    }

    /// Pages of both kinds of view: after a key (present or not), from the
    /// start, and past the end; only committed pairs.
    fn pages(store: &mut dyn KeyValueStore, view: StoreView) {
        for key in [&b"a"[..], b"b", b"b\0", b"c", b"e"] {
            store.put(key, b"v").unwrap();
        }
        store.commit().unwrap();
        store.put(b"d", b"staged").unwrap();
        assert_eq!(keys(view.page(None, 2).unwrap()), [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(keys(view.page(Some(b"b"), 2).unwrap()), [b"b\0".to_vec(), b"c".to_vec()]);
        assert_eq!(keys(view.page(Some(b"cc"), 5).unwrap()), [b"e".to_vec()]);
        assert!(view.page(Some(b"e"), 5).unwrap().is_empty());
    }

    #[test]
    fn a_memory_view_pages_through_committed_keys() {
        let mut store = InMemoryStore::new("s");
        let view = store.base().view();
        pages(&mut store, view);
    }

    #[test]
    fn a_rocksdb_view_pages_through_committed_keys() {
        let dir = tempfile::tempdir().unwrap();
        let instance = RocksDbInstance::open(dir.path(), &["s".to_string()]).unwrap();
        let mut store = instance.store("s").unwrap();
        pages(&mut store, instance.view("s"));
    }
}
