//! What the bench found: the JSON document, and the table printed on the terminal.

use serde::Serialize;

use super::measure::{Rtt, Throughput};

#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub date: String,
    pub mode: &'static str,
    pub seconds_per_run: u32,
    pub repeats: u32,
    pub machine: Machine,
    pub systems: Vec<SystemResult>,
    pub footprint: Option<Footprint>,
    /// Host-to-host TCP with meshd and without, alternated (issue 8's "≥ 0.97×").
    pub host_tcp_with_meshd: Option<&'a super::paired::Paired>,
    /// Systems against their references, alternated (`super::versus`).
    pub comparisons: &'a [super::versus::Versus],
    pub control_plane: ControlPlane,
}

/// Control-plane figures: the in-process gossip simulation, and (later) lab timings.
#[derive(Debug, Serialize)]
pub struct ControlPlane {
    pub simulation: Vec<Simulation>,
    /// Join, failure detection and reroute timings in the namespace lab, and meshd's cost at
    /// rest with that many peers.
    pub lab: Option<super::control_lab::ControlLab>,
    /// Idle labs of 16 and 24 meshd (issue 10's storm): CPU per meshd at rest.
    pub idle: Vec<super::control_lab::IdleLab>,
    /// Idle labs that could not be measured, and why.
    pub idle_failed: Vec<String>,
    pub lab_status: Status,
}

/// One run of mesh_gossip::sim: convergence from nothing, then after the best-connected peer
/// dies.
#[derive(Debug, Serialize)]
pub struct Simulation {
    pub peers: usize,
    pub links: usize,
    pub rounds_to_converge: u32,
    pub rounds_to_reconverge_after_failure: u32,
    pub messages_per_peer_mean: f64,
    pub messages_per_peer_max: u64,
    pub bytes_per_peer_mean: f64,
    pub bytes_per_peer_max: u64,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    /// How an idle CPU waits: the kernel's cpuidle driver (`intel_idle`, `haltpoll`, ...;
    /// "none" without one), and for `haltpoll` how long it polls before it halts. Small
    /// packets' latency is mostly waking up, and this decides what a wake-up costs: a VM
    /// guest that halts at once (`haltpoll` polling 0 ns, as where the committed runs were
    /// made) pays a trip through the host for each, one that polls first pays little soon
    /// after going idle.
    pub cpuidle: String,
}

#[derive(Debug, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum Status {
    Measured,
    NotBuiltYet(String),
    Failed(String),
}

#[derive(Debug, Serialize)]
pub struct SystemResult {
    pub name: &'static str,
    pub description: &'static str,
    pub status: Status,
    pub tcp_1_stream: Option<Throughput>,
    pub tcp_4_streams: Option<Throughput>,
    pub rtt: Option<Rtt>,
    pub tcp_rr_per_s: Option<f64>,
    pub udp_64b_pps: Option<f64>,
    /// Overlay process CPU (cores) per 100k 64-byte UDP packets/s delivered.
    pub udp_64b_cpu_cores_per_100kpps: Option<f64>,
}

impl SystemResult {
    pub fn new(name: &'static str, description: &'static str, status: Status) -> SystemResult {
        SystemResult {
            name,
            description,
            status,
            tcp_1_stream: None,
            tcp_4_streams: None,
            rtt: None,
            tcp_rr_per_s: None,
            udp_64b_pps: None,
            udp_64b_cpu_cores_per_100kpps: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Footprint {
    /// Which datapath meshd ran when measured (its memory grows with what it does).
    pub meshd_datapath: String,
    pub meshd_rss_idle_kib: u64,
    pub meshd_rss_under_load_kib: u64,
    pub meshd_stripped_bytes: u64,
    pub meshctl_stripped_bytes: u64,
}

impl Report<'_> {
    fn find(&self, name: &str) -> Option<&SystemResult> {
        self.systems
            .iter()
            .find(|s| s.name == name && matches!(s.status, Status::Measured))
    }

    /// The terminal table: absolutes, and ratios to kernel VXLAN and to boringtun --threads 1.
    pub fn print(&self) {
        let vx = self.find("kernel-vxlan");
        let bt = self.find("boringtun-t1");
        let tput = |s: &SystemResult| s.tcp_1_stream.as_ref().map(|t| t.gbps.median);
        let tput4 = |s: &SystemResult| s.tcp_4_streams.as_ref().map(|t| t.gbps.median);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        println!(
            "\n{} ({} mode: {} x {} s per throughput figure; kernel {}, {} CPUs, cpuidle {})",
            self.date,
            self.mode,
            self.repeats,
            self.seconds_per_run,
            self.machine.kernel,
            self.machine.cpus,
            self.machine.cpuidle
        );
        println!(
            "{:<18} {:>20} {:>7} {:>7} {:>20} {:>7} {:>7} {:>15} {:>9} {:>9} {:>9} {:>11}",
            "system",
            "TCPx1 Gbit/s",
            "/vxlan",
            "/bt-t1",
            "TCPx4 Gbit/s",
            "/vxlan",
            "/bt-t1",
            "RTT p50/p99 ms",
            "RR/s",
            "UDP64kpps",
            "cpu/Gbps",
            "cpu/100kpps"
        );
        for s in &self.systems {
            match &s.status {
                Status::Measured => {}
                Status::NotBuiltYet(why) | Status::Failed(why) => {
                    let what = match &s.status {
                        Status::Failed(_) => "FAILED",
                        _ => "",
                    };
                    println!("{:<18} {what} {why}", s.name);
                    continue;
                }
            }
            let spread = |t: &Option<Throughput>| match t {
                Some(t) if t.gbps.samples.len() > 1 => {
                    format!("{:.2} ({:.2}-{:.2})", t.gbps.median, t.gbps.min, t.gbps.max)
                }
                Some(t) => format!("{:.2}", t.gbps.median),
                None => "-".into(),
            };
            let rtt = s
                .rtt
                .as_ref()
                .map_or("-".into(), |r| format!("{:.3}/{:.3}", r.p50_ms, r.p99_ms));
            let cpu = s
                .tcp_1_stream
                .as_ref()
                .and_then(|t| t.cpu_cores_per_gbps.as_ref())
                .map_or("-".into(), |c| format!("{:.2}", c.median));
            println!(
                "{:<18} {:>20} {:>7} {:>7} {:>20} {:>7} {:>7} {:>15} {:>9} {:>9} {:>9} {:>11}",
                s.name,
                spread(&s.tcp_1_stream),
                ratio(tput(s), vx.and_then(tput)),
                ratio(tput(s), bt.and_then(tput)),
                spread(&s.tcp_4_streams),
                ratio(tput4(s), vx.and_then(tput4)),
                ratio(tput4(s), bt.and_then(tput4)),
                rtt,
                s.tcp_rr_per_s.map_or("-".into(), |r| format!("{r:.0}")),
                s.udp_64b_pps
                    .map_or("-".into(), |p| format!("{:.0}", p / 1e3)),
                cpu,
                s.udp_64b_cpu_cores_per_100kpps
                    .map_or("-".into(), |c| format!("{c:.2}")),
            );
        }
        if let Some(f) = &self.footprint {
            println!(
                "\nfootprint: meshd ({}) RSS idle {:.1} MiB, under load {:.1} MiB; stripped meshd {:.1} MiB, meshctl {:.1} MiB",
                f.meshd_datapath,
                f.meshd_rss_idle_kib as f64 / 1024.0,
                f.meshd_rss_under_load_kib as f64 / 1024.0,
                f.meshd_stripped_bytes as f64 / 1048576.0,
                f.meshctl_stripped_bytes as f64 / 1048576.0,
            );
        }
        if let Some(ab) = self.host_tcp_with_meshd {
            println!(
                "host TCP x1, {} alternated pairs: with meshd (kernel datapath) vs without: {}",
                ab.pair_ratios.samples.len(),
                ab.describe(2, " Gbit/s")
            );
        }
        for v in self.comparisons {
            v.print();
        }
        for s in &self.control_plane.simulation {
            println!(
                "control plane (simulation, {} peers, {} links): converged in {} rounds, {} after the best-connected peer died; per peer {:.0} messages / {:.0} KiB mean, {} / {:.0} KiB max",
                s.peers,
                s.links,
                s.rounds_to_converge,
                s.rounds_to_reconverge_after_failure,
                s.messages_per_peer_mean,
                s.bytes_per_peer_mean / 1024.0,
                s.messages_per_peer_max,
                s.bytes_per_peer_max as f64 / 1024.0,
            );
        }
        match (&self.control_plane.lab, &self.control_plane.lab_status) {
            (Some(l), _) => println!(
                "control plane (lab, {} meshd): full mesh {:.2} s after the last start; dead peer noticed everywhere in {:.2} s; rerouted in {:.2} s; at rest each meshd uses {:.2}% CPU, RSS {:.1} MiB mean / {:.1} MiB max",
                l.peers,
                l.join_s,
                l.failure_detected_s,
                l.reroute_s,
                l.idle_cpu_percent,
                l.rss_kib_mean as f64 / 1024.0,
                l.rss_kib_max as f64 / 1024.0,
            ),
            (None, status) => println!("control plane (lab timings): {status:?}"),
        }
        for l in &self.control_plane.idle {
            print!(
                "control plane (idle lab, {} meshd, {} s after forming): each meshd {:.2}% CPU mean, {:.2}% max (target < 1.5%)",
                l.peers, l.settle_s, l.cpu_percent_mean, l.cpu_percent_max
            );
            match (
                l.stopped_rejoin_s,
                l.cpu_percent_mean_after_stop,
                l.cpu_percent_max_after_stop,
            ) {
                (Some(r), Some(m), Some(x)) => println!(
                    "; one meshd stopped 5 s: whole again {r:.2} s after SIGCONT, then {m:.2}% mean, {x:.2}% max"
                ),
                _ => println!(),
            }
        }
        println!(
            "cpu/Gbps: CPU cores used by the overlay's own processes per Gbit/s (1 stream); cpu/100kpps: the same per 100k 64-byte UDP packets/s delivered; '-' where it has none"
        );
    }
}
