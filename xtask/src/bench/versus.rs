//! A system against its reference, figure by figure, alternated (see `paired`): both labs up
//! at once, each figure measured for the reference (A) and the system (B) in turn. The issues'
//! ratios that are close to 1 (mesh-ebpf's RTT p50 against kernel VXLAN: a p50 of 200 pings
//! on this VM ranged 0.009-0.081 ms between runs of the same lab) or whose reference drifts
//! (boringtun `--threads 1` bulk TCP: 1.44-1.67 Gbit/s between full runs) are decided here,
//! not between table rows taken minutes apart.

use anyhow::Result;
use serde::Serialize;

use super::{
    Plan,
    measure::{self, OverlayProcs, Path as TrafficPath},
    mesh_lab::MeshLab,
    paired::{self, Paired},
};

/// One side of a comparison: where its traffic goes and which processes are its overlay.
pub struct Side {
    pub name: &'static str,
    pub path: TrafficPath,
    pub procs: OverlayProcs,
}

impl Side {
    /// Between the two containers of a mesh lab, meshd its overlay.
    pub fn mesh(name: &'static str, lab: &MeshLab) -> Side {
        Side {
            name,
            path: super::mesh_path(lab),
            procs: OverlayProcs(lab.pids()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure {
    Tcp1,
    RttP50,
    TcpRr,
    Udp64,
}

impl Figure {
    pub const SMALL_PACKETS: &[Figure] = &[Figure::TcpRr, Figure::RttP50, Figure::Udp64];
    pub const ALL: &[Figure] = &[Figure::Tcp1, Figure::TcpRr, Figure::RttP50, Figure::Udp64];

    fn label(self) -> &'static str {
        match self {
            Figure::Tcp1 => "TCP x1 Gbit/s",
            Figure::RttP50 => "RTT p50 ms",
            Figure::TcpRr => "TCP_RR/s",
            Figure::Udp64 => "64-byte UDP pps",
        }
    }

    fn measure(self, s: &Side, plan: &Plan) -> Result<f64> {
        Ok(match self {
            Figure::Tcp1 => {
                measure::tcp_throughput(&s.path, 1, plan.secs, 1, &s.procs)?
                    .gbps
                    .median
            }
            Figure::RttP50 => measure::ping_rtt(&s.path, plan.pings)?.p50_ms,
            Figure::TcpRr => measure::tcp_rr(&s.path, plan.secs)?,
            Figure::Udp64 => measure::udp_small_packets(&s.path, plan.secs, &s.procs)?.0,
        })
    }
}

/// The figures of `system` (B) against `reference` (A); a figure not measured is absent.
#[derive(Debug, Serialize)]
pub struct Versus {
    pub reference: String,
    pub system: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_1_stream_gbps: Option<Paired>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_rr_per_s: Option<Paired>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_p50_ms: Option<Paired>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_64b_pps: Option<Paired>,
}

/// Measures `figures` alternately, `pairs` times each.
pub fn versus(
    reference: &Side,
    system: &Side,
    figures: &[Figure],
    plan: &Plan,
    pairs: u32,
) -> Result<Versus> {
    let mut v = Versus {
        reference: reference.name.to_owned(),
        system: system.name.to_owned(),
        tcp_1_stream_gbps: None,
        tcp_rr_per_s: None,
        rtt_p50_ms: None,
        udp_64b_pps: None,
    };
    for &f in figures {
        let label = format!("{} {} / {}", f.label(), reference.name, system.name);
        let p = paired::alternate(
            &label,
            pairs,
            || f.measure(reference, plan),
            || f.measure(system, plan),
        )?;
        *match f {
            Figure::Tcp1 => &mut v.tcp_1_stream_gbps,
            Figure::RttP50 => &mut v.rtt_p50_ms,
            Figure::TcpRr => &mut v.tcp_rr_per_s,
            Figure::Udp64 => &mut v.udp_64b_pps,
        } = Some(p);
    }
    Ok(v)
}

impl Versus {
    /// Printed under the table: one line per figure measured.
    pub fn print(&self) {
        println!(
            "{} vs {}, {} alternated pairs:",
            self.system,
            self.reference,
            self.figures()
                .first()
                .map_or(0, |(_, p, _)| p.a.samples.len())
        );
        for (name, p, (digits, unit)) in self.figures() {
            println!("  {name}: {}", p.describe(digits, unit));
        }
    }

    fn figures(&self) -> Vec<(&'static str, &Paired, (usize, &'static str))> {
        [
            ("TCP x1", &self.tcp_1_stream_gbps, (2, " Gbit/s")),
            ("TCP_RR", &self.tcp_rr_per_s, (0, "/s")),
            ("RTT p50", &self.rtt_p50_ms, (3, " ms")),
            ("64-byte UDP", &self.udp_64b_pps, (0, " pps")),
        ]
        .into_iter()
        .filter_map(|(n, p, f)| Some((n, p.as_ref()?, f)))
        .collect()
    }
}
