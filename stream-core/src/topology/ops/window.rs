//! Windowed aggregation on record timestamps, with a grace period and retention.

use std::ops::Bound;

use super::aggregate::Update;
use crate::error::Result;
use crate::processor::{Data, Processor, ProcessorContext, StoreHandle};
use crate::record::{Change, Record};
use crate::serdes::SerdeRef;
use crate::topology::windowed::{encode_window_start, TimeWindows, Windowed, WindowedSerde};

pub(crate) struct WindowAggregateProcessor<K, V, A> {
    pub(crate) store: String,
    pub(crate) keys: WindowedSerde<K>,
    pub(crate) values: SerdeRef<A>,
    pub(crate) windows: TimeWindows,
    pub(crate) update: Update<K, V, A>,
    pub(crate) handle: Option<StoreHandle<Windowed<K>, A>>,
    /// Stream time of the last purge of expired windows.
    pub(crate) purged_at: i64,
}

impl<K: Data, V: Data, A: Data> Processor for WindowAggregateProcessor<K, V, A> {
    type KIn = K;
    type VIn = V;
    type KOut = Windowed<K>;
    type VOut = Change<A>;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, Windowed<K>, Change<A>>) -> Result<()> {
        self.handle = Some(ctx.store_handle(&self.store, self.keys.clone(), self.values.clone())?);
        Ok(())
    }

    fn process(&mut self, ctx: &mut ProcessorContext<'_, Windowed<K>, Change<A>>, record: Record<K, V>) -> Result<()> {
        let Some(handle) = self.handle.clone() else {
            return Ok(());
        };
        let now = ctx.stream_time();
        let mut late = false;
        for window in self.windows.windows_for(record.timestamp) {
            if window.end.saturating_add(self.windows.grace) <= now {
                late = true;
                continue;
            }
            let key = Windowed { key: record.key.clone(), window };
            let mut store = ctx.store(&handle);
            let old = store.get(&key)?;
            let new = (self.update)(&record.key, record.value.clone(), old.clone());
            store.put(&key, &new)?;
            let change = Change { old, new: Some(new) };
            ctx.forward(Record { key, value: change, timestamp: record.timestamp, headers: record.headers.clone() })?;
        }
        if late {
            ctx.record_late_drop();
        }
        self.purge(ctx, &handle, now)
    }
}

impl<K: Data, V: Data, A: Data> WindowAggregateProcessor<K, V, A> {
    /// Deletes the windows that ended more than the retention period ago;
    /// at most once per window advance of stream time.
    fn purge(
        &mut self,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Change<A>>,
        handle: &StoreHandle<Windowed<K>, A>,
        now: i64,
    ) -> Result<()> {
        if now < self.purged_at.saturating_add(self.windows.advance) {
            return Ok(());
        }
        self.purged_at = now;
        // A window is expired when end <= now - retention, i.e. start < now - retention - size + 1.
        let first_kept =
            now.saturating_sub(self.windows.retention_ms()).saturating_sub(self.windows.size).saturating_add(1);
        let bound = encode_window_start(first_kept);
        let store = ctx.store(handle).into_inner();
        let expired: Vec<Vec<u8>> = store
            .range(Bound::Unbounded, Bound::Excluded(&bound))?
            .map(|item| item.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        for key in expired {
            store.delete(&key)?;
        }
        Ok(())
    }
}
