//! meshd: the mesh agent.
//!
//! Today it loads mesh's eBPF object, attaches the underlay receive program (which classifies and
//! counts underlay traffic) and serves the local API that `meshctl status` reads. Peering and
//! forwarding arrive with the control-plane and data-path issues.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context, Result};
use clap::Parser;
use mesh::{
    datapath::{UnderlayRx, XdpAttachMode},
    local_api, paths,
};
use mesh_common::DEFAULT_DATA_PORT;
use mesh_proto::v1::{Counter, Datapath, Status, request, response};

#[derive(Parser)]
#[command(
    name = "meshd",
    version,
    about = "mesh agent: one virtual Ethernet switch across hosts",
    long_about = "mesh agent: one virtual Ethernet switch across hosts.\n\n\
        meshd attaches mesh's eBPF datapath to the underlay interface and serves the local API \
        that meshctl talks to. Every option can also be set through the environment variable \
        shown next to it."
)]
struct Args {
    /// Underlay interface (the NIC that carries mesh traffic between hosts). Default: the
    /// interface of the IPv4 default route.
    #[arg(long, env = "MESH_UNDERLAY", value_name = "IFACE")]
    underlay: Option<String>,
    /// UDP port of the mesh data plane.
    #[arg(long, env = "MESH_DATA_PORT", default_value_t = DEFAULT_DATA_PORT)]
    data_port: u16,
    /// XDP hook: native driver mode, generic skb mode, or auto (driver, else skb).
    #[arg(long, env = "MESH_XDP_MODE", value_enum, default_value_t = XdpAttachMode::Auto)]
    xdp_mode: XdpAttachMode,
    /// Directory for runtime files (the API socket). Give each instance on a machine its own.
    #[arg(long, env = "MESH_RUN_DIR", default_value = paths::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// This node's name. Default: the hostname.
    #[arg(long, env = "MESH_NAME")]
    name: Option<String>,
}

struct Agent {
    name: String,
    started: Instant,
    datapath: Mutex<UnderlayRx>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let name = match args.name {
        Some(n) => n,
        None => hostname().context("reading the hostname; pass --name")?,
    };
    let underlay = match args.underlay {
        Some(u) => u,
        None => default_route_interface()?,
    };

    let mut datapath = UnderlayRx::load(args.data_port).context("loading the eBPF datapath")?;
    let mode = datapath
        .attach(&underlay, args.xdp_mode)
        .context("attaching the underlay receive program")?;
    let socket = paths::socket_in(&args.run_dir);
    let listener = local_api::bind(&socket)?;
    tracing::info!(
        name,
        underlay,
        xdp_mode = mode.as_str(),
        data_port = args.data_port,
        socket = %socket.display(),
        "meshd ready"
    );

    let agent = Arc::new(Agent {
        name,
        started: Instant::now(),
        datapath: Mutex::new(datapath),
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => { tracing::warn!(error = %e, "accepting an API connection"); continue; }
                };
                let agent = agent.clone();
                tokio::spawn(async move {
                    if let Err(e) = local_api::serve_one(stream, |req| agent.answer(req)).await {
                        tracing::debug!(error = %e, "API connection ended early");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    tracing::info!("meshd stopping");
    // Only remove the socket if it is still ours (a second instance may have been pointed here).
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

impl Agent {
    fn answer(&self, req: request::Kind) -> response::Kind {
        match req {
            request::Kind::Status(_) => match self.status() {
                Ok(s) => response::Kind::Status(s),
                Err(e) => response::Kind::Error(format!("{e:#}")),
            },
        }
    }

    fn status(&self) -> Result<Status> {
        let dp = self.datapath.lock().expect("datapath lock poisoned");
        let counters = dp.counters()?;
        let (iface, mode) = dp.attachment().context("datapath not attached")?;
        Ok(Status {
            name: self.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.started.elapsed().as_secs(),
            datapath: Some(Datapath {
                mode: "xdp-observe".into(),
                underlay_interface: iface.into(),
                xdp_mode: mode.as_str().into(),
                data_port: dp.data_port().into(),
                underlay_counters: counters
                    .iter()
                    .map(|(name, value)| Counter {
                        name: name.into(),
                        value,
                    })
                    .collect(),
            }),
        })
    }
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
