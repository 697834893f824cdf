//! `cargo xtask demo`: a local mesh in network namespaces.
//!
//! Three hosts on a shared underlay, one container on each, meshd on every host. It shows what
//! exists today, and says plainly what does not: meshd observes and counts underlay traffic in
//! the kernel, but peering and forwarding between hosts are not built yet.

use std::{io::BufRead, net::UdpSocket, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use mesh_common::DEFAULT_DATA_PORT;
use mesh_tests::{Lab, bins, netns, wait_until};

use crate::cmd::{cargo, exec};

#[derive(clap::Args)]
pub struct Args {
    /// Keep the lab running until Enter is pressed, to poke at it by hand.
    #[arg(long)]
    hold: bool,
}

pub fn run(args: Args) -> Result<()> {
    exec(cargo().args(["build", "--quiet", "--bins"]))?;
    let meshd = bins::path("meshd")?;
    let meshctl = bins::path("meshctl")?;

    let mut lab = Lab::new("demo")?;
    println!("== building the lab (namespaces prefixed {})", lab.id());
    let mut nodes = Vec::new();
    for i in 1..=3u8 {
        let host = lab.add_host(&format!("h{i}"))?;
        let c = lab.add_container(&host, &format!("c{i}"), Some(&format!("10.40.0.{i}/24")))?;
        println!(
            "   host {} underlay {} ({}), container {} 10.40.0.{i}",
            host.name, host.addr, host.ns, c.ns
        );
        nodes.push((host, c));
    }

    println!("== starting meshd on every host");
    let mut sockets = Vec::new();
    for (host, _) in &nodes {
        let run_dir = lab.dir().join(format!("{}-run", host.name));
        let run_dir_s = run_dir.to_str().context("lab dir is not UTF-8")?.to_owned();
        let id = lab.spawn(
            &host.ns,
            &meshd,
            &[
                "--underlay",
                &host.underlay_if,
                "--run-dir",
                &run_dir_s,
                "--name",
                &host.name,
            ],
        )?;
        let socket = run_dir.join("meshd.sock");
        if !wait_until(Duration::from_secs(10), || meshctl_ok(&meshctl, &socket)) {
            bail!(
                "meshd on {} did not start; its log:\n{}",
                host.name,
                lab.log(id)
            );
        }
        sockets.push(socket);
    }

    println!("== underlay traffic: pings between hosts, 10 datagrams to each peer's data port");
    for (a, _) in &nodes {
        for (b, _) in &nodes {
            if a.name == b.name {
                continue;
            }
            let ok = lab.ping(&a.ns, b.addr, 1)?;
            let (src, dst) = (a.addr, b.addr);
            netns::run_in(&a.ns, move || -> std::io::Result<()> {
                let s = UdpSocket::bind((src, 0))?;
                for _ in 0..10 {
                    s.send_to(b"demo", (dst, DEFAULT_DATA_PORT))?;
                }
                Ok(())
            })??;
            println!(
                "   {} -> {}: ping {}",
                a.name,
                b.name,
                if ok { "ok" } else { "FAILED" }
            );
        }
    }
    std::thread::sleep(Duration::from_millis(200));

    for ((host, _), socket) in nodes.iter().zip(&sockets) {
        println!("\n== meshctl status on {}", host.name);
        exec(
            Command::new(&meshctl)
                .arg("--socket")
                .arg(socket)
                .arg("status"),
        )?;
    }

    let (c1, c2) = (&nodes[0].1, &nodes[1].1);
    let crosses = lab.ping(&c1.ns, c2.addr.context("c2 has an address")?, 1)?;
    println!(
        "\n== container c1 (on h1) -> c2 (on h2): {}",
        if crosses {
            "reachable"
        } else {
            "not reachable"
        }
    );
    println!(
        "   What exists: the eBPF build, meshd loading and attaching its XDP program, the local \
         API and `meshctl status`, and this lab.\n   Not built yet: peering between meshd \
         instances and forwarding frames between hosts, so containers on different hosts do \
         not reach each other yet."
    );

    if args.hold {
        println!("\nThe lab stays up. Try for example:");
        println!(
            "   ip netns exec {} ping {}",
            nodes[0].0.ns, nodes[1].0.addr
        );
        println!(
            "   {} --socket {} status",
            meshctl.display(),
            sockets[0].display()
        );
        println!("Press Enter to tear it down.");
        let _ = std::io::stdin().lock().lines().next();
    }
    println!("== tearing down");
    drop(lab);
    Ok(())
}

fn meshctl_ok(meshctl: &Path, socket: &Path) -> bool {
    Command::new(meshctl)
        .arg("--socket")
        .arg(socket)
        .arg("status")
        .output()
        .is_ok_and(|o| o.status.success())
}
