//! Mutated frames for the randomized BPF_PROG_TEST_RUN tests, shared by the program tests.

/// A small deterministic generator (xorshift64*): the same frames every run, so a failure
/// reproduces; the seed is printed with it.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A frame derived from one of `bases`: bits flipped, cut short, grown with junk, or pure junk.
pub fn mutated(rng: &mut Rng, bases: &[Vec<u8>]) -> Vec<u8> {
    let mut f = bases[rng.below(bases.len())].clone();
    match rng.below(5) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
        }
        1 => f.truncate(14 + rng.below(f.len().saturating_sub(14).max(1))),
        2 => f.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
        3 => {
            // A header field set to an extreme: lengths, flags, hop counts, ids.
            let i = rng.below(f.len().min(64));
            f[i] = [0x00, 0xff, 0x7f, 0x80][rng.below(4)];
        }
        _ => f = (0..14 + rng.below(200)).map(|_| rng.next() as u8).collect(),
    }
    f
}
