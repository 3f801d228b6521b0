//! The embedded ledger's SQLite schema and its migrations.
//!
//! `schema_version` holds one row with the version of the schema in the file. Migration `i`
//! (0-based) takes the schema from version `i` to `i + 1`; each runs in its own transaction
//! together with the version bump, so a crash leaves the file at a whole version.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use tracing::info;

use super::LedgerError;

/// Version 1: the initial schema.
const V1: &str = "
CREATE TABLE system (
    id                     INTEGER PRIMARY KEY CHECK (id = 1),
    epoch                  INTEGER NOT NULL,
    epoch_start_ms         INTEGER NOT NULL,
    genesis_epoch          INTEGER NOT NULL,
    genesis_ms             INTEGER NOT NULL,
    epoch_duration_ms      INTEGER,            -- NULL: epochs change only by advance_epoch
    n_shards               INTEGER NOT NULL,
    max_epochs_ahead       INTEGER NOT NULL,
    storage_price          INTEGER NOT NULL,
    write_price            INTEGER NOT NULL,
    initial_balance        INTEGER,            -- NULL: unlimited
    balance                INTEGER,            -- NULL: unlimited
    spent                  INTEGER NOT NULL,
    id_nonce               BLOB NOT NULL,      -- 32 random bytes, makes object IDs unique per ledger
    next_object_seq        INTEGER NOT NULL
);

-- Committees by the first epoch they apply to; a committee applies until the next row.
CREATE TABLE committees (
    start_epoch            INTEGER PRIMARY KEY,
    committee              BLOB NOT NULL       -- BCS of protocol::Committee
);

CREATE TABLE storage (
    object_id              BLOB PRIMARY KEY,
    start_epoch            INTEGER NOT NULL,
    end_epoch              INTEGER NOT NULL,
    size                   INTEGER NOT NULL,
    blob_object_id         BLOB UNIQUE,        -- the blob object that owns it; NULL: free
    CHECK (start_epoch < end_epoch)
);

CREATE TABLE blobs (
    object_id              BLOB PRIMARY KEY,
    blob_id                BLOB NOT NULL,
    registered_epoch       INTEGER NOT NULL,
    certified_epoch        INTEGER,
    size                   INTEGER NOT NULL,
    encoding_type          INTEGER NOT NULL,
    deletable              INTEGER NOT NULL,
    storage_id             BLOB NOT NULL UNIQUE REFERENCES storage(object_id),
    status_event_seq       INTEGER NOT NULL    -- event of the last registration/certification/extension
);
CREATE INDEX blobs_by_blob_id ON blobs(blob_id);

CREATE TABLE events (
    seq                    INTEGER PRIMARY KEY AUTOINCREMENT,
    epoch                  INTEGER NOT NULL,
    event                  BLOB NOT NULL       -- BCS of ledger::LedgerEvent
);
";

/// All migrations, in order. Append only.
const MIGRATIONS: &[&str] = &[V1];

/// The schema version this build writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the schema of `conn` up to `CURRENT_VERSION`.
pub fn migrate(conn: &mut Connection) -> Result<(), LedgerError> {
    {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);")?;
        let has_row: Option<i64> = tx
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .optional()?;
        if has_row.is_none() {
            tx.execute("INSERT INTO schema_version (version) VALUES (0)", [])?;
        }
        tx.commit()?;
    }
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("SELECT version FROM schema_version", [], |r| r.get(0))?;
        if version > CURRENT_VERSION {
            return Err(LedgerError::SchemaTooNew {
                found: version,
                supported: CURRENT_VERSION,
            });
        }
        if version == CURRENT_VERSION {
            return Ok(());
        }
        let index = usize::try_from(version).map_err(|_| LedgerError::CorruptRow {
            what: "schema_version",
            reason: format!("negative version {version}"),
        })?;
        tx.execute_batch(MIGRATIONS[index])?;
        tx.execute("UPDATE schema_version SET version = ?1", [version + 1])?;
        tx.commit()?;
        info!(from = version, to = version + 1, "ledger schema migrated");
    }
}
