//! Host-to-host TCP with meshd running against the same without it (issue 8: "≥ 0.97×"),
//! alternated on one lab (see `paired`): the `underlay` and `underlay+meshd` rows are taken
//! minutes apart, and the machine drifts by more than meshd's cost in that time.

use std::{path::Path, time::Duration};

use anyhow::{Result, bail};
use mesh_tests::wait_until;

use super::{
    Plan, datapath_mode,
    measure::{self, OverlayProcs, Path as TrafficPath},
    meshd_on_both_hosts,
    paired::{self, Paired},
    ref_labs::RefLab,
};

/// Single-stream TCP between the lab's two hosts (`underlay`), `pairs` times without meshd
/// (A) and with it (B): meshd, on its default kernel datapath, is started on both hosts for
/// each "with" run and stopped cleanly after it, so each "without" run sees a host with none
/// of meshd's programs.
pub fn measure(
    lab: &RefLab,
    underlay: &TrafficPath,
    release: &Path,
    work: &Path,
    plan: &Plan,
    pairs: u32,
) -> Result<Paired> {
    let none = OverlayProcs::default();
    let run_once = || -> Result<f64> {
        Ok(measure::tcp_throughput(underlay, 1, plan.secs, 1, &none)?
            .gbps
            .median)
    };
    let with_meshd = || -> Result<f64> {
        let (h1, h2) = meshd_on_both_hosts(lab, release, work, "ab", &[])?;
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
    paired::alternate(
        "host TCP Gbit/s without / with meshd",
        0..pairs,
        run_once,
        with_meshd,
    )
}
