//! mesh's test lab: hosts, containers and NAT routers as network namespaces on one machine, and
//! the faults tests need (cut a link, drop traffic between two hosts, kill and restart a process).
//!
//! Everything a [`Lab`] creates is recorded in a file under [`registry::REGISTRY_DIR`] *before* it
//! is created, removed when the lab is dropped (also while a test panics), and — if the owning
//! process died without dropping it (SIGKILL, abort) — reaped by the next `Lab::new` on the
//! machine. Names carry the owner's PID and a counter, so tests can run in parallel.
//!
//! Addresses: the shared underlay switch is 198.18.0.0/24; the LAN behind NAT router k is
//! 198.19.k.0/24. Only namespaces this harness created are ever addressed.

pub mod bins;
pub mod docker;
mod lab;
pub mod mesh;
pub mod netns;
pub mod pcap;
pub mod procstat;
pub mod registry;
pub mod sh;

pub use lab::{Container, Host, Lab, NatRouter, ProcId};

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The datagrams on `sock`, as text, read until one equal to `end` arrives: the sender sends
/// `end` last, along the same path as the rest, so everything before it has had its chance
/// (a positive control, not a timeout taken for "everything arrived"). Panics if `end` does
/// not come within `deadline`. `sock` needs a read timeout (see `mesh::udp_listener`).
pub fn datagrams_until(
    sock: &std::net::UdpSocket,
    end: &str,
    deadline: std::time::Duration,
) -> Vec<String> {
    let until = std::time::Instant::now() + deadline;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while std::time::Instant::now() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text == end {
                return got;
            }
            got.push(text);
        }
    }
    panic!("{end:?} did not arrive within {deadline:?}; got {got:?}");
}
