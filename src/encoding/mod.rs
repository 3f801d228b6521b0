//! Walrus RS2 ("RedStuff") encoding, byte-exact with MystenLabs walrus-core.
//!
//! A blob becomes `n` sliver pairs (one per shard) and metadata (two Merkle roots per pair)
//! whose root, with the encoding type and length, hashes to the blob ID. See `encoder.rs` for
//! the matrix layout, `codec.rs` for how Reed–Solomon calls are batched without changing a
//! byte, and `ARCHITECTURE.md` for where this sits in walrusfs.

mod blob_id;
mod codec;
mod config;
mod decoder;
mod encoder;
mod error;
pub mod files;
mod mapping;
pub mod merkle;
mod metadata;
mod sliver;

pub use blob_id::{BlobId, BlobIdParseError};
pub use codec::prepare_codec;
pub use config::{
    EncodingConfig, EncodingType, MAX_N_SHARDS, MAX_SYMBOL_SIZE, MIN_N_SHARDS, SliverType,
    max_n_faulty,
};
pub use decoder::SliverRange;
pub use encoder::EncodedBlob;
pub use error::{EncodingError, SliverDefect};
pub use mapping::{pair_to_shard, shard_to_pair};
pub use merkle::Node;
pub use metadata::{BlobMetadata, BlobMetadataV1, BlobMetadataWithId, SliverPairMetadata};
pub use sliver::{Sliver, SliverBcsReader, SliverView};
