//! Blob metadata: one hash per sliver (two per sliver pair), the encoding type and the length.
//! BCS layout and hashing follow walrus-core's `metadata.rs`.

use serde::{Deserialize, Serialize};

use super::merkle::{DIGEST_LEN, Node, leaf_hash, root_from_leaf_hashes};
use super::{BlobId, EncodingConfig, EncodingError, EncodingType, SliverType};

/// The Merkle roots of the two slivers of one sliver pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliverPairMetadata {
    pub primary_hash: Node,
    pub secondary_hash: Node,
}

impl SliverPairMetadata {
    pub fn hash(&self, sliver_type: SliverType) -> &Node {
        match sliver_type {
            SliverType::Primary => &self.primary_hash,
            SliverType::Secondary => &self.secondary_hash,
        }
    }

    fn leaf_input(&self) -> [u8; 2 * DIGEST_LEN] {
        let mut concat = [0u8; 2 * DIGEST_LEN];
        concat[..DIGEST_LEN].copy_from_slice(&self.primary_hash.bytes());
        concat[DIGEST_LEN..].copy_from_slice(&self.secondary_hash.bytes());
        concat
    }
}

/// Version 1 of the metadata, the only one Walrus defines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobMetadataV1 {
    pub encoding_type: EncodingType,
    pub unencoded_length: u64,
    pub hashes: Vec<SliverPairMetadata>,
}

/// Versioned metadata as it travels between clients and storage nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobMetadata {
    V1(BlobMetadataV1),
}

impl BlobMetadata {
    pub fn new(unencoded_length: u64, hashes: Vec<SliverPairMetadata>) -> Self {
        BlobMetadata::V1(BlobMetadataV1 {
            encoding_type: EncodingType::RS2,
            unencoded_length,
            hashes,
        })
    }

    fn v1(&self) -> &BlobMetadataV1 {
        match self {
            BlobMetadata::V1(m) => m,
        }
    }

    pub fn encoding_type(&self) -> EncodingType {
        self.v1().encoding_type
    }

    pub fn unencoded_length(&self) -> u64 {
        self.v1().unencoded_length
    }

    /// Sliver-pair hashes in sliver-pair order.
    pub fn hashes(&self) -> &[SliverPairMetadata] {
        &self.v1().hashes
    }

    /// The root of the Merkle tree over the sliver-pair hashes (what the ledger registers).
    pub fn root_hash(&self) -> Node {
        let leaves: Vec<[u8; DIGEST_LEN]> = self
            .hashes()
            .iter()
            .map(|h| leaf_hash(&h.leaf_input()))
            .collect();
        root_from_leaf_hashes(&leaves)
    }

    /// The blob ID this metadata hashes to.
    pub fn compute_blob_id(&self) -> BlobId {
        BlobId::from_root(
            &self.root_hash(),
            self.encoding_type(),
            self.unencoded_length(),
        )
    }
}

/// Metadata together with the blob ID it claims to belong to (the BCS body of the storage
/// nodes' metadata endpoints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobMetadataWithId {
    pub blob_id: BlobId,
    pub metadata: BlobMetadata,
}

impl BlobMetadataWithId {
    /// Metadata we computed ourselves: the blob ID is derived, so it is correct by construction.
    pub(crate) fn from_hashes(unencoded_length: u64, hashes: Vec<SliverPairMetadata>) -> Self {
        let metadata = BlobMetadata::new(unencoded_length, hashes);
        Self {
            blob_id: metadata.compute_blob_id(),
            metadata,
        }
    }

    /// Checks metadata received from someone else: right number of shards, a length the
    /// encoding can hold, and hashes that produce the claimed blob ID.
    pub fn verify(&self, config: &EncodingConfig) -> Result<(), EncodingError> {
        let hashes = self.metadata.hashes().len();
        if hashes != config.n_shards_usize() {
            return Err(EncodingError::WrongShardCount {
                actual: hashes,
                expected: config.n_shards_usize(),
            });
        }
        let len = self.metadata.unencoded_length();
        if len > config.max_blob_size() {
            return Err(EncodingError::BlobTooLarge {
                len,
                max: config.max_blob_size(),
                n_shards: config.n_shards(),
            });
        }
        let computed = self.metadata.compute_blob_id();
        if computed != self.blob_id {
            return Err(EncodingError::BlobIdMismatch {
                expected: self.blob_id.to_string(),
                computed: computed.to_string(),
            });
        }
        Ok(())
    }

    pub fn to_bcs(&self) -> Vec<u8> {
        // Serialising plain structs and vectors into memory cannot fail.
        bcs::to_bytes(self).unwrap_or_default()
    }

    /// Parses BCS bytes. The result is unverified: call [`Self::verify`] before trusting it.
    pub fn from_bcs(bytes: &[u8]) -> Result<Self, EncodingError> {
        bcs::from_bytes(bytes).map_err(|e| EncodingError::bcs("blob metadata", e))
    }
}
