//! Which shard stores which sliver pair: pair `i` goes to shard `(i + blob_id mod n) mod n`,
//! as in walrus-core's `mapping.rs`, so that the systematic slivers of different blobs land on
//! different nodes.

use super::BlobId;

/// The shard that stores sliver pair `pair` of blob `blob_id`.
pub fn pair_to_shard(pair: u16, n_shards: u16, blob_id: &BlobId) -> u16 {
    let n = usize::from(n_shards);
    ((usize::from(pair) + blob_id.bytes_mod(n)) % n) as u16
}

/// The sliver pair that shard `shard` stores for blob `blob_id`.
pub fn shard_to_pair(shard: u16, n_shards: u16, blob_id: &BlobId) -> u16 {
    let n = usize::from(n_shards);
    ((n + usize::from(shard) - blob_id.bytes_mod(n)) % n) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: u64) -> BlobId {
        let mut b = [0u8; 32];
        b[24..].copy_from_slice(&v.to_be_bytes());
        BlobId(b)
    }

    #[test]
    fn rotation_is_a_bijection_and_round_trips() {
        for v in [0u64, 1, 17, 27, 1 << 40] {
            let b = id(v);
            let mut seen = [false; 13];
            for p in 0..13 {
                let s = pair_to_shard(p, 13, &b);
                assert!(!seen[usize::from(s)]);
                seen[usize::from(s)] = true;
                assert_eq!(shard_to_pair(s, 13, &b), p);
            }
        }
        // Matches walrus-core's test: blob id 27 rotates pair 0 to shard 27 mod 13 = 1.
        assert_eq!(pair_to_shard(0, 13, &id(27)), 1);
        assert_eq!(pair_to_shard(11, 13, &id(27)), 12);
    }
}
