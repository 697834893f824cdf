//! The system side of attaching: namespaces, veth pairs and addresses, over rtnetlink. Work
//! inside another network namespace runs on a thread of its own that has joined it (`setns`
//! changes only the calling thread), with its own netlink socket.

use std::{
    fs::File,
    net::IpAddr,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
};

use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::{
    Handle, LinkUnspec, LinkVeth,
    packet_route::{address::AddressAttribute, link::LinkAttribute},
};

use super::record::NetnsId;
use crate::netlink::{find_link, with_handle};

/// Opens a network namespace file (a path under /var/run/netns, /proc/PID/ns/net, ...) and
/// says which namespace it is.
pub fn open_netns(path: &Path) -> Result<(File, NetnsId), String> {
    let f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let m = f
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    // nsfs files are the only ones setns(CLONE_NEWNET) takes; a plain file would fail later,
    // after links were made. Its magic number is what `statfs` reports for nsfs.
    // SAFETY: an all-zero statfs is a valid value for the kernel to fill in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `f` is an open file descriptor and `st` a valid out pointer.
    let r = unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) };
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    if r != 0 || st.f_type as i64 != NSFS_MAGIC {
        return Err(format!(
            "{} is not a network namespace (give /var/run/netns/NAME, /proc/PID/ns/net or \
             --pid)",
            path.display()
        ));
    }
    Ok((
        f,
        NetnsId {
            dev: m.dev(),
            ino: m.ino(),
        },
    ))
}

/// Runs `work` with a netlink handle inside the namespace `ns`, on a thread of its own (never a
/// pool thread: it would stay in the namespace), awaited without blocking the caller's runtime.
async fn in_netns<T, F, Fut>(ns: &File, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let fd = ns
        .try_clone()
        .context("duplicating the namespace's descriptor")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("mesh-netns".into())
        .spawn(move || {
            let run = || -> Result<T> {
                // SAFETY: `fd` is an open nsfs descriptor; only this thread moves.
                if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!(
                        "entering the namespace: {}",
                        std::io::Error::last_os_error()
                    );
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let (conn, handle, _) =
                        rtnetlink::new_connection().context("opening rtnetlink")?;
                    let task = tokio::spawn(conn);
                    let r = work(handle).await;
                    task.abort();
                    r
                })
            };
            let _ = tx.send(run());
        })
        .context("starting a thread for the namespace")?;
    rx.await
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

async fn need(handle: &Handle, name: &str) -> Result<u32> {
    find_link(handle, name)
        .await?
        .map(|(i, _)| i)
        .with_context(|| format!("interface {name} does not exist"))
}

fn mac_of(attrs: &[LinkAttribute]) -> String {
    attrs
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(b) => Some(
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

/// What [`plug`] needs.
pub struct Plug<'a> {
    pub bridge: &'a str,
    pub mtu: u32,
    /// Written as the bridge-side veth's alias: how meshd finds what it made (and orphans).
    pub tag: &'a str,
    pub host_ifname: &'a str,
    pub ifname: &'a str,
    pub cidrs: &'a [IpNet],
}

/// Plugs namespace `ns` into the bridge: a veth pair, one end renamed `ifname` in the
/// namespace with the overlay MTU and `cidrs`, the other on the bridge. Returns the MAC inside.
/// On failure everything made is removed: deleting one end of a veth deletes both, wherever
/// the other end is.
pub async fn plug(ns: &File, p: &Plug<'_>) -> Result<String> {
    let peer_tmp = format!("{}p", p.host_ifname);
    with_handle(|h| async move {
        if find_link(&h, p.host_ifname).await?.is_some() {
            bail!(
                "{} exists already: that namespace and interface are attached",
                p.host_ifname
            );
        }
        let bridge = need(&h, p.bridge)
            .await
            .context("the mesh bridge (is the data path running?)")?;
        h.link()
            .add(LinkVeth::new(p.host_ifname, &peer_tmp).build())
            .execute()
            .await
            .with_context(|| format!("creating veth {}", p.host_ifname))?;
        let made = async {
            let host = need(&h, p.host_ifname).await?;
            h.link()
                .set(LinkUnspec::new_with_index(host).alias(p.tag).build())
                .execute()
                .await
                .context("tagging the veth")?;
            let peer = need(&h, &peer_tmp).await?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(peer)
                        .setns_by_fd(ns.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .context("moving the veth into the namespace")?;
            let (tmp, ifname, mtu, cidrs) = (
                peer_tmp.clone(),
                p.ifname.to_owned(),
                p.mtu,
                p.cidrs.to_vec(),
            );
            let mac = in_netns(ns, move |h| async move {
                if find_link(&h, &ifname).await?.is_some() {
                    bail!("the namespace has an interface called {ifname} already");
                }
                let idx = need(&h, &tmp).await?;
                h.link()
                    .set(
                        LinkUnspec::new_with_index(idx)
                            .name(ifname.clone())
                            .mtu(mtu)
                            .up()
                            .build(),
                    )
                    .execute()
                    .await
                    .with_context(|| format!("setting up {ifname}"))?;
                for c in &cidrs {
                    h.address()
                        .add(idx, c.addr(), c.prefix_len())
                        .execute()
                        .await
                        .with_context(|| format!("adding {c} to {ifname}"))?;
                }
                if let Some((lo, _)) = find_link(&h, "lo").await? {
                    let _ = h
                        .link()
                        .set(LinkUnspec::new_with_index(lo).up().build())
                        .execute()
                        .await;
                }
                Ok(find_link(&h, &ifname)
                    .await?
                    .map(|(_, a)| mac_of(&a))
                    .unwrap_or_default())
            })
            .await?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(host)
                        .mtu(p.mtu)
                        .controller(bridge)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .with_context(|| format!("putting {} on {}", p.host_ifname, p.bridge))?;
            Ok(mac)
        }
        .await;
        if made.is_err()
            && let Ok(Some((idx, _))) = find_link(&h, p.host_ifname).await
        {
            let _ = h.link().del(idx).execute().await;
        }
        made
    })
    .await
}

/// A veth pair for Docker: `host_ifname` on the bridge, tagged, up; `peer` left in meshd's
/// namespace with the MTU and `mac` set, for Docker to move into the container and name. On
/// failure nothing is left.
pub async fn veth_for_docker(
    bridge: &str,
    mtu: u32,
    tag: &str,
    host_ifname: &str,
    peer: &str,
    mac: [u8; 6],
) -> Result<()> {
    with_handle(|h| async move {
        if find_link(&h, host_ifname).await?.is_some() {
            bail!("{host_ifname} exists already: the endpoint is joined");
        }
        let bridge_idx = need(&h, bridge)
            .await
            .context("the network's bridge (is the data path running?)")?;
        h.link()
            .add(LinkVeth::new(host_ifname, peer).build())
            .execute()
            .await
            .with_context(|| format!("creating veth {host_ifname}"))?;
        let made = async {
            let host = need(&h, host_ifname).await?;
            let inner = need(&h, peer).await?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(inner)
                        .mtu(mtu)
                        .address(mac.to_vec())
                        .build(),
                )
                .execute()
                .await
                .with_context(|| format!("setting up {peer}"))?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(host)
                        .alias(tag)
                        .mtu(mtu)
                        .controller(bridge_idx)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .with_context(|| format!("putting {host_ifname} on {bridge}"))?;
            Ok(())
        }
        .await;
        if made.is_err()
            && let Ok(Some((idx, _))) = find_link(&h, host_ifname).await
        {
            let _ = h.link().del(idx).execute().await;
        }
        made
    })
    .await
}

/// Deletes the bridge-side veth `host_ifname` (and with it the namespace's end). Gone already
/// is fine: the namespace died, and its veth with it.
pub async fn unplug(host_ifname: &str) -> Result<()> {
    with_handle(|h| async move {
        if let Some((idx, _)) = find_link(&h, host_ifname).await? {
            h.link()
                .del(idx)
                .execute()
                .await
                .with_context(|| format!("deleting {host_ifname}"))?;
        }
        Ok(())
    })
    .await
}

/// Whether interface `name` exists in meshd's namespace.
pub async fn exists(name: &str) -> Result<bool> {
    with_handle(|h| async move { Ok(find_link(&h, name).await?.is_some()) }).await
}

/// Interfaces in meshd's namespace whose alias is `tag`.
pub async fn tagged(tag: &str) -> Result<Vec<String>> {
    with_handle(|h| async move {
        let mut out = Vec::new();
        let mut links = h.link().get().execute();
        while let Some(msg) = links.try_next().await.context("listing interfaces")? {
            let alias = msg
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfAlias(s) if s == tag));
            let name = msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if let (true, Some(name)) = (alias, name) {
                out.push(name);
            }
        }
        Ok(out)
    })
    .await
}

/// The addresses on interface `name` in meshd's namespace.
async fn addresses_on(
    h: &Handle,
    index: u32,
) -> Result<Vec<(IpAddr, u8, rtnetlink::packet_route::address::AddressMessage)>> {
    let mut out = Vec::new();
    let mut addrs = h.address().get().set_link_index_filter(index).execute();
    while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = addr {
            out.push((ip, msg.header.prefix_len, msg));
        }
    }
    Ok(out)
}

/// Gives the bridge `cidr` (this host on the mesh), unless it has that address already, and
/// the MAC `mac`: a bridge otherwise takes its ports' lowest, which changes when meshd's TAP
/// comes and goes, and peers' ARP caches would point at the old one.
pub async fn expose(bridge: &str, cidr: IpNet, mac: [u8; 6]) -> Result<()> {
    with_handle(|h| async move {
        let idx = need(&h, bridge).await?;
        h.link()
            .set(
                LinkUnspec::new_with_index(idx)
                    .address(mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("fixing {bridge}'s MAC address"))?;
        if addresses_on(&h, idx)
            .await?
            .iter()
            .any(|(ip, _, _)| *ip == cidr.addr())
        {
            return Ok(());
        }
        h.address()
            .add(idx, cidr.addr(), cidr.prefix_len())
            .execute()
            .await
            .with_context(|| format!("adding {cidr} to {bridge}"))
    })
    .await
}

/// Takes `cidr`'s address off the bridge (absent is fine).
pub async fn hide(bridge: &str, cidr: IpNet) -> Result<()> {
    with_handle(|h| async move {
        let Some((idx, _)) = find_link(&h, bridge).await? else {
            return Ok(());
        };
        for (ip, _, msg) in addresses_on(&h, idx).await? {
            if ip == cidr.addr() {
                h.address()
                    .del(msg)
                    .execute()
                    .await
                    .with_context(|| format!("removing {cidr} from {bridge}"))?;
            }
        }
        Ok(())
    })
    .await
}

/// The addresses of interface `name` in meshd's namespace (the underlay's).
pub async fn addresses_of(name: &str) -> Result<Vec<IpAddr>> {
    with_handle(|h| async move {
        let idx = need(&h, name).await?;
        Ok(addresses_on(&h, idx)
            .await?
            .into_iter()
            .map(|(ip, _, _)| ip)
            .collect())
    })
    .await
}

/// Creates bridge `name` with `mtu` (and `address`, when given) and brings it up, for a
/// container runtime to use before meshd starts (`meshctl create-bridge`); meshd adopts it.
/// False when it existed already (its MTU is then set to `mtu`).
pub async fn create_bridge(name: &str, mtu: u32, address: Option<IpNet>) -> Result<bool> {
    with_handle(|h| async move {
        let created = match find_link(&h, name).await? {
            Some(_) => false,
            None => {
                h.link()
                    .add(rtnetlink::LinkBridge::new(name).build())
                    .execute()
                    .await
                    .with_context(|| format!("creating bridge {name}"))?;
                true
            }
        };
        let idx = need(&h, name).await?;
        h.link()
            .set(LinkUnspec::new_with_index(idx).mtu(mtu).up().build())
            .execute()
            .await
            .with_context(|| format!("setting {name}'s MTU to {mtu}"))?;
        if let Some(a) = address
            && !addresses_on(&h, idx)
                .await?
                .iter()
                .any(|(ip, _, _)| *ip == a.addr())
        {
            h.address()
                .add(idx, a.addr(), a.prefix_len())
                .execute()
                .await
                .with_context(|| format!("adding {a} to {name}"))?;
        }
        Ok(created)
    })
    .await
}
