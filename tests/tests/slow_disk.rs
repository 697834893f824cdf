//! A slow disk (an SD card taking seconds per fsync) does not stall the control plane: meshd
//! writes peers.json off the thread that drives every connection's keep-alives. The slow disk
//! is real as far as meshd can tell: it runs under strace, which delays each fsync by 4 s.
//! Before, `meshctl connect` blocked that thread for the whole fsync, and every peer's
//! connection timed out (the idle timeout, then 1.2 s).

use std::time::{Duration, Instant};

use mesh_tests::{
    Lab,
    mesh::{full_mesh, meshctl, peer, status},
    wait_until,
};

const FSYNC_DELAY_US: &str = "4000000";

#[test]
fn saving_peers_on_a_slow_disk_keeps_every_peer_and_the_api_responsive() {
    let mut lab = Lab::new("slowdisk").unwrap();
    let ha = lab.add_host("da").unwrap();
    let hb = lab.add_host("db").unwrap();
    let pw = lab.password_file("pw", "slow disk").unwrap();
    let pw = pw.to_str().unwrap().to_owned();
    let inject = format!("inject=fsync,fdatasync:delay_enter={FSYNC_DELAY_US}");
    let strace = [
        "strace",
        "-f",
        "-qq",
        "--seccomp-bpf",
        "-o",
        "/dev/null",
        "-e",
        "trace=fsync,fdatasync",
        "-e",
        &inject,
    ];
    // meshd's first start writes its identity key (one slow fsync): allow for it.
    let na = lab
        .start_meshd_via(&ha, &strace, &["--password-file", &pw, "--datapath", "tap"])
        .unwrap();
    let first = ha.addr.to_string();
    let nb = lab
        .start_meshd(&hb, &["--password-file", &pw, "--datapath", "tap", &first])
        .unwrap();
    let nodes = [na, nb];
    assert!(wait_until(Duration::from_secs(30), || full_mesh(&nodes)));
    let [na, nb] = &nodes;
    let since = peer(nb, "da").unwrap()["since"].clone();

    // An operator adds a peer on da: peers.json is written, with a 4 s fsync.
    let socket = na.socket.clone();
    let started = Instant::now();
    let connect = std::thread::spawn(move || {
        let r = meshctl(&socket, &["connect", "198.18.0.250"], false);
        (r, started.elapsed())
    });
    // Meanwhile da answers its API at once, and db keeps its connection to da.
    let mut slowest = Duration::ZERO;
    while !connect.is_finished() {
        let t = Instant::now();
        status(na).unwrap();
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    let (result, took) = connect.join().unwrap();
    let text = result.unwrap();
    println!("connect took {took:?} ({text:?}); slowest status meanwhile {slowest:?}");
    // The fsync was slow (the injection works: the positive control)...
    assert!(took >= Duration::from_secs(3), "connect took {took:?}");
    // ...and nothing else waited for it.
    assert!(
        slowest * 2 < took,
        "status took {slowest:?}, connect {took:?}"
    );
    assert_eq!(
        peer(nb, "da").unwrap()["since"],
        since,
        "db's connection to da was lost during the fsync"
    );
    assert!(full_mesh(&nodes));
    // The state is on disk when connect answers.
    let saved = std::fs::read_to_string(na.state_dir.join("peers.json")).unwrap();
    assert!(saved.contains("198.18.0.250"), "{saved}");
}
