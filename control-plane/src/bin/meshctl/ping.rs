//! `meshctl ping`: what the echo replies say, as text or JSON.

use mesh_proto::v1::{PingReply, PingResult};
use serde_json::{Value, json};

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// "direct", or "via a, b".
fn way(relays: &[String]) -> String {
    if relays.is_empty() {
        "direct".into()
    } else {
        format!("via {}", relays.join(", "))
    }
}

/// The way a reply went there and back, in words.
fn path_of(r: &PingReply) -> String {
    let there = way(&r.there);
    let mut back_relays = r.back.clone();
    back_relays.reverse();
    let back = way(&back_relays);
    if r.there == back_relays {
        format!("{there}, both ways")
    } else {
        format!("there {there}, back {back}")
    }
}

fn loss_percent(p: &PingResult) -> f64 {
    if p.sent == 0 {
        return 0.0;
    }
    100.0 * f64::from(p.sent - p.replies.len() as u32) / f64::from(p.sent)
}

/// (min, avg, max) round-trip time in µs, once a reply came.
fn rtt_stats(p: &PingResult) -> Option<(u64, u64, u64)> {
    let rtts: Vec<u64> = p.replies.iter().map(|r| r.rtt_us).collect();
    let min = *rtts.iter().min()?;
    let max = *rtts.iter().max()?;
    Some((min, rtts.iter().sum::<u64>() / rtts.len() as u64, max))
}

/// How the first link carries data frames.
fn first_hop(p: &PingResult) -> String {
    let forwarder = match p.forwarder.as_str() {
        "kernel" => "kernel datapath",
        "tap" => "TAP datapath",
        _ => "datapath unknown",
    };
    let sealed = if p.encrypted { "sealed" } else { "plaintext" };
    format!("first hop {} ({forwarder}, {sealed})", p.first_hop)
}

pub fn print(p: &PingResult) {
    println!(
        "PING {} ({}) through the data path: {}, routes say {} hop{}",
        p.peer,
        p.peer_id,
        first_hop(p),
        p.route_hops,
        if p.route_hops == 1 { "" } else { "s" }
    );
    for r in &p.replies {
        println!(
            "reply seq={} time={:.3} ms  {}",
            r.seq,
            ms(r.rtt_us),
            path_of(r)
        );
    }
    println!("--- {} ---", p.peer);
    println!(
        "{} sent, {} received, {:.0}% loss",
        p.sent,
        p.replies.len(),
        loss_percent(p)
    );
    if let Some((min, avg, max)) = rtt_stats(p) {
        println!(
            "rtt min/avg/max {:.3}/{:.3}/{:.3} ms",
            ms(min),
            ms(avg),
            ms(max)
        );
    }
    // Paths, most taken first: a change mid-ping (a link failing) shows as two.
    let mut paths: Vec<(String, usize)> = Vec::new();
    for r in &p.replies {
        let path = path_of(r);
        match paths.iter_mut().find(|(p, _)| *p == path) {
            Some((_, n)) => *n += 1,
            None => paths.push((path, 1)),
        }
    }
    paths.sort_by_key(|p| std::cmp::Reverse(p.1));
    for (path, n) in paths {
        println!(
            "path: {path} ({n} repl{})",
            if n == 1 { "y" } else { "ies" }
        );
    }
    if p.replies.is_empty() {
        println!(
            "no reply: the data path to {} loses packets (a firewall on the data port, a \
             NAT mapping gone), or its meshd is stuck; `meshctl status` on both hosts says more",
            p.peer
        );
    }
}

pub fn json(p: &PingResult) -> Value {
    let rtt =
        rtt_stats(p).map(|(min, avg, max)| json!({"min": ms(min), "avg": ms(avg), "max": ms(max)}));
    json!({
        "peer": p.peer,
        "peer_id": p.peer_id,
        "sent": p.sent,
        "received": p.replies.len(),
        "loss_percent": loss_percent(p),
        "first_hop": p.first_hop,
        "forwarder": p.forwarder,
        "encrypted": p.encrypted,
        "route_hops": p.route_hops,
        "rtt_ms": rtt,
        "replies": p.replies.iter().map(|r| json!({
            "seq": r.seq,
            "rtt_ms": ms(r.rtt_us),
            "there": r.there,
            "back": r.back,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(seq: u32, rtt_us: u64, there: &[&str], back: &[&str]) -> PingReply {
        PingReply {
            seq,
            rtt_us,
            there: there.iter().map(|s| s.to_string()).collect(),
            back: back.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn paths_read_in_the_order_they_were_travelled() {
        assert_eq!(path_of(&reply(0, 1, &[], &[])), "direct, both ways");
        assert_eq!(
            path_of(&reply(0, 1, &["b", "c"], &["c", "b"])),
            "via b, c, both ways"
        );
        assert_eq!(
            path_of(&reply(0, 1, &["b"], &[])),
            "there via b, back direct"
        );
    }

    #[test]
    fn loss_and_round_trip_times_are_summarised() {
        let p = PingResult {
            sent: 4,
            replies: vec![reply(0, 100, &[], &[]), reply(2, 300, &[], &[])],
            ..Default::default()
        };
        assert_eq!(loss_percent(&p), 50.0);
        assert_eq!(rtt_stats(&p), Some((100, 200, 300)));
        let none = PingResult {
            sent: 3,
            ..Default::default()
        };
        assert_eq!(loss_percent(&none), 100.0);
        assert_eq!(rtt_stats(&none), None);
        assert_eq!(json(&none)["rtt_ms"], Value::Null);
    }
}
