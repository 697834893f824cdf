//! mesh's own modes, on the bench's shape: two hosts on the lab underlay, one container each
//! (10.40.0.1-2/24), meshd on both hosts (password mode, or `--insecure` for the plaintext
//! row: without authentication data frames are not sealed). The containers' MTU is set to the
//! overlay MTU meshd reports, as the reference labs do for theirs.

use anyhow::{Context, Result};
use mesh_tests::{
    Lab,
    mesh::{Meshd, full_mesh, meshctl_json, tap_counter},
    wait_until,
};

pub struct MeshLab {
    pub lab: Lab,
    pub nodes: Vec<Meshd>,
    pub client_ns: String,
    pub server_ns: String,
}

impl MeshLab {
    pub fn up(encrypted: bool) -> Result<MeshLab> {
        let mut lab = Lab::new("bench-tap")?;
        let h1 = lab.add_host("h1")?;
        let h2 = lab.add_host("h2")?;
        let c1 = lab.add_container(&h1, "c1", Some("10.40.0.1/24"))?;
        let c2 = lab.add_container(&h2, "c2", Some("10.40.0.2/24"))?;
        let pw = lab.password_file("bench", "bench password")?;
        let pw = pw.to_str().context("lab dir is not UTF-8")?.to_owned();
        let auth: Vec<&str> = if encrypted {
            vec!["--password-file", &pw]
        } else {
            vec!["--insecure"]
        };
        let n1 = lab.start_meshd(&h1, &auth)?;
        let h1_addr = h1.addr.to_string();
        let n2 = lab.start_meshd(&h2, &[auth.as_slice(), &[h1_addr.as_str()]].concat())?;
        let nodes = vec![n1, n2];
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
