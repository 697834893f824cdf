//! The Prometheus metrics meshd serves with `--metrics-listen`: made from the same status,
//! peer list and FDB that `meshctl` shows (one source of truth), rendered in the OpenMetrics
//! text format by `prometheus-client`. Pure: no sockets here; `meshd` serves the text.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use mesh_proto::v1::{Counter as ProtoCounter, Peers, Status};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A family of counters set from a snapshot (each label set counted once, from zero).
fn counters(
    registry: &mut Registry,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) {
    let family = Family::<Labels, Counter>::default();
    for (l, v) in samples {
        family.get_or_create(&l).inc_by(v);
    }
    registry.register(name, help, family);
}

fn gauges(
    registry: &mut Registry,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, i64)>,
) {
    let family = Family::<Labels, Gauge>::default();
    for (l, v) in samples {
        family.get_or_create(&l).set(v);
    }
    registry.register(name, help, family);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// The counters in `list` whose name starts with `prefix`, by the rest of their name.
fn with_prefix<'a>(
    list: &'a [ProtoCounter],
    prefix: &'a str,
) -> impl Iterator<Item = (&'a str, u64)> + 'a {
    list.iter()
        .filter_map(move |c| Some((c.name.strip_prefix(prefix)?, c.value)))
}

/// The metrics text for one scrape.
pub fn render(status: &Status, peers: &Peers, fdb_entries: usize) -> String {
    let mut r = Registry::with_prefix("mesh");
    let dp = status.datapath.clone().unwrap_or_default();
    r.register(
        "build",
        "This meshd: its name, version, peer id and how it authenticates",
        Info::new(labels(&[
            ("name", &status.name),
            ("version", &status.version),
            ("id", &status.id),
            ("auth", &status.auth),
        ])),
    );
    r.register(
        "datapath",
        "The datapath in use (ebpf or tap) and, when auto fell back to tap, why",
        Info::new(labels(&[
            ("mode", &dp.mode),
            ("fallback_reason", &dp.fallback_reason),
            ("underlay", &dp.underlay_interface),
        ])),
    );
    gauge(
        &mut r,
        "uptime_seconds",
        "Seconds since meshd started",
        status.uptime_seconds as i64,
    );
    gauges(
        &mut r,
        "peers",
        "Known peers by state",
        status
            .peers_by_state
            .iter()
            .map(|(s, n)| (labels(&[("state", s)]), i64::from(*n))),
    );
    gauge(
        &mut r,
        "connections",
        "Established control connections",
        i64::from(status.connections),
    );
    gauge(
        &mut r,
        "fdb_entries",
        "MAC addresses known (the kernel's FDB and meshd's)",
        fdb_entries as i64,
    );
    gauge(
        &mut r,
        "overlay_mtu_bytes",
        "Largest IP packet the overlay carries",
        i64::from(dp.overlay_mtu),
    );

    let peer = |p: &mesh_proto::v1::PeerInfo| labels(&[("peer", &p.name)]);
    gauges(
        &mut r,
        "peer_up",
        "1 while the control connection to the peer is established",
        peers
            .peers
            .iter()
            .map(|p| (peer(p), i64::from(p.state == "established"))),
    );
    gauges(
        &mut r,
        "peer_datapath_up",
        "For a direct neighbour: 1 while its data-path heartbeats arrive, 0 when its traffic \
         goes through a relay",
        peers
            .peers
            .iter()
            .filter(|p| !p.datapath_health.is_empty())
            .map(|p| (peer(p), i64::from(p.datapath_health == "up"))),
    );
    gauges(
        &mut r,
        "peer_hops",
        "Hops to the peer on the data path (1: direct)",
        peers.peers.iter().map(|p| (peer(p), i64::from(p.hops))),
    );
    gauges(
        &mut r,
        "peer_link_mtu_bytes",
        "Overlay MTU of the link to a neighbour (its probed path)",
        peers
            .peers
            .iter()
            .filter(|p| p.link_mtu > 0)
            .map(|p| (peer(p), i64::from(p.link_mtu))),
    );
    let rtt = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for p in &peers.peers {
        if let Some(ms) = p.rtt_ms {
            rtt.get_or_create(&peer(p)).set(ms / 1000.0);
        }
    }
    r.register(
        "peer_rtt_seconds",
        "Round-trip time to the peer over its control connection",
        rtt,
    );
    let traffic = |f: fn(&mesh_proto::v1::PeerInfo) -> u64| {
        peers
            .peers
            .iter()
            .filter(|p| !p.datapath.is_empty())
            .map(move |p| {
                (
                    labels(&[("peer", &p.name), ("datapath", &p.datapath)]),
                    f(p),
                )
            })
            .collect::<Vec<_>>()
    };
    counters(
        &mut r,
        "peer_tx_packets",
        "Datagrams sent on the underlay link to a neighbour",
        traffic(|p| p.tx_packets),
    );
    counters(
        &mut r,
        "peer_tx_bytes",
        "Bytes sent on the underlay link to a neighbour",
        traffic(|p| p.tx_bytes),
    );
    counters(
        &mut r,
        "peer_rx_packets",
        "Datagrams received on the underlay link from a neighbour",
        traffic(|p| p.rx_packets),
    );
    counters(
        &mut r,
        "peer_rx_bytes",
        "Bytes received on the underlay link from a neighbour",
        traffic(|p| p.rx_bytes),
    );

    let dropped = with_prefix(&dp.tap_counters, "tap_dropped_")
        .map(|(why, v)| (labels(&[("datapath", "tap"), ("reason", why)]), v))
        .chain(
            with_prefix(&dp.kernel_counters, "kernel_dropped_")
                .map(|(why, v)| (labels(&[("datapath", "kernel"), ("reason", why)]), v)),
        );
    counters(&mut r, "dropped", "Frames dropped, by reason", dropped);
    counters(
        &mut r,
        "tap_frames",
        "The TAP datapath's frame counters (what meshd forwarded, batched, delivered)",
        dp.tap_counters
            .iter()
            .filter(|c| !c.name.starts_with("tap_dropped_"))
            .map(|c| (labels(&[("counter", &c.name)]), c.value)),
    );
    counters(
        &mut r,
        "kernel_frames",
        "The kernel datapath's frame counters: sent, delivered, relayed, flooded, and what \
         went on to meshd and why (kernel_tx_flood_to_meshd: misses and floods meshd handled)",
        dp.kernel_counters
            .iter()
            .filter(|c| !c.name.starts_with("kernel_dropped_"))
            .map(|c| (labels(&[("counter", &c.name)]), c.value)),
    );
    counters(
        &mut r,
        "gossip_events",
        "Gossip messages received and sent, entries accepted as news, entries refused by reason",
        status
            .gossip_counters
            .iter()
            .map(|c| (labels(&[("event", &c.name)]), c.value)),
    );
    counters(
        &mut r,
        "handshake_failures",
        "Incoming handshakes that failed (auth: wrong password or certificate) or were refused \
         while their source had to wait after a failure (throttled)",
        status.handshake_counters.iter().map(|c| {
            let reason = c
                .name
                .strip_prefix("handshake_failed_")
                .or_else(|| c.name.strip_prefix("handshake_refused_"))
                .unwrap_or(&c.name);
            (labels(&[("reason", reason)]), c.value)
        }),
    );

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

/// OpenMetrics text (what [`render`] gives) in Prometheus' classic text format (version
/// 0.0.4), for scrapers and tools that do not speak OpenMetrics (`promtool check metrics`): a
/// counter family is named with its `_total` suffix, an info family becomes a gauge named
/// `_info`, and the `# EOF` and `# UNIT` lines go.
pub fn to_classic(openmetrics: &str) -> String {
    let mut kinds = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            kinds.insert(name.to_owned(), kind.to_owned());
        }
    }
    let renamed = |name: &str| match kinds.get(name).map(String::as_str) {
        Some("counter") => (format!("{name}_total"), "counter"),
        Some("info") => (format!("{name}_info"), "gauge"),
        Some(k) => (name.to_owned(), if k == "unknown" { "untyped" } else { k }),
        None => (name.to_owned(), "untyped"),
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, _)) = rest.split_once(' ')
        {
            let (name, kind) = renamed(name);
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if let Some(rest) = line.strip_prefix("# HELP ")
            && let Some((name, help)) = rest.split_once(' ')
        {
            out.push_str(&format!("# HELP {} {help}\n", renamed(name).0));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Serves `GET /metrics` on `listener` until the process ends: each scrape asks `snapshot` for
/// the agent's status, peers and FDB size. OpenMetrics when the scraper asks for it (Prometheus
/// does), the classic text format otherwise. At most 8 scrapes at a time, 5 s each to send
/// their request: a flood of connections costs nothing more.
pub async fn serve<F, Fut>(listener: tokio::net::TcpListener, snapshot: F)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Option<(Status, Peers, usize)>> + Send,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // busy: dropped, the scraper retries
        };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            let read = async {
                while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                    match stream.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => len += n,
                    }
                }
                true
            };
            if !matches!(
                tokio::time::timeout(std::time::Duration::from_secs(5), read).await,
                Ok(true)
            ) {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let reply = match request.lines().next() {
                Some(l) if l.starts_with("GET /metrics ") || l.starts_with("GET /metrics?") => {
                    match snapshot().await {
                        Some((status, peers, fdb)) => {
                            let text = render(&status, &peers, fdb);
                            let open = request.lines().any(|l| {
                                l.to_ascii_lowercase().starts_with("accept:")
                                    && l.contains("application/openmetrics-text")
                            });
                            if open {
                                response(
                                    "200 OK",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                    &text,
                                )
                            } else {
                                response(
                                    "200 OK",
                                    "text/plain; version=0.0.4; charset=utf-8",
                                    &to_classic(&text),
                                )
                            }
                        }
                        None => response("503 Service Unavailable", "text/plain", "stopping\n"),
                    }
                }
                _ => response("404 Not Found", "text/plain", "metrics are at /metrics\n"),
            };
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: \
         close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use mesh_proto::v1::{Datapath, PeerInfo};

    use super::*;

    #[test]
    fn a_scrape_names_every_peer_and_each_drop_reason() {
        let status = Status {
            name: "h1".into(),
            version: "0.1.0".into(),
            datapath: Some(Datapath {
                mode: "ebpf".into(),
                tap_counters: vec![
                    ProtoCounter {
                        name: "tap_dropped_auth".into(),
                        value: 3,
                    },
                    ProtoCounter {
                        name: "tap_reads".into(),
                        value: 9,
                    },
                ],
                kernel_counters: vec![ProtoCounter {
                    name: "kernel_dropped_loop".into(),
                    value: 2,
                }],
                ..Default::default()
            }),
            handshake_counters: vec![ProtoCounter {
                name: "handshake_failed_auth".into(),
                value: 4,
            }],
            ..Default::default()
        };
        let peers = Peers {
            peers: vec![PeerInfo {
                name: "h2".into(),
                state: "established".into(),
                datapath: "kernel".into(),
                datapath_health: "up".into(),
                rtt_ms: Some(1.5),
                tx_bytes: 1234,
                hops: 1,
                ..Default::default()
            }],
        };
        let text = render(&status, &peers, 7);
        for line in [
            r#"mesh_peer_tx_bytes_total{peer="h2",datapath="kernel"} 1234"#,
            r#"mesh_peer_up{peer="h2"} 1"#,
            r#"mesh_peer_rtt_seconds{peer="h2"} 0.0015"#,
            r#"mesh_dropped_total{datapath="tap",reason="auth"} 3"#,
            r#"mesh_dropped_total{datapath="kernel",reason="loop"} 2"#,
            r#"mesh_handshake_failures_total{reason="auth"} 4"#,
            r#"mesh_tap_frames_total{counter="tap_reads"} 9"#,
            "mesh_fdb_entries 7",
            r#"mesh_datapath_info{mode="ebpf",fallback_reason="",underlay=""} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        let classic = to_classic(&text);
        assert!(classic.contains("# TYPE mesh_peer_tx_bytes_total counter\n"));
        assert!(classic.contains("# TYPE mesh_datapath_info gauge\n"));
        assert!(!classic.contains("# EOF"));
    }
}
