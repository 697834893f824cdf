//! mesh-cni: a CNI 1.1 plugin putting a container on the mesh through meshd's API. A runtime
//! runs it with `CNI_COMMAND` and friends in the environment and the network configuration on
//! stdin (see docs/operations.md). Addresses come from the IPAM plugin the configuration names
//! (`"ipam": {"type": "host-local", ...}`), which it runs as the spec says; the interface is
//! made by meshd (`meshctl attach`'s work), owned by "cni:NETWORK:CONTAINER-ID".

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use mesh::{
    cni::{self, CniError, NetConf, code},
    local_api::{self, ApiError},
    paths,
};
use mesh_proto::v1::{
    AttachRequest, AttachmentsRequest, StatusRequest, attach_request, request, response,
};
use serde_json::Value;

fn main() {
    let mut input = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut input);
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let socket = paths::default_socket();
    let default_socket = socket.to_string_lossy();
    let (version, answer) = match command.as_str() {
        "VERSION" => ("1.1.0".to_owned(), Ok(Some(cni::version_result()))),
        _ => match cni::parse_conf(&input, &default_socket) {
            Err(e) => ("1.1.0".to_owned(), Err(e)),
            Ok(conf) => (conf.version.clone(), run(&command, &conf, &input)),
        },
    };
    let mut out = std::io::stdout();
    match answer {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
        }
        Ok(None) => {}
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            std::process::exit(1);
        }
    }
}

fn run(command: &str, conf: &NetConf, input: &[u8]) -> Result<Option<Value>, CniError> {
    match command {
        "ADD" => add(conf, input).map(Some),
        "DEL" => del(conf, input).map(|()| None),
        "CHECK" => check(conf, input).map(|()| None),
        "GC" => gc(conf, input).map(|()| None),
        "STATUS" => status(conf, input).map(|()| None),
        "" => Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set")),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
        )),
    }
}

fn env(name: &str) -> Result<String, CniError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CniError::new(code::INVALID_ENV, format!("{name} is not set")))
}

/// meshd's answer, or the CNI error that says why there is none.
fn call(conf: &NetConf, kind: request::Kind) -> Result<response::Kind, CniError> {
    local_api::call(Path::new(&conf.socket), kind).map_err(|e| match e {
        ApiError::Connect { .. } => CniError::new(
            code::TRY_AGAIN_LATER,
            format!("meshd is not running at {}", conf.socket),
        )
        .details(e.to_string()),
        ApiError::Remote(msg) => CniError::new(code::IO_FAILURE, msg),
        e => CniError::new(code::IO_FAILURE, e.to_string()),
    })
}

fn attachments(conf: &NetConf) -> Result<mesh_proto::v1::Attachments, CniError> {
    match call(conf, request::Kind::Attachments(AttachmentsRequest {}))? {
        response::Kind::Attachments(a) => Ok(a),
        other => Err(CniError::new(
            code::IO_FAILURE,
            format!("meshd answered {other:?}"),
        )),
    }
}

/// Runs the configured IPAM plugin with `command` (the spec's delegation: same environment,
/// same configuration); its result, or its error as ours.
fn delegate(conf: &NetConf, input: &[u8], command: &str) -> Result<Option<Value>, CniError> {
    delegate_for(conf, input, command, &[])
}

/// [`delegate`], with `env` overriding the CNI variables the runtime gave us (a DEL on behalf
/// of another container).
fn delegate_for(
    conf: &NetConf,
    input: &[u8],
    command: &str,
    env: &[(&str, &str)],
) -> Result<Option<Value>, CniError> {
    let Some(ty) = &conf.ipam_type else {
        return Ok(None);
    };
    let path = std::env::var("CNI_PATH").unwrap_or_default();
    let plugin = path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(ty))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("IPAM plugin {ty:?} not found in CNI_PATH ({path})"),
            )
        })?;
    // The plugin may be older than the configuration (Debian's host-local speaks up to 1.0.0):
    // it gets the configuration in the newest version both speak (1.0 and 1.1 results read
    // the same).
    let input = if command == "VERSION" {
        input.to_vec()
    } else {
        let speaks = run_plugin(&plugin, "VERSION", input, &[])
            .ok()
            .and_then(|v| v["supportedVersions"].as_array().cloned())
            .unwrap_or_default();
        if speaks.iter().any(|v| *v == conf.version) {
            input.to_vec()
        } else {
            let common = cni::SUPPORTED
                .iter()
                .rev()
                .find(|s| speaks.iter().any(|v| v == **s))
                .ok_or_else(|| {
                    CniError::new(
                        code::INCOMPATIBLE_VERSION,
                        format!("IPAM plugin {ty} speaks no CNI version mesh-cni does"),
                    )
                })?;
            let mut raw = conf.raw.clone();
            raw["cniVersion"] = Value::from(*common);
            if let Some(o) = raw.as_object_mut() {
                o.remove("cniVersions");
            }
            raw.to_string().into_bytes()
        }
    };
    run_plugin(&plugin, command, &input, env)
        .map(Some)
        .map_err(|(c, msg)| CniError::new(c, format!("IPAM plugin {ty}: {msg}")))
}

/// Runs a plugin: its JSON result, or its error's code and message.
fn run_plugin(
    plugin: &Path,
    command: &str,
    input: &[u8],
    env: &[(&str, &str)],
) -> Result<Value, (u32, String)> {
    let failed = |e: std::io::Error| {
        (
            code::IO_FAILURE,
            format!("running {}: {e}", plugin.display()),
        )
    };
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(failed)?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    let out = child.wait_with_output().map_err(failed)?;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        return Err((
            v["code"].as_u64().map_or(code::IO_FAILURE, |c| c as u32),
            v["msg"].as_str().unwrap_or("failed").to_owned(),
        ));
    }
    Ok(v)
}

/// Whether the IPAM plugin knows CNI 1.1's verbs (GC, STATUS).
fn delegate_speaks_1_1(conf: &NetConf, input: &[u8]) -> bool {
    delegate(conf, input, "VERSION")
        .ok()
        .flatten()
        .is_some_and(|v| {
            v["supportedVersions"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x == "1.1.0"))
        })
}

fn add(conf: &NetConf, input: &[u8]) -> Result<Value, CniError> {
    let (container, netns, ifname) = (
        env("CNI_CONTAINERID")?,
        env("CNI_NETNS")?,
        env("CNI_IFNAME")?,
    );
    if conf.ipam_type.is_none() && conf.mesh_network.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "mesh-cni needs an \"ipam\" plugin (e.g. host-local) to give addresses on the \
             default network; on a named one (\"meshNetwork\") mesh's allocator gives them",
        ));
    }
    let owner = cni::owner(&conf.name, &container);
    // Refused before the IPAM plugin runs: its DEL on our failure would free the addresses
    // the existing attachment uses.
    if attachments(conf)?
        .attached
        .iter()
        .any(|a| a.owner == owner && a.ifname == ifname)
    {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "container {container} has {ifname} on {} already",
                conf.name
            ),
        ));
    }
    let ipam = delegate(conf, input, "ADD")?.unwrap_or_default();
    let cidrs = cni::result_ips(&ipam);
    let asked = call(
        conf,
        request::Kind::Attach(AttachRequest {
            target: Some(attach_request::Target::Netns(netns.clone())),
            ifname: ifname.clone(),
            cidrs,
            docker_host: String::new(),
            owner: owner.clone(),
            network: conf.mesh_network.clone(),
        }),
    );
    let view = match asked {
        Ok(response::Kind::Attachments(a)) => a,
        other => {
            // Nothing attached: give the addresses back.
            let _ = delegate(conf, input, "DEL");
            return Err(match other {
                Err(e) => e,
                Ok(o) => CniError::new(code::IO_FAILURE, format!("meshd answered {o:?}")),
            });
        }
    };
    let (mac, mtu, cidrs) = view
        .attached
        .iter()
        .find(|a| a.owner == owner && a.ifname == ifname)
        .map(|a| (a.mac.clone(), a.mtu, a.cidrs.clone()))
        .unwrap_or_default();
    Ok(cni::add_result(
        &conf.version,
        &ifname,
        &mac,
        mtu,
        &netns,
        &ipam,
        &cidrs,
    ))
}

fn del(conf: &NetConf, input: &[u8]) -> Result<(), CniError> {
    let (container, ifname) = (env("CNI_CONTAINERID")?, env("CNI_IFNAME")?);
    // By owner: the namespace may be gone already (DEL must still succeed).
    call(
        conf,
        request::Kind::Detach(AttachRequest {
            target: None,
            ifname,
            cidrs: Vec::new(),
            docker_host: String::new(),
            owner: cni::owner(&conf.name, &container),
            network: String::new(),
        }),
    )?;
    delegate(conf, input, "DEL")?;
    Ok(())
}

fn check(conf: &NetConf, input: &[u8]) -> Result<(), CniError> {
    let (container, ifname) = (env("CNI_CONTAINERID")?, env("CNI_IFNAME")?);
    let prev = conf.raw.get("prevResult").ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs the \"prevResult\" of the ADD",
        )
    })?;
    let owner = cni::owner(&conf.name, &container);
    let view = attachments(conf)?;
    let a = view
        .attached
        .iter()
        .find(|a| a.owner == owner && a.ifname == ifname)
        .ok_or_else(|| {
            CniError::new(
                code::CHECK_MISMATCH,
                format!("meshd has no {ifname} attached for container {container}"),
            )
        })?;
    let mut want = cni::result_ips(prev);
    let mut have = a.cidrs.clone();
    want.sort();
    have.sort();
    if want != have {
        return Err(CniError::new(
            code::CHECK_MISMATCH,
            format!("{ifname} has {have:?}, the ADD gave {want:?}"),
        ));
    }
    delegate(conf, input, "CHECK")?;
    Ok(())
}

fn gc(conf: &NetConf, input: &[u8]) -> Result<(), CniError> {
    let valid = cni::valid_attachments(conf)?;
    let mut collected = Vec::new();
    for a in attachments(conf)?.attached {
        let Some(container) = cni::container_of(&conf.name, &a.owner) else {
            continue;
        };
        if valid.iter().any(|(c, i)| c == container && *i == a.ifname) {
            continue;
        }
        call(
            conf,
            request::Kind::Detach(AttachRequest {
                target: None,
                ifname: a.ifname.clone(),
                cidrs: Vec::new(),
                docker_host: String::new(),
                owner: a.owner.clone(),
                network: String::new(),
            }),
        )?;
        collected.push((container.to_owned(), a.ifname.clone()));
    }
    if delegate_speaks_1_1(conf, input) {
        delegate(conf, input, "GC")?;
    } else {
        // An IPAM plugin older than GC (Debian's host-local) would keep the collected
        // attachments' addresses: each is given back with a DEL on its container's behalf.
        for (container, ifname) in &collected {
            delegate_for(
                conf,
                input,
                "DEL",
                &[
                    ("CNI_CONTAINERID", container),
                    ("CNI_IFNAME", ifname),
                    ("CNI_NETNS", ""),
                ],
            )?;
        }
    }
    Ok(())
}

fn status(conf: &NetConf, input: &[u8]) -> Result<(), CniError> {
    match local_api::call_within(
        Path::new(&conf.socket),
        request::Kind::Status(StatusRequest {}),
        Duration::from_secs(5),
    ) {
        Ok(_) => {}
        Err(e) => {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                format!("meshd does not answer at {}", conf.socket),
            )
            .details(e.to_string()));
        }
    }
    if delegate_speaks_1_1(conf, input) {
        delegate(conf, input, "STATUS")?;
    }
    Ok(())
}
