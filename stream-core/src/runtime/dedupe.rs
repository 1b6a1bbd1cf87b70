//! De-duplication of repartition records by provenance.
//!
//! A broker that shows the records of aborted transactions (the test broker
//! does) lets a task read, on a repartition topic, records that the upstream
//! task wrote in a transaction it then abandoned, and the same records again
//! when the upstream task redoes that work. Each repartition record names its
//! input ([`super::provenance`]): the source topic, partition, offset, and its
//! rank among the outputs of that input. On one repartition topic, records
//! from one source partition arrive in that order (those of two repartition
//! topics interleave arbitrarily), so a task skips any record whose
//! provenance is not after the last one it applied from that source
//! partition through that repartition topic. Processing must be
//! deterministic for the redone records to equal the abandoned ones. With
//! Apache Kafka, which hides aborted records, nothing is ever skipped.
//!
//! What a task has seen is part of its state: it is written to the task's
//! first changelog, or its positions topic (keys starting with [`PREFIX`]),
//! in the same commit as the stores, and restored with them.

use std::collections::{HashMap, HashSet};

use super::provenance;
use super::restore::{parse_source_key, source_key};
use crate::record::Headers;

/// Key prefix of the entries in the changelog; never a store key (see
/// [`super::restore::MARKER_KEY`]).
const PREFIX: &[u8] = b"\xffstream-core\xffseen\xff";

/// Where one source partition was last seen: offset, then rank.
type Position = (i64, u32);

/// A source partition as seen through one repartition topic:
/// `<repartition topic>/<source topic>` (no topic name holds a `/`), partition.
type Source = (String, u32);

/// The provenance a task has applied, per repartition topic and source partition.
#[derive(Default)]
pub(crate) struct Seen {
    last: HashMap<Source, Position>,
    changed: HashSet<Source>,
}

fn parse<T: std::str::FromStr>(headers: &Headers, name: &str) -> Option<T> {
    headers.get_str(name)?.parse().ok()
}

/// The changelog record (key, value) saying that `source` was seen up to `position`.
fn entry(source: &Source, (offset, rank): &Position) -> (Vec<u8>, Vec<u8>) {
    let mut value = offset.to_be_bytes().to_vec();
    value.extend_from_slice(&rank.to_be_bytes());
    (source_key(PREFIX, &source.0, source.1), value)
}

impl Seen {
    /// Whether a record read from repartition topic `via` with these
    /// headers was already applied; records without provenance are never
    /// duplicates. Remembers the record otherwise.
    pub(crate) fn is_duplicate(&mut self, via: &str, headers: &Headers) -> bool {
        let (Some(topic), Some(partition), Some(offset)) = (
            headers.get_str(provenance::TOPIC),
            parse::<u32>(headers, provenance::PARTITION),
            parse::<i64>(headers, provenance::OFFSET),
        ) else {
            return false;
        };
        let position = (offset, parse::<u32>(headers, provenance::RANK).unwrap_or(0));
        let source = (format!("{via}/{topic}"), partition);
        match self.last.get(&source) {
            Some(last) if position <= *last => true,
            _ => {
                self.last.insert(source.clone(), position);
                self.changed.insert(source);
                false
            }
        }
    }

    /// Whether entries changed since [`Seen::take_changes`].
    pub(crate) fn has_changes(&self) -> bool {
        !self.changed.is_empty()
    }

    /// The changed entries as changelog records (key, value).
    pub(crate) fn take_changes(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let changed: Vec<_> = self.changed.drain().collect();
        changed.into_iter().filter_map(|source| Some(entry(&source, self.last.get(&source)?))).collect()
    }

    /// Every entry, as changelog records (key, value).
    pub(crate) fn entries(&self) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
        self.last.iter().map(|(source, position)| entry(source, position))
    }

    /// Whether a changelog key is one of these entries.
    pub(crate) fn is_entry(key: &[u8]) -> bool {
        key.starts_with(PREFIX)
    }

    /// Applies one restored entry; malformed entries, and those written
    /// before entries named their repartition topic, are ignored.
    pub(crate) fn restore(&mut self, key: &[u8], value: &[u8]) {
        let (Some(source), Ok(offset), Ok(rank)) = (
            parse_source_key(PREFIX, key),
            <[u8; 8]>::try_from(value.get(..8).unwrap_or_default()),
            <[u8; 4]>::try_from(value.get(8..).unwrap_or_default()),
        ) else {
            return;
        };
        if !source.0.contains('/') {
            return;
        }
        self.last.insert(source, (i64::from_be_bytes(offset), u32::from_be_bytes(rank)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(offset: i64, rank: Option<u32>) -> Headers {
        let mut h = Headers::new();
        h.add(provenance::TOPIC, "stock").add(provenance::PARTITION, "2").add(provenance::OFFSET, offset.to_string());
        if let Some(rank) = rank {
            h.add(provenance::RANK, rank.to_string());
        }
        h
    }

    #[test]
    fn records_not_after_the_last_applied_are_duplicates() {
        let mut seen = Seen::default();
        assert!(!seen.is_duplicate("r", &headers(10, None)));
        assert!(!seen.is_duplicate("r", &headers(10, Some(1))), "second output of the same input");
        assert!(seen.is_duplicate("r", &headers(10, None)));
        assert!(seen.is_duplicate("r", &headers(9, None)));
        assert!(!seen.is_duplicate("r", &headers(11, None)));
        assert!(!seen.is_duplicate("r", &Headers::new()), "no provenance, no de-duplication");
    }

    #[test]
    fn each_repartition_topic_is_followed_on_its_own() {
        let mut seen = Seen::default();
        assert!(!seen.is_duplicate("left", &headers(10, None)));
        assert!(!seen.is_duplicate("left", &headers(11, None)));
        assert!(!seen.is_duplicate("right", &headers(10, Some(1))), "same input, other repartition topic");
        assert!(seen.is_duplicate("right", &headers(10, Some(1))));
    }

    #[test]
    fn entries_survive_the_changelog() {
        let mut seen = Seen::default();
        seen.is_duplicate("r", &headers(41, Some(3)));
        let mut restored = Seen::default();
        for (key, value) in seen.take_changes() {
            assert!(Seen::is_entry(&key));
            restored.restore(&key, &value);
        }
        assert!(restored.is_duplicate("r", &headers(41, Some(3))));
        assert!(!restored.is_duplicate("r", &headers(41, Some(4))));
        assert!(!restored.is_duplicate("other", &headers(41, Some(3))));
        assert!(!seen.has_changes());
    }
}
