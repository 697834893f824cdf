//! mesh's own modes, on the bench's shape: two hosts joined by one veth (as in the reference
//! labs), one container each (10.40.0.1-2/24), meshd on both hosts in one of the test harness's modes (TAP sealed or
//! plaintext, kernel, mixed). The containers' MTU is set to the overlay MTU meshd reports, as
//! the reference labs do for theirs.

use anyhow::{Context, Result};
use mesh_tests::{
    Lab,
    mesh::{Meshd, Mode, full_mesh, kernel_counter, meshctl_json, start_mesh_in_with, tap_counter},
    wait_until,
};

pub struct MeshLab {
    pub lab: Lab,
    pub nodes: Vec<Meshd>,
    pub client_ns: String,
    pub server_ns: String,
}

impl MeshLab {
    /// Two hosts in `mode` (the mixed mode puts the server's host on TAP), meshd given `extra`
    /// arguments too: traffic goes from h1's container to h2's.
    pub fn up(mode: Mode, extra: &[&str]) -> Result<MeshLab> {
        let mut lab = Lab::new("bench-mesh")?;
        // One veth between the hosts, as in the reference labs: the same wire for everyone.
        let (h1, h2) = lab.add_cabled_pair("h1", "h2")?;
        let c1 = lab.add_container(&h1, "c1", Some("10.40.0.1/24"))?;
        let c2 = lab.add_container(&h2, "c2", Some("10.40.0.2/24"))?;
        let nodes = start_mesh_in_with(&mut lab, &[h1, h2], mode, extra)?;
        if !wait_until(std::time::Duration::from_secs(10), || full_mesh(&nodes)) {
            anyhow::bail!("the two bench meshd did not connect");
        }
        let mtu = meshctl_json(&nodes[0], &["status"])?["datapath"]["overlay_mtu"]
            .as_u64()
            .context("status without overlay_mtu")?;
        for c in [&c1, &c2] {
            let out = lab.exec(
                &c.ns,
                "ip",
                &["link", "set", "eth0", "mtu", &mtu.to_string()],
            )?;
            anyhow::ensure!(out.status.success(), "setting the container MTU failed");
        }
        let ready = wait_until(std::time::Duration::from_secs(5), || {
            lab.ping(&c1.ns, c2.addr.expect("has an address"), 1)
                .unwrap_or(false)
        });
        anyhow::ensure!(ready, "the containers cannot reach each other through mesh");
        Ok(MeshLab {
            client_ns: c1.ns.clone(),
            server_ns: c2.ns.clone(),
            nodes,
            lab,
        })
    }

    /// How well the data path batched during the run (frames per system call), from both
    /// meshd's counters: a diagnosis aid printed with the results.
    pub fn print_batching(&self) {
        for n in &self.nodes {
            let k = |name: &str| kernel_counter(n, name);
            if k("kernel_tx_sent") + k("kernel_rx_delivered") > 0 {
                println!(
                    "bench:   {}: kernel sent {} ({} GSO super-frames), delivered {}, {} frames to meshd",
                    n.host.name,
                    k("kernel_tx_sent"),
                    k("kernel_tx_gso"),
                    k("kernel_rx_delivered"),
                    k("kernel_rx_to_meshd")
                );
            }
            let c = |name: &str| tap_counter(n, name) as f64;
            let per = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
            println!(
                "bench:   {}: {:.1} frames per TAP read, {:.1} per TAP write, {:.1} datagrams per send, {:.1} per receive",
                n.host.name,
                per(c("tap_tx_frames"), c("tap_reads")),
                per(c("tap_delivered"), c("tap_writes")),
                per(c("tap_tx_frames"), c("tap_udp_sends")),
                per(c("tap_rx_frames"), c("tap_udp_receives")),
            );
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| self.lab.pid(n.proc))
            .collect()
    }
}
