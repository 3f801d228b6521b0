//! Power-loss safety: what is synced when, and what a start after a power loss trusts.
//!
//! The promise is ext4's: data not fsynced may be lost when the power fails, but the drive is
//! never corrupted and nothing fsynced is ever lost. How it holds:
//!
//! - **Metadata** (`meta.db`, WAL, `synchronous=NORMAL`): after a power loss SQLite recovers a
//!   prefix of the committed transactions, never a mix. Commits are not synced one by one;
//!   [`MetaSync`] makes everything committed so far durable with one `fdatasync` of the WAL,
//!   and concurrent callers share one (group commit). It runs before `fsync`/`fsyncdir`
//!   return, before any blob is deleted from the network (so that no durable state can point
//!   at a deleted blob), after each batch of seals, and at shutdown.
//! - **fsync** returns once the file's content is certified on the network (nodes and ledger
//!   sync before confirming) *and* the commit recording its extents (`uploaded_gen`) is durable.
//! - **Staging files** are not synced at close. A background task (`seal_loop`) takes the
//!   files closed in the last [`SEAL_LINGER`], hashes each staging file (BLAKE3 of its first
//!   `size` bytes), `fdatasync`s it, fsyncs `staging/`, then records the seal
//!   (`durable.sealed_gen/size/hash`) in one transaction and syncs the WAL once: many closes,
//!   one metadata sync (and the kernel groups the concurrent `fdatasync`s into few journal
//!   commits).
//! - **Detection**: a start after a power loss (the boot ID changed since the last start, or
//!   the unsynced marker written at the last start did not survive: the layer under the data
//!   directory lost writes) trusts no local file that was not synced: it deletes the file
//!   cache (`cache/files/`, copies of staging files made by rename without a sync), and a
//!   staged file keeps its staging content only if that content matches a seal newer than its
//!   last upload; otherwise the file goes back to its last uploaded version (extents, which
//!   only point at certified blobs, with the size recorded with them), or to empty if it was
//!   never uploaded. The extent cache needs nothing: it is verified (BLAKE3) on every read.
//!   After a plain SIGKILL (same boot, page cache intact) everything closed is kept as before.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use rusqlite::{Connection, OptionalExtension as _, Transaction, TransactionBehavior, params};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::error::{FsResult, io_err};
use super::meta::{self, Ino, Kind};
use super::{Drive, Live, lock};

/// How long the sealer waits after a close for more closes to share its syncs.
pub(super) const SEAL_LINGER: Duration = Duration::from_millis(200);

/// Staging files hashed and synced at once by the sealer.
const SEAL_PARALLEL: usize = 8;

/// Seal rounds of at least this many files sync with one `syncfs` (where it is reliable).
const SYNCFS_MIN: usize = 8;

/// Whether `syncfs` on the filesystem holding `dir` makes every file on it durable and
/// reports write-back errors: local disk filesystems do (Linux 5.8+); FUSE, NFS and the
/// like may not pass it on, so files there are synced one by one.
fn syncfs_reliable(dir: &Path) -> bool {
    const LOCAL: [i64; 6] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0xF2F5_2010, // f2fs
        0xCA45_1A4E, // bcachefs
        0x0102_1994, // tmpfs (nothing to sync; nothing survives a power loss either)
    ];
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `path` is a valid C string and `st` a writable statfs buffer.
    if unsafe { libc::statfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs succeeded, so it filled the buffer.
    let f_type = unsafe { st.assume_init() }.f_type;
    #[allow(clippy::unnecessary_cast)]
    LOCAL.contains(&(f_type as i64))
}

/// `syncfs(2)` of the filesystem holding `dir`.
fn syncfs(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let d = File::open(dir)?;
    // SAFETY: a valid open descriptor.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The durable marker: `BOOT_ID TOKEN`, written with a sync at every start.
const MARK: &str = "boot";
/// The same token, written without a sync: it survives a crash of the process, not a loss of
/// the page cache.
const MARK_LIVE: &str = "boot.live";

/// fsyncs a directory, making the names created in, renamed into or removed from it durable.
pub(super) fn fsync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// State shared by the syncing paths of a drive.
pub(super) struct Durability {
    pub(super) meta: MetaSync,
    /// Files closed since the sealer last ran.
    pending: std::sync::Mutex<HashSet<Ino>>,
    wake: Notify,
}

impl Durability {
    pub(super) fn new(db: &Path) -> Self {
        Self {
            meta: MetaSync::new(db),
            pending: std::sync::Mutex::new(HashSet::new()),
            wake: Notify::new(),
        }
    }

    /// A close (or truncate) handed `ino`'s staged content to the uploader: seal it soon.
    pub(super) fn closed(&self, ino: Ino) {
        lock(&self.pending).insert(ino);
        self.wake.notify_one();
    }
}

/// Group commit of the metadata database: one `fdatasync` of the WAL makes every transaction
/// committed before it durable (SQLite writes frames in order and syncs the WAL header itself
/// when it restarts the log after a checkpoint).
pub(super) struct MetaSync {
    db: PathBuf,
    file: std::sync::Mutex<Option<Arc<File>>>,
    /// Syncs started so far; the lock holds the number of the last one completed.
    started: AtomicU64,
    done: tokio::sync::Mutex<u64>,
}

impl MetaSync {
    fn new(db: &Path) -> Self {
        Self {
            db: db.to_path_buf(),
            file: std::sync::Mutex::new(None),
            started: AtomicU64::new(0),
            done: tokio::sync::Mutex::new(0),
        }
    }

    fn wal(&self) -> FsResult<Arc<File>> {
        let mut f = lock(&self.file);
        if let Some(f) = &*f {
            return Ok(f.clone());
        }
        let mut wal = self.db.clone().into_os_string();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        // No WAL (nothing written since the last checkpoint removed it): the database file
        // itself is what holds the commits.
        let opened = File::open(&wal)
            .or_else(|_| File::open(&self.db))
            .map_err(io_err(format!("open {}", wal.display())))?;
        let opened = Arc::new(opened);
        *f = Some(opened.clone());
        Ok(opened)
    }

    /// Returns once every transaction committed before the call is durable. Callers that
    /// arrive while a sync runs share the next one.
    pub(super) async fn sync(&self) -> FsResult<()> {
        let arrival = self.started.load(Ordering::SeqCst);
        let mut done = self.done.lock().await;
        if *done > arrival {
            // A sync that started after this call arrived has completed.
            return Ok(());
        }
        let me = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let file = self.wal()?;
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(io_err("sync the metadata database's WAL"))?;
        *done = me;
        Ok(())
    }
}

/// WAL size past which the background checkpointer copies the log into the database.
const CHECKPOINT_AT: u64 = 4 << 20;

/// How often the checkpointer looks at the WAL's size.
const CHECKPOINT_POLL: Duration = Duration::from_millis(500);

/// Copies the WAL into the database in the background, with a connection of its own, so
/// that no file operation pays for a checkpoint (and its two syncs). The drive's connection
/// keeps SQLite's automatic checkpoint only as a backstop at a much larger WAL (see
/// `meta::open`). PASSIVE: it never waits for, nor blocks, the drive's connection.
pub(super) async fn checkpoint_loop(db: PathBuf, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut wal = db.clone().into_os_string();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let conn = match Connection::open(&db) {
        Ok(c) => Arc::new(std::sync::Mutex::new(c)),
        Err(e) => {
            warn!(error = %e, "cannot open the metadata database for checkpoints; SQLite's \
                automatic ones will do");
            return;
        }
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECKPOINT_POLL) => {}
            _ = shutdown.changed() => break,
        }
        if fs::metadata(&wal).map_or(0, |m| m.len()) < CHECKPOINT_AT {
            continue;
        }
        let c = conn.clone();
        let r = tokio::task::spawn_blocking(move || {
            lock(&c).query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
        })
        .await;
        match r {
            Ok(Ok((log, done))) => debug!(log, done, "metadata checkpoint"),
            Ok(Err(e)) => debug!(error = %e, "metadata checkpoint failed; will retry"),
            Err(e) => debug!(error = %e, "metadata checkpoint task failed"),
        }
    }
}

/// The seal and upload sizes of a file (table `durable`).
#[derive(Debug, Default)]
struct Record {
    sealed_gen: u64,
    sealed_size: u64,
    sealed_hash: Option<Vec<u8>>,
    uploaded_size: Option<u64>,
}

fn record(conn: &Connection, ino: Ino) -> FsResult<Record> {
    Ok(conn
        .prepare_cached(
            "SELECT sealed_gen, sealed_size, sealed_hash, uploaded_size FROM durable
             WHERE ino = ?1",
        )?
        .query_row([ino], |r| {
            Ok(Record {
                sealed_gen: r.get(0)?,
                sealed_size: r.get(1)?,
                sealed_hash: r.get(2)?,
                uploaded_size: r.get(3)?,
            })
        })
        .optional()?
        .unwrap_or_default())
}

/// (sealed generation, sealed size, sealed hash) of `ino`, for tests.
#[cfg(test)]
pub(super) fn test_record(conn: &Connection, ino: Ino) -> FsResult<(u64, u64, Option<Vec<u8>>)> {
    let r = record(conn, ino)?;
    Ok((r.sealed_gen, r.sealed_size, r.sealed_hash))
}

/// Records the size of the content the uploader just recorded extents for (in the same
/// transaction), so that a start after a power loss can go back to exactly that version.
pub(super) fn record_uploaded(tx: &Transaction<'_>, ino: Ino, size: u64) -> FsResult<()> {
    tx.prepare_cached(
        "INSERT INTO durable (ino, uploaded_size) VALUES (?1, ?2)
         ON CONFLICT (ino) DO UPDATE SET uploaded_size = excluded.uploaded_size",
    )?
    .execute(params![ino, size])?;
    Ok(())
}

fn record_seal(tx: &Transaction<'_>, ino: Ino, g: u64, size: u64, hash: &[u8; 32]) -> FsResult<()> {
    tx.prepare_cached(
        "INSERT INTO durable (ino, sealed_gen, sealed_size, sealed_hash) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (ino) DO UPDATE SET sealed_gen = excluded.sealed_gen,
             sealed_size = excluded.sealed_size, sealed_hash = excluded.sealed_hash",
    )?
    .execute(params![ino, g, size, &hash[..]])?;
    Ok(())
}

/// BLAKE3 of the first `size` bytes of `f` (past its end: zeros, as the drive reads them).
fn hash_prefix(f: &File, size: u64) -> std::io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    // Most closed files are small: no 1 MiB buffer (zeroed) for each of them.
    let mut buf = vec![0u8; usize::try_from(size.clamp(1, 1 << 20)).unwrap_or(1 << 20)];
    let mut off = 0u64;
    while off < size {
        let want = usize::try_from((size - off).min(buf.len() as u64)).unwrap_or(buf.len());
        let mut got = 0;
        while got < want {
            let n = f.read_at(&mut buf[got..want], off + got as u64)?;
            if n == 0 {
                buf[got..want].fill(0);
                break;
            }
            got += n;
        }
        h.update(&buf[..want]);
        off += want as u64;
    }
    Ok(*h.finalize().as_bytes())
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether writes that were not synced may have been lost since the last start: the machine
/// rebooted (its boot ID changed) or the unsynced marker of the last start is gone (the layer
/// under the data directory dropped its unsynced writes). A drive never started with this
/// marker has lost nothing that this version could tell.
pub(super) fn unsynced_writes_lost(dir: &Path) -> bool {
    let Ok(mark) = fs::read_to_string(dir.join(MARK)) else {
        return false;
    };
    let mut parts = mark.split_whitespace();
    let (Some(boot), Some(token)) = (parts.next(), parts.next()) else {
        return true;
    };
    let live = fs::read_to_string(dir.join(MARK_LIVE)).unwrap_or_default();
    boot != boot_id() || live.trim() != token
}

/// Writes this start's marker: durably the boot ID and a fresh token, then the token again
/// without a sync.
pub(super) fn arm(dir: &Path) -> std::io::Result<()> {
    let mut token = [0u8; 16];
    getrandom::fill(&mut token).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!("{MARK}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        writeln!(f, "{} {token}", boot_id())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(MARK))?;
    fsync_dir(dir)?;
    fs::write(dir.join(MARK_LIVE), format!("{token}\n"))
}

/// A staged file taken for sealing.
struct SealJob {
    ino: Ino,
    data_gen: u64,
    size: u64,
    wgen: u64,
    file: Arc<File>,
    live: Arc<Live>,
}

impl Drive {
    /// Makes every metadata change committed so far durable (group commit). `fsyncdir` is
    /// this: directory changes are metadata transactions.
    pub async fn sync_metadata(&self) -> FsResult<()> {
        self.inner.durable.meta.sync().await
    }

    /// After a power loss: forget what was never synced (see the module docs). Runs before
    /// the cache index is loaded and before the ordinary recovery.
    pub(super) fn recover_lost_writes(&self) -> FsResult<()> {
        let mut dropped = 0u64;
        if let Ok(entries) = fs::read_dir(&self.inner.files_cache) {
            for e in entries.flatten() {
                if fs::remove_file(e.path()).is_ok() {
                    dropped += 1;
                }
            }
        }
        if self.inner.config.read_only {
            warn!(
                cached_files_dropped = dropped,
                "started after a power loss, read-only: staged files are served as found"
            );
            return Ok(());
        }
        let mut db = lock(&self.inner.db);
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM durable WHERE ino NOT IN (SELECT ino FROM inodes)",
            [],
        )?;
        let staged: Vec<Ino> = {
            let mut stmt = tx.prepare("SELECT ino FROM inodes WHERE staged = 1")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        let (mut kept, mut reverted) = (0u64, 0u64);
        for ino in staged {
            let mut i = meta::inode(&tx, ino)?;
            let rec = record(&tx, ino)?;
            let path = self.staging_path(ino);
            let sealed = match &rec.sealed_hash {
                Some(h) if rec.sealed_gen > i.uploaded_gen && i.kind == Kind::File => {
                    File::open(&path)
                        .and_then(|f| hash_prefix(&f, rec.sealed_size))
                        .is_ok_and(|got| got[..] == h[..])
                }
                _ => false,
            };
            if sealed {
                // The sealed version, exactly: later writes that reached the file are cut.
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(rec.sealed_size))
                    .map_err(io_err(format!("truncate {}", path.display())))?;
                i.size = rec.sealed_size;
                i.data_gen += 1;
                meta::put_inode(&tx, &i)?;
                meta::queue_upload(&tx, ino, i.data_gen, i.size)?;
                kept += 1;
                continue;
            }
            let _ = fs::remove_file(&path);
            let extents = meta::extents(&tx, ino)?;
            i.size = rec.uploaded_size.unwrap_or_else(|| {
                extents
                    .iter()
                    .map(|e| e.file_off + e.len)
                    .max()
                    .unwrap_or(0)
            });
            if i.uploaded_gen == 0 && extents.is_empty() {
                i.size = 0;
            }
            i.staged = false;
            i.uploaded_gen = i.data_gen;
            meta::put_inode(&tx, &i)?;
            meta::remove_upload(&tx, ino)?;
            reverted += 1;
        }
        tx.commit()?;
        warn!(
            staged_kept = kept,
            staged_reverted_to_last_upload = reverted,
            cached_files_dropped = dropped,
            "started after a power loss: files whose last writes were neither fsynced nor \
             sealed are back at their last uploaded version"
        );
        Ok(())
    }

    /// Queues every staged file whose content is neither uploaded nor sealed for sealing
    /// (after a start; the SIGKILL path keeps such files).
    pub(super) fn seal_unsealed(&self) -> FsResult<usize> {
        let inos: Vec<Ino> = self.read_db(|c| {
            let mut stmt = c.prepare(
                "SELECT i.ino FROM inodes i LEFT JOIN durable d ON d.ino = i.ino
                 WHERE i.staged = 1 AND i.uploaded_gen < i.data_gen
                   AND (d.sealed_gen IS NULL OR d.sealed_gen < i.data_gen)",
            )?;
            Ok(stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?)
        })?;
        let n = inos.len();
        for ino in inos {
            self.inner.durable.closed(ino);
        }
        Ok(n)
    }

    /// The sealer: every [`SEAL_LINGER`] after a close, syncs the staging files closed
    /// meanwhile and records their seals with one metadata sync.
    pub(super) async fn seal_loop(self) {
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            tokio::select! {
                () = self.inner.durable.wake.notified() => {}
                _ = shutdown.changed() => continue,
            }
            tokio::select! {
                () = tokio::time::sleep(SEAL_LINGER) => {}
                _ = shutdown.changed() => {}
            }
            if let Err(e) = self.seal_pending().await {
                warn!(error = %e, "syncing closed files failed; will retry");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        debug!("sealer stopped");
    }

    /// Seals the files closed since the last round (see the module docs).
    pub(super) async fn seal_pending(&self) -> FsResult<()> {
        let inos: Vec<Ino> = std::mem::take(&mut *lock(&self.inner.durable.pending))
            .into_iter()
            .collect();
        if inos.is_empty() {
            return Ok(());
        }
        let mut jobs = Vec::new();
        let mut pinned = Vec::new();
        for ino in inos {
            let live = self.pin(ino);
            pinned.push(ino);
            let mut data = live.data.write().await;
            if data.dirty {
                // Written since its last close: the next close seals it.
                continue;
            }
            let Some(i) = self.read_db(|c| meta::get_inode(c, ino))? else {
                continue;
            };
            if i.kind != Kind::File || !i.staged || i.uploaded_gen >= i.data_gen {
                continue;
            }
            let file = match self.staging_file(ino, &mut data) {
                Ok(f) => f,
                Err(e) => {
                    debug!(ino, error = %e, "no staging file to seal");
                    continue;
                }
            };
            jobs.push(SealJob {
                ino,
                data_gen: i.data_gen,
                size: i.size,
                wgen: data.wgen,
                file,
                live: live.clone(),
            });
        }
        let result = self.seal_jobs(jobs).await;
        for ino in pinned {
            self.unpin(ino);
        }
        result
    }

    async fn seal_jobs(&self, jobs: Vec<SealJob>) -> FsResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let staging_dir = self.inner.staging_dir.clone();
        // Many files: one syncfs instead of a data sync (and a device flush) per file.
        let one_sync = jobs.len() >= SYNCFS_MIN && syncfs_reliable(&staging_dir);
        let hashed: Vec<(SealJob, std::io::Result<[u8; 32]>)> = futures::stream::iter(jobs)
            .map(|job| async move {
                let (file, size) = (job.file.clone(), job.size);
                let r = tokio::task::spawn_blocking(move || {
                    let h = hash_prefix(&file, size)?;
                    if !one_sync {
                        file.sync_data()?;
                    }
                    Ok(h)
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                (job, r)
            })
            .buffer_unordered(SEAL_PARALLEL)
            .collect()
            .await;
        let files: Vec<Arc<File>> = if one_sync {
            hashed.iter().map(|(j, _)| j.file.clone()).collect()
        } else {
            Vec::new()
        };
        tokio::task::spawn_blocking(move || {
            if one_sync && let Err(e) = syncfs(&staging_dir) {
                // Seal nothing on a sync that may not have happened: sync file by file.
                debug!(error = %e, "syncfs failed; syncing file by file");
                for f in &files {
                    f.sync_data()?;
                }
            }
            fsync_dir(&staging_dir)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(io_err("sync the staging directory"))?;
        let mut seals = Vec::new();
        for (job, r) in hashed {
            match r {
                Ok(h) if job.live.data.read().await.wgen == job.wgen => seals.push((job, h)),
                Ok(_) => {}
                Err(e) => debug!(ino = job.ino, error = %e, "cannot seal a staging file"),
            }
        }
        let n = self.txn(|tx| {
            let mut n = 0;
            for (job, h) in &seals {
                let same = meta::get_inode(tx, job.ino)?
                    .is_some_and(|i| i.staged && i.data_gen == job.data_gen);
                if same {
                    record_seal(tx, job.ino, job.data_gen, job.size, h)?;
                    n += 1;
                }
            }
            Ok(n)
        })?;
        self.sync_metadata().await?;
        if n > 0 {
            debug!(files = n, "closed files synced and sealed");
        }
        Ok(())
    }

    /// At a clean stop: seals what is still unsealed, so that a power loss while unmounted
    /// loses nothing that was closed.
    pub(super) async fn seal_all(&self) {
        match self.seal_unsealed() {
            Ok(0) => {}
            Ok(n) => {
                info!(files = n, "syncing closed files before stopping");
                if let Err(e) = self.seal_pending().await {
                    warn!(error = %e, "syncing closed files at stop failed");
                }
            }
            Err(e) => warn!(error = %e, "listing unsealed files at stop failed"),
        }
        if let Err(e) = self.sync_metadata().await {
            warn!(error = %e, "syncing the metadata at stop failed");
        }
    }
}
