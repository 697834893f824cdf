//! Control-plane timings with real meshd processes in the namespace lab: how long a mesh of
//! ten takes to form, to notice a dead peer and to route around a dropped link, and what ten
//! peers cost each meshd at rest (CPU, memory).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mesh_tests::{
    Lab,
    mesh::{Meshd, full_mesh, peer},
    wait_until,
};
use serde::Serialize;

use super::measure::{clock_ticks_per_second, proc_cpu_ticks, proc_rss_kib};

#[derive(Debug, Serialize)]
pub struct ControlLab {
    pub peers: usize,
    /// From the last meshd's start until every one sees every other established.
    pub join_s: f64,
    /// From SIGKILL of one meshd until every other shows it unreachable.
    pub failure_detected_s: f64,
    /// From dropping traffic between two peers until one routes to the other via a third.
    pub reroute_s: f64,
    /// meshd CPU at rest in a full mesh of `peers`, percent of one core, mean over processes.
    pub idle_cpu_percent: f64,
    pub rss_kib_mean: u64,
    pub rss_kib_max: u64,
}

/// utime + stime of `pid` in clock ticks (0 once it is gone).
fn cpu_ticks(pid: u32) -> u64 {
    proc_cpu_ticks(pid).unwrap_or(0)
}

pub fn run(peers: usize, idle_secs: u64) -> Result<ControlLab> {
    let mut lab = Lab::new("bench-cp")?;
    let hosts = (1..=peers)
        .map(|i| lab.add_host(&format!("n{i}")))
        .collect::<Result<Vec<_>>>()?;
    let pw = lab.password_file("bench", "bench password")?;
    let pw = pw.to_str().context("lab dir is not UTF-8")?.to_owned();
    let seed = hosts[0].addr.to_string();
    let mut nodes: Vec<Meshd> = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let mut args = vec!["--password-file", pw.as_str()];
        if i > 0 {
            args.push(&seed);
        }
        nodes.push(lab.start_meshd(h, &args)?);
    }
    let t0 = Instant::now();
    if !wait_until(Duration::from_secs(30), || full_mesh(&nodes)) {
        bail!("{peers} meshd did not form a full mesh within 30 s");
    }
    let join_s = t0.elapsed().as_secs_f64();

    // At rest.
    // Let the joins settle (duplicate connections from simultaneous dials are being resolved).
    std::thread::sleep(Duration::from_secs(5));
    let pids: Vec<u32> = nodes.iter().filter_map(|n| lab.pid(n.proc)).collect();
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let elapsed = t0.elapsed().as_secs_f64();
    let hz = clock_ticks_per_second();
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&before)
        .map(|(p, b)| (cpu_ticks(*p) - b) as f64 / hz / elapsed * 100.0)
        .collect();
    let rss: Vec<u64> = pids.iter().filter_map(|p| proc_rss_kib(*p)).collect();

    // Reroute: n1 and n2 can no longer talk directly.
    let t0 = Instant::now();
    lab.drop_between(&hosts[0], &hosts[1])?;
    let rerouted = wait_until(Duration::from_secs(10), || {
        peer(&nodes[0], "n2").is_some_and(|p| p["state"] != "established" && !p["via"].is_null())
    });
    if !rerouted {
        bail!("n1 did not route to n2 through another peer within 10 s");
    }
    let reroute_s = t0.elapsed().as_secs_f64();

    // Failure: the last peer dies.
    let victim = nodes.pop().context("at least one node")?;
    let t0 = Instant::now();
    lab.kill(victim.proc)?;
    let gone = wait_until(Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|n| peer(n, &victim.host.name).is_some_and(|p| p["state"] == "unreachable"))
    });
    if !gone {
        bail!("a killed meshd was not noticed everywhere within 10 s");
    }
    let failure_detected_s = t0.elapsed().as_secs_f64();

    Ok(ControlLab {
        peers,
        join_s,
        failure_detected_s,
        reroute_s,
        idle_cpu_percent: cpu.iter().sum::<f64>() / cpu.len().max(1) as f64,
        rss_kib_mean: rss.iter().sum::<u64>() / rss.len().max(1) as u64,
        rss_kib_max: rss.iter().copied().max().unwrap_or(0),
    })
}
