//! `meshctl status`'s health section and `--brief`: checks over what meshd reports, each
//! passing or saying what is wrong and why. Pure: status and peers in, checks out.

use mesh_proto::v1::{Counter, PeerInfo, Peers, Status};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    /// Working, but not as well as it could: relayed, fallen back, a narrower path.
    Warning,
    /// Not working: no peer reachable.
    Critical,
}

impl Level {
    pub fn word(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
        }
    }

    /// The monitoring-plugin exit code (0 OK, 1 WARNING, 2 CRITICAL).
    pub fn exit_code(self) -> i32 {
        self as i32
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
}

fn counter(list: &[Counter], name: &str) -> u64 {
    list.iter().find(|c| c.name == name).map_or(0, |c| c.value)
}

fn check(name: &'static str, level: Level, detail: String) -> Check {
    Check {
        name,
        level,
        detail,
    }
}

/// Why traffic to `p` goes through `via` instead of straight to it.
fn why_relayed(p: &PeerInfo) -> String {
    if p.state == "established" && p.datapath_health == "down" {
        "its control connection is up but data-path heartbeats do not arrive: a firewall or \
         NAT drops the data port (UDP) between us"
            .to_owned()
    } else if p.state == "established" {
        "it is no direct neighbour".to_owned()
    } else if p.addresses.is_empty() {
        "no direct address for it is known".to_owned()
    } else if p.last_error.is_empty() {
        format!("no direct connection ({})", p.state)
    } else {
        format!("no direct connection: {}", p.last_error)
    }
}

pub fn checks(s: &Status, peers: &Peers) -> Vec<Check> {
    let dp = s.datapath.clone().unwrap_or_default();
    let mut out = Vec::new();
    out.push(if dp.fallback_reason.is_empty() {
        check("datapath", Level::Ok, format!("{} datapath", dp.mode))
    } else {
        check(
            "datapath",
            Level::Warning,
            format!(
                "the kernel datapath is unavailable, meshd forwards every frame: {}",
                dp.fallback_reason
            ),
        )
    });

    let known: Vec<&PeerInfo> = peers.peers.iter().filter(|p| !p.id.is_empty()).collect();
    let up = known
        .iter()
        .filter(|p| p.hops > 0 || p.state == "established");
    let reachable = up.count();
    let down: Vec<String> = known
        .iter()
        .filter(|p| p.hops == 0 && p.state != "established")
        .map(|p| {
            let why = if p.last_error.is_empty() {
                p.state.clone()
            } else {
                format!("{}: {}", p.state, p.last_error)
            };
            format!("{} ({why})", p.name)
        })
        .collect();
    out.push(if known.is_empty() {
        check(
            "peers",
            Level::Warning,
            "no peer known: give meshd a peer to dial (meshctl connect HOST)".to_owned(),
        )
    } else if reachable == 0 {
        check(
            "peers",
            Level::Critical,
            format!("no peer reachable: {}", down.join("; ")),
        )
    } else if !down.is_empty() {
        check(
            "peers",
            Level::Warning,
            format!("{reachable} reachable, unreachable: {}", down.join("; ")),
        )
    } else {
        check("peers", Level::Ok, format!("{reachable} reachable"))
    });

    let relayed: Vec<String> = known
        .iter()
        .filter_map(|p| {
            let via = p.via.as_ref()?;
            // Reached through another peer although it is a neighbour whose data path is
            // blocked, or one meshd tried and failed to connect to directly.
            (p.datapath_health == "down" || matches!(p.state.as_str(), "retrying" | "failed"))
                .then(|| format!("{} via {via}: {}", p.name, why_relayed(p)))
        })
        .collect();
    out.push(if relayed.is_empty() {
        check(
            "relays",
            Level::Ok,
            "every peer is reached directly".to_owned(),
        )
    } else {
        check("relays", Level::Warning, relayed.join("; "))
    });

    let narrow: Vec<String> = known
        .iter()
        .filter(|p| p.link_mtu > 0 && p.link_mtu < dp.overlay_mtu)
        .map(|p| format!("{}: {} of {}", p.name, p.link_mtu, dp.overlay_mtu))
        .collect();
    out.push(if narrow.is_empty() {
        check("mtu", Level::Ok, format!("overlay MTU {}", dp.overlay_mtu))
    } else {
        check(
            "mtu",
            Level::Warning,
            format!(
                "narrower paths (bigger packets to them are answered with ICMP too big): {}",
                narrow.join(", ")
            ),
        )
    });

    let failed = counter(&s.handshake_counters, "handshake_failed_auth");
    let throttled = counter(&s.handshake_counters, "handshake_refused_throttled");
    out.push(if failed == 0 {
        check(
            "authentication",
            Level::Ok,
            "no failed handshakes".to_owned(),
        )
    } else {
        check(
            "authentication",
            Level::Warning,
            format!(
                "{failed} handshakes failed authentication (a wrong password or certificate, or \
                 someone guessing), {throttled} refused while their source had to wait"
            ),
        )
    });

    let future = counter(&s.gossip_counters, "gossip_refused_future_version");
    let lies: u64 = s
        .gossip_counters
        .iter()
        .filter(|c| {
            c.name.starts_with("gossip_refused_") && c.name != "gossip_refused_future_version"
        })
        .map(|c| c.value)
        .sum();
    out.push(match (future, lies) {
        (0, 0) => check("gossip", Level::Ok, "no entry refused".to_owned()),
        (f, 0) => check(
            "gossip",
            Level::Warning,
            format!(
                "{f} entries refused as from the far future: a peer's clock is more than 10 \
                 minutes ahead (check NTP)"
            ),
        ),
        (f, l) => check(
            "gossip",
            Level::Warning,
            format!(
                "{l} entries refused (bad signature, a short id or size not allowed: a member \
                 lying, or a bug), {f} from the far future"
            ),
        ),
    });
    out
}

/// The worst level among the checks.
pub fn overall(checks: &[Check]) -> Level {
    checks.iter().map(|c| c.level).max().unwrap_or(Level::Ok)
}

/// One line for monitoring: the overall level and what is not OK (or the peer count).
pub fn brief(s: &Status, checks: &[Check]) -> String {
    let level = overall(checks);
    let problems: Vec<String> = checks
        .iter()
        .filter(|c| c.level != Level::Ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    let mode = s.datapath.as_ref().map_or("", |d| d.mode.as_str());
    if problems.is_empty() {
        let peers = checks
            .iter()
            .find(|c| c.name == "peers")
            .map_or(String::new(), |c| c.detail.clone());
        format!("{}: {} - {peers}, datapath {mode}", level.word(), s.name)
    } else {
        format!("{}: {} - {}", level.word(), s.name, problems.join(" | "))
    }
}

#[cfg(test)]
mod tests {
    use mesh_proto::v1::Datapath;

    use super::*;

    fn status() -> Status {
        Status {
            name: "h1".into(),
            datapath: Some(Datapath {
                mode: "ebpf".into(),
                overlay_mtu: 1450,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn peer(name: &str, state: &str, hops: u32) -> PeerInfo {
        PeerInfo {
            name: name.into(),
            id: format!("{name}-id"),
            state: state.into(),
            hops,
            datapath_health: if hops == 1 {
                "up".into()
            } else {
                String::new()
            },
            link_mtu: if hops == 1 { 1450 } else { 0 },
            addresses: vec!["198.18.0.9:6783".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_healthy_node_is_ok_in_one_line() {
        let peers = Peers {
            peers: vec![peer("h2", "established", 1), peer("h3", "established", 1)],
        };
        let c = checks(&status(), &peers);
        assert_eq!(overall(&c), Level::Ok, "{c:?}");
        assert_eq!(brief(&status(), &c), "OK: h1 - 2 reachable, datapath ebpf");
    }

    #[test]
    fn a_blocked_data_port_a_fallback_a_narrow_path_and_a_skewed_clock_say_why() {
        let mut relayed = peer("h3", "established", 2);
        relayed.via = Some("h2".into());
        relayed.datapath_health = "down".into();
        let mut narrow = peer("h2", "established", 1);
        narrow.link_mtu = 1400;
        let mut s = status();
        s.datapath.as_mut().unwrap().fallback_reason = "loading failed (os error 1)".into();
        s.gossip_counters = vec![Counter {
            name: "gossip_refused_future_version".into(),
            value: 2,
        }];
        s.handshake_counters = vec![Counter {
            name: "handshake_failed_auth".into(),
            value: 5,
        }];
        let c = checks(
            &s,
            &Peers {
                peers: vec![narrow, relayed],
            },
        );
        assert_eq!(overall(&c), Level::Warning);
        let line = brief(&s, &c);
        for part in [
            "WARNING: h1",
            "h3 via h2: its control connection is up but data-path heartbeats do not arrive",
            "os error 1",
            "h2: 1400 of 1450",
            "5 handshakes failed authentication",
            "clock",
        ] {
            assert!(line.contains(part), "{part:?} missing: {line}");
        }
    }

    #[test]
    fn no_reachable_peer_is_critical() {
        let mut lost = peer("h2", "failed", 0);
        lost.last_error = "timed out".into();
        let c = checks(&status(), &Peers { peers: vec![lost] });
        assert_eq!(overall(&c), Level::Critical);
        assert_eq!(overall(&c).exit_code(), 2);
        assert!(brief(&status(), &c).contains("h2 (failed: timed out)"));
    }
}
