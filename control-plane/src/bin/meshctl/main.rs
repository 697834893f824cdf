//! meshctl: the operator's CLI for a running meshd.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use mesh::{local_api, paths};
use mesh_proto::v1::{
    AttachRequest, AttachmentsRequest, ExposeRequest, FdbRequest, IpamRequest, NetworkRequest,
    NetworksRequest, PeersRequest, PingRequest, RoutesRequest, StatusRequest, TargetsRequest,
    attach_request, request, response,
};

mod attachments;
mod health;
mod ipam;
mod networks;
mod ping;
mod view;

#[derive(Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Inspect and control a running meshd"
)]
struct Cli {
    /// meshd's API socket (each instance has its own, under its --run-dir).
    #[arg(long, env = "MESH_SOCKET", default_value_os_t = paths::default_socket())]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// This node: name, id, listen address, authentication, peers by state, datapath, and
    /// health checks that say what is wrong and why.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// One line (OK / WARNING / CRITICAL and what is wrong), exit status 0 / 1 / 2: for
        /// monitoring. meshd not answering is CRITICAL too.
        #[arg(long, conflicts_with = "json")]
        brief: bool,
    },
    /// Every known peer: state, next hop, RTT, addresses.
    Peers {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Unicast next hops and this node's part of every broadcast tree.
    Routes {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The MAC table: which peer each learned MAC address lives behind.
    Fdb {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send echo requests to PEER through the data path (the UDP path data frames take: the
    /// same addresses, NAT mappings, relays and seals) and report the round-trip time, the
    /// loss, and the path taken both ways: direct, or via which peers. meshd answers the
    /// echoes on each host, also on the kernel datapath. Exit status 1 when no reply came.
    Ping {
        /// The peer's name, or its id (or a unique start of it).
        peer: String,
        /// How many requests.
        #[arg(short = 'c', long, default_value_t = 5)]
        count: u32,
        /// Seconds between requests (at least 0.01).
        #[arg(short = 'i', long, default_value_t = 0.2)]
        interval: f64,
        /// Seconds to wait for replies after the last request.
        #[arg(short = 'W', long, default_value_t = 1.0)]
        wait: f64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Plug a network namespace (a container's) into the mesh bridge: a veth pair, one end
    /// inside named IFNAME with the overlay MTU and the given addresses, the other on the
    /// bridge. meshd remembers it across restarts.
    Attach {
        #[command(flatten)]
        namespace: Namespace,
        /// The interface inside the namespace.
        #[arg(long, default_value = mesh::attach::DEFAULT_IFNAME)]
        ifname: String,
        /// The network (`meshctl network ls`): its addresses must be in its subnet.
        #[arg(long, default_value = "default")]
        network: String,
        /// Addresses for it, e.g. 10.32.0.5/16 (the prefix gives the route to the subnet).
        /// None on a named network: one is allocated from the network's range, unique across
        /// the mesh. The default network needs them given.
        #[arg(value_name = "CIDR")]
        cidrs: Vec<String>,
    },
    /// Unplug what `attach` plugged in (the interface disappears from the namespace).
    Detach {
        #[command(flatten)]
        namespace: Namespace,
        #[arg(long, default_value = mesh::attach::DEFAULT_IFNAME)]
        ifname: String,
    },
    /// Give this host an address on the mesh (on the bridge), to reach containers from it.
    /// Refused for a subnet holding the underlay's or a peer's address: that would route the
    /// tunnels into themselves.
    Expose {
        #[arg(required = true, value_name = "CIDR")]
        cidrs: Vec<String>,
    },
    /// Take exposed addresses off the bridge (all of them when none is given).
    Hide {
        #[arg(value_name = "CIDR")]
        cidrs: Vec<String>,
    },
    /// What is attached and exposed.
    Attachments {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create the mesh bridge with the overlay MTU without meshd, so a container runtime can
    /// use it first (`dockerd --bridge=mesh --fixed-cidr=... --mtu=1422`); meshd adopts it
    /// when it starts.
    CreateBridge {
        #[arg(long, default_value = "mesh")]
        bridge: String,
        /// The overlay MTU: 1422 fits a 1500-byte underlay with encryption, 1450 without.
        #[arg(long, default_value_t = 1422)]
        mtu: u32,
        /// This host's address on the bridge (Docker's containers' gateway), e.g.
        /// 10.32.0.1/16: Docker wants one on a bridge it is given.
        #[arg(long, value_name = "CIDR")]
        address: Option<String>,
    },
    /// The address allocator of named networks: who owns which part of each range, free
    /// space per host, owners out of reach.
    Ipam {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<IpamCommand>,
    },
    /// The mesh's named networks: create one on any host and every host knows it.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Connect to peers (host[:port]) now and remember them across restarts.
    Connect {
        #[arg(required = true, value_name = "PEER")]
        peers: Vec<String>,
    },
    /// Stop connecting to peers (as given to meshd or `connect`) and forget them.
    Forget {
        #[arg(required = true, value_name = "PEER")]
        peers: Vec<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) for meshctl.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print meshctl's manual page (roff), as the package installs it.
    #[command(hide = true)]
    Manual,
}

#[derive(Subcommand)]
enum IpamCommand {
    /// Declare PEER gone for good (a host that will not come back): its address space goes to
    /// its heir once every living member has heard. Refused while PEER is reachable: a live
    /// peer's addresses stay its own.
    Reclaim {
        #[arg(value_name = "PEER")]
        peer: String,
    },
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// Make a network known to every host (gossiped, kept across restarts).
    Create {
        name: String,
        /// Its IPv4 subnet, e.g. 10.40.0.0/16 (networks may share a subnet).
        #[arg(long)]
        subnet: String,
    },
    /// Every network: name, subnet, id, the host that created it.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a network this host created.
    Rm { name: String },
}

/// Which network namespace: exactly one of these.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct Target {
    /// A namespace file: /var/run/netns/NAME (`ip netns`), /proc/PID/ns/net, ...
    #[arg(long, value_name = "PATH")]
    netns: Option<String>,
    /// A process whose network namespace it is.
    #[arg(long)]
    pid: Option<u32>,
    /// A running Docker container (id or name), looked up through the Docker API.
    #[arg(long, value_name = "ID")]
    container: Option<String>,
}

/// A namespace, and where Docker answers when it is a container's.
#[derive(clap::Args)]
struct Namespace {
    #[command(flatten)]
    target: Target,
    /// Docker's API socket, for --container (meshd opens it).
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    docker_host: String,
}

impl Namespace {
    fn request(self, ifname: String, cidrs: Vec<String>) -> AttachRequest {
        let (t, docker_host) = (self.target, self.docker_host);
        AttachRequest {
            target: Some(match (t.netns, t.pid, t.container) {
                (Some(p), _, _) => attach_request::Target::Netns(p),
                (None, Some(pid), _) => attach_request::Target::Pid(pid),
                (None, None, Some(c)) => attach_request::Target::Container(c),
                (None, None, None) => unreachable!("clap requires one"),
            }),
            ifname,
            cidrs,
            docker_host: docker_host
                .strip_prefix("unix://")
                .unwrap_or(&docker_host)
                .to_owned(),
            owner: String::new(),
            network: String::new(),
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let call = |kind| local_api::call(&cli.socket, kind);
    match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "meshctl",
                &mut std::io::stdout(),
            );
        }
        Command::Manual => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
        }
        Command::Status { json, brief } => {
            let asked = (|| -> Result<_> {
                let s = call(request::Kind::Status(StatusRequest {}))?;
                let p = call(request::Kind::Peers(PeersRequest {}))?;
                match (s, p) {
                    (response::Kind::Status(s), response::Kind::Peers(p)) => Ok((s, p)),
                    other => bail!("unexpected answer from meshd: {other:?}"),
                }
            })();
            let (s, p) = match asked {
                Ok(sp) => sp,
                Err(e) if brief => {
                    println!("CRITICAL: meshd does not answer: {e:#}");
                    std::process::exit(health::Level::Critical.exit_code());
                }
                Err(e) => return Err(e),
            };
            let checks = health::checks(&s, &p);
            if brief {
                println!("{}", health::brief(&s, &checks));
                std::process::exit(health::overall(&checks).exit_code());
            } else if json {
                view::print_json(&view::status_json_with_health(&s, &checks));
            } else {
                view::print_status(&s);
                view::print_health(&checks);
            }
        }
        Command::Peers { json } => match call(request::Kind::Peers(PeersRequest {}))? {
            response::Kind::Peers(p) if json => view::print_json(&view::peers_json(&p)),
            response::Kind::Peers(p) => view::print_peers(&p),
            other => bail!("unexpected answer from meshd: {other:?}"),
        },
        Command::Routes { json } => match call(request::Kind::Routes(RoutesRequest {}))? {
            response::Kind::Routes(r) if json => view::print_json(&view::routes_json(&r)),
            response::Kind::Routes(r) => view::print_routes(&r),
            other => bail!("unexpected answer from meshd: {other:?}"),
        },
        Command::Fdb { json } => match call(request::Kind::Fdb(FdbRequest {}))? {
            response::Kind::Fdb(f) if json => view::print_json(&view::fdb_json(&f)),
            response::Kind::Fdb(f) => view::print_fdb(&f),
            other => bail!("unexpected answer from meshd: {other:?}"),
        },
        Command::Ping {
            peer,
            count,
            interval,
            wait,
            json,
        } => {
            if !(0.01..=60.0).contains(&interval) || !(0.0..=10.0).contains(&wait) {
                bail!("--interval must be 0.01 to 60 seconds and --wait 0 to 10");
            }
            if !(1..=1000).contains(&count) {
                bail!("--count must be 1 to 1000");
            }
            let request = request::Kind::Ping(PingRequest {
                peer,
                count,
                interval_ms: (interval * 1000.0) as u32,
                wait_ms: (wait * 1000.0) as u32,
            });
            let takes =
                std::time::Duration::from_secs_f64(interval * f64::from(count) + wait + 5.0);
            match local_api::call_within(&cli.socket, request, takes)? {
                response::Kind::Ping(p) => {
                    if json {
                        view::print_json(&ping::json(&p));
                    } else {
                        ping::print(&p);
                    }
                    if p.replies.is_empty() {
                        std::process::exit(1);
                    }
                }
                other => bail!("unexpected answer from meshd: {other:?}"),
            }
        }
        Command::Attach {
            namespace,
            ifname,
            network,
            cidrs,
        } => attachments::print(call(request::Kind::Attach(AttachRequest {
            network,
            ..namespace.request(ifname, cidrs)
        }))?)?,
        Command::Detach { namespace, ifname } => attachments::print(call(request::Kind::Detach(
            namespace.request(ifname, Vec::new()),
        ))?)?,
        Command::Expose { cidrs } => {
            attachments::print(call(request::Kind::Expose(ExposeRequest { cidrs }))?)?
        }
        Command::Hide { cidrs } => {
            attachments::print(call(request::Kind::Hide(ExposeRequest { cidrs }))?)?
        }
        Command::Attachments { json } => {
            match call(request::Kind::Attachments(AttachmentsRequest {}))? {
                response::Kind::Attachments(a) if json => view::print_json(&attachments::json(&a)),
                other => attachments::print(other)?,
            }
        }
        Command::CreateBridge {
            bridge,
            mtu,
            address,
        } => {
            if !(1280..=65535).contains(&mtu) {
                bail!("--mtu must be 1280 to 65535");
            }
            let address = match address {
                Some(a) => {
                    Some(mesh::attach::record::parse_cidrs(&[a]).map_err(anyhow::Error::msg)?[0])
                }
                None => None,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let created = rt.block_on(mesh::attach::create_bridge(&bridge, mtu, address))?;
            println!(
                "bridge {bridge} {} with MTU {mtu}; meshd adopts it when it starts",
                if created { "created" } else { "exists" }
            );
        }
        Command::Network(n) => {
            let (kind, json) = match n {
                NetworkCommand::Create { name, subnet } => (
                    request::Kind::NetworkCreate(NetworkRequest { name, subnet }),
                    false,
                ),
                NetworkCommand::Ls { json } => (request::Kind::Networks(NetworksRequest {}), json),
                NetworkCommand::Rm { name } => (
                    request::Kind::NetworkRm(NetworkRequest {
                        name,
                        subnet: String::new(),
                    }),
                    false,
                ),
            };
            match call(kind)? {
                response::Kind::Networks(n) if json => view::print_json(&networks::json(&n)),
                response::Kind::Networks(n) => networks::print(&n),
                other => bail!("unexpected answer from meshd: {other:?}"),
            }
        }
        Command::Ipam { json, action } => match call(request::Kind::Ipam(IpamRequest {
            reclaim: match action {
                Some(IpamCommand::Reclaim { peer }) => peer,
                None => String::new(),
            },
        }))? {
            response::Kind::Ipam(v) if json => view::print_json(&ipam::json(&v)),
            response::Kind::Ipam(v) => ipam::print(&v),
            other => bail!("unexpected answer from meshd: {other:?}"),
        },
        Command::Connect { peers } => {
            match call(request::Kind::Connect(TargetsRequest { targets: peers }))? {
                response::Kind::Done(text) => println!("{text}"),
                other => bail!("unexpected answer from meshd: {other:?}"),
            }
        }
        Command::Forget { peers } => {
            match call(request::Kind::Forget(TargetsRequest { targets: peers }))? {
                response::Kind::Done(text) => println!("{text}"),
                other => bail!("unexpected answer from meshd: {other:?}"),
            }
        }
    }
    Ok(())
}
