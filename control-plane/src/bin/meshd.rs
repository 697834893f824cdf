//! meshd: the mesh agent.
//!
//! It joins the mesh over authenticated QUIC control connections (gossiping the topology and
//! computing routes), forwards frames (in the kernel through mesh's eBPF programs, or itself
//! through a TAP device), and serves the local API that `meshctl` talks to.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use mesh::{
    agent::{self, Agent, Event},
    auth::{self, AuthMode},
    config_file,
    datapath::{
        self, DatapathChoice, HostConfig, KernelDatapath, UnderlayRx, XdpAttachMode,
        kernel_path::KernelPath,
    },
    identity::{self, Identity},
    local_api, paths, tap,
};
use mesh_common::{DEFAULT_CONTROL_PORT, DEFAULT_DATA_PORT};
use tokio::sync::oneshot;

#[derive(Parser)]
#[command(
    name = "meshd",
    version,
    about = "mesh agent: one virtual Ethernet switch across hosts",
    long_about = "mesh agent: one virtual Ethernet switch across hosts.\n\n\
        meshd connects to the given peers (and to every peer it learns about from them) over \
        authenticated QUIC, keeps the mesh topology and routes, moves the local bridge's frames \
        to and from the other hosts, and serves the local API that meshctl talks to. Every \
        option can also be set through the environment variable shown next to it, or in the \
        configuration file (/etc/mesh/meshd.toml, or --config): one key per option, named like \
        the option without its dashes (`password-file = \"/etc/mesh/password\"`), the peers \
        as `peers = [\"10.0.0.2\"]`. The command line and the environment override the \
        file.\n\n\
        Datapath: with --datapath auto (the default) plaintext links are forwarded in the \
        kernel by mesh's eBPF programs where the kernel and meshd's privileges allow it, \
        and by meshd through its TAP device otherwise (the reason is logged and shown by \
        `meshctl status`). Sealed links always go through meshd.\n\n\
        Authentication: a shared password (--password-file or MESH_PASSWORD), or certificates \
        from a mesh CA (--ca-cert, --cert, --key). Without either meshd refuses to start \
        unless --insecure is given."
)]
struct Args {
    /// Peers to connect to, as host[:port] (default port 6783). Remembered in the state dir,
    /// so a restarted meshd reconnects without them.
    #[arg(value_name = "PEER")]
    peers: Vec<String>,
    /// UDP address for the QUIC control plane.
    #[arg(long, env = "MESH_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_CONTROL_PORT)))]
    listen: SocketAddr,
    /// File holding the mesh password (first line; surrounding whitespace is ignored).
    #[arg(long, env = "MESH_PASSWORD_FILE", value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// CA certificate (PEM) that signs every member's certificate.
    #[arg(long, env = "MESH_CA_CERT", value_name = "FILE", requires_all = ["cert", "key"])]
    ca_cert: Option<PathBuf>,
    /// This node's certificate chain (PEM), signed by the CA.
    #[arg(long, env = "MESH_CERT", value_name = "FILE", requires = "ca_cert")]
    cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "MESH_KEY", value_name = "FILE", requires = "ca_cert")]
    key: Option<PathBuf>,
    /// Run without authentication: anyone who can reach the port can join. For labs only.
    #[arg(long, env = "MESH_INSECURE")]
    insecure: bool,
    /// Subnets (CIDRs, comma-separated) whose underlay is trusted: a link to a peer seen at an
    /// address inside them, which in turn sees us inside its own trusted subnets, carries data
    /// frames unsealed (and through the kernel datapath where both ends run it). Such frames
    /// can be read and forged by anyone on that network. The control plane stays
    /// authenticated and encrypted.
    #[arg(
        long,
        env = "MESH_TRUSTED_SUBNETS",
        value_name = "CIDR,...",
        value_delimiter = ',',
        conflicts_with = "insecure"
    )]
    trusted_subnets: Vec<ipnet::IpNet>,
    /// Most control connections this node keeps.
    #[arg(long, env = "MESH_MAX_CONNECTIONS", default_value_t = 64)]
    max_connections: usize,
    /// Directory for state kept across restarts (identity key, known peers).
    #[arg(long, env = "MESH_STATE_DIR", default_value = "/var/lib/mesh")]
    state_dir: PathBuf,
    /// Directory for runtime files (the API socket). Give each instance on a machine its own.
    #[arg(long, env = "MESH_RUN_DIR", default_value = paths::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// This node's name. Default: the hostname.
    #[arg(long, env = "MESH_NAME")]
    name: Option<String>,
    /// Underlay interface (the NIC that carries mesh traffic between hosts). Default: the
    /// interface of the IPv4 default route.
    #[arg(long, env = "MESH_UNDERLAY", value_name = "IFACE")]
    underlay: Option<String>,
    /// UDP port of the mesh data plane.
    #[arg(long, env = "MESH_DATA_PORT", default_value_t = DEFAULT_DATA_PORT)]
    data_port: u16,
    /// Linux bridge the local containers are plugged into; created if missing.
    #[arg(long, env = "MESH_BRIDGE", default_value = "mesh")]
    bridge: String,
    /// Name of meshd's TAP device on that bridge.
    #[arg(long, env = "MESH_TAP", default_value = "meshtap0")]
    tap: String,
    /// The AEAD for sealed links: `auto` seals with AES-256-GCM on links to peers that offer
    /// it too, when this CPU has AES in hardware (about three times cheaper per byte than
    /// ChaCha20-Poly1305 there), else with ChaCha20-Poly1305; `chacha20-poly1305` never offers
    /// AES-256-GCM. `meshctl peers` shows each link's.
    #[arg(long, env = "MESH_CIPHER", value_enum, default_value_t = CipherChoice::Auto)]
    cipher: CipherChoice,
    /// How long the TAP datapath keeps polling for packets after traffic before it sleeps,
    /// in microseconds: a reply that comes back within it finds meshd awake, which takes a
    /// wake-up off each small packet's latency, at the cost of a few percent of a CPU while
    /// traffic is sparse. `auto`: 200 with more than one CPU, 0 (never polls) with one.
    #[arg(
        long,
        env = "MESH_BUSY_POLL",
        value_name = "MICROSECONDS",
        default_value = "auto",
        value_parser = parse_busy_poll
    )]
    busy_poll: BusyPollWindow,
    /// Which datapath forwards frames: `ebpf` (the kernel, for plaintext links; refuse to
    /// start without it), `tap` (meshd itself, no BPF at all: old kernels, no CAP_BPF), or
    /// `auto` (ebpf where it loads, else tap, saying why).
    #[arg(long, env = "MESH_DATAPATH", value_enum, default_value_t = DatapathChoice::Auto)]
    datapath: DatapathChoice,
    /// Also attach the observe-only XDP counter to the underlay (`meshctl status` shows what
    /// arrives there by class). Off by default: on a veth it costs the host's own traffic.
    #[arg(long, env = "MESH_OBSERVE_UNDERLAY")]
    observe_underlay: bool,
    /// Where the kernel datapath pins its maps and program links (on bpffs), so forwarding
    /// goes on while meshd is down and a restarted meshd takes over without a gap. Default:
    /// /sys/fs/bpf/mesh/<a hash of the state dir>, one per instance.
    #[arg(long, env = "MESH_BPF_DIR", value_name = "DIR")]
    bpf_dir: Option<PathBuf>,
    /// Remove what this instance (the same --state-dir, --run-dir and --bpf-dir) left in the
    /// kernel: pinned programs and maps, the TAP keeper and with it the TAP device; then exit.
    /// For a meshd that crashed and will not be restarted; a clean stop does this itself.
    #[arg(long)]
    cleanup: bool,
    /// Check that this configuration (password or certificates, identity) can join the mesh
    /// at PEER: dial it once, run the whole handshake, print who answered or why it failed, and
    /// exit (0: joined, 1: refused or unreachable). Starts no datapath.
    #[arg(long, value_name = "PEER")]
    probe: Option<String>,
    /// Print meshd's manual page (roff), as the package installs it, and exit.
    #[arg(long, hide = true)]
    manual: bool,
    /// Print a shell completion script for meshd (bash, zsh, fish, ...) and exit.
    #[arg(long, hide = true, value_name = "SHELL")]
    completions: Option<clap_complete::Shell>,
    /// Internal: hold TAP device NAME up while meshd restarts (see tap/keeper.rs).
    #[arg(long = "keep-tap", value_name = "NAME", hide = true)]
    keep_tap: Option<String>,
    /// What to log: a level (error, warn, info, debug, trace) or per-module directives
    /// (`info,mesh::agent=debug`). SIGHUP re-reads it from the configuration file.
    #[arg(long, env = "RUST_LOG", default_value = "info", value_parser = log_filter)]
    log: String,
    /// Serve Prometheus metrics at http://ADDR/metrics (per-peer traffic, drops by reason,
    /// RTT, link state, datapath, gossip, FDB size, handshake failures). Off by default.
    #[arg(long, env = "MESH_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve Docker as its network and IPAM driver `mesh` on this socket (default
    /// /run/docker/plugins/mesh.sock, where Docker finds it): `docker network create
    /// --driver mesh --ipam-driver mesh --subnet CIDR NAME` puts Docker's containers on the
    /// mesh network with that subnet (or `--ipam-opt mesh.network=NAME` names it; a name with
    /// a subnet creates it), with addresses from the mesh's allocator. Off by default, so that
    /// several meshd on one machine do not compete for the socket.
    #[arg(
        long,
        env = "MESH_DOCKER_PLUGIN",
        value_name = "SOCKET",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = mesh::docker_plugin::DEFAULT_SOCKET
    )]
    docker_plugin: Option<PathBuf>,
    /// A host that takes part in a network's address allocation and has been out of reach
    /// this long (90s, 30m, 24h, 7d) is declared gone, and its addresses return to the host
    /// that gave it its space, as `meshctl ipam reclaim` does. Set it above the longest
    /// partition you expect: a host alive on the other side of a longer one keeps addresses
    /// that are handed out again. `never`: only `meshctl ipam reclaim` reclaims.
    #[arg(
        long,
        env = "MESH_IPAM_RECLAIM_AFTER",
        value_name = "TIME",
        default_value = "24h",
        value_parser = |s: &str| mesh::ipam::parse_reclaim_after(s).map(ReclaimAfter)
    )]
    ipam_reclaim_after: ReclaimAfter,
    /// Configuration file (TOML, a key per option). Default: /etc/mesh/meshd.toml when it
    /// exists.
    #[arg(long, env = "MESH_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// XDP hook of --observe-underlay: native driver mode, generic skb mode, or auto (driver,
    /// else skb; skb on a veth).
    #[arg(long, env = "MESH_XDP_MODE", value_enum, default_value_t = XdpAttachMode::Auto)]
    xdp_mode: XdpAttachMode,
}

/// `--ipam-reclaim-after`: a time, or never (`None`).
#[derive(Clone, Copy, Debug)]
struct ReclaimAfter(Option<std::time::Duration>);

/// `--busy-poll`: a window, or none given (`auto`).
#[derive(Clone, Copy, Debug)]
struct BusyPollWindow(Option<std::time::Duration>);

fn parse_busy_poll(s: &str) -> Result<BusyPollWindow, String> {
    if s == "auto" {
        return Ok(BusyPollWindow(None));
    }
    match s.parse::<u64>() {
        Ok(us) if us <= 100_000 => Ok(BusyPollWindow(Some(std::time::Duration::from_micros(us)))),
        _ => Err(format!(
            "{s:?}: give microseconds from 0 (never poll) to 100000, or auto"
        )),
    }
}

impl BusyPollWindow {
    fn window(self) -> std::time::Duration {
        self.0.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            tap::default_busy_poll(cpus)
        })
    }
}

/// Which AEAD sealed links may use (`--cipher`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CipherChoice {
    /// AES-256-GCM with peers that offer it too, when this CPU has AES in hardware;
    /// ChaCha20-Poly1305 otherwise.
    Auto,
    /// ChaCha20-Poly1305 on every link (AES-256-GCM is never offered).
    #[value(name = "chacha20-poly1305")]
    Chacha20Poly1305,
}

impl CipherChoice {
    fn offers_aes(self) -> bool {
        self == CipherChoice::Auto && mesh::switch::seal::Cipher::aes_in_hardware()
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if args.manual || args.completions.is_some() {
        use clap::CommandFactory;
        let mut cmd = Args::command();
        match args.completions {
            Some(shell) => {
                clap_complete::generate(shell, &mut cmd, "meshd", &mut std::io::stdout())
            }
            None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
        }
        return Ok(());
    }
    if let Some(tap) = &args.keep_tap {
        return tap::keeper::run(tap);
    }
    if args.cleanup {
        return cleanup(&args);
    }
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
    let (filter, log_filter) =
        tracing_subscriber::reload::Layer::new(tracing_subscriber::EnvFilter::new(&args.log));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                // Colours only for a person at a terminal: in a file or the journal they are
                // noise that breaks grep.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
        )
        .init();
    let reload = Reload {
        log_filter,
        peers: args.peers.clone(),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(args, reload))
}

/// A `--log` value: a filter tracing accepts.
fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("not a log filter ({e}); e.g. info, or info,mesh::agent=debug"))
}

/// What SIGHUP may change while meshd runs: the log filter and the peers to dial. The datapath,
/// the identity and the listening socket stay as they are.
struct Reload {
    log_filter: tracing_subscriber::reload::Handle<
        tracing_subscriber::EnvFilter,
        tracing_subscriber::Registry,
    >,
    /// The peer list as last read (a peer that leaves it is forgotten).
    peers: Vec<String>,
}

impl Reload {
    /// Reads the configuration again (file, environment, the command line meshd started
    /// with), applies the log filter, and asks the agent to dial new peers and forget dropped
    /// ones. A bad file changes nothing and is logged.
    async fn apply(&mut self, events: &tokio::sync::mpsc::UnboundedSender<Event>) {
        let args = match parse_args_checked() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("reloading the configuration failed; nothing changed: {e:#}");
                return;
            }
        };
        if let Err(e) = self
            .log_filter
            .reload(tracing_subscriber::EnvFilter::new(&args.log))
        {
            tracing::error!(error = %e, "applying the log filter");
        }
        let added: Vec<String> = args
            .peers
            .iter()
            .filter(|p| !self.peers.contains(p))
            .cloned()
            .collect();
        let dropped: Vec<String> = self
            .peers
            .iter()
            .filter(|p| !args.peers.contains(p))
            .cloned()
            .collect();
        use mesh_proto::v1::{TargetsRequest, request};
        for (list, kind) in [
            (
                added.clone(),
                request::Kind::Connect as fn(TargetsRequest) -> request::Kind,
            ),
            (dropped.clone(), request::Kind::Forget),
        ] {
            if list.is_empty() {
                continue;
            }
            match ask(events, kind(TargetsRequest { targets: list })).await {
                None => return,
                Some(mesh_proto::v1::response::Kind::Error(e)) => {
                    tracing::error!("reloading the peer list: {e}");
                }
                Some(_) => {}
            }
        }
        self.peers = args.peers;
        tracing::info!(
            log = args.log,
            ?added,
            ?dropped,
            "reloaded the configuration"
        );
    }
}

/// The password, from MESH_PASSWORD or the password file.
fn password(args: &Args) -> Result<Option<Vec<u8>>> {
    let text = match (&args.password_file, std::env::var("MESH_PASSWORD")) {
        (Some(f), _) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the password file {}", f.display()))?,
        (None, Ok(p)) => p,
        (None, Err(_)) => return Ok(None),
    };
    let p = text.lines().next().unwrap_or("").trim();
    if p.is_empty() {
        bail!("the password is empty; put the mesh password in the file (or MESH_PASSWORD)");
    }
    Ok(Some(p.as_bytes().to_vec()))
}

async fn run(args: Args, mut reload: Reload) -> Result<()> {
    for p in &args.peers {
        agent::validate_target(p)?;
    }
    let name = match &args.name {
        Some(n) => n.clone(),
        None => {
            // A long hostname is cut to what gossip carries (a given --name is checked below).
            let mut h = hostname().context("reading the hostname; pass --name")?;
            let limit = mesh_gossip::Limits::default().max_name_bytes;
            while h.len() > limit {
                h.pop();
            }
            h
        }
    };
    // Our gossip entry must pass every peer's limits, or the mesh would refuse it.
    let limits = mesh_gossip::Limits::default();
    if name.len() > limits.max_name_bytes || name.chars().any(char::is_control) {
        bail!(
            "--name {name:?}: a name has at most {} bytes and no control characters",
            limits.max_name_bytes
        );
    }
    if args.max_connections > limits.max_links {
        bail!(
            "--max-connections {}: at most {} (a peer's gossip entry lists its connections, and \
             peers refuse longer lists)",
            args.max_connections,
            limits.max_links
        );
    }
    let password = password(&args)?;
    let (auth, chain, key, id) = match (&args.ca_cert, password) {
        (Some(_), Some(_)) => bail!("give either a password or certificates, not both"),
        (Some(ca), None) => {
            let (cert, key) = (args.cert.as_ref(), args.key.as_ref());
            let (mode, key) = auth::load_certificates(
                ca,
                cert.context("--cert is required with --ca-cert")?,
                key.context("--key is required with --ca-cert")?,
            )?;
            let AuthMode::Certificates { chain, .. } = &mode else {
                unreachable!("load_certificates returns certificate mode")
            };
            let chain = chain.clone();
            let id = identity::peer_id_of_cert(&chain[0])?;
            (mode, chain, key, id)
        }
        (None, pw) => {
            let mode = match (pw, args.insecure) {
                (Some(p), _) => AuthMode::Password(p),
                (None, true) => AuthMode::Insecure,
                (None, false) => bail!(
                    "no authentication configured: give a password (--password-file FILE or \
                     MESH_PASSWORD) or certificates (--ca-cert, --cert, --key); --insecure \
                     runs without, for labs only"
                ),
            };
            let ident = Identity::load_or_create(&args.state_dir)?;
            (
                mode,
                vec![ident.cert.clone()],
                ident.private_key(),
                ident.id,
            )
        }
    };
    if let Some(target) = &args.probe {
        return match agent::probe(id, name, auth, chain, key, target).await {
            Ok(p) => {
                println!("{target}: joined: peer {} ({})", p.name, p.peer);
                Ok(())
            }
            Err(e) => bail!("{target}: {e:#}"),
        };
    }
    if matches!(auth, AuthMode::Insecure) {
        tracing::warn!(
            "running WITHOUT authentication (--insecure): anyone who can reach {} can join",
            args.listen
        );
    }

    let underlay = match &args.underlay {
        Some(u) => u.clone(),
        None => default_route_interface()?,
    };
    let observe = if args.observe_underlay {
        let mut rx =
            UnderlayRx::load(args.data_port).context("loading the observe-only XDP program")?;
        let veth = tap::is_veth(&underlay).await?;
        rx.attach(&underlay, args.xdp_mode, veth)
            .context("attaching the observe-only XDP program")?;
        Some(rx)
    } else {
        None
    };

    let socket = paths::socket_in(&args.run_dir);
    let listener = local_api::bind(&socket)?;
    // Before the data path changes anything: a socket another process serves stops us here.
    let plugin_socket = match &args.docker_plugin {
        Some(path) => Some(mesh::docker_plugin::bind(path)?),
        None => None,
    };
    let underlay_mtu = tap::underlay_mtu(&underlay).await?;
    let busy_poll = args.busy_poll.window();
    let tap = tap::start(tap::Config {
        bridge: args.bridge.clone(),
        tap: args.tap.clone(),
        data_port: args.data_port,
        underlay_mtu,
        encrypted: !matches!(auth, AuthMode::Insecure),
        busy_poll,
    })
    .context("starting the TAP datapath")?;
    let overlay_mtu = tap.mtu;
    let (kernel, mode) = choose_datapath(&args, &underlay, &tap).await?;
    let attachments =
        mesh::attach::Attachments::open(&args.state_dir, &args.bridge, overlay_mtu, &underlay)
            .await
            .context("restoring the attached namespaces and exposed addresses")?;
    let auth_name = auth.describe();
    let (agent, rx) = Agent::start(agent::Config {
        id,
        name: name.clone(),
        listen: args.listen,
        state_dir: args.state_dir.clone(),
        auth,
        chain,
        key,
        initial_targets: args.peers.clone(),
        max_connections: args.max_connections,
        observe,
        mode: mode.clone(),
        trusted_subnets: args.trusted_subnets.clone(),
        datapath: Some(match kernel {
            Some(k) => Box::new(KernelPath::new(tap::TapDatapath { shared: tap }, k)?),
            None => Box::new(tap::TapDatapath { shared: tap }),
        }),
        data_port: args.data_port,
        offers_aes: args.cipher.offers_aes(),
        notifier: mesh::notify::Notifier::from_env()?,
        attachments: Some(std::sync::Arc::new(attachments)),
        ipam_reclaim_after: args.ipam_reclaim_after.0,
    })?;
    tracing::info!(
        name,
        id = %id,
        listen = %agent.listen_addr(),
        auth = auth_name,
        underlay,
        datapath = mode.name,
        bridge = args.bridge,
        overlay_mtu,
        aes_256_gcm = args.cipher.offers_aes(),
        busy_poll_us = busy_poll.as_micros() as u64,
        socket = %socket.display(),
        "meshd ready"
    );

    let events = agent.events();
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    failing = false;
                    stream
                }
                Err(e) => {
                    // Out of file descriptors (EMFILE) or the like: retrying at once would
                    // spin a core. Say it once, then wait for connections to close.
                    if !failing {
                        tracing::warn!(error = %e, "accepting on the API socket failed; retrying");
                        failing = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let events = events.clone();
            tokio::spawn(async move {
                let _ = local_api::serve_one(stream, |request| async move {
                    ask(&events, request).await.unwrap_or_else(|| {
                        mesh_proto::v1::response::Kind::Error("meshd is stopping".into())
                    })
                })
                .await;
            });
        }
    });

    // After the agent: Docker may ask at once.
    let _plugin = match plugin_socket {
        None => None,
        Some(mut socket) => {
            tracing::info!(socket = %socket.path.display(), "serving Docker as driver and IPAM driver");
            let events = agent.events();
            let task = tokio::spawn(async move {
                mesh::docker_plugin::serve(&mut socket, move |call| {
                    let events = events.clone();
                    async move {
                        let (reply, answer) = oneshot::channel();
                        events
                            .send(Event::Docker { call, reply })
                            .map_err(|_| "meshd is stopping".to_owned())?;
                        answer.await.map_err(|_| "meshd is stopping".to_owned())?
                    }
                })
                .await;
            });
            Some(AbortOnDrop(task))
        }
    };

    if let Some(addr) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-listen {addr}: cannot listen there"))?;
        tracing::info!(%addr, "serving metrics at /metrics");
        let events = agent.events();
        tokio::spawn(mesh::metrics::serve(listener, move || {
            let events = events.clone();
            async move { metrics_snapshot(&events).await }
        }));
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let reload_events = agent.events();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reload.apply(&reload_events).await;
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let (datapath, failure) = agent.run(rx, shutdown).await;
    let _ = std::fs::remove_file(&socket);
    if let Some(why) = failure {
        // Like a crash: pinned kernel state stays (the next meshd adopts it and forwarding
        // between known peers goes on meanwhile), and the exit status says it failed.
        bail!(
            "the data path failed: {why}. meshd exits so that a fresh one is started (systemd:              Restart=on-failure); the peers have stopped sending through this host"
        );
    }
    // A clean stop leaves nothing behind: no pinned program or map, no keeper, no TAP device.
    if let Some(d) = datapath
        && let Err(e) = d.stop()
    {
        tracing::warn!(error = %e, "removing the kernel datapath's pins");
    }
    if mode.name == "ebpf" {
        tap::keeper::stop(&args.run_dir);
        remove_headroom_port(&args).await;
    }
    tracing::info!("meshd stopped");
    Ok(())
}

/// A task stopped when its owner goes (the Docker plugin: its socket is removed with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Asks the agent what `meshctl` would: `None` once the agent is gone (meshd is stopping).
async fn ask(
    events: &tokio::sync::mpsc::UnboundedSender<Event>,
    request: mesh_proto::v1::request::Kind,
) -> Option<mesh_proto::v1::response::Kind> {
    let (reply, answer) = oneshot::channel();
    events.send(Event::Api { request, reply }).ok()?;
    answer.await.ok()
}

/// What a metrics scrape shows, asked of the agent like meshctl asks: status, peers, FDB size.
async fn metrics_snapshot(
    events: &tokio::sync::mpsc::UnboundedSender<Event>,
) -> Option<(mesh_proto::v1::Status, mesh_proto::v1::Peers, usize)> {
    use mesh_proto::v1::{FdbRequest, PeersRequest, StatusRequest, request, response};
    let ask = |request| ask(events, request);
    let Some(response::Kind::Status(status)) = ask(request::Kind::Status(StatusRequest {})).await
    else {
        return None;
    };
    let Some(response::Kind::Peers(peers)) = ask(request::Kind::Peers(PeersRequest {})).await
    else {
        return None;
    };
    let fdb = match ask(request::Kind::Fdb(FdbRequest {})).await {
        Some(response::Kind::Fdb(f)) => f.entries.len(),
        _ => 0,
    };
    Some((status, peers, fdb))
}

/// meshd's command line, its argument definitions with the configuration file's values as
/// their defaults (the TAP keeper, meshd's own child, reads no file: it is started with
/// everything it needs).
fn command_line() -> Result<(clap::Command, Vec<std::ffi::OsString>)> {
    use clap::CommandFactory;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cmd = Args::command();
    if !argv.iter().any(|a| a == "--keep-tap") {
        let given = argv.get(1..).unwrap_or_default();
        if let Some(file) = config_file::path_from(given, std::env::var_os("MESH_CONFIG"))? {
            cmd = config_file::load(cmd, &file)?;
        }
    }
    Ok((cmd, argv))
}

/// The command line over the environment over the configuration file over the defaults;
/// clap's complaint about them ends meshd with its usage text.
fn parse_args() -> Result<Args> {
    use clap::FromArgMatches;
    let (cmd, argv) = command_line()?;
    Ok(Args::from_arg_matches(&cmd.get_matches_from(argv))?)
}

/// [`parse_args`], returning clap's complaint instead of exiting with it (a reload).
fn parse_args_checked() -> Result<Args> {
    use clap::FromArgMatches;
    let (cmd, argv) = command_line()?;
    Ok(Args::from_arg_matches(&cmd.try_get_matches_from(argv)?)?)
}

/// Starts the kernel datapath as `--datapath` asks. `auto` falls back to the TAP datapath (which
/// is already running) with one log line saying why; `ebpf` refuses to start without it.
async fn choose_datapath(
    args: &Args,
    underlay: &str,
    tap: &tap::Shared,
) -> Result<(Option<KernelDatapath>, agent::DatapathMode)> {
    let mode = |name, reason: String| agent::DatapathMode {
        name,
        fallback_reason: reason,
        underlay: underlay.to_owned(),
    };
    if args.datapath == DatapathChoice::Tap {
        forget_kernel_state(args).await;
        return Ok((None, mode("tap", String::new())));
    }
    let pin_dir = pin_dir(args);
    let started = datapath::interface_ipv4(underlay).and_then(|ip| {
        let mac = datapath::neigh::interface_mac(underlay)
            .ok_or_else(|| datapath::DatapathError::NoInterface(underlay.to_owned()))?;
        KernelDatapath::start(HostConfig {
            pin_dir: pin_dir.clone(),
            underlay: underlay.to_owned(),
            underlay_ipv4: ip,
            underlay_mac: mac,
            bridge_port: tap.tap_name.clone(),
            data_port: args.data_port,
            overlay_mtu: tap.mtu,
        })
    });
    match (started, args.datapath) {
        (Ok(k), _) => {
            if k.adopted() {
                tracing::info!("adopted the kernel datapath of an earlier run; forwarding went on");
            }
            // The TAP device must outlive this process for the pinned programs to go on.
            if pin_dir.is_some()
                && let Err(e) = tap::keeper::ensure(&tap.tap_name, &args.run_dir)
            {
                tracing::warn!(error = %e, "no TAP keeper: forwarding stops while meshd is down");
            }
            let port = tap::device::headroom_port_name(&tap.tap_name);
            if let Err(e) = tap::device::add_headroom_port(&tap.bridge, &port).await {
                // Only an optimisation: without it small packets are copied once more.
                tracing::info!(error = %format!("{e:#}"), "no headroom port on the bridge");
            }
            Ok((Some(k), mode("ebpf", String::new())))
        }
        (Err(e), DatapathChoice::Ebpf) => Err(anyhow::Error::new(e).context(
            "starting the kernel datapath (--datapath ebpf); --datapath tap runs without BPF",
        )),
        (Err(e), _) => {
            // The whole chain: the cause (EPERM, ENOSYS, ...) is at its end.
            let reason = format!("{:#}", anyhow::Error::new(e));
            tracing::warn!(
                reason,
                "kernel datapath unavailable; using the TAP datapath"
            );
            forget_kernel_state(args).await;
            Ok((None, mode("tap", reason)))
        }
    }
}

/// The pin directory: `--bpf-dir`, else one under /sys/fs/bpf/mesh named after the state dir.
/// `None` (with a warning) where that is not on a bpffs.
fn pin_dir(args: &Args) -> Option<PathBuf> {
    let dir = args
        .bpf_dir
        .clone()
        .unwrap_or_else(|| default_pin_dir(&args.state_dir));
    if !datapath::on_bpffs(&dir) {
        // `ip netns exec` remounts /sys, hiding the host's bpffs: pass --bpf-dir there.
        tracing::warn!(
            dir = %dir.display(),
            "not on a bpffs (mount -t bpf bpf /sys/fs/bpf, or pass --bpf-dir): the kernel \
             datapath is not pinned and stops with meshd"
        );
        return None;
    }
    Some(dir)
}

/// In TAP mode, removes what an earlier kernel-datapath run of this instance left (its pinned
/// programs would go on forwarding beside meshd, from stale maps) and stops its keeper. Only
/// files are removed (and the headroom port): no BPF system call is needed.
async fn forget_kernel_state(args: &Args) {
    let dir = args
        .bpf_dir
        .clone()
        .unwrap_or_else(|| default_pin_dir(&args.state_dir));
    if dir.exists() {
        match datapath::kernel::remove_pins(&dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "removed the kernel datapath an earlier run left")
            }
            Err(e) => {
                tracing::warn!(error = %e, "removing the kernel datapath an earlier run left")
            }
        }
    }
    tap::keeper::stop(&args.run_dir);
    remove_headroom_port(args).await;
}

/// Removes the bridge's headroom port the kernel datapath added (see
/// `tap::device::add_headroom_port`), if any.
async fn remove_headroom_port(args: &Args) {
    let port = tap::device::headroom_port_name(&args.tap);
    if let Err(e) = tap::device::remove_headroom_port(&port).await {
        tracing::warn!(error = %format!("{e:#}"), "removing the bridge's headroom port");
    }
}

/// /sys/fs/bpf/mesh/<the first 8 bytes of SHA-256 of the canonical state dir, in hex>.
fn default_pin_dir(state_dir: &std::path::Path) -> PathBuf {
    use sha2::Digest;
    let state = std::fs::canonicalize(state_dir).unwrap_or(state_dir.to_owned());
    let hash = sha2::Sha256::digest(state.as_os_str().as_encoded_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    PathBuf::from("/sys/fs/bpf/mesh").join(hex)
}

/// `meshd --cleanup`: removes what a crashed instance left in the kernel.
fn cleanup(args: &Args) -> Result<()> {
    let socket = paths::socket_in(&args.run_dir);
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        bail!(
            "a meshd is running on {} (stop it: a clean stop removes everything itself)",
            socket.display()
        );
    }
    if let Some(dir) = pin_dir(args) {
        datapath::kernel::remove_pins(&dir)
            .with_context(|| format!("removing the pins in {}", dir.display()))?;
        println!("removed the kernel datapath pinned in {}", dir.display());
    }
    tap::keeper::stop(&args.run_dir);
    println!("stopped the TAP keeper (the TAP device goes with it)");
    let port = tap::device::headroom_port_name(&args.tap);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for rtnetlink")?
        .block_on(tap::device::remove_headroom_port(&port))?;
    Ok(())
}

fn hostname() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_owned())
}

/// The interface of the IPv4 default route, from /proc/net/route (which follows the network
/// namespace meshd runs in).
fn default_route_interface() -> Result<String> {
    let table = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?, f.nth(5)?))
        })
        .find(|(_, dest, mask)| *dest == "00000000" && *mask == "00000000")
        .map(|(iface, _, _)| iface.to_owned())
        .context("no IPv4 default route to pick the underlay interface from; pass --underlay IFACE")
}
