//! Dial targets: addresses meshd keeps (re)connecting to, their state and backoff, and the
//! persisted list of the ones the operator gave.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use mesh_gossip::PeerId;

use crate::identity::write_atomic;

pub const PEERS_FILE: &str = "peers.json";

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Connecting,
    Retrying,
    /// Refused by authentication: retried slowly, shown as failed.
    Failed,
    Established,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Retrying => "retrying",
            State::Failed => "failed",
            State::Established => "established",
        }
    }
}

#[derive(Debug)]
pub struct Target {
    /// Given by the operator (command line, `meshctl connect`): kept and persisted. Otherwise
    /// discovered through gossip and dropped when its peer leaves the topology.
    pub persistent: bool,
    pub state: State,
    pub since: SystemTime,
    pub failures: u32,
    pub next_attempt: Instant,
    pub last_error: String,
    /// The peer behind the address, once known.
    pub peer: Option<PeerId>,
    /// Its name from the handshake: shown while it is down even if gossip never described it
    /// (a peer that goes away right after the handshake).
    pub peer_name: Option<String>,
    /// A dial is in flight.
    pub dialing: bool,
}

impl Target {
    pub fn new(persistent: bool, peer: Option<PeerId>) -> Target {
        Target {
            persistent,
            state: State::Connecting,
            since: SystemTime::now(),
            failures: 0,
            next_attempt: Instant::now(),
            last_error: String::new(),
            peer,
            peer_name: None,
            dialing: false,
        }
    }

    pub fn set_state(&mut self, s: State) {
        if self.state != s {
            self.state = s;
            self.since = SystemTime::now();
        }
    }

    /// Schedules the next attempt after a failure: exponential backoff with jitter.
    pub fn failed(&mut self, error: String, auth: bool, now: Instant) {
        self.dialing = false;
        self.failures = self.failures.saturating_add(1);
        self.last_error = error;
        self.set_state(if auth { State::Failed } else { State::Retrying });
        let base = BACKOFF_START
            .saturating_mul(1 << self.failures.min(8))
            .min(BACKOFF_MAX);
        // Jitter from the clock's low bits: enough to keep peers from dialling in lockstep.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = base.mul_f64(f64::from(nanos % 200) / 1000.0);
        self.next_attempt = now + base + jitter;
    }

    pub fn established(&mut self, peer: PeerId, name: &str) {
        self.dialing = false;
        self.failures = 0;
        self.last_error.clear();
        self.peer = Some(peer);
        self.peer_name = Some(name.to_owned());
        self.set_state(State::Established);
    }

    /// The connection it led to went away: try again soon.
    pub fn lost(&mut self, reason: String, now: Instant) {
        self.last_error = reason;
        self.failures = 0;
        self.set_state(State::Retrying);
        self.next_attempt = now + BACKOFF_START;
    }
}

/// Dial targets taken from gossip for one peer, and in all: every address a member advertises
/// would otherwise become a target dialled forever.
pub const MAX_DISCOVERED_PER_PEER: usize = 4;
pub const MAX_DISCOVERED: usize = 512;

/// Whether `addr`, as gossip carries it, may be dialled: an IP literal and a port (a name would
/// make us resolve whatever a member wrote), and an address a peer can have (not unspecified,
/// multicast or broadcast, port not 0).
pub fn dialable(addr: &str) -> bool {
    let Ok(a) = addr.parse::<std::net::SocketAddr>() else {
        return false;
    };
    let ip = a.ip().to_canonical();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    a.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

/// Targets for the peers in `entries` we have no link to (`linked`), other than `me`: each
/// one's advertised addresses, then the addresses its neighbours observe it at, dialable ones
/// only, at most [`MAX_DISCOVERED_PER_PEER`] per peer and [`MAX_DISCOVERED`] in all.
pub fn discovered(
    entries: &BTreeMap<PeerId, mesh_gossip::PeerEntry>,
    me: PeerId,
    linked: impl Fn(PeerId) -> bool,
) -> Vec<(String, PeerId)> {
    let mut per_peer: BTreeMap<PeerId, Vec<String>> = BTreeMap::new();
    let mut add = |id: PeerId, addr: &str| {
        if id == me || linked(id) || !dialable(addr) {
            return;
        }
        let list = per_peer.entry(id).or_default();
        if list.len() < MAX_DISCOVERED_PER_PEER && !list.iter().any(|a| a == addr) {
            list.push(addr.to_owned());
        }
    };
    for (id, e) in entries {
        for a in &e.addresses {
            add(*id, a);
        }
    }
    for e in entries.values() {
        for l in &e.links {
            add(PeerId(l.peer), &l.observed_addr);
        }
    }
    per_peer
        .into_iter()
        .flat_map(|(id, addrs)| addrs.into_iter().map(move |a| (a, id)))
        .take(MAX_DISCOVERED)
        .collect()
}

/// The contents of `peers.json`: a JSON list of peer addresses.
pub fn parse_peer_list(bytes: &[u8]) -> Result<Vec<String>> {
    Ok(serde_json::from_slice(bytes)?)
}

/// The operator's targets, persisted in `<state_dir>/peers.json`.
pub struct Store {
    path: PathBuf,
    /// Writes in flight are numbered; the number of the newest list written so far (a write
    /// that finds a newer one already on disk skips its older list).
    written: std::sync::Arc<std::sync::Mutex<u64>>,
    next: u64,
}

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store {
            path: state_dir.join(PEERS_FILE),
            written: Default::default(),
            next: 0,
        }
    }

    /// Writes the persistent targets off the calling thread (the agent's, which drives the
    /// keep-alives of every connection: an fsync on a slow SD card must not stall it past the
    /// peers' idle timeout). Resolves once the list, or a newer one, is on disk.
    pub fn save_in_background(
        &mut self,
        targets: &BTreeMap<String, Target>,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        self.next += 1;
        let (seq, written, path) = (self.next, self.written.clone(), self.path.clone());
        let list = Self::persistent(targets);
        async move {
            tokio::task::spawn_blocking(move || {
                let mut last = written.lock().unwrap_or_else(|p| p.into_inner());
                if *last > seq {
                    return Ok(());
                }
                Self::write(&path, &list)?;
                *last = seq;
                Ok(())
            })
            .await
            .context("the state writer ended")?
        }
    }

    fn persistent(targets: &BTreeMap<String, Target>) -> Vec<String> {
        targets
            .iter()
            .filter(|(_, t)| t.persistent)
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn write(path: &Path, list: &[String]) -> Result<()> {
        // The peers an operator configured say where the mesh runs: not for other users.
        write_atomic(path, &serde_json::to_vec_pretty(list)?, 0o600)
    }

    pub fn load(&self) -> Result<Vec<String>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => parse_peer_list(&bytes).with_context(|| {
                format!(
                    "{} is not a JSON list of peer addresses; fix or remove it",
                    self.path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Writes the persistent targets now (at start, before any connection depends on us).
    pub fn save(&self, targets: &BTreeMap<String, Target>) -> Result<()> {
        Self::write(&self.path, &Self::persistent(targets))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_peer_list_is_private_to_its_owner() {
        let dir = std::env::temp_dir().join(format!("mesh-peers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::new(&dir);
        store.save(&BTreeMap::new()).unwrap();
        let mode = std::fs::metadata(dir.join(PEERS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(store.load().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn gossip_gives_few_and_only_dialable_targets() {
        use mesh_gossip::PeerEntry;
        use mesh_proto::v1::Link;
        let entry = |id: u64, addresses: Vec<String>, links: Vec<Link>| PeerEntry {
            id,
            name: String::new(),
            version: 1,
            links,
            addresses,
            short_id: 1,
            signature: None,
            networks: Vec::new(),
            networks_in_use: Vec::new(),
            rings: Vec::new(),
            wants_space: Vec::new(),
        };
        let many: Vec<String> = (1..=16).map(|p| format!("198.18.0.9:{p}")).collect();
        let entries = BTreeMap::from([
            (PeerId(1), entry(1, vec!["198.18.0.1:6783".into()], vec![])),
            (PeerId(2), entry(2, many, vec![])),
            (
                PeerId(3),
                entry(
                    3,
                    vec![
                        "evil.example:6783".into(),
                        "0.0.0.0:6783".into(),
                        "224.0.0.1:6783".into(),
                        "255.255.255.255:6783".into(),
                        "198.18.0.3:0".into(),
                        "[2001:db8::3]:6783".into(),
                    ],
                    vec![Link {
                        peer: 4,
                        observed_addr: "198.18.0.4:40000".into(),
                        datapath_down: false,
                    }],
                ),
            ),
            (PeerId(5), entry(5, vec!["198.18.0.5:6783".into()], vec![])),
        ]);
        let found = discovered(&entries, PeerId(1), |id| id == PeerId(5));
        let of = |id: u64| -> Vec<&str> {
            found
                .iter()
                .filter(|(_, p)| *p == PeerId(id))
                .map(|(a, _)| a.as_str())
                .collect()
        };
        assert!(of(1).is_empty(), "not ourselves");
        assert_eq!(of(2).len(), MAX_DISCOVERED_PER_PEER);
        assert_eq!(
            of(3),
            ["[2001:db8::3]:6783"],
            "names and unusable addresses are skipped"
        );
        assert_eq!(of(4), ["198.18.0.4:40000"], "observed addresses count");
        assert!(of(5).is_empty(), "linked peers need no target");
    }
}
