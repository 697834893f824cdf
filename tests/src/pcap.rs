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
    ns: String,
    underlay_if: String,
}

/// The EtherType of the frame [`Capture::finish`] sends to know the capture is complete: IEEE
/// 802's Local Experimental EtherType 1, which nothing on the underlay speaks.
const END_ETHER_TYPE: u16 = 0x88b5;

/// Starts capturing on `host`'s underlay into `<lab>/<name>.pcap`; returns once tcpdump listens.
/// Besides `filter`, it captures the end frame [`Capture::finish`] sends.
pub fn start(lab: &mut Lab, host: &Host, name: &str, filter: &str) -> Result<Capture> {
    let file = lab.dir().join(format!("{name}.pcap"));
    let path = file.to_str().expect("UTF-8 lab dir").to_owned();
    let filter = format!("({filter}) or ether proto {END_ETHER_TYPE:#06x}");
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
            &filter,
        ],
    )?;
    if !wait_until(Duration::from_secs(5), || {
        lab.log(proc).contains("listening on")
    }) {
        bail!("tcpdump did not start: {}", lab.log(proc));
    }
    Ok(Capture {
        proc,
        file,
        ns: host.ns.clone(),
        underlay_if: host.underlay_if.clone(),
    })
}

impl Capture {
    /// Stops tcpdump and returns the UDP datagrams it captured (see [`udp_payloads`]): all
    /// that the underlay saw before this call. tcpdump loses what it has not yet read when it
    /// is stopped (CI twice found 1 of 5 packets in a file closed straight after they were
    /// sent), so this first sends an end frame out of the underlay and waits until it is in
    /// the file: packets are captured in order, so everything seen before it is in too.
    pub fn finish(self, lab: &mut Lab) -> Result<Vec<(Ipv4Addr, u16, Vec<u8>)>> {
        let end = end_frame(self.proc);
        crate::netns::send_frames(&self.ns, &self.underlay_if, vec![end.clone()])?;
        let complete = wait_until(Duration::from_secs(15), || {
            std::fs::read(&self.file).is_ok_and(|pcap| frames(&pcap).any(|f| f == end))
        });
        lab.terminate(self.proc, Duration::from_secs(3))?;
        if !complete {
            bail!(
                "the capture's end frame never reached {}: {}",
                self.file.display(),
                lab.log(self.proc)
            );
        }
        Ok(udp_payloads(&std::fs::read(&self.file)?))
    }
}

/// A frame no host takes (a locally administered unicast MAC nobody has, an EtherType nobody
/// speaks) that names the capture it ends.
fn end_frame(proc: ProcId) -> Vec<u8> {
    let mut f = vec![0x02, 0xee, 0xee, 0xee, 0xee, 0xee, 0x02, 0xee, 0, 0, 0, 0];
    f.extend_from_slice(&END_ETHER_TYPE.to_be_bytes());
    f.extend_from_slice(format!("mesh capture end {proc:?}").as_bytes());
    f.resize(60, 0);
    f
}

/// The frames of a pcap file, as captured (a frame cut off at the end of the file is left out).
fn frames(pcap: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 24;
    std::iter::from_fn(move || {
        let header = pcap.get(at..at + 16)?;
        let caplen = u32::from_le_bytes(header[8..12].try_into().unwrap()) as usize;
        let frame = pcap.get(at + 16..at + 16 + caplen)?;
        at += 16 + caplen;
        Some(frame)
    })
}

/// The UDP datagrams in a pcap file of Ethernet frames (IPv4 without options is all the
/// underlay carries here), as (source, destination port, payload).
pub fn udp_payloads(pcap: &[u8]) -> Vec<(Ipv4Addr, u16, Vec<u8>)> {
    let mut out = Vec::new();
    for frame in frames(pcap) {
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
