//! The in-memory store.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::staged::{Changes, Committed, Staged};
use super::KvIter;
use crate::error::StoreError;

/// The committed part of an in-memory store.
#[derive(Debug, Default)]
pub struct MemoryBase(BTreeMap<Vec<u8>, Vec<u8>>);

/// A store held in a `BTreeMap`; lost when the process ends (the runtime
/// restores it from its changelog).
pub type InMemoryStore = Staged<MemoryBase>;

impl InMemoryStore {
    /// An empty store named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Staged::with_base(name.into(), MemoryBase::default())
    }
}

impl Committed for MemoryBase {
    fn get(&self, _name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(key).cloned())
    }

    fn with_value(&self, _name: &str, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) -> Result<(), StoreError> {
        f(self.0.get(key).map(Vec::as_slice));
        Ok(())
    }

    fn range<'a>(&'a self, _name: &str, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Result<KvIter<'a>, StoreError> {
        Ok(Box::new(self.0.range::<[u8], _>((from, to)).map(|(k, v)| Ok((k.clone(), v.clone())))))
    }

    fn apply(&mut self, _name: &str, changes: &Changes) -> Result<(), StoreError> {
        for (key, change) in changes {
            match change {
                Some(value) => {
                    self.0.insert(key.clone(), value.clone());
                }
                None => {
                    self.0.remove(key);
                }
            }
        }
        Ok(())
    }
}
