//! The staging layer shared by every store: writes go to an overlay that
//! reads see first; commit applies it to the committed base, abort drops it.
//! The overlay is a hash map (point reads and writes are the hot path); it is
//! sorted only for range scans and commits.

use std::collections::{BTreeMap, HashMap};
use std::iter::Peekable;
use std::ops::{Bound, RangeBounds};

use super::{is_empty_range, KeyValue, KeyValueStore, KvIter};
use crate::error::StoreError;

/// Staged changes in key order, as committed: `None` is a deletion.
pub(crate) type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The committed part of a store (sealed: implemented only in this crate).
pub trait Committed: Send {
    fn get(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn with_value(&self, name: &str, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) -> Result<(), StoreError>;
    fn range<'a>(&'a self, name: &str, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Result<KvIter<'a>, StoreError>;
    fn apply(&mut self, name: &str, changes: &Changes) -> Result<(), StoreError>;
    /// See [`KeyValueStore::sync`].
    fn sync(&self, name: &str) -> Result<(), StoreError>;
}

/// A store made of a committed base and staged changes.
pub struct Staged<C> {
    name: String,
    base: C,
    staged: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Staged entries replaced since `begin_record`, oldest first (`None`: no entry).
    undo: Vec<(Vec<u8>, Option<Option<Vec<u8>>>)>,
}

impl<C: Committed> Staged<C> {
    pub(crate) fn with_base(name: String, base: C) -> Self {
        Staged { name, base, staged: HashMap::new(), undo: Vec::new() }
    }

    pub(crate) fn base(&self) -> &C {
        &self.base
    }

    fn stage(&mut self, key: &[u8], change: Option<Vec<u8>>) {
        let previous = match self.staged.get_mut(key) {
            Some(slot) => Some(std::mem::replace(slot, change)),
            None => {
                self.staged.insert(key.to_vec(), change);
                None
            }
        };
        self.undo.push((key.to_vec(), previous));
    }
}

impl<C: Committed> KeyValueStore for Staged<C> {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.staged.get(key) {
            Some(change) => Ok(change.clone()),
            None => self.base.get(&self.name, key),
        }
    }

    fn with_value(&self, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) -> Result<(), StoreError> {
        match self.staged.get(key) {
            Some(change) => {
                f(change.as_deref());
                Ok(())
            }
            None => self.base.with_value(&self.name, key, f),
        }
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.stage(key, Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.stage(key, None);
        Ok(())
    }

    fn range(&self, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Result<KvIter<'_>, StoreError> {
        if is_empty_range(from, to) {
            return Ok(Box::new(std::iter::empty()));
        }
        let base = self.base.range(&self.name, from, to)?;
        let mut staged: Vec<_> = self.staged.iter().filter(|(k, _)| (from, to).contains(&k.as_slice())).collect();
        staged.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Ok(Box::new(Merge { base: base.peekable(), staged: staged.into_iter().peekable() }))
    }

    fn pending_changes(&self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut changes: Vec<_> = self.staged.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        changes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        changes
    }

    fn begin_record(&mut self) {
        self.undo.clear();
    }

    fn rollback_record(&mut self) {
        while let Some((key, previous)) = self.undo.pop() {
            match previous {
                Some(change) => {
                    self.staged.insert(key, change);
                }
                None => {
                    self.staged.remove(&key);
                }
            }
        }
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if !self.staged.is_empty() {
            let changes: Changes = self.staged.drain().collect();
            if let Err(e) = self.base.apply(&self.name, &changes) {
                self.staged.extend(changes);
                return Err(e);
            }
        }
        self.undo.clear();
        Ok(())
    }

    fn abort(&mut self) {
        self.staged.clear();
        self.undo.clear();
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.base.sync(&self.name)
    }
}

/// Merges the committed pairs with the staged changes; staged ones win.
struct Merge<'a, S: Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>> {
    base: Peekable<KvIter<'a>>,
    staged: Peekable<S>,
}

impl<'a, S: Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>> Iterator for Merge<'a, S> {
    type Item = Result<KeyValue, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.base.peek(), self.staged.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => return self.base.next(),
                (Some(Ok(_)), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(Ok((bk, _))), Some((sk, _))) => bk.as_slice().cmp(sk.as_slice()),
            };
            match order {
                std::cmp::Ordering::Less => return self.base.next(),
                std::cmp::Ordering::Equal => {
                    self.base.next();
                }
                std::cmp::Ordering::Greater => {}
            }
            if let Some((key, Some(value))) = self.staged.next() {
                return Some(Ok((key.clone(), value.clone())));
            }
        }
    }
}
