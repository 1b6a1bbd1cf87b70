//! The in-memory store.

use std::ops::Bound;
use std::sync::{RwLockReadGuard, RwLockWriteGuard};

use super::staged::{Changes, Committed, Staged};
use super::view::{SharedMap, StoreView};
use super::KvIter;
use crate::error::StoreError;

/// The committed part of an in-memory store, shared with its views (see
/// [`StoreView`]); only commits write it.
#[derive(Debug, Default)]
pub struct MemoryBase(SharedMap);

/// A store held in a `BTreeMap`; lost when the process ends (the runtime
/// restores it from its changelog).
pub type InMemoryStore = Staged<MemoryBase>;

impl InMemoryStore {
    /// An empty store named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Staged::with_base(name.into(), MemoryBase::default())
    }
}

impl MemoryBase {
    pub(crate) fn view(&self) -> StoreView {
        StoreView::Memory(self.0.clone())
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, std::collections::BTreeMap<Vec<u8>, Vec<u8>>>, StoreError> {
        self.0.read().map_err(|_| StoreError::Unavailable)
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, std::collections::BTreeMap<Vec<u8>, Vec<u8>>>, StoreError> {
        self.0.write().map_err(|_| StoreError::Unavailable)
    }
}

impl Committed for MemoryBase {
    fn get(&self, _name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read()?.get(key).cloned())
    }

    fn with_value(&self, _name: &str, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) -> Result<(), StoreError> {
        f(self.read()?.get(key).map(Vec::as_slice));
        Ok(())
    }

    fn range<'a>(&'a self, _name: &str, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Result<KvIter<'a>, StoreError> {
        // Copied out under the lock, which a view may be waiting for.
        let pairs: Vec<_> =
            self.read()?.range::<[u8], _>((from, to)).map(|(k, v)| Ok((k.clone(), v.clone()))).collect();
        Ok(Box::new(pairs.into_iter()))
    }

    fn apply(&mut self, _name: &str, changes: &Changes) -> Result<(), StoreError> {
        let mut map = self.write()?;
        for (key, change) in changes {
            match change {
                Some(value) => {
                    map.insert(key.clone(), value.clone());
                }
                None => {
                    map.remove(key);
                }
            }
        }
        Ok(())
    }

    /// Lost with the process anyway.
    fn sync(&self, _name: &str) -> Result<(), StoreError> {
        Ok(())
    }
}
