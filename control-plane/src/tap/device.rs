//! The local side of the TAP datapath: the Linux bridge containers plug into, and meshd's TAP
//! device attached to it (rtnetlink for links; the TAP itself is opened in `vnet.rs`).

use anyhow::{Context, Result, bail};

use crate::netlink::{find_link, with_handle};
use rtnetlink::{
    LinkBridge, LinkUnspec,
    packet_route::link::{InfoKind, LinkAttribute, LinkInfo},
};

/// Index and MTU of interface `name`, if it exists.
async fn link(handle: &rtnetlink::Handle, name: &str) -> Result<Option<(u32, u32)>> {
    Ok(find_link(handle, name).await?.map(|(index, attrs)| {
        let mtu = attrs
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(1500);
        (index, mtu)
    }))
}

/// The MTU of the underlay interface.
pub async fn underlay_mtu(underlay: &str) -> Result<u32> {
    with_handle(|handle| async move { link(&handle, underlay).await })
        .await?
        .map(|(_, mtu)| mtu)
        .with_context(|| format!("underlay interface {underlay:?} does not exist"))
}

/// Whether interface `name` is a veth (whose native XDP hook costs GRO and GSO: see
/// docs/architecture.md).
pub async fn is_veth(name: &str) -> Result<bool> {
    // Missing: whoever uses the interface next explains that.
    let Some((_, attrs)) = with_handle(|h| async move { find_link(&h, name).await }).await? else {
        return Ok(false);
    };
    Ok(attrs.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    }))
}

/// Makes sure bridge `bridge` exists and is up, and puts `tap` (already created) on it with
/// `mtu`.
pub async fn attach(bridge: &str, tap: &str, mtu: u32) -> Result<()> {
    with_handle(|handle| async move {
        let br = match link(&handle, bridge).await? {
            Some((idx, _)) => idx,
            None => {
                handle
                    .link()
                    .add(LinkBridge::new(bridge).build())
                    .execute()
                    .await
                    .with_context(|| format!("creating bridge {bridge}"))?;
                link(&handle, bridge)
                    .await?
                    .with_context(|| format!("bridge {bridge} vanished after creation"))?
                    .0
            }
        };
        let Some((tap_idx, _)) = link(&handle, tap).await? else {
            bail!("TAP device {tap} does not exist");
        };
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(tap_idx)
                    .mtu(mtu)
                    .controller(br)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("attaching {tap} to bridge {bridge}"))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(br).up().build())
            .execute()
            .await
            .with_context(|| format!("bringing bridge {bridge} up"))?;
        Ok(())
    })
    .await
}

/// The name of the headroom port that goes with TAP device `tap` (see [`add_headroom_port`]).
pub fn headroom_port_name(tap: &str) -> String {
    // IFNAMSIZ: 15 characters at most.
    let stem: String = tap.chars().take(12).collect();
    format!("{stem}-hr")
}

/// The room the kernel datapath's encapsulation needs in front of a frame: outer Ethernet,
/// IPv4, UDP and the mesh header (the same 50 bytes as VXLAN's).
const ENCAP_ROOM: u32 = (mesh_common::wire::ENCAP_IPV4_LEN + mesh_common::wire::ETH_LEN) as u32;

/// The headroom port's VXLAN id: the largest there is, far from Flannel's 1 and Docker's
/// overlay ids (from 4096), because the kernel refuses a second device with an id and port
/// already in use, and ours must never stand in another program's way.
const HEADROOM_PORT_VNI: u32 = 0xff_ffff;

/// Puts a VXLAN device that stays down on `bridge`, as port `name`, for the headroom it asks
/// for. A bridge gives each of its ports the headroom its neediest port needs, and a veth passes
/// it on to its peer: so the stacks in the containers leave room in front of each packet for
/// the kernel datapath's 50 bytes of outer headers, where otherwise every encapsulated packet
/// that is not TCP (whose buffers have room anyway) would be copied into a bigger buffer first
/// (about 40% of the encapsulating program's time on a 64-byte datagram, measured). This is what
/// the VXLAN port of Docker's or Flannel's bridge does for them. Down, the port carries no
/// frame and opens no socket; its MTU is the largest a VXLAN device takes, so it does not lower
/// the bridge's. Already there: left as it is. The kernel datapath's sync takes it down again
/// should anything bring it up.
pub async fn add_headroom_port(bridge: &str, name: &str) -> Result<()> {
    with_handle(|handle| async move {
        if link(&handle, name).await?.is_some() {
            return Ok(());
        }
        let Some((br, _)) = link(&handle, bridge).await? else {
            bail!("bridge {bridge} does not exist");
        };
        handle
            .link()
            .add(
                rtnetlink::LinkVxlan::new(name, HEADROOM_PORT_VNI)
                    .mtu(u32::from(u16::MAX) - ENCAP_ROOM)
                    .controller(br)
                    .down()
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("creating the headroom port {name} (a VXLAN device)"))
    })
    .await
}

/// Removes the headroom port `name`, if there is one.
pub async fn remove_headroom_port(name: &str) -> Result<()> {
    with_handle(|handle| async move {
        let Some((index, _)) = link(&handle, name).await? else {
            return Ok(());
        };
        handle
            .link()
            .del(index)
            .execute()
            .await
            .with_context(|| format!("removing the headroom port {name}"))
    })
    .await
}
