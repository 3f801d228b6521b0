//! Errors of the encoding layer. Each says what was wrong with which input.

use super::SliverType;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodingError {
    #[error(
        "{n_shards} shards is out of range: RS2 needs at least 4 shards (mainnet and testnet use 1000) and walrusfs supports at most 4096"
    )]
    ShardCountOutOfRange { n_shards: u16 },

    #[error(
        "a blob of {len} bytes is too large for {n_shards} shards: the maximum is {max} bytes; use more shards or split the data"
    )]
    BlobTooLarge { len: u64, max: u64, n_shards: u16 },

    #[error("metadata lists {actual} sliver pairs but the encoding has {expected} shards")]
    WrongShardCount { actual: usize, expected: usize },

    #[error("the metadata does not hash to blob ID {expected}: it belongs to blob {computed}")]
    BlobIdMismatch { expected: String, computed: String },

    #[error("{sliver_type} sliver {index} does not match the blob's metadata: {reason}")]
    InvalidSliver {
        sliver_type: SliverType,
        index: u16,
        reason: SliverDefect,
    },

    #[error("not enough valid primary slivers to decode: have {have}, need {need} distinct ones")]
    NotEnoughSlivers { have: usize, need: usize },

    #[error("cannot decode BCS {what}: {reason}")]
    Bcs { what: &'static str, reason: String },

    #[error("byte range {start}..{end} lies outside the blob of {len} bytes")]
    RangeOutOfBounds { start: u64, end: u64, len: u64 },

    #[error("Reed–Solomon codec failed: {0}")]
    Codec(String),

    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: IoErrorEq,
    },
}

/// What is wrong with a sliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SliverDefect {
    #[error("its index is not below the number of shards")]
    IndexTooLarge,
    #[error("its length {actual} differs from the expected {expected} bytes")]
    WrongLength { actual: usize, expected: usize },
    #[error("its symbol size {actual} differs from the expected {expected}")]
    WrongSymbolSize { actual: u16, expected: u16 },
    #[error("its Merkle root differs from the hash in the metadata (corrupt or forged data)")]
    HashMismatch,
}

/// `std::io::Error` wrapped so that errors stay comparable in tests.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IoErrorEq(#[from] pub std::io::Error);

impl PartialEq for IoErrorEq {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind()
    }
}
impl Eq for IoErrorEq {}

impl EncodingError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        EncodingError::Io {
            path: path.display().to_string(),
            source: IoErrorEq(source),
        }
    }

    pub(crate) fn bcs(what: &'static str, e: impl std::fmt::Display) -> Self {
        EncodingError::Bcs {
            what,
            reason: e.to_string(),
        }
    }
}
