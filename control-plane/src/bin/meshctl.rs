//! meshctl: the operator's CLI for a running meshd.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use mesh::{local_api, paths};
use mesh_proto::v1::{Status, StatusRequest, request, response};

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
    /// Show this node: name, version, datapath and its counters.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Status { json } => {
            let status =
                match local_api::call(&cli.socket, request::Kind::Status(StatusRequest {}))? {
                    response::Kind::Status(s) => s,
                    other => bail!("meshd answered a status request with {other:?}"),
                };
            if json {
                println!("{}", serde_json::to_string_pretty(&status_json(&status))?);
            } else {
                print_status(&status);
            }
        }
    }
    Ok(())
}

fn status_json(s: &Status) -> serde_json::Value {
    let dp = s.datapath.clone().unwrap_or_default();
    serde_json::json!({
        "name": s.name,
        "version": s.version,
        "uptime_seconds": s.uptime_seconds,
        "datapath": {
            "mode": dp.mode,
            "underlay_interface": dp.underlay_interface,
            "xdp_mode": dp.xdp_mode,
            "data_port": dp.data_port,
            "underlay_counters": dp.underlay_counters.iter()
                .map(|c| (c.name.clone(), serde_json::Value::from(c.value)))
                .collect::<serde_json::Map<_, _>>(),
        },
    })
}

fn print_status(s: &Status) {
    let dp = s.datapath.clone().unwrap_or_default();
    println!("name       {}", s.name);
    println!("version    {}", s.version);
    println!("uptime     {}s", s.uptime_seconds);
    println!(
        "datapath   {} on {} (XDP {} mode), data port {}",
        dp.mode, dp.underlay_interface, dp.xdp_mode, dp.data_port
    );
    if dp.mode == "xdp-observe" {
        println!(
            "           the kernel program classifies and counts underlay traffic; forwarding is not built yet"
        );
    }
    println!("underlay counters");
    for c in &dp.underlay_counters {
        println!("  {:<16} {}", c.name, c.value);
    }
}
