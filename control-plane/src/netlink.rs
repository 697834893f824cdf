//! rtnetlink plumbing shared by everything that manages links (the TAP device's bridge,
//! attachments): a connection for one piece of work, and looking a link up by name.

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use rtnetlink::{Handle, packet_route::link::LinkAttribute};

/// Runs `work` with a fresh rtnetlink connection in the calling thread's namespace, closed when
/// it is done.
pub async fn with_handle<T, Fut>(work: impl FnOnce(Handle) -> Fut) -> Result<T>
where
    Fut: std::future::Future<Output = Result<T>>,
{
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    let task = tokio::spawn(conn);
    let result = work(handle).await;
    task.abort();
    result
}

/// The index of interface `name`, and its attributes, if it exists.
pub async fn find_link(handle: &Handle, name: &str) -> Result<Option<(u32, Vec<LinkAttribute>)>> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some((msg.header.index, msg.attributes))),
        Ok(None) => Ok(None),
        // The kernel answers "no such device" as an error.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up interface {name}")),
    }
}
