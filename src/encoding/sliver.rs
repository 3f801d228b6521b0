//! Slivers and their BCS form (walrus-core's `SliverData`: symbols, symbol size, index).

use super::codec::Encoder;
use super::error::SliverDefect;
use super::merkle::{DIGEST_LEN, LeafHasher, Node, root_from_leaf_hashes};
use super::{BlobMetadata, EncodingConfig, EncodingError, SliverType};

/// One sliver: a row (primary) or column (secondary) of the expanded symbol matrix.
#[derive(Clone, PartialEq, Eq)]
pub struct Sliver {
    pub sliver_type: SliverType,
    /// Sliver index: the row (primary) or column (secondary) of the expanded matrix.
    pub index: u16,
    pub symbol_size: u16,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Sliver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sliver")
            .field("type", &self.sliver_type)
            .field("index", &self.index)
            .field("symbol_size", &self.symbol_size)
            .field("len", &self.data.len())
            .finish()
    }
}

/// Largest sliver body we parse: a primary sliver at the maximum symbol size and 4096 shards.
const MAX_SLIVER_BYTES: usize = 4096 * 65_534;

impl Sliver {
    /// The sliver-pair index this sliver belongs to (secondary slivers are paired in reverse).
    /// The index must be below `n_shards` (check first); an out-of-range secondary index gives
    /// pair 0 rather than a panic.
    pub fn pair_index(&self, n_shards: u16) -> u16 {
        match self.sliver_type {
            SliverType::Primary => self.index,
            SliverType::Secondary => n_shards.saturating_sub(1).saturating_sub(self.index),
        }
    }

    /// BCS bytes: ULEB128 length, the symbols, symbol size (u16 LE), index (u16 LE).
    pub fn to_bcs(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 10);
        write_bcs_header(&mut out, self.data.len());
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.symbol_size.to_le_bytes());
        out.extend_from_slice(&self.index.to_le_bytes());
        out
    }

    /// Parses BCS bytes from an untrusted source. Checks framing only; call
    /// [`Sliver::verify`] before using the data.
    pub fn from_bcs(bytes: &[u8], sliver_type: SliverType) -> Result<Self, EncodingError> {
        let (len, header) = read_uleb128(bytes)?;
        if len > MAX_SLIVER_BYTES {
            return Err(EncodingError::bcs(
                "sliver",
                format!("length {len} is too large"),
            ));
        }
        let expected = header + len + 4;
        if bytes.len() != expected {
            return Err(EncodingError::bcs(
                "sliver",
                format!(
                    "expected {expected} bytes for a sliver of {len} bytes, got {}",
                    bytes.len()
                ),
            ));
        }
        let data = bytes[header..header + len].to_vec();
        let symbol_size = u16::from_le_bytes([bytes[header + len], bytes[header + len + 1]]);
        let index = u16::from_le_bytes([bytes[header + len + 2], bytes[header + len + 3]]);
        if symbol_size == 0 || len % usize::from(symbol_size) != 0 {
            return Err(EncodingError::bcs(
                "sliver",
                format!("{len} bytes is not a whole number of {symbol_size}-byte symbols"),
            ));
        }
        Ok(Self {
            sliver_type,
            index,
            symbol_size,
            data,
        })
    }

    /// The Merkle root over the `n` symbols of this sliver's encoding in the orthogonal code.
    pub fn merkle_root(&self, config: &EncodingConfig) -> Result<Node, EncodingError> {
        let n = config.n_shards_usize();
        let k = self.data.len() / usize::from(self.symbol_size).max(1);
        let s = usize::from(self.symbol_size);
        let mut recovery = vec![0u8; (n - k) * s];
        Encoder::new(k, n - k).encode_many(
            s,
            1,
            |_, i| &self.data[i * s..(i + 1) * s],
            |_, r, range, b| recovery[r * s + range.start..r * s + range.end].copy_from_slice(b),
        )?;
        let mut leaves = vec![[0u8; DIGEST_LEN]; n];
        LeafHasher::default().hash_iter(
            self.data.chunks_exact(s).chain(recovery.chunks_exact(s)),
            s,
            &mut leaves,
            n,
            None,
        );
        Ok(root_from_leaf_hashes(&leaves))
    }

    /// Checks this sliver against (already verified) metadata: index, length, symbol size and
    /// Merkle root.
    pub fn verify(
        &self,
        config: &EncodingConfig,
        metadata: &BlobMetadata,
    ) -> Result<(), EncodingError> {
        let defect = |reason| EncodingError::InvalidSliver {
            sliver_type: self.sliver_type,
            index: self.index,
            reason,
        };
        // Metadata should have been verified already; a wrong hash count must still be an
        // error here, never an out-of-bounds index.
        if metadata.hashes().len() != config.n_shards_usize() {
            return Err(EncodingError::WrongShardCount {
                actual: metadata.hashes().len(),
                expected: config.n_shards_usize(),
            });
        }
        if usize::from(self.index) >= metadata.hashes().len() || self.index >= config.n_shards() {
            return Err(defect(SliverDefect::IndexTooLarge));
        }
        let blob_len = metadata.unencoded_length();
        let expected_len = config.sliver_len(self.sliver_type, blob_len)?;
        if self.data.len() != expected_len {
            return Err(defect(SliverDefect::WrongLength {
                actual: self.data.len(),
                expected: expected_len,
            }));
        }
        let expected_symbol = config.symbol_size(blob_len)?;
        if self.symbol_size != expected_symbol {
            return Err(defect(SliverDefect::WrongSymbolSize {
                actual: self.symbol_size,
                expected: expected_symbol,
            }));
        }
        let pair = usize::from(self.pair_index(config.n_shards()));
        if self.merkle_root(config)? != *metadata.hashes()[pair].hash(self.sliver_type) {
            return Err(defect(SliverDefect::HashMismatch));
        }
        Ok(())
    }
}

pub(crate) fn write_bcs_header(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Decodes a canonical BCS ULEB128 length (at most `u32::MAX`), returning it and its size.
pub(crate) fn read_uleb128(bytes: &[u8]) -> Result<(usize, usize), EncodingError> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(5) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(EncodingError::bcs("sliver", "non-canonical length prefix"));
            }
            if value > u64::from(u32::MAX) {
                return Err(EncodingError::bcs("sliver", "length prefix overflows u32"));
            }
            return Ok((value as usize, i + 1));
        }
    }
    Err(EncodingError::bcs(
        "sliver",
        "truncated or overlong length prefix",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcs_round_trip_and_framing_errors() {
        let s = Sliver {
            sliver_type: SliverType::Primary,
            index: 3,
            symbol_size: 4,
            data: (0..200u8).collect(),
        };
        let b = s.to_bcs();
        assert_eq!(b[0], 0xc8);
        assert_eq!(b[1], 0x01);
        assert_eq!(Sliver::from_bcs(&b, SliverType::Primary).unwrap(), s);
        assert!(Sliver::from_bcs(&b[..b.len() - 1], SliverType::Primary).is_err());
        assert!(Sliver::from_bcs(&[], SliverType::Primary).is_err());
        assert!(Sliver::from_bcs(&[0x80, 0x00, 0, 0, 0, 0], SliverType::Primary).is_err());
        let mut odd = b.clone();
        let n = odd.len();
        odd[n - 4] = 3; // symbol size 3 does not divide 200
        assert!(Sliver::from_bcs(&odd, SliverType::Primary).is_err());
    }

    #[test]
    fn verify_never_panics_on_unverified_metadata() {
        let config = EncodingConfig::new(4).unwrap();
        let h = super::super::SliverPairMetadata {
            primary_hash: Node::Empty,
            secondary_hash: Node::Empty,
        };
        let short = BlobMetadata::new(0, vec![h; 2]);
        let s = Sliver {
            sliver_type: SliverType::Secondary,
            index: 0,
            symbol_size: 2,
            data: vec![0; 4],
        };
        assert!(matches!(
            s.verify(&config, &short),
            Err(EncodingError::WrongShardCount {
                actual: 2,
                expected: 4
            })
        ));
        let far = Sliver { index: 9, ..s };
        assert_eq!(far.pair_index(4), 0);
    }

    #[test]
    fn bcs_matches_the_bcs_crate() {
        #[derive(serde::Serialize)]
        struct Symbols {
            data: Vec<u8>,
            symbol_size: u16,
        }
        #[derive(serde::Serialize)]
        struct SliverData {
            symbols: Symbols,
            index: u16,
        }
        let data: Vec<u8> = (0..300).map(|i| i as u8).collect();
        let ours = Sliver {
            sliver_type: SliverType::Secondary,
            index: 999,
            symbol_size: 6,
            data: data.clone(),
        }
        .to_bcs();
        let theirs = bcs::to_bytes(&SliverData {
            symbols: Symbols {
                data,
                symbol_size: 6,
            },
            index: 999,
        })
        .unwrap();
        assert_eq!(ours, theirs);
    }
}
