//! The small-packet figures of several systems' rows (RTT percentiles, TCP_RR, 64-byte UDP and
//! the CPU it took), measured in rounds with every one of their labs up: each round, every
//! system takes one short turn (the turns of `turns`), and a row's figure is what its turns
//! add up to. Measured one system at a time, minutes apart, these figures moved between minutes
//! by more than the differences between systems (one sealed lab's RTT p50 0.18-0.30 ms; 64-byte
//! UDP 77k-210k/s with where the scheduler put the busy threads, docs/architecture.md), so two
//! rows of one run could disagree with the alternated comparison of the same two systems. In
//! rounds every row meets the same moments of the machine.

use anyhow::Result;

use super::{
    Plan,
    measure::Rtt,
    paired::Turns,
    report::SystemResult,
    turns::{PINGS_PER_TURN, PingTurns, RR_TURN_MS, RrTurns, UDP_TURN_SECS, UdpTurns},
    versus::Side,
};

/// One row's small-packet figures.
pub struct Small {
    pub rtt: Rtt,
    pub tcp_rr_per_s: f64,
    pub udp_64b_pps: f64,
    pub udp_64b_cpu_cores_per_100kpps: Option<f64>,
}

impl Small {
    /// Into the row `r`.
    pub fn record(self, r: &mut SystemResult) {
        r.rtt = Some(self.rtt);
        r.tcp_rr_per_s = Some(self.tcp_rr_per_s);
        r.udp_64b_pps = Some(self.udp_64b_pps);
        r.udp_64b_cpu_cores_per_100kpps = self.udp_64b_cpu_cores_per_100kpps;
    }
}

/// The figures of each of `sides`, in its order; a system whose turn failed gets the error
/// (and takes no more turns).
pub fn measure(sides: &[Side], plan: &Plan) -> Vec<Result<Small>> {
    let n = sides.len();
    let mut failed: Vec<Option<anyhow::Error>> = (0..n).map(|_| None).collect();

    println!(
        "bench:   RTT, {} pings each in turns of {PINGS_PER_TURN}",
        plan.row_pings
    );
    let mut pings: Vec<_> = sides.iter().map(|s| PingTurns::new(&s.path)).collect();
    take_turns(plan.row_pings.div_ceil(PINGS_PER_TURN), &mut failed, |i| {
        pings[i].turn()
    });
    let rtts: Vec<_> = pings.iter_mut().map(PingTurns::rtt).collect();

    println!(
        "bench:   TCP_RR, {} s each in turns of {RR_TURN_MS} ms",
        plan.secs
    );
    // A system that failed takes no more turns (its connection is not opened).
    let mut rrs: Vec<Option<RrTurns>> = sides
        .iter()
        .zip(&mut failed)
        .map(|(s, f)| {
            if f.is_some() {
                return None;
            }
            match RrTurns::open(&s.path) {
                Ok(rr) => Some(rr),
                Err(e) => {
                    *f = Some(e.context("opening TCP_RR"));
                    None
                }
            }
        })
        .collect();
    take_turns((plan.secs * 1000).div_ceil(RR_TURN_MS), &mut failed, |i| {
        rrs[i].as_mut().map_or(Ok(()), RrTurns::turn)
    });
    let rr_rates: Vec<_> = rrs
        .iter_mut()
        .map(|r| r.as_mut().map_or(Ok(0.0), RrTurns::figure))
        .collect();
    drop(rrs);

    // More turns than a row's one run had: each turn meets its own placement of the threads.
    let udp_rounds = (plan.secs * plan.repeats).div_ceil(UDP_TURN_SECS);
    println!(
        "bench:   64-byte UDP, {} s each in turns of {UDP_TURN_SECS} s",
        udp_rounds * UDP_TURN_SECS
    );
    let mut udps: Vec<_> = sides
        .iter()
        .map(|s| UdpTurns::new(&s.path, &s.procs))
        .collect();
    take_turns(udp_rounds, &mut failed, |i| udps[i].turn());

    rtts.into_iter()
        .zip(rr_rates)
        .zip(udps.iter_mut().map(UdpTurns::rate))
        .zip(failed)
        .map(|(((rtt, rr), (pps, cpu)), failed)| match failed {
            Some(e) => Err(e),
            None => Ok(Small {
                rtt: rtt?,
                tcp_rr_per_s: rr?,
                udp_64b_pps: pps,
                udp_64b_cpu_cores_per_100kpps: cpu,
            }),
        })
        .collect()
}

/// `rounds` rounds in which every system not yet failed takes its turn (`turn` with its index);
/// one whose turn fails is marked failed.
fn take_turns(
    rounds: u32,
    failed: &mut [Option<anyhow::Error>],
    mut turn: impl FnMut(usize) -> Result<()>,
) {
    for round in 0..rounds as usize {
        for i in order(round, failed.len()) {
            if failed[i].is_none()
                && let Err(e) = turn(i)
            {
                failed[i] = Some(e);
            }
        }
    }
}

/// Which systems take their turn in what order in `round`, of `n`: each round starts one
/// system further along, so in `n` rounds each takes every place; every `n` rounds the
/// direction flips, so a system does not always follow the same one.
fn order(round: usize, n: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let start = round % n;
    let forward = (round / n).is_multiple_of(2);
    (0..n)
        .map(|k| {
            if forward {
                (start + k) % n
            } else {
                (start + n - k) % n
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::order;

    #[test]
    fn each_system_takes_every_place_and_follows_different_systems() {
        let rounds: Vec<_> = (0..6).map(|r| order(r, 3)).collect();
        assert_eq!(
            rounds,
            vec![
                vec![0, 1, 2],
                vec![1, 2, 0],
                vec![2, 0, 1],
                vec![0, 2, 1],
                vec![1, 0, 2],
                vec![2, 1, 0],
            ]
        );
        for i in 0..3 {
            let places: std::collections::BTreeSet<_> = (0..3)
                .map(|r| order(r, 3).iter().position(|&x| x == i).unwrap())
                .collect();
            assert_eq!(places.len(), 3, "system {i} should take every place");
        }
        assert!(order(0, 0).is_empty());
    }
}
