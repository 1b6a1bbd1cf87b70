//! The typed view of a store that processors use.

use std::ops::Bound;

use super::{KeyValueStore, KvIter};
use crate::error::StoreError;
use crate::serdes::Serde;
use crate::task::Scratch;

/// A store seen through a key serde and a value serde.
///
/// Keys are ordered by their encoded bytes: use an order-preserving key serde
/// (such as [`crate::serdes::I64`] for non-negative numbers, or UTF-8 text)
/// when range order matters.
pub struct Store<'a, K, V> {
    inner: &'a mut dyn KeyValueStore,
    keys: &'a dyn Serde<K>,
    values: &'a dyn Serde<V>,
    scratch: &'a Scratch,
}

impl<'a, K: 'static, V: 'static> Store<'a, K, V> {
    pub(crate) fn new(
        inner: &'a mut dyn KeyValueStore,
        keys: &'a dyn Serde<K>,
        values: &'a dyn Serde<V>,
        scratch: &'a Scratch,
    ) -> Self {
        Store { inner, keys, values, scratch }
    }

    fn serde_err(&self, source: crate::error::SerdeError) -> StoreError {
        StoreError::Serde { store: self.inner.name().to_string(), source }
    }

    fn key_bytes(&self, key: &K) -> Result<Vec<u8>, StoreError> {
        self.keys.encode(key).map_err(|e| self.serde_err(e))
    }

    /// The untyped store underneath.
    pub fn into_inner(self) -> &'a mut dyn KeyValueStore {
        self.inner
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Result<Option<V>, StoreError> {
        let mut k = self.scratch.key.take();
        k.clear();
        let mut decoded = Ok(None);
        let found = match self.keys.encode_into(key, &mut k) {
            Ok(()) => self.inner.with_value(&k, &mut |bytes| {
                decoded = bytes.map(|b| self.values.decode(b)).transpose();
            }),
            Err(e) => Err(self.serde_err(e)),
        };
        self.scratch.key.set(k);
        found?;
        decoded.map_err(|e| self.serde_err(e))
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &K, value: &V) -> Result<(), StoreError> {
        let (mut k, mut v) = (self.scratch.key.take(), self.scratch.value.take());
        k.clear();
        v.clear();
        let result = match (self.keys.encode_into(key, &mut k), self.values.encode_into(value, &mut v)) {
            (Ok(()), Ok(())) => self.inner.put(&k, &v),
            (Err(e), _) | (_, Err(e)) => Err(self.serde_err(e)),
        };
        self.scratch.key.set(k);
        self.scratch.value.set(v);
        result
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &K) -> Result<(), StoreError> {
        let key = self.key_bytes(key)?;
        self.inner.delete(&key)
    }

    /// The pairs whose keys lie within the bounds, in encoded-key order.
    pub fn range(&self, from: Bound<&K>, to: Bound<&K>) -> Result<Vec<(K, V)>, StoreError> {
        let encode = |b: Bound<&K>| -> Result<Bound<Vec<u8>>, StoreError> {
            Ok(match b {
                Bound::Included(k) => Bound::Included(self.key_bytes(k)?),
                Bound::Excluded(k) => Bound::Excluded(self.key_bytes(k)?),
                Bound::Unbounded => Bound::Unbounded,
            })
        };
        let (from, to) = (encode(from)?, encode(to)?);
        let iter = self.inner.range(as_slice(&from), as_slice(&to))?;
        self.decode_all(iter)
    }

    /// The pairs whose encoded keys start with `prefix`.
    pub fn prefix_scan(&self, prefix: &[u8]) -> Result<Vec<(K, V)>, StoreError> {
        let iter = self.inner.prefix_scan(prefix)?;
        self.decode_all(iter)
    }

    /// Every pair, in encoded-key order.
    pub fn all(&self) -> Result<Vec<(K, V)>, StoreError> {
        self.range(Bound::Unbounded, Bound::Unbounded)
    }

    fn decode_all(&self, iter: KvIter<'_>) -> Result<Vec<(K, V)>, StoreError> {
        iter.map(|item| {
            let (k, v) = item?;
            let key = self.keys.decode(&k).map_err(|e| self.serde_err(e))?;
            let value = self.values.decode(&v).map_err(|e| self.serde_err(e))?;
            Ok((key, value))
        })
        .collect()
    }
}

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}
