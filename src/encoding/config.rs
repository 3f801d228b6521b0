//! Encoding parameters for RS2 as a function of the number of shards `n`.

use super::error::EncodingError;

/// The smallest committee walrus-core encodes for with a fault-tolerant 2D code.
pub const MIN_N_SHARDS: u16 = 4;
/// Our upper bound on `n`. Computing a blob ID touches all `n²` symbols and keeps their
/// 32-byte hashes, so `n = 4096` already needs 512 MiB of hashes; Walrus mainnet uses 1000.
pub const MAX_N_SHARDS: u16 = 4096;
/// Reed–Solomon over GF(2^16) works on 2-byte elements, so symbols have an even size.
pub const SYMBOL_ALIGNMENT: u16 = 2;
/// The largest symbol: the largest even `u16`.
pub const MAX_SYMBOL_SIZE: u16 = u16::MAX - 1;

/// The encoding type recorded in metadata and hashed into the blob ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EncodingType {
    /// Reed–Solomon "RedStuff" (the only type Walrus accepts today).
    RS2 = 1,
}

// BCS encodes this enum by its variant index; walrus-core keeps the retired RaptorQ type at
// index 0, so RS2 is variant 1 on the wire.
impl serde::Serialize for EncodingType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit_variant("EncodingType", 1, "RS2")
    }
}

impl<'de> serde::Deserialize<'de> for EncodingType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        enum Wire {
            RedStuffRaptorQ,
            RS2,
        }
        match Wire::deserialize(d)? {
            Wire::RS2 => Ok(EncodingType::RS2),
            Wire::RedStuffRaptorQ => Err(serde::de::Error::custom(
                "encoding type RedStuffRaptorQ is retired and not supported",
            )),
        }
    }
}

/// Which of the two encodings of RedStuff a sliver belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SliverType {
    /// A row of the expanded matrix: `n - f` symbols.
    Primary,
    /// A column of the expanded matrix: `n - 2f` symbols.
    Secondary,
}

impl std::fmt::Display for SliverType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SliverType::Primary => "primary",
            SliverType::Secondary => "secondary",
        })
    }
}

/// The RS2 parameters for `n` shards.
///
/// The source matrix has `n_primary` (= n − 2f) rows and `n_secondary` (= n − f) columns of
/// symbols. Rows are extended to `n` columns (the secondary code) and columns to `n` rows (the
/// primary code). Primary sliver `i` is row `i` restricted to the source columns; the secondary
/// sliver of column `j` is column `j` restricted to the source rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EncodingConfig {
    n_shards: u16,
    n_primary: u16,
    n_secondary: u16,
}

impl EncodingConfig {
    /// Parameters for `n_shards` shards; `n_shards` must lie in `MIN_N_SHARDS..=MAX_N_SHARDS`.
    pub fn new(n_shards: u16) -> Result<Self, EncodingError> {
        if !(MIN_N_SHARDS..=MAX_N_SHARDS).contains(&n_shards) {
            return Err(EncodingError::ShardCountOutOfRange { n_shards });
        }
        let f = max_n_faulty(n_shards);
        Ok(Self {
            n_shards,
            n_primary: n_shards - 2 * f,
            n_secondary: n_shards - f,
        })
    }

    pub fn n_shards(&self) -> u16 {
        self.n_shards
    }

    pub fn n_shards_usize(&self) -> usize {
        usize::from(self.n_shards)
    }

    /// f: the number of shards that may be faulty, `floor((n - 1) / 3)`.
    pub fn max_faulty(&self) -> u16 {
        max_n_faulty(self.n_shards)
    }

    /// Source symbols of the primary code (rows of the source matrix): n − 2f.
    pub fn n_primary_source_symbols(&self) -> u16 {
        self.n_primary
    }

    /// Source symbols of the secondary code (columns of the source matrix): n − f.
    pub fn n_secondary_source_symbols(&self) -> u16 {
        self.n_secondary
    }

    pub(crate) fn rows(&self) -> usize {
        usize::from(self.n_primary)
    }

    pub(crate) fn cols(&self) -> usize {
        usize::from(self.n_secondary)
    }

    /// Source symbols per blob: (n − 2f)(n − f).
    pub fn source_symbols_per_blob(&self) -> u64 {
        u64::from(self.n_primary) * u64::from(self.n_secondary)
    }

    /// The largest blob these parameters can encode.
    pub fn max_blob_size(&self) -> u64 {
        self.source_symbols_per_blob() * u64::from(MAX_SYMBOL_SIZE)
    }

    /// Symbol size for a blob of `blob_len` bytes: `ceil(max(len, 1) / symbols)`, rounded up to
    /// an even number, as in walrus-core.
    pub fn symbol_size(&self, blob_len: u64) -> Result<u16, EncodingError> {
        let per_blob = self.source_symbols_per_blob();
        let size = blob_len
            .max(1)
            .div_ceil(per_blob)
            .next_multiple_of(u64::from(SYMBOL_ALIGNMENT));
        u16::try_from(size).map_err(|_| EncodingError::BlobTooLarge {
            len: blob_len,
            max: self.max_blob_size(),
            n_shards: self.n_shards,
        })
    }

    /// Length in bytes of a sliver of the given type for a blob of `blob_len` bytes.
    pub fn sliver_len(
        &self,
        sliver_type: SliverType,
        blob_len: u64,
    ) -> Result<usize, EncodingError> {
        let s = usize::from(self.symbol_size(blob_len)?);
        Ok(match sliver_type {
            SliverType::Primary => self.cols() * s,
            SliverType::Secondary => self.rows() * s,
        })
    }

    /// Bytes all storage nodes together hold for a blob: slivers plus one copy of the metadata
    /// per shard (the figure Walrus bills storage for).
    pub fn encoded_blob_length(&self, blob_len: u64) -> Result<u64, EncodingError> {
        let s = u64::from(self.symbol_size(blob_len)?);
        let n = u64::from(self.n_shards);
        let per_shard = (u64::from(self.n_primary) + u64::from(self.n_secondary)) * s;
        Ok(n * per_shard + n * self.metadata_length())
    }

    /// Length of the metadata Walrus accounts for: two hashes per shard plus the blob ID.
    pub fn metadata_length(&self) -> u64 {
        u64::from(self.n_shards) * 64 + 32
    }
}

/// f = floor((n − 1) / 3), the largest number of faulty shards a BFT committee of n tolerates.
pub fn max_n_faulty(n_shards: u16) -> u16 {
    (n_shards - 1) / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_symbols_match_walrus_core() {
        for (n, p, s) in [
            (4, 2, 3),
            (7, 3, 5),
            (9, 5, 7),
            (10, 4, 7),
            (31, 11, 21),
            (51, 19, 35),
            (100, 34, 67),
            (101, 35, 68),
            (301, 101, 201),
            (1000, 334, 667),
        ] {
            let c = EncodingConfig::new(n).unwrap();
            assert_eq!(
                (c.n_primary_source_symbols(), c.n_secondary_source_symbols()),
                (p, s),
                "n={n}"
            );
        }
    }

    #[test]
    fn max_blob_sizes_match_the_network() {
        assert_eq!(EncodingConfig::new(10).unwrap().max_blob_size(), 1_834_952);
        let m100 = EncodingConfig::new(100).unwrap().max_blob_size();
        assert!((148_000_000..150_000_000).contains(&m100), "{m100}");
        let m1000 = EncodingConfig::new(1000).unwrap().max_blob_size();
        assert_eq!(m1000, 222_778 * 65_534);
    }

    #[test]
    fn symbol_size_is_even_and_rounds_up() {
        let c = EncodingConfig::new(10).unwrap(); // 28 source symbols
        assert_eq!(c.symbol_size(0).unwrap(), 2);
        assert_eq!(c.symbol_size(56).unwrap(), 2);
        assert_eq!(c.symbol_size(57).unwrap(), 4);
        assert_eq!(c.symbol_size(c.max_blob_size()).unwrap(), MAX_SYMBOL_SIZE);
        assert!(matches!(
            c.symbol_size(c.max_blob_size() + 1),
            Err(EncodingError::BlobTooLarge { .. })
        ));
    }

    #[test]
    fn encoded_length_matches_walrus_core() {
        let c = EncodingConfig::new(10).unwrap();
        assert_eq!(
            c.encoded_blob_length(0).unwrap(),
            10 * (2 * (4 + 7) + 10 * 2 * 32 + 32)
        );
        assert_eq!(
            c.encoded_blob_length(2800).unwrap(),
            10 * ((4 + 7) * 100 + 10 * 2 * 32 + 32)
        );
    }

    #[test]
    fn rejects_small_and_huge_committees() {
        for n in [0, 1, 2, 3, MAX_N_SHARDS + 1] {
            assert!(matches!(
                EncodingConfig::new(n),
                Err(EncodingError::ShardCountOutOfRange { .. })
            ));
        }
    }
}
