//! Sink nodes: encode records and hand them to the task's output.

use std::sync::Arc;

use crate::error::{Result, StreamError, TopologyError};
use crate::processor::{Data, Processor, ProcessorContext};
use crate::record::{OutputRecord, RawRecord, Record};
use crate::serdes::SerdeRef;
use crate::task::node::ProcessorNode;
use crate::topology::builder::GraphRef;
use crate::topology::stream::{Partitioner, Produced};
use crate::topology::{NodeFactory, NodeKind, Topic};

struct SinkProcessor<K, V> {
    topic: Arc<str>,
    keys: SerdeRef<K>,
    values: SerdeRef<V>,
    partitioner: Option<Partitioner<K, V>>,
}

impl<K: Data, V: Data> Processor for SinkProcessor<K, V> {
    type KIn = K;
    type VIn = V;
    type KOut = ();
    type VOut = ();

    fn process(&mut self, ctx: &mut ProcessorContext<'_, (), ()>, record: Record<K, V>) -> Result<()> {
        let key = self.keys.encode(&record.key)?;
        let value = self.values.encode(&record.value)?;
        let partition = match &self.partitioner {
            None => None,
            Some(choose) => {
                let count = ctx
                    .partitions_of(&self.topic)
                    .ok_or_else(|| StreamError::Topology(TopologyError::UnknownTopic(self.topic.to_string())))?;
                Some(choose(&record.key, &record.value, count) % count.max(1))
            }
        };
        let record =
            RawRecord { key: Some(key), value: Some(value), timestamp: record.timestamp, headers: record.headers };
        ctx.emit(OutputRecord { topic: self.topic.clone(), partition, record });
        Ok(())
    }
}

/// Adds a sink below `parent` writing to `topic`.
pub(crate) fn add_sink<K: Data, V: Data>(graph: &GraphRef, parent: usize, topic: Topic, produced: Produced<K, V>) {
    let target = topic.clone();
    let factory: NodeFactory = Arc::new(move |app| {
        ProcessorNode::boxed(SinkProcessor {
            topic: Arc::from(target.resolve(app)),
            keys: produced.keys.clone(),
            values: produced.values.clone(),
            partitioner: produced.partitioner.clone(),
        })
    });
    let mut graph = graph.borrow_mut();
    let name = graph.name("KSTREAM-SINK");
    graph.add(name, NodeKind::Sink(topic), &[parent], Vec::new(), factory);
}
