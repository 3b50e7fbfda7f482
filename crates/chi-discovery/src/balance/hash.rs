//! The key hasher of the hashing strategies.
//!
//! Pluggable as a plain function pointer ([`KeyHasher`]): a hashing strategy calls it once per
//! lookup, so it must be fast on short keys, and its output must be well mixed in every bit,
//! because the tables take it modulo small sizes. The default is a small multiply-fold hash in the
//! style of wyhash (Wang Yi), written here so the crate carries no hashing dependency: 16 bytes at
//! a time through a 64x64->128 multiply, folded. It is *not* DoS-resistant: keys come from the
//! application (user ids, session ids), and an attacker who can choose keys can at worst move
//! their own requests between instances, which consistent hashing allows anyway.

/// A key hasher: bytes to a well-mixed `u64`.
pub type KeyHasher = fn(&[u8]) -> u64;

const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;

#[inline(always)]
fn mum(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

#[inline(always)]
fn read8(b: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = b.len().min(8);
    buf[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(buf)
}

#[inline(always)]
fn read4(b: &[u8]) -> u64 {
    let mut buf = [0u8; 4];
    let n = b.len().min(4);
    buf[..n].copy_from_slice(&b[..n]);
    u64::from(u32::from_le_bytes(buf))
}

/// The default [`KeyHasher`]: a wyhash-style multiply-fold hash.
#[inline]
pub fn default_hash(bytes: &[u8]) -> u64 {
    let len = bytes.len();
    let mut seed = P0 ^ mum(len as u64 ^ P1, P0);
    let (a, b);
    if len <= 16 {
        if len >= 4 {
            let last = len - 4;
            let mid = (len >> 3) << 2;
            a = (read4(bytes) << 32) | read4(&bytes[mid..]);
            b = (read4(&bytes[last..]) << 32) | read4(&bytes[last - mid..]);
        } else if len > 0 {
            a = (u64::from(bytes[0]) << 16)
                | (u64::from(bytes[len >> 1]) << 8)
                | u64::from(bytes[len - 1]);
            b = 0;
        } else {
            a = 0;
            b = 0;
        }
    } else {
        let mut rest = bytes;
        while rest.len() > 16 {
            seed = mum(read8(rest) ^ P1, read8(&rest[8..]) ^ seed);
            rest = &rest[16..];
        }
        let tail = &bytes[len - 16..];
        a = read8(tail);
        b = read8(&tail[8..]);
    }
    mum(P1 ^ len as u64, mum(a ^ P1, b ^ seed) ^ P2)
}

/// The `k`-th output of SplitMix64 (Steele, Lea and Flood, *Fast Splittable Pseudorandom Number
/// Generators*, 2014) seeded with `base`: the ring points of an instance whose id hashes to
/// `base`. One key hash per instance and a few multiplies per point, where hashing `id + k` for
/// every point cost most of a table rebuild.
#[inline]
pub(crate) fn splitmix(base: u64, k: u64) -> u64 {
    let mut z = base.wrapping_add(k.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_hash_spreads_short_and_long_keys() {
        let mut seen = std::collections::HashSet::new();
        for len in 0..64usize {
            let key: Vec<u8> = (0..len as u8).collect();
            assert!(seen.insert(default_hash(&key)), "collision at len {len}");
        }
        // Keys that differ in one bit give hashes that differ in about half the bits.
        let mut total = 0u32;
        for i in 0u32..1000 {
            let a = default_hash(&i.to_le_bytes());
            let b = default_hash(&(i ^ 1).to_le_bytes());
            total += (a ^ b).count_ones();
        }
        let mean = f64::from(total) / 1000.0;
        assert!((24.0..40.0).contains(&mean), "avalanche mean {mean}");
        // Buckets modulo a small prime are even.
        let mut buckets = [0u32; 271];
        for i in 0u32..271_000 {
            buckets[(default_hash(format!("user-{i}").as_bytes()) % 271) as usize] += 1;
        }
        let (min, max) = (buckets.iter().min(), buckets.iter().max());
        assert!(
            *min.expect("271") > 850 && *max.expect("271") < 1150,
            "{min:?} {max:?}"
        );
    }
}
