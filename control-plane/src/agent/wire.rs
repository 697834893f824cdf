//! Length-delimited protobuf frames on a QUIC stream.

use anyhow::{Context, Result, bail};
use mesh_proto::{Message, v1::PeerFrame};

/// Largest frame accepted: a full topology of a few thousand peers fits comfortably.
const MAX_FRAME: usize = 8 * 1024 * 1024;

pub async fn write(send: &mut quinn::SendStream, frame: &PeerFrame) -> Result<()> {
    // The reader refuses frames over the limit, so the writer must not produce one (gossip
    // cuts updates well below it; this guards against a bug turning into a broken link).
    let len = frame.encoded_len();
    if len > MAX_FRAME {
        bail!("refusing to send a {len}-byte frame (limit {MAX_FRAME})");
    }
    send.write_all(&frame.encode_length_delimited_to_vec())
        .await
        .context("sending to the peer")
}

/// Largest frame read before the peer has authenticated (a hello, a PAKE message).
pub const MAX_HANDSHAKE_FRAME: usize = 16 * 1024;

pub async fn read(recv: &mut quinn::RecvStream) -> Result<PeerFrame> {
    read_capped(recv, MAX_FRAME).await
}

/// [`read`], refusing frames over `cap` bytes before reading them.
pub async fn read_capped(recv: &mut quinn::RecvStream, cap: usize) -> Result<PeerFrame> {
    // Varint length prefix, one byte at a time (at most 10 bytes).
    let mut len: u64 = 0;
    for shift in (0..70).step_by(7) {
        let mut b = [0u8; 1];
        recv.read_exact(&mut b)
            .await
            .context("peer closed the stream")?;
        len |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let len = len as usize;
    if len > cap {
        bail!("peer sent a {len}-byte frame (limit {cap})");
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf)
        .await
        .context("peer closed the stream mid-frame")?;
    PeerFrame::decode(buf.as_slice()).context("peer sent a malformed frame")
}
