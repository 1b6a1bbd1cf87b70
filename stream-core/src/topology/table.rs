//! `KTable` (a changelog stream seen as a table) and `KGroupedStream`.

use std::marker::PhantomData;
use std::sync::Arc;

use super::builder::GraphRef;
use super::ops::aggregate::{aggregator, reducer, AggregateProcessor, TableSourceProcessor, Update};
use super::ops::source::{self, ValueDecoder};
use super::stream::{Consumed, KStream};
use super::windowed::{TimeWindowedKStream, TimeWindows};
use super::{NodeFactory, NodeKind, Topic};
use crate::processor::Data;
use crate::record::Change;
use crate::serdes::{Serde, SerdeRef, I64};
use crate::task::node::ProcessorNode;

/// Names a table's store and gives its value serde.
pub struct Materialized<V> {
    pub(crate) name: String,
    pub(crate) values: SerdeRef<V>,
}

impl<V> Materialized<V> {
    /// Store `name`, values encoded with `values`.
    pub fn new(name: impl Into<String>, values: impl Serde<V>) -> Self {
        Materialized { name: name.into(), values: Arc::new(values) }
    }
}

/// A table: the latest value per key, kept in a named store. Internally a
/// stream of [`Change`]s.
pub struct KTable<K, V> {
    pub(crate) graph: GraphRef,
    /// The node that forwards the table's changes.
    pub(crate) node: usize,
    pub(crate) store: String,
    pub(crate) keys: SerdeRef<K>,
    pub(crate) values: SerdeRef<V>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for KTable<K, V> {
    fn clone(&self) -> Self {
        KTable {
            graph: self.graph.clone(),
            node: self.node,
            store: self.store.clone(),
            keys: self.keys.clone(),
            values: self.values.clone(),
            _types: PhantomData,
        }
    }
}

impl<K: Data, V: Data> KTable<K, V> {
    pub(crate) fn from_topic(graph: GraphRef, topic: Topic, consumed: Consumed<K, V>, store: &str) -> Self {
        graph.borrow_mut().add_store(store);
        graph.borrow_mut().tables.push(topic.clone());
        let values = consumed.values.clone();
        let decoder: ValueDecoder<Option<V>> = Arc::new(move |bytes| bytes.map(|b| values.decode(b)).transpose());
        let source = source::add_source(&graph, vec![topic], consumed.keys.clone(), decoder);
        let (name, keys, values) = (store.to_string(), consumed.keys.clone(), consumed.values.clone());
        let factory: NodeFactory = Arc::new(move |_| {
            ProcessorNode::boxed(TableSourceProcessor {
                store: name.clone(),
                keys: keys.clone(),
                values: values.clone(),
                handle: None,
            })
        });
        let node = {
            let mut g = graph.borrow_mut();
            let name = g.name("KTABLE-SOURCE");
            g.add(name, NodeKind::Processor, &[source], vec![store.to_string()], factory)
        };
        KTable {
            graph,
            node,
            store: store.to_string(),
            keys: consumed.keys,
            values: consumed.values,
            _types: PhantomData,
        }
    }

    /// A table maintained by a processor below `stream` that owns store `store`.
    pub(crate) fn from_processor<KIn, VIn>(
        stream: &KStream<KIn, VIn>,
        prefix: &str,
        factory: NodeFactory,
        store: String,
        keys: SerdeRef<K>,
        values: SerdeRef<V>,
    ) -> Self {
        let graph = stream.graph.clone();
        let node = {
            let mut g = graph.borrow_mut();
            g.add_store(&store);
            let name = g.name(prefix);
            g.add(name, NodeKind::Processor, &[stream.node], vec![store.clone()], factory)
        };
        KTable { graph, node, store, keys, values, _types: PhantomData }
    }

    /// The name of the table's store.
    pub fn store_name(&self) -> &str {
        &self.store
    }

    /// The stream of the table's changes (old and new value per update).
    pub fn changes(&self) -> KStream<K, Change<V>> {
        KStream::new(self.graph.clone(), self.node)
    }

    /// The stream of the table's new values (deletions are left out).
    pub fn to_stream(&self) -> KStream<K, V> {
        self.changes().flat_map_values(|change: Change<V>| change.new)
    }
}

/// A stream grouped by key, ready for aggregation.
pub struct KGroupedStream<K, V> {
    stream: KStream<K, V>,
    keys: SerdeRef<K>,
    values: SerdeRef<V>,
}

impl<K: Data, V: Data> KGroupedStream<K, V> {
    pub(crate) fn new(stream: KStream<K, V>, keys: SerdeRef<K>, values: SerdeRef<V>) -> Self {
        KGroupedStream { stream, keys, values }
    }

    /// Counts records per key, in store `name`.
    pub fn count(&self, name: &str) -> KTable<K, i64> {
        self.aggregate(|| 0, |_, _, count| count + 1, Materialized::new(name, I64))
    }

    /// Combines the values of each key with `reduce` (the first value is kept as is).
    pub fn reduce(&self, name: &str, reduce: impl Fn(V, V) -> V + Send + Sync + 'static) -> KTable<K, V> {
        self.fold(reducer(reduce), Materialized { name: name.to_string(), values: self.values.clone() })
    }

    /// Folds the values of each key into an aggregate starting from `init()`.
    pub fn aggregate<A: Data>(
        &self,
        init: impl Fn() -> A + Send + Sync + 'static,
        add: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
        materialized: Materialized<A>,
    ) -> KTable<K, A> {
        self.fold(aggregator(init, add), materialized)
    }

    fn fold<A: Data>(&self, update: Update<K, V, A>, materialized: Materialized<A>) -> KTable<K, A> {
        let (store, keys, values) = (materialized.name.clone(), self.keys.clone(), materialized.values.clone());
        let factory: NodeFactory = Arc::new(move |_| {
            ProcessorNode::boxed(AggregateProcessor {
                store: store.clone(),
                keys: keys.clone(),
                values: values.clone(),
                update: update.clone(),
                handle: None,
            })
        });
        KTable::from_processor(
            &self.stream,
            "KSTREAM-AGGREGATE",
            factory,
            materialized.name,
            self.keys.clone(),
            materialized.values,
        )
    }

    /// Cuts the groups into time windows.
    pub fn windowed_by(&self, windows: TimeWindows) -> TimeWindowedKStream<K, V> {
        TimeWindowedKStream {
            stream: self.stream.clone(),
            keys: self.keys.clone(),
            values: self.values.clone(),
            windows,
        }
    }
}
