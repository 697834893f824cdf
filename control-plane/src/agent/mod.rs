//! meshd's control plane at run time: the QUIC endpoint, the control connections, dialling
//! and redialling, and the [`Gossip`] state machine they feed. One task owns all of it; every
//! connection runs in its own task and talks to the agent through [`Event`]s.

mod conn;
mod docker;
mod ipam;
mod networks;
mod ping;
mod targets;
mod throttle;
mod view;
mod wire;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
pub use conn::validate_target;
use conn::{Local, close};
use mesh_gossip::{Config as GossipConfig, Gossip, PeerId};
use mesh_proto::v1::{GossipMessage, request, response};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
pub use targets::parse_peer_list;
use targets::{State, Store, Target};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::{
    auth::AuthMode,
    datapath::{Datapath, UnderlayRx},
    switch::LinkId,
};

/// Which datapath this node runs, and why (shown by `meshctl status`).
#[derive(Clone, Debug)]
pub struct DatapathMode {
    /// "ebpf" or "tap".
    pub name: &'static str,
    /// Why `auto` fell back to the TAP datapath (empty when it did not).
    pub fallback_reason: String,
    pub underlay: String,
}

/// Everything the agent needs to start.
pub struct Config {
    pub id: PeerId,
    pub name: String,
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub auth: AuthMode,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub initial_targets: Vec<String>,
    pub max_connections: usize,
    /// The opt-in observe-only XDP counter on the underlay.
    pub observe: Option<UnderlayRx>,
    pub mode: DatapathMode,
    /// Peers at addresses inside these that trust us back get plaintext links.
    pub trusted_subnets: Vec<ipnet::IpNet>,
    /// The datapath (TAP, or kernel with TAP for the rest), when this node forwards frames.
    pub datapath: Option<Box<dyn Datapath>>,
    pub data_port: u16,
    /// Offer AES-256-GCM for sealed links (peers that offer it too get it; see `--cipher`).
    pub offers_aes: bool,
    /// systemd's notification socket, when meshd runs as a `Type=notify` service.
    pub notifier: Option<crate::notify::Notifier>,
    /// Namespaces and host addresses on the mesh bridge (with a datapath only).
    pub attachments: Option<Arc<crate::attach::Attachments>>,
    /// A member of an address ring unreachable this long is declared gone (its addresses go
    /// to its heir); none: only `meshctl ipam reclaim` does that.
    pub ipam_reclaim_after: Option<Duration>,
}

/// One line for systemd's STATUS: peers connected and the datapath in use.
fn status_line(peers: usize, datapath: &str) -> String {
    let s = if peers == 1 { "" } else { "s" };
    format!("{peers} peer{s} connected; datapath {datapath}")
}

/// What connection tasks and the API report to the agent.
pub enum Event {
    Established {
        conn: quinn::Connection,
        est: conn::Established,
        dialed: Option<String>,
    },
    HandshakeFailed {
        target: Option<String>,
        remote: SocketAddr,
        error: String,
        auth: bool,
    },
    Gossip {
        peer: PeerId,
        conn_id: u64,
        msg: GossipMessage,
    },
    Closed {
        peer: PeerId,
        conn_id: u64,
        reason: String,
    },
    Api {
        request: request::Kind,
        reply: oneshot::Sender<response::Kind>,
    },
    /// The named networks something here is attached to (after an attach or detach).
    NetworksInUse(Vec<u64>),
    /// The addresses attachments here use, by named network id: what the allocator handed
    /// out and nothing uses goes back.
    AddressesInUse(Vec<(u64, Vec<std::net::Ipv4Addr>)>),
    /// The attach an allocated address was for is over.
    AllocationSettled {
        network: u64,
        offset: u32,
        attached: bool,
    },
    /// Named networks (VLAN ids) with something attached here after a restart: their TAP
    /// devices are opened again.
    OpenNetworks(Vec<u16>),
    /// A named network's TAP device and bridge, wanted before something joins it (`ready`
    /// says when frames flow, or why not).
    OpenNetwork {
        vlan: u16,
        ready: oneshot::Sender<std::result::Result<(), String>>,
    },
    /// A request from Docker (`meshd --docker-plugin`).
    Docker {
        call: crate::docker_plugin::protocol::Call,
        reply: oneshot::Sender<std::result::Result<serde_json::Value, String>>,
    },
}

/// An established control connection.
struct Link {
    conn: quinn::Connection,
    conn_id: u64,
    tx: mpsc::UnboundedSender<GossipMessage>,
    name: String,
    since: SystemTime,
    /// Who opened it: decides which one survives when both sides dialled at once.
    dialer: PeerId,
    /// Its data path stopped (as last told to gossip).
    datapath_down: bool,
}

pub struct Agent {
    local: Arc<Local>,
    listen: SocketAddr,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    gossip: Gossip,
    links: BTreeMap<PeerId, Link>,
    targets: BTreeMap<String, Target>,
    store: Store,
    max_connections: usize,
    events: mpsc::UnboundedSender<Event>,
    next_conn_id: u64,
    observe: Option<UnderlayRx>,
    mode: DatapathMode,
    /// The last datapath sync error, so it is logged once, not every tick.
    sync_error: Option<String>,
    /// The topology the datapath was last synced with.
    synced: Published,
    started: Instant,
    /// When each peer entered the state `meshctl peers` shows.
    state_since: BTreeMap<PeerId, (String, SystemTime)>,
    datapath: Option<Box<dyn Datapath>>,
    data_port: u16,
    notifier: Option<crate::notify::Notifier>,
    attachments: Option<Arc<crate::attach::Attachments>>,
    state_dir: std::path::PathBuf,
    /// The networks this peer created (`networks.json`, and our gossip entry).
    networks: Vec<crate::networks::Created>,
    /// What the data path was last given.
    published: Published,
    /// Sources whose password attempts failed, and how long they wait.
    throttle: throttle::Throttle,
    /// Incoming handshakes that failed authentication, and those refused while their source
    /// had to wait.
    auth_failures: u64,
    throttled: u64,
    /// Lines logged about refused handshakes (rate-limited).
    auth_log: throttle::LogBudget,
    /// Incoming handshakes in progress, per source address, and those turned away (Retry or
    /// refusal) because too many were.
    pending: std::collections::HashMap<std::net::IpAddr, usize>,
    busy: u64,
    /// When discovery last ran, and for which (gossip generation, connection count).
    last_survey: ((u64, usize), Instant),
    /// Addresses in named networks (`agent::ipam`).
    ipam: ipam::Ipam,
}

/// Incoming connections still authenticating, at most this many at once, and this many from
/// one source address: an outsider who never finishes costs a bounded amount, and a member
/// still finds a place.
const MAX_PENDING_HANDSHAKES: usize = 64;
const MAX_PENDING_PER_SOURCE: usize = 4;
/// An incoming connection has this long from its first packet to a finished authentication.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

/// What the data path was last given: the gossip generation and the connection ids.
type Published = Option<(u64, Vec<u64>)>;

/// Wall-clock milliseconds: gossip versions must keep increasing across restarts.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The event a finished handshake (accepted or dialled) turns into. Refusals by authentication
/// are told apart from network failures: ours come as [`conn::AuthRefused`], the other side's
/// as a close whose reason names them.
fn handshake_event(
    result: Result<(quinn::Connection, conn::Established)>,
    dialed: Option<String>,
    remote: SocketAddr,
) -> Event {
    match result {
        Ok((conn, est)) => Event::Established { conn, est, dialed },
        Err(e) => {
            let error = format!("{e:#}");
            let auth = e.downcast_ref::<conn::AuthRefused>().is_some()
                || error.contains("wrong password")
                || error.contains("authentication mismatch")
                || error.contains("certificate");
            Event::HandshakeFailed {
                target: dialed,
                remote,
                error,
                auth,
            }
        }
    }
}

/// What a probe found: the peer's id and name.
pub struct Probed {
    pub peer: PeerId,
    pub name: String,
}

/// Dials `target` once with this node's credentials and runs the whole handshake (TLS, hello,
/// password check), then closes: `meshd --probe`, which tells an operator whether this
/// configuration can join the mesh there, and if not why.
pub async fn probe(
    id: PeerId,
    name: String,
    auth: AuthMode,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    target: &str,
) -> Result<Probed> {
    let session = Session::join(id, name, auth, chain, key, target).await?;
    let probed = Probed {
        peer: session.peer,
        name: session.peer_name.clone(),
    };
    session.close(b"probe done").await;
    Ok(probed)
}

/// One authenticated control connection driven by hand, outside an agent: what `probe` uses,
/// and what a test uses to play a member that lies (tests/src/bin/rogue-member.rs). No
/// gossip state machine, no data path: frames go out exactly as given.
pub struct Session {
    pub peer: PeerId,
    pub peer_name: String,
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Session {
    /// Dials `target` and completes the handshake as node `id`.
    pub async fn join(
        id: PeerId,
        name: String,
        auth: AuthMode,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        target: &str,
    ) -> Result<Session> {
        let client = crate::auth::client_config(&auth, chain, key)?;
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))
            .context("opening a UDP socket to dial from")?;
        let local = Local {
            id,
            name,
            listen_port: 0,
            auth,
            kernel_datapath: false,
            trusted_subnets: Vec::new(),
            data_port: 0,
            offers_aes: false,
        };
        let remote = conn::resolve(target, mesh_common::DEFAULT_CONTROL_PORT).await?;
        let c = endpoint
            .connect_with(client, remote, "mesh")?
            .await
            .map_err(|e| anyhow::anyhow!(conn::describe_close(&e)))?;
        let est = conn::handshake(&c, true, &local).await?;
        Ok(Session {
            peer: est.peer,
            peer_name: est.hello.name,
            endpoint,
            conn: c,
            send: est.send,
            recv: est.recv,
        })
    }

    pub async fn send_gossip(&mut self, msg: GossipMessage) -> Result<()> {
        let frame = mesh_proto::v1::PeerFrame {
            kind: Some(mesh_proto::v1::peer_frame::Kind::Gossip(msg)),
        };
        wire::write(&mut self.send, &frame).await
    }

    /// The next gossip message from the peer.
    pub async fn recv_gossip(&mut self) -> Result<GossipMessage> {
        loop {
            if let Some(mesh_proto::v1::peer_frame::Kind::Gossip(g)) =
                wire::read(&mut self.recv).await?.kind
            {
                return Ok(g);
            }
        }
    }

    pub async fn close(self, why: &[u8]) {
        self.conn.close(close::SHUTDOWN.into(), why);
        self.endpoint.wait_idle().await;
    }
}

impl Agent {
    /// Binds the QUIC endpoint. Returns the agent and the sender the API uses.
    pub fn start(cfg: Config) -> Result<(Agent, mpsc::UnboundedReceiver<Event>)> {
        let signer = crate::entry_sign::EntrySigner::new(&cfg.chain[0], &cfg.key)?;
        let server = crate::auth::server_config(&cfg.auth, cfg.chain.clone(), cfg.key.clone_key())?;
        let client = crate::auth::client_config(&cfg.auth, cfg.chain, cfg.key)?;
        let endpoint = quinn::Endpoint::server(server, cfg.listen).with_context(|| {
            format!(
                "cannot listen on {} (in use by another meshd? give each instance its own \
                 --listen)",
                cfg.listen
            )
        })?;
        let listen = endpoint.local_addr()?;
        let store = Store::new(&cfg.state_dir);
        let mut targets = BTreeMap::new();
        for t in store.load()?.into_iter().chain(cfg.initial_targets) {
            targets.insert(t, Target::new(true, None));
        }
        let addresses = if listen.ip().is_unspecified() {
            Vec::new()
        } else {
            vec![listen.to_string()]
        };
        let gossip = Gossip::new(
            cfg.id,
            &cfg.name,
            addresses,
            now_ms(),
            GossipConfig::new(Arc::new(signer)),
        );
        let own_networks = networks::load(&cfg.state_dir)?;
        let mut gossip = gossip;
        gossip.set_networks(
            own_networks
                .iter()
                .map(crate::networks::Created::to_proto)
                .collect(),
            now_ms(),
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let agent = Agent {
            local: Arc::new(Local {
                id: cfg.id,
                name: cfg.name,
                listen_port: listen.port(),
                auth: cfg.auth,
                kernel_datapath: cfg.mode.name == "ebpf",
                trusted_subnets: cfg.trusted_subnets,
                data_port: cfg.data_port,
                offers_aes: cfg.offers_aes,
            }),
            listen,
            endpoint,
            client,
            gossip,
            links: BTreeMap::new(),
            targets,
            store,
            max_connections: cfg.max_connections,
            events: tx,
            next_conn_id: 0,
            observe: cfg.observe,
            mode: cfg.mode,
            sync_error: None,
            synced: None,
            started: Instant::now(),
            state_since: BTreeMap::new(),
            datapath: cfg.datapath,
            data_port: cfg.data_port,
            notifier: cfg.notifier,
            attachments: cfg.attachments,
            state_dir: cfg.state_dir.clone(),
            networks: own_networks,
            published: None,
            throttle: throttle::Throttle::default(),
            auth_failures: 0,
            throttled: 0,
            auth_log: throttle::LogBudget::default(),
            pending: Default::default(),
            busy: 0,
            last_survey: ((u64::MAX, 0), Instant::now()),
            ipam: ipam::Ipam::load(&cfg.state_dir, cfg.id, cfg.ipam_reclaim_after)?,
        };
        agent.store.save(&agent.targets)?;
        if let Some(at) = agent.attachments.clone() {
            let events = agent.events.clone();
            tokio::spawn(async move {
                let _ = events.send(Event::NetworksInUse(at.networks_in_use().await));
                let _ = events.send(Event::OpenNetworks(at.vlans_in_use().await));
                let _ = events.send(Event::AddressesInUse(at.addresses_in_use().await));
            });
        }
        Ok((agent, rx))
    }

    pub fn events(&self) -> mpsc::UnboundedSender<Event> {
        self.events.clone()
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Runs until `shutdown` resolves, or the datapath fails; hands back the datapath, for the
    /// caller to remove or leave in place, and the failure if that is why it ended.
    pub async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Event>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> (Option<Box<dyn Datapath>>, Option<String>) {
        let mut failure = None;
        // The control plane listens and the datapath is up: serving.
        if let Some(n) = &mut self.notifier {
            n.ready(&status_line(self.links.len(), self.mode.name));
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        // A starved control thread skips the ticks it missed instead of running them back to
        // back (tokio's default), which only deepens the starvation.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                Some(ev) = rx.recv() => self.handle(ev),
                Some(incoming) = self.endpoint.accept() => self.accept(incoming),
                _ = tick.tick() => {
                    failure = self.datapath.as_ref().and_then(|d| d.failure());
                    if failure.is_some() {
                        break;
                    }
                    self.tick();
                }
                _ = &mut shutdown => break,
            }
            self.flush();
        }
        if let Some(n) = &mut self.notifier {
            n.stopping();
        }
        info!("closing peer connections");
        self.endpoint
            .close(close::SHUTDOWN.into(), b"meshd shutting down");
        let _ = tokio::time::timeout(Duration::from_millis(300), self.endpoint.wait_idle()).await;
        (self.datapath.take(), failure)
    }

    fn accept(&mut self, incoming: quinn::Incoming) {
        // A source that just failed to authenticate waits before it may guess again; refusing
        // costs no handshake work.
        if self
            .throttle
            .admit(incoming.remote_address().ip(), Instant::now())
            .is_err()
        {
            self.throttled += 1;
            incoming.refuse();
            return;
        }
        let ip = incoming.remote_address().ip();
        let total: usize = self.pending.values().sum();
        let mine = self.pending.get(&ip).copied().unwrap_or(0);
        if total >= MAX_PENDING_HANDSHAKES || mine >= MAX_PENDING_PER_SOURCE {
            self.busy += 1;
            // Make an unproven source show it receives at its address (QUIC Retry) before it
            // may queue at all; a proven one that is still too many is refused.
            if !incoming.remote_address_validated() && incoming.may_retry() {
                let _ = incoming.retry();
            } else {
                incoming.refuse();
            }
            return;
        }
        *self.pending.entry(ip).or_default() += 1;
        let local = self.local.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let result = tokio::time::timeout(HANDSHAKE_DEADLINE, async {
                let conn = incoming.await.context("QUIC/TLS handshake")?;
                let est = conn::handshake(&conn, false, &local)
                    .await
                    .inspect_err(|_| {
                        conn.close(close::PROTOCOL.into(), b"handshake failed");
                    })?;
                Ok::<_, anyhow::Error>((conn, est))
            })
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "no authentication within {} s",
                    HANDSHAKE_DEADLINE.as_secs()
                ))
            });
            let _ = events.send(handshake_event(result, None, remote));
        });
    }

    fn dial(&mut self, target: String) {
        let Some(t) = self.targets.get_mut(&target) else {
            return;
        };
        t.dialing = true;
        if t.state != State::Failed {
            t.set_state(State::Connecting);
        }
        let local = self.local.clone();
        let events = self.events.clone();
        let endpoint = self.endpoint.clone();
        let client = self.client.clone();
        let port = mesh_common::DEFAULT_CONTROL_PORT;
        tokio::spawn(async move {
            let mut remote = SocketAddr::from(([0, 0, 0, 0], 0));
            let result = async {
                remote = conn::resolve(&target, port).await?;
                let conn = endpoint
                    .connect_with(client, remote, "mesh")?
                    .await
                    .map_err(|e| anyhow::anyhow!(conn::describe_close(&e)))?;
                let est = conn::handshake(&conn, true, &local).await?;
                Ok::<_, anyhow::Error>((conn, est))
            }
            .await;
            let _ = events.send(handshake_event(result, Some(target), remote));
        });
    }

    /// An incoming handshake from `ip` ended (either way): its place in the queue is free.
    fn handshake_done(&mut self, ip: std::net::IpAddr) {
        if let Some(n) = self.pending.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&ip);
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        if let Event::HandshakeFailed {
            target: None,
            remote,
            ..
        } = &ev
        {
            self.handshake_done(remote.ip());
        }
        if let Event::Established {
            conn, dialed: None, ..
        } = &ev
        {
            self.handshake_done(conn.remote_address().ip());
        }
        match ev {
            Event::Established { conn, est, dialed } => self.established(conn, est, dialed),
            Event::HandshakeFailed {
                target,
                remote,
                error,
                auth,
            } => {
                if auth {
                    match self.auth_log.take(Instant::now()) {
                        throttle::Log::Write { held_back } => {
                            if held_back > 0 {
                                warn!(held_back, "earlier refusals not logged (rate limit)");
                            }
                            warn!(%remote, target = target.as_deref().unwrap_or("-"), error, "peer refused");
                        }
                        throttle::Log::Skip => {}
                    }
                    if target.is_none() {
                        self.auth_failures += 1;
                        self.throttle.failed(remote.ip(), Instant::now());
                    }
                }
                if let Some(t) = target.and_then(|t| self.targets.get_mut(&t)) {
                    if t.state != State::Retrying || t.last_error != error {
                        tracing::debug!(%remote, error, "dial failed");
                    }
                    t.failed(error, auth, Instant::now());
                }
            }
            Event::NetworksInUse(ids) => self.gossip.set_networks_in_use(ids, now_ms()),
            Event::AddressesInUse(v) => self.ipam_in_use(v),
            Event::AllocationSettled {
                network,
                offset,
                attached,
            } => self.ipam_settled(network, offset, attached),
            Event::OpenNetworks(vlans) => {
                if let Some(dp) = &self.datapath {
                    for vlan in vlans {
                        let ready = dp.open_network(vlan);
                        tokio::spawn(async move {
                            if let Ok(Err(e)) = ready.await {
                                warn!(error = e, "a network attached before the restart");
                            }
                        });
                    }
                }
            }
            Event::OpenNetwork { vlan, ready } => match &self.datapath {
                None => {
                    let _ = ready.send(Err("no data path is running".into()));
                }
                Some(dp) => {
                    let opened = dp.open_network(vlan);
                    tokio::spawn(async move {
                        let r = opened
                            .await
                            .unwrap_or_else(|_| Err("the data path stopped".into()));
                        let _ = ready.send(r);
                    });
                }
            },
            Event::Docker { call, reply } => self.docker(call, reply),
            Event::Gossip { peer, conn_id, msg } => {
                if self.links.get(&peer).is_some_and(|l| l.conn_id == conn_id) {
                    self.gossip.receive(peer, msg, now_ms());
                }
            }
            Event::Closed {
                peer,
                conn_id,
                reason,
            } => {
                if self.links.get(&peer).is_some_and(|l| l.conn_id == conn_id) {
                    let link = self.links.remove(&peer).expect("checked above");
                    if let Some(dp) = &mut self.datapath {
                        dp.remove_link(LinkId(conn_id));
                    }
                    info!(peer = %peer, name = link.name, reason, "peer connection lost");
                    self.gossip.link_down(peer, now_ms());
                    let now = Instant::now();
                    for t in self.targets.values_mut() {
                        if t.peer == Some(peer) && t.state == State::Established {
                            t.lost(reason.clone(), now);
                        }
                    }
                }
            }
            Event::Api { request, reply } => match request {
                // These change peers.json: the answer waits for the write, the agent does not.
                request::Kind::Connect(t) => self.connect(t.targets, reply),
                request::Kind::Forget(t) => self.forget(t.targets, reply),
                // Answered when the replies are in; the agent goes on meanwhile.
                request::Kind::Ping(p) => self.ping(p, reply),
                // Netlink work off the agent's loop, one change at a time.
                request::Kind::Attach(a) => match self.resolve_network(&a.network) {
                    Err(e) => {
                        let _ = reply.send(response::Kind::Error(e));
                    }
                    // A named network's address from its allocator, when none is given.
                    Ok(net) if net.subnet.is_some() && a.cidrs.is_empty() => {
                        self.ipam_attach(a, net, reply)
                    }
                    Ok(net) => self.attach_now(a, net, reply, None),
                },
                request::Kind::Detach(a) => {
                    self.on_attachments(reply, |at| async move { at.detach(a).await })
                }
                request::Kind::Expose(e) => {
                    let peers: Vec<std::net::IpAddr> = self
                        .links
                        .values()
                        .map(|l| l.conn.remote_address().ip())
                        .collect();
                    self.on_attachments(
                        reply,
                        |at| async move { at.expose(&e.cidrs, &peers).await },
                    )
                }
                request::Kind::Hide(e) => {
                    self.on_attachments(reply, |at| async move { at.hide(&e.cidrs).await })
                }
                request::Kind::NetworkCreate(n) => {
                    let _ = reply.send(match self.network_create(n) {
                        Ok(v) => response::Kind::Networks(v),
                        Err(e) => response::Kind::Error(e),
                    });
                }
                request::Kind::NetworkRm(n) => {
                    let _ = reply.send(match self.network_rm(n) {
                        Ok(v) => response::Kind::Networks(v),
                        Err(e) => response::Kind::Error(e),
                    });
                }
                request::Kind::Attachments(_) => {
                    self.on_attachments(reply, |at| async move { Ok(at.view().await) })
                }
                other => {
                    let _ = reply.send(self.answer(other));
                }
            },
        }
    }

    fn established(
        &mut self,
        conn: quinn::Connection,
        mut est: conn::Established,
        dialed: Option<String>,
    ) {
        let peer = est.peer;
        self.throttle.succeeded(conn.remote_address().ip());
        let dialer = if dialed.is_some() {
            self.local.id
        } else {
            peer
        };
        if let Some(t) = dialed.as_ref().and_then(|d| self.targets.get_mut(d)) {
            t.established(peer, &est.hello.name);
        }
        if let Some(existing) = self.links.get(&peer) {
            // Both sides dialled: keep the connection opened by the lower id, on both ends.
            let keep_existing = existing.dialer == self.local.id.min(peer);
            if keep_existing || existing.dialer == dialer {
                conn.close(close::DUPLICATE.into(), b"duplicate connection");
                return;
            }
            existing
                .conn
                .close(close::DUPLICATE.into(), b"duplicate connection");
        } else if self.links.len() >= self.max_connections {
            conn.close(close::PROTOCOL.into(), b"connection limit reached");
            warn!(
                peer = %peer,
                name = est.hello.name,
                limit = self.max_connections,
                "refusing a connection: limit reached"
            );
            return;
        }
        let conn_id = self.next_conn_id;
        self.next_conn_id += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let remote = conn.remote_address();
        let name = est.hello.name.clone();
        if !self.links.contains_key(&peer) {
            info!(peer = %peer, name, %remote, "peer connection established");
        }
        let replaced = self.links.insert(
            peer,
            Link {
                conn: conn.clone(),
                conn_id,
                tx,
                name,
                since: SystemTime::now(),
                dialer,
                datapath_down: false,
            },
        );
        let (me, short) = (self.short(self.local.id), self.short(peer));
        if let Some(dp) = &mut self.datapath {
            // The link's secret moves into the data path, which keys the link under its id
            // once; the agent keeps none of it.
            if let Some(old) = replaced {
                dp.remove_link(LinkId(old.conn_id));
            }
            dp.set_me(me);
            let spec = crate::tap::LinkSpec {
                peer: short,
                // Where its data path listens, as its hello says (an older peer: ours).
                addr: SocketAddr::new(
                    remote.ip(),
                    u16::try_from(est.hello.data_port)
                        .ok()
                        .filter(|p| *p != 0)
                        .unwrap_or(self.data_port),
                ),
                secret: est
                    .data_secret
                    .take()
                    .map(|secret| crate::switch::seal::LinkKeys {
                        secret,
                        i_dialed: est.i_dialed,
                        cipher: est.cipher,
                    }),
                peer_kernel: est.hello.kernel_datapath,
            };
            dp.add_link(LinkId(conn_id), spec);
        }
        est.data_secret = None;
        self.gossip
            .link_up(peer, Some(remote.to_string()), now_ms());
        // An accepted connection from a peer we were trying to reach: stop trying.
        for t in self.targets.values_mut() {
            if t.peer == Some(peer) {
                t.established(peer, &est.hello.name);
            }
        }
        tokio::spawn(conn::pump(conn, est, conn_id, self.events.clone(), rx));
    }

    fn tick(&mut self) {
        let now = now_ms();
        if let Some(n) = &mut self.notifier {
            // From this loop, so a wedged agent stops the pings and systemd restarts it.
            n.alive();
            n.status(&status_line(self.links.len(), self.mode.name));
        }
        self.check_data_paths(now);
        self.sync_datapath();
        self.gossip.tick(now);
        // Discovery and the state bookkeeping walk the whole topology: do them when it changed,
        // and otherwise once a second (dial outcomes change states too).
        let generation = (self.gossip.generation(), self.links.len());
        let due_anyway = self.last_survey.1.elapsed() >= Duration::from_secs(1);
        let survey = generation != self.last_survey.0 || due_anyway;
        if survey {
            self.last_survey = (generation, Instant::now());
            self.discover();
            self.ipam_survey();
        }
        let due: Vec<String> = self
            .targets
            .iter()
            .filter(|(_, t)| {
                !t.dialing
                    && t.next_attempt <= Instant::now()
                    && !t.peer.is_some_and(|p| self.links.contains_key(&p))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for t in due {
            if self.links.len() < self.max_connections {
                self.dial(t);
            }
        }
        if survey {
            self.refresh_states();
        }
    }

    /// Adds dial targets for peers the topology knows but we are not connected to: their
    /// advertised addresses and the addresses their neighbours observe. Drops discovered
    /// targets whose peer left the topology.
    fn discover(&mut self) {
        let entries = self.gossip.entries();
        let found = targets::discovered(entries, self.local.id, |id| self.links.contains_key(&id));
        for (addr, id) in found {
            self.targets
                .entry(addr)
                .or_insert_with(|| Target::new(false, Some(id)));
        }
        let known: std::collections::BTreeSet<PeerId> = entries.keys().copied().collect();
        self.targets
            .retain(|_, t| t.persistent || t.peer.is_none_or(|p| known.contains(&p)));
    }

    fn flush(&mut self) {
        for (to, msg) in self.gossip.take_outbox() {
            if let Some(l) = self.links.get(&to) {
                let _ = l.tx.send(msg);
            }
        }
        self.publish_datapath();
    }

    /// `peer`'s id on the data path, as announced in gossip.
    fn short(&self, peer: PeerId) -> crate::switch::ShortId {
        crate::switch::ShortId::from_wire(self.gossip.short_id(peer))
    }

    /// Tells the mesh (through our gossip entry) which links' data paths stopped working, so
    /// data routes go around them, and when they work again.
    fn check_data_paths(&mut self, now: u64) {
        let Some(dp) = &self.datapath else { return };
        for (id, link) in &mut self.links {
            let down = dp.link_up(LinkId(link.conn_id)) == Some(false);
            if down != link.datapath_down {
                link.datapath_down = down;
                if down {
                    warn!(peer = %id, name = link.name, "data path down (no heartbeats); routing around it");
                } else {
                    info!(peer = %id, name = link.name, "data path up");
                }
                self.gossip.set_datapath_down(*id, down, now);
            }
        }
    }

    /// Lets the datapath bring what it derives up to date (the kernel datapath: its maps, at
    /// once after a topology change, else once a second). Errors are logged once.
    fn sync_datapath(&mut self) {
        let Some(dp) = &mut self.datapath else { return };
        let changed = self.synced != self.published;
        self.synced = self.published.clone();
        match dp.sync(changed) {
            Ok(()) => self.sync_error = None,
            Err(e) => {
                let e = format!("{e:#}");
                if self.sync_error.as_ref() != Some(&e) {
                    warn!(error = e, "updating the datapath failed");
                    self.sync_error = Some(e);
                }
            }
        }
    }

    /// Gives the data path the current routes and neighbours, when they changed.
    fn publish_datapath(&mut self) {
        if self.datapath.is_none() {
            return;
        }
        let now = (
            self.gossip.generation(),
            self.links.values().map(|l| l.conn_id).collect::<Vec<_>>(),
        );
        if self.published.as_ref() == Some(&now) {
            return;
        }
        self.published = Some(now);
        let routes = self.gossip.routes().clone();
        let short = |id: PeerId| self.short(id);
        // Two peers claiming one short id: the higher peer id moves to another as soon as it
        // hears of the other (gossip), so this lasts one gossip round at most.
        let mut seen: BTreeMap<crate::switch::ShortId, PeerId> = BTreeMap::new();
        for id in routes.hops.keys() {
            if let Some(other) = seen.insert(short(*id), *id) {
                info!(
                    a = %other,
                    a_name = self.name_of(other),
                    b = %id,
                    b_name = self.name_of(*id),
                    "two peers claim one data-path short id; one moves"
                );
            }
        }
        let table = crate::switch::forward::Table {
            me: Some(short(self.local.id)),
            next_hop: routes
                .next_hop
                .iter()
                .map(|(d, h)| (short(*d), short(*h)))
                .collect(),
            children: routes
                .broadcast
                .iter()
                .map(|(s, cs)| (short(*s), cs.iter().map(|c| short(*c)).collect()))
                .collect(),
            parent: routes
                .parent
                .iter()
                .map(|(s, p)| (short(*s), short(*p)))
                .collect(),
        };
        let me = short(self.local.id);
        let peers: Vec<(LinkId, crate::switch::ShortId)> = self
            .links
            .iter()
            .map(|(id, l)| (LinkId(l.conn_id), short(*id)))
            .collect();
        let dp = self.datapath.as_mut().expect("checked above");
        dp.set_table(table);
        // Short ids move (collisions, a peer first known by its candidate id): re-point the
        // links; their keys and counters stay with them.
        dp.set_me(me);
        for (link, peer) in peers {
            dp.set_peer(link, peer);
        }
    }

    fn answer(&mut self, req: request::Kind) -> response::Kind {
        match req {
            request::Kind::Status(_) => match self.status() {
                Ok(s) => response::Kind::Status(s),
                Err(e) => response::Kind::Error(format!("{e:#}")),
            },
            request::Kind::Peers(_) => response::Kind::Peers(self.peers()),
            request::Kind::Routes(_) => response::Kind::Routes(self.routes()),
            request::Kind::Connect(_)
            | request::Kind::Forget(_)
            | request::Kind::Ping(_)
            | request::Kind::Attach(_)
            | request::Kind::Detach(_)
            | request::Kind::Expose(_)
            | request::Kind::Hide(_)
            | request::Kind::Attachments(_)
            | request::Kind::NetworkCreate(_)
            | request::Kind::NetworkRm(_) => {
                unreachable!("answered in the event handler")
            }
            request::Kind::Fdb(_) => response::Kind::Fdb(self.fdb()),
            request::Kind::Networks(_) => response::Kind::Networks(self.networks_view()),
            request::Kind::Ipam(r) if r.reclaim.is_empty() => {
                response::Kind::Ipam(self.ipam_view())
            }
            request::Kind::Ipam(r) => match self.ipam_reclaim(&r.reclaim) {
                Ok(()) => response::Kind::Ipam(self.ipam_view()),
                Err(e) => response::Kind::Error(e),
            },
        }
    }

    /// Attaches (`meshctl attach`, CNI) on `net`, whose TAP device and bridge come first when
    /// it is a named network (frames flow once the data path says they do). `allocated`: the
    /// (network, offset) the allocator handed out for it, settled when the attach is over.
    fn attach_now(
        &self,
        a: mesh_proto::v1::AttachRequest,
        net: crate::networks::Chosen,
        reply: oneshot::Sender<response::Kind>,
        allocated: Option<(u64, u32)>,
    ) {
        let ready = (net.vlan != crate::networks::DEFAULT_VLAN)
            .then(|| self.datapath.as_ref().map(|dp| dp.open_network(net.vlan)));
        let events = self.events.clone();
        self.on_attachments(reply, |at| async move {
            let done = async {
                match ready {
                    None => {}
                    Some(None) => return Err("no data path is running".to_owned()),
                    Some(Some(r)) => r.await.map_err(|_| "the data path stopped".to_owned())??,
                }
                at.attach(a, net).await
            }
            .await;
            if let Some((network, offset)) = allocated {
                let _ = events.send(Event::AllocationSettled {
                    network,
                    offset,
                    attached: done.is_ok(),
                });
            }
            done
        })
    }

    /// Runs `op` on the attachments in a task of its own and answers `reply` with its result.
    fn on_attachments<F, Fut>(&self, reply: oneshot::Sender<response::Kind>, op: F)
    where
        F: FnOnce(Arc<crate::attach::Attachments>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<mesh_proto::v1::Attachments, String>>
            + Send
            + 'static,
    {
        let Some(at) = self.attachments.clone() else {
            let _ = reply.send(response::Kind::Error(
                "this meshd runs no data path, so it has no bridge to attach to".into(),
            ));
            return;
        };
        let work = op(at.clone());
        let events = self.events.clone();
        tokio::spawn(async move {
            let answer = match work.await {
                Ok(v) => response::Kind::Attachments(v),
                Err(e) => response::Kind::Error(e),
            };
            // Before the answer: once meshctl returns, the mesh is being told.
            let _ = events.send(Event::NetworksInUse(at.networks_in_use().await));
            let _ = events.send(Event::AddressesInUse(at.addresses_in_use().await));
            let _ = reply.send(answer);
        });
    }

    /// Answers `reply` with `done` once peers.json is written, or with why it could not be.
    fn persist_then_reply(&mut self, reply: oneshot::Sender<response::Kind>, done: response::Kind) {
        let saved = self.store.save_in_background(&self.targets);
        tokio::spawn(async move {
            let answer = match saved.await {
                Ok(()) => done,
                Err(e) => response::Kind::Error(format!("{e:#}")),
            };
            let _ = reply.send(answer);
        });
    }

    fn connect(&mut self, list: Vec<String>, reply: oneshot::Sender<response::Kind>) {
        for t in &list {
            if let Err(e) = validate_target(t) {
                let _ = reply.send(response::Kind::Error(format!("{e:#}")));
                return;
            }
        }
        for t in &list {
            let target = self
                .targets
                .entry(t.clone())
                .or_insert_with(|| Target::new(true, None));
            target.persistent = true;
            target.next_attempt = Instant::now();
        }
        let done = response::Kind::Done(format!("connecting to {}", list.join(", ")));
        self.persist_then_reply(reply, done);
    }

    fn forget(&mut self, list: Vec<String>, reply: oneshot::Sender<response::Kind>) {
        let mut unknown = Vec::new();
        for t in &list {
            match self.targets.remove(t) {
                Some(target) => {
                    if let Some(l) = target.peer.and_then(|p| self.links.get(&p)) {
                        l.conn
                            .close(close::FORGOTTEN.into(), b"forgotten by the operator");
                    }
                }
                None => unknown.push(t.clone()),
            }
        }
        let done = if unknown.is_empty() {
            response::Kind::Done(format!("forgot {}", list.join(", ")))
        } else {
            response::Kind::Error(format!(
                "not known: {} (see `meshctl peers` for the addresses in use)",
                unknown.join(", ")
            ))
        };
        self.persist_then_reply(reply, done);
    }
}
