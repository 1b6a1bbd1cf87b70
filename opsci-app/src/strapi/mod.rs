//! Keeps a real Strapi in sync with the app's results, outside the
//! topology so that Strapi's speed or outages never slow the fold:
//!
//! - [`catalogue`]: the catalogue topic (the latest stock and status of
//!   each product) → Strapi products, coalesced, absolute, retried;
//! - [`events`]: the event topic → Strapi events, each exactly once;
//! - [`client`]: the REST calls (Strapi 5 and Strapi 4 responses);
//! - [`entries`]: the app's own mapping from product id to Strapi entry;
//! - [`local`]: a Strapi started from the repository's project, for the
//!   embedded-default run.
//!
//! Each side is a consumer group of its own (`<application-id>-strapi-catalogue`,
//! `<application-id>-strapi-events`), so several instances share the work
//! by partition, like the topology.

pub mod catalogue;
pub mod client;
pub mod entries;
pub mod events;
pub mod local;
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use stream_core::runtime::{is_retriable, Waiting};

pub use catalogue::CatalogueSync;
pub use client::{StrapiClient, StrapiError, Token};
pub use events::EventSync;

use crate::kafka::KafkaConfig;
use crate::metrics::AppMetrics;

/// Why a sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Strapi failed.
    #[error(transparent)]
    Strapi(#[from] StrapiError),
    /// A sync thread could not be started.
    #[error("cannot start a sync thread: {0}")]
    Thread(std::io::Error),
}

/// Where Strapi is and how to sync with it.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Base URL, `http://host:1337`.
    pub url: String,
    /// API token (full access to products and events).
    pub token: Token,
    /// The application id: prefix of the sync's consumer groups and topic.
    pub application_id: String,
    /// The runtime's static group member id, if any: the syncs' consumers
    /// are static members too (`<id>-strapi-catalogue`, `<id>-strapi-events`),
    /// so that a restarted instance resumes writing Strapi at once rather
    /// than after the crashed one's session timeout; a clean stop removes
    /// them from their groups, as the runtime does its own member.
    pub instance_id: Option<String>,
    /// How long product states are coalesced before they are written.
    pub interval: Duration,
    /// Whether events already on the event topic when the app first starts
    /// are written to Strapi (`true`), or only later ones.
    pub beginning: bool,
}

/// Starts both syncs on threads of their own; they run until `stop` is set.
///
/// Kafka errors that waiting can cure (see [`stream_core::runtime::is_retriable`])
/// restart the sync concerned after a backoff, with new clients: each sync
/// resumes from what its consumer group committed, which is only ever what
/// Strapi already has. Any other failure sets `stop`, so that the whole app
/// stops (and is restarted by whatever supervises it) rather than run half-synced.
pub fn start(
    kafka: &KafkaConfig,
    config: &SyncConfig,
    metrics: Arc<AppMetrics>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<Result<(), SyncError>>>, SyncError> {
    let app = config.application_id.clone();
    let member = |sync: &str| config.instance_id.as_ref().map(|id| format!("{id}-{sync}"));
    let (catalogue_member, events_member) = (member("strapi-catalogue"), member("strapi-events"));
    let strapi = StrapiClient::new(&config.url, config.token.clone(), metrics.clone());
    let catalogue = {
        let (kafka, strapi, metrics, interval) = (kafka.clone(), strapi.clone(), metrics.clone(), config.interval);
        let app = app.clone();
        move |stop: &AtomicBool| -> Result<(), SyncError> {
            let group = format!("{app}-strapi-catalogue");
            let member = catalogue_member.as_deref();
            let consumer = support::group_consumer(&kafka, &group, member, &kafka.topics.catalogue, true)?;
            let entries = entries::Entries::open(&kafka, &format!("{app}-strapi-entries"))?;
            let errors = support::ErrorSink::new(&kafka, metrics.clone())?;
            CatalogueSync::new(strapi.clone(), entries, errors, interval, metrics.clone()).run(consumer, stop)?;
            support::leave(&kafka, &group, member);
            Ok(())
        }
    };
    let events = {
        let (kafka, metrics, beginning) = (kafka.clone(), metrics.clone(), config.beginning);
        move |stop: &AtomicBool| -> Result<(), SyncError> {
            let group = format!("{app}-strapi-events");
            let member = events_member.as_deref();
            let consumer = support::group_consumer(&kafka, &group, member, &kafka.topics.event, beginning)?;
            let errors = support::ErrorSink::new(&kafka, metrics.clone())?;
            EventSync::new(strapi.clone(), errors, kafka.topics.event.clone(), metrics.clone()).run(consumer, stop)?;
            support::leave(&kafka, &group, member);
            Ok(())
        }
    };
    Ok(vec![
        spawn("strapi-catalogue", &kafka.brokers, stop.clone(), catalogue)?,
        spawn("strapi-events", &kafka.brokers, stop, events)?,
    ])
}

/// Runs `sync` on a thread named `name` until it ends, again after each
/// retriable Kafka error.
fn spawn(
    name: &str,
    brokers: &str,
    stop: Arc<AtomicBool>,
    sync: impl Fn(&AtomicBool) -> Result<(), SyncError> + Send + 'static,
) -> Result<JoinHandle<Result<(), SyncError>>, SyncError> {
    let mut waiting = Waiting::new(format!("Kafka at {brokers} ({name})"));
    let run = move || loop {
        let started = Instant::now();
        match sync(&stop) {
            Err(SyncError::Kafka(error)) if is_retriable(&error) => {
                // A sync that ran a while before failing starts a new episode.
                if started.elapsed() > Duration::from_secs(10) {
                    waiting.succeeded();
                }
                if support::sleep_unless(&stop, waiting.failed(&error)) {
                    return Ok(());
                }
            }
            Err(error) => {
                tracing::error!(%error, "Strapi sync failed; stopping");
                stop.store(true, Ordering::Relaxed);
                return Err(error);
            }
            Ok(()) => return Ok(()),
        }
    };
    std::thread::Builder::new().name(name.to_string()).spawn(run).map_err(SyncError::Thread)
}
