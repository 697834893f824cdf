//! mesh-cni run as a runtime runs it (CNI 1.1: environment variables, the configuration on
//! stdin, a result or an error on stdout), with Debian's host-local as its IPAM plugin: ADD,
//! CHECK, DEL, GC, STATUS and VERSION, results checked against the spec and against what is
//! really in the namespace.

use std::time::Duration;

use mesh_tests::{
    Lab, bins,
    mesh::{Meshd, Mode, full_mesh, meshctl_json, meshctl_on, start_mesh_in},
    wait_until,
};
use serde_json::{Value, json};

/// Where Debian's containernetworking-plugins are.
const CNI_PATH: &str = "/usr/lib/cni";

/// Runs mesh-cni: (success, what it printed as JSON, or Null).
fn cni(command: &str, env: &[(&str, &str)], conf: &Value) -> (bool, Value) {
    use std::io::Write;
    let mut cmd = std::process::Command::new(bins::path("mesh-cni").unwrap());
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", CNI_PATH)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), v)
}

/// The network configuration for the meshd of `node`, handing out `10.58.<slice>.x`.
fn conf(lab: &Lab, node: &Meshd, slice: u8) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "meshnet",
        "type": "mesh-cni",
        "socket": node.socket,
        "ipam": {
            "type": "host-local",
            "ranges": [[{
                "subnet": "10.58.0.0/16",
                "rangeStart": format!("10.58.{slice}.1"),
                "rangeEnd": format!("10.58.{slice}.254"),
            }]],
            "dataDir": lab.dir().join(format!("ipam-{slice}")),
        },
    })
}

fn env<'a>(id: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
    ]
}

fn in_ns(netns: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Files host-local keeps for `container` in `dir` (one per address it holds).
fn held_by(dir: &std::path::Path, container: &str) -> usize {
    std::fs::read_dir(dir.join("meshnet"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read_to_string(e.path())
                        .is_ok_and(|t| t.lines().next() == Some(container))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn mesh_cni_adds_checks_deletes_collects_and_reports_status_as_the_spec_says() {
    let mut lab = Lab::new("cni").unwrap();
    let h1 = lab.add_host("cn1").unwrap();
    let h2 = lab.add_host("cn2").unwrap();
    let nodes = start_mesh_in(&mut lab, &[h1.clone(), h2.clone()], Mode::TapPlain).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    let (c1, c2) = (conf(&lab, &nodes[0], 1), conf(&lab, &nodes[1], 2));
    let ns = |lab: &mut Lab, n: &str| format!("/var/run/netns/{}", lab.add_bare_netns(n).unwrap());
    let (a, b, far) = (
        ns(&mut lab, "cna"),
        ns(&mut lab, "cnb"),
        ns(&mut lab, "cnfar"),
    );

    let (ok, v) = cni("VERSION", &[], &json!({"cniVersion": "1.1.0"}));
    assert!(ok, "{v}");
    assert!(
        v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.1.0")),
        "{v}"
    );

    // ADD: the result names our interface in the sandbox, with the IPAM plugin's address.
    let (ok, r) = cni("ADD", &env("ctr-a", &a), &c1);
    assert!(ok, "{r}");
    assert_eq!(r["cniVersion"], "1.1.0");
    let iface = &r["interfaces"][0];
    assert_eq!(
        (iface["name"].clone(), iface["sandbox"].clone()),
        (json!("eth0"), json!(a))
    );
    let addr = r["ips"][0]["address"].as_str().unwrap().to_owned();
    assert!(addr.starts_with("10.58.1.") && addr.ends_with("/16"), "{r}");
    assert_eq!(r["ips"][0]["interface"], 0);
    let (_, link) = in_ns(&a, &["ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains(iface["mac"].as_str().unwrap()), "{link} {r}");
    assert!(
        link.contains(&format!("mtu {} ", iface["mtu"])),
        "{link} {r}"
    );
    let (_, inside) = in_ns(&a, &["ip", "-o", "addr", "show", "eth0"]);
    assert!(inside.contains(&addr), "{inside}");
    let (ok, r2) = cni("ADD", &env("ctr-far", &far), &c2);
    assert!(ok, "{r2}");
    let far_addr = r2["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        wait_until(Duration::from_secs(15), || in_ns(
            &a,
            &["ping", "-c", "1", "-W", "1", &far_addr]
        )
        .0),
        "containers added on two hosts reach each other"
    );

    // CHECK: the ADD's result holds; another address does not.
    let mut with_prev = c1.clone();
    with_prev["prevResult"] = r.clone();
    let (ok, v) = cni("CHECK", &env("ctr-a", &a), &with_prev);
    assert!(ok, "{v}");
    with_prev["prevResult"]["ips"][0]["address"] = json!("10.58.1.250/16");
    let (ok, v) = cni("CHECK", &env("ctr-a", &a), &with_prev);
    assert!(!ok && v["code"] == 100, "{v}");

    // A second ADD of the same attachment is refused and frees nothing.
    let (ok, v) = cni("ADD", &env("ctr-a", &a), &c1);
    assert!(!ok && v["msg"].as_str().unwrap().contains("already"), "{v}");
    assert!(in_ns(&a, &["ip", "link", "show", "eth0"]).0);
    let ipam1 = lab.dir().join("ipam-1");
    assert_eq!(held_by(&ipam1, "ctr-a"), 1);

    // GC: an attachment the runtime no longer lists is removed; a listed one stays.
    let (ok, v) = cni("ADD", &env("ctr-b", &b), &c1);
    assert!(ok, "{v}");
    let mut gc = c1.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-a", "ifname": "eth0"}]);
    let (ok, v) = cni("GC", &[], &gc);
    assert!(ok, "{v}");
    assert!(
        !in_ns(&b, &["ip", "link", "show", "eth0"]).0,
        "ctr-b collected"
    );
    assert!(in_ns(&a, &["ip", "link", "show", "eth0"]).0, "ctr-a kept");
    assert_eq!(held_by(&ipam1, "ctr-b"), 0, "ctr-b's address given back");
    assert_eq!(held_by(&ipam1, "ctr-a"), 1, "ctr-a's kept");

    // DEL: gone, its address freed; a second DEL succeeds too (the spec asks for that).
    let (ok, v) = cni("DEL", &env("ctr-a", &a), &c1);
    assert!(ok, "{v}");
    assert!(!in_ns(&a, &["ip", "link", "show", "eth0"]).0);
    assert_eq!(held_by(&ipam1, "ctr-a"), 0);
    let (ok, v) = cni("DEL", &env("ctr-a", ""), &c1);
    assert!(ok, "DEL without a namespace, again: {v}");
    let (ok, v) = cni("ADD", &env("ctr-a", &a), &c1);
    assert!(ok, "added again: {v}");

    // Bad input: the spec's codes, and a failed ADD leaves no address held.
    let (ok, v) = cni(
        "ADD",
        &[("CNI_CONTAINERID", "x"), ("CNI_IFNAME", "eth0")],
        &c1,
    );
    assert!(!ok && v["code"] == 4, "no CNI_NETNS: {v}");
    let (ok, v) = cni("ADD", &env("x", &b), &json!("not a configuration"));
    assert!(!ok && v["code"] == 6, "{v}");
    let mut old = c1.clone();
    old["cniVersion"] = json!("0.3.1");
    let (ok, v) = cni("ADD", &env("x", &b), &old);
    assert!(!ok && v["code"] == 1, "{v}");
    let (ok, v) = cni("ADD", &env("ctr-gone", "/var/run/netns/no-such-ns"), &c1);
    assert!(
        !ok && v["msg"].as_str().unwrap().contains("cannot open"),
        "{v}"
    );
    assert_eq!(held_by(&ipam1, "ctr-gone"), 0, "the address went back");

    // `meshNetwork`: the container goes onto that mesh network (its own bridge, the MTU less
    // the network's tag), and the result says so; an unknown network is refused.
    meshctl_on(
        &nodes[0],
        &["network", "create", "pods", "--subnet", "10.58.0.0/16"],
    )
    .unwrap();
    let mut on_pods = c1.clone();
    on_pods["meshNetwork"] = json!("pods");
    let (ok, r) = cni("ADD", &env("ctr-p", &b), &on_pods);
    assert!(ok, "{r}");
    assert_eq!(
        r["interfaces"][0]["mtu"],
        iface["mtu"].as_u64().unwrap() - 4
    );
    let listed = meshctl_json(&nodes[0], &["attachments"]).unwrap();
    let on = listed["attached"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["owner"].as_str().unwrap().contains("ctr-p"))
        .cloned()
        .unwrap();
    assert_eq!(
        (on["network"].clone(), on["vlan"].clone()),
        (json!("pods"), json!(2))
    );
    // Without an IPAM plugin, on a named network: mesh's allocator gives the address, and a
    // DEL gives it back.
    let mut by_mesh = c1.clone();
    by_mesh.as_object_mut().unwrap().remove("ipam");
    by_mesh["meshNetwork"] = json!("pods");
    let m = ns(&mut lab, "cnm");
    let (ok, r) = cni("ADD", &env("ctr-m", &m), &by_mesh);
    assert!(ok, "{r}");
    let given = r["ips"][0]["address"].as_str().unwrap().to_owned();
    assert!(given.starts_with("10.58.") && given.ends_with("/16"), "{r}");
    let (_, inside) = in_ns(&m, &["ip", "-o", "addr", "show", "eth0"]);
    assert!(inside.contains(&given), "{inside}");
    let (ok, v) = cni("DEL", &env("ctr-m", &m), &by_mesh);
    assert!(ok, "{v}");
    let mut on_nothing = c1.clone();
    on_nothing["meshNetwork"] = json!("nothing");
    let (ok, v) = cni("ADD", &env("ctr-c", &b), &on_nothing);
    assert!(
        !ok && v["msg"].as_str().unwrap().contains("no network called"),
        "{v}"
    );
    assert_eq!(held_by(&ipam1, "ctr-c"), 0, "the address went back");

    // STATUS: ready while meshd runs, code 50 once it does not.
    let (ok, v) = cni("STATUS", &[], &c2);
    assert!(ok, "{v}");
    lab.terminate(nodes[1].proc, Duration::from_secs(10))
        .unwrap();
    let (ok, v) = cni("STATUS", &[], &c2);
    assert!(!ok && v["code"] == 50, "{v}");
}
