//! The overlay MTU on a 1500-byte underlay: a packet that fills it crosses, one byte more gets
//! an error back to its sender, and TCP with default settings (containers at MTU 1500) finds
//! the path MTU instead of black-holing; a narrower path is probed and answered at the source.
//! Each in every [`Mode`] (sealed TAP, plaintext kernel, mixed).

use std::{net::Ipv4Addr, process::Output, time::Duration};

use mesh_tests::{
    Container, Lab,
    mesh::{Mode, full_mesh, start_mesh_in, status, tap_counter, tcp_transfer},
    wait_until,
};

/// One ping with DF set and `size` bytes of payload: an IP packet of `size` + 28 bytes (20 of
/// IPv4 header, 8 of ICMP).
fn df_ping(lab: &Lab, from: &Container, to: Ipv4Addr, size: u64) -> Output {
    let (size, to) = (size.to_string(), to.to_string());
    let args = ["-n", "-c", "1", "-W", "2", "-M", "do", "-s", &size, &to];
    lab.exec(&from.ns, "ping", &args).unwrap()
}

fn mtu_scenario(label: &str, mode: Mode) {
    let mut lab = Lab::new(label).unwrap();
    let h1 = lab.add_host("m1").unwrap();
    let h2 = lab.add_host("m2").unwrap();
    let c1 = lab.add_container(&h1, "mc1", Some("10.41.0.1/24")).unwrap();
    let c2 = lab.add_container(&h2, "mc2", Some("10.41.0.2/24")).unwrap();
    let nodes = start_mesh_in(&mut lab, &[h1.clone(), h2.clone()], mode).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    let underlay = lab
        .exec(
            &h1.ns,
            "cat",
            &[&format!("/sys/class/net/{}/mtu", h1.underlay_if)],
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&underlay.stdout).trim(), "1500");

    let mtu = status(&nodes[0]).unwrap()["datapath"]["overlay_mtu"]
        .as_u64()
        .unwrap();
    assert!(mtu >= 1400, "overlay MTU {mtu} is below 1400");
    assert_eq!(mtu, if mode.sealed() { 1422 } else { 1450 });
    let target = c2.addr.unwrap().to_string();
    assert!(wait_until(Duration::from_secs(15), || lab
        .ping(&c1.ns, c2.addr.unwrap(), 1)
        .unwrap()));

    let df_ping = |size: u64| df_ping(&lab, &c1, c2.addr.unwrap(), size);
    let fits = df_ping(mtu - 28);
    assert!(
        fits.status.success(),
        "a {mtu}-byte DF ping should cross: {}",
        String::from_utf8_lossy(&fits.stdout)
    );
    let over = df_ping(mtu - 27);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&over.stdout),
        String::from_utf8_lossy(&over.stderr)
    );
    assert!(
        !over.status.success(),
        "one byte over the MTU crossed: {said}"
    );
    assert!(
        said.contains(&format!("mtu = {mtu}")) || said.contains(&format!("mtu={mtu}")),
        "the sender should hear the overlay MTU back: {said}"
    );
    assert!(tap_counter(&nodes[0], "tap_too_big_answered") >= 1);

    // TCP with default settings: the containers think their MTU is 1500.
    tcp_transfer(&mut lab, &c1, &c2, (&target, &target), "8M").unwrap();
    // The sender's stack learned the overlay MTU from meshd's answer.
    let route = lab.exec(&c1.ns, "ip", &["route", "get", &target]).unwrap();
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.contains(&format!("mtu {mtu}")), "{route}");
}

#[test]
fn packets_fill_the_overlay_mtu_and_bigger_ones_are_answered_not_lost() {
    mtu_scenario("tap-mtu", Mode::TapSealed);
}

#[test]
fn packets_fill_the_overlay_mtu_and_bigger_ones_are_answered_not_lost_kernel() {
    mtu_scenario("k-mtu", Mode::Kernel);
}

#[test]
fn packets_fill_the_overlay_mtu_and_bigger_ones_are_answered_not_lost_mixed() {
    mtu_scenario("mx-mtu", Mode::Mixed);
}

fn pmtu_scenario(label: &str, mode: Mode) {
    let mut lab = Lab::new(label).unwrap();
    let h1 = lab.add_host("p1").unwrap();
    let h2 = lab.add_host("p2").unwrap();
    let h3 = lab.add_host("p3").unwrap();
    let c1 = lab.add_container(&h1, "pc1", Some("10.45.0.1/24")).unwrap();
    let c2 = lab.add_container(&h2, "pc2", Some("10.45.0.2/24")).unwrap();
    let c3 = lab.add_container(&h3, "pc3", Some("10.45.0.3/24")).unwrap();
    // p2 sits behind a 1400-byte path; the hosts' own NICs stay at 1500.
    lab.narrow_path(&h2, 1400).unwrap();
    let nodes = start_mesh_in(&mut lab, &[h1.clone(), h2.clone(), h3.clone()], mode).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    let mtu = status(&nodes[0]).unwrap()["datapath"]["overlay_mtu"]
        .as_u64()
        .unwrap();
    // 1400 less outer IPv4+UDP (28), mesh header (8), seal (28 when sealing) and inner
    // Ethernet (14).
    let narrow = 1400 - 28 - 8 - if mode.sealed() { 28 } else { 0 } - 14;
    let link_mtu =
        |name: &str| mesh_tests::mesh::peer(&nodes[0], name).and_then(|p| p["link_mtu"].as_u64());
    assert!(
        wait_until(Duration::from_secs(15), || link_mtu("p2")
            .is_some_and(|m| m <= narrow && m + 16 > narrow)),
        "p1 should probe the path to p2 down to about {narrow}: {:?}",
        link_mtu("p2")
    );
    assert_eq!(link_mtu("p3"), Some(mtu), "the path to p3 is not narrow");

    let df_ping =
        |to: &mesh_tests::Container, size: u64| df_ping(&lab, &c1, to.addr.unwrap(), size);
    let probed = link_mtu("p2").unwrap();
    assert!(wait_until(Duration::from_secs(15), || df_ping(
        &c2,
        probed - 28
    )
    .status
    .success()));
    // Asked again until answered: twice in CI (loaded machine, sealed TAP) one full-size
    // packet went unanswered right after the path had settled. The cause found since: probes
    // replaced heartbeats, so p1 took p2's data path for down and sent through p3, which
    // dropped the frame on the narrow path (the log check at the end guards that). The retry
    // stays for whatever else may lag the settled MTU; a first try that failed is printed.
    let mut first = None;
    let answered = wait_until(Duration::from_secs(15), || {
        let over = df_ping(&c2, mtu - 28);
        let said = String::from_utf8_lossy(&over.stdout).into_owned();
        let ok = said.contains(&format!("mtu = {probed}"));
        if !ok && first.is_none() {
            first = Some(format!(
                "{said} (link MTU then {:?}, {} answers)",
                link_mtu("p2"),
                tap_counter(&nodes[0], "tap_too_big_answered")
            ));
        }
        ok
    });
    if let Some(f) = &first {
        eprintln!("{label}: the first full-size packet to p2 was not answered: {f}");
    }
    assert!(
        answered,
        "a full-size packet to p2 should be answered with its link MTU {probed} (now {:?}, \
         {} answers); first try: {}",
        link_mtu("p2"),
        tap_counter(&nodes[0], "tap_too_big_answered"),
        first.unwrap_or_default()
    );
    // The wide path still carries the full overlay MTU.
    assert!(wait_until(Duration::from_secs(15), || df_ping(
        &c3,
        mtu - 28
    )
    .status
    .success()));
    // TCP with default settings across the narrow path.
    let target = c2.addr.unwrap().to_string();
    tcp_transfer(&mut lab, &c1, &c2, (&target, &target), "4M").unwrap();
    // Probing the narrow path loses big probes, never the heartbeats: a link whose data path
    // works is not routed around (through p3, which would drop the same frames) meanwhile.
    for n in &nodes {
        let log = lab.log(n.proc);
        assert!(
            !log.contains("data path down"),
            "{}: a working data path was taken for down while its path MTU was probed:\n{log}",
            n.host.name
        );
    }
}

#[test]
fn a_narrow_underlay_path_is_probed_and_its_mtu_answered_at_the_source() {
    pmtu_scenario("tap-pmtu", Mode::TapSealed);
}

#[test]
fn a_narrow_underlay_path_is_probed_and_its_mtu_answered_at_the_source_kernel() {
    pmtu_scenario("k-pmtu", Mode::Kernel);
}

#[test]
fn a_narrow_underlay_path_is_probed_and_its_mtu_answered_at_the_source_mixed() {
    pmtu_scenario("mx-pmtu", Mode::Mixed);
}
