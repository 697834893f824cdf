//! Small-packet figures measured in short turns (see `paired::Turns`): what the alternated
//! comparisons (`versus`) and the rows measured in rounds (`rounds`) both take turns with.

use std::time::Duration;

use anyhow::Result;

use super::{
    measure::{self, OverlayProcs, Path as TrafficPath, Rtt},
    paired,
};

/// A request/response turn lasts this long: thousands of transactions, and a pair's turns
/// still span the same seconds of the machine for both sides.
pub const RR_TURN_MS: u32 = 250;
/// Pings per turn (10 ms apart).
pub const PINGS_PER_TURN: u32 = 20;
/// A 64-byte UDP turn lasts this long (each its own iperf3 run).
pub const UDP_TURN_SECS: u32 = 1;

/// TCP_RR in turns, on one connection kept open.
pub struct RrTurns {
    rr: measure::RequestResponse,
}

impl RrTurns {
    pub fn open(path: &TrafficPath) -> Result<RrTurns> {
        Ok(RrTurns {
            rr: measure::RequestResponse::open(path)?,
        })
    }
}

impl paired::Turns for RrTurns {
    fn turn(&mut self) -> Result<()> {
        self.rr.run(Duration::from_millis(RR_TURN_MS.into()))
    }
    fn figure(&mut self) -> Result<f64> {
        Ok(self.rr.rate())
    }
}

/// Pings in turns: the percentiles of every ping of the turns since the last figure.
pub struct PingTurns<'a> {
    path: &'a TrafficPath,
    times: Vec<f64>,
    sent: u32,
}

impl<'a> PingTurns<'a> {
    pub fn new(path: &'a TrafficPath) -> PingTurns<'a> {
        PingTurns {
            path,
            times: Vec::new(),
            sent: 0,
        }
    }

    /// The percentiles of the turns since the last call (which it forgets).
    pub fn rtt(&mut self) -> Result<Rtt> {
        let times = std::mem::take(&mut self.times);
        let sent = std::mem::take(&mut self.sent);
        anyhow::ensure!(!times.is_empty(), "no ping came back");
        Ok(Rtt::of(times, sent))
    }
}

impl paired::Turns for PingTurns<'_> {
    fn turn(&mut self) -> Result<()> {
        self.times
            .extend(measure::ping_times(self.path, PINGS_PER_TURN)?);
        self.sent += PINGS_PER_TURN;
        Ok(())
    }
    /// RTT p50.
    fn figure(&mut self) -> Result<f64> {
        Ok(self.rtt()?.p50_ms)
    }
}

/// 64-byte UDP in turns of a second: packets per second over the turns. On two CPUs shared by
/// both hosts the rate of one run depends on where the scheduler puts the four busy threads
/// (2.7x between runs of one lab, see docs/architecture.md); several turns meet several
/// placements.
pub struct UdpTurns<'a> {
    path: &'a TrafficPath,
    procs: &'a OverlayProcs,
    packets: f64,
    secs: f64,
    /// Cores the overlay's processes kept busy, times seconds, over the turns (when it has
    /// processes).
    core_secs: Option<f64>,
}

impl<'a> UdpTurns<'a> {
    pub fn new(path: &'a TrafficPath, procs: &'a OverlayProcs) -> UdpTurns<'a> {
        UdpTurns {
            path,
            procs,
            packets: 0.0,
            secs: 0.0,
            core_secs: None,
        }
    }

    /// Packets per second over the turns since the last call (which it forgets), and the
    /// overlay's CPU per 100k of them (cores), when it has processes.
    pub fn rate(&mut self) -> (f64, Option<f64>) {
        let pps = if self.secs > 0.0 {
            self.packets / self.secs
        } else {
            0.0
        };
        let cores = self.core_secs.map(|cs| cs / self.secs);
        (self.packets, self.secs, self.core_secs) = (0.0, 0.0, None);
        (pps, measure::cores_per_100kpps(cores, pps))
    }
}

impl paired::Turns for UdpTurns<'_> {
    fn turn(&mut self) -> Result<()> {
        let secs = f64::from(UDP_TURN_SECS);
        let (pps, cores) = measure::udp_small_packets(self.path, UDP_TURN_SECS, self.procs)?;
        self.packets += pps * secs;
        self.secs += secs;
        if let Some(cores) = cores {
            *self.core_secs.get_or_insert(0.0) += cores * secs;
        }
        Ok(())
    }
    fn figure(&mut self) -> Result<f64> {
        Ok(self.rate().0)
    }
}
