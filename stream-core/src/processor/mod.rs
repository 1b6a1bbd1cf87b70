//! The low-level Processor API, on which the DSL is built.
//!
//! A [`Processor`] receives typed records one at a time, may read and write the
//! state stores connected to it, forwards records to its children and may be
//! called back periodically (punctuation) on stream time or wall-clock time.
//! Add one to a topology with [`crate::KStream::process`].
//!
//! ```
//! use std::time::Duration;
//! use stream_core::processor::{Processor, ProcessorContext, PunctuationType, StoreHandle};
//! use stream_core::serdes::{Bincode, Utf8};
//! use stream_core::{Record, Result};
//!
//! /// Counts records per key and forwards the counts once a second of stream time.
//! struct PeriodicCounts {
//!     store: Option<StoreHandle<String, u64>>,
//! }
//!
//! impl Processor for PeriodicCounts {
//!     type KIn = String;
//!     type VIn = String;
//!     type KOut = String;
//!     type VOut = u64;
//!
//!     fn init(&mut self, ctx: &mut ProcessorContext<'_, String, u64>) -> Result<()> {
//!         self.store = Some(ctx.store_handle("counts", Utf8, Bincode::new())?);
//!         ctx.schedule(Duration::from_secs(1), PunctuationType::StreamTime);
//!         Ok(())
//!     }
//!
//!     fn process(&mut self, ctx: &mut ProcessorContext<'_, String, u64>, record: Record<String, String>) -> Result<()> {
//!         let handle = self.store.as_ref().expect("init runs first");
//!         let mut store = ctx.store(handle);
//!         let count = store.get(&record.key)?.unwrap_or(0) + 1;
//!         store.put(&record.key, &count)?;
//!         Ok(())
//!     }
//!
//!     fn punctuate(&mut self, ctx: &mut ProcessorContext<'_, String, u64>, _: PunctuationType, time: i64) -> Result<()> {
//!         let handle = self.store.as_ref().expect("init runs first");
//!         for (key, count) in ctx.store(handle).all()? {
//!             ctx.forward(Record::new(key, count, time))?;
//!         }
//!         Ok(())
//!     }
//! }
//! ```

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Result, StoreError};
use crate::record::{Record, RecordMetadata};
use crate::serdes::{Serde, SerdeRef};
use crate::state::Store;
use crate::task::TaskCore;

/// What a record's key or value may be: cloneable (a record forwarded to
/// several children is cloned) and sendable across threads.
pub trait Data: Clone + Send + 'static {}
impl<T: Clone + Send + 'static> Data for T {}

/// A node of the topology that processes typed records.
pub trait Processor: Send + 'static {
    /// Input key type.
    type KIn: Data;
    /// Input value type.
    type VIn: Data;
    /// Output key type.
    type KOut: Data;
    /// Output value type.
    type VOut: Data;

    /// Called once when the task starts, before any record: get store handles
    /// and schedule punctuations here.
    fn init(&mut self, ctx: &mut ProcessorContext<'_, Self::KOut, Self::VOut>) -> Result<()> {
        let _ = ctx;
        Ok(())
    }

    /// Processes one record.
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, Self::KOut, Self::VOut>,
        record: Record<Self::KIn, Self::VIn>,
    ) -> Result<()>;

    /// Called when a punctuation scheduled with [`ProcessorContext::schedule`] is due.
    fn punctuate(
        &mut self,
        ctx: &mut ProcessorContext<'_, Self::KOut, Self::VOut>,
        kind: PunctuationType,
        timestamp: i64,
    ) -> Result<()> {
        let _ = (ctx, kind, timestamp);
        Ok(())
    }

    /// Called once when the task closes.
    fn close(&mut self) {}
}

/// The clock a punctuation follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PunctuationType {
    /// The task's stream time: the largest record timestamp it has seen.
    /// Advances only when records arrive.
    StreamTime,
    /// The host's wall clock (the test driver's clock is advanced by hand).
    WallClock,
}

/// A typed reference to a state store connected to a processor; get one in
/// [`Processor::init`] with [`ProcessorContext::store_handle`].
pub struct StoreHandle<K, V> {
    pub(crate) index: usize,
    keys: SerdeRef<K>,
    values: SerdeRef<V>,
}

impl<K, V> Clone for StoreHandle<K, V> {
    fn clone(&self) -> Self {
        StoreHandle { index: self.index, keys: self.keys.clone(), values: self.values.clone() }
    }
}

/// A processor's access to its task: forwarding, stores, time, punctuation.
pub struct ProcessorContext<'a, K, V> {
    pub(crate) core: &'a mut TaskCore,
    pub(crate) node: usize,
    pub(crate) children: &'a [usize],
    pub(crate) _out: PhantomData<fn(K, V)>,
}

impl<K: Data, V: Data> ProcessorContext<'_, K, V> {
    /// Sends `record` to every child of this processor, depth first.
    pub fn forward(&mut self, record: Record<K, V>) -> Result<()> {
        let Some((last, rest)) = self.children.split_last() else {
            return Ok(());
        };
        for &child in rest {
            self.core.dispatch(child, &mut Some(record.clone()))?;
        }
        self.core.dispatch(*last, &mut Some(record))
    }

    /// Sends `record` to this processor's `index`-th child only (in the order
    /// the children were added).
    pub fn forward_to(&mut self, index: usize, record: Record<K, V>) -> Result<()> {
        match self.children.get(index) {
            Some(&child) => self.core.dispatch(child, &mut Some(record)),
            None => Ok(()),
        }
    }

    /// A typed handle to the store `name`, which must be connected to this processor.
    pub fn store_handle<SK: 'static, SV: 'static>(
        &self,
        name: &str,
        keys: impl Serde<SK>,
        values: impl Serde<SV>,
    ) -> Result<StoreHandle<SK, SV>, StoreError> {
        let index = self.core.store_index(self.node, name)?;
        Ok(StoreHandle { index, keys: Arc::new(keys), values: Arc::new(values) })
    }

    /// The typed store behind `handle`.
    pub fn store<'s, SK: 'static, SV: 'static>(&'s mut self, handle: &'s StoreHandle<SK, SV>) -> Store<'s, SK, SV> {
        Store::new(self.core.stores[handle.index].as_mut(), &*handle.keys, &*handle.values, &self.core.scratch)
    }

    /// Calls [`Processor::punctuate`] every `interval` of the given clock.
    pub fn schedule(&mut self, interval: Duration, kind: PunctuationType) {
        self.core.schedule(self.node, interval, kind);
    }

    /// Where the record being processed came from; `None` during a punctuation.
    pub fn record_metadata(&self) -> Option<&RecordMetadata> {
        self.core.current.as_ref()
    }

    /// The task's stream time (largest timestamp seen), `i64::MIN` before any record.
    pub fn stream_time(&self) -> i64 {
        self.core.stream_time
    }

    /// The host's wall-clock time in milliseconds since the epoch.
    pub fn wall_clock_time(&self) -> i64 {
        self.core.wall_clock
    }

    /// The input partition of this processor's task.
    pub fn partition(&self) -> u32 {
        self.core.partition
    }

    /// The application id (prefix of internal topics).
    pub fn application_id(&self) -> &str {
        &self.core.application_id
    }

    /// Counts a record dropped because it arrived after its window closed.
    pub(crate) fn record_late_drop(&mut self) {
        self.core.metrics.late_dropped += 1;
    }

    /// Hands a record to the task's output (sinks only).
    pub(crate) fn emit(&mut self, record: crate::record::OutputRecord) {
        self.core.metrics.records_out += 1;
        self.core.output.push(record);
    }

    /// The partition count of an output topic, when the host knows it.
    pub(crate) fn partitions_of(&self, topic: &str) -> Option<u32> {
        self.core.partitions.get(topic).copied()
    }
}
