//! Writes the event topic to Strapi's events, each event once.
//!
//! Strapi itself is the checkpoint: every event written carries where it was
//! read, in its metadata (`metadata._kafka`: topic, partition, offset, and
//! for events the topology produced, the provenance of the input they came
//! from) and, when Strapi's event type has them (the repository's Strapi
//! project does, indexed), in fields of its own (`kafka_topic`,
//! `kafka_partition`, `kafka_offset`, `origin_*`). When partitions are
//! assigned, the sync reads that back from Strapi and skips what is already
//! there:
//! - an event at or before the last offset written for its partition;
//! - an event whose provenance is at or before the last one written for
//!   the same source partition: the same event written again when a
//!   transaction of the topology was aborted and replayed (brokers that let
//!   consumers see aborted records would otherwise make it appear twice).
//!
//! With the fields, reading the checkpoint costs a few requests per
//! assigned partition and per source partition, however many events Strapi
//! holds ([`EventSync::read_positions`]); without them (a Strapi whose
//! event type is only `value` and `metadata`), or while events written
//! before the fields existed are the only ones of a partition, it lists
//! every event.
//!
//! Events are written in partition order, one at a time; a failure is
//! retried with backoff (after checking whether the failed request landed
//! after all), so an outage of Strapi delays events but loses none. An
//! event that is not `{"value", "metadata"}` JSON, or that Strapi refuses,
//! goes to the error topic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stream_core::runtime::{provenance, Waiting};

use super::client::{Entry, Page, StrapiClient, StrapiError, MAX_PAGE_SIZE};
use super::support::{is_refusal, sleep_unless, ErrorSink, Tracked};
use super::SyncError;
use crate::metrics::AppMetrics;
use crate::model::Event;
use crate::topology::Reason;

/// The metadata key holding where an event was read.
pub const KAFKA_KEY: &str = "_kafka";

/// The input a topology output was produced from (its provenance headers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Rank among that input's outputs.
    #[serde(default)]
    pub rank: u32,
}

/// Where an event was read; stored in Strapi with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The event topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its provenance, when the topology produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

impl Identity {
    fn of(message: &BorrowedMessage<'_>) -> Identity {
        let header = |name: &str| {
            message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .map(str::to_string)
            })
        };
        let origin = (|| {
            Some(Origin {
                topic: header(provenance::TOPIC)?,
                partition: header(provenance::PARTITION)?.parse().ok()?,
                offset: header(provenance::OFFSET)?.parse().ok()?,
                rank: header(provenance::RANK).and_then(|r| r.parse().ok()).unwrap_or(0),
            })
        })();
        Identity {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            origin,
        }
    }
}

impl Identity {
    /// The event fields holding this identity (big integers as strings,
    /// as Strapi writes them).
    fn fields(&self) -> Value {
        let mut fields = json!({
            "kafka_topic": self.topic,
            "kafka_partition": self.partition,
            "kafka_offset": self.offset.to_string(),
        });
        if let Some(o) = &self.origin {
            fields["origin_topic"] = o.topic.clone().into();
            fields["origin_partition"] = o.partition.into();
            fields["origin_offset"] = o.offset.to_string().into();
            fields["origin_rank"] = o.rank.into();
        }
        fields
    }
}

/// What Strapi holds of one partition of the event topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// The last offset written.
    pub offset: Option<i64>,
    /// The last (offset, rank) written per source (topic, partition).
    pub origins: BTreeMap<(String, i32), (i64, u32)>,
}

/// What Strapi holds, per partition of the event topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint(pub BTreeMap<i32, Written>);

impl Checkpoint {
    /// Whether the event read at `id` is in Strapi already.
    pub fn contains(&self, id: &Identity) -> bool {
        let Some(written) = self.0.get(&id.partition) else { return false };
        if written.offset.is_some_and(|offset| id.offset <= offset) {
            return true;
        }
        id.origin.as_ref().is_some_and(|o| {
            written.origins.get(&(o.topic.clone(), o.partition)).is_some_and(|last| (o.offset, o.rank) <= *last)
        })
    }

    /// Notes that the event read at `id` is in Strapi.
    pub fn add(&mut self, id: &Identity) {
        let written = self.0.entry(id.partition).or_default();
        written.offset = Some(written.offset.map_or(id.offset, |o| o.max(id.offset)));
        if let Some(o) = &id.origin {
            let last = written.origins.entry((o.topic.clone(), o.partition)).or_insert((o.offset, o.rank));
            *last = (*last).max((o.offset, o.rank));
        }
    }

    /// The identities in `metadata` of events of `topic`.
    fn read(topic: &str, metadata: &Value) -> Option<Identity> {
        serde_json::from_value::<Identity>(metadata.get(KAFKA_KEY)?.clone()).ok().filter(|id| id.topic == topic)
    }
}

/// The metadata written to Strapi: the event's own (wrapped under `value`
/// when it is not an object) with [`KAFKA_KEY`].
pub fn metadata_with(metadata: &Value, id: &Identity) -> Value {
    let mut metadata = match metadata {
        Value::Object(_) => metadata.clone(),
        other => json!({ "value": other }),
    };
    metadata[KAFKA_KEY] = serde_json::to_value(id).unwrap_or(Value::Null);
    metadata
}

/// The event side of the Strapi sync; see the [module docs](self).
pub struct EventSync {
    strapi: StrapiClient,
    errors: ErrorSink,
    topic: String,
    metrics: Arc<AppMetrics>,
    written: Checkpoint,
    /// Whether Strapi's events have the position fields (until it says not).
    fields: bool,
}

impl EventSync {
    pub(super) fn new(strapi: StrapiClient, errors: ErrorSink, topic: String, metrics: Arc<AppMetrics>) -> Self {
        EventSync { strapi, errors, topic, metrics, written: Checkpoint::default(), fields: true }
    }

    /// Runs until `stop` is set, reading the event topic with `consumer`.
    pub fn run(mut self, consumer: BaseConsumer<Tracked>, stop: &AtomicBool) -> Result<(), SyncError> {
        while !stop.load(Ordering::Relaxed) {
            let message = match consumer.poll(std::time::Duration::from_millis(100)) {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::warn!(%error, "event consumer");
                    continue;
                }
                None => continue,
            };
            if consumer.context().take_changed() {
                let assigned = consumer.assignment()?;
                let partitions: Vec<i32> =
                    assigned.elements_for_topic(&self.topic).iter().map(|p| p.partition()).collect();
                if !self.retry(stop, |sync| sync.read_checkpoint(&partitions))? {
                    return Ok(());
                }
            }
            let id = Identity::of(&message);
            if !self.written.contains(&id) {
                match serde_json::from_slice::<Event>(message.payload().unwrap_or_default()) {
                    Ok(event) => {
                        if !self.write(&event, &id, &message, stop)? {
                            return Ok(());
                        }
                    }
                    Err(error) => self.errors.reject(&message, Reason::MalformedEvent { detail: error.to_string() })?,
                }
            }
            consumer.store_offset_from_message(&message)?;
        }
        Ok(())
    }

    /// Runs `attempt` until it succeeds, with backoff; `false` when stopped first.
    fn retry(
        &mut self,
        stop: &AtomicBool,
        mut attempt: impl FnMut(&mut Self) -> Result<(), StrapiError>,
    ) -> Result<bool, SyncError> {
        let mut waiting = Waiting::new(format!("Strapi at {}", self.strapi.base()));
        loop {
            match attempt(self) {
                Ok(()) => {
                    waiting.succeeded();
                    return Ok(true);
                }
                Err(error) => {
                    if sleep_unless(stop, waiting.failed(&error)) {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Reads back from Strapi which events of `partitions` are there.
    fn read_checkpoint(&mut self, partitions: &[i32]) -> Result<(), StrapiError> {
        let mut lookups = Lookups { strapi: &self.strapi, requests: 0 };
        let by_position = match self.fields {
            true => match self.read_positions(&mut lookups, partitions) {
                Err(StrapiError::Status { status: 400, message, .. }) => {
                    tracing::warn!(%message, "Strapi's events have no kafka_* fields: listing them all at each start");
                    self.fields = false;
                    None
                }
                read => read?,
            },
            false => None,
        };
        let (checkpoint, how) = match by_position {
            Some(checkpoint) => (checkpoint, "by position"),
            None => (self.read_all(&mut lookups)?, "every event"),
        };
        tracing::info!(
            partitions = checkpoint.0.len(),
            requests = lookups.requests,
            how,
            "read the events already in Strapi"
        );
        self.written = checkpoint;
        Ok(())
    }

    /// Every event's identity, page by page.
    fn read_all(&self, lookups: &mut Lookups<'_>) -> Result<Checkpoint, StrapiError> {
        let mut checkpoint = Checkpoint::default();
        let mut page = 1;
        loop {
            let more = lookups.page(page)?;
            for entry in &more.entries {
                if let Some(id) = entry.attributes.get("metadata").and_then(|m| Checkpoint::read(&self.topic, m)) {
                    checkpoint.add(&id);
                }
            }
            if page >= more.page_count {
                return Ok(checkpoint);
            }
            page += 1;
        }
    }

    /// The identities of the last events written per partition of
    /// `partitions`, and per source partition of each: one request per
    /// partition, per source topic and per source partition (the next
    /// source partition is the one holding the highest provenance among
    /// those not read yet). `None` when a partition has no event with the
    /// fields while events without them exist (written before they did).
    fn read_positions(&self, lookups: &mut Lookups<'_>, partitions: &[i32]) -> Result<Option<Checkpoint>, StrapiError> {
        let mut checkpoint = Checkpoint::default();
        let mut add = |entry: Option<Entry>| {
            let id = entry.as_ref().and_then(|e| Checkpoint::read(&self.topic, e.attributes.get("metadata")?));
            if let Some(id) = &id {
                checkpoint.add(id);
            }
            id
        };
        for &partition in partitions {
            let this = format!("filters[kafka_topic][$eq]={}&filters[kafka_partition][$eq]={partition}", self.topic);
            if add(lookups.first(&format!("{this}&sort=kafka_offset:desc"))?).is_none()
                && lookups.first("filters[kafka_topic][$null]=true")?.is_some()
            {
                return Ok(None);
            }
            let mut topics = Vec::<String>::new();
            loop {
                let newer = format!("{this}&filters[origin_topic][$notNull]=true{}", not_in("origin_topic", &topics));
                let Some(topic) = add(lookups.first(&format!("{newer}&sort=id:desc"))?).and_then(|id| id.origin) else {
                    break;
                };
                let mut sources = Vec::<String>::new();
                let by_origin = "sort[0]=origin_offset:desc&sort[1]=origin_rank:desc";
                let origin = format!("{this}&filters[origin_topic][$eq]={}", topic.topic);
                while let Some(o) =
                    add(lookups.first(&format!("{origin}{}&{by_origin}", not_in("origin_partition", &sources)))?)
                        .and_then(|id| id.origin)
                {
                    sources.push(o.partition.to_string());
                }
                topics.push(topic.topic);
            }
        }
        Ok(Some(checkpoint))
    }

    /// Whether the event read at `id` is among the latest in Strapi (after
    /// a failed request that may have landed anyway).
    fn landed(&self, id: &Identity) -> Result<bool, StrapiError> {
        let page = self.strapi.latest("events", MAX_PAGE_SIZE)?;
        Ok(page
            .iter()
            .any(|e| e.attributes.get("metadata").and_then(|m| Checkpoint::read(&self.topic, m)).as_ref() == Some(id)))
    }

    /// Writes one event, retrying until it is in Strapi (or refused, then
    /// to the error topic); `false` when stopped first.
    fn write(
        &mut self,
        event: &Event,
        id: &Identity,
        message: &BorrowedMessage<'_>,
        stop: &AtomicBool,
    ) -> Result<bool, SyncError> {
        let metadata = metadata_with(&event.metadata, id);
        let mut refused = None;
        let mut first = true;
        let done = self.retry(stop, |sync| {
            if !std::mem::take(&mut first) && sync.landed(id)? {
                return Ok(());
            }
            let fields = if sync.fields { id.fields() } else { json!({}) };
            match sync.strapi.create_event(&event.value, &metadata, fields) {
                Ok(_) => Ok(()),
                Err(error) if is_refusal(&error) => {
                    refused = Some(error);
                    Ok(())
                }
                Err(error) => Err(error),
            }
        })?;
        if !done {
            return Ok(false);
        }
        match refused {
            Some(error) => self.errors.reject(message, Reason::StrapiRejected { detail: error.to_string() })?,
            None => {
                self.metrics.strapi_event();
                self.written.add(id);
            }
        }
        Ok(true)
    }
}

/// `&filters[field][$notIn][i]=value` for each of `values`.
fn not_in(field: &str, values: &[String]) -> String {
    values.iter().enumerate().map(|(i, v)| format!("&filters[{field}][$notIn][{i}]={v}")).collect()
}

/// Strapi requests of one checkpoint read, counted.
struct Lookups<'a> {
    strapi: &'a StrapiClient,
    requests: usize,
}

impl Lookups<'_> {
    fn first(&mut self, query: &str) -> Result<Option<Entry>, StrapiError> {
        self.requests += 1;
        self.strapi.first("events", query)
    }

    fn page(&mut self, page: u64) -> Result<Page, StrapiError> {
        self.requests += 1;
        self.strapi.page("events", page, MAX_PAGE_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(partition: i32, offset: i64, origin: Option<(i32, i64, u32)>) -> Identity {
        Identity {
            topic: "event".into(),
            partition,
            offset,
            origin: origin.map(|(partition, offset, rank)| Origin { topic: "r".into(), partition, offset, rank }),
        }
    }

    #[test]
    fn an_event_is_written_once_even_when_replayed_at_another_offset() {
        let mut checkpoint = Checkpoint::default();
        checkpoint.add(&id(0, 10, Some((3, 50, 1))));
        assert!(checkpoint.contains(&id(0, 9, None)), "an earlier offset");
        assert!(checkpoint.contains(&id(0, 15, Some((3, 50, 1)))), "the same input, replayed");
        assert!(checkpoint.contains(&id(0, 16, Some((3, 49, 0)))), "an earlier input, replayed");
        assert!(!checkpoint.contains(&id(0, 17, Some((3, 50, 2)))), "a later output of the same input");
        assert!(!checkpoint.contains(&id(0, 18, Some((4, 1, 0)))), "another source partition");
        assert!(!checkpoint.contains(&id(1, 5, None)), "another partition");
    }

    #[test]
    fn the_checkpoint_travels_in_the_metadata() {
        let event = id(2, 7, Some((1, 4, 0)));
        let metadata = metadata_with(&json!({"product": 3}), &event);
        assert_eq!(metadata["product"], 3);
        assert_eq!(Checkpoint::read("event", &metadata), Some(event.clone()));
        assert_eq!(Checkpoint::read("other", &metadata), None);
        let wrapped = metadata_with(&json!([1, 2]), &event);
        assert_eq!(wrapped["value"], json!([1, 2]));
        assert_eq!(Checkpoint::read("event", &wrapped), Some(event));
    }
}
