//! Keyed aggregation into a store, and tables read from a topic.

use std::sync::Arc;

use crate::error::Result;
use crate::processor::{Data, Processor, ProcessorContext, StoreHandle};
use crate::record::{Change, Record};
use crate::serdes::SerdeRef;

/// Computes the new aggregate of a key from a value and the old aggregate.
pub(crate) type Update<K, V, A> = Arc<dyn Fn(&K, V, Option<A>) -> A + Send + Sync>;

/// The update of `aggregate`: fold into `init()` for a new key.
pub(crate) fn aggregator<K, V, A>(
    init: impl Fn() -> A + Send + Sync + 'static,
    add: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
) -> Update<K, V, A> {
    Arc::new(move |k, v, old| add(k, v, old.unwrap_or_else(&init)))
}

/// The update of `reduce`: the first value of a key is kept as is.
pub(crate) fn reducer<K, V>(reduce: impl Fn(V, V) -> V + Send + Sync + 'static) -> Update<K, V, V> {
    Arc::new(move |_, v, old| match old {
        Some(acc) => reduce(acc, v),
        None => v,
    })
}

/// Folds each record into its key's aggregate and forwards the change.
pub(crate) struct AggregateProcessor<K, V, A> {
    pub(crate) store: String,
    pub(crate) keys: SerdeRef<K>,
    pub(crate) values: SerdeRef<A>,
    pub(crate) update: Update<K, V, A>,
    pub(crate) handle: Option<StoreHandle<K, A>>,
}

impl<K: Data, V: Data, A: Data> Processor for AggregateProcessor<K, V, A> {
    type KIn = K;
    type VIn = V;
    type KOut = K;
    type VOut = Change<A>;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, K, Change<A>>) -> Result<()> {
        self.handle = Some(ctx.store_handle(&self.store, self.keys.clone(), self.values.clone())?);
        Ok(())
    }

    fn process(&mut self, ctx: &mut ProcessorContext<'_, K, Change<A>>, record: Record<K, V>) -> Result<()> {
        let Some(handle) = &self.handle else {
            return Ok(());
        };
        let mut store = ctx.store(handle);
        let old = store.get(&record.key)?;
        let new = (self.update)(&record.key, record.value, old.clone());
        store.put(&record.key, &new)?;
        let change = Change { old, new: Some(new) };
        ctx.forward(Record { key: record.key, value: change, timestamp: record.timestamp, headers: record.headers })
    }
}

/// Upserts (or, for a tombstone, deletes) each record into the table's store.
pub(crate) struct TableSourceProcessor<K, V> {
    pub(crate) store: String,
    pub(crate) keys: SerdeRef<K>,
    pub(crate) values: SerdeRef<V>,
    pub(crate) handle: Option<StoreHandle<K, V>>,
}

impl<K: Data, V: Data> Processor for TableSourceProcessor<K, V> {
    type KIn = K;
    type VIn = Option<V>;
    type KOut = K;
    type VOut = Change<V>;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, K, Change<V>>) -> Result<()> {
        self.handle = Some(ctx.store_handle(&self.store, self.keys.clone(), self.values.clone())?);
        Ok(())
    }

    fn process(&mut self, ctx: &mut ProcessorContext<'_, K, Change<V>>, record: Record<K, Option<V>>) -> Result<()> {
        let Some(handle) = &self.handle else {
            return Ok(());
        };
        let mut store = ctx.store(handle);
        let old = store.get(&record.key)?;
        match &record.value {
            Some(value) => store.put(&record.key, value)?,
            None => store.delete(&record.key)?,
        }
        let change = Change { old, new: record.value };
        ctx.forward(Record { key: record.key, value: change, timestamp: record.timestamp, headers: record.headers })
    }
}
