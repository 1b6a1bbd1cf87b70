//! How a task's records reach Kafka, for each processing guarantee.
//!
//! Exactly-once: each task has its own transactional producer
//! (`transactional.id` = `<application-id>-<task>`), so the instance that
//! opens a task fences every earlier owner of it; a commit is one
//! transaction holding the task's outputs and changelog records (its input
//! positions among them). At-least-once: the tasks share one idempotent
//! producer; a commit flushes it, then the runtime also commits the offsets
//! through the consumer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message};

use super::{crash, restore, ClientKind, RuntimeConfig, RuntimeError};
use crate::record::OutputRecord;
use crate::topology::TaskId;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Which guarantee the runtime gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Guarantee {
    /// Outputs, changelog records and input positions of a commit are written
    /// in one Kafka transaction: every input record affects state and
    /// outputs once, even across crashes (the default).
    #[default]
    ExactlyOnce,
    /// No transactions (for brokers without them): after a crash, records
    /// since the last commit are processed again and their outputs written
    /// twice. State is still restored to the last commit.
    AtLeastOnce,
}

/// Sets the producer settings every producer of the library uses: murmur2
/// partitioning (so keys land where Java clients and the test driver put
/// them, and co-partitioning holds), idempotence, acknowledgement by all
/// replicas. Use it for producers that feed a topology's source topics.
pub fn producer_settings(client: &mut rdkafka::ClientConfig) -> &mut rdkafka::ClientConfig {
    client
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
}

fn producer_config(config: &RuntimeConfig) -> rdkafka::ClientConfig {
    let mut client = config.client(ClientKind::Producer);
    producer_settings(&mut client);
    client
}

/// Remembers the first failed delivery, so that a commit never counts a
/// record that was not written (librdkafka reports failures asynchronously),
/// and where the last restore marker or commit record went in each partition.
#[derive(Default)]
pub(crate) struct Deliveries {
    failure: Mutex<Option<KafkaError>>,
    /// (topic, partition) → the offset after the last restore marker or
    /// commit record stored there.
    boundaries: Mutex<HashMap<(String, i32), i64>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) if message.key().is_some_and(restore::is_boundary) => {
                if let Ok(mut boundaries) = self.boundaries.lock() {
                    let next = boundaries.entry((message.topic().to_string(), message.partition())).or_default();
                    *next = (*next).max(message.offset() + 1);
                }
            }
            Ok(_) => {}
            Err((error, _)) => {
                // The first failure, unless a later one says why: when a
                // produce request fails because the producer was fenced, the
                // records queued beside it may be reported first, as purged.
                if let Ok(mut failure) = self.failure.lock() {
                    let fencing = |e: &KafkaError| RuntimeError::Kafka(e.clone()).is_fencing();
                    if failure.as_ref().is_none_or(|first| fencing(error) && !fencing(first)) {
                        *failure = Some(error.clone());
                    }
                }
            }
        }
    }
}

impl Deliveries {
    fn check(&self) -> Result<(), KafkaError> {
        match self.failure.lock().ok().and_then(|mut f| f.take()) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Serves `producer`'s delivery reports until every record sent is stored or
/// failed, then fails if one failed. (rdkafka's `flush`, which
/// `commit_transaction` calls first, polls in 100 ms slices that it always
/// waits out; polling 1 ms at a time ends soon after the last
/// acknowledgement, and leaves nothing for those calls to wait for.)
fn drain(producer: &TaskProducer) -> Result<(), RuntimeError> {
    let started = Instant::now();
    while producer.in_flight_count() > 0 {
        if started.elapsed() > TIMEOUT {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut).into());
        }
        producer.poll(Duration::from_millis(1));
    }
    producer.context().check()?;
    Ok(())
}

/// The producer type of every writer.
pub(crate) type TaskProducer = BaseProducer<Deliveries>;

/// A producer connected to the broker that leads `topic`'s partition 0.
/// librdkafka connects to a broker only once it needs it, and a producer that
/// asks for its producer id (idempotent, or transactional) while its
/// coordinator is not connected yet tries again only 500 ms later. Querying
/// the partition's offsets connects to its leader (on the test broker, and
/// often elsewhere, the coordinator too) first.
fn connected(client: &rdkafka::ClientConfig, topic: &str) -> Result<TaskProducer, KafkaError> {
    let producer: TaskProducer = client.create_with_context(Deliveries::default())?;
    producer.client().fetch_watermarks(topic, 0, TIMEOUT)?;
    Ok(producer)
}

/// A shared idempotent producer for [`Guarantee::AtLeastOnce`], connected
/// through `topic`.
pub(crate) fn shared_producer(config: &RuntimeConfig, topic: &str) -> Result<Arc<TaskProducer>, KafkaError> {
    Ok(Arc::new(connected(&producer_config(config), topic)?))
}

/// One task's way of writing.
pub(crate) enum Writer {
    /// The task's own transactional producer; whether a transaction is open.
    Transactional(TaskProducer, bool),
    /// The runtime's shared producer.
    Shared(Arc<TaskProducer>),
}

impl Writer {
    /// A transactional writer for task `id`, fencing its earlier owners;
    /// connected through `topic`.
    pub(crate) fn transactional(config: &RuntimeConfig, id: TaskId, topic: &str) -> Result<Writer, KafkaError> {
        let mut client = producer_config(config);
        client.set("transactional.id", format!("{}-{id}", config.streams.application_id));
        if !config.has_property(ClientKind::Producer, "transaction.timeout.ms") {
            // A transaction the coordinator times out is aborted by fencing
            // its producer, which then fails as if a newer instance had taken
            // over: 5 min (librdkafka's default is 1 min) lets the runtime
            // wait out broker outages that long. A new owner of the task
            // aborts its predecessor's transaction at once, whatever this is.
            client.set("transaction.timeout.ms", "300000");
        }
        let producer = connected(&client, topic)?;
        producer.init_transactions(TIMEOUT)?;
        Ok(Writer::Transactional(producer, false))
    }

    fn producer(&mut self) -> Result<&TaskProducer, KafkaError> {
        match self {
            Writer::Transactional(producer, open) => {
                if !*open {
                    producer.begin_transaction()?;
                    *open = true;
                }
                Ok(producer)
            }
            Writer::Shared(producer) => Ok(producer),
        }
    }

    /// Whether a transaction holds records not committed yet.
    pub(crate) fn is_open(&self) -> bool {
        matches!(self, Writer::Transactional(_, true))
    }

    /// Sends `record` with the `provenance` headers of the input that
    /// produced it, which replace any the record carries (inherited from an
    /// input written by another application, say).
    pub(crate) fn send(&mut self, record: &OutputRecord, provenance: &[(&str, &[u8])]) -> Result<(), RuntimeError> {
        let producer = self.producer()?;
        let mut headers = OwnedHeaders::new_with_capacity(record.record.headers.len() + provenance.len());
        let stamped = !provenance.is_empty();
        for (key, value) in record.record.headers.iter().filter(|(k, _)| !(stamped && super::provenance::is_named(k))) {
            headers = headers.insert(Header { key, value: Some(value) });
        }
        for (key, value) in provenance {
            headers = headers.insert(Header { key, value: Some(*value) });
        }
        let mut out = BaseRecord::to(&record.topic).timestamp(record.record.timestamp).headers(headers);
        if let Some(key) = &record.record.key {
            out = out.key(key.as_slice());
        }
        if let Some(value) = &record.record.value {
            out = out.payload(value.as_slice());
        }
        if let Some(partition) = record.partition {
            out = out.partition(partition as i32);
        }
        loop {
            match producer.send(out) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    producer.poll(Duration::from_millis(10));
                    out = back;
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
    }

    /// Waits until every record sent so far is stored; fails if one was not.
    pub(crate) fn flush(&self) -> Result<(), RuntimeError> {
        drain(self.inner())
    }

    /// The offset after the last restore marker or commit record this writer
    /// stored in `topic`/`partition`.
    pub(crate) fn boundary(&self, topic: &str, partition: i32) -> Option<i64> {
        let boundaries = self.inner().context().boundaries.lock().ok()?;
        boundaries.get(&(topic.to_string(), partition)).copied()
    }

    /// The fatal error librdkafka recorded for this writer's producer, or a
    /// delivery it failed because it was fenced: a send or commit that
    /// failed may only say "purged" or "erroneous state", while the cause
    /// (fencing, say) is here.
    pub(crate) fn fatal_error(&self) -> Option<KafkaError> {
        if let Some((code, _)) = self.inner().client().fatal_error() {
            return Some(KafkaError::Global(code));
        }
        // A delivery that failed, fenced, leaves the producer in an abortable
        // state only: sends then fail with "erroneous state". Its report may
        // not have been served yet: serve the reports of what is in flight
        // (for up to 2 s; the error being handled may be an outage).
        let started = Instant::now();
        while self.inner().in_flight_count() > 0 && started.elapsed() < Duration::from_secs(2) {
            self.inner().poll(Duration::from_millis(10));
        }
        let failure = self.inner().context().failure.lock().ok()?.clone()?;
        RuntimeError::Kafka(failure.clone()).is_fencing().then_some(failure)
    }

    /// Serves delivery reports without blocking.
    pub(crate) fn poll(&self) {
        self.inner().poll(Duration::ZERO);
    }

    fn inner(&self) -> &TaskProducer {
        match self {
            Writer::Transactional(producer, _) => producer,
            Writer::Shared(producer) => producer,
        }
    }

    /// Writes one record on its own and waits until it is stored (committed,
    /// for a transactional writer).
    pub(crate) fn write_marker(
        &mut self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), RuntimeError> {
        let producer = self.producer()?;
        producer.send(BaseRecord::to(topic).partition(partition).key(key).payload(value)).map_err(|(e, _)| e)?;
        self.commit_records()
    }

    /// Commits the open transaction, or flushes the shared producer; either
    /// way fails if a record was not delivered.
    fn commit_records(&mut self) -> Result<(), RuntimeError> {
        self.flush()?;
        if let Writer::Transactional(producer, open @ true) = self {
            *open = false;
            producer.commit_transaction(TIMEOUT)?;
        }
        Ok(())
    }

    /// Commits what was sent: the transaction, or, with the shared
    /// producer, by flushing it.
    pub(crate) fn commit(&mut self) -> Result<(), RuntimeError> {
        if crash::reached("before_commit_transaction") {
            self.flush()?;
            crash::now("before_commit_transaction");
        }
        self.commit_records()?;
        crash::at("after_commit_transaction");
        Ok(())
    }
}
