//! meshctl: the operator's CLI for a running meshd.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use mesh::{local_api, paths};
use mesh_proto::v1::{
    FdbRequest, PeersRequest, RoutesRequest, StatusRequest, TargetsRequest, request, response,
};

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
    /// This node: name, id, listen address, authentication, peers by state, datapath.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
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
        Command::Status { json } => match call(request::Kind::Status(StatusRequest {}))? {
            response::Kind::Status(s) if json => view::print_json(&view::status_json(&s)),
            response::Kind::Status(s) => view::print_status(&s),
            other => bail!("unexpected answer from meshd: {other:?}"),
        },
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
