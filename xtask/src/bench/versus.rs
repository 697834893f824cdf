//! A system against its reference, figure by figure, alternated (see `paired`): both labs up
//! at once, each figure measured for the reference (A) and the system (B) in turn. The issues'
//! ratios that are close to 1 (mesh-ebpf's RTT p50 against kernel VXLAN: a p50 of 200 pings
//! on this VM ranged 0.009-0.081 ms between runs of the same lab) or whose reference drifts
//! (boringtun `--threads 1` bulk TCP: 1.44-1.67 Gbit/s between full runs) are decided here,
//! not between table rows taken minutes apart. The small-packet figures (TCP_RR, RTT p50,
//! 64-byte UDP) take short turns within each pair (`paired::interleave`).

use std::ops::Range;

use anyhow::Result;
use serde::Serialize;

use super::{
    Plan,
    measure::{self, OverlayProcs, Path as TrafficPath},
    mesh_lab::MeshLab,
    paired::{self, Paired},
    turns::{PINGS_PER_TURN, PingTurns, RR_TURN_MS, RrTurns, UdpTurns},
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

    /// `system` against `reference` on this figure: the small-packet figures in short turns
    /// within each pair (see `paired::interleave`), bulk TCP a whole measurement at a time.
    fn compare(
        self,
        reference: &Side,
        system: &Side,
        plan: &Plan,
        pairs: Range<u32>,
    ) -> Result<Paired> {
        let label = format!("{} {} / {}", self.label(), reference.name, system.name);
        match self {
            Figure::TcpRr => {
                let turns = (plan.secs * 1000).div_ceil(RR_TURN_MS);
                paired::interleave(
                    &label,
                    pairs,
                    turns,
                    &mut RrTurns::open(&reference.path)?,
                    &mut RrTurns::open(&system.path)?,
                )
            }
            Figure::RttP50 => {
                let turns = plan.pings.div_ceil(PINGS_PER_TURN);
                paired::interleave(
                    &label,
                    pairs,
                    turns,
                    &mut PingTurns::new(&reference.path),
                    &mut PingTurns::new(&system.path),
                )
            }
            Figure::Tcp1 => paired::alternate(
                &label,
                pairs,
                || tcp1(reference, plan),
                || tcp1(system, plan),
            ),
            Figure::Udp64 => paired::interleave(
                &label,
                pairs,
                plan.secs,
                &mut UdpTurns::new(&reference.path, &reference.procs),
                &mut UdpTurns::new(&system.path, &system.procs),
            ),
        }
    }
}

fn tcp1(s: &Side, plan: &Plan) -> Result<f64> {
    Ok(measure::tcp_throughput(&s.path, 1, plan.secs, 1, &s.procs)?
        .gbps
        .median)
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

/// Measures `figures` alternately, in each of `pairs` (their indices: see `paired`).
pub fn versus(
    reference: &Side,
    system: &Side,
    figures: &[Figure],
    plan: &Plan,
    pairs: Range<u32>,
) -> Result<Versus> {
    let mut v = Versus::none(reference.name, system.name);
    for &f in figures {
        let p = f.compare(reference, system, plan, pairs.clone())?;
        *v.figure(f) = Some(p);
    }
    Ok(v)
}

impl Versus {
    /// The comparisons in `parts` (the same two systems and figures, measured in separate
    /// runs, e.g. in fresh labs each) as one.
    pub fn merge(mut parts: Vec<Versus>) -> Option<Versus> {
        let first = parts.first()?;
        let mut v = Versus::none(&first.reference, &first.system);
        for f in Figure::ALL {
            let each: Vec<Paired> = parts
                .iter_mut()
                .filter_map(|p| p.figure(*f).take())
                .collect();
            *v.figure(*f) = (!each.is_empty()).then(|| Paired::merge(each));
        }
        Some(v)
    }

    /// `system` against `reference`, no figure measured yet.
    fn none(reference: &str, system: &str) -> Versus {
        Versus {
            reference: reference.to_owned(),
            system: system.to_owned(),
            tcp_1_stream_gbps: None,
            tcp_rr_per_s: None,
            rtt_p50_ms: None,
            udp_64b_pps: None,
        }
    }

    /// Where figure `f`'s comparison is kept.
    fn figure(&mut self, f: Figure) -> &mut Option<Paired> {
        match f {
            Figure::Tcp1 => &mut self.tcp_1_stream_gbps,
            Figure::RttP50 => &mut self.rtt_p50_ms,
            Figure::TcpRr => &mut self.tcp_rr_per_s,
            Figure::Udp64 => &mut self.udp_64b_pps,
        }
    }

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
