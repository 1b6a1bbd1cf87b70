//! The part of the runtime that owns the tasks and commits: shared with the
//! consumer's rebalance callback, which commits and closes tasks before their
//! partitions go to another instance.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::{now_millis, provenance, restore, RuntimeConfig, RuntimeError};
use crate::metrics::TaskMetrics;
use crate::record::{OutputRecord, RawRecord, RecordMetadata};
use crate::task::Task;
use crate::topology::{TaskId, Topology};

pub(super) struct Engine {
    pub(super) topology: Topology,
    pub(super) config: RuntimeConfig,
    pub(super) producer: BaseProducer,
    pub(super) partitions: Arc<BTreeMap<String, u32>>,
    /// Source topic → the sub-topology reading it.
    pub(super) readers: HashMap<String, u32>,
    pub(super) tasks: BTreeMap<TaskId, Task>,
    /// Next offset to commit, per input partition.
    pub(super) positions: HashMap<(Arc<str>, i32), i64>,
    pub(super) last_commit: Instant,
    pub(super) output: Vec<OutputRecord>,
    /// Metrics of tasks already closed.
    pub(super) closed: TaskMetrics,
}

impl Engine {
    /// Runs one input record through its task (created and restored on its
    /// first record) and produces what it output.
    pub(super) fn process(&mut self, meta: RecordMetadata, raw: RawRecord) -> Result<(), RuntimeError> {
        let Some(&subtopology) = self.readers.get(&*meta.topic) else {
            return Ok(());
        };
        let id = TaskId { subtopology, partition: meta.partition };
        if !self.tasks.contains_key(&id) {
            self.open_task(id)?;
        }
        if let Some(task) = self.tasks.get_mut(&id) {
            task.process(meta.clone(), raw)?;
            task.swap_output(&mut self.output);
        }
        self.positions.insert((meta.topic.clone(), meta.partition as i32), meta.offset + 1);
        self.send_output(Some(&meta))
    }

    fn open_task(&mut self, id: TaskId) -> Result<(), RuntimeError> {
        let mut task = Task::new(&self.topology, id, &self.config.streams, self.partitions.clone(), now_millis())?;
        restore::restore(&self.config, &self.producer, &mut task, id)?;
        self.tasks.insert(id, task);
        Ok(())
    }

    /// Produces the records in `self.output`, with the provenance of `source`
    /// (replacing any provenance they carried from upstream).
    fn send_output(&mut self, source: Option<&RecordMetadata>) -> Result<(), RuntimeError> {
        let provenance = source.map(|m| [m.topic.to_string(), m.partition.to_string(), m.offset.to_string()]);
        let names = [provenance::TOPIC, provenance::PARTITION, provenance::OFFSET];
        for record in self.output.drain(..) {
            let mut headers = OwnedHeaders::new_with_capacity(record.record.headers.len() + 3);
            for (key, value) in record.record.headers.iter().filter(|(k, _)| !names.contains(k)) {
                headers = headers.insert(Header { key, value: Some(value) });
            }
            for (key, value) in names.iter().zip(provenance.iter().flatten()) {
                headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
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
                match self.producer.send(out) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        self.producer.poll(Duration::from_millis(10));
                        out = back;
                    }
                    Err((error, _)) => return Err(error.into()),
                }
            }
        }
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Writes outputs and changelogs, waits for them, commits the input
    /// offsets, then makes the store writes durable.
    pub(super) fn commit<C: ConsumerContext>(&mut self, consumer: &impl Consumer<C>) -> Result<(), RuntimeError> {
        for task in self.tasks.values_mut() {
            task.prepare_commit();
            let mut output = Vec::new();
            task.swap_output(&mut output);
            self.output.append(&mut output);
        }
        self.send_output(None)?;
        self.producer.flush(Duration::from_secs(30))?;
        if !self.positions.is_empty() {
            let mut offsets = TopicPartitionList::new();
            for ((topic, partition), offset) in &self.positions {
                offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
            }
            consumer.commit(&offsets, CommitMode::Sync)?;
            self.positions.clear();
        }
        for task in self.tasks.values_mut() {
            task.commit()?;
        }
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Closes the tasks that read one of `partitions` (being revoked).
    pub(super) fn close_partitions(&mut self, partitions: &TopicPartitionList) {
        let revoked: Vec<(String, u32)> =
            partitions.elements().iter().map(|e| (e.topic().to_string(), e.partition() as u32)).collect();
        let closing: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(id, task)| task.source_topics().any(|t| revoked.contains(&(t.to_string(), id.partition))))
            .map(|(id, _)| *id)
            .collect();
        for id in closing {
            if let Some(mut task) = self.tasks.remove(&id) {
                tracing::info!(task = %id, "partition revoked: task closed");
                self.closed.add(task.metrics());
                task.close();
            }
        }
    }

    /// Closes every task.
    pub(super) fn close_all(&mut self) {
        for (_, mut task) in std::mem::take(&mut self.tasks) {
            self.closed.add(task.metrics());
            task.close();
        }
    }

    /// The metrics summed over all tasks run so far.
    pub(super) fn metrics(&self) -> TaskMetrics {
        let mut total = self.closed;
        for task in self.tasks.values() {
            total.add(task.metrics());
        }
        total
    }
}
