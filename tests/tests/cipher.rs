//! The cipher of a sealed link is agreed per link: AES-256-GCM between two nodes that both have
//! AES hardware (and were not told `--cipher chacha20-poly1305`), ChaCha20-Poly1305 on any link
//! with a node that does not offer AES. Both carry traffic, in one mesh, side by side; a node
//! of each kind relays for the other.

use std::time::Duration;

use mesh_tests::{
    Lab,
    mesh::{full_mesh, peer, tcp_transfer},
    wait_until,
};

/// Whether this machine's CPU has what meshd requires to offer AES-256-GCM (x86-64: AES-NI
/// and PCLMULQDQ).
fn aes_in_hardware() -> bool {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    cfg!(target_arch = "x86_64") && has("aes") && has("pclmulqdq")
}

#[test]
fn links_seal_with_aes_where_both_ends_offer_it_and_chacha_elsewhere() {
    let mut lab = Lab::new("cipher").unwrap();
    let h1 = lab.add_host("ci1").unwrap();
    let h2 = lab.add_host("ci2").unwrap();
    let h3 = lab.add_host("ci3").unwrap();
    let c1 = lab.add_container(&h1, "cc1", Some("10.47.0.1/24")).unwrap();
    let c2 = lab.add_container(&h2, "cc2", Some("10.47.0.2/24")).unwrap();
    let c3 = lab.add_container(&h3, "cc3", Some("10.47.0.3/24")).unwrap();
    let pw = lab.password_file("pw", "cipher test").unwrap();
    let pw = pw.to_str().unwrap().to_owned();
    let first = h1.addr.to_string();
    let tap = ["--datapath", "tap", "--password-file", pw.as_str()];
    let n1 = lab.start_meshd(&h1, &tap).unwrap();
    let n2 = lab
        .start_meshd(&h2, &[&tap[..], &[&first]].concat())
        .unwrap();
    let n3 = lab
        .start_meshd(
            &h3,
            &[&tap[..], &["--cipher", "chacha20-poly1305", &first]].concat(),
        )
        .unwrap();
    let nodes = [n1, n2, n3];
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));

    let fast = if aes_in_hardware() {
        "aes-256-gcm"
    } else {
        "chacha20-poly1305"
    };
    let cipher = |node: usize, name: &str| {
        peer(&nodes[node], name).and_then(|p| p["cipher"].as_str().map(str::to_owned))
    };
    // Each end of each link says the same.
    for (node, name, want) in [
        (0, "ci2", fast),
        (1, "ci1", fast),
        (0, "ci3", "chacha20-poly1305"),
        (2, "ci1", "chacha20-poly1305"),
        (1, "ci3", "chacha20-poly1305"),
        (2, "ci2", "chacha20-poly1305"),
    ] {
        assert!(
            wait_until(Duration::from_secs(10), || cipher(node, name).as_deref()
                == Some(want)),
            "{} -> {name}: {:?}, expected {want}",
            nodes[node].host.name,
            cipher(node, name)
        );
    }

    for to in [&c2, &c3] {
        assert!(
            wait_until(Duration::from_secs(15), || lab
                .ping(&c1.ns, to.addr.unwrap(), 1)
                .unwrap()),
            "c1 cannot reach {}",
            to.name
        );
        let target = to.addr.unwrap().to_string();
        tcp_transfer(&mut lab, &c1, to, (&target, &target), "4M").unwrap();
    }

    // The ChaCha-only node relays between the AES pair: with the direct link cut, c1's
    // frames to c2 are opened by ci3 (ChaCha20-Poly1305) and sealed again for ci2.
    lab.drop_between(&h1, &h2).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || peer(&nodes[0], "ci2")
            .is_some_and(|p| p["via"] == "ci3")),
        "ci1 should reach ci2 through ci3: {:?}",
        peer(&nodes[0], "ci2")
    );
    assert!(wait_until(Duration::from_secs(15), || lab
        .ping(&c1.ns, c2.addr.unwrap(), 1)
        .unwrap()));
    let target = c2.addr.unwrap().to_string();
    tcp_transfer(&mut lab, &c1, &c2, (&target, &target), "4M").unwrap();
}
