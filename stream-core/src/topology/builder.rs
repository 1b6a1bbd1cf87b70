//! The graph under construction and the entry point of the DSL.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use super::ops::source;
use super::stream::{Consumed, KStream};
use super::table::KTable;
use super::{NodeDef, NodeFactory, NodeKind, SubTopology, Topic, Topology};
use crate::error::TopologyError;
use crate::processor::Data;

/// The graph the DSL types add to.
#[derive(Default)]
pub(crate) struct Graph {
    pub(crate) nodes: Vec<NodeDef>,
    pub(crate) stores: Vec<String>,
    /// The source topics read as tables.
    pub(crate) tables: Vec<Topic>,
    /// Errors found while describing; reported by `build`.
    pub(crate) errors: Vec<TopologyError>,
}

pub(crate) type GraphRef = Rc<RefCell<Graph>>;

impl Graph {
    /// A fresh node name, `PREFIX-0000000007` style.
    pub(crate) fn name(&self, prefix: &str) -> String {
        format!("{prefix}-{:010}", self.nodes.len())
    }

    pub(crate) fn add(
        &mut self,
        name: String,
        kind: NodeKind,
        parents: &[usize],
        stores: Vec<String>,
        factory: NodeFactory,
    ) -> usize {
        if self.nodes.iter().any(|n| n.name == name) {
            self.errors.push(TopologyError::DuplicateName(name.clone()));
        }
        let id = self.nodes.len();
        for &p in parents {
            self.nodes[p].children.push(id);
        }
        self.nodes.push(NodeDef { name, kind, parents: parents.to_vec(), children: Vec::new(), stores, factory });
        id
    }

    pub(crate) fn add_store(&mut self, name: &str) {
        if self.stores.iter().any(|s| s == name) {
            self.errors.push(TopologyError::DuplicateName(name.to_string()));
        } else {
            self.stores.push(name.to_string());
        }
    }
}

/// Describes a topology: sources, operators, stores and sinks.
///
/// See the crate documentation for an example.
#[derive(Default)]
pub struct StreamsBuilder {
    graph: GraphRef,
}

impl StreamsBuilder {
    /// An empty topology.
    pub fn new() -> Self {
        Self::default()
    }

    /// A stream of the records of `topic`.
    pub fn stream<K: Data, V: Data>(&self, topic: &str, consumed: Consumed<K, V>) -> KStream<K, V> {
        self.stream_from(&[topic], consumed)
    }

    /// A stream of the records of several topics (which must be co-partitioned).
    pub fn stream_from<K: Data, V: Data>(&self, topics: &[&str], consumed: Consumed<K, V>) -> KStream<K, V> {
        let topics: Vec<Topic> = topics.iter().map(|t| Topic::external(*t)).collect();
        let node = source::add_stream_source(&self.graph, topics, consumed);
        KStream::new(self.graph.clone(), node)
    }

    /// A table built from `topic`: each record upserts its key; a record
    /// without value (tombstone) deletes it. Kept in store `store`.
    pub fn table<K: Data, V: Data>(&self, topic: &str, consumed: Consumed<K, V>, store: &str) -> KTable<K, V> {
        KTable::from_topic(self.graph.clone(), Topic::external(topic), consumed, store)
    }

    /// Adds a key-value store for processors added with [`KStream::process`].
    pub fn add_state_store(&self, name: &str) -> &Self {
        self.graph.borrow_mut().add_store(name);
        self
    }

    /// Checks the description and splits it into sub-topologies.
    pub fn build(self) -> Result<Topology, TopologyError> {
        let graph = self.graph.take();
        if let Some(error) = graph.errors.into_iter().next() {
            return Err(error);
        }
        let nodes = graph.nodes;
        if !nodes.iter().any(|n| matches!(n.kind, NodeKind::Source(_))) {
            return Err(TopologyError::Empty);
        }
        let mut read = HashSet::new();
        for topic in nodes.iter().flat_map(|n| n.source_topics()) {
            if !read.insert(topic.clone()) {
                return Err(TopologyError::TopicReadTwice(topic.name.clone()));
            }
        }
        for node in &nodes {
            for store in &node.stores {
                if !graph.stores.contains(store) {
                    return Err(TopologyError::UnknownStore { processor: node.name.clone(), store: store.clone() });
                }
            }
        }
        let mut subtopologies = split(&nodes);
        for sub in &mut subtopologies {
            sub.tables = sub.sources.iter().filter(|t| graph.tables.contains(t)).cloned().collect();
        }
        Ok(Topology { nodes: Arc::new(nodes), subtopologies: Arc::new(subtopologies) })
    }
}

/// Groups nodes connected by edges or shared stores (union-find).
fn split(nodes: &[NodeDef]) -> Vec<SubTopology> {
    let mut parent: Vec<usize> = (0..nodes.len()).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let union = |parent: &mut Vec<usize>, a: usize, b: usize| {
        let (ra, rb) = (find(parent, a), find(parent, b));
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    };
    let mut store_owner: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, node) in nodes.iter().enumerate() {
        for &child in &node.children {
            union(&mut parent, id, child);
        }
        for store in &node.stores {
            match store_owner.get(store.as_str()) {
                Some(&other) => union(&mut parent, id, other),
                None => {
                    store_owner.insert(store, id);
                }
            }
        }
    }
    let mut groups: BTreeMap<usize, SubTopology> = BTreeMap::new();
    for (id, node) in nodes.iter().enumerate() {
        let root = find(&mut parent, id);
        let sub = groups.entry(root).or_insert_with(|| SubTopology {
            nodes: Vec::new(),
            sources: Vec::new(),
            sinks: Vec::new(),
            stores: Vec::new(),
            tables: Vec::new(),
        });
        sub.nodes.push(id);
        match &node.kind {
            NodeKind::Source(topics) => sub.sources.extend(topics.iter().cloned()),
            NodeKind::Sink(topic) if !sub.sinks.contains(topic) => sub.sinks.push(topic.clone()),
            _ => {}
        }
        for store in &node.stores {
            if !sub.stores.contains(store) {
                sub.stores.push(store.clone());
            }
        }
    }
    groups.into_values().collect()
}
