//! Test payloads and the checksum that tells they arrived whole and in order.

/// FNV-1a, 64 bits: a checksum that notices reordered or changed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Pseudo-random bytes (xorshift64) that differ with `seed`, written into `buf`;
/// returns the generator's state to go on from.
pub fn fill(seed: u64, buf: &mut [u8]) -> u64 {
    let mut x = seed | 1;
    for byte in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    x
}

/// `len` pseudo-random bytes that differ with `seed`.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    fill(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), &mut buf);
    buf
}
