//! The TAP datapath: meshd moves Ethernet frames between its TAP device (on the local bridge)
//! and UDP to its peers, using the switch logic in [`crate::switch`]. It runs on its own thread
//! (a plain epoll loop, see [`pump`]), with its timed chores on a small runtime of their own
//! ([`upkeep`]), so a busy data path never delays the control plane's keep-alives.
//!
//! The agent publishes a forwarding [`Table`] and the neighbours' addresses whenever the
//! topology changes; the data path learns MACs, forwards, relays, and sends heartbeats to every
//! neighbour. A neighbour's heartbeat tells us the address its data actually comes from — behind
//! NAT that is the translated one, and it is the one replies must go to.

mod batch;
mod busy_poll;
pub use busy_poll::default_window as default_busy_poll;
pub mod device;
pub mod keeper;
pub mod neighbours;
pub mod ping;
mod poller;
mod pump;
mod udp;
mod upkeep;
mod vnet;

use std::{
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
pub use device::{is_veth, underlay_mtu};
use mesh_common::DropReason;
use neighbours::Neighbours;
pub use neighbours::{LinkInfo, LinkSpec, Traffic};

use crate::{
    datapath::iface::{Datapath, DatapathCounters, DatapathInfo, LinkReport},
    switch::{
        LinkId, Mac, ShortId, fdb::Fdb, forward::Table, seal::SEAL_OVERHEAD, wire::OVERHEAD_IPV4,
    },
};

/// MAC table bounds: enough for thousands of containers; a flood of made-up MACs evicts.
const FDB_CAPACITY: usize = 8192;
const FDB_MAX_AGE_MS: u64 = 300_000;
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

/// Counters shown by `meshctl status`.
#[derive(Default)]
pub struct Counters {
    pub tx_frames: AtomicU64,
    pub rx_frames: AtomicU64,
    /// System calls, to see how well batching works: frames per TAP read (TSO) and write
    /// (coalescing), datagrams per send (GSO) and per receive (GRO).
    pub tap_reads: AtomicU64,
    pub tap_writes: AtomicU64,
    pub udp_sends: AtomicU64,
    pub udp_receives: AtomicU64,
    pub relayed: AtomicU64,
    pub delivered: AtomicU64,
    /// Drops, one slot per [`DropReason`].
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// Oversize packets answered with ICMP "fragmentation needed" / "packet too big".
    pub too_big: AtomicU64,
    /// Oversize IPv4 packets without DF, split into fragments.
    pub fragmented: AtomicU64,
    /// TCP super-frames read from the TAP (cut into segments here), and super-frames of
    /// coalesced segments written to it.
    pub gso_reads: AtomicU64,
    pub coalesced_writes: AtomicU64,
    /// Writes to the TAP device that failed (the frame is lost).
    pub tap_write_errors: AtomicU64,
    /// Datagram sends that failed (their frames are lost).
    pub send_errors: AtomicU64,
    /// Data-path echoes (`meshctl ping`) answered here, and relayed for others.
    pub echoes_answered: AtomicU64,
    pub echoes_relayed: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut v = vec![
            ("tap_tx_frames", g(&self.tx_frames)),
            ("tap_rx_frames", g(&self.rx_frames)),
            ("tap_reads", g(&self.tap_reads)),
            ("tap_writes", g(&self.tap_writes)),
            ("tap_udp_sends", g(&self.udp_sends)),
            ("tap_udp_receives", g(&self.udp_receives)),
            ("tap_relayed", g(&self.relayed)),
            ("tap_delivered", g(&self.delivered)),
            ("tap_too_big_answered", g(&self.too_big)),
            ("tap_fragmented", g(&self.fragmented)),
            ("tap_gso_reads", g(&self.gso_reads)),
            ("tap_coalesced_writes", g(&self.coalesced_writes)),
            ("tap_write_errors", g(&self.tap_write_errors)),
            ("tap_send_errors", g(&self.send_errors)),
            ("tap_echoes_answered", g(&self.echoes_answered)),
            ("tap_echoes_relayed", g(&self.echoes_relayed)),
        ];
        v.extend(
            DropReason::ALL
                .iter()
                .map(|r| (TAP_DROP_NAMES[*r as usize], g(&self.dropped[*r as usize]))),
        );
        v
    }

    /// Counts a frame dropped for `why`.
    pub fn dropped(&self, why: DropReason) {
        bump(&self.dropped[why as usize]);
    }
}

/// `tap_dropped_<reason>` for every [`DropReason`], in its order.
const TAP_DROP_NAMES: [&str; DropReason::ALL.len()] = [
    "tap_dropped_malformed",
    "tap_dropped_bad_flags",
    "tap_dropped_unknown_sender",
    "tap_dropped_unsealed",
    "tap_dropped_auth",
    "tap_dropped_replay",
    "tap_dropped_loop",
    "tap_dropped_no_route",
    "tap_dropped_too_big",
    "tap_dropped_network",
];

/// Counts one event.
fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Another place a MAC may have been learnt: the kernel datapath's FDB (the frames it delivers
/// never reach meshd). Gives the peer and how long ago (ms) it was confirmed.
pub type MacLookup = Box<dyn Fn(&Mac) -> Option<(ShortId, u64)> + Send + Sync>;

/// State shared by the agent and the data path thread.
/// The answer to a request to open a named network's TAP device (`Shared::open_network`).
pub type NetworkReady = tokio::sync::oneshot::Receiver<Result<(), String>>;
type NetworkRequest = (u16, tokio::sync::oneshot::Sender<Result<(), String>>);

/// The name of a named network's bridge or TAP device: meshd's own with `-VLAN` added.
pub fn network_device(base: &str, vlan: u16) -> Result<String, String> {
    let name = format!("{base}-{vlan}");
    if name.len() >= libc::IFNAMSIZ {
        return Err(format!(
            "{name} is too long for an interface name (at most {} bytes): give meshd a \
             shorter --bridge or --tap",
            libc::IFNAMSIZ - 1
        ));
    }
    Ok(name)
}

pub struct Shared {
    table: RwLock<Arc<Table>>,
    neighbours: Mutex<Neighbours>,
    fdb: Mutex<Fdb>,
    /// Asked when `fdb` misses a local frame's destination (see [`MacLookup`]).
    learnt_elsewhere: std::sync::OnceLock<MacLookup>,
    pub counters: Counters,
    pub mtu: u32,
    pub tap_name: String,
    pub bridge: String,
    started: Instant,
    /// Why the data path stopped, once it has (the TAP device went away, a read failed):
    /// heartbeats stop with it, and the agent ends meshd (see `Datapath::failure`).
    failure: Mutex<Option<String>>,
    /// `meshctl ping`s waiting for replies, and their requests on the way out.
    echoes: ping::Echoes,
    /// Named networks' TAP devices (each on the network's own bridge), by VLAN id.
    networks: RwLock<std::collections::HashMap<u16, Arc<vnet::Tap>>>,
    network_requests: tokio::sync::mpsc::UnboundedSender<NetworkRequest>,
    network_queue: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<NetworkRequest>>>,
}

impl Shared {
    /// Has the data path open network `vlan`'s TAP device on the network's bridge (both made
    /// when missing) and carry its frames; answered once it does.
    pub fn open_network(&self, vlan: u16) -> NetworkReady {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Err(e) = self.network_requests.send((vlan, tx)) {
            let _ = e.0.1.send(Err("the data path is not running".into()));
        }
        rx
    }

    fn network_tap(&self, vlan: u16) -> Option<Arc<vnet::Tap>> {
        self.networks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&vlan)
            .cloned()
    }

    // Locks are taken through `PoisonError::into_inner`: a panic on the data path thread (a
    // bug) poisons them, and the agent must still be able to read them, see the failure
    // (`failure`) and end meshd with the reason, instead of panicking on the lock.

    /// Records that the data path cannot go on; the first reason is kept.
    fn fail(&self, why: String) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            tracing::error!(error = why, "the data path stopped");
            *f = Some(why);
        }
    }

    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The data path's clock: milliseconds since it started.
    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// [`Self::now_ms`] at `t`, for a caller that read the time already.
    fn ms_at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.started).as_millis() as u64
    }

    fn neighbours(&self) -> std::sync::MutexGuard<'_, Neighbours> {
        self.neighbours
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs a new forwarding table (after a topology change).
    pub fn set_table(&self, table: Table) {
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
    }

    /// Our own short id (first set, or moved by gossip).
    pub fn set_me(&self, me: ShortId) {
        self.neighbours().set_me(me);
    }

    /// Adds an established link with its keys (see [`Neighbours::add_link`]).
    pub fn add_link(&self, link: LinkId, spec: LinkSpec) -> bool {
        let now = self.now_ms();
        self.neighbours().add_link(link, spec, now)
    }

    /// Removes a closed link and its keys.
    pub fn remove_link(&self, link: LinkId) {
        self.neighbours().remove_link(link);
    }

    /// `link`'s peer goes by another short id now.
    pub fn set_peer(&self, link: LinkId, peer: ShortId) {
        self.neighbours().set_peer(link, peer);
    }

    /// Whether data frames are encrypted.
    pub fn encrypted(&self) -> bool {
        self.neighbours().encrypted()
    }

    /// The link carrying frames to each neighbour (MTUs capped at the overlay's).
    pub fn links(&self) -> Vec<LinkInfo> {
        self.neighbours()
            .links()
            .into_iter()
            .map(|l| LinkInfo {
                mtu: l.mtu.min(self.mtu as usize),
                ..l
            })
            .collect()
    }

    /// The forwarding table last published.
    pub fn table(&self) -> Arc<Table> {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `lookup` the place to ask about a destination meshd has not learnt itself.
    pub fn set_mac_lookup(&self, lookup: MacLookup) {
        let _ = self.learnt_elsewhere.set(lookup);
    }

    /// The peer behind a local frame's destination MAC from the other lookup, put in meshd's
    /// table when meshd's own misses (so a frame the kernel hands over for a relayed or sealed
    /// route is sent to its peer, not flooded).
    fn learn_elsewhere(&self, fdb: &mut Fdb, frame: &[u8], now_ms: u64) {
        let Some(lookup) = self.learnt_elsewhere.get() else {
            return;
        };
        let Some(dst) = frame.get(0..6).and_then(|d| <&Mac>::try_from(d).ok()) else {
            return;
        };
        if crate::switch::is_multicast(dst) || fdb.lookup(dst, now_ms).is_some() {
            return;
        }
        if let Some((peer, age_ms)) = lookup(dst) {
            fdb.learn(*dst, peer, now_ms.saturating_sub(age_ms));
        }
    }

    /// The MAC table: (mac, peer, age in ms).
    pub fn fdb_entries(&self) -> Vec<([u8; 6], ShortId, u64)> {
        let now = self.now_ms();
        let fdb = self.fdb.lock().unwrap_or_else(PoisonError::into_inner);
        fdb.entries()
            .map(|(m, (p, t))| (*m, *p, now.saturating_sub(*t)))
            .collect()
    }
}

/// The TAP datapath behind the agent's [`Datapath`] interface: every frame through meshd.
pub struct TapDatapath {
    pub shared: Arc<Shared>,
}

impl Datapath for TapDatapath {
    fn set_table(&mut self, table: Table) {
        self.shared.set_table(table);
    }

    fn set_me(&mut self, me: ShortId) {
        self.shared.set_me(me);
    }

    fn add_link(&mut self, link: LinkId, spec: LinkSpec) -> bool {
        self.shared.add_link(link, spec)
    }

    fn set_peer(&mut self, link: LinkId, peer: ShortId) {
        self.shared.set_peer(link, peer);
    }

    fn remove_link(&mut self, link: LinkId) {
        self.shared.remove_link(link);
    }

    fn sync(&mut self, _changed: bool) -> Result<()> {
        Ok(())
    }

    fn link(&self, link: LinkId) -> Option<LinkReport> {
        let nb = self.shared.neighbours();
        let n = nb.get(link)?;
        Some(LinkReport {
            forwarder: "tap",
            encrypted: n.sealed(),
            cipher: n.crypto.as_ref().map(|c| c.cipher()),
            up: nb.data_path_up(link)?,
            mtu: nb.link_mtu_of(link)?.min(self.shared.mtu as usize) as u32,
            meshd: n.traffic,
            kernel: Default::default(),
            rtt_us: n.rtt.rtt_us(),
        })
    }

    fn counters(&self) -> Result<DatapathCounters> {
        Ok(DatapathCounters {
            tap: self.shared.counters.snapshot(),
            kernel: Vec::new(),
        })
    }

    fn fdb(&self) -> Vec<(Mac, ShortId, u64)> {
        self.shared.fdb_entries()
    }

    fn info(&self) -> DatapathInfo {
        DatapathInfo {
            bridge: self.shared.bridge.clone(),
            overlay_mtu: self.shared.mtu,
            encrypted: self.shared.encrypted(),
        }
    }

    fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    fn ping(&self) -> ping::PingSession {
        ping::PingSession::start(self.shared.clone())
    }

    fn open_network(&self, vlan: u16) -> NetworkReady {
        self.shared.open_network(vlan)
    }

    fn stop(self: Box<Self>) -> Result<()> {
        // The data path thread and the TAP device end with the process.
        Ok(())
    }
}

/// Settings for [`start`].
pub struct Config {
    pub bridge: String,
    pub tap: String,
    pub data_port: u16,
    pub underlay_mtu: u32,
    /// Seal every data frame (the mesh has a password or certificates).
    pub encrypted: bool,
    /// Busy-polling window after traffic (see [`busy_poll`]); zero turns it off.
    pub busy_poll: std::time::Duration,
}

/// The TAP device's own MTU: large, so the bridge hands meshd oversize frames to answer rather
/// than dropping them without a word (the kernel caps a TAP at 64 KiB less its Ethernet header).
/// The overlay MTU is enforced by meshd.
const TAP_MTU: u32 = 65535 - 14;

/// The smallest overlay MTU meshd runs with (IPv6 needs 1280).
pub const MIN_OVERLAY_MTU: u32 = 1280;

/// The overlay MTU an underlay MTU leaves room for: the outer IPv4 and UDP headers, mesh's
/// header, the seal when encrypting, and the inner Ethernet header are all taken off.
pub fn overlay_mtu(underlay_mtu: u32, encrypted: bool) -> Option<u32> {
    let overhead = OVERHEAD_IPV4 + if encrypted { SEAL_OVERHEAD } else { 0 };
    underlay_mtu
        .checked_sub(overhead as u32)
        .filter(|m| *m >= MIN_OVERLAY_MTU)
}

/// Creates the TAP device, puts it on the bridge, binds the data port, and starts the data path
/// thread. Returns once everything is set up (or failed).
pub fn start(cfg: Config) -> Result<Arc<Shared>> {
    let mtu = overlay_mtu(cfg.underlay_mtu, cfg.encrypted).with_context(|| {
        format!(
            "underlay MTU {} is too small to carry an overlay of at least {MIN_OVERLAY_MTU}",
            cfg.underlay_mtu
        )
    })?;
    let (network_requests, network_queue) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        table: RwLock::new(Arc::new(Table::default())),
        neighbours: Mutex::new(Neighbours::new(
            cfg.encrypted,
            mtu as usize,
            MIN_OVERLAY_MTU as usize,
        )),
        fdb: Mutex::new(Fdb::new(FDB_CAPACITY, FDB_MAX_AGE_MS)),
        learnt_elsewhere: std::sync::OnceLock::new(),
        counters: Counters::default(),
        mtu,
        tap_name: cfg.tap.clone(),
        bridge: cfg.bridge.clone(),
        started: Instant::now(),
        failure: Mutex::new(None),
        echoes: ping::Echoes::default(),
        networks: RwLock::new(Default::default()),
        network_requests,
        network_queue: Mutex::new(Some(network_queue)),
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let thread_shared = shared.clone();
    // Two threads: the data path's (frames, no runtime: see `pump`), and a small runtime's for
    // setting up and for the chores (see `upkeep`).
    std::thread::Builder::new()
        .name("mesh-tap".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let setup = async {
                    let tap = Arc::new(vnet::Tap::open(&cfg.tap)?);
                    device::attach(&cfg.bridge, &cfg.tap, TAP_MTU).await?;
                    let sock = Arc::new(udp::DataSocket::bind(cfg.data_port)?);
                    if !sock.gro {
                        tracing::info!("UDP receive coalescing (GRO) unavailable on this kernel");
                    }
                    let poller = Arc::new(
                        poller::Poller::new().context("creating the data path's epoll set")?,
                    );
                    poller
                        .add(sock.as_raw_fd(), pump::SOCKET)
                        .context("waiting for the data socket")?;
                    poller
                        .add(tap.as_raw_fd(), pump::DEFAULT_TAP)
                        .context("waiting for the TAP device")?;
                    std::thread::Builder::new()
                        .name("mesh-data".into())
                        .spawn({
                            let (shared, tap, sock, poller) = (
                                thread_shared.clone(),
                                tap.clone(),
                                sock.clone(),
                                poller.clone(),
                            );
                            move || pump::run(shared, tap, sock, poller, cfg.busy_poll)
                        })
                        .context("starting the data path thread")?;
                    Ok::<_, anyhow::Error>((tap, sock, poller))
                };
                match setup.await {
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                    Ok((tap, sock, poller)) => {
                        let _ = ready_tx.send(Ok(()));
                        upkeep::run(thread_shared, tap, sock, poller).await;
                    }
                }
            });
        })
        .context("starting the data path's runtime thread")?;
    ready_rx
        .recv()
        .context("the data path thread died during setup")??;
    Ok(shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_counters_are_named_after_their_reason() {
        for r in DropReason::ALL {
            assert_eq!(
                TAP_DROP_NAMES[r as usize].strip_prefix("tap_dropped_"),
                Some(r.name())
            );
        }
        let c = Counters::default();
        c.dropped(DropReason::Replay);
        let snap = c.snapshot();
        assert!(snap.contains(&("tap_dropped_replay", 1)));
        assert!(snap.contains(&("tap_dropped_auth", 0)));
    }
}
