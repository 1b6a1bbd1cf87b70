//! How an instance is a member of its consumer group.
//!
//! With dynamic membership, an instance restarted after a crash joins as a
//! new member, and the group rebalances only once the old member's session
//! has expired (`session.timeout.ms`, 45 s by default): that long, nobody
//! processes the crashed instance's partitions. With static membership
//! (`group.instance.id`, KIP-345), the restarted instance takes the old
//! member's place at once and gets its partitions back without a rebalance.
//! The price: a static member that stops cleanly does not leave the group
//! either (librdkafka, like the Java client, sends no LeaveGroup for it), so
//! the others take its partitions over only after its session timeout.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::StreamsConfig;
use crate::error::StoreError;
use crate::state::StateBackend;

/// How the runtime's consumer is a member of the group; see the
/// [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Membership {
    /// Static, under an id made at the first start and kept in the state
    /// directory (`<state dir>/<application>/instance-id`), so that it
    /// follows the instance's stores; dynamic with in-memory stores, which
    /// a restart loses anyway. The default.
    #[default]
    Static,
    /// Static, under this `group.instance.id` (unique in the group).
    StaticAs(String),
    /// Dynamic: a clean stop leaves the group at once, a crash waits for
    /// the session timeout.
    Dynamic,
}

impl Membership {
    /// The `group.instance.id` to use, if any (making and keeping one in the
    /// state directory for [`Membership::Static`]).
    pub(crate) fn instance_id(&self, streams: &StreamsConfig) -> Result<Option<String>, StoreError> {
        match (self, &streams.state) {
            (Membership::Dynamic, _) | (Membership::Static, StateBackend::InMemory) => Ok(None),
            (Membership::StaticAs(id), _) => Ok(Some(id.clone())),
            (Membership::Static, StateBackend::RocksDb(dir)) => {
                kept_id(&dir.join(&streams.application_id), &streams.application_id).map(Some)
            }
        }
    }
}

/// The id kept in `dir/instance-id`, made (`<application>-<random>`) if
/// there is none yet.
fn kept_id(dir: &Path, application_id: &str) -> Result<String, StoreError> {
    let path = dir.join("instance-id");
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| StoreError::Io { path, source }
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let id = format!("{application_id}-{:x}", nanos ^ ((std::process::id() as u128) << 64));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // Written aside, then renamed: a crash never leaves half an id.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, &id).map_err(io(&partial))?;
    std::fs::rename(&partial, &path).map_err(io(&path))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::Membership;
    use crate::config::StreamsConfig;
    use crate::state::StateBackend;

    #[test]
    fn a_static_instance_keeps_its_id_in_its_state_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let streams = StreamsConfig::new("app").state(StateBackend::RocksDb(dir.path().to_path_buf()));
        let first = Membership::Static.instance_id(&streams).expect("id").expect("static");
        assert!(first.starts_with("app-"));
        assert_eq!(Membership::Static.instance_id(&streams).expect("id"), Some(first.clone()), "kept");
        let other = tempfile::tempdir().expect("temp dir");
        let elsewhere = StreamsConfig::new("app").state(StateBackend::RocksDb(other.path().to_path_buf()));
        assert_ne!(Membership::Static.instance_id(&elsewhere).expect("id"), Some(first), "one id per directory");
        assert_eq!(Membership::Dynamic.instance_id(&streams).expect("id"), None);
        assert_eq!(Membership::Static.instance_id(&StreamsConfig::new("app")).expect("id"), None, "in memory");
        let named = Membership::StaticAs("node-1".into());
        assert_eq!(named.instance_id(&streams).expect("id").as_deref(), Some("node-1"));
    }
}
