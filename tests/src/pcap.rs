//! Reading what tcpdump captured (`-w`), for tests that check bytes on the underlay.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Result, bail};

use crate::{Host, Lab, ProcId, wait_until};

/// A running tcpdump writing what `host`'s underlay sees of `filter` to a file in the lab.
pub struct Capture {
    pub proc: ProcId,
    pub file: PathBuf,
}

/// Starts capturing on `host`'s underlay into `<lab>/<name>.pcap`; returns once tcpdump listens.
pub fn start(lab: &mut Lab, host: &Host, name: &str, filter: &str) -> Result<Capture> {
    let file = lab.dir().join(format!("{name}.pcap"));
    let path = file.to_str().expect("UTF-8 lab dir").to_owned();
    let proc = lab.spawn(
        &host.ns,
        Path::new("/usr/bin/tcpdump"),
        &[
            "-i",
            &host.underlay_if,
            "-U",
            "--immediate-mode",
            "-n",
            "-w",
            &path,
            filter,
        ],
    )?;
    if !wait_until(Duration::from_secs(5), || {
        lab.log(proc).contains("listening on")
    }) {
        bail!("tcpdump did not start: {}", lab.log(proc));
    }
    Ok(Capture { proc, file })
}

impl Capture {
    /// Stops tcpdump and returns the UDP datagrams it captured (see [`udp_payloads`]).
    pub fn finish(self, lab: &mut Lab) -> Result<Vec<(Ipv4Addr, u16, Vec<u8>)>> {
        lab.terminate(self.proc, Duration::from_secs(3))?;
        Ok(udp_payloads(&std::fs::read(&self.file)?))
    }
}

/// The UDP datagrams in a pcap file of Ethernet frames (IPv4 without options is all the
/// underlay carries here), as (source, destination port, payload).
pub fn udp_payloads(pcap: &[u8]) -> Vec<(Ipv4Addr, u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let caplen = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..(at + 16 + caplen).min(pcap.len())];
        at += 16 + caplen;
        if frame.len() < 42 || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
            continue;
        }
        let ip = &frame[14..];
        let hl = usize::from(ip[0] & 0xf) * 4;
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let udp = &ip[hl..];
        let dport = u16::from_be_bytes([udp[2], udp[3]]);
        out.push((src, dport, udp[8..].to_vec()));
    }
    out
}
