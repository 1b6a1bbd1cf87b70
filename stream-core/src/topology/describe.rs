//! The text form of a topology, in the layout Kafka Streams users know.

use std::fmt;

use super::{NodeKind, Topology};

/// What [`Topology::describe`] returns; print it with `{}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyDescription(String);

impl TopologyDescription {
    pub(crate) fn of(topology: &Topology) -> Self {
        use std::fmt::Write;
        let mut out = String::from("Topologies:\n");
        let names = |ids: &[usize]| -> String {
            if ids.is_empty() {
                "none".to_string()
            } else {
                ids.iter().map(|&i| topology.nodes[i].name.as_str()).collect::<Vec<_>>().join(", ")
            }
        };
        for (i, sub) in topology.subtopologies.iter().enumerate() {
            let _ = writeln!(out, "   Sub-topology: {i}");
            for &id in &sub.nodes {
                let node = &topology.nodes[id];
                let _ = match &node.kind {
                    NodeKind::Source(topics) => {
                        let topics: Vec<_> = topics.iter().map(|t| t.display()).collect();
                        writeln!(out, "    Source: {} (topics: [{}])", node.name, topics.join(", "))
                    }
                    NodeKind::Processor => {
                        writeln!(out, "    Processor: {} (stores: [{}])", node.name, node.stores.join(", "))
                    }
                    NodeKind::Sink(topic) => {
                        writeln!(out, "    Sink: {} (topic: {})", node.name, topic.display())
                    }
                };
                if !matches!(node.kind, NodeKind::Sink(_)) {
                    let _ = writeln!(out, "      --> {}", names(&node.children));
                }
                if !matches!(node.kind, NodeKind::Source(_)) {
                    let _ = writeln!(out, "      <-- {}", names(&node.parents));
                }
            }
            out.push('\n');
        }
        TopologyDescription(out)
    }
}

impl super::Topic {
    fn display(&self) -> String {
        if self.internal {
            format!("<application-id>-{}", self.name)
        } else {
            self.name.clone()
        }
    }
}

impl fmt::Display for TopologyDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
