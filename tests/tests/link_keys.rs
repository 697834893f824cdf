//! Data-path keys belong to a link (one control connection), not to a short id: while two
//! peers claim one short id, sealed traffic on the older link goes on under its own keys and
//! no (sender, epoch, counter) ever repeats on the wire.

use std::{
    collections::HashMap,
    net::UdpSocket,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mesh_tests::{
    Lab,
    mesh::{Meshd, full_mesh, status, tap_counter},
    netns, pcap, wait_until,
};

/// Two Ed25519 identities whose peer ids (the first 8 bytes of SHA-256 over the public key)
/// share their low 24 bits, so both start with short id d54e45: 21945c4246d54e45 and
/// eb7a6a63d3d54e45. Found by a birthday search over generated keys; test-only keys.
const LOW_KEY: &str = include_str!("../fixtures/short-id-collision-low.key");
const HIGH_KEY: &str = include_str!("../fixtures/short-id-collision-high.key");
const CONTESTED: u64 = 0xd5_4e45;
const PORT: u16 = 7200;

fn short_id(node: &Meshd) -> u64 {
    status(node).map_or(0, |s| {
        u64::from_str_radix(s["short_id"].as_str().unwrap_or(""), 16).unwrap_or(0)
    })
}

fn install_identity(lab: &Lab, host: &str, pem: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = lab.dir().join(format!("{host}-state"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("identity.key"))
        .unwrap();
    std::io::Write::write_all(&mut f, pem.as_bytes()).unwrap();
}

#[test]
fn a_short_id_collision_reuses_no_nonce_and_the_older_link_keeps_working() {
    let mut lab = Lab::new("link-keys").unwrap();
    let hb = lab.add_host("kb").unwrap();
    let ha = lab.add_host("ka").unwrap();
    let hc = lab.add_host("kc").unwrap();
    let ca = lab.add_container(&ha, "kca", Some("10.48.0.1/24")).unwrap();
    let cb = lab.add_container(&hb, "kcb", Some("10.48.0.2/24")).unwrap();
    install_identity(&lab, "ka", LOW_KEY);
    install_identity(&lab, "kc", HIGH_KEY);
    let pw = lab.password_file("pw", "collision test").unwrap();
    let pw = pw.to_str().unwrap().to_owned();
    let hub = hb.addr.to_string();
    let alone = ["--password-file", &pw, "--datapath", "tap"];
    let joining = ["--password-file", &pw, "--datapath", "tap", &hub];
    let nb = lab.start_meshd(&hb, &alone).unwrap();
    let na = lab.start_meshd(&ha, &joining).unwrap();
    let pair = [nb, na];
    assert!(wait_until(Duration::from_secs(10), || full_mesh(&pair)));
    let [nb, na] = pair;
    assert_eq!(
        short_id(&na),
        CONTESTED,
        "the fixture gives ka the contested id"
    );
    assert!(wait_until(Duration::from_secs(10), || lab
        .ping(&cb.ns, ca.addr.unwrap(), 1)
        .unwrap()));

    // Capture what kb sends ka on the underlay, from before the collision to after it.
    let filter = format!("udp port 6784 and src {} and dst {}", hb.addr, ha.addr);
    let capture = pcap::start(&mut lab, &ha, "kb-to-ka", &filter).unwrap();

    // Sealed traffic kb -> ka all along: a datagram every 2 ms from cb to ca.
    let listener = netns::run_in(&ca.ns, || UdpSocket::bind(("0.0.0.0", PORT)))
        .unwrap()
        .unwrap();
    listener
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let sender = netns::run_in(&cb.ns, || UdpSocket::bind(("0.0.0.0", 0)))
        .unwrap()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let to = (ca.addr.unwrap(), PORT);
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = sender.send_to(&n.to_be_bytes(), to);
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let received = |count: usize| {
        let mut got = 0;
        let mut buf = [0u8; 64];
        wait_until(Duration::from_secs(20), || {
            while listener.recv(&mut buf).is_ok() {
                got += 1;
                if got >= count {
                    return true;
                }
            }
            false
        })
    };
    assert!(received(200), "traffic flows before the collision");

    // kc arrives claiming ka's short id; gossip moves kc (the higher peer id) to another.
    let nc = lab.start_meshd(&hc, &joining).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let moved = short_id(&nc);
            moved != 0 && moved != CONTESTED
        }),
        "kc never left the contested short id"
    );
    let all = [nb, na, nc];
    assert!(wait_until(Duration::from_secs(20), || full_mesh(&all)));
    let [nb, na, nc] = all;
    assert_eq!(
        short_id(&na),
        CONTESTED,
        "the lower peer id keeps its short id"
    );
    // The link between kb and ka works on through the collision and after it.
    assert!(received(500), "traffic flows after the collision");
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    let sealed: Vec<Vec<u8>> = capture
        .finish(&mut lab)
        .unwrap()
        .into_iter()
        .filter(|(_, _, p)| p.len() >= 36 && p[0] & 0x04 != 0)
        .map(|(_, _, p)| p)
        .collect();
    assert!(
        sealed.len() >= 500,
        "the capture holds the traffic: {} sealed datagrams",
        sealed.len()
    );
    // (sender short id, epoch, counter): the nonce under the key of kb's link to ka.
    let mut seen: HashMap<([u8; 3], u8, u64), usize> = HashMap::new();
    for (i, p) in sealed.iter().enumerate() {
        let nonce = (
            p[8..11].try_into().unwrap(),
            p[11],
            u64::from_be_bytes(p[12..20].try_into().unwrap()),
        );
        if let Some(first) = seen.insert(nonce, i) {
            panic!(
                "datagrams {first} and {i} of {} share the nonce {nonce:?}",
                sealed.len()
            );
        }
    }
    // ka opened everything kb sealed for it: no frame sealed under another link's key.
    assert_eq!(tap_counter(&na, "tap_dropped_auth"), 0);
    assert_eq!(tap_counter(&na, "tap_dropped_replay"), 0);
    drop((nb, nc));
}
