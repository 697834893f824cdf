//! Hosts whose data paths listen on different UDP ports (`--data-port`) still carry traffic:
//! each learns the other's port from its hello instead of assuming its own.

use std::time::Duration;

use mesh_tests::{
    Lab,
    mesh::{Mode, full_mesh, kernel_counter, pings},
    wait_until,
};

fn meshes_across_different_data_ports(mode: Mode, label: &str, subnet: &str) {
    let mut lab = Lab::new(label).unwrap();
    let h1 = lab.add_host(&format!("{label}1")).unwrap();
    let h2 = lab.add_host(&format!("{label}2")).unwrap();
    let c1 = lab
        .add_container(&h1, &format!("{label}c1"), Some(&format!("{subnet}.1/24")))
        .unwrap();
    let c2 = lab
        .add_container(&h2, &format!("{label}c2"), Some(&format!("{subnet}.2/24")))
        .unwrap();
    let pw = lab.password_file("pw", "ports").unwrap();
    let pw = pw.to_str().unwrap().to_owned();
    let first = h1.addr.to_string();
    let args = |i: usize, port: &str, peer: Option<&str>| {
        let mut a = mode.args(i, 2, &pw);
        a.extend(["--data-port".to_owned(), port.to_owned()]);
        a.extend(peer.map(str::to_owned));
        a
    };
    let n1 = lab.start_meshd(&h1, &refs(&args(0, "6784", None))).unwrap();
    let n2 = lab
        .start_meshd(&h2, &refs(&args(1, "7784", Some(&first))))
        .unwrap();
    let nodes = [n1, n2];
    assert!(wait_until(Duration::from_secs(10), || full_mesh(&nodes)));
    assert!(
        wait_until(Duration::from_secs(10), || pings(&lab, &c1, &c2)
            && pings(&lab, &c2, &c1)),
        "containers talk across hosts on data ports 6784 and 7784"
    );
    if mode == Mode::Kernel {
        assert!(kernel_counter(&nodes[0], "kernel_tx_sent") > 0);
        assert!(kernel_counter(&nodes[1], "kernel_tx_sent") > 0);
    }
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn sealed_tap_hosts_on_different_data_ports() {
    meshes_across_different_data_ports(Mode::TapSealed, "dps", "10.50.0");
}

#[test]
fn kernel_hosts_on_different_data_ports() {
    meshes_across_different_data_ports(Mode::Kernel, "dpk", "10.50.1");
}
