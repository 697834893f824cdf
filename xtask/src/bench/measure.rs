//! The measurements, all taken the same way for every system: a client in one namespace, a
//! server in another, real traffic between them.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use mesh_tests::{netns, wait_until};
use serde::Serialize;

/// Port used by every bench server (iperf3 and the request/response server).
const PORT: u16 = 5299;

/// Where traffic goes: client namespace → server address inside the server namespace.
#[derive(Clone, Debug)]
pub struct Path {
    pub client_ns: String,
    pub server_ns: String,
    pub server_addr: Ipv4Addr,
}

/// Median and spread of repeated samples.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Summary {
    pub fn of(mut samples: Vec<f64>) -> Summary {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => samples[n / 2],
            _ => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
        };
        Summary {
            median,
            min: samples.first().copied().unwrap_or(f64::NAN),
            max: samples.last().copied().unwrap_or(f64::NAN),
            samples,
        }
    }
}

/// One TCP throughput measurement: Gbit/s per run, and the CPU the overlay's own processes used
/// (cores busy, averaged over the run) when it has processes.
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub gbps: Summary,
    /// Overlay process CPU per Gbit/s (cores per Gbit/s), when the overlay has processes.
    pub cpu_cores_per_gbps: Option<Summary>,
    /// Highest RSS (KiB) seen of the overlay's processes during the runs.
    pub peak_rss_kib: Option<u64>,
}

/// Processes that make up the overlay (their CPU and memory are part of its cost).
#[derive(Clone, Debug, Default)]
pub struct OverlayProcs(pub Vec<u32>);

impl OverlayProcs {
    fn cpu_ticks(&self) -> u64 {
        self.0.iter().filter_map(|p| proc_cpu_ticks(*p)).sum()
    }

    fn rss_kib(&self) -> u64 {
        self.0.iter().filter_map(|p| proc_rss_kib(*p)).sum()
    }

    /// Runs `work` and returns its result with the CPU cores the overlay's processes kept busy
    /// meanwhile, on average (`None` when the overlay has no processes).
    fn cores_during<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<(T, Option<f64>)> {
        let ticks0 = self.cpu_ticks();
        let t0 = Instant::now();
        let out = work()?;
        let elapsed = t0.elapsed().as_secs_f64();
        let cores = (!self.0.is_empty())
            .then(|| (self.cpu_ticks() - ticks0) as f64 / clock_ticks_per_second() / elapsed);
        Ok((out, cores))
    }
}

/// utime + stime of `pid`, in clock ticks.
pub fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = stat.rsplit_once(')')?.1.split_whitespace();
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of `pid`, KiB.
pub fn proc_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// A server process in a namespace, killed on drop.
struct Server(Child);

impl Server {
    fn start(ns: &str, program: &str, args: &[&str]) -> Result<Server> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program} in {ns}"))?;
        Ok(Server(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something listens on `PORT` in `ns` (TCP, or UDP when `udp`).
fn wait_listening(ns: &str, udp: bool) -> Result<()> {
    let proto = if udp { "-Hlun" } else { "-Hltn" };
    let filter = format!("sport = :{PORT}");
    let up = wait_until(Duration::from_secs(5), || {
        Command::new("ip")
            .args(["netns", "exec", ns, "ss", proto, &filter])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty())
    });
    if !up {
        bail!("the bench server in {ns} did not start listening");
    }
    Ok(())
}

/// Runs an iperf3 client against a fresh one-shot server and returns its JSON report.
fn iperf3(path: &Path, client_args: &[&str]) -> Result<serde_json::Value> {
    let addr = path.server_addr.to_string();
    let port = PORT.to_string();
    let _server = Server::start(
        &path.server_ns,
        "iperf3",
        &["-s", "-1", "-B", &addr, "-p", &port],
    )?;
    wait_listening(&path.server_ns, false)?;
    let mut args = vec![
        "netns",
        "exec",
        &path.client_ns,
        "iperf3",
        "-c",
        &addr,
        "-p",
        &port,
        "-J",
    ];
    args.extend_from_slice(client_args);
    let out = Command::new("ip")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .context("running the iperf3 client")?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = report.get("error") {
        bail!("iperf3 {} -> {addr}: {e}", path.client_ns);
    }
    Ok(report)
}

/// TCP throughput with `streams` parallel streams, `repeats` runs of `secs` seconds each.
pub fn tcp_throughput(
    path: &Path,
    streams: u32,
    secs: u32,
    repeats: u32,
    overlay: &OverlayProcs,
) -> Result<Throughput> {
    let mut gbps = Vec::new();
    let mut cpu = Vec::new();
    let mut peak_rss = 0;
    for _ in 0..repeats {
        let sampling = RssSampler::start(overlay.clone());
        let (report, cores) = overlay.cores_during(|| {
            iperf3(path, &["-t", &secs.to_string(), "-P", &streams.to_string()])
        })?;
        peak_rss = peak_rss.max(sampling.stop());
        let g = report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 report without end.sum_received")?
            / 1e9;
        gbps.push(g);
        if let Some(cores) = cores
            && g > 0.0
        {
            cpu.push(cores / g);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(Throughput {
        gbps: Summary::of(gbps),
        cpu_cores_per_gbps: (!cpu.is_empty()).then(|| Summary::of(cpu)),
        peak_rss_kib: (!overlay.0.is_empty()).then_some(peak_rss),
    })
}

/// Samples the overlay's RSS every 100 ms on a thread until stopped; returns the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(overlay: OverlayProcs) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(overlay.rss_kib());
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        RssSampler { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// Round-trip times of ICMP echo, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Rtt {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub replies: usize,
    pub sent: u32,
}

/// `count` pings, 10 ms apart.
pub fn ping_rtt(path: &Path, count: u32) -> Result<Rtt> {
    Ok(Rtt::of(ping_times(path, count)?, count))
}

impl Rtt {
    /// The percentiles of `times` (milliseconds, not empty), replies to `sent` pings.
    pub fn of(mut times: Vec<f64>, sent: u32) -> Rtt {
        times.sort_by(f64::total_cmp);
        let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
        Rtt {
            p50_ms: pct(0.5),
            p90_ms: pct(0.9),
            p99_ms: pct(0.99),
            mean_ms: times.iter().sum::<f64>() / times.len() as f64,
            replies: times.len(),
            sent,
        }
    }
}

/// The round-trip times (ms) of `count` pings 10 ms apart; an error if none came back.
pub fn ping_times(path: &Path, count: u32) -> Result<Vec<f64>> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &path.client_ns,
            "ping",
            "-n",
            "-i",
            "0.01",
            "-W",
            "1",
            "-c",
        ])
        .arg(count.to_string())
        .arg(path.server_addr.to_string())
        .output()
        .context("running ping")?;
    let times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split("time=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    if times.is_empty() {
        bail!(
            "no ping replies from {} to {}",
            path.client_ns,
            path.server_addr
        );
    }
    Ok(times)
}

/// TCP request/response: one byte each way, one transaction at a time, on one connection
/// (netperf's TCP_RR shape). Returns transactions per second.
pub fn tcp_rr(path: &Path, secs: u32) -> Result<f64> {
    let mut rr = RequestResponse::open(path)?;
    rr.run(Duration::from_secs(secs.into()))?;
    Ok(rr.rate())
}

/// A request/response connection and its server, measured in one or more runs (the bench's
/// alternated comparisons take turns of a fraction of a second between two systems).
pub struct RequestResponse {
    client: TcpStream,
    server: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    transactions: u64,
    elapsed: Duration,
}

impl RequestResponse {
    /// Starts the server in the server namespace and connects to it from the client's.
    pub fn open(path: &Path) -> Result<RequestResponse> {
        let addr = path.server_addr;
        let listener = netns::run_in(&path.server_ns, move || TcpListener::bind((addr, PORT)))??;
        let server = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut b = [0u8; 1];
            while s.read(&mut b)? == 1 {
                s.write_all(&b)?;
            }
            Ok(())
        });
        // Without a connection the server waits in accept: it is left behind, not joined.
        let client = netns::run_in(&path.client_ns, move || TcpStream::connect((addr, PORT)))??;
        client.set_nodelay(true)?;
        client.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(RequestResponse {
            client,
            server: Some(server),
            transactions: 0,
            elapsed: Duration::ZERO,
        })
    }

    /// Transactions, one after the other, for `how_long`.
    pub fn run(&mut self, how_long: Duration) -> Result<()> {
        let client = &mut self.client;
        let t0 = Instant::now();
        let deadline = t0 + how_long;
        let mut b = [0u8; 1];
        while Instant::now() < deadline {
            client.write_all(&[self.transactions as u8])?;
            client
                .read_exact(&mut b)
                .context("request/response reply")?;
            self.transactions += 1;
        }
        self.elapsed += t0.elapsed();
        Ok(())
    }

    /// Transactions per second over the runs since the last call (which it forgets).
    pub fn rate(&mut self) -> f64 {
        let rate = self.transactions as f64 / self.elapsed.as_secs_f64();
        (self.transactions, self.elapsed) = (0, Duration::ZERO);
        rate
    }
}

impl Drop for RequestResponse {
    /// Ending the client's side of the connection ends the server.
    fn drop(&mut self) {
        let _ = self.client.shutdown(std::net::Shutdown::Both);
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

/// Small-packet rate: 64-byte UDP payloads sent as fast as iperf3 can for `secs`; returns the
/// packets per second that arrived, and the CPU cores the overlay's own processes kept busy
/// meanwhile (on average) when it has processes.
pub fn udp_small_packets(
    path: &Path,
    secs: u32,
    overlay: &OverlayProcs,
) -> Result<(f64, Option<f64>)> {
    let (report, cores) = overlay.cores_during(|| {
        iperf3(
            path,
            &["-u", "-l", "64", "-b", "0", "-t", &secs.to_string()],
        )
    })?;
    let sum = &report["end"]["sum"];
    let packets = sum["packets"]
        .as_f64()
        .context("iperf3 UDP report without packets")?;
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let seconds = sum["seconds"].as_f64().unwrap_or(secs as f64);
    Ok(((packets - lost) / seconds, cores))
}

/// Cores per 100k packets/s (the budget of a small board), when something was delivered.
pub fn cores_per_100kpps(cores: Option<f64>, pps: f64) -> Option<f64> {
    cores.filter(|_| pps > 0.0).map(|c| c / (pps / 1e5))
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn summary_takes_the_median_and_the_spread() {
        let s = Summary::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Summary::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }
}
