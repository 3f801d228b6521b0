//! A Walrus storage node: the storage-node REST API of `walrus-spec/storage_openapi.yaml`
//! over a data directory, following a ledger for registrations, epochs and its shards.
//!
//! - `config`: the TOML configuration (listen address, data dir, key file, ledger, limits,
//!   test-only faults) and the key file;
//! - `service`: what the node does, independent of HTTP ([`StorageNode`]);
//! - `server`: the axum routes, request decoding, spans, fault injection and [`RunningNode`];
//! - `store`: durable files for metadata and slivers ([`SliverStore`]);
//! - `received`: a sliver PUT body in a page-aligned buffer, verified in place and written
//!   from there ([`ReceivedSliver`]);
//! - `api`: the JSON shapes (`Status` errors, blob status, health);
//! - `error`: [`NodeError`] and the one mapping from errors to HTTP status and `Status` JSON.
//!
//! Invariants:
//! - a sliver or metadata file exists on disk only if it was verified (metadata against its
//!   blob ID, slivers against the stored metadata) and its content is durable (fsynced, then
//!   renamed into place);
//! - a storage confirmation is signed only for a blob with a live registration of the
//!   requested persistence type, when the metadata and both slivers of every pair of the
//!   node's shards in the current epoch are on disk and their names durable (the blob's
//!   directory fsynced after the last of them was renamed into place, once per confirmation);
//! - request bytes are never trusted: every body is length-limited, parsed without panicking,
//!   and verified before it is stored.

mod api;
mod config;
mod error;
mod received;
mod server;
mod service;
mod store;
#[cfg(test)]
mod tests;

pub use api::{
    ApiBlobStatus, ErrorDetail, ErrorInfo, ErrorStatus, ErrorStatusBody, EventId, EventProgress,
    OwnedShardStatus, STORAGE_NODE_ERROR_DOMAIN, ServiceHealthInfo, ShardHealthInfo, ShardStatus,
    ShardStatusDetail, ShardStatusSummary,
};
pub use config::{
    DEFAULT_MAX_CONFIRMATION_WAIT_MS, EffectiveLimits, Faults, LedgerConfig, Limits,
    METADATA_BODY_SLACK, NodeConfig, SLIVER_BODY_SLACK, max_metadata_body, max_sliver_body,
    read_key_file, write_key_file,
};
pub use error::{ApiStatusCode, ConfigError, NodeError, StoreError};
pub use received::ReceivedSliver;
pub(crate) use server::keep_freed_memory;
pub use server::{
    BLOB_STATUS_ENDPOINT, DELETABLE_CONFIRMATION_ENDPOINT, HEALTH_ENDPOINT, METADATA_ENDPOINT,
    PERMANENT_CONFIRMATION_ENDPOINT, RunningNode, SLIVER_ENDPOINT, router, run,
};
pub use service::{NodeIdentity, StorageNode};
pub use store::SliverStore;
