//! Topology description: what to run, separated from running it.
//!
//! [`StreamsBuilder`] and the DSL types ([`KStream`], [`KTable`],
//! [`KGroupedStream`], [`TimeWindowedKStream`]) describe a graph of processors;
//! [`StreamsBuilder::build`] checks it and splits it into *sub-topologies*:
//! groups of nodes connected by parent/child edges or by a shared state store.
//! A repartition topic cuts the graph: its writer and its reader belong to
//! different sub-topologies. Each sub-topology runs as one task per partition
//! of its source topics, which must therefore be co-partitioned.

mod builder;
mod describe;
pub(crate) mod ops;
mod stream;
mod table;
mod windowed;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

pub use builder::StreamsBuilder;
pub use describe::TopologyDescription;
pub use stream::{Consumed, Grouped, KStream, Produced, Repartitioned, Split};
pub use table::{KGroupedStream, KTable, Materialized};
pub use windowed::{TimeWindowedKStream, TimeWindows, Window, Windowed, WindowedSerde};

use crate::error::TopologyError;
use crate::task::node::Node;

/// Creates a node's processor for one task; gets the application id.
pub(crate) type NodeFactory = Arc<dyn Fn(&str) -> Box<dyn Node> + Send + Sync>;

/// A topic as the topology names it: internal topics get the application id as prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Topic {
    pub(crate) name: String,
    pub(crate) internal: bool,
}

impl Topic {
    pub(crate) fn external(name: impl Into<String>) -> Self {
        Topic { name: name.into(), internal: false }
    }

    pub(crate) fn internal(name: impl Into<String>) -> Self {
        Topic { name: name.into(), internal: true }
    }

    /// The topic's real name for application `app`.
    pub(crate) fn resolve(&self, app: &str) -> String {
        if self.internal {
            format!("{app}-{}", self.name)
        } else {
            self.name.clone()
        }
    }
}

/// The changelog topic of store `store` of application `app`.
pub fn changelog_topic(app: &str, store: &str) -> String {
    format!("{app}-{store}-changelog")
}

/// The topic where the tasks of sub-topology `subtopology`, which has no
/// store, keep their input positions (compacted, like a changelog).
pub(crate) fn positions_topic(app: &str, subtopology: u32) -> String {
    format!("{app}-subtopology-{subtopology}-positions-changelog")
}

#[derive(Clone)]
pub(crate) enum NodeKind {
    Source(Vec<Topic>),
    Processor,
    Sink(Topic),
}

#[derive(Clone)]
pub(crate) struct NodeDef {
    pub(crate) name: String,
    pub(crate) kind: NodeKind,
    pub(crate) parents: Vec<usize>,
    pub(crate) children: Vec<usize>,
    pub(crate) stores: Vec<String>,
    pub(crate) factory: NodeFactory,
}

impl NodeDef {
    pub(crate) fn source_topics(&self) -> &[Topic] {
        match &self.kind {
            NodeKind::Source(topics) => topics,
            _ => &[],
        }
    }
}

/// A connected part of the topology, run as one task per input partition.
#[derive(Debug, Clone)]
pub(crate) struct SubTopology {
    /// Global node ids, in creation (topological) order.
    pub(crate) nodes: Vec<usize>,
    pub(crate) sources: Vec<Topic>,
    pub(crate) sinks: Vec<Topic>,
    pub(crate) stores: Vec<String>,
    /// The sources read as tables (see [`crate::StreamsBuilder::table`]).
    pub(crate) tables: Vec<Topic>,
}

/// Identifies a task: a sub-topology and an input partition. Displayed as `1_3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId {
    /// The sub-topology.
    pub subtopology: u32,
    /// The partition of its source topics.
    pub partition: u32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.subtopology, self.partition)
    }
}

/// A checked, immutable topology, ready to be run by a host (the test driver
/// or the Kafka runtime). Cheap to clone.
#[derive(Clone)]
pub struct Topology {
    pub(crate) nodes: Arc<Vec<NodeDef>>,
    pub(crate) subtopologies: Arc<Vec<SubTopology>>,
}

/// Partition counts and tasks of a topology on a given cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    /// Every topic the topology reads or owns (sources, repartition and
    /// changelog topics, and the positions topic of each sub-topology
    /// without stores), by real name, with its partition count.
    pub topics: BTreeMap<String, u32>,
    /// Every task, in order.
    pub tasks: Vec<TaskId>,
}

impl Topology {
    pub(crate) fn node(&self, id: usize) -> &NodeDef {
        &self.nodes[id]
    }

    pub(crate) fn subtopology(&self, id: u32) -> Result<&SubTopology, TopologyError> {
        self.subtopologies.get(id as usize).ok_or(TopologyError::UnknownSubTopology(id))
    }

    /// The text description of the topology.
    pub fn describe(&self) -> TopologyDescription {
        TopologyDescription::of(self)
    }

    /// The user topics the topology reads (repartition topics excluded).
    pub fn source_topics(&self) -> BTreeSet<String> {
        self.topics(|s| &s.sources).filter(|t| !t.internal).map(|t| t.name.clone()).collect()
    }

    /// The user topics the topology writes to (repartition topics excluded).
    pub fn sink_topics(&self) -> BTreeSet<String> {
        self.topics(|s| &s.sinks).filter(|t| !t.internal).map(|t| t.name.clone()).collect()
    }

    /// The repartition topics of application `app`, by real name.
    pub fn repartition_topics(&self, app: &str) -> BTreeSet<String> {
        self.topics(|s| &s.sources).filter(|t| t.internal).map(|t| t.resolve(app)).collect()
    }

    /// The names of all state stores.
    pub fn store_names(&self) -> Vec<String> {
        self.subtopologies.iter().flat_map(|s| s.stores.iter().cloned()).collect()
    }

    fn topics<'a>(
        &'a self,
        f: impl Fn(&'a SubTopology) -> &'a Vec<Topic> + 'a,
    ) -> impl Iterator<Item = &'a Topic> + 'a {
        self.subtopologies.iter().flat_map(move |s| f(s).iter())
    }

    /// Works out the partition count of every topic the topology owns, given
    /// the counts of the user topics (`partitions_of`), and checks
    /// co-partitioning: all source topics of a sub-topology must have the same
    /// count. A repartition topic gets the count of the user topics it is
    /// co-partitioned with, or else the largest count among its writers' inputs.
    pub fn partition_plan(
        &self,
        app: &str,
        partitions_of: impl Fn(&str) -> Option<u32>,
    ) -> Result<PartitionPlan, TopologyError> {
        let mut counts: BTreeMap<Topic, u32> = BTreeMap::new();
        for topic in self.topics(|s| &s.sources).filter(|t| !t.internal) {
            let n = partitions_of(&topic.name).ok_or_else(|| TopologyError::UnknownTopic(topic.name.clone()))?;
            counts.insert(topic.clone(), n);
        }
        // Internal topics: fixed point over the sub-topologies.
        for _ in 0..=self.subtopologies.len() {
            let mut changed = false;
            for sub in self.subtopologies.iter() {
                let external = sub.sources.iter().filter(|t| !t.internal).filter_map(|t| counts.get(t)).max().copied();
                let input = sub.sources.iter().filter_map(|t| counts.get(t)).max().copied();
                for topic in sub.sources.iter().filter(|t| t.internal) {
                    if let Some(n) = external {
                        changed |= counts.insert(topic.clone(), n) != Some(n);
                    }
                }
                if let Some(n) = input {
                    for topic in sub.sinks.iter().filter(|t| t.internal) {
                        let reader_has_external = self
                            .subtopologies
                            .iter()
                            .any(|r| r.sources.contains(topic) && r.sources.iter().any(|t| !t.internal));
                        if !reader_has_external && counts.get(topic).is_none_or(|&c| c < n) {
                            counts.insert(topic.clone(), n);
                            changed = true;
                        }
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let mut plan = PartitionPlan { topics: BTreeMap::new(), tasks: Vec::new() };
        for (i, sub) in self.subtopologies.iter().enumerate() {
            let mut sub_counts = Vec::new();
            for topic in &sub.sources {
                let n = *counts.get(topic).ok_or_else(|| TopologyError::UnknownTopic(topic.resolve(app)))?;
                sub_counts.push(n);
                plan.topics.insert(topic.resolve(app), n);
            }
            if sub_counts.windows(2).any(|w| w[0] != w[1]) {
                return Err(TopologyError::NotCopartitioned {
                    topics: sub.sources.iter().map(|t| t.resolve(app)).collect(),
                    counts: sub_counts,
                });
            }
            let n = sub_counts.first().copied().unwrap_or(1);
            for store in &sub.stores {
                plan.topics.insert(changelog_topic(app, store), n);
            }
            if sub.stores.is_empty() {
                plan.topics.insert(positions_topic(app, i as u32), n);
            }
            plan.tasks.extend((0..n).map(|p| TaskId { subtopology: i as u32, partition: p }));
        }
        Ok(plan)
    }
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.describe(), f)
    }
}
