//! How meshctl prints what meshd answers: tables for people, JSON for scripts.

use mesh::switch::seal::Cipher;
use mesh::text::{shown, shown_max};
use mesh_proto::v1::{Fdb, Peers, Routes, Status};
use serde_json::{Value, json};

pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialise")
    );
}

pub fn status_json(s: &Status) -> Value {
    let dp = s.datapath.clone().unwrap_or_default();
    json!({
        "name": s.name,
        "id": s.id,
        "short_id": format!("{:06x}", s.short_id),
        "version": s.version,
        "uptime_seconds": s.uptime_seconds,
        "listen": s.listen,
        "auth": s.auth,
        "insecure": s.insecure,
        "connections": s.connections,
        "peers_by_state": s.peers_by_state,
        "handshake_counters": s.handshake_counters.iter()
            .map(|c| (c.name.clone(), Value::from(c.value)))
            .collect::<serde_json::Map<_, _>>(),
        "gossip_counters": s.gossip_counters.iter()
            .map(|c| (c.name.clone(), Value::from(c.value)))
            .collect::<serde_json::Map<_, _>>(),
        "datapath": {
            "mode": dp.mode,
            "fallback_reason": dp.fallback_reason,
            "underlay_interface": dp.underlay_interface,
            "xdp_mode": dp.xdp_mode,
            "data_port": dp.data_port,
            "overlay_mtu": dp.overlay_mtu,
            "encrypted": dp.encrypted,
            "bridge": dp.bridge,
            "underlay_counters": dp.underlay_counters.iter()
                .map(|c| (c.name.clone(), Value::from(c.value)))
                .collect::<serde_json::Map<_, _>>(),
            "tap_counters": dp.tap_counters.iter()
                .map(|c| (c.name.clone(), Value::from(c.value)))
                .collect::<serde_json::Map<_, _>>(),
            "kernel_counters": dp.kernel_counters.iter()
                .map(|c| (c.name.clone(), Value::from(c.value)))
                .collect::<serde_json::Map<_, _>>(),
        },
    })
}

pub fn print_status(s: &Status) {
    let dp = s.datapath.clone().unwrap_or_default();
    println!("name         {}", shown(&s.name));
    println!("id           {} (data path: {:06x})", s.id, s.short_id);
    println!("version      {}", s.version);
    println!("uptime       {}s", s.uptime_seconds);
    println!("listen       {} (QUIC)", s.listen);
    if s.insecure {
        println!(
            "auth         NONE: running with --insecure, anyone who can reach the port can join"
        );
    } else {
        println!("auth         {}", s.auth);
    }
    let mut states: Vec<String> = s
        .peers_by_state
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    states.sort();
    println!(
        "peers        {} ({} connections)",
        if states.is_empty() {
            "none".into()
        } else {
            states.join(", ")
        },
        s.connections
    );
    let forwarding = match dp.mode.as_str() {
        "ebpf" => "the kernel forwards plaintext links, meshd the rest",
        "tap" => "meshd forwards every frame through its TAP device",
        _ => "",
    };
    println!(
        "datapath     {} ({forwarding}), underlay {}, data port {}",
        dp.mode, dp.underlay_interface, dp.data_port
    );
    if !dp.fallback_reason.is_empty() {
        println!(
            "             kernel datapath unavailable: {}",
            dp.fallback_reason
        );
    }
    if dp.overlay_mtu > 0 {
        println!(
            "overlay      MTU {}, bridge {}, data frames {}",
            dp.overlay_mtu,
            dp.bridge,
            if dp.encrypted {
                "sealed (per-link keys; AES-256-GCM where both ends have AES hardware, \
                 else ChaCha20-Poly1305)"
            } else {
                "NOT encrypted (--insecure)"
            }
        );
    }
    if !dp.kernel_counters.is_empty() {
        println!("kernel counters");
        for c in &dp.kernel_counters {
            println!("  {:<30} {}", c.name, c.value);
        }
    }
    if !dp.underlay_counters.is_empty() {
        println!("underlay counters (observe-only XDP, {} mode)", dp.xdp_mode);
        for c in &dp.underlay_counters {
            println!("  {:<16} {}", c.name, c.value);
        }
    }
}

/// [`status_json`] with the health checks (`health`: name, level, detail).
pub fn status_json_with_health(s: &Status, checks: &[crate::health::Check]) -> Value {
    let mut v = status_json(s);
    v["health"] = checks
        .iter()
        .map(|c| json!({"check": c.name, "level": c.level.word(), "detail": c.detail}))
        .collect();
    v["health_overall"] = json!(crate::health::overall(checks).word());
    v
}

pub fn print_health(checks: &[crate::health::Check]) {
    println!("health       {}", crate::health::overall(checks).word());
    for c in checks {
        let mark = match c.level {
            crate::health::Level::Ok => "ok  ",
            crate::health::Level::Warning => "WARN",
            crate::health::Level::Critical => "FAIL",
        };
        println!("  {mark} {:<15} {}", c.name, c.detail);
    }
}

pub fn peers_json(p: &Peers) -> Value {
    Value::Array(
        p.peers
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "id": r.id,
                    "addresses": r.addresses,
                    "state": r.state,
                    "via": r.via,
                    "hops": r.hops,
                    "datapath": r.datapath,
                    "encrypted": r.encrypted,
                    "cipher": if r.cipher.is_empty() { Value::Null } else { Value::from(r.cipher.clone()) },
                    "datapath_health": if r.datapath_health.is_empty() { Value::Null } else { Value::from(r.datapath_health.clone()) },
                    "tx_packets": r.tx_packets,
                    "tx_bytes": r.tx_bytes,
                    "rx_packets": r.rx_packets,
                    "rx_bytes": r.rx_bytes,
                    "kernel_tx_packets": r.kernel_tx_packets,
                    "kernel_rx_packets": r.kernel_rx_packets,
                    "link_mtu": if r.link_mtu == 0 { Value::Null } else { Value::from(r.link_mtu) },
                    "rtt_ms": r.rtt_ms,
                    "datapath_rtt_ms": r.datapath_rtt_ms,
                    "since": r.since,
                    "last_error": if r.last_error.is_empty() { Value::Null } else { Value::from(r.last_error.clone()) },
                })
            })
            .collect(),
    )
}

pub fn print_peers(p: &Peers) {
    if p.peers.is_empty() {
        println!("no peers known; connect with `meshctl connect HOST[:PORT]`");
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!(
        "{:<16} {:<16} {:<12} {:<12} {:>8} {:>8}  {:<9} {:<6} {:>5} {:>16} {:>16}  ADDRESSES",
        "NAME",
        "ID",
        "STATE",
        "VIA",
        "RTT ms",
        "SINCE",
        "DATAPATH",
        "ENC",
        "MTU",
        "TX pkts/bytes",
        "RX pkts/bytes"
    );
    for r in &p.peers {
        let datapath = match (r.datapath.as_str(), r.datapath_health.as_str()) {
            ("", _) => "-".to_owned(),
            (d, "") => d.to_owned(),
            (d, h) => format!("{d} {h}"),
        };
        let traffic = |packets: u64, bytes: u64| format!("{packets}/{}", human_bytes(bytes));
        println!(
            "{:<16} {:<16} {:<12} {:<12} {:>8} {:>8}  {:<9} {:<6} {:>5} {:>16} {:>16}  {}{}",
            shown(&r.name),
            r.id,
            r.state,
            r.via.as_deref().map_or("-".into(), shown),
            // The data path's own round trip (heartbeat stamps) for a neighbour; otherwise the
            // control connection's estimate, marked.
            match (r.datapath_rtt_ms, r.rtt_ms) {
                (Some(d), _) => format!("{d:.3}"),
                (None, Some(c)) => format!("~{c:.2}"),
                (None, None) => "-".into(),
            },
            format!("{}s", now.saturating_sub(r.since)),
            datapath,
            if r.encrypted {
                // An older meshd names no cipher.
                Cipher::from_name(&r.cipher).map_or("yes", Cipher::short_name)
            } else {
                "no"
            },
            if r.link_mtu == 0 {
                "-".to_owned()
            } else {
                r.link_mtu.to_string()
            },
            traffic(r.tx_packets, r.tx_bytes),
            traffic(r.rx_packets, r.rx_bytes),
            shown_max(&r.addresses.join(" "), 400),
            if r.last_error.is_empty() || r.state == "established" {
                String::new()
            } else {
                format!("  ({})", shown_max(&r.last_error, 400))
            }
        );
    }
}

/// 1536 -> "1.5K": short enough for a table column.
fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

pub fn routes_json(r: &Routes) -> Value {
    json!({
        "unicast": r.unicast.iter().map(|u| json!({
            "destination": u.destination, "next_hop": u.next_hop, "hops": u.hops,
        })).collect::<Vec<_>>(),
        "broadcast": r.broadcast.iter().map(|b| json!({
            "source": b.source, "next_hops": b.next_hops,
        })).collect::<Vec<_>>(),
    })
}

pub fn print_routes(r: &Routes) {
    println!("unicast");
    println!("  {:<16} {:<16} {:>4}", "DESTINATION", "NEXT HOP", "HOPS");
    for u in &r.unicast {
        println!(
            "  {:<16} {:<16} {:>4}",
            shown(&u.destination),
            shown(&u.next_hop),
            u.hops
        );
    }
    println!("broadcast (this node forwards a source's broadcasts to)");
    for b in &r.broadcast {
        let hops = if b.next_hops.is_empty() {
            "-".into()
        } else {
            shown(&b.next_hops.join(", "))
        };
        println!("  {:<16} -> {hops}", shown(&b.source));
    }
}

pub fn fdb_json(f: &Fdb) -> Value {
    Value::Array(
        f.entries
            .iter()
            .map(|e| json!({ "mac": e.mac, "peer": e.peer, "age_ms": e.age_ms }))
            .collect(),
    )
}

pub fn print_fdb(f: &Fdb) {
    if f.entries.is_empty() {
        println!("no MAC addresses learned yet");
        return;
    }
    println!("{:<18} {:<16} {:>8}", "MAC", "PEER", "AGE s");
    for e in &f.entries {
        println!(
            "{:<18} {:<16} {:>8.1}",
            e.mac,
            shown(&e.peer),
            e.age_ms as f64 / 1000.0
        );
    }
}
