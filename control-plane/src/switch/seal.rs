//! Sealed (encrypted and authenticated) data frames, as pure logic: the key schedule, sealing,
//! opening and the replay window. See docs/wire-format.md.
//!
//! Encryption is per hop: each direction of each neighbour link has its own key, derived from a
//! secret both ends took from their authenticated control connection. A relay opens a frame with
//! the key of the link it came in on and seals it again for the link it leaves on.
//!
//! ```text
//! 0..8    the plain header (wire.rs) with FLAG_SEALED set          } authenticated
//! 8..11   sender: short id of the neighbour that sealed this hop    } (AEAD associated
//! 11      key epoch (low 8 bits)                                    }  data)
//! 12..20  counter, big-endian u64 (the nonce is 4 zero bytes ‖ counter)
//! 20..    ciphertext of the inner frame (empty in a heartbeat)
//! last 16 the AEAD's tag
//! ```
//!
//! The AEAD is the link's [`Cipher`]: AES-256-GCM when both ends have AES in hardware (their
//! hellos say so), ChaCha20-Poly1305 otherwise. Each cipher has its own key schedule, so a
//! disagreement fails every frame's tag instead of using one key under two ciphers.
//!
//! Keys ratchet forward: epoch e+1's chain key is derived from epoch e's and the old one is
//! forgotten, so a key taken from a running meshd does not open earlier traffic.

use ring::{
    aead::{self, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey},
    hkdf,
};

use super::{
    ShortId,
    wire::{HEADER_LEN, Header, Malformed},
};

/// Set in the flags byte of a sealed frame.
pub use mesh_common::wire::FLAG_SEALED;
/// Header bytes of a sealed frame before the ciphertext.
pub const SEALED_HEADER_LEN: usize = HEADER_LEN + 12;
pub const TAG_LEN: usize = 16;
/// What sealing adds to a plain frame on the wire.
pub const SEAL_OVERHEAD: usize = SEALED_HEADER_LEN - HEADER_LEN + TAG_LEN;
/// A sender moves to the next key after this long...
pub const REKEY_AFTER_MS: u64 = 120_000;
/// ...or this many frames, far below the 2^64 nonces a key has.
pub const REKEY_AFTER_FRAMES: u64 = 1 << 32;
/// Frames this far behind the newest one seen are refused as possible replays.
pub const REPLAY_WINDOW: u64 = 2048;

/// The secret both ends of one control connection derived for its data path. It is moved into
/// the data path once, turned into the link's keys, and wiped when dropped: a running meshd
/// holds only the ratcheting chain keys, which do not open earlier epochs' traffic.
#[derive(PartialEq, Eq)]
pub struct LinkSecret(pub [u8; 32]);

impl Drop for LinkSecret {
    fn drop(&mut self) {
        for b in &mut self.0 {
            // SAFETY: a valid, aligned pointer to our own byte; volatile so the wipe of memory
            // about to be freed is not optimised away.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl std::fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSecret(..)")
    }
}

/// The AEAD a sealed link uses, agreed in its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    /// Fast everywhere in software, and constant-time: for machines without AES hardware
    /// (the Raspberry Pis before the 5) and for links to them.
    ChaCha20Poly1305,
    /// About three times cheaper per byte than ChaCha20-Poly1305 where the CPU has AES and
    /// carry-less multiplication instructions (x86-64 with AES-NI, ARMv8 with its crypto
    /// extensions); slow in software, so only when both ends have them.
    Aes256Gcm,
}

impl Cipher {
    pub const ALL: [Cipher; 2] = [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm];

    /// The name `meshctl peers` and the docs use.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
            Cipher::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// The cipher called `name` (as [`Cipher::name`] spells it), if any.
    pub fn from_name(name: &str) -> Option<Cipher> {
        Cipher::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The short name of `meshctl peers`' ENC column.
    pub fn short_name(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "chacha",
            Cipher::Aes256Gcm => "aes",
        }
    }

    /// What a link uses, given whether each end offers AES-256-GCM.
    pub fn for_link(we_offer_aes: bool, they_offer_aes: bool) -> Cipher {
        if we_offer_aes && they_offer_aes {
            Cipher::Aes256Gcm
        } else {
            Cipher::ChaCha20Poly1305
        }
    }

    /// Whether this CPU runs AES-GCM in hardware (what a node offers by default).
    pub fn aes_in_hardware() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("aes")
                && std::arch::is_x86_feature_detected!("pclmulqdq")
        }
        #[cfg(target_arch = "aarch64")]
        {
            std::arch::is_aarch64_feature_detected!("aes")
                && std::arch::is_aarch64_feature_detected!("pmull")
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            false
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Cipher::Aes256Gcm => &AES_256_GCM,
        }
    }

    /// The key schedule's salt. ChaCha20-Poly1305's is the one from before AES-256-GCM
    /// existed here, so links to older peers key as they did.
    fn salt(self) -> &'static [u8] {
        match self {
            Cipher::ChaCha20Poly1305 => b"mesh data v1",
            Cipher::Aes256Gcm => b"mesh data v1 aes-256-gcm",
        }
    }
}

/// Which way a key protects: each direction of a link has its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    FromDialer,
    FromAcceptor,
}

impl Direction {
    /// The direction of frames this node sends on a link it did (not) dial.
    pub fn sending(i_dialed: bool) -> Direction {
        if i_dialed {
            Direction::FromDialer
        } else {
            Direction::FromAcceptor
        }
    }

    pub fn receiving(i_dialed: bool) -> Direction {
        Self::sending(!i_dialed)
    }
}

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn expand(chain: &[u8; 32], info: &[u8]) -> [u8; 32] {
    let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, chain);
    let mut out = [0u8; 32];
    prk.expand(&[info], Len32)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

fn first_chain(secret: &LinkSecret, dir: Direction, cipher: Cipher) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, cipher.salt()).extract(&secret.0);
    let info: &[u8] = match dir {
        Direction::FromDialer => b"from dialer",
        Direction::FromAcceptor => b"from acceptor",
    };
    let mut out = [0u8; 32];
    prk.expand(&[info], Len32)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// One epoch's key, and the chain key the next epoch is derived from.
struct Epoch {
    number: u32,
    cipher: Cipher,
    key: LessSafeKey,
    chain: [u8; 32],
}

impl Epoch {
    fn first(secret: &LinkSecret, dir: Direction, cipher: Cipher) -> Epoch {
        Epoch::from_chain(0, cipher, first_chain(secret, dir, cipher))
    }

    fn from_chain(number: u32, cipher: Cipher, chain: [u8; 32]) -> Epoch {
        let key = expand(&chain, b"key");
        Epoch {
            number,
            cipher,
            key: LessSafeKey::new(
                UnboundKey::new(cipher.algorithm(), &key).expect("both ciphers take 32-byte keys"),
            ),
            chain,
        }
    }

    fn next(&self) -> Epoch {
        Epoch::from_chain(
            self.number.wrapping_add(1),
            self.cipher,
            expand(&self.chain, b"next"),
        )
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals frames for one direction of one link.
pub struct Sealer {
    sender: ShortId,
    epoch: Epoch,
    counter: u64,
    epoch_started_ms: u64,
}

impl Sealer {
    pub fn new(
        secret: &LinkSecret,
        dir: Direction,
        cipher: Cipher,
        sender: ShortId,
        now_ms: u64,
    ) -> Sealer {
        Sealer {
            sender,
            epoch: Epoch::first(secret, dir, cipher),
            counter: 0,
            epoch_started_ms: now_ms,
        }
    }

    pub fn epoch(&self) -> u32 {
        self.epoch.number
    }

    /// Our data-path id changed; the keys and counter stay.
    pub fn set_sender(&mut self, sender: ShortId) {
        self.sender = sender;
    }

    /// Appends the sealed datagram for `header` and `inner` to `out` (no allocation once
    /// `out` has grown to its working size).
    pub fn seal(&mut self, header: &Header, inner: &[u8], out: &mut Vec<u8>, now_ms: u64) {
        if self.counter >= REKEY_AFTER_FRAMES
            || now_ms.saturating_sub(self.epoch_started_ms) >= REKEY_AFTER_MS
        {
            self.epoch = self.epoch.next();
            self.counter = 0;
            self.epoch_started_ms = now_ms;
        }
        let counter = self.counter;
        self.counter += 1;
        let mut head = [0u8; SEALED_HEADER_LEN];
        let plain: &mut [u8; HEADER_LEN] = (&mut head[..HEADER_LEN])
            .try_into()
            .expect("HEADER_LEN bytes");
        header.write(plain);
        head[0] |= FLAG_SEALED;
        head[8..11].copy_from_slice(&self.sender.get().to_be_bytes()[1..]);
        head[11] = self.epoch.number as u8;
        head[12..20].copy_from_slice(&counter.to_be_bytes());
        let start = out.len();
        out.extend_from_slice(&head);
        out.extend_from_slice(inner);
        let tag = self
            .epoch
            .key
            .seal_in_place_separate_tag(
                nonce(counter),
                Aad::from(head),
                &mut out[start + SEALED_HEADER_LEN..],
            )
            .expect("a frame is far below either AEAD's length limit");
        out.extend_from_slice(tag.as_ref());
    }
}

/// Why a sealed frame was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Malformed(Malformed),
    /// Not sealed although the mesh encrypts.
    NotSealed,
    /// Wrong key, tampered with, or from an epoch we no longer (or not yet) hold.
    Auth,
    /// Seen before, or too old to tell.
    Replay,
}

/// The sender short id a sealed datagram claims (to pick the link's [`Opener`]).
pub fn sender_of(datagram: &[u8]) -> Result<ShortId, Refused> {
    let h = datagram
        .get(..SEALED_HEADER_LEN + TAG_LEN)
        .ok_or(Refused::Malformed(Malformed::Short))?;
    if h[0] & FLAG_SEALED == 0 {
        return Err(Refused::NotSealed);
    }
    Ok(ShortId::from_wire(u32::from_be_bytes([
        0, h[8], h[9], h[10],
    ])))
}

struct RxEpoch {
    epoch: Epoch,
    window: ReplayWindow,
}

/// Opens frames for one direction of one link. Holds the current epoch, the one before (for
/// frames reordered across a rekey) and the next (the sender may move first).
pub struct Opener {
    previous: Option<RxEpoch>,
    current: RxEpoch,
    next: RxEpoch,
}

impl Opener {
    pub fn new(secret: &LinkSecret, dir: Direction, cipher: Cipher) -> Opener {
        let first = Epoch::first(secret, dir, cipher);
        let next = first.next();
        Opener {
            previous: None,
            current: RxEpoch {
                epoch: first,
                window: ReplayWindow::default(),
            },
            next: RxEpoch {
                epoch: next,
                window: ReplayWindow::default(),
            },
        }
    }

    /// Authenticates and decrypts `datagram` in place. Returns its header and the range of the
    /// inner frame within `datagram`.
    pub fn open(
        &mut self,
        datagram: &mut [u8],
    ) -> Result<(Header, std::ops::Range<usize>), Refused> {
        sender_of(datagram)?;
        let mut head = [0u8; SEALED_HEADER_LEN];
        head.copy_from_slice(&datagram[..SEALED_HEADER_LEN]);
        let epoch = head[11];
        let counter = u64::from_be_bytes(head[12..20].try_into().expect("8 bytes"));
        let (slot, which) = if epoch == self.current.epoch.number as u8 {
            (&mut self.current, 0)
        } else if epoch == self.next.epoch.number as u8 {
            (&mut self.next, 1)
        } else {
            match self.previous.as_mut() {
                Some(p) if epoch == p.epoch.number as u8 => (p, -1),
                _ => return Err(Refused::Auth),
            }
        };
        if !slot.window.fresh(counter) {
            return Err(Refused::Replay);
        }
        let len = slot
            .epoch
            .key
            .open_in_place(
                nonce(counter),
                Aad::from(head),
                &mut datagram[SEALED_HEADER_LEN..],
            )
            .map_err(|_| Refused::Auth)?
            .len();
        slot.window.mark(counter);
        if which == 1 {
            // The sender moved to the next key: follow, and forget the oldest.
            let after = RxEpoch {
                epoch: self.next.epoch.next(),
                window: ReplayWindow::default(),
            };
            let now = std::mem::replace(&mut self.next, after);
            self.previous = Some(std::mem::replace(&mut self.current, now));
        }
        let plain: &[u8; HEADER_LEN] = head[..HEADER_LEN].try_into().expect("HEADER_LEN bytes");
        let header = Header::read(plain).map_err(Refused::Malformed)?;
        if !header.heartbeat && len < 14 {
            return Err(Refused::Malformed(Malformed::NoInnerFrame));
        }
        Ok((header, SEALED_HEADER_LEN..SEALED_HEADER_LEN + len))
    }
}

/// Which counters of one key were seen: a sliding window of [`REPLAY_WINDOW`] behind the
/// newest (RFC 6479's bitmap, without its block trick).
pub struct ReplayWindow {
    /// One more than the highest counter seen (0: none yet).
    top: u64,
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            top: 0,
            bits: [0; (REPLAY_WINDOW / 64) as usize],
        }
    }
}

impl ReplayWindow {
    fn bit(n: u64) -> (usize, u64) {
        let i = n % REPLAY_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Whether `n` may be accepted (not seen, not too old).
    pub fn fresh(&self, n: u64) -> bool {
        if n >= self.top {
            return true;
        }
        if self.top - n > REPLAY_WINDOW {
            return false;
        }
        let (w, b) = Self::bit(n);
        self.bits[w] & b == 0
    }

    /// Records `n` as seen (after it authenticated).
    pub fn mark(&mut self, n: u64) {
        if n >= self.top {
            if n - self.top >= REPLAY_WINDOW {
                self.bits = [0; (REPLAY_WINDOW / 64) as usize];
            } else {
                for m in self.top..n {
                    let (w, b) = Self::bit(m);
                    self.bits[w] &= !b;
                }
            }
            self.top = n + 1;
        }
        let (w, b) = Self::bit(n);
        self.bits[w] |= b;
    }
}

/// What a sealed link is keyed with: the secret from its control connection, which end
/// dialled (each direction has its own keys), and the cipher both ends agreed on.
#[derive(Debug)]
pub struct LinkKeys {
    pub secret: LinkSecret,
    pub i_dialed: bool,
    pub cipher: Cipher,
}

/// Both directions' state for one link.
pub struct LinkCrypto {
    pub sealer: Sealer,
    pub opener: Opener,
}

impl LinkCrypto {
    pub fn new(keys: &LinkKeys, me: ShortId, now_ms: u64) -> LinkCrypto {
        let LinkKeys {
            secret,
            i_dialed,
            cipher,
        } = keys;
        LinkCrypto {
            sealer: Sealer::new(secret, Direction::sending(*i_dialed), *cipher, me, now_ms),
            opener: Opener::new(secret, Direction::receiving(*i_dialed), *cipher),
        }
    }

    pub fn cipher(&self) -> Cipher {
        self.sealer.epoch.cipher
    }
}

// The AEAD's tag length is what the format says.
const _: () = assert!(aead::MAX_TAG_LEN == TAG_LEN);

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: u8, i_dialed: bool, cipher: Cipher) -> LinkKeys {
        LinkKeys {
            secret: LinkSecret([secret; 32]),
            i_dialed,
            cipher,
        }
    }

    fn pair_with(cipher: Cipher) -> (LinkCrypto, LinkCrypto) {
        (
            LinkCrypto::new(&keys(7, true, cipher), ShortId::from_wire(1), 0),
            LinkCrypto::new(&keys(7, false, cipher), ShortId::from_wire(2), 0),
        )
    }

    /// Each test runs with both ciphers.
    fn pairs() -> impl Iterator<Item = (LinkCrypto, LinkCrypto)> {
        Cipher::ALL.into_iter().map(pair_with)
    }

    fn header(heartbeat: bool) -> Header {
        Header {
            origin: ShortId::from_wire(1),
            destination: ShortId::from_wire(2),
            hops: 32,
            heartbeat,
        }
    }

    #[test]
    fn sealed_frames_open_on_the_other_end_only_in_their_direction() {
        for (mut a, mut b) in pairs() {
            let frame = b"\xff\xff\xff\xff\xff\xff\x02\0\0\0\0\x01\x08\x06secret marker";
            let mut out = Vec::new();
            a.sealer.seal(&header(false), frame, &mut out, 0);
            assert_eq!(out.len(), HEADER_LEN + frame.len() + SEAL_OVERHEAD);
            assert!(
                !out.windows(6).any(|w| w == b"marker"),
                "ciphertext hides the frame"
            );
            assert_eq!(sender_of(&out), Ok(ShortId::from_wire(1)));
            let mut copy = out.clone();
            // The sender's own opener holds the other direction's key.
            assert_eq!(a.opener.open(&mut copy), Err(Refused::Auth));
            let (h, r) = b.opener.open(&mut out).unwrap();
            assert_eq!(h, header(false));
            assert_eq!(&out[r], frame);
        }
    }

    #[test]
    fn ends_that_disagree_on_the_cipher_open_nothing() {
        let mut a = LinkCrypto::new(&keys(7, true, Cipher::Aes256Gcm), ShortId::from_wire(1), 0);
        let mut b = LinkCrypto::new(
            &keys(7, false, Cipher::ChaCha20Poly1305),
            ShortId::from_wire(2),
            0,
        );
        let mut out = Vec::new();
        a.sealer.seal(&header(true), &[], &mut out, 0);
        assert_eq!(b.opener.open(&mut out), Err(Refused::Auth));
        assert_eq!(a.cipher(), Cipher::Aes256Gcm);
        assert_eq!(b.cipher(), Cipher::ChaCha20Poly1305);
    }

    #[test]
    fn names_read_back() {
        for c in Cipher::ALL {
            assert_eq!(Cipher::from_name(c.name()), Some(c));
        }
        assert_eq!(Cipher::from_name("rot13"), None);
    }

    #[test]
    fn aes_only_when_both_ends_offer_it() {
        assert_eq!(Cipher::for_link(true, true), Cipher::Aes256Gcm);
        for (ours, theirs) in [(true, false), (false, true), (false, false)] {
            assert_eq!(Cipher::for_link(ours, theirs), Cipher::ChaCha20Poly1305);
        }
    }

    /// A ChaCha20-Poly1305 link keys and seals exactly as before AES-256-GCM was added, so
    /// older peers (which know only it) still understand us: the bytes below were sealed by
    /// that older code.
    #[test]
    fn chacha_frames_are_what_older_peers_seal() {
        let (mut a, _) = pair_with(Cipher::ChaCha20Poly1305);
        let mut out = Vec::new();
        a.sealer
            .seal(&header(false), b"older peers read this", &mut out, 0);
        assert_eq!(hex(&out), OLDER_PEERS_SEAL);
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    const OLDER_PEERS_SEAL: &str = "0d000002000001200000010000000000000000005c58f620b96af9b9c3ce5fdbdda036703644ded495bc8d3afeb2c6299d5472c3ba8c6d39fd";

    #[test]
    fn a_replayed_or_tampered_frame_is_refused() {
        for (a, b) in pairs() {
            replayed_or_tampered(a, b);
        }
    }

    fn replayed_or_tampered(mut a: LinkCrypto, mut b: LinkCrypto) {
        let mut out = Vec::new();
        a.sealer.seal(&header(false), &[0u8; 60], &mut out, 0);
        let captured = out.clone();
        b.opener.open(&mut out).unwrap();
        assert_eq!(b.opener.open(&mut captured.clone()), Err(Refused::Replay));
        for i in [0usize, 5, 9, 11, 15, 30, captured.len() - 1] {
            let mut t = captured.clone();
            t[i] ^= 0x10;
            assert!(b.opener.open(&mut t).is_err(), "flipped byte {i} accepted");
        }
        let mut plain = captured.clone();
        plain[0] &= !FLAG_SEALED;
        assert_eq!(b.opener.open(&mut plain), Err(Refused::NotSealed));
        assert_eq!(
            b.opener.open(&mut captured[..30].to_vec()),
            Err(Refused::Malformed(Malformed::Short))
        );
    }

    #[test]
    fn a_peer_with_another_secret_cannot_forge() {
        for cipher in Cipher::ALL {
            let (_, mut b) = pair_with(cipher);
            let mut forger = Sealer::new(
                &LinkSecret([8; 32]),
                Direction::FromDialer,
                cipher,
                ShortId::from_wire(1),
                0,
            );
            let mut out = Vec::new();
            forger.seal(&header(true), &[], &mut out, 0);
            assert_eq!(b.opener.open(&mut out), Err(Refused::Auth));
        }
    }

    #[test]
    fn rekeying_follows_the_sender_and_reordered_frames_still_open() {
        for cipher in Cipher::ALL {
            rekeying(cipher);
        }
    }

    fn rekeying(cipher: Cipher) {
        let (mut a, mut b) = pair_with(cipher);
        let mut old = Vec::new();
        a.sealer.seal(&header(false), &[1u8; 20], &mut old, 0);
        let mut late = Vec::new();
        a.sealer.seal(&header(false), &[2u8; 20], &mut late, 1);
        b.opener.open(&mut old).unwrap();
        for round in 1..=3u64 {
            let mut new = Vec::new();
            a.sealer
                .seal(&header(false), &[3u8; 20], &mut new, round * REKEY_AFTER_MS);
            assert_eq!(a.sealer.epoch(), round as u32);
            b.opener.open(&mut new).unwrap();
            if round == 1 {
                // Sent before the rekey, arriving after it.
                b.opener.open(&mut late).unwrap();
            }
        }
        // Two epochs back is forgotten: forward secrecy for old traffic.
        let (mut a2, mut b2) = pair_with(cipher);
        let mut stale = Vec::new();
        a2.sealer.seal(&header(false), &[1u8; 20], &mut stale, 0);
        for round in 1..=2u64 {
            let mut new = Vec::new();
            a2.sealer
                .seal(&header(false), &[3u8; 20], &mut new, round * REKEY_AFTER_MS);
            b2.opener.open(&mut new).unwrap();
        }
        assert_eq!(b2.opener.open(&mut stale), Err(Refused::Auth));
    }

    #[test]
    fn the_replay_window_accepts_reordering_and_refuses_old_and_seen() {
        let mut w = ReplayWindow::default();
        for n in [0u64, 2, 1, 5000, 4000, 3000] {
            assert!(w.fresh(n), "{n}");
            w.mark(n);
            assert!(!w.fresh(n), "{n} again");
        }
        assert!(!w.fresh(2), "too old");
        assert!(w.fresh(4999) && w.fresh(2953));
        assert!(!w.fresh(5000 - REPLAY_WINDOW - 1));
        w.mark(5000 + REPLAY_WINDOW * 3);
        assert!(!w.fresh(5000));
        assert!(w.fresh(5000 + REPLAY_WINDOW * 3 - 1));
    }
}
