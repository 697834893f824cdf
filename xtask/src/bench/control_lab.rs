//! Control-plane timings with real meshd processes in the namespace lab: how long a mesh of
//! ten takes to form, to notice a dead peer and to route around a dropped link, and what ten
//! peers cost each meshd at rest (CPU, memory).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mesh_tests::{
    Lab,
    mesh::{full_mesh, peer, start_mesh},
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

/// Each process's CPU over the next `window`, percent of one core.
fn cpu_percent(pids: &[u32], window: Duration) -> Vec<f64> {
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let elapsed = t0.elapsed().as_secs_f64();
    let hz = clock_ticks_per_second();
    pids.iter()
        .zip(&before)
        .map(|(p, b)| (cpu_ticks(*p) - b) as f64 / hz / elapsed * 100.0)
        .collect()
}

/// A lab of idle meshd, the shape that once stormed (issue 10): each given only the first
/// as its peer, password mode, no traffic.
#[derive(Debug, Serialize)]
pub struct IdleLab {
    pub peers: usize,
    /// How long after the full mesh formed the measurement started.
    pub settle_s: u64,
    /// CPU per meshd over the measurement window, percent of one core.
    pub cpu_percent_mean: f64,
    pub cpu_percent_max: f64,
    /// One meshd SIGSTOPped for 5 s, then resumed: until every meshd sees every other
    /// established again, and the CPU per meshd over the window after that.
    pub stopped_rejoin_s: Option<f64>,
    pub cpu_percent_mean_after_stop: Option<f64>,
    pub cpu_percent_max_after_stop: Option<f64>,
}

fn mean_max(v: &[f64]) -> (f64, f64) {
    (
        v.iter().sum::<f64>() / v.len().max(1) as f64,
        v.iter().copied().fold(0.0, f64::max),
    )
}

pub fn idle(peers: usize, settle_s: u64, window_s: u64, stop_one: bool) -> Result<IdleLab> {
    let mut lab = Lab::new("bench-idle")?;
    let hosts = (1..=peers)
        .map(|i| lab.add_host(&format!("i{i}")))
        .collect::<Result<Vec<_>>>()?;
    let nodes = start_mesh(&mut lab, &hosts, "bench password", &[])?;
    if !wait_until(Duration::from_secs(60), || full_mesh(&nodes)) {
        bail!("{peers} meshd did not form a full mesh within 60 s");
    }
    std::thread::sleep(Duration::from_secs(settle_s));
    let pids: Vec<u32> = nodes.iter().filter_map(|n| lab.pid(n.proc)).collect();
    let window = Duration::from_secs(window_s);
    let (cpu_percent_mean, cpu_percent_max) = mean_max(&cpu_percent(&pids, window));
    let mut out = IdleLab {
        peers,
        settle_s,
        cpu_percent_mean,
        cpu_percent_max,
        stopped_rejoin_s: None,
        cpu_percent_mean_after_stop: None,
        cpu_percent_max_after_stop: None,
    };
    if stop_one {
        let pid = *pids.last().context("at least one meshd")? as i32;
        // SAFETY: signals to a meshd this lab started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_secs(5));
        unsafe { libc::kill(pid, libc::SIGCONT) };
        let resumed = Instant::now();
        if !wait_until(Duration::from_secs(60), || full_mesh(&nodes)) {
            bail!("the mesh was not whole within 60 s of resuming a stopped meshd");
        }
        out.stopped_rejoin_s = Some(resumed.elapsed().as_secs_f64());
        let (mean, max) = mean_max(&cpu_percent(&pids, window));
        out.cpu_percent_mean_after_stop = Some(mean);
        out.cpu_percent_max_after_stop = Some(max);
    }
    Ok(out)
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
    let mut nodes = start_mesh(&mut lab, &hosts, "bench password", &[])?;
    let t0 = Instant::now();
    if !wait_until(Duration::from_secs(30), || full_mesh(&nodes)) {
        bail!("{peers} meshd did not form a full mesh within 30 s");
    }
    let join_s = t0.elapsed().as_secs_f64();

    // At rest.
    // Let the joins settle (duplicate connections from simultaneous dials are being resolved).
    std::thread::sleep(Duration::from_secs(5));
    let pids: Vec<u32> = nodes.iter().filter_map(|n| lab.pid(n.proc)).collect();
    let cpu = cpu_percent(&pids, Duration::from_secs(idle_secs));
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
