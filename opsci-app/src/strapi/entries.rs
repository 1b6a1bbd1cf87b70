//! The app's own mapping from product id to Strapi entry, kept in a
//! compacted topic (`<application-id>-strapi-entries`, key: product id,
//! value: the entry reference) so that every instance, and every restart,
//! finds the entries created before.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::client::EntryRef;
use crate::kafka::{deliver, KafkaConfig};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Product id → Strapi entry, backed by a topic.
pub struct Entries {
    topic: String,
    map: BTreeMap<u64, EntryRef>,
    reader: BaseConsumer,
    producer: FutureProducer,
}

impl Entries {
    /// Opens the mapping kept in `topic` (one partition, created when
    /// missing) and reads it to its end.
    pub fn open(kafka: &KafkaConfig, topic: &str) -> Result<Entries, KafkaError> {
        kafka.ensure_topics(&[(topic, true)], 1)?;
        let reader: BaseConsumer =
            kafka.client().set("enable.auto.commit", "false").set("group.id", format!("{topic}-reader")).create()?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
        reader.assign(&assignment)?;
        let producer = kafka.producer().create()?;
        let mut entries = Entries { topic: topic.to_string(), map: BTreeMap::new(), reader, producer };
        entries.refresh()?;
        Ok(entries)
    }

    /// Reads what other instances (or earlier runs) added since.
    pub fn refresh(&mut self) -> Result<(), KafkaError> {
        let (low, high) = self.reader.fetch_watermarks(&self.topic, 0, TIMEOUT)?;
        loop {
            let position = self.reader.position()?;
            let at = match position.find_partition(&self.topic, 0).map(|p| p.offset()) {
                Some(Offset::Offset(at)) => at,
                _ => low,
            };
            if at >= high {
                return Ok(());
            }
            match self.reader.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    let id = message.key().and_then(|k| std::str::from_utf8(k).ok()).and_then(|k| k.parse().ok());
                    let entry = message.payload().and_then(|v| std::str::from_utf8(v).ok());
                    match (id, entry) {
                        (Some(id), Some(entry)) => self.map.insert(id, EntryRef(entry.to_string())),
                        (Some(id), None) => self.map.remove(&id),
                        _ => None,
                    };
                }
                Some(Err(error)) => return Err(error),
                None => {}
            }
        }
    }

    /// The entry of product `id`, if known.
    pub fn get(&self, id: u64) -> Option<&EntryRef> {
        self.map.get(&id)
    }

    /// The entries that belong to some product.
    pub fn mapped(&self) -> BTreeSet<&EntryRef> {
        self.map.values().collect()
    }

    /// Records (durably) that product `id` is `entry`, or nothing anymore.
    pub fn set(&mut self, id: u64, entry: Option<EntryRef>) -> Result<(), KafkaError> {
        let key = id.to_string();
        let record = FutureRecord::<str, str>::to(&self.topic).key(&key);
        let record = match &entry {
            Some(entry) => record.payload(entry.0.as_str()),
            None => record,
        };
        deliver(&self.producer, record)?;
        match entry {
            Some(entry) => self.map.insert(id, entry),
            None => self.map.remove(&id),
        };
        Ok(())
    }
}
