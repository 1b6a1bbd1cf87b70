//! Source nodes: decode the raw record being processed and forward it.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::error::{Result, SerdeError, StreamError};
use crate::processor::{Data, ProcessorContext, PunctuationType};
use crate::record::Record;
use crate::serdes::SerdeRef;
use crate::task::node::Node;
use crate::task::TaskCore;
use crate::topology::builder::GraphRef;
use crate::topology::stream::Consumed;
use crate::topology::{NodeFactory, NodeKind, Topic};

/// Decodes a value that may be absent (a tombstone).
pub(crate) type ValueDecoder<V> = Arc<dyn Fn(Option<&[u8]>) -> Result<V, SerdeError> + Send + Sync>;

struct SourceNode<K, V> {
    keys: SerdeRef<K>,
    values: ValueDecoder<V>,
    children: Vec<usize>,
}

impl<K: Data, V: Data> Node for SourceNode<K, V> {
    fn set_children(&mut self, children: Vec<usize>) {
        self.children = children;
    }

    fn init(&mut self, _: &mut TaskCore, _: usize) -> Result<()> {
        Ok(())
    }

    fn process(&mut self, core: &mut TaskCore, id: usize, _: &mut dyn Any) -> Result<()> {
        let raw = core.raw.as_ref().ok_or_else(|| StreamError::processing("internal error: source without record"))?;
        // A record without key decodes as an empty key.
        let key = self.keys.decode(raw.key.as_deref().unwrap_or_default()).map_err(StreamError::Deserialization)?;
        let value = (self.values)(raw.value.as_deref()).map_err(StreamError::Deserialization)?;
        let record = Record { key, value, timestamp: raw.timestamp, headers: raw.headers.clone() };
        ProcessorContext { core, node: id, children: &self.children, _out: PhantomData }.forward(record)
    }

    fn punctuate(&mut self, _: &mut TaskCore, _: usize, _: PunctuationType, _: i64) -> Result<()> {
        Ok(())
    }

    fn close(&mut self) {}
}

/// Adds a source whose values must be present (a stream).
pub(crate) fn add_stream_source<K: Data, V: Data>(
    graph: &GraphRef,
    topics: Vec<Topic>,
    consumed: Consumed<K, V>,
) -> usize {
    let values = consumed.values;
    let decoder: ValueDecoder<V> = Arc::new(move |bytes| match bytes {
        Some(bytes) => values.decode(bytes),
        None => Err(SerdeError::decode("value", "record has no value (tombstone)")),
    });
    add_source(graph, topics, consumed.keys, decoder)
}

/// Adds a source node reading `topics`.
pub(crate) fn add_source<K: Data, V: Data>(
    graph: &GraphRef,
    topics: Vec<Topic>,
    keys: SerdeRef<K>,
    values: ValueDecoder<V>,
) -> usize {
    let factory: NodeFactory =
        Arc::new(move |_| Box::new(SourceNode { keys: keys.clone(), values: values.clone(), children: Vec::new() }));
    let mut graph = graph.borrow_mut();
    let name = graph.name("KSTREAM-SOURCE");
    graph.add(name, NodeKind::Source(topics), &[], Vec::new(), factory)
}
