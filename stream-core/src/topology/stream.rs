//! `KStream`: a typed stream of records, and the options of its operators.

use std::fmt::Display;
use std::marker::PhantomData;
use std::sync::Arc;

use super::builder::GraphRef;
use super::ops::stateless::{BranchProcessor, FnProcessor, Predicate};
use super::ops::{join, sink, source};
use super::table::{KGroupedStream, KTable};
use super::{NodeFactory, NodeKind, Topic};
use crate::error::{Result, StreamError, TopologyError};
use crate::processor::{Data, Processor, ProcessorContext};
use crate::record::Record;
use crate::serdes::{Serde, SerdeRef};
use crate::task::node::ProcessorNode;

/// How to read a topic: its key and value serdes.
pub struct Consumed<K, V> {
    pub(crate) keys: SerdeRef<K>,
    pub(crate) values: SerdeRef<V>,
}

impl<K, V> Consumed<K, V> {
    /// Reads keys with `keys` and values with `values`.
    pub fn with(keys: impl Serde<K>, values: impl Serde<V>) -> Self {
        Consumed { keys: Arc::new(keys), values: Arc::new(values) }
    }
}

/// Chooses the partition of an output record: `(key, value, partition count)`.
pub type Partitioner<K, V> = Arc<dyn Fn(&K, &V, u32) -> u32 + Send + Sync>;

/// How to write a topic: serdes and, optionally, a partitioner (default:
/// murmur2 of the encoded key, as Kafka's default partitioner).
pub struct Produced<K, V> {
    pub(crate) keys: SerdeRef<K>,
    pub(crate) values: SerdeRef<V>,
    pub(crate) partitioner: Option<Partitioner<K, V>>,
}

impl<K, V> Produced<K, V> {
    /// Writes keys with `keys` and values with `values`.
    pub fn with(keys: impl Serde<K>, values: impl Serde<V>) -> Self {
        Produced { keys: Arc::new(keys), values: Arc::new(values), partitioner: None }
    }

    /// Chooses partitions with `partitioner` instead of murmur2 of the key.
    pub fn with_partitioner(mut self, partitioner: impl Fn(&K, &V, u32) -> u32 + Send + Sync + 'static) -> Self {
        self.partitioner = Some(Arc::new(partitioner));
        self
    }
}

/// How to write a stream through a repartition topic: serdes and an optional name
/// (the topic is `<application-id>-<name>-repartition`).
pub struct Repartitioned<K, V> {
    pub(crate) keys: SerdeRef<K>,
    pub(crate) values: SerdeRef<V>,
    pub(crate) name: Option<String>,
}

/// Serdes for grouping; used for the repartition topic when the key was changed.
pub type Grouped<K, V> = Repartitioned<K, V>;

impl<K, V> Repartitioned<K, V> {
    /// Repartitions with these serdes.
    pub fn with(keys: impl Serde<K>, values: impl Serde<V>) -> Self {
        Repartitioned { keys: Arc::new(keys), values: Arc::new(values), name: None }
    }

    /// Names the repartition topic.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

impl<K, V> Clone for Repartitioned<K, V> {
    fn clone(&self) -> Self {
        Repartitioned { keys: self.keys.clone(), values: self.values.clone(), name: self.name.clone() }
    }
}

/// A stream of keyed records.
pub struct KStream<K, V> {
    pub(crate) graph: GraphRef,
    pub(crate) node: usize,
    /// The operation that changed the key since the last repartition, if any.
    pub(crate) key_changed_by: Option<String>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for KStream<K, V> {
    fn clone(&self) -> Self {
        KStream {
            graph: self.graph.clone(),
            node: self.node,
            key_changed_by: self.key_changed_by.clone(),
            _types: PhantomData,
        }
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    pub(crate) fn new(graph: GraphRef, node: usize) -> Self {
        KStream { graph, node, key_changed_by: None, _types: PhantomData }
    }

    fn child<K2, V2>(&self, node: usize, key_changed_by: Option<String>) -> KStream<K2, V2> {
        KStream { graph: self.graph.clone(), node, key_changed_by, _types: PhantomData }
    }

    /// Adds a processor node below this stream.
    fn add<K2: Data, V2: Data>(
        &self,
        prefix: &str,
        changes_key: bool,
        parents: &[usize],
        stores: Vec<String>,
        factory: NodeFactory,
    ) -> KStream<K2, V2> {
        let mut graph = self.graph.borrow_mut();
        let name = graph.name(prefix);
        let node = graph.add(name.clone(), NodeKind::Processor, parents, stores, factory);
        let changed = if changes_key { Some(name) } else { self.key_changed_by.clone() };
        drop(graph);
        self.child(node, changed)
    }

    /// Adds a stateless operator given as a function of (record, context).
    fn stateless<K2: Data, V2: Data>(
        &self,
        prefix: &str,
        changes_key: bool,
        f: impl Fn(Record<K, V>, &mut ProcessorContext<'_, K2, V2>) -> Result<()> + Send + Sync + 'static,
    ) -> KStream<K2, V2> {
        let f = Arc::new(f);
        let factory: NodeFactory = Arc::new(move |_| ProcessorNode::boxed(FnProcessor::new(f.clone())));
        self.add(prefix, changes_key, &[self.node], Vec::new(), factory)
    }

    /// Replaces each record's key and value (marks the stream for repartitioning).
    pub fn map<K2: Data, V2: Data>(&self, f: impl Fn(K, V) -> (K2, V2) + Send + Sync + 'static) -> KStream<K2, V2> {
        self.stateless("KSTREAM-MAP", true, move |r, ctx| {
            let (key, value) = f(r.key, r.value);
            ctx.forward(Record { key, value, timestamp: r.timestamp, headers: r.headers })
        })
    }

    /// Replaces each record's value.
    pub fn map_values<V2: Data>(&self, f: impl Fn(V) -> V2 + Send + Sync + 'static) -> KStream<K, V2> {
        self.stateless("KSTREAM-MAPVALUES", false, move |r, ctx| {
            let value = f(r.value);
            ctx.forward(Record { key: r.key, value, timestamp: r.timestamp, headers: r.headers })
        })
    }

    /// Replaces each record's value, or fails the record: a failed record goes
    /// to the configured processing error policy (fail, skip or dead letter).
    pub fn try_map_values<V2: Data, E: Display>(
        &self,
        f: impl Fn(V) -> std::result::Result<V2, E> + Send + Sync + 'static,
    ) -> KStream<K, V2> {
        self.stateless("KSTREAM-TRYMAPVALUES", false, move |r, ctx| {
            let value = f(r.value).map_err(|e| StreamError::processing(e))?;
            ctx.forward(Record { key: r.key, value, timestamp: r.timestamp, headers: r.headers })
        })
    }

    /// Keeps the records for which `predicate` holds.
    pub fn filter(&self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> KStream<K, V> {
        self.stateless(
            "KSTREAM-FILTER",
            false,
            move |r, ctx| {
                if predicate(&r.key, &r.value) {
                    ctx.forward(r)
                } else {
                    Ok(())
                }
            },
        )
    }

    /// Drops the records for which `predicate` holds.
    pub fn filter_not(&self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> KStream<K, V> {
        self.filter(move |k, v| !predicate(k, v))
    }

    /// Replaces each record with zero or more records (marks the stream for repartitioning).
    pub fn flat_map<K2: Data, V2: Data, I>(&self, f: impl Fn(K, V) -> I + Send + Sync + 'static) -> KStream<K2, V2>
    where
        I: IntoIterator<Item = (K2, V2)>,
    {
        self.stateless("KSTREAM-FLATMAP", true, move |r, ctx| {
            for (key, value) in f(r.key, r.value) {
                ctx.forward(Record { key, value, timestamp: r.timestamp, headers: r.headers.clone() })?;
            }
            Ok(())
        })
    }

    /// Replaces each record's value with zero or more values.
    pub fn flat_map_values<V2: Data, I>(&self, f: impl Fn(V) -> I + Send + Sync + 'static) -> KStream<K, V2>
    where
        I: IntoIterator<Item = V2>,
    {
        self.stateless("KSTREAM-FLATMAPVALUES", false, move |r, ctx| {
            for value in f(r.value) {
                ctx.forward(Record { key: r.key.clone(), value, timestamp: r.timestamp, headers: r.headers.clone() })?;
            }
            Ok(())
        })
    }

    /// Gives each record a new key (marks the stream for repartitioning).
    pub fn select_key<K2: Data>(&self, f: impl Fn(&K, &V) -> K2 + Send + Sync + 'static) -> KStream<K2, V> {
        self.stateless("KSTREAM-KEY-SELECT", true, move |r, ctx| {
            let key = f(&r.key, &r.value);
            ctx.forward(Record { key, value: r.value, timestamp: r.timestamp, headers: r.headers })
        })
    }

    /// Calls `f` on each record and passes it on unchanged.
    pub fn peek(&self, f: impl Fn(&K, &V) + Send + Sync + 'static) -> KStream<K, V> {
        self.stateless("KSTREAM-PEEK", false, move |r, ctx| {
            f(&r.key, &r.value);
            ctx.forward(r)
        })
    }

    /// The records of both streams.
    pub fn merge(&self, other: &KStream<K, V>) -> KStream<K, V> {
        let factory: NodeFactory = Arc::new(|_| {
            ProcessorNode::boxed(FnProcessor::new(Arc::new(|r: Record<K, V>, ctx: &mut ProcessorContext<'_, K, V>| {
                ctx.forward(r)
            })))
        });
        let mut merged: KStream<K, V> = self.add("KSTREAM-MERGE", false, &[self.node, other.node], Vec::new(), factory);
        merged.key_changed_by = self.key_changed_by.clone().or_else(|| other.key_changed_by.clone());
        merged
    }

    /// Splits the stream by predicates: each record goes to the first branch
    /// whose predicate holds.
    pub fn split(&self) -> Split<K, V> {
        Split { stream: self.clone(), predicates: Vec::new() }
    }

    /// Writes the stream to `topic`.
    pub fn to(&self, topic: &str, produced: Produced<K, V>) {
        sink::add_sink(&self.graph, self.node, Topic::external(topic), produced);
    }

    /// Writes the stream through a repartition topic and reads it back, so
    /// that records are partitioned by their current key.
    pub fn repartition(&self, repartitioned: Repartitioned<K, V>) -> KStream<K, V> {
        let name = {
            let graph = self.graph.borrow();
            repartitioned.name.clone().unwrap_or_else(|| graph.name("KSTREAM-REPARTITION"))
        };
        let topic = Topic::internal(format!("{name}-repartition"));
        let produced =
            Produced { keys: repartitioned.keys.clone(), values: repartitioned.values.clone(), partitioner: None };
        sink::add_sink(&self.graph, self.node, topic.clone(), produced);
        let consumed = Consumed { keys: repartitioned.keys, values: repartitioned.values };
        let node = source::add_stream_source(&self.graph, vec![topic], consumed);
        KStream::new(self.graph.clone(), node)
    }

    /// Groups records by key for an aggregation; repartitions first (through
    /// `grouped`'s serdes) when the key was changed.
    pub fn group_by_key(&self, grouped: Grouped<K, V>) -> KGroupedStream<K, V> {
        let stream = if self.key_changed_by.is_some() { self.repartition(grouped.clone()) } else { self.clone() };
        KGroupedStream::new(stream, grouped.keys, grouped.values)
    }

    /// Groups records by a new key (always through a repartition topic).
    pub fn group_by<K2: Data>(
        &self,
        key: impl Fn(&K, &V) -> K2 + Send + Sync + 'static,
        grouped: Grouped<K2, V>,
    ) -> KGroupedStream<K2, V> {
        self.select_key(key).group_by_key(grouped)
    }

    fn check_partitioned(&self, operation: &'static str) {
        if let Some(changed_by) = &self.key_changed_by {
            let error = TopologyError::RepartitionRequired { operation, changed_by: changed_by.clone() };
            self.graph.borrow_mut().errors.push(error);
        }
    }

    /// Inner stream–table join: each record whose key is in the table is
    /// joined with the table's current value.
    pub fn join<VT: Data, VR: Data>(
        &self,
        table: &KTable<K, VT>,
        joiner: impl Fn(&V, &VT) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        self.check_partitioned("join");
        let joiner = Arc::new(move |v: &V, t: Option<&VT>| t.map(|t| joiner(v, t)));
        let factory = join::factory(table, joiner);
        self.add("KSTREAM-JOIN", false, &[self.node], vec![table.store.clone()], factory)
    }

    /// Left stream–table join: every record is joined, with `None` when its key
    /// is not in the table.
    pub fn left_join<VT: Data, VR: Data>(
        &self,
        table: &KTable<K, VT>,
        joiner: impl Fn(&V, Option<&VT>) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        self.check_partitioned("left join");
        let joiner = Arc::new(move |v: &V, t: Option<&VT>| Some(joiner(v, t)));
        let factory = join::factory(table, joiner);
        self.add("KSTREAM-LEFTJOIN", false, &[self.node], vec![table.store.clone()], factory)
    }

    /// Adds a processor of the low-level API below this stream, connected to
    /// `stores` (added with [`super::StreamsBuilder::add_state_store`]).
    /// `supplier` makes one processor per task. The output is marked for
    /// repartitioning, since the processor may change keys.
    pub fn process<P>(
        &self,
        name: &str,
        stores: &[&str],
        supplier: impl Fn() -> P + Send + Sync + 'static,
    ) -> KStream<P::KOut, P::VOut>
    where
        P: Processor<KIn = K, VIn = V>,
    {
        let factory: NodeFactory = Arc::new(move |_| ProcessorNode::boxed(supplier()));
        let stores = stores.iter().map(|s| s.to_string()).collect();
        let mut graph = self.graph.borrow_mut();
        let node = graph.add(name.to_string(), NodeKind::Processor, &[self.node], stores, factory);
        drop(graph);
        self.child(node, Some(name.to_string()))
    }
}

/// A stream being split into branches; see [`KStream::split`].
pub struct Split<K, V> {
    stream: KStream<K, V>,
    predicates: Vec<Predicate<K, V>>,
}

impl<K: Data, V: Data> Split<K, V> {
    /// Adds a branch for the records matching `predicate` (and no earlier branch).
    pub fn branch(mut self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Self {
        self.predicates.push(Arc::new(predicate));
        self
    }

    /// The branches, plus a last one for the records no predicate matched.
    pub fn default_branch(self) -> Vec<KStream<K, V>> {
        self.branch(|_, _| true).no_default_branch()
    }

    /// The branches; records no predicate matched are dropped.
    pub fn no_default_branch(self) -> Vec<KStream<K, V>> {
        let stream = self.stream;
        let predicates = Arc::new(self.predicates);
        let count = predicates.len();
        let factory: NodeFactory = Arc::new(move |_| ProcessorNode::boxed(BranchProcessor::new(predicates.clone())));
        let branch: KStream<K, V> = stream.add("KSTREAM-BRANCH", false, &[stream.node], Vec::new(), factory);
        (0..count)
            .map(|_| {
                let factory: NodeFactory = Arc::new(|_| {
                    ProcessorNode::boxed(FnProcessor::new(Arc::new(
                        |r: Record<K, V>, ctx: &mut ProcessorContext<'_, K, V>| ctx.forward(r),
                    )))
                });
                branch.add("KSTREAM-BRANCHCHILD", false, &[branch.node], Vec::new(), factory)
            })
            .collect()
    }
}
