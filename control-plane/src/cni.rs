//! The CNI side of `mesh-cni` (CNI spec 1.1): the network configuration a runtime passes, the
//! version it asks for, and the result and error documents we answer with. Pure: the binary
//! (`bin/mesh-cni.rs`) does the I/O.

use serde_json::{Value, json};

/// The spec versions whose result format we write.
pub const SUPPORTED: &[&str] = &["1.0.0", "1.1.0"];

/// Well-known error codes (CNI spec, "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific codes start at 100: CHECK found the attachment not as recorded.
    pub const CHECK_MISMATCH: u32 = 100;
}

/// A CNI error: what the runtime gets on stdout, with a non-zero exit.
#[derive(Debug, Clone, PartialEq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn details(mut self, d: impl Into<String>) -> CniError {
        self.details = d.into();
        self
    }

    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({"cniVersion": version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

/// The network configuration on stdin, with what mesh-cni reads from it.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub raw: Value,
    /// The version to answer in: the configuration's, or the highest of its `cniVersions`
    /// that we support.
    pub version: String,
    pub name: String,
    /// meshd's API socket.
    pub socket: String,
    /// The IPAM plugin to delegate to (its `type`), if configured.
    pub ipam_type: Option<String>,
    /// The mesh network to attach to (`meshNetwork`; empty: `default`).
    pub mesh_network: String,
}

/// Parses the configuration: `cniVersion` (or `cniVersions`) one we support, a `name`, and an
/// `ipam` object with a `type` if there is one.
pub fn parse_conf(bytes: &[u8], default_socket: &str) -> Result<NetConf, CniError> {
    let raw: Value = serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(code::DECODE, "the network configuration is not JSON").details(e.to_string())
    })?;
    if !raw.is_object() {
        return Err(CniError::new(
            code::DECODE,
            "the network configuration is not a JSON object",
        ));
    }
    let offered: Vec<String> = match raw.get("cniVersions").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        None => raw
            .get("cniVersion")
            .and_then(Value::as_str)
            .map(|v| vec![v.to_owned()])
            .unwrap_or_default(),
    };
    let version = SUPPORTED
        .iter()
        .rev()
        .find(|s| offered.iter().any(|o| o == *s))
        .ok_or_else(|| {
            CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "mesh-cni speaks CNI {}; the configuration asks for {}",
                    SUPPORTED.join(", "),
                    if offered.is_empty() {
                        "no version".to_owned()
                    } else {
                        offered.join(", ")
                    }
                ),
            )
        })?
        .to_string();
    let name = raw
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "the network configuration has no name",
            )
        })?
        .to_owned();
    let socket = raw
        .get("socket")
        .and_then(Value::as_str)
        .unwrap_or(default_socket)
        .to_owned();
    let mesh_network = match raw.get("meshNetwork") {
        None => String::new(),
        Some(v) => v
            .as_str()
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "\"meshNetwork\" is the name of a mesh network (`meshctl network ls`)",
                )
            })?
            .to_owned(),
    };
    let ipam_type = match raw.get("ipam") {
        None => None,
        Some(i) => Some(
            i.get("type")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty() && !t.contains('/'))
                .ok_or_else(|| {
                    CniError::new(
                        code::INVALID_CONFIG,
                        "\"ipam\" needs a \"type\": the IPAM plugin to run",
                    )
                })?
                .to_owned(),
        ),
    };
    Ok(NetConf {
        raw,
        version,
        name,
        socket,
        ipam_type,
        mesh_network,
    })
}

/// Who owns an attachment made for `container` on network `name` (kept by meshd; GC by it).
pub fn owner(name: &str, container: &str) -> String {
    format!("cni:{name}:{container}")
}

/// The container id in an owner string of network `name`, if it is one.
pub fn container_of<'a>(name: &str, owner: &'a str) -> Option<&'a str> {
    owner
        .strip_prefix("cni:")?
        .strip_prefix(name)?
        .strip_prefix(':')
}

/// The attachments a GC request says are still in use: (container id, ifname).
pub fn valid_attachments(conf: &NetConf) -> Result<Vec<(String, String)>, CniError> {
    let Some(list) = conf.raw.get("cni.dev/valid-attachments") else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "\"cni.dev/valid-attachments\" is not a list",
        )
    })?;
    list.iter()
        .map(|a| {
            match (
                a.get("containerID").and_then(Value::as_str),
                a.get("ifname").and_then(Value::as_str),
            ) {
                (Some(c), Some(i)) => Ok((c.to_owned(), i.to_owned())),
                _ => Err(CniError::new(
                    code::INVALID_CONFIG,
                    "a valid attachment needs \"containerID\" and \"ifname\"",
                )),
            }
        })
        .collect()
}

/// The addresses (CIDR) of an IPAM result or a previous result.
pub fn result_ips(result: &Value) -> Vec<String> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("address").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The ADD result: our one interface (in the sandbox), the IPAM result's addresses on it, its
/// routes and DNS; without an IPAM plugin, the addresses mesh's allocator gave (`allocated`).
pub fn add_result(
    version: &str,
    ifname: &str,
    mac: &str,
    mtu: u32,
    sandbox: &str,
    ipam: &Value,
    allocated: &[String],
) -> Value {
    let mut ips: Vec<Value> = ipam
        .get("ips")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut ip| {
            ip["interface"] = json!(0);
            ip
        })
        .collect();
    if ips.is_empty() {
        ips = allocated
            .iter()
            .map(|a| json!({"address": a, "interface": 0}))
            .collect();
    }
    let mut r = json!({
        "cniVersion": version,
        "interfaces": [{"name": ifname, "mac": mac, "mtu": mtu, "sandbox": sandbox}],
        "ips": ips,
    });
    if let Some(routes) = ipam.get("routes") {
        r["routes"] = routes.clone();
    }
    if let Some(dns) = ipam.get("dns") {
        r["dns"] = dns.clone();
    }
    r
}

/// VERSION's answer.
pub fn version_result() -> Value {
    json!({"cniVersion": SUPPORTED[SUPPORTED.len() - 1], "supportedVersions": SUPPORTED})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_common_version_is_answered_in() {
        let c = parse_conf(
            br#"{"cniVersion":"1.0.0","name":"n","type":"mesh-cni"}"#,
            "/s",
        )
        .unwrap();
        assert_eq!(c.version, "1.0.0");
        let c = parse_conf(
            br#"{"cniVersion":"0.4.0","cniVersions":["0.4.0","1.0.0","1.1.0"],"name":"n"}"#,
            "/s",
        )
        .unwrap();
        assert_eq!(c.version, "1.1.0");
        let e = parse_conf(br#"{"cniVersion":"0.3.1","name":"n"}"#, "/s").unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn bad_configurations_get_their_codes() {
        assert_eq!(parse_conf(b"{", "/s").unwrap_err().code, code::DECODE);
        assert_eq!(parse_conf(b"\"x\"", "/s").unwrap_err().code, code::DECODE);
        assert_eq!(
            parse_conf(br#"{"cniVersion":"1.1.0"}"#, "/s")
                .unwrap_err()
                .code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            parse_conf(
                br#"{"cniVersion":"1.1.0","name":"n","ipam":{"type":"../x"}}"#,
                "/s"
            )
            .unwrap_err()
            .code,
            code::INVALID_CONFIG
        );
        let c = parse_conf(
            br#"{"cniVersion":"1.1.0","name":"n","socket":"/run/x.sock","ipam":{"type":"host-local"}}"#,
            "/s",
        )
        .unwrap();
        assert_eq!(
            (c.socket.as_str(), c.ipam_type.as_deref()),
            ("/run/x.sock", Some("host-local"))
        );
        assert_eq!(c.mesh_network, "", "default");
        let c = parse_conf(
            br#"{"cniVersion":"1.1.0","name":"n","meshNetwork":"web"}"#,
            "/s",
        )
        .unwrap();
        assert_eq!(c.mesh_network, "web");
        assert_eq!(
            parse_conf(
                br#"{"cniVersion":"1.1.0","name":"n","meshNetwork":7}"#,
                "/s"
            )
            .unwrap_err()
            .code,
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn owners_name_the_network_and_the_container() {
        let o = owner("net1", "abc123");
        assert_eq!(container_of("net1", &o), Some("abc123"));
        assert_eq!(container_of("net2", &o), None);
        assert_eq!(
            container_of("net", &o),
            None,
            "a prefix of another network's name"
        );
    }

    #[test]
    fn the_add_result_puts_every_address_on_our_interface() {
        let ipam = json!({"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1"}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{}});
        let r = add_result(
            "1.1.0",
            "eth0",
            "02:00:00:00:00:01",
            1450,
            "/var/run/netns/x",
            &ipam,
            &["10.9.9.9/24".to_owned()],
        );
        assert_eq!(r["interfaces"][0]["sandbox"], "/var/run/netns/x");
        assert_eq!(r["ips"][0]["interface"], 0);
        assert_eq!(r["ips"][0]["gateway"], "10.1.0.1");
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(
            result_ips(&r),
            vec!["10.1.0.5/24"],
            "the IPAM plugin's, when there is one"
        );
        // Without an IPAM plugin: what mesh's allocator gave.
        let r = add_result(
            "1.1.0",
            "eth0",
            "m",
            1450,
            "/x",
            &json!({}),
            &["10.9.9.9/24".into()],
        );
        assert_eq!(result_ips(&r), vec!["10.9.9.9/24"]);
        assert_eq!(r["ips"][0]["interface"], 0);
    }

    #[test]
    fn valid_attachments_are_read_from_a_gc_request() {
        let c = parse_conf(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
            "/s",
        )
        .unwrap();
        assert_eq!(
            valid_attachments(&c).unwrap(),
            vec![("a".to_owned(), "eth0".to_owned())]
        );
        let bad = parse_conf(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"ifname":"eth0"}]}"#,
            "/s",
        )
        .unwrap();
        assert!(valid_attachments(&bad).is_err());
    }
}
