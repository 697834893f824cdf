//! `cargo xtask demo`: a local mesh in network namespaces.
//!
//! Three hosts on a shared underlay, one container on each, meshd on every host (each told
//! about one other only, with a shared password). The meshd instances find each other, agree
//! on the topology and routes, and switch the containers' frames (sealed, through meshd). Then
//! the same hosts run on plaintext links, where the kernel datapath carries the frames. The
//! demo says plainly what is not built yet.

use std::{io::BufRead, net::UdpSocket, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use mesh_common::DEFAULT_DATA_PORT;
use mesh_tests::{
    Lab, bins,
    mesh::{Meshd, full_mesh},
    netns, wait_until,
};

use crate::cmd::{cargo, exec};

#[derive(clap::Args)]
pub struct Args {
    /// Keep the lab running until Enter is pressed, to poke at it by hand.
    #[arg(long)]
    hold: bool,
}

pub fn run(args: Args) -> Result<()> {
    exec(cargo().args(["build", "--quiet", "--bins"]))?;
    bins::path("meshd")?; // fail early, with the hint, if the build did not produce it
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

    println!(
        "== starting meshd on every host (h1 first; each later one knows only the one before)"
    );
    let password = lab.password_file("demo", "demo password")?;
    let password = password
        .to_str()
        .context("lab dir is not UTF-8")?
        .to_owned();
    let mut daemons: Vec<Meshd> = Vec::new();
    for (i, (host, _)) in nodes.iter().enumerate() {
        let mut args = vec!["--password-file".to_string(), password.clone()];
        if i > 0 {
            args.push(nodes[i - 1].0.addr.to_string());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        daemons.push(lab.start_meshd(host, &refs)?);
    }
    let t0 = std::time::Instant::now();
    let meshed = wait_until(Duration::from_secs(10), || full_mesh(&daemons));
    if !meshed {
        bail!("the meshd instances did not find each other within 10 s");
    }
    println!("   full mesh after {:?}", t0.elapsed());
    let sockets: Vec<_> = daemons.iter().map(|d| d.socket.clone()).collect();

    println!(
        "== underlay traffic: pings between hosts, 10 stray datagrams to each peer's data port \
         (dropped and counted: not mesh frames)"
    );
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

    println!("\n== containers across hosts (through meshd's TAP datapath)");
    for (a_host, a) in &nodes {
        for (b_host, b) in &nodes {
            if a.name == b.name {
                continue;
            }
            let addr = b.addr.context("containers have addresses")?;
            let ok = wait_until(Duration::from_secs(3), || {
                lab.ping(&a.ns, addr, 1).unwrap_or(false)
            });
            println!(
                "   {} (on {}) -> {} (on {}): {}",
                a.name,
                a_host.name,
                b.name,
                b_host.name,
                if ok { "ok" } else { "FAILED" }
            );
        }
    }
    let show = |what: &str, socket: &std::path::Path| {
        exec(Command::new(&meshctl).arg("--socket").arg(socket).arg(what))
    };
    // After the container traffic, so the peer tables show it (encrypted, per-link counts).
    for ((host, _), socket) in nodes.iter().zip(&sockets) {
        println!("\n== meshctl peers on {}", host.name);
        show("peers", socket)?;
    }
    println!("\n== meshctl routes on h1");
    show("routes", &sockets[0])?;
    println!("\n== meshctl status on h1");
    show("status", &sockets[0])?;

    println!(
        "\n== the same hosts on plaintext links (--insecure): the kernel datapath carries the \
         frames"
    );
    for d in &daemons {
        lab.terminate(d.proc, Duration::from_secs(5))?;
    }
    let mut plain: Vec<Meshd> = Vec::new();
    for (i, (host, _)) in nodes.iter().enumerate() {
        let mut args = vec!["--insecure".to_string(), "--datapath".into(), "ebpf".into()];
        if i > 0 {
            args.push(nodes[i - 1].0.addr.to_string());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        plain.push(lab.start_meshd(host, &refs)?);
    }
    if !wait_until(Duration::from_secs(10), || full_mesh(&plain)) {
        bail!("the plaintext meshd instances did not find each other within 10 s");
    }
    let (c1, c3) = (&nodes[0].1, &nodes[2].1);
    let addr = c3.addr.context("containers have addresses")?;
    let ok = wait_until(Duration::from_secs(5), || {
        lab.ping(&c1.ns, addr, 1).unwrap_or(false)
    });
    println!(
        "   {} -> {}: {}",
        c1.name,
        c3.name,
        if ok { "ok" } else { "FAILED" }
    );
    let target = addr.to_string();
    mesh_tests::mesh::tcp_transfer(&mut lab, c1, c3, (&target, &target), "64M")?;
    println!("   64 MiB over TCP from {} to {}: ok", c1.name, c3.name);
    println!("\n== meshctl peers on h1 (DATAPATH kernel: frames go through the eBPF programs)");
    show("peers", &plain[0].socket)?;
    let k = |name: &str| mesh_tests::mesh::kernel_counter(&plain[0], name);
    println!(
        "   h1's kernel sent {} frames ({} of them GSO super-frames, {} straight from a \
         container's port), delivered {}, flooded {} of its own broadcasts and passed on {} of \
         others', and left {} floods to meshd",
        k("kernel_tx_sent"),
        k("kernel_tx_gso"),
        k("kernel_tx_from_port"),
        k("kernel_rx_delivered"),
        k("kernel_tx_flooded"),
        k("kernel_rx_flooded"),
        k("kernel_tx_flood_to_meshd")
    );

    println!("\n== meshctl ping h3 on h1: echoes through the data path, RTT, loss and the way");
    exec(
        Command::new(&meshctl)
            .arg("--socket")
            .arg(&plain[0].socket)
            .args(["ping", "h3", "-c", "3"]),
    )?;

    println!("\n== meshctl attach on h1: a namespace with nothing in it joins the mesh");
    let bare = lab.add_bare_netns("app")?;
    let netns = format!("/var/run/netns/{bare}");
    exec(
        Command::new(&meshctl)
            .arg("--socket")
            .arg(&plain[0].socket)
            .args(["attach", "--netns", &netns, "10.40.0.50/24"]),
    )?;
    let reached = wait_until(Duration::from_secs(10), || {
        lab.ping(&bare, addr, 1).unwrap_or(false)
    });
    println!(
        "   {bare} (10.40.0.50, attached) -> {} ({addr}): {}",
        c3.name,
        if reached { "ok" } else { "FAILED" }
    );

    println!(
        "\n   What exists: meshd instances that authenticate each other (password, SPAKE2 over \
         QUIC), gossip signed topology entries and compute routes; the kernel datapath (Rust eBPF \
         at TC: encapsulation with GSO kept, at the container's port before the bridge, \
         decapsulation, relaying, floods along the broadcast trees, a bounded kernel FDB; \
         pinned, so it survives a meshd restart) for plaintext links (--insecure, or \
         --trusted-subnets both ways); the TAP datapath for everything else (sealed links, \
         hosts without BPF), which seals every frame (AES-256-GCM where both ends have AES \
         hardware, ChaCha20-Poly1305 elsewhere; per-link keys), answers oversize packets with \
         ICMP, probes each link's MTU, and batches TCP; meshctl with health checks and ping; \
         containers on the mesh (meshctl attach by namespace, pid or Docker container, expose, \
         create-bridge for dockerd, the mesh-cni CNI plugin); named networks kept apart from \
         each other, with addresses from mesh's own allocator, and a Docker network plugin; a \
         systemd unit, a config file, Prometheus metrics, a Debian package (cargo xtask \
         package) and static ARM builds for Raspberry Pis (cargo xtask cross); this lab.\n   \
         Not built yet: sealed frames in the kernel (no AEAD in this kernel's BPF; encrypted \
         links go through meshd)."
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
