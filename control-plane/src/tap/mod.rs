//! The TAP datapath: meshd moves Ethernet frames between its TAP device (on the local bridge)
//! and UDP to its peers, using the switch logic in [`crate::switch`]. It runs on its own thread
//! with its own runtime, so a busy data path never delays the control plane's keep-alives.
//!
//! The agent publishes a forwarding [`Table`] and the neighbours' addresses whenever the
//! topology changes; the data path learns MACs, forwards, relays, and sends heartbeats to every
//! neighbour. A neighbour's heartbeat tells us the address its data actually comes from — behind
//! NAT that is the translated one, and it is the one replies must go to.

mod device;
pub mod neighbours;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
pub use device::underlay_mtu;
use neighbours::{Drop, Neighbours};
pub use neighbours::{HEARTBEAT_TIMEOUT, Spec, Traffic};
use tokio::net::UdpSocket;

use crate::switch::{
    ShortId,
    fdb::Fdb,
    forward::{self, Table},
    mtu,
    seal::SEAL_OVERHEAD,
    wire::{Header, OVERHEAD_IPV4},
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
    pub relayed: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped_malformed: AtomicU64,
    pub dropped_unknown_sender: AtomicU64,
    pub dropped_unsealed: AtomicU64,
    pub dropped_auth: AtomicU64,
    pub dropped_replay: AtomicU64,
    pub dropped_no_route: AtomicU64,
    pub dropped_loop: AtomicU64,
    /// Oversize packets answered with ICMP "fragmentation needed" / "packet too big".
    pub too_big: AtomicU64,
    /// Oversize IPv4 packets without DF, split into fragments.
    pub fragmented: AtomicU64,
    /// Oversize frames that could be neither (not IP, ICMP errors, ...).
    pub dropped_too_big: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("tap_tx_frames", g(&self.tx_frames)),
            ("tap_rx_frames", g(&self.rx_frames)),
            ("tap_relayed", g(&self.relayed)),
            ("tap_delivered", g(&self.delivered)),
            ("tap_dropped_malformed", g(&self.dropped_malformed)),
            (
                "tap_dropped_unknown_sender",
                g(&self.dropped_unknown_sender),
            ),
            ("tap_dropped_unsealed", g(&self.dropped_unsealed)),
            ("tap_dropped_auth", g(&self.dropped_auth)),
            ("tap_dropped_replay", g(&self.dropped_replay)),
            ("tap_dropped_no_route", g(&self.dropped_no_route)),
            ("tap_dropped_loop", g(&self.dropped_loop)),
            ("tap_too_big_answered", g(&self.too_big)),
            ("tap_fragmented", g(&self.fragmented)),
            ("tap_dropped_too_big", g(&self.dropped_too_big)),
        ]
    }

    fn dropped(&self, why: &Drop) {
        let c = match why {
            Drop::UnknownSender => &self.dropped_unknown_sender,
            Drop::Malformed => &self.dropped_malformed,
            Drop::Unsealed => &self.dropped_unsealed,
            Drop::Auth => &self.dropped_auth,
            Drop::Replay => &self.dropped_replay,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// State shared by the agent and the data path thread.
pub struct Shared {
    table: RwLock<Arc<Table>>,
    neighbours: Mutex<Neighbours>,
    fdb: Mutex<Fdb>,
    pub counters: Counters,
    pub mtu: u32,
    pub tap_name: String,
    pub bridge: String,
    started: Instant,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn neighbours(&self) -> std::sync::MutexGuard<'_, Neighbours> {
        self.neighbours.lock().expect("neighbours lock")
    }

    /// Installs a new forwarding table (after a topology change).
    pub fn set_table(&self, table: Table) {
        *self.table.write().expect("table lock") = Arc::new(table);
    }

    /// Sets the direct neighbours (see [`Neighbours::set`]).
    pub fn set_neighbours(&self, specs: HashMap<ShortId, Spec>, me: ShortId) {
        let now = self.now_ms();
        self.neighbours().set(specs, me, now);
    }

    /// Whether data frames are encrypted.
    pub fn encrypted(&self) -> bool {
        self.neighbours().encrypted()
    }

    /// Whether a heartbeat from `peer` arrived recently (`None`: not a neighbour).
    pub fn data_path_up(&self, peer: ShortId) -> Option<bool> {
        self.neighbours().data_path_up(peer)
    }

    /// The overlay MTU on the link to `peer` (`None`: not a neighbour).
    pub fn link_mtu(&self, peer: ShortId) -> Option<u32> {
        self.neighbours().link_mtu(peer).map(|m| m as u32)
    }

    /// Traffic on the link to `peer` (`None`: not a neighbour).
    pub fn traffic(&self, peer: ShortId) -> Option<Traffic> {
        self.neighbours().get(peer).map(|n| n.traffic)
    }

    /// The MAC table: (mac, peer, age in ms).
    pub fn fdb_entries(&self) -> Vec<([u8; 6], ShortId, u64)> {
        let now = self.now_ms();
        let fdb = self.fdb.lock().expect("fdb lock");
        fdb.entries()
            .map(|(m, (p, t))| (*m, *p, now.saturating_sub(*t)))
            .collect()
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
    let shared = Arc::new(Shared {
        table: RwLock::new(Arc::new(Table::default())),
        neighbours: Mutex::new(Neighbours::new(
            cfg.encrypted,
            mtu as usize,
            MIN_OVERLAY_MTU as usize,
        )),
        fdb: Mutex::new(Fdb::new(FDB_CAPACITY, FDB_MAX_AGE_MS)),
        counters: Counters::default(),
        mtu,
        tap_name: cfg.tap.clone(),
        bridge: cfg.bridge.clone(),
        started: Instant::now(),
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let thread_shared = shared.clone();
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
                    let tun = tokio_tun::Tun::builder()
                        .name(&cfg.tap)
                        .tap()
                        .mtu(TAP_MTU as i32)
                        .up()
                        .build()
                        .with_context(|| format!("creating TAP device {}", cfg.tap))?
                        .pop()
                        .context("no TAP queue")?;
                    device::attach(&cfg.bridge, &cfg.tap, TAP_MTU).await?;
                    let sock = UdpSocket::bind(("0.0.0.0", cfg.data_port))
                        .await
                        .with_context(|| format!("binding the data port {}", cfg.data_port))?;
                    always_dont_fragment(&sock)?;
                    Ok::<_, anyhow::Error>((Arc::new(tun), Arc::new(sock)))
                };
                match setup.await {
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                    Ok((tun, sock)) => {
                        let _ = ready_tx.send(Ok(()));
                        run(thread_shared, tun, sock).await;
                    }
                }
            });
        })
        .context("starting the data path thread")?;
    ready_rx
        .recv()
        .context("the data path thread died during setup")??;
    Ok(shared)
}

/// Sets DF on every datagram and keeps the kernel from fragmenting or refusing them by its
/// own path-MTU cache: meshd probes each path itself, and a fragmented probe would lie.
fn always_dont_fragment(sock: &UdpSocket) -> Result<()> {
    use std::os::fd::AsRawFd;
    let value: libc::c_int = libc::IP_PMTUDISC_PROBE;
    // SAFETY: setsockopt on a valid socket with a pointer to a c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context("setting IP_MTU_DISCOVER on the data socket");
    }
    Ok(())
}

async fn run(shared: Arc<Shared>, tun: Arc<tokio_tun::Tun>, sock: Arc<UdpSocket>) {
    let a = tokio::spawn(tap_to_net(shared.clone(), tun.clone(), sock.clone()));
    let b = tokio::spawn(net_to_tap(shared.clone(), tun, sock.clone()));
    let c = tokio::spawn(heartbeats(shared, sock));
    let _ = tokio::join!(a, b, c);
}

/// Frames from the local bridge to peers. The TAP device's MTU is far above the overlay's, so
/// an oversize frame reaches us and gets an answer (ICMP) or is split, instead of being dropped
/// silently by the bridge.
async fn tap_to_net(shared: Arc<Shared>, tun: Arc<tokio_tun::Tun>, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(65536);
    let mut oversize = Vec::with_capacity(65536 + 4096);
    let mut sends: Vec<(ShortId, Header)> = Vec::with_capacity(16);
    loop {
        let n = match tun.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "reading the TAP device failed; data path stopped");
                return;
            }
        };
        let frame = &buf[..n];
        if mtu::packet_len(frame) <= shared.mtu as usize {
            from_local(&shared, (&tun, &sock), frame, &mut out, &mut sends).await;
            continue;
        }
        match mtu::handle(frame, shared.mtu as usize, &mut oversize) {
            mtu::Oversize::Reply => {
                shared.counters.too_big.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = tun.send(&oversize).await {
                    tracing::debug!(error = %e, "writing an ICMP error to the TAP device");
                }
            }
            mtu::Oversize::Fragments(parts) => {
                shared.counters.fragmented.fetch_add(1, Ordering::Relaxed);
                for r in parts {
                    from_local(&shared, (&tun, &sock), &oversize[r], &mut out, &mut sends).await;
                }
            }
            mtu::Oversize::Drop => {
                shared
                    .counters
                    .dropped_too_big
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Forwards one frame (within the overlay MTU) from the local bridge. A frame too big for
/// the probed path to its next hop is answered like any oversize frame (ICMP, or split).
async fn from_local(
    shared: &Shared,
    io: (&tokio_tun::Tun, &UdpSocket),
    frame: &[u8],
    out: &mut Vec<u8>,
    sends: &mut Vec<(ShortId, Header)>,
) {
    let (tun, sock) = io;
    let table = shared.table.read().expect("table lock").clone();
    {
        let fdb = shared.fdb.lock().expect("fdb lock");
        forward::from_local(&table, &fdb, frame, shared.now_ms(), |to, h| {
            sends.push((to, h))
        });
    }
    let mut answered = false;
    for (to, h) in sends.drain(..) {
        let link_mtu = shared.neighbours().link_mtu(to).unwrap_or(usize::MAX);
        if mtu::packet_len(frame) <= link_mtu {
            send(shared, sock, frame, out, to, h).await;
            continue;
        }
        let mut oversize = Vec::new();
        match mtu::handle(frame, link_mtu, &mut oversize) {
            mtu::Oversize::Reply => {
                // A flood may meet several narrow links: one answer is enough.
                if !answered {
                    answered = true;
                    shared.counters.too_big.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = tun.send(&oversize).await {
                        tracing::debug!(error = %e, "writing an ICMP error to the TAP device");
                    }
                }
            }
            mtu::Oversize::Fragments(parts) => {
                shared.counters.fragmented.fetch_add(1, Ordering::Relaxed);
                for r in parts {
                    send(shared, sock, &oversize[r], out, to, h).await;
                }
            }
            mtu::Oversize::Drop => {
                shared
                    .counters
                    .dropped_too_big
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sends `inner` under `h` to the neighbour `to`, sealed when the mesh encrypts.
async fn send(
    shared: &Shared,
    sock: &UdpSocket,
    inner: &[u8],
    out: &mut Vec<u8>,
    to: ShortId,
    h: Header,
) {
    let now = shared.now_ms();
    let Some(addr) = shared.neighbours().prepare(to, &h, inner, out, now) else {
        shared
            .counters
            .dropped_no_route
            .fetch_add(1, Ordering::Relaxed);
        return;
    };
    match sock.send_to(out, addr).await {
        Ok(_) => {
            if !h.heartbeat {
                shared.counters.tx_frames.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(e) => tracing::debug!(error = %e, %addr, "sending a frame failed"),
    }
}

/// Frames from peers: deliver, relay, or both.
async fn net_to_tap(shared: Arc<Shared>, tun: Arc<tokio_tun::Tun>, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(65536);
    let mut sends: Vec<(ShortId, Header)> = Vec::with_capacity(16);
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "receiving on the data port");
                continue;
            }
        };
        let accepted = shared.neighbours().accept(&mut buf[..n], from);
        let (header, inner) = match accepted {
            Ok(r) => r,
            Err(why) => {
                shared.counters.dropped(&why);
                continue;
            }
        };
        if header.heartbeat {
            continue;
        }
        shared.counters.rx_frames.fetch_add(1, Ordering::Relaxed);
        let inner = &buf[inner];
        let table = shared.table.read().expect("table lock").clone();
        let decision = {
            let mut fdb = shared.fdb.lock().expect("fdb lock");
            forward::from_peer(&table, &mut fdb, header, inner, shared.now_ms(), |to, h| {
                sends.push((to, h))
            })
        };
        match decision {
            Ok(deliver) => {
                if deliver {
                    if let Err(e) = tun.send(inner).await {
                        tracing::debug!(error = %e, "writing to the TAP device");
                    } else {
                        shared.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if !sends.is_empty() && !deliver {
                    shared.counters.relayed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(forward::Dropped::OwnOrigin | forward::Dropped::HopLimit) => {
                shared.counters.dropped_loop.fetch_add(1, Ordering::Relaxed);
            }
            Err(forward::Dropped::NoRoute) => {
                shared
                    .counters
                    .dropped_no_route
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(forward::Dropped::Malformed) => {
                shared
                    .counters
                    .dropped_malformed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        for (to, h) in sends.drain(..) {
            // A relay cannot answer the origin's sender with ICMP: the origin's own path-MTU
            // check normally keeps such frames from being sent at all.
            if mtu::packet_len(inner) > shared.neighbours().link_mtu(to).unwrap_or(usize::MAX) {
                shared
                    .counters
                    .dropped_too_big
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            send(&shared, &sock, inner, &mut out, to, h).await;
        }
    }
}

/// Heartbeats to every neighbour: they tell it our data address (through any NAT), that our
/// data path works, and the largest datagram it got through to us lately; some are padded into
/// path-MTU probes.
async fn heartbeats(shared: Arc<Shared>, sock: Arc<UdpSocket>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    let mut out = Vec::with_capacity(65536);
    let mut inner = Vec::with_capacity(65536);
    loop {
        tick.tick().await;
        let Some(me) = shared.table.read().expect("table lock").me else {
            continue;
        };
        let ids: Vec<ShortId> = shared.neighbours().ids().collect();
        for id in ids {
            let now = Instant::now();
            if !shared.neighbours().heartbeat_payload(id, &mut inner, now) {
                continue;
            }
            let h = Header {
                origin: me,
                destination: id,
                hops: 1,
                heartbeat: true,
            };
            send(&shared, &sock, &inner, &mut out, id, h).await;
        }
    }
}
