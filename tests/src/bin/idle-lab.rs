//! Idle meshd in one lab, for finding control-plane storms by hand: `idle-lab PEERS SECONDS
//! [EXTRA MESHD ARGS...]`. Starts PEERS meshd (password mode, each given the first as its
//! peer), waits for the full mesh, then prints every 5 s each process's CPU over that window
//! (mean and max, percent of one core) for SECONDS, and removes everything. The pids are
//! printed first, for `perf record -p`. With `IDLE_LAB_STOP=S` in the environment, the last
//! meshd is SIGSTOPped S seconds into the run for 5 s, and the time until the mesh is whole
//! again after SIGCONT is printed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mesh_tests::{
    Lab,
    mesh::{full_mesh, start_mesh},
    procstat::{cpu_ticks, ticks_per_second},
    wait_until,
};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(peers), Some(secs)) = (args.first(), args.get(1)) else {
        bail!("usage: idle-lab PEERS SECONDS [EXTRA MESHD ARGS...]");
    };
    let peers: usize = peers.parse().context("PEERS")?;
    let secs: u64 = secs.parse().context("SECONDS")?;
    let extra: Vec<&str> = args[2..].iter().map(String::as_str).collect();
    let mut lab = Lab::new("idle")?;
    let hosts = (1..=peers)
        .map(|i| lab.add_host(&format!("i{i}")))
        .collect::<Result<Vec<_>>>()?;
    let nodes = start_mesh(&mut lab, &hosts, "idle lab", &extra)?;
    let t0 = Instant::now();
    if !wait_until(Duration::from_secs(60), || full_mesh(&nodes)) {
        bail!("no full mesh within 60 s");
    }
    println!(
        "full mesh of {peers} after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let pids: Vec<u32> = nodes.iter().filter_map(|n| lab.pid(n.proc)).collect();
    println!("pids {pids:?}");
    let hz = ticks_per_second();
    let stop_at: Option<u64> = std::env::var("IDLE_LAB_STOP")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut stopped = false;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if let Some(at) = stop_at
            && !stopped
            && t0.elapsed() >= Duration::from_secs(at)
        {
            stopped = true;
            let pid = *pids.last().expect("peers > 0") as i32;
            // SAFETY: signalling a child process we started.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            std::thread::sleep(Duration::from_secs(5));
            unsafe { libc::kill(pid, libc::SIGCONT) };
            let resumed = Instant::now();
            let whole = wait_until(Duration::from_secs(60), || full_mesh(&nodes));
            println!(
                "stopped the last meshd for 5 s; mesh whole again {:.1} s after SIGCONT ({whole})",
                resumed.elapsed().as_secs_f64()
            );
        }
        let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(5));
        let el = t.elapsed().as_secs_f64();
        let cpu: Vec<f64> = pids
            .iter()
            .zip(&before)
            .map(|(p, b)| (cpu_ticks(*p) - b) as f64 / hz / el * 100.0)
            .collect();
        let mean = cpu.iter().sum::<f64>() / cpu.len() as f64;
        let max = cpu.iter().cloned().fold(0.0, f64::max);
        println!(
            "t={:>5.1}s cpu mean {mean:5.2}% max {max:5.2}% established {}",
            t0.elapsed().as_secs_f64(),
            full_mesh(&nodes)
        );
    }
    Ok(())
}
