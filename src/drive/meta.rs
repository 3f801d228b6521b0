//! The drive's metadata in SQLite: inodes, directory entries, xattrs, extents, blobs and the
//! upload queue.
//!
//! One connection, WAL journal. `synchronous=NORMAL`: a committed transaction survives the
//! mount process being killed (the WAL is in the page cache, which the kernel keeps); power
//! loss may lose the last transactions (never an earlier one while keeping a later one) but
//! never corrupts the file. Where durability is promised (fsync, before deleting blobs) the
//! drive syncs the WAL itself (`durable.rs`). Every operation that
//! POSIX makes atomic (rename, link, unlink, create) is one transaction.
//!
//! The schema is versioned (`PRAGMA user_version`); migration `i` takes version `i` to
//! `i + 1` in one transaction with the version bump.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::error::{FsError, FsResult};
use crate::encoding::BlobId;

pub type Ino = u64;
/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: Ino = 1;

/// Version 1: the initial schema.
const V1: &str = "
CREATE TABLE inodes (
    ino           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          INTEGER NOT NULL,   -- Kind as a number
    perm          INTEGER NOT NULL,   -- 07777 bits
    uid           INTEGER NOT NULL,
    gid           INTEGER NOT NULL,
    nlink         INTEGER NOT NULL,
    size          INTEGER NOT NULL,
    rdev          INTEGER NOT NULL DEFAULT 0,
    atime_s INTEGER NOT NULL, atime_ns INTEGER NOT NULL,
    mtime_s INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_s INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    crtime_s INTEGER NOT NULL, crtime_ns INTEGER NOT NULL,
    parent        INTEGER,            -- directories: the directory holding them
    target        BLOB,               -- symlinks: the target
    -- 0: content is the extents; 1: the staging file is the content (extents may lag).
    staged        INTEGER NOT NULL DEFAULT 0,
    -- Bumped each time new content is handed to the uploader (close, fsync, truncate).
    data_gen      INTEGER NOT NULL DEFAULT 0,
    -- The data_gen whose content the extents hold.
    uploaded_gen  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE dentries (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,   -- readdir cookie: stable, increasing
    parent        INTEGER NOT NULL,
    name          BLOB NOT NULL,
    ino           INTEGER NOT NULL,
    UNIQUE (parent, name)
);
CREATE INDEX dentries_ino ON dentries (ino);

CREATE TABLE xattrs (
    ino           INTEGER NOT NULL,
    name          BLOB NOT NULL,
    value         BLOB NOT NULL,
    PRIMARY KEY (ino, name)
) WITHOUT ROWID;

-- Blobs the drive has stored. `framing` says how file bytes map to blob bytes ('plain', or
-- an encryption scheme with fixed-size frames and `key_id`), so encrypted backends need no
-- schema change. `owner` is NULL for blobs our own key owns, else the owner's address.
CREATE TABLE blobs (
    blob_id       BLOB PRIMARY KEY,
    backend       TEXT NOT NULL,
    object_id     BLOB,
    owner         TEXT,
    size          INTEGER NOT NULL,
    encoded_size  INTEGER NOT NULL,
    end_epoch     INTEGER NOT NULL,
    deletable     INTEGER NOT NULL,
    framing       TEXT NOT NULL DEFAULT 'plain',
    key_id        BLOB,
    created_ms    INTEGER NOT NULL
);

-- A file's content in blobs: file bytes [file_off, file_off + len) are blob bytes
-- [blob_off, blob_off + len) (in the blob's plaintext, whatever its framing); `hash` is the
-- BLAKE3 of those bytes. Bytes covered by no extent are a hole and read as zeros.
CREATE TABLE extents (
    ino           INTEGER NOT NULL,
    file_off      INTEGER NOT NULL,
    len           INTEGER NOT NULL,
    blob_id       BLOB NOT NULL,
    blob_off      INTEGER NOT NULL,
    hash          BLOB NOT NULL,
    PRIMARY KEY (ino, file_off)
) WITHOUT ROWID;
CREATE INDEX extents_blob ON extents (blob_id);

-- Files whose staged content waits for upload.
CREATE TABLE uploads (
    ino           INTEGER PRIMARY KEY,
    data_gen      INTEGER NOT NULL,
    bytes         INTEGER NOT NULL,
    queued_ms     INTEGER NOT NULL
);

-- Blobs no extent references any more, to delete from the network.
CREATE TABLE dead_blobs (
    blob_id       BLOB PRIMARY KEY
);
";

/// Version 2: what a start after a power loss may trust (`durable.rs`). `sealed_*`: the
/// generation, size and BLAKE3 of staged content that was synced; `uploaded_size`: the size
/// of the content the extents hold.
const V2: &str = "
CREATE TABLE durable (
    ino           INTEGER PRIMARY KEY,
    sealed_gen    INTEGER NOT NULL DEFAULT 0,
    sealed_size   INTEGER NOT NULL DEFAULT 0,
    sealed_hash   BLOB,
    uploaded_size INTEGER
);
";

const MIGRATIONS: &[&str] = &[V1, V2];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    fn to_db(self) -> i64 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
            Kind::Fifo => 4,
            Kind::Socket => 5,
            Kind::CharDev => 6,
            Kind::BlockDev => 7,
        }
    }

    fn from_db(v: i64) -> Option<Kind> {
        Some(match v {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::Socket,
            6 => Kind::CharDev,
            7 => Kind::BlockDev,
            _ => return None,
        })
    }

    /// From the `S_IFMT` bits of a mode.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// A point in time with nanoseconds, as POSIX timestamps are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

impl Time {
    pub fn now() -> Time {
        Time::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Time {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Time {
                sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nsec: d.subsec_nanos(),
            },
            Err(e) => {
                // Before 1970: seconds round down, nanoseconds count up from there.
                let d = e.duration();
                let mut sec = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                let mut nsec = d.subsec_nanos();
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                Time { sec, nsec }
            }
        }
    }

    pub fn to_system(self) -> SystemTime {
        let nanos = std::time::Duration::from_nanos(u64::from(self.nsec));
        if self.sec >= 0 {
            UNIX_EPOCH + std::time::Duration::from_secs(self.sec.unsigned_abs()) + nanos
        } else {
            UNIX_EPOCH - std::time::Duration::from_secs(self.sec.unsigned_abs()) + nanos
        }
    }
}

/// An inode's attributes as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub ino: Ino,
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub rdev: u32,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub crtime: Time,
    pub parent: Option<Ino>,
    pub staged: bool,
    pub data_gen: u64,
    pub uploaded_gen: u64,
}

const INODE_COLUMNS: &str = "ino, kind, perm, uid, gid, nlink, size, rdev, atime_s, atime_ns,
    mtime_s, mtime_ns, ctime_s, ctime_ns, crtime_s, crtime_ns, parent, staged, data_gen,
    uploaded_gen";

fn inode_from_row(r: &Row<'_>) -> rusqlite::Result<Inode> {
    let kind: i64 = r.get(1)?;
    let t = |s: usize| -> rusqlite::Result<Time> {
        Ok(Time {
            sec: r.get(s)?,
            nsec: r.get(s + 1)?,
        })
    };
    Ok(Inode {
        ino: r.get(0)?,
        kind: Kind::from_db(kind).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Integer,
                format!("unknown inode kind {kind}").into(),
            )
        })?,
        perm: r.get(2)?,
        uid: r.get(3)?,
        gid: r.get(4)?,
        nlink: r.get(5)?,
        size: r.get(6)?,
        rdev: r.get(7)?,
        atime: t(8)?,
        mtime: t(10)?,
        ctime: t(12)?,
        crtime: t(14)?,
        parent: r.get(16)?,
        staged: r.get(17)?,
        data_gen: r.get(18)?,
        uploaded_gen: r.get(19)?,
    })
}

/// One file extent: file bytes `[file_off, file_off + len)` are blob bytes
/// `[blob_off, blob_off + len)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub file_off: u64,
    pub len: u64,
    pub blob_id: BlobId,
    pub blob_off: u64,
    pub hash: [u8; 32],
}

/// A directory entry as readdir returns it.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Cookie for the next readdir call.
    pub cookie: u64,
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: Kind,
}

/// A queued upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedUpload {
    pub ino: Ino,
    pub data_gen: u64,
    pub bytes: u64,
    pub queued_ms: u64,
}

/// A blob the drive stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    pub blob_id: BlobId,
    pub backend: String,
    pub object_id: Option<[u8; 32]>,
    pub owner: Option<String>,
    pub size: u64,
    pub encoded_size: u64,
    pub end_epoch: u64,
    pub deletable: bool,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Opens (creating if needed) the metadata database and brings its schema up to date. A new
/// database gets a root directory owned by `root_owner` (uid, gid) with mode 0755.
pub fn open(path: &Path, root_owner: (u32, u32)) -> FsResult<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(FsError::Schema(format!(
            "{}: cannot use the WAL journal (got {mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoints run in the background on a connection of their own
    // (`durable::checkpoint_loop`, from about 4 MiB of WAL); this one checkpoints itself only
    // as a backstop, should the log grow far past that.
    conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
    migrate(&mut conn)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if get_inode(&tx, ROOT)?.is_none() {
        let now = Time::now();
        tx.execute(
            "INSERT INTO inodes (ino, kind, perm, uid, gid, nlink, size, atime_s, atime_ns,
                mtime_s, mtime_ns, ctime_s, ctime_ns, crtime_s, crtime_ns, parent)
             VALUES (?1, ?2, 493, ?3, ?4, 2, 0, ?5, ?6, ?5, ?6, ?5, ?6, ?5, ?6, ?1)",
            params![
                ROOT,
                Kind::Dir.to_db(),
                root_owner.0,
                root_owner.1,
                now.sec,
                now.nsec
            ],
        )?;
    }
    tx.commit()?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> FsResult<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(FsError::Schema(format!(
            "the metadata database has schema version {version}, newer than this walrusfs \
             understands ({}); upgrade walrusfs",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

pub fn get_inode(conn: &Connection, ino: Ino) -> FsResult<Option<Inode>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {INODE_COLUMNS} FROM inodes WHERE ino = ?1"
    ))?;
    Ok(stmt.query_row([ino], inode_from_row).optional()?)
}

pub fn inode(conn: &Connection, ino: Ino) -> FsResult<Inode> {
    get_inode(conn, ino)?.ok_or(FsError::NotFound)
}

/// Writes every attribute column of `inode` back.
pub fn put_inode(conn: &Connection, i: &Inode) -> FsResult<()> {
    let mut stmt = conn.prepare_cached(
        "UPDATE inodes SET kind = ?2, perm = ?3, uid = ?4, gid = ?5, nlink = ?6, size = ?7,
            rdev = ?8, atime_s = ?9, atime_ns = ?10, mtime_s = ?11, mtime_ns = ?12,
            ctime_s = ?13, ctime_ns = ?14, crtime_s = ?15, crtime_ns = ?16, parent = ?17,
            staged = ?18, data_gen = ?19, uploaded_gen = ?20
         WHERE ino = ?1",
    )?;
    stmt.execute(params![
        i.ino,
        i.kind.to_db(),
        i.perm,
        i.uid,
        i.gid,
        i.nlink,
        i.size,
        i.rdev,
        i.atime.sec,
        i.atime.nsec,
        i.mtime.sec,
        i.mtime.nsec,
        i.ctime.sec,
        i.ctime.nsec,
        i.crtime.sec,
        i.crtime.nsec,
        i.parent,
        i.staged,
        i.data_gen,
        i.uploaded_gen
    ])?;
    Ok(())
}

/// Inserts a new inode (its `ino` is ignored) and returns it with its number.
pub fn insert_inode(conn: &Connection, i: &Inode, target: Option<&[u8]>) -> FsResult<Inode> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO inodes (kind, perm, uid, gid, nlink, size, rdev, atime_s, atime_ns,
            mtime_s, mtime_ns, ctime_s, ctime_ns, crtime_s, crtime_ns, parent, target, staged)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )?;
    stmt.execute(params![
        i.kind.to_db(),
        i.perm,
        i.uid,
        i.gid,
        i.nlink,
        i.size,
        i.rdev,
        i.atime.sec,
        i.atime.nsec,
        i.mtime.sec,
        i.mtime.nsec,
        i.ctime.sec,
        i.ctime.nsec,
        i.crtime.sec,
        i.crtime.nsec,
        i.parent,
        target,
        i.staged
    ])?;
    let ino = u64::try_from(conn.last_insert_rowid())
        .map_err(|_| FsError::Schema("negative inode number".into()))?;
    Ok(Inode { ino, ..i.clone() })
}

pub fn symlink_target(conn: &Connection, ino: Ino) -> FsResult<Vec<u8>> {
    let mut stmt = conn.prepare_cached("SELECT target FROM inodes WHERE ino = ?1")?;
    let target: Option<Option<Vec<u8>>> = stmt.query_row([ino], |r| r.get(0)).optional()?;
    target
        .flatten()
        .ok_or(FsError::Invalid("not a symbolic link"))
}

/// Removes an inode and everything it owns in the database; blobs its extents referenced
/// that nothing references any more are queued for deletion.
pub fn delete_inode(conn: &Connection, ino: Ino) -> FsResult<()> {
    let blobs = extent_blobs(conn, ino)?;
    conn.prepare_cached("DELETE FROM extents WHERE ino = ?1")?
        .execute([ino])?;
    conn.prepare_cached("DELETE FROM xattrs WHERE ino = ?1")?
        .execute([ino])?;
    conn.prepare_cached("DELETE FROM uploads WHERE ino = ?1")?
        .execute([ino])?;
    conn.prepare_cached("DELETE FROM inodes WHERE ino = ?1")?
        .execute([ino])?;
    mark_dead_if_unreferenced(conn, &blobs)?;
    Ok(())
}

pub fn lookup(conn: &Connection, parent: Ino, name: &[u8]) -> FsResult<Option<Ino>> {
    let mut stmt =
        conn.prepare_cached("SELECT ino FROM dentries WHERE parent = ?1 AND name = ?2")?;
    Ok(stmt
        .query_row(params![parent, name], |r| r.get(0))
        .optional()?)
}

pub fn add_dentry(conn: &Connection, parent: Ino, name: &[u8], ino: Ino) -> FsResult<()> {
    conn.prepare_cached("INSERT INTO dentries (parent, name, ino) VALUES (?1, ?2, ?3)")?
        .execute(params![parent, name, ino])?;
    Ok(())
}

pub fn remove_dentry(conn: &Connection, parent: Ino, name: &[u8]) -> FsResult<()> {
    conn.prepare_cached("DELETE FROM dentries WHERE parent = ?1 AND name = ?2")?
        .execute(params![parent, name])?;
    Ok(())
}

/// Points an existing entry at another inode (keeps its readdir cookie).
pub fn retarget_dentry(conn: &Connection, parent: Ino, name: &[u8], ino: Ino) -> FsResult<()> {
    conn.prepare_cached("UPDATE dentries SET ino = ?3 WHERE parent = ?1 AND name = ?2")?
        .execute(params![parent, name, ino])?;
    Ok(())
}

pub fn dir_is_empty(conn: &Connection, dir: Ino) -> FsResult<bool> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM dentries WHERE parent = ?1 LIMIT 1")?;
    Ok(stmt.query_row([dir], |_| Ok(())).optional()?.is_none())
}

/// Entries of `dir` with a cookie above `after`, in cookie order.
pub fn read_dir(conn: &Connection, dir: Ino, after: u64, limit: usize) -> FsResult<Vec<DirEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.id, d.name, d.ino, i.kind FROM dentries d JOIN inodes i ON i.ino = d.ino
         WHERE d.parent = ?1 AND d.id > ?2 ORDER BY d.id LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![dir, after, i64::try_from(limit).unwrap_or(i64::MAX)],
        |r| {
            let kind: i64 = r.get(3)?;
            Ok(DirEntry {
                cookie: r.get(0)?,
                name: r.get(1)?,
                ino: r.get(2)?,
                kind: Kind::from_db(kind).unwrap_or(Kind::File),
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn get_xattr(conn: &Connection, ino: Ino, name: &[u8]) -> FsResult<Option<Vec<u8>>> {
    let mut stmt = conn.prepare_cached("SELECT value FROM xattrs WHERE ino = ?1 AND name = ?2")?;
    Ok(stmt
        .query_row(params![ino, name], |r| r.get(0))
        .optional()?)
}

pub fn set_xattr(conn: &Connection, ino: Ino, name: &[u8], value: &[u8]) -> FsResult<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?1, ?2, ?3)")?
        .execute(params![ino, name, value])?;
    Ok(())
}

/// Returns whether the attribute existed.
pub fn remove_xattr(conn: &Connection, ino: Ino, name: &[u8]) -> FsResult<bool> {
    Ok(conn
        .prepare_cached("DELETE FROM xattrs WHERE ino = ?1 AND name = ?2")?
        .execute(params![ino, name])?
        > 0)
}

pub fn list_xattrs(conn: &Connection, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
    let mut stmt = conn.prepare_cached("SELECT name FROM xattrs WHERE ino = ?1 ORDER BY name")?;
    let rows = stmt.query_map([ino], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn blob_id_from(bytes: Vec<u8>) -> rusqlite::Result<BlobId> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            "blob ID is not 32 bytes".into(),
        )
    })?;
    Ok(BlobId(arr))
}

pub fn extents(conn: &Connection, ino: Ino) -> FsResult<Vec<Extent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT file_off, len, blob_id, blob_off, hash FROM extents WHERE ino = ?1
         ORDER BY file_off",
    )?;
    let rows = stmt.query_map([ino], |r| {
        let hash: Vec<u8> = r.get(4)?;
        Ok(Extent {
            file_off: r.get(0)?,
            len: r.get(1)?,
            blob_id: blob_id_from(r.get(2)?)?,
            blob_off: r.get(3)?,
            hash: hash.try_into().map_err(|_| {
                rusqlite::Error::FromSqlConversionFailure(
                    4,
                    rusqlite::types::Type::Blob,
                    "extent hash is not 32 bytes".into(),
                )
            })?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn extent_blobs(conn: &Connection, ino: Ino) -> FsResult<Vec<BlobId>> {
    let mut stmt = conn.prepare_cached("SELECT DISTINCT blob_id FROM extents WHERE ino = ?1")?;
    let rows = stmt.query_map([ino], |r| blob_id_from(r.get(0)?))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Replaces the extents of `ino`; blobs no longer referenced are queued for deletion.
pub fn replace_extents(conn: &Connection, ino: Ino, new: &[Extent]) -> FsResult<()> {
    let old = extent_blobs(conn, ino)?;
    conn.prepare_cached("DELETE FROM extents WHERE ino = ?1")?
        .execute([ino])?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO extents (ino, file_off, len, blob_id, blob_off, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for e in new {
        stmt.execute(params![
            ino,
            e.file_off,
            e.len,
            &e.blob_id.0[..],
            e.blob_off,
            &e.hash[..]
        ])?;
    }
    mark_dead_if_unreferenced(conn, &old)?;
    Ok(())
}

pub fn mark_dead_if_unreferenced(conn: &Connection, blobs: &[BlobId]) -> FsResult<()> {
    let mut used = conn.prepare_cached("SELECT 1 FROM extents WHERE blob_id = ?1 LIMIT 1")?;
    let mut dead = conn.prepare_cached("INSERT OR IGNORE INTO dead_blobs (blob_id) VALUES (?1)")?;
    for b in blobs {
        if used.query_row([&b.0[..]], |_| Ok(())).optional()?.is_none() {
            dead.execute([&b.0[..]])?;
        }
    }
    Ok(())
}

pub fn queue_upload(conn: &Connection, ino: Ino, data_gen: u64, bytes: u64) -> FsResult<()> {
    conn.prepare_cached(
        "INSERT INTO uploads (ino, data_gen, bytes, queued_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (ino) DO UPDATE SET data_gen = ?2, bytes = ?3",
    )?
    .execute(params![ino, data_gen, bytes, now_ms()])?;
    Ok(())
}

pub fn queued_uploads(conn: &Connection) -> FsResult<Vec<QueuedUpload>> {
    let mut stmt = conn.prepare_cached(
        "SELECT ino, data_gen, bytes, queued_ms FROM uploads ORDER BY queued_ms, ino",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(QueuedUpload {
            ino: r.get(0)?,
            data_gen: r.get(1)?,
            bytes: r.get(2)?,
            queued_ms: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// `ino`'s entry in the upload queue, if it has one.
pub fn queued_upload(conn: &Connection, ino: Ino) -> FsResult<Option<QueuedUpload>> {
    Ok(conn
        .prepare_cached("SELECT ino, data_gen, bytes, queued_ms FROM uploads WHERE ino = ?1")?
        .query_row([ino], |r| {
            Ok(QueuedUpload {
                ino: r.get(0)?,
                data_gen: r.get(1)?,
                bytes: r.get(2)?,
                queued_ms: r.get(3)?,
            })
        })
        .optional()?)
}

pub fn remove_upload(conn: &Connection, ino: Ino) -> FsResult<()> {
    conn.prepare_cached("DELETE FROM uploads WHERE ino = ?1")?
        .execute([ino])?;
    Ok(())
}

pub fn insert_blob(conn: &Connection, b: &BlobRecord) -> FsResult<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO blobs (blob_id, backend, object_id, owner, size, encoded_size,
            end_epoch, deletable, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        &b.blob_id.0[..],
        b.backend,
        b.object_id.as_ref().map(|o| &o[..]),
        b.owner,
        b.size,
        b.encoded_size,
        b.end_epoch,
        b.deletable,
        now_ms()
    ])?;
    // A blob stored again (same content) is alive again.
    conn.prepare_cached("DELETE FROM dead_blobs WHERE blob_id = ?1")?
        .execute([&b.blob_id.0[..]])?;
    Ok(())
}

pub fn dead_blobs(conn: &Connection, limit: usize) -> FsResult<Vec<BlobId>> {
    let mut stmt = conn.prepare_cached("SELECT blob_id FROM dead_blobs LIMIT ?1")?;
    let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        blob_id_from(r.get(0)?)
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn forget_blob(conn: &Connection, blob_id: &BlobId) -> FsResult<()> {
    conn.prepare_cached("DELETE FROM dead_blobs WHERE blob_id = ?1")?
        .execute([&blob_id.0[..]])?;
    conn.prepare_cached("DELETE FROM blobs WHERE blob_id = ?1")?
        .execute([&blob_id.0[..]])?;
    Ok(())
}

/// Inodes no directory entry names (unlinked while open when the mount stopped).
pub fn orphans(conn: &Connection) -> FsResult<Vec<Ino>> {
    let mut stmt = conn.prepare_cached("SELECT ino FROM inodes WHERE nlink = 0 AND ino != 1")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Totals for statfs and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub inodes: u64,
    pub bytes: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub encoded_bytes: u64,
    pub pending_files: u64,
    pub pending_bytes: u64,
}

pub fn totals(conn: &Connection) -> FsResult<Totals> {
    let (inodes, bytes): (u64, u64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM inodes",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (blobs, blob_bytes, encoded_bytes): (u64, u64, u64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(encoded_size), 0) FROM blobs",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let (pending_files, pending_bytes): (u64, u64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM uploads",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(Totals {
        inodes,
        bytes,
        blobs,
        blob_bytes,
        encoded_bytes,
        pending_files,
        pending_bytes,
    })
}
