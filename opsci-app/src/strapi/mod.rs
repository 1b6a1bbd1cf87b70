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

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::error::KafkaError;

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
    /// How long product states are coalesced before they are written.
    pub interval: Duration,
    /// Whether events already on the event topic when the app first starts
    /// are written to Strapi (`true`), or only later ones.
    pub beginning: bool,
}

/// Starts both syncs on threads of their own; they run until `stop` is set.
/// A sync that fails sets `stop` too, so that the whole app stops (and is
/// restarted by whatever supervises it) rather than run half-synced.
pub fn start(
    kafka: &KafkaConfig,
    config: &SyncConfig,
    metrics: Arc<AppMetrics>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<Result<(), SyncError>>>, SyncError> {
    let app = &config.application_id;
    let strapi = StrapiClient::new(&config.url, config.token.clone(), metrics.clone());
    let catalogue_consumer =
        support::group_consumer(kafka, &format!("{app}-strapi-catalogue"), &kafka.topics.catalogue, true)?;
    let catalogue = CatalogueSync::new(
        strapi.clone(),
        entries::Entries::open(kafka, &format!("{app}-strapi-entries"))?,
        support::ErrorSink::new(kafka, metrics.clone())?,
        config.interval,
        metrics.clone(),
    );
    let events_consumer =
        support::group_consumer(kafka, &format!("{app}-strapi-events"), &kafka.topics.event, config.beginning)?;
    let events =
        EventSync::new(strapi, support::ErrorSink::new(kafka, metrics.clone())?, kafka.topics.event.clone(), metrics);
    let (stop_catalogue, stop_events) = (stop.clone(), stop.clone());
    let spawn = |name: &str, run: Box<dyn FnOnce() -> Result<(), SyncError> + Send>| {
        let stop = stop.clone();
        let run = move || {
            let result = run();
            if let Err(error) = &result {
                tracing::error!(%error, "Strapi sync failed; stopping");
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            result
        };
        std::thread::Builder::new().name(name.to_string()).spawn(run).map_err(SyncError::Thread)
    };
    Ok(vec![
        spawn("strapi-catalogue", Box::new(move || catalogue.run(catalogue_consumer, &stop_catalogue)))?,
        spawn("strapi-events", Box::new(move || events.run(events_consumer, &stop_events)))?,
    ])
}
