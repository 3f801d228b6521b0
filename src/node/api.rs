//! JSON types of the storage-node REST API (`walrus-spec/storage_openapi.yaml`), shaped the
//! way running Walrus nodes serialize them (walrus-storage-node-client `api.rs`,
//! `api/errors.rs`), so one client reads our nodes and the network's alike.
//!
//! Where the YAML and the running code differ, the running code wins: `BlobStatus` fields are
//! camelCase on the wire (`endEpoch`, `isCertified`, `statusEvent`, `deletableCounts`,
//! `initialCertifiedEpoch`; the counts inside stay snake_case), while the YAML, generated
//! without serde's `rename_all_fields`, shows snake_case.
//!
//! The BCS bodies are the encoding layer's types: PUT metadata carries `BlobMetadata` (GET
//! returns `BlobMetadataWithId`), slivers carry walrus-core's `SliverData`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ledger::{BlobStatus, DeletableCounts};
use crate::protocol::{Epoch, PublicKey};

/// walrus-core's error domain for storage-node errors.
pub const STORAGE_NODE_ERROR_DOMAIN: &str = "storage.walrus.space";

/// The `Status` error body: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorStatus {
    pub error: ErrorStatusBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorStatusBody {
    /// The HTTP status code.
    pub code: u16,
    /// The general class of the error, UPPER_SNAKE_CASE (`INVALID_ARGUMENT`, ...).
    pub status: String,
    pub message: String,
    pub details: Vec<ErrorDetail>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "@type")]
pub enum ErrorDetail {
    ErrorInfo(ErrorInfo),
}

/// Machine-readable details: `(reason, domain)` identify the error; `metadata` holds the
/// values named in the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub reason: String,
    pub domain: String,
    pub metadata: BTreeMap<String, Value>,
}

impl ErrorStatus {
    /// The `reason` of the first `ErrorInfo`.
    pub fn reason(&self) -> Option<&str> {
        self.error
            .details
            .iter()
            .map(|d| match d {
                ErrorDetail::ErrorInfo(i) => i.reason.as_str(),
            })
            .next()
    }
}

/// Sui's `EventID` as JSON: the transaction digest in Base58 and the event's sequence number
/// within it as a decimal string.
///
/// The embedded ledger has no transactions; its events have one global sequence number. We
/// report it as `eventSeq` and derive a digest that encodes it too (the sequence number in the
/// last 8 bytes, big-endian), so distinct events have distinct IDs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventId {
    pub tx_digest: String,
    pub event_seq: String,
}

impl EventId {
    pub fn from_ledger_seq(seq: u64) -> Self {
        let mut digest = [0u8; 32];
        digest[24..].copy_from_slice(&seq.to_be_bytes());
        Self {
            tx_digest: bs58::encode(digest).into_string(),
            event_seq: seq.to_string(),
        }
    }
}

/// A blob's status as `GET /v1/blobs/{blob_id}/status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ApiBlobStatus {
    Nonexistent,
    /// Never produced by our nodes yet (no inconsistency proofs); kept so the type can parse
    /// what Walrus nodes send.
    Invalid {
        event: EventId,
    },
    Permanent {
        end_epoch: Epoch,
        is_certified: bool,
        status_event: EventId,
        deletable_counts: DeletableCounts,
        initial_certified_epoch: Option<Epoch>,
    },
    Deletable {
        initial_certified_epoch: Option<Epoch>,
        deletable_counts: DeletableCounts,
    },
}

impl From<BlobStatus> for ApiBlobStatus {
    fn from(s: BlobStatus) -> Self {
        match s {
            BlobStatus::Nonexistent => Self::Nonexistent,
            BlobStatus::Permanent {
                end_epoch,
                is_certified,
                status_event,
                deletable_counts,
                initial_certified_epoch,
            } => Self::Permanent {
                end_epoch,
                is_certified,
                status_event: EventId::from_ledger_seq(status_event),
                deletable_counts,
                initial_certified_epoch,
            },
            BlobStatus::Deletable {
                initial_certified_epoch,
                deletable_counts,
            } => Self::Deletable {
                initial_certified_epoch,
                deletable_counts,
            },
        }
    }
}

/// `GET /v1/health`: `ServiceHealthInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceHealthInfo {
    /// Serialized as serde serializes `Duration`: `{"secs": u64, "nanos": u32}`.
    pub uptime: Duration,
    pub epoch: Epoch,
    /// Base64, as fastcrypto writes BLS keys in JSON.
    pub public_key: PublicKey,
    /// `Active`; `NotInCommittee` when the current committee does not list this node;
    /// `LedgerUnavailable` when the ledger could not be read (epoch then reads 0).
    pub node_status: String,
    pub event_progress: EventProgress,
    pub shard_summary: ShardStatusSummary,
    /// Always included by our nodes (Walrus nodes only with `?detailed=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_detail: Option<ShardStatusDetail>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_checkpoint_sequence_number: Option<u64>,
}

impl ServiceHealthInfo {
    /// The shards this node reports as its own.
    pub fn owned_shards(&self) -> Vec<u16> {
        self.shard_detail
            .as_ref()
            .map(|d| d.owned.iter().map(|s| s.shard).collect())
            .unwrap_or_default()
    }
}

/// Our nodes do not follow ledger events (they ask the ledger directly), so this reads zeros.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventProgress {
    pub persisted: u64,
    pub pending: u64,
    pub highest_finished_event_index: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedShardStatus {
    pub unknown: usize,
    pub ready: usize,
    pub in_transfer: usize,
    pub in_recovery: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatusSummary {
    pub owned: usize,
    pub owned_shard_status: OwnedShardStatus,
    pub read_only: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatusDetail {
    pub owned: Vec<ShardHealthInfo>,
    pub other: Vec<ShardHealthInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardHealthInfo {
    pub shard: u16,
    pub status: ShardStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ShardStatus {
    Unknown,
    Ready,
    InTransfer,
    InRecovery,
    ReadOnly,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_status_json_matches_running_walrus_nodes() {
        let s: ApiBlobStatus = BlobStatus::Permanent {
            end_epoch: 7,
            is_certified: true,
            status_event: 3,
            deletable_counts: DeletableCounts {
                count_deletable_total: 2,
                count_deletable_certified: 1,
            },
            initial_certified_epoch: Some(5),
        }
        .into();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"permanent": {
                "endEpoch": 7,
                "isCertified": true,
                "statusEvent": {"txDigest": bs58::encode({let mut d = [0u8; 32]; d[31] = 3; d}).into_string(), "eventSeq": "3"},
                "deletableCounts": {"count_deletable_total": 2, "count_deletable_certified": 1},
                "initialCertifiedEpoch": 5,
            }})
        );
        assert_eq!(
            serde_json::to_value(ApiBlobStatus::Nonexistent).unwrap(),
            serde_json::json!("nonexistent")
        );
        let back: ApiBlobStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }
}
