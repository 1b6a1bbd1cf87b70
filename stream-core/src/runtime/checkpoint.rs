//! Local checkpoints: what spares a task the replay of its whole changelogs
//! when it reopens on the instance that closed it.
//!
//! When a task closes cleanly (its partitions are revoked, or the runtime
//! stops) right after a successful commit, its RocksDB stores hold exactly
//! the state of that commit. The runtime then writes beside them
//! `<state dir>/<application>/<task>.checkpoint`: for each changelog, the
//! offset after the last record the task wrote there (its last commit record,
//! or its restore marker), and the input positions and de-duplication
//! entries of that commit. Everything before those offsets is in the local
//! stores; everything after them was written by later owners of the task,
//! each of which restored all that came before it. Restoration therefore
//! reads the changelogs from those offsets on, over the local stores, and
//! applies the complete commits it finds there (see `restore`).
//!
//! A checkpoint is taken (read and deleted) when the task opens, before its
//! stores change: after a crash there is none and the stores are rebuilt
//! from the beginning of the changelogs. One that does not fit (other
//! changelogs, offsets beyond the end of a changelog) is ignored the same way.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::StreamsConfig;
use crate::error::StoreError;
use crate::state::StateBackend;
use crate::topology::TaskId;

/// A task's local checkpoint; see the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    /// Changelog topic → the offset from which the local stores lack records.
    pub(crate) changelogs: BTreeMap<String, i64>,
    /// Position and de-duplication entries of the last commit, as the task
    /// writes them to its first changelog (key, value).
    pub(crate) entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Where task `id`'s checkpoint is kept; `None` for in-memory stores.
fn path(streams: &StreamsConfig, id: TaskId) -> Option<PathBuf> {
    match &streams.state {
        StateBackend::RocksDb(dir) => Some(dir.join(&streams.application_id).join(format!("{id}.checkpoint"))),
        StateBackend::InMemory => None,
    }
}

fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.display().to_string(), source }
}

impl Checkpoint {
    /// Reads and deletes task `id`'s checkpoint. A checkpoint that cannot be
    /// read is deleted too, and reported as none (the stores are rebuilt).
    pub(crate) fn take(streams: &StreamsConfig, id: TaskId) -> Result<Option<Checkpoint>, StoreError> {
        let Some(path) = path(streams, id) else { return Ok(None) };
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path)(e)),
        };
        std::fs::remove_file(&path).map_err(io_error(&path))?;
        match serde_json::from_slice(&text) {
            Ok(checkpoint) => Ok(Some(checkpoint)),
            Err(error) => {
                tracing::warn!(task = %id, %error, "unreadable local checkpoint ignored");
                Ok(None)
            }
        }
    }

    /// Writes task `id`'s checkpoint (its stores must be closed).
    pub(crate) fn write(&self, streams: &StreamsConfig, id: TaskId) -> Result<(), StoreError> {
        let Some(path) = path(streams, id) else { return Ok(()) };
        let json = serde_json::to_vec(self).map_err(|e| io_error(&path)(std::io::Error::other(e)))?;
        // Written aside, synced, then renamed, and the rename synced: neither
        // a crash nor a power loss leaves half a checkpoint.
        let partial = path.with_extension("checkpoint.partial");
        let mut file = std::fs::File::create(&partial).map_err(io_error(&partial))?;
        file.write_all(&json).and_then(|()| file.sync_all()).map_err(io_error(&partial))?;
        super::crash::at("checkpoint_writing");
        std::fs::rename(&partial, &path).map_err(io_error(&path))?;
        let dir = path.parent().unwrap_or(&path);
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
    }

    /// Whether it was written for exactly these changelogs.
    pub(crate) fn fits(&self, changelogs: &[String]) -> bool {
        self.changelogs.len() == changelogs.len() && changelogs.iter().all(|t| self.changelogs.contains_key(t))
    }
}

#[cfg(test)]
mod tests {
    use super::Checkpoint;
    use crate::state::StateBackend;
    use crate::topology::TaskId;
    use crate::StreamsConfig;

    #[test]
    fn a_checkpoint_is_read_once() {
        let dir = std::env::temp_dir().join(format!("checkpoint-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("app")).expect("dir");
        let streams = StreamsConfig::new("app").state(StateBackend::RocksDb(dir.clone()));
        let id = TaskId { subtopology: 0, partition: 3 };
        let checkpoint = Checkpoint {
            changelogs: [("app-totals-changelog".to_string(), 42)].into(),
            entries: vec![(b"k".to_vec(), b"v".to_vec())],
        };
        checkpoint.write(&streams, id).expect("write");
        assert_eq!(Checkpoint::take(&streams, id).expect("take"), Some(checkpoint.clone()));
        assert_eq!(Checkpoint::take(&streams, id).expect("take again"), None);
        assert!(checkpoint.fits(&["app-totals-changelog".to_string()]));
        assert!(!checkpoint.fits(&["app-totals-changelog".to_string(), "app-other-changelog".to_string()]));

        std::fs::write(dir.join("app").join(format!("{id}.checkpoint")), b"{not json").expect("garbage");
        assert_eq!(Checkpoint::take(&streams, id).expect("take garbage"), None);
        assert!(!dir.join("app").join(format!("{id}.checkpoint")).exists());
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
