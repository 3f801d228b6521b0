//! `EmbeddedLedger`: the Walrus system contract's semantics over a local SQLite database.
//!
//! Durability: WAL journal, `synchronous=FULL` (a committed change survives power loss), and
//! every change — including the epoch catching up with the clock — is one `IMMEDIATE`
//! transaction, so a crash at any point leaves either all of an operation or none of it. Reads
//! run in a `DEFERRED` transaction (one consistent snapshot, no write lock) unless the epoch
//! must advance first, in which case they run as a change.
//!
//! Rules follow the Move code; where it matters, the order of checks does too (the first
//! failing check decides the error), and each error names the contract's abort code.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use tracing::{debug, info, warn};

use crate::encoding::merkle::blake2b256;
use crate::encoding::{BlobId, EncodingConfig, EncodingType, Node};
use crate::protocol::{
    BlobPersistenceType, Committee, ConfirmationCertificate, ConfirmationMessage, Epoch,
    MessageHeader, ObjectId, ProtocolError, RequiredWeight, TrailingBytes,
};

use super::clock::{Clock, SystemClock};
use super::schema;
use super::{
    Account, BYTES_PER_UNIT_SIZE, BlobObject, BlobStatus, DeletableCounts, EpochInfo, Ledger,
    LedgerError, LedgerEvent, LedgerParams, MAX_MAX_EPOCHS_AHEAD, StorageResource,
};

/// How long a call waits for another process holding the database's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Domain separator for object-ID derivation.
const OBJECT_ID_DOMAIN: &[u8] = b"walrusfs-embedded-ledger-object-id";

/// The initial state of a new ledger.
#[derive(Debug, Clone)]
pub struct Genesis {
    /// The first committee; its epoch is the ledger's first epoch.
    pub committee: Committee,
    pub params: LedgerParams,
    /// The account's starting balance; `None` = unlimited.
    pub initial_balance: Option<u64>,
    /// When the first epoch starts (ms since the Unix epoch); `None` = when the ledger is created.
    pub genesis_unix_ms: Option<u64>,
}

impl Genesis {
    pub fn new(committee: Committee, params: LedgerParams) -> Self {
        Self {
            committee,
            params,
            initial_balance: None,
            genesis_unix_ms: None,
        }
    }
}

/// How `EmbeddedLedger::open_with` treats the database file.
#[derive(Debug, Clone, Copy)]
pub enum OpenMode<'a> {
    /// Create a new ledger; fail if the file already holds one.
    Create(&'a Genesis),
    /// Open an existing ledger; fail if there is none.
    Open,
    /// Open the ledger, creating it from the genesis if the file holds none (an existing
    /// ledger keeps its own state; the genesis is then ignored).
    OpenOrCreate(&'a Genesis),
}

/// A ledger in a local SQLite file. `Send + Sync`; calls are serialised by an internal mutex.
#[derive(Debug)]
pub struct EmbeddedLedger {
    conn: Mutex<Connection>,
    clock: Arc<dyn Clock>,
    path: PathBuf,
}

/// The `system` row.
#[derive(Debug, Clone)]
struct System {
    epoch: Epoch,
    epoch_start_ms: u64,
    genesis_epoch: Epoch,
    epoch_duration_ms: Option<u64>,
    n_shards: u16,
    max_epochs_ahead: u32,
    storage_price: u64,
    write_price: u64,
    balance: Option<u64>,
    spent: u64,
}

impl EmbeddedLedger {
    /// Creates a new ledger at `path` with the system clock.
    pub fn create(path: impl AsRef<Path>, genesis: &Genesis) -> Result<Self, LedgerError> {
        Self::open_with(path, OpenMode::Create(genesis), Arc::new(SystemClock))
    }

    /// Opens the existing ledger at `path` with the system clock.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        Self::open_with(path, OpenMode::Open, Arc::new(SystemClock))
    }

    /// Opens the ledger at `path`, creating it from `genesis` if needed, with the system clock.
    pub fn open_or_create(path: impl AsRef<Path>, genesis: &Genesis) -> Result<Self, LedgerError> {
        Self::open_with(path, OpenMode::OpenOrCreate(genesis), Arc::new(SystemClock))
    }

    pub fn open_with(
        path: impl AsRef<Path>,
        mode: OpenMode<'_>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LedgerError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| LedgerError::Open {
            path: path.display().to_string(),
            source: Box::new(source),
        };
        // Opening an existing ledger must not leave an empty database behind when the path is
        // wrong (SQLite would create the file).
        if matches!(mode, OpenMode::Open) && !path.exists() {
            return Err(LedgerError::NotInitialized {
                path: path.display().to_string(),
            });
        }
        let mut conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // WAL: readers never block the writer and a crash mid-write leaves the main file intact.
        let journal: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(open_err)?;
        if !journal.eq_ignore_ascii_case("wal") {
            warn!(path = %path.display(), journal, "SQLite refused WAL mode; using its journal");
        }
        // FULL: fsync the WAL on every commit, so a committed change survives power loss
        // (NORMAL would only protect against process crashes).
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        schema::migrate(&mut conn)?;

        let initialised: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM system WHERE id = 1)",
            [],
            |r| r.get(0),
        )?;
        let path_str = || path.display().to_string();
        match (mode, initialised) {
            (OpenMode::Create(_), true) => {
                return Err(LedgerError::AlreadyInitialized { path: path_str() });
            }
            (OpenMode::Open, false) => {
                return Err(LedgerError::NotInitialized { path: path_str() });
            }
            (OpenMode::Create(g) | OpenMode::OpenOrCreate(g), false) => {
                if write_genesis(&mut conn, g, clock.now_unix_ms())? {
                    info!(path = %path.display(), epoch = g.committee.epoch(), n_shards = g.committee.n_shards(), "ledger created");
                } else if matches!(mode, OpenMode::Create(_)) {
                    return Err(LedgerError::AlreadyInitialized { path: path_str() });
                }
            }
            (OpenMode::Open | OpenMode::OpenOrCreate(_), true) => {
                debug!(path = %path.display(), "ledger opened");
            }
        }
        Ok(Self {
            conn: Mutex::new(conn),
            clock,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the database file and the ledger's invariants: SQLite's integrity check, foreign
    /// keys, blob ↔ storage ownership, balance accounting, and that every blob's status event
    /// exists. Meant for tests and for a `doctor`-style command after a crash.
    pub fn verify_integrity(&self) -> Result<(), LedgerError> {
        let conn = self.lock();
        let bad = |reason: String| LedgerError::CorruptRow {
            what: "integrity",
            reason,
        };
        let result: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if result != "ok" {
            return Err(bad(format!("SQLite integrity check: {result}")));
        }
        let fk_violations: i64 =
            conn.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })?;
        if fk_violations != 0 {
            return Err(bad(format!("{fk_violations} foreign-key violations")));
        }
        let mismatched: i64 = conn.query_row(
            "SELECT COUNT(*) FROM blobs b JOIN storage s ON s.object_id = b.storage_id
             WHERE s.blob_object_id IS NOT b.object_id",
            [],
            |r| r.get(0),
        )?;
        let orphaned: i64 = conn.query_row(
            "SELECT COUNT(*) FROM storage s WHERE s.blob_object_id IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.object_id = s.blob_object_id
                             AND b.storage_id = s.object_id)",
            [],
            |r| r.get(0),
        )?;
        if mismatched != 0 || orphaned != 0 {
            return Err(bad(format!(
                "{mismatched} blobs whose storage names another owner, {orphaned} storage rows owned by a missing blob"
            )));
        }
        let missing_events: i64 = conn.query_row(
            "SELECT COUNT(*) FROM blobs b WHERE NOT EXISTS
             (SELECT 1 FROM events e WHERE e.seq = b.status_event_seq)",
            [],
            |r| r.get(0),
        )?;
        if missing_events != 0 {
            return Err(bad(format!(
                "{missing_events} blobs whose status event is missing"
            )));
        }
        let (initial, balance, spent): (Option<u64>, Option<u64>, u64) = conn.query_row(
            "SELECT initial_balance, balance, spent FROM system WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        if let (Some(initial), Some(balance)) = (initial, balance)
            && balance.checked_add(spent) != Some(initial)
        {
            return Err(bad(format!(
                "balance {balance} + spent {spent} != initial balance {initial}"
            )));
        }
        if initial.is_some() != balance.is_some() {
            return Err(bad(
                "balance and initial balance disagree on being limited".into()
            ));
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock happened inside a transaction that was rolled back
        // when it unwound, so the connection holds no half-done state: keep using it.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` in one immediate transaction, after bringing the epoch up to date. Nothing of
    /// it (not even the epoch catch-up) persists unless `f` succeeds.
    fn transact<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>, &mut System) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut system = sync_epoch(&tx, self.clock.now_unix_ms())?;
        let out = f(&tx, &mut system)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs a read-only query. In the common case (no epoch change due) it runs in a deferred
    /// transaction: a consistent WAL snapshot that takes no write lock, so the many processes
    /// sharing a devnet ledger do not queue behind each other for reads. When an epoch change
    /// is due, it runs through [`Self::transact`], which records the change first.
    fn read<T>(
        &self,
        f: impl Fn(&Transaction<'_>, &mut System) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        {
            let mut conn = self.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let mut system = load_system(&tx)?;
            if !epoch_change_due(&system, self.clock.now_unix_ms()) {
                let out = f(&tx, &mut system)?;
                // Read-only: ending it either way releases the snapshot.
                tx.commit()?;
                return Ok(out);
            }
        }
        self.transact(f)
    }
}

// -------------------------------------------------------------------------------------------------
// Genesis and the system row
// -------------------------------------------------------------------------------------------------

/// Writes the genesis state. Returns `false`, writing nothing, if another process initialised
/// the database between our check and taking the write lock.
fn write_genesis(conn: &mut Connection, g: &Genesis, now_ms: u64) -> Result<bool, LedgerError> {
    let invalid = |reason: String| LedgerError::InvalidGenesis { reason };
    let p = &g.params;
    if !(1..=MAX_MAX_EPOCHS_AHEAD).contains(&p.max_epochs_ahead) {
        return Err(invalid(format!(
            "max_epochs_ahead {} is outside 1..={MAX_MAX_EPOCHS_AHEAD}",
            p.max_epochs_ahead
        )));
    }
    let epoch_duration_ms = match p.epoch_duration {
        None => None,
        Some(d) => {
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            if ms == 0 || i64::try_from(ms).is_err() {
                return Err(invalid(format!("epoch duration {d:?} must be 1 ms..")));
            }
            Some(ms)
        }
    };
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce)
        .map_err(|e| invalid(format!("no randomness for object IDs: {e}")))?;
    let genesis_ms = g.genesis_unix_ms.unwrap_or(now_ms);
    let committee_bytes = bcs::to_bytes(&g.committee)
        .map_err(|e| invalid(format!("cannot encode the committee: {e}")))?;

    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Re-check inside the write lock: another process may have created it meanwhile.
    let exists: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM system WHERE id = 1)",
        [],
        |r| r.get(0),
    )?;
    if exists {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO system (id, epoch, epoch_start_ms, genesis_epoch, genesis_ms,
            epoch_duration_ms, n_shards, max_epochs_ahead, storage_price, write_price,
            initial_balance, balance, spent, id_nonce, next_object_seq)
         VALUES (1, ?1, ?2, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, 0, ?9, 0)",
        params![
            g.committee.epoch(),
            genesis_ms,
            epoch_duration_ms,
            g.committee.n_shards(),
            p.max_epochs_ahead,
            p.storage_price_per_unit_size,
            p.write_price_per_unit_size,
            g.initial_balance,
            nonce,
        ],
    )?;
    tx.execute(
        "INSERT INTO committees (start_epoch, committee) VALUES (?1, ?2)",
        params![g.committee.epoch(), committee_bytes],
    )?;
    tx.commit()?;
    Ok(true)
}

fn load_system(tx: &Transaction<'_>) -> Result<System, LedgerError> {
    // Every call starts with this query: keep it prepared.
    let mut stmt = tx.prepare_cached(
        "SELECT epoch, epoch_start_ms, genesis_epoch, epoch_duration_ms, n_shards,
                max_epochs_ahead, storage_price, write_price, balance, spent
         FROM system WHERE id = 1",
    )?;
    Ok(stmt.query_row([], |r| {
        Ok(System {
            epoch: r.get(0)?,
            epoch_start_ms: r.get(1)?,
            genesis_epoch: r.get(2)?,
            epoch_duration_ms: r.get(3)?,
            n_shards: r.get(4)?,
            max_epochs_ahead: r.get(5)?,
            storage_price: r.get(6)?,
            write_price: r.get(7)?,
            balance: r.get(8)?,
            spent: r.get(9)?,
        })
    })?)
}

/// Whether the clock has reached the end of the recorded epoch (so a read must advance it).
fn epoch_change_due(system: &System, now_ms: u64) -> bool {
    system
        .epoch_duration_ms
        .filter(|&d| d > 0)
        .is_some_and(|d| now_ms.saturating_sub(system.epoch_start_ms) >= d)
}

/// Moves the epoch forward to where the clock says it is, as one jump.
fn sync_epoch(tx: &Transaction<'_>, now_ms: u64) -> Result<System, LedgerError> {
    let mut system = load_system(tx)?;
    let Some(duration) = system.epoch_duration_ms.filter(|&d| d > 0) else {
        return Ok(system);
    };
    // A clock that went backwards just means no epoch change yet.
    let elapsed = now_ms.saturating_sub(system.epoch_start_ms);
    let epochs = elapsed / duration;
    if epochs == 0 {
        return Ok(system);
    }
    let new_epoch = u32::try_from(epochs)
        .ok()
        .and_then(|e| system.epoch.checked_add(e))
        .ok_or(LedgerError::Overflow { what: "epoch" })?;
    let new_start = epochs
        .checked_mul(duration)
        .and_then(|d| system.epoch_start_ms.checked_add(d))
        .ok_or(LedgerError::Overflow {
            what: "epoch start",
        })?;
    set_epoch(tx, &mut system, new_epoch, new_start)?;
    Ok(system)
}

fn set_epoch(
    tx: &Transaction<'_>,
    system: &mut System,
    epoch: Epoch,
    start_ms: u64,
) -> Result<(), LedgerError> {
    tx.execute(
        "UPDATE system SET epoch = ?1, epoch_start_ms = ?2 WHERE id = 1",
        params![epoch, start_ms],
    )?;
    let from = system.epoch;
    system.epoch = epoch;
    system.epoch_start_ms = start_ms;
    emit(tx, epoch, &LedgerEvent::EpochChangeStart { epoch })?;
    info!(from, to = epoch, "epoch change");
    Ok(())
}

fn committee_at(tx: &Transaction<'_>, epoch: Epoch) -> Result<Option<Committee>, LedgerError> {
    let bytes: Option<Vec<u8>> = tx
        .query_row(
            "SELECT committee FROM committees WHERE start_epoch <= ?1
             ORDER BY start_epoch DESC LIMIT 1",
            [epoch],
            |r| r.get(0),
        )
        .optional()?;
    bytes
        .map(|b| {
            bcs::from_bytes::<Committee>(&b)
                .map(|c| c.with_epoch(epoch))
                .map_err(|e| LedgerError::CorruptRow {
                    what: "committee",
                    reason: e.to_string(),
                })
        })
        .transpose()
}

fn current_committee(tx: &Transaction<'_>, system: &System) -> Result<Committee, LedgerError> {
    committee_at(tx, system.epoch)?.ok_or_else(|| LedgerError::CorruptRow {
        what: "committee",
        reason: format!("no committee for the current epoch {}", system.epoch),
    })
}

fn emit(tx: &Transaction<'_>, epoch: Epoch, event: &LedgerEvent) -> Result<u64, LedgerError> {
    let bytes = bcs::to_bytes(event).map_err(|e| LedgerError::CorruptRow {
        what: "event",
        reason: format!("cannot encode: {e}"),
    })?;
    tx.execute(
        "INSERT INTO events (epoch, event) VALUES (?1, ?2)",
        params![epoch, bytes],
    )?;
    u64::try_from(tx.last_insert_rowid()).map_err(|_| LedgerError::CorruptRow {
        what: "event",
        reason: "negative sequence number".into(),
    })
}

/// A fresh object ID: Blake2b-256 over a per-ledger random nonce and a counter, so IDs never
/// repeat within a ledger and are unlikely to collide across ledgers (like Sui's derivation
/// from transaction digest and counter).
fn new_object_id(tx: &Transaction<'_>) -> Result<ObjectId, LedgerError> {
    let (nonce, seq): ([u8; 32], u64) = tx.query_row(
        "SELECT id_nonce, next_object_seq FROM system WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let next = seq.checked_add(1).ok_or(LedgerError::Overflow {
        what: "object counter",
    })?;
    tx.execute(
        "UPDATE system SET next_object_seq = ?1 WHERE id = 1",
        [next],
    )?;
    let mut input = Vec::with_capacity(OBJECT_ID_DOMAIN.len() + 40);
    input.extend_from_slice(OBJECT_ID_DOMAIN);
    input.extend_from_slice(&nonce);
    input.extend_from_slice(&seq.to_le_bytes());
    Ok(ObjectId(blake2b256(&input)))
}

/// Charges `amount` to the account.
fn pay(tx: &Transaction<'_>, system: &mut System, amount: u64) -> Result<(), LedgerError> {
    if amount == 0 {
        return Ok(());
    }
    let balance = match system.balance {
        None => None,
        Some(available) => Some(available.checked_sub(amount).ok_or(
            LedgerError::InsufficientBalance {
                needed: amount,
                available,
            },
        )?),
    };
    let spent = system
        .spent
        .checked_add(amount)
        .ok_or(LedgerError::Overflow { what: "spent" })?;
    tx.execute(
        "UPDATE system SET balance = ?1, spent = ?2 WHERE id = 1",
        params![balance, spent],
    )?;
    system.balance = balance;
    system.spent = spent;
    Ok(())
}

/// `price × ceil(size / 1 MiB) × epochs`, as `process_storage_payments` charges.
fn price(per_unit: u64, size: u64, epochs: u64) -> Result<u64, LedgerError> {
    per_unit
        .checked_mul(size.div_ceil(BYTES_PER_UNIT_SIZE))
        .and_then(|p| p.checked_mul(epochs))
        .ok_or(LedgerError::Overflow { what: "price" })
}

// -------------------------------------------------------------------------------------------------
// Rows
// -------------------------------------------------------------------------------------------------

const BLOB_COLUMNS: &str = "b.object_id, b.blob_id, b.registered_epoch, b.certified_epoch, b.size,
    b.encoding_type, b.deletable, s.object_id, s.start_epoch, s.end_epoch, s.size,
    b.status_event_seq";

/// A blob row with its storage and status event.
struct BlobRow {
    blob: BlobObject,
    status_event_seq: u64,
}

fn encoding_type_from_db(value: u8) -> Option<EncodingType> {
    (value == EncodingType::RS2 as u8).then_some(EncodingType::RS2)
}

fn blob_from_row(r: &Row<'_>) -> rusqlite::Result<BlobRow> {
    let encoding: u8 = r.get(5)?;
    let encoding_type = encoding_type_from_db(encoding).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            5,
            rusqlite::types::Type::Integer,
            format!("unknown encoding type {encoding}").into(),
        )
    })?;
    Ok(BlobRow {
        blob: BlobObject {
            object_id: ObjectId(r.get(0)?),
            blob_id: BlobId(r.get(1)?),
            registered_epoch: r.get(2)?,
            certified_epoch: r.get(3)?,
            size: r.get(4)?,
            encoding_type,
            deletable: r.get(6)?,
            storage: StorageResource {
                id: ObjectId(r.get(7)?),
                start_epoch: r.get(8)?,
                end_epoch: r.get(9)?,
                size: r.get(10)?,
            },
        },
        status_event_seq: r.get(11)?,
    })
}

fn load_blob(tx: &Transaction<'_>, object_id: ObjectId) -> Result<Option<BlobRow>, LedgerError> {
    Ok(tx
        .query_row(
            &format!(
                "SELECT {BLOB_COLUMNS} FROM blobs b JOIN storage s ON s.object_id = b.storage_id
                 WHERE b.object_id = ?1"
            ),
            [object_id.0],
            blob_from_row,
        )
        .optional()?)
}

fn load_blobs_by_blob_id(
    tx: &Transaction<'_>,
    blob_id: BlobId,
) -> Result<Vec<BlobRow>, LedgerError> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {BLOB_COLUMNS} FROM blobs b JOIN storage s ON s.object_id = b.storage_id
         WHERE b.blob_id = ?1 ORDER BY b.rowid"
    ))?;
    let rows = stmt.query_map([blob_id.0], blob_from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn load_storage(
    tx: &Transaction<'_>,
    id: ObjectId,
) -> Result<Option<(StorageResource, Option<ObjectId>)>, LedgerError> {
    Ok(tx
        .query_row(
            "SELECT start_epoch, end_epoch, size, blob_object_id FROM storage WHERE object_id = ?1",
            [id.0],
            |r| {
                let owner: Option<[u8; 32]> = r.get(3)?;
                Ok((
                    StorageResource {
                        id,
                        start_epoch: r.get(0)?,
                        end_epoch: r.get(1)?,
                        size: r.get(2)?,
                    },
                    owner.map(ObjectId),
                ))
            },
        )
        .optional()?)
}

fn require_blob(tx: &Transaction<'_>, object_id: ObjectId) -> Result<BlobRow, LedgerError> {
    load_blob(tx, object_id)?.ok_or(LedgerError::BlobNotFound(object_id))
}

/// `blob::assert_certified_not_expired`.
fn assert_certified_not_expired(
    blob: &BlobObject,
    current_epoch: Epoch,
) -> Result<Epoch, LedgerError> {
    let certified_epoch = blob
        .certified_epoch
        .ok_or(LedgerError::NotCertified(blob.object_id))?;
    if blob.is_expired(current_epoch) {
        return Err(LedgerError::Expired {
            object_id: blob.object_id,
            end_epoch: blob.end_epoch(),
            current_epoch,
        });
    }
    Ok(certified_epoch)
}

/// Computes the status of a blob ID as of `current_epoch`, like a storage node's `BlobInfo`
/// (`to_blob_status` in walrus-service), from the live objects.
fn status_of(rows: &[BlobRow], current_epoch: Epoch) -> BlobStatus {
    let live = || rows.iter().filter(|r| !r.blob.is_expired(current_epoch));
    let mut counts = DeletableCounts::default();
    for r in live().filter(|r| r.blob.deletable) {
        counts.count_deletable_total += 1;
        if r.blob.is_certified() {
            counts.count_deletable_certified += 1;
        }
    }
    let initial_certified_epoch = live().filter_map(|r| r.blob.certified_epoch).min();
    // The permanent object with the latest end epoch, preferring certified ones; among equal
    // end epochs the most recent status event.
    let best_permanent = |certified: bool| {
        live()
            .filter(|r| !r.blob.deletable && (!certified || r.blob.is_certified()))
            .max_by_key(|r| (r.blob.end_epoch(), r.status_event_seq))
    };
    let permanent = best_permanent(true)
        .map(|r| (r, true))
        .or_else(|| best_permanent(false).map(|r| (r, false)));
    match permanent {
        Some((r, is_certified)) => BlobStatus::Permanent {
            end_epoch: r.blob.end_epoch(),
            is_certified,
            status_event: r.status_event_seq,
            deletable_counts: counts,
            initial_certified_epoch,
        },
        None if counts.count_deletable_total > 0 => BlobStatus::Deletable {
            initial_certified_epoch,
            deletable_counts: counts,
        },
        None => BlobStatus::Nonexistent,
    }
}

// -------------------------------------------------------------------------------------------------
// The trait
// -------------------------------------------------------------------------------------------------

impl Ledger for EmbeddedLedger {
    fn epoch_info(&self) -> Result<EpochInfo, LedgerError> {
        self.read(|_, s| {
            Ok(EpochInfo {
                epoch: s.epoch,
                epoch_start_unix_ms: s.epoch_start_ms,
                epoch_duration: s.epoch_duration_ms.map(Duration::from_millis),
                n_shards: s.n_shards,
            })
        })
    }

    fn committee(&self) -> Result<Committee, LedgerError> {
        self.read(|tx, s| current_committee(tx, s))
    }

    fn committee_for_epoch(&self, epoch: Epoch) -> Result<Option<Committee>, LedgerError> {
        self.read(|tx, s| {
            if epoch < s.genesis_epoch {
                return Ok(None);
            }
            committee_at(tx, epoch)
        })
    }

    fn set_next_committee(&self, committee: Committee) -> Result<(), LedgerError> {
        self.transact(|tx, s| {
            if committee.epoch() <= s.epoch {
                return Err(LedgerError::InvalidCommittee {
                    reason: format!(
                        "a committee for epoch {} cannot be scheduled in epoch {}: it must be for a later epoch",
                        committee.epoch(),
                        s.epoch
                    ),
                });
            }
            // Walrus keeps the number of shards for the system's lifetime; blob IDs, encoded
            // sizes and sliver placement all depend on it.
            if committee.n_shards() != s.n_shards {
                return Err(LedgerError::InvalidCommittee {
                    reason: format!(
                        "the committee has {} shards, the system {}",
                        committee.n_shards(),
                        s.n_shards
                    ),
                });
            }
            let bytes = bcs::to_bytes(&committee).map_err(|e| LedgerError::InvalidCommittee {
                reason: format!("cannot encode: {e}"),
            })?;
            tx.execute(
                "INSERT OR REPLACE INTO committees (start_epoch, committee) VALUES (?1, ?2)",
                params![committee.epoch(), bytes],
            )?;
            info!(epoch = committee.epoch(), members = committee.n_members(), "next committee scheduled");
            Ok(())
        })
    }

    fn advance_epoch(&self) -> Result<Epoch, LedgerError> {
        let now = self.clock.now_unix_ms();
        self.transact(|tx, s| {
            let next = s
                .epoch
                .checked_add(1)
                .ok_or(LedgerError::Overflow { what: "epoch" })?;
            set_epoch(tx, s, next, now)?;
            Ok(next)
        })
    }

    fn params(&self) -> Result<LedgerParams, LedgerError> {
        self.read(|_, s| {
            Ok(LedgerParams {
                epoch_duration: s.epoch_duration_ms.map(Duration::from_millis),
                max_epochs_ahead: s.max_epochs_ahead,
                storage_price_per_unit_size: s.storage_price,
                write_price_per_unit_size: s.write_price,
            })
        })
    }

    fn account(&self) -> Result<Account, LedgerError> {
        self.read(|_, s| {
            Ok(Account {
                balance: s.balance,
                spent: s.spent,
            })
        })
    }

    fn reserve_space(
        &self,
        encoded_size: u64,
        epochs_ahead: u32,
    ) -> Result<StorageResource, LedgerError> {
        self.transact(|tx, s| {
            // `system_state_inner::reserve_space` and `reserve_space_without_payment`.
            if epochs_ahead == 0 || epochs_ahead > s.max_epochs_ahead {
                return Err(LedgerError::InvalidEpochsAhead {
                    epochs: u64::from(epochs_ahead),
                    max: s.max_epochs_ahead,
                });
            }
            if encoded_size == 0 {
                return Err(LedgerError::InvalidResourceSize);
            }
            let end_epoch = s
                .epoch
                .checked_add(epochs_ahead)
                .ok_or(LedgerError::Overflow { what: "end epoch" })?;
            let cost = price(s.storage_price, encoded_size, u64::from(epochs_ahead))?;
            pay(tx, s, cost)?;
            let id = new_object_id(tx)?;
            tx.execute(
                "INSERT INTO storage (object_id, start_epoch, end_epoch, size, blob_object_id)
                 VALUES (?1, ?2, ?3, ?4, NULL)",
                params![id.0, s.epoch, end_epoch, encoded_size],
            )?;
            let storage = StorageResource {
                id,
                start_epoch: s.epoch,
                end_epoch,
                size: encoded_size,
            };
            info!(storage = %id, size = encoded_size, start_epoch = s.epoch, end_epoch, cost, "storage reserved");
            Ok(storage)
        })
    }

    fn storage_resource(&self, id: ObjectId) -> Result<Option<StorageResource>, LedgerError> {
        self.read(|tx, _| Ok(load_storage(tx, id)?.map(|(s, _)| s)))
    }

    fn register_blob(
        &self,
        storage_id: ObjectId,
        blob_id: BlobId,
        root_hash: Node,
        unencoded_size: u64,
        encoding_type: EncodingType,
        deletable: bool,
    ) -> Result<BlobObject, LedgerError> {
        self.transact(|tx, s| {
            let (storage, owner) =
                load_storage(tx, storage_id)?.ok_or(LedgerError::StorageNotFound(storage_id))?;
            // On Sui the storage object moves into the blob; here it stays a row that the blob
            // owns, and an owned row cannot be used twice.
            if let Some(blob) = owner {
                return Err(LedgerError::StorageInUse {
                    storage: storage_id,
                    blob,
                });
            }
            // `blob::new`, in its order: resource bounds, resource size, blob ID.
            if !(storage.start_epoch <= s.epoch && s.epoch < storage.end_epoch) {
                return Err(LedgerError::StorageEpochs {
                    storage: storage_id,
                    start_epoch: storage.start_epoch,
                    end_epoch: storage.end_epoch,
                    current_epoch: s.epoch,
                });
            }
            let encoded_size = EncodingConfig::new(s.n_shards)?.encoded_blob_length(unencoded_size)?;
            if encoded_size > storage.size {
                return Err(LedgerError::StorageTooSmall {
                    storage: storage_id,
                    storage_size: storage.size,
                    encoded_size,
                });
            }
            let derived = BlobId::from_root(&root_hash, encoding_type, unencoded_size);
            if derived != blob_id {
                return Err(LedgerError::InvalidBlobId {
                    given: blob_id,
                    derived,
                });
            }
            let cost = price(s.write_price, encoded_size, 1)?;
            pay(tx, s, cost)?;
            let object_id = new_object_id(tx)?;
            let seq = emit(
                tx,
                s.epoch,
                &LedgerEvent::BlobRegistered {
                    epoch: s.epoch,
                    blob_id,
                    size: unencoded_size,
                    encoding_type,
                    end_epoch: storage.end_epoch,
                    deletable,
                    object_id,
                },
            )?;
            tx.execute(
                "INSERT INTO blobs (object_id, blob_id, registered_epoch, certified_epoch, size,
                    encoding_type, deletable, storage_id, status_event_seq)
                 VALUES (?1, ?2, ?3, NULL, ?4, ?5, ?6, ?7, ?8)",
                params![
                    object_id.0,
                    blob_id.0,
                    s.epoch,
                    unencoded_size,
                    encoding_type as u8,
                    deletable,
                    storage_id.0,
                    seq
                ],
            )?;
            tx.execute(
                "UPDATE storage SET blob_object_id = ?1 WHERE object_id = ?2",
                params![object_id.0, storage_id.0],
            )?;
            info!(%blob_id, object = %object_id, size = unencoded_size, encoded_size, deletable, end_epoch = storage.end_epoch, "blob registered");
            Ok(BlobObject {
                object_id,
                blob_id,
                registered_epoch: s.epoch,
                certified_epoch: None,
                size: unencoded_size,
                encoding_type,
                deletable,
                storage,
            })
        })
    }

    fn certify_blob(
        &self,
        object_id: ObjectId,
        certificate: &ConfirmationCertificate,
    ) -> Result<BlobObject, LedgerError> {
        self.transact(|tx, s| {
            let BlobRow { mut blob, .. } = require_blob(tx, object_id)?;
            let committee = current_committee(tx, s)?;

            // `bls_aggregate::verify_quorum_in_epoch`: the contract receives a bitmap, so check
            // exactly what it would (a repeated signer index is rejected while packing).
            let bitmap = certificate.signers_bitmap(committee.n_members())?;
            committee.verify_bitmap_certificate(
                &certificate.signature,
                &bitmap,
                &certificate.serialized_message,
                RequiredWeight::Quorum,
            )?;
            // `messages::new_certified_message`: version, app ID, epoch of the committee.
            let (header, _) = MessageHeader::split(&certificate.serialized_message)?;
            if header.intent_version != crate::protocol::INTENT_VERSION {
                return Err(ProtocolError::WrongIntentVersion {
                    expected: crate::protocol::INTENT_VERSION,
                    actual: header.intent_version,
                }
                .into());
            }
            if header.app_id != crate::protocol::STORAGE_APP_ID {
                return Err(ProtocolError::WrongAppId {
                    expected: crate::protocol::STORAGE_APP_ID,
                    actual: header.app_id,
                }
                .into());
            }
            if header.epoch != s.epoch {
                return Err(LedgerError::CertificateEpoch {
                    certificate_epoch: header.epoch,
                    current_epoch: s.epoch,
                });
            }
            // `messages::certify_blob_message`: intent type, then the body; trailing bytes are
            // ignored, as in the contract.
            let message =
                ConfirmationMessage::decode(&certificate.serialized_message, TrailingBytes::Allow)?;

            // `blob::certify_with_certified_msg`, in its order.
            if message.blob_id != blob.blob_id {
                return Err(LedgerError::CertificateBlobId {
                    blob: blob.blob_id,
                    certificate: message.blob_id,
                });
            }
            if let Some(certified_epoch) = blob.certified_epoch {
                return Err(LedgerError::AlreadyCertified {
                    object_id,
                    certified_epoch,
                });
            }
            if blob.is_expired(s.epoch) {
                return Err(LedgerError::Expired {
                    object_id,
                    end_epoch: blob.end_epoch(),
                    current_epoch: s.epoch,
                });
            }
            if blob.deletable != message.blob_type.is_deletable() {
                return Err(LedgerError::CertificatePersistence {
                    object_id,
                    blob_deletable: blob.deletable,
                    certificate_deletable: message.blob_type.is_deletable(),
                });
            }
            match message.blob_type {
                BlobPersistenceType::Deletable {
                    object_id: certified,
                } if certified != object_id => {
                    return Err(LedgerError::CertificateObject {
                        object_id,
                        certificate: certified,
                    });
                }
                _ => {}
            }

            let seq = emit(
                tx,
                s.epoch,
                &LedgerEvent::BlobCertified {
                    epoch: s.epoch,
                    blob_id: blob.blob_id,
                    end_epoch: blob.end_epoch(),
                    deletable: blob.deletable,
                    object_id,
                    is_extension: false,
                },
            )?;
            tx.execute(
                "UPDATE blobs SET certified_epoch = ?1, status_event_seq = ?2 WHERE object_id = ?3",
                params![s.epoch, seq, object_id.0],
            )?;
            blob.certified_epoch = Some(s.epoch);
            info!(blob_id = %blob.blob_id, object = %object_id, epoch = s.epoch, signers = certificate.signers.len(), end_epoch = blob.end_epoch(), "blob certified");
            Ok(blob)
        })
    }

    fn extend_blob(
        &self,
        object_id: ObjectId,
        extra_epochs: u32,
    ) -> Result<BlobObject, LedgerError> {
        self.transact(|tx, s| {
            let BlobRow { mut blob, .. } = require_blob(tx, object_id)?;
            // `system_state_inner::extend_blob`.
            let certified_epoch = assert_certified_not_expired(&blob, s.epoch)?;
            let end_offset = u64::from(blob.end_epoch() - s.epoch) + u64::from(extra_epochs);
            if extra_epochs == 0 || end_offset > u64::from(s.max_epochs_ahead) {
                return Err(LedgerError::InvalidEpochsAhead {
                    epochs: end_offset,
                    max: s.max_epochs_ahead,
                });
            }
            let cost = price(s.storage_price, blob.storage.size, u64::from(extra_epochs))?;
            pay(tx, s, cost)?;
            let new_end = blob
                .end_epoch()
                .checked_add(extra_epochs)
                .ok_or(LedgerError::Overflow { what: "end epoch" })?;
            let seq = emit(
                tx,
                s.epoch,
                &LedgerEvent::BlobCertified {
                    epoch: certified_epoch,
                    blob_id: blob.blob_id,
                    end_epoch: new_end,
                    deletable: blob.deletable,
                    object_id,
                    is_extension: true,
                },
            )?;
            tx.execute(
                "UPDATE storage SET end_epoch = ?1 WHERE object_id = ?2",
                params![new_end, blob.storage.id.0],
            )?;
            tx.execute(
                "UPDATE blobs SET status_event_seq = ?1 WHERE object_id = ?2",
                params![seq, object_id.0],
            )?;
            info!(blob_id = %blob.blob_id, object = %object_id, from = blob.end_epoch(), to = new_end, cost, "blob extended");
            blob.storage.end_epoch = new_end;
            Ok(blob)
        })
    }

    fn delete_blob(&self, object_id: ObjectId) -> Result<StorageResource, LedgerError> {
        self.transact(|tx, s| {
            let BlobRow { blob, .. } = require_blob(tx, object_id)?;
            // `blob::delete`: deletable, then not expired.
            if !blob.deletable {
                return Err(LedgerError::NotDeletable(object_id));
            }
            if blob.is_expired(s.epoch) {
                return Err(LedgerError::Expired {
                    object_id,
                    end_epoch: blob.end_epoch(),
                    current_epoch: s.epoch,
                });
            }
            emit(
                tx,
                s.epoch,
                &LedgerEvent::BlobDeleted {
                    epoch: s.epoch,
                    blob_id: blob.blob_id,
                    end_epoch: blob.end_epoch(),
                    object_id,
                    was_certified: blob.is_certified(),
                },
            )?;
            // Free the storage first: it references the blob row through `blob_object_id`.
            tx.execute(
                "UPDATE storage SET blob_object_id = NULL WHERE object_id = ?1",
                [blob.storage.id.0],
            )?;
            tx.execute("DELETE FROM blobs WHERE object_id = ?1", [object_id.0])?;
            info!(blob_id = %blob.blob_id, object = %object_id, "blob deleted");
            Ok(blob.storage)
        })
    }

    fn blob_by_object_id(&self, object_id: ObjectId) -> Result<Option<BlobObject>, LedgerError> {
        self.read(|tx, _| Ok(load_blob(tx, object_id)?.map(|r| r.blob)))
    }

    fn blobs_by_blob_id(&self, blob_id: BlobId) -> Result<Vec<BlobObject>, LedgerError> {
        self.read(|tx, _| {
            Ok(load_blobs_by_blob_id(tx, blob_id)?
                .into_iter()
                .map(|r| r.blob)
                .collect())
        })
    }

    fn blobs_with_epoch(&self, blob_id: BlobId) -> Result<(Vec<BlobObject>, Epoch), LedgerError> {
        self.read(|tx, s| {
            let objects = load_blobs_by_blob_id(tx, blob_id)?
                .into_iter()
                .map(|r| r.blob)
                .collect();
            Ok((objects, s.epoch))
        })
    }

    fn blob_status(&self, blob_id: BlobId) -> Result<BlobStatus, LedgerError> {
        self.read(|tx, s| Ok(status_of(&load_blobs_by_blob_id(tx, blob_id)?, s.epoch)))
    }

    fn events_since(
        &self,
        cursor: u64,
        limit: usize,
    ) -> Result<Vec<(u64, LedgerEvent)>, LedgerError> {
        self.transact(|tx, _| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut stmt = tx.prepare_cached(
                "SELECT seq, event FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![cursor, limit], |r| {
                Ok((r.get::<_, u64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, bytes) = row?;
                let event = bcs::from_bytes(&bytes).map_err(|e| LedgerError::CorruptRow {
                    what: "event",
                    reason: format!("event {seq}: {e}"),
                })?;
                out.push((seq, event));
            }
            Ok(out)
        })
    }
}
