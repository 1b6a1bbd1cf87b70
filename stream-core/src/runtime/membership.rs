//! How an instance is a member of its consumer group.
//!
//! With dynamic membership, an instance restarted after a crash joins as a
//! new member, and the group rebalances only once the old member's session
//! has expired (`session.timeout.ms`, 45 s by default): that long, nobody
//! processes the crashed instance's partitions. With static membership
//! (`group.instance.id`, KIP-345), the restarted instance takes the old
//! member's place at once and gets its partitions back without a rebalance.
//! librdkafka, like the Java consumer, sends no LeaveGroup for a static
//! member that stops cleanly, so the others would take its partitions over
//! only after its session timeout. So at a clean stop the runtime removes
//! its member itself ([`leave_group`]: a LeaveGroup request naming its
//! `group.instance.id`, what Kafka's admin client's
//! `removeMembersFromConsumerGroup` sends and librdkafka lacks), and the
//! others take over at once ([`super::RuntimeConfig::leave_group_on_stop`]).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Why [`leave_group`] could not remove a member.
#[derive(Debug, thiserror::Error)]
pub enum LeaveError {
    /// The connection to a broker failed.
    #[error("{broker}: {source}")]
    Io {
        /// `host:port`.
        broker: String,
        /// Why.
        source: std::io::Error,
    },
    /// The clients reach the cluster over TLS or SASL, which this request
    /// does not speak: the member leaves at its session timeout.
    #[error("security.protocol {0}: only plaintext listeners are supported")]
    Unsupported(String),
    /// A broker answered with an error code (Kafka's protocol error codes).
    #[error("{request}: Kafka error code {code}")]
    Refused {
        /// The request.
        request: &'static str,
        /// The error code.
        code: i16,
    },
    /// A broker's answer could not be read.
    #[error("{0}: malformed response")]
    Malformed(&'static str),
}

const FIND_COORDINATOR: i16 = 10;
const LEAVE_GROUP: i16 = 13;
/// Kafka's UNKNOWN_MEMBER_ID: the member is not in the group (any more).
const UNKNOWN_MEMBER_ID: i16 = 25;
/// Retriable: the coordinator is loading or moving.
const COORDINATOR_ERRORS: [i16; 3] = [14, 15, 16];

/// Removes the static member `instance` from consumer group `group`, on the
/// cluster at `bootstrap` (comma-separated `host:port`s) whose clients use
/// `security_protocol` (librdkafka's `security.protocol`; `None`:
/// plaintext). A member that is not in the group is not an error.
///
/// # Errors
/// [`LeaveError`]: the cluster could not be reached, refused, or needs TLS
/// or SASL.
pub fn leave_group(
    bootstrap: &str,
    security_protocol: Option<&str>,
    group: &str,
    instance: &str,
) -> Result<(), LeaveError> {
    if let Some(protocol) = security_protocol.filter(|p| !p.eq_ignore_ascii_case("plaintext")) {
        return Err(LeaveError::Unsupported(protocol.to_string()));
    }
    let mut last = LeaveError::Malformed("no bootstrap server");
    for attempt in 0..10 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        for broker in bootstrap.split(',').map(str::trim).filter(|b| !b.is_empty()) {
            match find_coordinator(broker, group).and_then(|coordinator| remove(&coordinator, group, instance)) {
                Ok(()) => return Ok(()),
                Err(LeaveError::Refused { code: UNKNOWN_MEMBER_ID, .. }) => return Ok(()),
                Err(error @ LeaveError::Refused { code, .. }) if !COORDINATOR_ERRORS.contains(&code) => {
                    return Err(error)
                }
                Err(error) => last = error,
            }
        }
    }
    Err(last)
}

/// `host:port` of `group`'s coordinator (FindCoordinator v1).
fn find_coordinator(broker: &str, group: &str) -> Result<String, LeaveError> {
    let mut body = Vec::new();
    put_string(&mut body, group);
    body.push(0); // key type: group
    let response = call(broker, FIND_COORDINATOR, 1, &body)?;
    let mut r = Reader(&response, "FindCoordinator");
    r.i32()?; // throttle time
    let code = r.i16()?;
    r.nullable_string()?;
    if code != 0 {
        return Err(LeaveError::Refused { request: "FindCoordinator", code });
    }
    r.i32()?; // node id
    let host = r.nullable_string()?.ok_or(LeaveError::Malformed("FindCoordinator"))?;
    let port = r.i32()?;
    Ok(format!("{host}:{port}"))
}

/// LeaveGroup v3 naming `instance` (an unknown member id: any member of it).
fn remove(coordinator: &str, group: &str, instance: &str) -> Result<(), LeaveError> {
    let mut body = Vec::new();
    put_string(&mut body, group);
    body.extend_from_slice(&1i32.to_be_bytes()); // one member
    put_string(&mut body, ""); // member id
    put_string(&mut body, instance); // group instance id
    let response = call(coordinator, LEAVE_GROUP, 3, &body)?;
    let mut r = Reader(&response, "LeaveGroup");
    r.i32()?; // throttle time
    let code = r.i16()?;
    if code != 0 {
        return Err(LeaveError::Refused { request: "LeaveGroup", code });
    }
    for _ in 0..r.i32()?.max(0) {
        r.nullable_string()?;
        r.nullable_string()?;
        let code = r.i16()?;
        if code != 0 {
            return Err(LeaveError::Refused { request: "LeaveGroup", code });
        }
    }
    Ok(())
}

/// Sends one request (header v1) and returns the response's body.
fn call(broker: &str, api_key: i16, version: i16, body: &[u8]) -> Result<Vec<u8>, LeaveError> {
    let io = |source| LeaveError::Io { broker: broker.to_string(), source };
    let address = broker
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| io(std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))?;
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).map_err(io)?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
    let mut request = Vec::with_capacity(body.len() + 32);
    request.extend_from_slice(&api_key.to_be_bytes());
    request.extend_from_slice(&version.to_be_bytes());
    request.extend_from_slice(&1i32.to_be_bytes()); // correlation id
    put_string(&mut request, "stream-core");
    request.extend_from_slice(body);
    stream.write_all(&(request.len() as i32).to_be_bytes()).map_err(io)?;
    stream.write_all(&request).map_err(io)?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).map_err(io)?;
    let mut response = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
    stream.read_exact(&mut response).map_err(io)?;
    // The response header (v0) is the correlation id.
    Ok(response.split_off(4.min(response.len())))
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads big-endian fields of a response.
struct Reader<'a>(&'a [u8], &'static str);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], LeaveError> {
        if self.0.len() < n {
            return Err(LeaveError::Malformed(self.1));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, LeaveError> {
        Ok(i16::from_be_bytes([self.take(1)?[0], self.take(1)?[0]]))
    }

    fn i32(&mut self) -> Result<i32, LeaveError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn nullable_string(&mut self) -> Result<Option<String>, LeaveError> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        Ok(Some(String::from_utf8_lossy(self.take(len as usize)?).into_owned()))
    }
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
