//! Consistent hashing with a specified hash, so every client, whatever
//! toolchain built it, routes a key to the same instance.
//!
//! Keys and rendezvous weights are XXH64 (seed 0), whose output is fixed by
//! its specification: std's `DefaultHasher` makes no such promise across
//! Rust releases.

use xxhash_rust::xxh64::{Xxh64, xxh64};

use crate::registry::Endpoint;

/// Routes a call by consistent hashing (with
/// [`Balance::ConsistentHash`](super::Balance::ConsistentHash)): calls with
/// the same key go to the same instance while it is available.
///
/// ```
/// let mut request = trellis::Request::new(());
/// request.extensions_mut().insert(trellis::client::HashKey::new("order-42"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKey(u64);

impl HashKey {
    /// The key for `value`, such as an order id.
    pub fn new(value: impl AsRef<[u8]>) -> Self {
        HashKey(xxh64(value.as_ref(), 0))
    }

    /// The 64-bit hash the key routes by.
    pub fn value(self) -> u64 {
        self.0
    }
}

/// The rendezvous weight of `key` on `endpoint`: the highest wins.
pub(crate) fn rendezvous(key: u64, endpoint: &Endpoint) -> u64 {
    let mut hasher = Xxh64::new(0);
    hasher.update(&key.to_le_bytes());
    hasher.update(endpoint.host().as_bytes());
    hasher.update(&endpoint.port().to_le_bytes());
    hasher.digest()
}

/// The weighted rendezvous score of an endpoint of `weight` whose
/// rendezvous hash is `hash`: the highest wins, and each endpoint wins a
/// share of keys proportional to its weight (the logarithmic method of
/// weighted rendezvous hashing). For equal weights the order is the
/// hashes' order, so unweighted routing is unchanged.
pub(crate) fn weighted_score(hash: u64, weight: u32) -> f64 {
    // A uniform draw in (0, 1) from the hash's top 53 bits.
    let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -unit.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_the_specified_xxh64() {
        // Test vectors of the XXH64 specification (seed 0).
        assert_eq!(HashKey::new("").value(), 0xef46_db37_51d8_e999);
        assert_eq!(HashKey::new("abc").value(), 0x44bc_2cf5_ad77_0999);
        // Fixed here so a change of hash (which would move every key) fails.
        let weight = rendezvous(HashKey::new("order-42").value(), &Endpoint::new("10.0.0.7", 50051));
        assert_eq!(weight, rendezvous(HashKey::new("order-42").value(), &Endpoint::new("10.0.0.7", 50051)));
        assert_eq!(weight, KNOWN_WEIGHT, "{weight:#x}");
    }

    const KNOWN_WEIGHT: u64 = 0xee4e_056c_95e5_b17d;
}
