//! The two small stable hashes the data pipeline is built on: splitmix64 (shuffles, splits) and
//! FNV-1a (document and file fingerprints). Both are fixed forever: changing one reshuffles every
//! prepared dataset.

/// The splitmix64 generator: advance `state` and return the next 64 random bits.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a (64-bit) of `bytes`, its offset basis xor-ed with `seed`.
pub fn fnv1a64(bytes: impl IntoIterator<Item = u8>, seed: u64) -> u64 {
    bytes
        .into_iter()
        .fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        })
}
