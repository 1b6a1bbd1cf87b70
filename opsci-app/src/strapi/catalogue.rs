//! Keeps Strapi's products equal to the latest [`ProductState`] of each
//! product on the catalogue topic.
//!
//! - Coalesced: records are gathered for one interval (the commit interval)
//!   and only the latest state of each product is written: at most one
//!   write per changed product per interval, whatever the movement rate.
//! - Absolute: a write sets `stock_available` and `status` (and the
//!   details), never an increment, so writing a state twice is harmless.
//! - Never lost: offsets are committed only when every state read so far is
//!   in Strapi. While Strapi is down, writes are retried with backoff and
//!   newer states keep replacing older ones; the fold is never slowed, since
//!   it runs elsewhere and only writes the topic.
//! - Never assumes Strapi's numbering: product ids map to Strapi entries
//!   through [`Entries`]; an unmapped product adopts the one unmapped Strapi
//!   product with the same barcode (so a crash between create and mapping,
//!   or a catalogue created by other tools, does not duplicate entries),
//!   else is created.
//!
//! A state Strapi refuses (HTTP 4xx other than 404/408/429) goes to the
//! error topic with Strapi's message.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use stream_core::runtime::Waiting;

use super::client::{StrapiClient, StrapiError};
use super::entries::Entries;
use super::support::{is_refusal, source_of, ErrorSink, Tracked};
use super::SyncError;
use crate::metrics::AppMetrics;
use crate::model::ProductState;
use crate::topology::{Reason, Rejection, Source};

/// A state waiting to be written, and where it was read.
#[derive(Clone)]
struct Pending {
    partition: i32,
    state: ProductState,
    source: Source,
}

/// The product side of the Strapi sync; see the [module docs](self).
pub struct CatalogueSync {
    strapi: StrapiClient,
    entries: Entries,
    errors: ErrorSink,
    interval: Duration,
    metrics: Arc<AppMetrics>,
    pending: BTreeMap<u64, Pending>,
    /// Whether the entries were refreshed during this batch of writes.
    refreshed: bool,
}

impl CatalogueSync {
    pub(super) fn new(
        strapi: StrapiClient,
        entries: Entries,
        errors: ErrorSink,
        interval: Duration,
        metrics: Arc<AppMetrics>,
    ) -> Self {
        CatalogueSync { strapi, entries, errors, interval, metrics, pending: BTreeMap::new(), refreshed: false }
    }

    /// Runs until `stop` is set, reading the catalogue topic with `consumer`.
    pub fn run(mut self, consumer: BaseConsumer<Tracked>, stop: &AtomicBool) -> Result<(), SyncError> {
        let mut waiting = Waiting::new(format!("Strapi at {}", self.strapi.base()));
        let mut retry_at = Instant::now();
        let mut unstored = false;
        while !stop.load(Ordering::Relaxed) {
            let deadline = Instant::now() + self.interval;
            while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
                let polled = consumer.poll(left);
                // States read before a revocation that this poll served are
                // dropped (the partition's next owner, maybe this instance
                // again, reads them again from the committed offset); a record
                // it returned comes after the revocation, so it is kept.
                for partition in consumer.context().take_revoked() {
                    self.pending.retain(|_, p| p.partition != partition);
                }
                match polled {
                    Some(Ok(message)) => {
                        self.take(&message)?;
                        unstored = true;
                    }
                    Some(Err(error)) => tracing::warn!(%error, "catalogue consumer"),
                    None => {}
                }
            }
            if !self.pending.is_empty() && Instant::now() >= retry_at {
                match self.write_pending() {
                    Ok(()) => {
                        waiting.succeeded();
                    }
                    Err(error) => {
                        retry_at = Instant::now() + waiting.failed(&error);
                        tracing::debug!(%error, backlog = self.pending.len(), "Strapi catalogue sync: will retry");
                    }
                }
            }
            if self.pending.is_empty() && unstored {
                // Everything read so far is in Strapi: the next start may skip it.
                consumer.store_offsets(&consumer.position()?)?;
                unstored = false;
            }
            self.metrics.set_strapi_backlog(self.pending.len());
        }
        Ok(())
    }

    /// Keeps the latest state of the record's product.
    fn take(&mut self, message: &BorrowedMessage<'_>) -> Result<(), KafkaError> {
        let key = message.key().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
        let Some(payload) = message.payload() else { return Ok(()) };
        let parsed = serde_json::from_slice::<ProductState>(payload);
        let (id, state) = match (key.parse::<u64>(), parsed) {
            (Ok(id), Ok(state)) if state.product.id == id => (id, state),
            (_, Err(error)) => {
                return self.errors.reject(message, Reason::MalformedJson { detail: error.to_string() });
            }
            (_, Ok(_)) => {
                let detail = format!("catalogue key {key:?} is not the product's id");
                return self.errors.reject(message, Reason::BadId { detail });
            }
        };
        self.pending.insert(id, Pending { partition: message.partition(), state, source: source_of(message) });
        Ok(())
    }

    /// Writes every pending state; stops at the first failure that a retry
    /// may cure, leaving it and the rest pending.
    fn write_pending(&mut self) -> Result<(), SyncError> {
        self.refreshed = false;
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            let Some(Pending { state, source, .. }) = self.pending.get(&id).cloned() else { continue };
            match self.write(id, &state) {
                Ok(()) => {}
                Err(SyncError::Strapi(error)) if is_refusal(&error) => {
                    let reason = Reason::StrapiRejected { detail: error.to_string() };
                    let record = serde_json::to_string(&state).unwrap_or_default();
                    self.errors.send(&id.to_string(), &Rejection::new(reason, record, source))?;
                }
                Err(error) => return Err(error),
            }
            self.pending.remove(&id);
            self.metrics.set_strapi_backlog(self.pending.len());
        }
        Ok(())
    }

    /// Makes Strapi's product `id` equal to `state`.
    fn write(&mut self, id: u64, state: &ProductState) -> Result<(), SyncError> {
        if let Some(entry) = self.entries.get(id).cloned() {
            match self.strapi.update_product(&entry, state) {
                Ok(_) => return Ok(()),
                Err(error) if error.is_not_found() => {
                    tracing::warn!(product = id, "the product's Strapi entry was deleted; creating it again");
                    self.entries.set(id, None)?;
                }
                Err(error) => return Err(error.into()),
            }
        } else if !std::mem::replace(&mut self.refreshed, true) {
            // Another instance may have created it since we last looked (once
            // per batch: a refresh costs a round trip, and a batch after a
            // takeover holds thousands of products this instance never mapped).
            self.entries.refresh()?;
            if self.entries.get(id).is_some() {
                return self.write(id, state);
            }
        }
        if let Some(entry) = self.adoptable(&state.product.barcode)? {
            self.entries.set(id, Some(entry.clone()))?;
            self.strapi.update_product(&entry, state)?;
            return Ok(());
        }
        let created = self.strapi.create_product(state)?;
        self.entries.set(id, Some(created.entry))?;
        Ok(())
    }

    /// The one Strapi product with this barcode that no product is mapped
    /// to, if there is exactly one.
    fn adoptable(&self, barcode: &str) -> Result<Option<super::client::EntryRef>, StrapiError> {
        if barcode.is_empty() {
            return Ok(None);
        }
        let mapped = self.entries.mapped();
        let mut free: Vec<_> = self
            .strapi
            .products_with_barcode(barcode)?
            .into_iter()
            .map(|e| e.entry)
            .filter(|e| !mapped.contains(e))
            .collect();
        Ok(if free.len() == 1 { free.pop() } else { None })
    }
}
