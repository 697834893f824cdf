//! Outsiders flooding the control port with connections that never authenticate (some pushing
//! a maximal hello): meshd holds a bounded queue of them, its memory stays bounded, its
//! established peers stay established, and a member can still join during the flood.

use std::time::{Duration, Instant};

use mesh_tests::{
    Lab, bins,
    mesh::{Meshd, peer, sees_established, status_counter},
    procstat::rss_kib,
    wait_until,
};

fn handshakes(node: &Meshd, name: &str) -> u64 {
    status_counter(node, "handshake_counters", name)
}

#[test]
fn a_flood_of_unauthenticated_connections_costs_bounded_memory_and_no_peer() {
    let mut lab = Lab::new("flood").unwrap();
    let hv = lab.add_host("fv").unwrap();
    let hm = lab.add_host("fm").unwrap();
    let he = lab.add_host("fe").unwrap();
    let hj = lab.add_host("fj").unwrap();
    let pw = lab.password_file("pw", "flood test").unwrap();
    let pw = pw.to_str().unwrap().to_owned();
    let victim_addr = hv.addr.to_string();
    let alone = ["--password-file", pw.as_str(), "--datapath", "tap"];
    let joining = [&alone[..], &[victim_addr.as_str()]].concat();
    let nv = lab.start_meshd(&hv, &alone).unwrap();
    let nm = lab.start_meshd(&hm, &joining).unwrap();
    assert!(wait_until(Duration::from_secs(10), || sees_established(
        &nv,
        &["fm"]
    )));
    let since = peer(&nv, "fm").unwrap()["since"].clone();
    let pid = lab.pid(nv.proc).unwrap();
    let rss_before = rss_kib(pid);

    // 300 connections at a time for 15 s, 20 of them pushing an 8 MiB hello.
    let flood = lab
        .spawn(
            &he.ns,
            &bins::path("quic-flood").unwrap(),
            &[&format!("{}:6783", hv.addr), "300", "15", "20"],
        )
        .unwrap();
    let start = Instant::now();
    let (mut rss_max, mut pending_max) = (rss_before, 0);
    let mut joiner: Option<Meshd> = None;
    let mut joined_after = None;
    while lab.is_running(flood) {
        rss_max = rss_max.max(rss_kib(pid));
        pending_max = pending_max.max(handshakes(&nv, "handshakes_pending"));
        if joiner.is_none() && start.elapsed() > Duration::from_secs(3) {
            joiner = Some(lab.start_meshd(&hj, &joining).unwrap());
        }
        if let Some(j) = &joiner
            && joined_after.is_none()
            && sees_established(j, &["fv"])
        {
            joined_after = Some(start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the flood never ended"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let flood_log = lab.log(flood);
    println!(
        "flood: {} | meshd RSS {} KiB before, {} KiB at most ({} KiB more); at most {} \
         handshakes pending; {} turned away busy; a member joined {:?} into the flood",
        flood_log.trim(),
        rss_before,
        rss_max,
        rss_max - rss_before,
        pending_max,
        handshakes(&nv, "handshake_refused_busy"),
        joined_after
    );
    assert!(
        flood_log.contains("connected="),
        "the flood ran: {flood_log}"
    );
    assert!(
        handshakes(&nv, "handshake_refused_busy") > 0,
        "the queue limit was reached"
    );
    assert!(
        pending_max <= 64,
        "{pending_max} handshakes pending at once"
    );
    assert!(
        rss_max - rss_before < 48 * 1024,
        "meshd grew by {} KiB",
        rss_max - rss_before
    );
    assert!(joined_after.is_some(), "a member joined during the flood");
    // The established peer never dropped: same connection, same state since before.
    assert_eq!(peer(&nv, "fm").unwrap()["since"], since);
    assert!(sees_established(&nm, &["fv"]));
}
