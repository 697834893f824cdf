//! Datagrams collected while one TAP read (or one coalesced receive) is processed, grouped so
//! that each run of same-size datagrams to one address leaves in a single GSO send. Order per
//! address is kept. Buffers are reused: no allocation in steady state.

use std::net::SocketAddr;

use super::udp::{MAX_GSO_BYTES, MAX_SEGMENTS};

struct Batch {
    addr: SocketAddr,
    /// Size of every datagram but possibly the last.
    seg: usize,
    buf: Vec<u8>,
    count: usize,
    /// A shorter datagram ended it: nothing more may follow in the same send.
    closed: bool,
}

#[derive(Default)]
pub struct Batcher {
    batches: Vec<Batch>,
    used: usize,
}

impl Batcher {
    /// The buffer to append the next datagram for `addr`, `len` bytes long, to.
    pub fn slot(&mut self, addr: SocketAddr, len: usize) -> &mut Vec<u8> {
        let fits = |b: &Batch| {
            b.addr == addr
                && !b.closed
                && b.count < MAX_SEGMENTS
                && b.buf.len() + len <= MAX_GSO_BYTES
                && len <= b.seg
        };
        // Only the latest batch for this address may grow, or datagrams would be reordered.
        let latest = self.batches[..self.used]
            .iter()
            .rposition(|b| b.addr == addr);
        let i = match latest {
            Some(i) if fits(&self.batches[i]) => i,
            _ => {
                if self.used == self.batches.len() {
                    self.batches.push(Batch {
                        addr,
                        seg: len,
                        buf: Vec::with_capacity(MAX_GSO_BYTES),
                        count: 0,
                        closed: false,
                    });
                }
                let b = &mut self.batches[self.used];
                self.used += 1;
                b.addr = addr;
                b.seg = len;
                b.buf.clear();
                b.count = 0;
                b.closed = false;
                self.used - 1
            }
        };
        let b = &mut self.batches[i];
        b.count += 1;
        b.closed = len < b.seg;
        &mut b.buf
    }

    /// The batches to send, in order: (address, datagram size, datagrams back to back, count).
    pub fn pending(&self) -> impl Iterator<Item = (SocketAddr, usize, &[u8], usize)> {
        self.batches[..self.used]
            .iter()
            .map(|b| (b.addr, b.seg, b.buf.as_slice(), b.count))
    }

    /// The bytes waiting to be sent.
    pub fn bytes(&self) -> usize {
        self.batches[..self.used].iter().map(|b| b.buf.len()).sum()
    }

    pub fn clear(&mut self) {
        self.used = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(b: &mut Batcher, addr: SocketAddr, len: usize) {
        b.slot(addr, len).extend(std::iter::repeat_n(0u8, len));
    }

    #[test]
    fn same_size_runs_share_a_send_and_order_is_kept() {
        let (a, c) = (
            SocketAddr::from(([198, 18, 0, 1], 6784)),
            SocketAddr::from(([198, 18, 0, 2], 6784)),
        );
        let mut b = Batcher::default();
        for _ in 0..3 {
            push(&mut b, a, 1400);
        }
        push(&mut b, a, 600); // ends the run
        push(&mut b, a, 1400); // must not join it
        push(&mut b, c, 100);
        let got: Vec<(SocketAddr, usize, usize, usize)> = b
            .pending()
            .map(|(addr, seg, buf, n)| (addr, seg, buf.len(), n))
            .collect();
        assert_eq!(
            got,
            vec![(a, 1400, 4800, 4), (a, 1400, 1400, 1), (c, 100, 100, 1)]
        );
        b.clear();
        assert_eq!(b.pending().count(), 0);
    }

    #[test]
    fn a_send_never_exceeds_the_kernel_limits() {
        let a = SocketAddr::from(([198, 18, 0, 1], 6784));
        let mut b = Batcher::default();
        for _ in 0..200 {
            push(&mut b, a, 1000);
        }
        for (_, _, buf, n) in b.pending() {
            assert!(n <= MAX_SEGMENTS && buf.len() <= MAX_GSO_BYTES);
        }
        assert_eq!(b.pending().map(|p| p.3).sum::<usize>(), 200);
    }
}
