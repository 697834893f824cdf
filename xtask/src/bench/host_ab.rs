//! Host-to-host TCP with meshd running against the same without it (issue 8: "≥ 0.97×"),
//! measured alternately on one lab: without, with, with, without, without, with, ... The
//! machine's throughput drifts over minutes by more than the difference sought, so two figures
//! taken minutes apart (the `underlay` and `underlay+meshd` rows) cannot settle it; in
//! alternating pairs whose order flips every pair, a drift falls on both sides alike.

use std::{path::Path, time::Duration};

use anyhow::{Result, bail};
use mesh_tests::wait_until;
use serde::Serialize;

use super::{
    Plan, datapath_mode,
    measure::{self, OverlayProcs, Path as TrafficPath, Summary},
    ref_labs::RefLab,
    systems::Meshd,
};

/// The alternated comparison, as reported.
#[derive(Debug, Serialize)]
pub struct HostTcpAb {
    /// meshd's datapath while "with" was measured.
    pub datapath: &'static str,
    pub pairs: u32,
    pub seconds_per_run: u32,
    /// Single-stream host-to-host TCP, Gbit/s, without meshd and with it.
    pub without_gbps: Summary,
    pub with_gbps: Summary,
    /// Median with / median without.
    pub ratio_of_medians: f64,
    /// with / without within each pair.
    pub pair_ratios: Summary,
}

/// Measures `pairs` alternated pairs between the lab's two hosts (`underlay`): meshd (its
/// default, kernel datapath) is started on both hosts for each "with" run and stopped
/// cleanly after it, so each "without" run sees a host with none of meshd's programs.
pub fn measure(
    lab: &RefLab,
    underlay: &TrafficPath,
    release: &Path,
    work: &Path,
    plan: &Plan,
    pairs: u32,
) -> Result<HostTcpAb> {
    let none = OverlayProcs::default();
    let run_once = || -> Result<f64> {
        let t = measure::tcp_throughput(underlay, 1, plan.secs, 1, &none)?;
        Ok(t.gbps.median)
    };
    let with_meshd = || -> Result<f64> {
        let meshd = release.join("meshd");
        let start = |h: &str, u: &str| {
            Meshd::start(
                &meshd,
                &lab.ns(h),
                u,
                &work.join(format!("run-ab-{h}")),
                &[],
            )
        };
        let (h1, h2) = (start("h1", "u1")?, start("h2", "u2")?);
        for m in [&h1, &h2] {
            let ebpf = || datapath_mode(release, &m.socket).is_ok_and(|d| d == "ebpf");
            if !wait_until(Duration::from_secs(10), ebpf) {
                bail!(
                    "meshd did not run the kernel datapath: {:?}",
                    datapath_mode(release, &m.socket)
                );
            }
        }
        // Running, not starting: meshd's first seconds (routes, maps, hellos) are not what
        // the comparison is about.
        std::thread::sleep(Duration::from_secs(2));
        let g = run_once();
        // Dropping stops each cleanly (SIGTERM): it takes its programs off the underlay.
        drop((h1, h2));
        g
    };
    let (mut without, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..pairs {
        let (a, b) = if pair % 2 == 0 {
            let a = run_once()?;
            (a, with_meshd()?)
        } else {
            let b = with_meshd()?;
            (run_once()?, b)
        };
        println!(
            "bench: host TCP pair {}: without {a:.2}, with meshd {b:.2} Gbit/s",
            pair + 1
        );
        without.push(a);
        with.push(b);
        if a > 0.0 {
            ratios.push(b / a);
        }
    }
    let (without_gbps, with_gbps) = (Summary::of(without), Summary::of(with));
    Ok(HostTcpAb {
        datapath: "ebpf",
        pairs,
        seconds_per_run: plan.secs,
        ratio_of_medians: with_gbps.median / without_gbps.median,
        without_gbps,
        with_gbps,
        pair_ratios: Summary::of(ratios),
    })
}
