//! The TAP datapath: meshd moves Ethernet frames between its TAP device (on the local bridge)
//! and UDP to its peers, using the switch logic in [`crate::switch`]. It runs on its own thread
//! with its own runtime, so a busy data path never delays the control plane's keep-alives.
//!
//! The agent publishes a forwarding [`Table`] and the neighbours' addresses whenever the
//! topology changes; the data path learns MACs, forwards, relays, and sends heartbeats to every
//! neighbour. A neighbour's heartbeat tells us the address its data actually comes from — behind
//! NAT that is the translated one, and it is the one replies must go to.

mod device;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
pub use device::underlay_mtu;
use tokio::net::UdpSocket;

use crate::switch::{
    ShortId,
    fdb::Fdb,
    forward::{self, Table},
    wire::{HEADER_LEN, Header, OVERHEAD_IPV4},
};

/// MAC table bounds: enough for thousands of containers; a flood of made-up MACs evicts.
const FDB_CAPACITY: usize = 8192;
const FDB_MAX_AGE_MS: u64 = 300_000;
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// A neighbour whose heartbeats stopped this long ago has no working data path.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters shown by `meshctl status`.
#[derive(Default)]
pub struct Counters {
    pub tx_frames: AtomicU64,
    pub rx_frames: AtomicU64,
    pub relayed: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped_malformed: AtomicU64,
    pub dropped_unknown_sender: AtomicU64,
    pub dropped_no_route: AtomicU64,
    pub dropped_loop: AtomicU64,
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
            ("tap_dropped_no_route", g(&self.dropped_no_route)),
            ("tap_dropped_loop", g(&self.dropped_loop)),
        ]
    }
}

/// A direct neighbour on the data path.
#[derive(Clone, Debug)]
pub struct Neighbour {
    /// Where to send: its control connection's IP and the data port, until a heartbeat shows
    /// where its data really comes from.
    pub addr: SocketAddr,
    pub last_heartbeat: Option<Instant>,
    pub observed: bool,
}

/// State shared by the agent and the data path thread.
pub struct Shared {
    table: RwLock<Arc<Table>>,
    neighbours: RwLock<HashMap<ShortId, Neighbour>>,
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

    /// Installs a new forwarding table (after a topology change).
    pub fn set_table(&self, table: Table) {
        *self.table.write().expect("table lock") = Arc::new(table);
    }

    /// Sets the direct neighbours and their control-connection addresses; keeps the data
    /// addresses heartbeats already revealed.
    pub fn set_neighbours(&self, addrs: HashMap<ShortId, SocketAddr>) {
        let mut n = self.neighbours.write().expect("neighbours lock");
        n.retain(|id, _| addrs.contains_key(id));
        for (id, addr) in addrs {
            n.entry(id).or_insert(Neighbour {
                addr,
                last_heartbeat: None,
                observed: false,
            });
        }
    }

    /// Whether a heartbeat from `peer` arrived recently.
    pub fn data_path_up(&self, peer: ShortId) -> Option<bool> {
        let n = self.neighbours.read().expect("neighbours lock");
        n.get(&peer).map(|n| {
            n.last_heartbeat
                .is_some_and(|t| t.elapsed() < HEARTBEAT_TIMEOUT)
        })
    }

    /// The MAC table: (mac, peer, age in ms).
    pub fn fdb_entries(&self) -> Vec<([u8; 6], ShortId, u64)> {
        let now = self.now_ms();
        let fdb = self.fdb.lock().expect("fdb lock");
        fdb.entries()
            .map(|(m, (p, t))| (*m, *p, now.saturating_sub(*t)))
            .collect()
    }

    fn addr_of(&self, peer: ShortId) -> Option<SocketAddr> {
        self.neighbours
            .read()
            .expect("neighbours lock")
            .get(&peer)
            .map(|n| n.addr)
    }

    fn known_sender(&self, ip: IpAddr) -> bool {
        self.neighbours
            .read()
            .expect("neighbours lock")
            .values()
            .any(|n| n.addr.ip() == ip)
    }

    fn heartbeat(&self, peer: ShortId, from: SocketAddr) -> bool {
        let mut n = self.neighbours.write().expect("neighbours lock");
        match n.get_mut(&peer) {
            Some(nb) if nb.addr.ip() == from.ip() || !nb.observed => {
                nb.addr = from;
                nb.observed = true;
                nb.last_heartbeat = Some(Instant::now());
                true
            }
            // A heartbeat claiming to be a neighbour from somewhere else: ignored.
            _ => false,
        }
    }
}

/// Settings for [`start`].
pub struct Config {
    pub bridge: String,
    pub tap: String,
    pub data_port: u16,
    pub underlay_mtu: u32,
}

/// Creates the TAP device, puts it on the bridge, binds the data port, and starts the data path
/// thread. Returns once everything is set up (or failed).
pub fn start(cfg: Config) -> Result<Arc<Shared>> {
    let mtu = cfg
        .underlay_mtu
        .checked_sub(OVERHEAD_IPV4 as u32)
        .context("underlay MTU too small for the overlay")?;
    let shared = Arc::new(Shared {
        table: RwLock::new(Arc::new(Table::default())),
        neighbours: RwLock::new(HashMap::new()),
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
                        .mtu(mtu as i32)
                        .up()
                        .build()
                        .with_context(|| format!("creating TAP device {}", cfg.tap))?
                        .pop()
                        .context("no TAP queue")?;
                    device::attach(&cfg.bridge, &cfg.tap, mtu).await?;
                    let sock = UdpSocket::bind(("0.0.0.0", cfg.data_port))
                        .await
                        .with_context(|| format!("binding the data port {}", cfg.data_port))?;
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

async fn run(shared: Arc<Shared>, tun: Arc<tokio_tun::Tun>, sock: Arc<UdpSocket>) {
    let a = tokio::spawn(tap_to_net(shared.clone(), tun.clone(), sock.clone()));
    let b = tokio::spawn(net_to_tap(shared.clone(), tun, sock.clone()));
    let c = tokio::spawn(heartbeats(shared, sock));
    let _ = tokio::join!(a, b, c);
}

/// Frames from the local bridge to peers.
async fn tap_to_net(shared: Arc<Shared>, tun: Arc<tokio_tun::Tun>, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; HEADER_LEN + 65536];
    let mut sends: Vec<(ShortId, Header)> = Vec::with_capacity(16);
    loop {
        let n = match tun.recv(&mut buf[HEADER_LEN..]).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "reading the TAP device failed; data path stopped");
                return;
            }
        };
        let table = shared.table.read().expect("table lock").clone();
        {
            let fdb = shared.fdb.lock().expect("fdb lock");
            let frame = &buf[HEADER_LEN..HEADER_LEN + n];
            forward::from_local(&table, &fdb, frame, shared.now_ms(), |to, h| {
                sends.push((to, h))
            });
        }
        for (to, h) in sends.drain(..) {
            send(&shared, &sock, &mut buf[..HEADER_LEN + n], to, h).await;
        }
    }
}

async fn send(shared: &Shared, sock: &UdpSocket, datagram: &mut [u8], to: ShortId, h: Header) {
    let Some(addr) = shared.addr_of(to) else {
        shared
            .counters
            .dropped_no_route
            .fetch_add(1, Ordering::Relaxed);
        return;
    };
    let header: &mut [u8; HEADER_LEN] = (&mut datagram[..HEADER_LEN])
        .try_into()
        .expect("slice of HEADER_LEN");
    h.write(header);
    match sock.send_to(datagram, addr).await {
        Ok(_) => {
            shared.counters.tx_frames.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::debug!(error = %e, %addr, "sending a frame failed"),
    }
}

/// Frames from peers: deliver, relay, or both.
async fn net_to_tap(shared: Arc<Shared>, tun: Arc<tokio_tun::Tun>, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65536];
    let mut sends: Vec<(ShortId, Header)> = Vec::with_capacity(16);
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "receiving on the data port");
                continue;
            }
        };
        if !shared.known_sender(from.ip()) {
            shared
                .counters
                .dropped_unknown_sender
                .fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (header, inner_len) = match Header::parse(&buf[..n]) {
            Ok((h, inner)) => (h, inner.len()),
            Err(_) => {
                shared
                    .counters
                    .dropped_malformed
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if header.heartbeat {
            shared.heartbeat(header.origin, from);
            continue;
        }
        shared.counters.rx_frames.fetch_add(1, Ordering::Relaxed);
        let table = shared.table.read().expect("table lock").clone();
        let decision = {
            let mut fdb = shared.fdb.lock().expect("fdb lock");
            let inner = &buf[HEADER_LEN..HEADER_LEN + inner_len];
            forward::from_peer(&table, &mut fdb, header, inner, shared.now_ms(), |to, h| {
                sends.push((to, h))
            })
        };
        match decision {
            Ok(deliver) => {
                if deliver {
                    if let Err(e) = tun.send(&buf[HEADER_LEN..n]).await {
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
            send(&shared, &sock, &mut buf[..n], to, h).await;
        }
    }
}

/// Heartbeats to every neighbour: they tell it our data address (through any NAT) and that our
/// data path works.
async fn heartbeats(shared: Arc<Shared>, sock: Arc<UdpSocket>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tick.tick().await;
        let Some(me) = shared.table.read().expect("table lock").me else {
            continue;
        };
        let targets: Vec<(ShortId, SocketAddr)> = shared
            .neighbours
            .read()
            .expect("neighbours lock")
            .iter()
            .map(|(id, n)| (*id, n.addr))
            .collect();
        for (id, addr) in targets {
            let mut hb = [0u8; HEADER_LEN];
            Header {
                origin: me,
                destination: id,
                hops: 1,
                heartbeat: true,
            }
            .write(&mut hb);
            let _ = sock.send_to(&hb, addr).await;
        }
    }
}
