//! The filesystem core: POSIX semantics over SQLite metadata, local staging and a blob store.
//!
//! [`Drive`] is async and knows nothing of FUSE; `crate::fuse` adapts it to the kernel and
//! the tests drive it directly. Layout of a drive's data directory:
//! - `meta.db`: inodes, directory entries, xattrs, extents, blobs, the upload queue (`meta`);
//! - `staging/INO`: the whole current content of a file being written or not yet uploaded
//!   (sparse: holes stay holes);
//! - `cache/files/INO.GEN`: a file's uploaded content kept after upload (generation `GEN`);
//! - `cache/extents/HASH`: extents fetched from the network, named by their BLAKE3 hash.
//!
//! Data states of a regular file (`inodes.staged`):
//! - clean: the extents are the content; reads go to the file cache, the extent cache or the
//!   network;
//! - staged: the staging file is the content. Writes make a file staged (fetching its content
//!   first if it had any). Close and fsync bump `data_gen` and queue the file; the uploader
//!   stores it and records extents for that generation (`uploaded_gen`); once the last handle
//!   is closed and nothing newer is pending, the staging file becomes the file cache and the
//!   file is clean again.
//!
//! Locking: the database connection's mutex is taken before the live-inode map's, never the
//! other way round; per-inode data locks (`Live::data`) are taken before either.

mod acl;
mod cache;
mod compact;
mod durable;
mod error;
pub mod meta;
mod stats;
mod upload;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{Notify, RwLock, watch};
use tracing::{debug, info, warn};

pub use cache::CacheCounts;
pub use error::{FsError, FsResult};
pub use meta::{Ino, Inode, Kind, ROOT, Time, Totals};
pub use stats::{AtRisk, Expiring, ReadCounts};
pub use upload::RENEW_MARGIN;

use crate::blobstore::BlobStore;
use error::io_err;
use meta::Extent;

/// The longest name a directory entry may have (as on ext4).
pub const NAME_MAX: usize = 255;
/// The longest symlink target.
pub const PATH_MAX: usize = 4095;
/// The most links to one inode (as on ext4).
pub const LINK_MAX: u32 = 65_000;
/// The largest xattr value (as on ext4 with large xattrs, and the VFS limit).
pub const XATTR_SIZE_MAX: usize = 65_536;

/// How a drive behaves.
#[derive(Debug, Clone)]
pub struct DriveConfig {
    /// Holds `meta.db`, `staging/` and `cache/`.
    pub data_dir: PathBuf,
    pub read_only: bool,
    /// Epochs each blob is stored for.
    pub epochs: u32,
    /// Close waits until the file's content is certified, as fsync does.
    pub sync_on_close: bool,
    /// Largest blob the drive makes (the backend's maximum applies too).
    pub max_pack: u64,
    /// Largest extent: the unit of hashing, caching and network reads.
    pub extent_size: u64,
    /// Wait-to-fill: while less than a blob's worth is pending and no fsync waits, the
    /// uploader waits until no file was queued for this long, so that files closed in a
    /// burst share one blob.
    pub pack_linger: Duration,
    /// ... but no queued file waits longer than this for others to fill its blob.
    pub pack_max_wait: Duration,
    /// A packed blob whose live bytes (still referenced by some file) fall below this share
    /// of its size is compacted: its live extents are re-packed into a new blob (`compact.rs`).
    /// 0 turns compaction off.
    pub compact_threshold: f64,
    /// How often the uploader looks for blobs to compact when it has nothing else to do.
    pub compact_interval: Duration,
    /// How often the uploader looks for blobs near their end epoch (to extend them); the
    /// mount sets it from the network's epoch length.
    pub renew_interval: Duration,
    /// Owner of the root directory of a new drive.
    pub root_owner: (u32, u32),
    /// Bytes `cache/` may take on the local disk (LRU eviction); `None`: a tenth of the
    /// local filesystem, at most 8 GiB (`cache.rs`). Staging files are not part of it.
    pub cache_budget: Option<u64>,
    /// Memory for extents being fetched ahead of sequential readers, all readers together;
    /// 0 turns prefetching off.
    pub prefetch_budget: u64,
}

impl DriveConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            read_only: false,
            epochs: 5,
            sync_on_close: false,
            max_pack: 64 << 20,
            extent_size: 4 << 20,
            pack_linger: Duration::from_secs(1),
            pack_max_wait: Duration::from_secs(30),
            compact_threshold: 0.5,
            compact_interval: Duration::from_secs(30),
            renew_interval: Duration::from_secs(60),
            // SAFETY: getuid/getgid cannot fail.
            root_owner: unsafe { (libc::getuid(), libc::getgid()) },
            cache_budget: None,
            prefetch_budget: cache::DEFAULT_PREFETCH_BUDGET,
        }
    }
}

/// Who asks (from the FUSE request header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };
}

/// Attribute changes of `setattr`; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Time>,
    /// Clear set-user-ID, set-group-ID (where group execution is on) and file
    /// capabilities of a non-directory as part of this change, unless `mode` is given: what
    /// chown and an unprivileged truncate do on a local filesystem.
    pub kill_privileges: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum TimeSet {
    Now,
    At(Time),
}

/// How `rename` treats an existing target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RenameMode {
    #[default]
    Replace,
    NoReplace,
    Exchange,
}

/// `setxattr` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XattrMode {
    #[default]
    Any,
    Create,
    Replace,
}

/// A directory entry for readdir: `offset` is what the next readdir call passes back.
#[derive(Debug, Clone)]
pub struct ReadDirEntry {
    pub ino: Ino,
    pub offset: u64,
    pub kind: Kind,
    pub name: Vec<u8>,
}

/// Filesystem-wide figures for statfs and status.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub totals: Totals,
}

struct Handle {
    ino: Ino,
    write: bool,
}

/// Data state of an inode that is open or being uploaded.
#[derive(Default)]
struct LiveData {
    /// The staging file, once opened.
    file: Option<Arc<File>>,
    /// Written since `data_gen` was last bumped.
    dirty: bool,
    /// Bumped on every change of content, so the uploader can tell whether what it read is
    /// still what the file holds.
    wgen: u64,
}

struct Live {
    data: RwLock<LiveData>,
    /// The file cache of a clean file, opened, with the generation it holds.
    cache_file: Mutex<Option<(u64, Arc<File>)>>,
}

/// See [`Drive::pinned`]. Unpins on drop.
struct Pinned {
    drive: Drive,
    ino: Ino,
    live: Arc<Live>,
}

impl std::ops::Deref for Pinned {
    type Target = Live;

    fn deref(&self) -> &Live {
        &self.live
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.drive.unpin(self.ino);
    }
}

#[derive(Default)]
struct LiveEntry {
    pins: usize,
    opens: usize,
    writers: usize,
    live: Option<Arc<Live>>,
}

struct Inner {
    config: DriveConfig,
    db: Mutex<Connection>,
    store: Arc<dyn BlobStore>,
    staging_dir: PathBuf,
    files_cache: PathBuf,
    extents_cache: PathBuf,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    live: Mutex<HashMap<Ino, LiveEntry>>,
    /// Files whose fsync waits: the uploader takes them even while open for writing.
    urgent: Mutex<HashSet<Ino>>,
    upload_wake: Notify,
    /// Files whose last writer closed with writes not yet queued for upload: the closer
    /// (`close_loop`) queues them in groups, one transaction each. Each holds a pin.
    closing: Mutex<HashSet<Ino>>,
    close_wake: Notify,
    /// Bumped after every upload commit or failure, so waiters re-check.
    progress: watch::Sender<u64>,
    /// Last upload failure per inode (generation, message), reported to fsync.
    failures: Mutex<HashMap<Ino, (u64, String)>>,
    shutdown: watch::Sender<bool>,
    /// Where reads were served from, bytes read and written (`stats.rs`).
    counters: stats::Counters,
    /// Recently used extents, verified, so that readers going through an extent in small
    /// reads do not re-read and re-hash it from disk each time.
    hot: Mutex<lru::LruCache<[u8; 32], Arc<Vec<u8>>>>,
    /// Extents being fetched, so that concurrent readers share one fetch.
    inflight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    /// The byte budget of `cache/` (`cache.rs`).
    cache: cache::DiskCache,
    /// Fetches ahead of sequential readers (`cache.rs`).
    prefetch: cache::Prefetcher,
    /// Metadata group commit and the sealer of closed files (`durable.rs`).
    durable: durable::Durability,
    /// Size and times changed by writes not yet in the database (see [`PendingAttr`]).
    pending: Mutex<HashMap<Ino, PendingAttr>>,
    /// Whether any inode may have a `security.capability` xattr (set before one is stored,
    /// never cleared while mounted).
    caps: std::sync::atomic::AtomicBool,
    /// Bytes of writes admitted by `check_space` and not yet on disk: concurrent writes (the
    /// kernel's writeback sends several at once) must not each see the same free space.
    writing: std::sync::atomic::AtomicU64,
}

/// The xattr the kernel asks for before every write(2) (to drop file capabilities).
const CAPS_XATTR: &[u8] = b"security.capability";

/// What writes changed in an inode since the database last recorded it. A write would
/// otherwise cost an SQLite commit (a WAL append) per FUSE request; these reach the database
/// when the file is closed, synced, truncated or has its attributes set ("settled"), and
/// overlay the database's values until then. After a crash, the staging file's length
/// restores the size (`recover`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingAttr {
    size: u64,
    mtime: Time,
    ctime: Time,
    /// `ctime` is the kernel's own (a setattr that named it): with the writeback cache the
    /// kernel keeps a regular file's times and what it says last is what `stat` showed, so
    /// it replaces the database's value instead of only advancing it (our clock, read in a
    /// link or rename, runs a little ahead of the kernel's coarse one).
    ctime_exact: bool,
}

impl PendingAttr {
    fn apply(&self, i: &mut Inode) {
        i.size = self.size;
        i.mtime = self.mtime;
        i.ctime = if self.ctime_exact {
            self.ctime
        } else {
            i.ctime.max(self.ctime)
        };
    }

    /// The database's `i` already says what this does.
    fn applied(&self, i: &Inode) -> bool {
        let mut j = i.clone();
        self.apply(&mut j);
        j.size == i.size && j.mtime == i.mtime && j.ctime == i.ctime
    }
}

/// Memory for verified extents kept hot: above the largest prefetch window (8 extents of
/// 4 MiB), and small enough to leave an upload's encoded blob (3.5 times its 64 MiB) room
/// in the mount's 512 MiB.
const HOT_EXTENT_BYTES: u64 = 48 << 20;

/// How long the closer waits after a close for more closes to share its transaction.
const CLOSE_GROUP: Duration = Duration::from_millis(10);

/// The filesystem core. Cheap to clone; all clones are one drive.
#[derive(Clone)]
pub struct Drive {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn check_name(name: &OsStr) -> FsResult<&[u8]> {
    let b = name.as_bytes();
    if b.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(FsError::Invalid("bad file name"));
    }
    Ok(b)
}

impl Drive {
    /// Opens (or creates) the drive in `config.data_dir` over `store`, and starts its uploader
    /// on the current tokio runtime. Uploads left pending by an earlier mount resume.
    pub async fn start(config: DriveConfig, store: Arc<dyn BlobStore>) -> FsResult<Drive> {
        let dir = config.data_dir.clone();
        let staging_dir = dir.join("staging");
        let files_cache = dir.join("cache").join("files");
        let extents_cache = dir.join("cache").join("extents");
        for d in [&dir, &staging_dir, &files_cache, &extents_cache] {
            fs::create_dir_all(d).map_err(io_err(format!("create {}", d.display())))?;
        }
        let conn = meta::open(&dir.join("meta.db"), config.root_owner)?;
        let caps = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM xattrs WHERE name = ?1)",
                [CAPS_XATTR],
                |r| r.get::<_, bool>(0),
            )
            .map_err(FsError::from)?;
        // The names just created (directories, the database and its WAL) must outlive a power
        // loss before anything relies on them.
        for d in [
            &staging_dir,
            &files_cache,
            &extents_cache,
            &dir.join("cache"),
            &dir,
        ] {
            durable::fsync_dir(d).map_err(io_err(format!("sync {}", d.display())))?;
        }
        if let Some(parent) = dir.parent() {
            let _ = durable::fsync_dir(parent);
        }
        let lost = durable::unsynced_writes_lost(&dir);
        let durable = durable::Durability::new(&dir.join("meta.db"));
        let (progress, _) = watch::channel(0);
        let (shutdown, _) = watch::channel(false);
        let hot_entries = usize::try_from(HOT_EXTENT_BYTES / config.extent_size.max(1))
            .unwrap_or(usize::MAX)
            .max(4);
        let hot_entries =
            std::num::NonZeroUsize::new(hot_entries).unwrap_or(std::num::NonZeroUsize::MIN);
        let cache_budget = config
            .cache_budget
            .unwrap_or_else(|| cache::default_cache_budget(&dir));
        let prefetch_budget = config.prefetch_budget;
        let drive = Drive {
            inner: Arc::new(Inner {
                config,
                db: Mutex::new(conn),
                store,
                staging_dir,
                files_cache,
                extents_cache,
                handles: Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
                live: Mutex::new(HashMap::new()),
                urgent: Mutex::new(HashSet::new()),
                upload_wake: Notify::new(),
                closing: Mutex::new(HashSet::new()),
                close_wake: Notify::new(),
                progress,
                failures: Mutex::new(HashMap::new()),
                shutdown,
                counters: stats::Counters::default(),
                hot: Mutex::new(lru::LruCache::new(hot_entries)),
                inflight: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                caps: std::sync::atomic::AtomicBool::new(caps),
                writing: std::sync::atomic::AtomicU64::new(0),
                cache: cache::DiskCache::new(cache_budget),
                prefetch: cache::Prefetcher::new(prefetch_budget, cache::MAX_WINDOW),
                durable,
            }),
        };
        if lost {
            // Before the cache index is loaded: the file cache is not trusted any more.
            drive.recover_lost_writes()?;
        }
        // The cache index first (recovery deletes orphans' cache files through it), its
        // budget enforced after recovery took back what is really a staging file.
        drive.cache_load();
        drive.recover()?;
        drive.cache_enforce();
        if !drive.inner.config.read_only {
            // Recovery durable before this start's marker says it is done.
            drive.sync_metadata().await?;
            durable::arm(&drive.inner.config.data_dir)
                .map_err(io_err("write the drive's start marker"))?;
            drive.seal_unsealed()?;
            let d = drive.clone();
            tokio::spawn(async move { d.upload_loop().await });
            let d = drive.clone();
            tokio::spawn(async move { d.seal_loop().await });
            let d = drive.clone();
            tokio::spawn(async move { d.close_loop().await });
            tokio::spawn(durable::checkpoint_loop(
                drive.inner.config.data_dir.join("meta.db"),
                drive.inner.shutdown.subscribe(),
            ));
        }
        Ok(drive)
    }

    /// Clean-up after an earlier mount stopped, however it stopped: inodes unlinked while open
    /// are deleted, half-made staging files removed, and staged files whose last writes were
    /// never closed are queued (their staging file holds whatever reached it).
    fn recover(&self) -> FsResult<()> {
        if let Ok(entries) = fs::read_dir(&self.inner.staging_dir) {
            for e in entries.flatten() {
                if e.file_name().as_bytes().ends_with(b".tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        if self.inner.config.read_only {
            return Ok(());
        }
        let mut db = lock(&self.inner.db);
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for ino in meta::orphans(&tx)? {
            meta::delete_inode(&tx, ino)?;
            self.remove_local_files(ino);
        }
        let queued: HashSet<Ino> = meta::queued_uploads(&tx)?.iter().map(|q| q.ino).collect();
        let staged: Vec<Inode> = {
            let mut stmt = tx.prepare("SELECT ino FROM inodes WHERE staged = 1")?;
            let inos: Vec<Ino> = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            inos.into_iter()
                .map(|i| meta::inode(&tx, i))
                .collect::<FsResult<_>>()?
        };
        // A staging file no staged inode owns: its inode's creating transaction never
        // committed (the file is made just before the commit), or it was staged and the
        // stop came before the database said so (its content is a copy of what the extents
        // hold). Either way nothing reads it.
        let owned: HashSet<Ino> = staged.iter().map(|i| i.ino).collect();
        if let Ok(entries) = fs::read_dir(&self.inner.staging_dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let orphan = name
                    .to_str()
                    .and_then(|n| n.parse::<Ino>().ok())
                    .is_some_and(|ino| !owned.contains(&ino));
                if orphan {
                    debug!(file = ?name, "removing a staging file no inode owns");
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let mut requeued = 0;
        for mut i in staged {
            let staging = self.staging_path(i.ino);
            if !staging.exists() {
                // Stopped between `try_unstage` moving the staging file to the file cache and
                // recording that: move it back. Without either, the extents are all there is
                // (and an upload of a missing file would block the queue for good).
                let cached = self.file_cache_path(i.ino, i.uploaded_gen);
                self.cache_forget(&cache::Key::File(i.ino, i.uploaded_gen));
                if fs::rename(&cached, &staging).is_err() {
                    if i.data_gen > 0 {
                        warn!(
                            ino = i.ino,
                            "staged file has no staging file; using its extents"
                        );
                    }
                    i.staged = false;
                    meta::put_inode(&tx, &i)?;
                    meta::remove_upload(&tx, i.ino)?;
                    continue;
                }
            }
            // Writes record the size in the database only when the file is closed or
            // synced; the staging file always has the file's length.
            let meta = fs::metadata(&staging).ok();
            let grown = meta.as_ref().is_some_and(|m| m.len() != i.size);
            // Not queued: its last writes were never committed (a crash between close and
            // the closer), so its staging file is the newer record of size and time.
            let uncommitted = !queued.contains(&i.ino);
            if let Some(m) = meta.filter(|_| grown || uncommitted) {
                i.size = m.len();
                if let Ok(t) = m.modified() {
                    i.mtime = i.mtime.max(Time::from_system(t));
                    i.ctime = i.ctime.max(i.mtime);
                }
            }
            if !queued.contains(&i.ino) || grown {
                i.data_gen += 1;
                meta::put_inode(&tx, &i)?;
                meta::queue_upload(&tx, i.ino, i.data_gen, i.size)?;
                requeued += 1;
            }
        }
        tx.commit()?;
        if requeued > 0 {
            info!(
                files = requeued,
                "staged files found after a stop; queued for upload"
            );
        }
        Ok(())
    }

    pub fn config(&self) -> &DriveConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.inner.store
    }

    fn staging_path(&self, ino: Ino) -> PathBuf {
        self.inner.staging_dir.join(ino.to_string())
    }

    fn file_cache_path(&self, ino: Ino, gen_: u64) -> PathBuf {
        self.inner.files_cache.join(format!("{ino}.{gen_}"))
    }

    fn extent_cache_path(&self, hash: &[u8; 32]) -> PathBuf {
        self.inner
            .extents_cache
            .join(blake3::Hash::from_bytes(*hash).to_hex().as_str())
    }

    fn remove_local_files(&self, ino: Ino) {
        lock(&self.inner.pending).remove(&ino);
        let _ = fs::remove_file(self.staging_path(ino));
        // The cache index knows every `cache/files/INO.*` (no directory scan per unlink).
        self.cache_remove_files(ino);
    }

    fn writable(&self) -> FsResult<()> {
        if self.inner.config.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Runs `f` in one IMMEDIATE transaction.
    fn txn<T>(&self, f: impl FnOnce(&Transaction<'_>) -> FsResult<T>) -> FsResult<T> {
        let mut db = lock(&self.inner.db);
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    fn read_db<T>(&self, f: impl FnOnce(&Connection) -> FsResult<T>) -> FsResult<T> {
        let db = lock(&self.inner.db);
        f(&db)
    }

    // ---- live inodes -------------------------------------------------------------------

    /// Pins `ino`'s live state (creating it), so its data lock outlives this call.
    fn pin(&self, ino: Ino) -> Arc<Live> {
        let mut map = lock(&self.inner.live);
        let e = map.entry(ino).or_default();
        e.pins += 1;
        e.live
            .get_or_insert_with(|| {
                Arc::new(Live {
                    data: RwLock::new(LiveData::default()),
                    cache_file: Mutex::new(None),
                })
            })
            .clone()
    }

    /// A pin held for as long as the returned value lives. Work that spans awaits (an
    /// upload, from taking a file to committing it) needs this: once the last pin goes, the
    /// entry is dropped and the next open makes a new [`Live`], whose lock and write
    /// generation the holder of the old one would never see.
    fn pinned(&self, ino: Ino) -> Pinned {
        Pinned {
            live: self.pin(ino),
            drive: self.clone(),
            ino,
        }
    }

    fn unpin(&self, ino: Ino) {
        let mut map = lock(&self.inner.live);
        if let Some(e) = map.get_mut(&ino) {
            e.pins = e.pins.saturating_sub(1);
            if e.pins == 0 {
                map.remove(&ino);
            }
        }
    }

    fn open_count(&self, ino: Ino) -> (usize, usize) {
        lock(&self.inner.live)
            .get(&ino)
            .map_or((0, 0), |e| (e.opens, e.writers))
    }

    fn handle(&self, fh: u64) -> FsResult<(Ino, bool)> {
        lock(&self.inner.handles)
            .get(&fh)
            .map(|h| (h.ino, h.write))
            .ok_or(FsError::BadHandle)
    }

    // ---- attributes and names ----------------------------------------------------------

    pub async fn getattr(&self, ino: Ino) -> FsResult<Inode> {
        self.read_db(|c| meta::inode(c, ino))
            .map(|i| self.overlay(i))
    }

    /// `i` with what writes changed and the database does not hold yet.
    fn overlay(&self, mut i: Inode) -> Inode {
        if let Some(p) = lock(&self.inner.pending).get(&i.ino) {
            p.apply(&mut i);
        }
        i
    }

    /// Writes what writes changed of `ino` into the database (before anything that reads
    /// and sets its size or times there).
    fn settle(&self, ino: Ino) -> FsResult<()> {
        let Some(p) = lock(&self.inner.pending).get(&ino).copied() else {
            return Ok(());
        };
        // A file created and closed unwritten: the database already says the same.
        let same = self
            .read_db(|c| meta::get_inode(c, ino))?
            .is_none_or(|i| p.applied(&i));
        if same {
            let mut pending = lock(&self.inner.pending);
            if pending.get(&ino) == Some(&p) {
                pending.remove(&ino);
            }
            return Ok(());
        }
        self.settled_txn(ino, |_, _| Ok(()))
    }

    /// Runs `f` in one transaction on `ino` as it is, what writes changed included (`f`
    /// gets it; what it stores with `put_inode` holds those changes).
    fn settled_txn<T>(
        &self,
        ino: Ino,
        f: impl FnOnce(&Transaction<'_>, Option<Inode>) -> FsResult<T>,
    ) -> FsResult<T> {
        let p = lock(&self.inner.pending).get(&ino).copied();
        let out = self.txn(|tx| {
            let mut i = meta::get_inode(tx, ino)?;
            if let (Some(i), Some(p)) = (i.as_mut(), p) {
                p.apply(i);
                meta::put_inode(tx, i)?;
            }
            f(tx, i)
        })?;
        if let Some(p) = p {
            let mut pending = lock(&self.inner.pending);
            // A write that came in meanwhile left a newer entry: that one stays.
            if pending.get(&ino) == Some(&p) {
                pending.remove(&ino);
            }
        }
        Ok(out)
    }

    pub async fn lookup(&self, parent: Ino, name: &OsStr) -> FsResult<Inode> {
        let name = name.as_bytes();
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        self.read_db(|c| {
            let p = meta::inode(c, parent)?;
            if p.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            let ino = match name {
                b"." => parent,
                b".." => p.parent.unwrap_or(ROOT),
                _ => meta::lookup(c, parent, name)?.ok_or(FsError::NotFound)?,
            };
            meta::inode(c, ino)
        })
        .map(|i| self.overlay(i))
    }

    pub async fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        self.read_db(|c| meta::symlink_target(c, ino))
    }

    /// Creates an inode of `kind` named `name` in `parent`. `perm` holds the requested
    /// permission bits; `umask` applies unless the directory has a default ACL.
    #[allow(clippy::too_many_arguments)]
    fn make(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        perm: u32,
        umask: u32,
        rdev: u32,
        target: Option<&[u8]>,
    ) -> FsResult<Inode> {
        self.make_open(caller, parent, name, kind, perm, umask, rdev, target)
            .map(|(i, _)| i)
    }

    /// [`Self::make`], also returning a new regular file's staging file, open for reading
    /// and writing.
    #[allow(clippy::too_many_arguments)]
    fn make_open(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        perm: u32,
        umask: u32,
        rdev: u32,
        target: Option<&[u8]>,
    ) -> FsResult<(Inode, Option<File>)> {
        self.writable()?;
        let name = check_name(name)?;
        self.txn(|tx| {
            let mut p = meta::inode(tx, parent)?;
            if p.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            if p.nlink == 0 {
                return Err(FsError::NotFound);
            }
            if meta::lookup(tx, parent, name)?.is_some() {
                return Err(FsError::Exists);
            }
            let mut perm = perm & 0o7777;
            let mut access_acl = None;
            let mut default_acl = None;
            let inherited = if kind == Kind::Symlink {
                None
            } else {
                meta::get_xattr(tx, parent, acl::DEFAULT)?
                    .and_then(|d| acl::inherit(&d, perm, kind == Kind::Dir))
            };
            match inherited {
                Some(i) => {
                    perm = i.perm;
                    access_acl = i.access;
                    default_acl = i.default;
                }
                None => perm &= !umask,
            }
            // As the kernel's inode_init_owner: a set-group-ID directory passes on its group
            // (and, to directories, the bit itself).
            let mut gid = caller.gid;
            if p.perm & libc::S_ISGID != 0 {
                gid = p.gid;
                if kind == Kind::Dir {
                    perm |= libc::S_ISGID;
                }
            } else if kind == Kind::Dir {
                perm &= !libc::S_ISGID;
            }
            if kind != Kind::Dir
                && perm & libc::S_ISGID != 0
                && gid != caller.gid
                && caller.uid != 0
            {
                perm &= !libc::S_ISGID;
            }
            let now = Time::now();
            let new = Inode {
                ino: 0,
                kind,
                perm,
                uid: caller.uid,
                gid,
                nlink: if kind == Kind::Dir { 2 } else { 1 },
                size: target.map_or(0, |t| t.len() as u64),
                rdev,
                atime: now,
                mtime: now,
                ctime: now,
                crtime: now,
                parent: (kind == Kind::Dir).then_some(parent),
                // A new regular file is staged from the start (its staging file is empty),
                // so that its first write costs no database round trip.
                staged: kind == Kind::File,
                data_gen: 0,
                uploaded_gen: 0,
            };
            let new = meta::insert_inode(tx, &new, target)?;
            let mut staging = None;
            if new.staged {
                // Before the commit: a staged inode must have its staging file. Should the
                // commit fail, the file belongs to no inode and nothing reads it.
                let path = self.staging_path(new.ino);
                staging = Some(
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&path)
                        .map_err(io_err(format!("create {}", path.display())))?,
                );
            }
            meta::add_dentry(tx, parent, name, new.ino)?;
            if let Some(a) = access_acl {
                meta::set_xattr(tx, new.ino, acl::ACCESS, &a)?;
            }
            if let Some(d) = default_acl {
                meta::set_xattr(tx, new.ino, acl::DEFAULT, &d)?;
            }
            if kind == Kind::Dir {
                p.nlink += 1;
            }
            p.mtime = now;
            p.ctime = now;
            meta::put_inode(tx, &p)?;
            Ok((new, staging))
        })
    }

    pub async fn mknod(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> FsResult<Inode> {
        let kind = Kind::from_mode(mode).ok_or(FsError::Invalid("unknown file type"))?;
        if kind == Kind::Dir || kind == Kind::Symlink {
            return Err(FsError::Invalid(
                "mknod cannot make directories or symlinks",
            ));
        }
        self.make(caller, parent, name, kind, mode, umask, rdev, None)
    }

    pub async fn mkdir(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> FsResult<Inode> {
        self.make(caller, parent, name, Kind::Dir, mode, umask, 0, None)
    }

    pub async fn symlink(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        target: &Path,
    ) -> FsResult<Inode> {
        let t = target.as_os_str().as_bytes();
        if t.len() > PATH_MAX {
            return Err(FsError::NameTooLong);
        }
        if t.is_empty() {
            return Err(FsError::NotFound);
        }
        self.make(caller, parent, name, Kind::Symlink, 0o777, 0, 0, Some(t))
    }

    /// Creates a regular file and opens it.
    pub async fn create(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> FsResult<(Inode, u64)> {
        let (inode, staging) =
            self.make_open(caller, parent, name, Kind::File, mode, umask, 0, None)?;
        let fh = self.open_handle(inode.ino, flags);
        let live = self.pinned(inode.ino);
        {
            let mut data = live.data.write().await;
            // Writes through this handle go straight to the staging file.
            if data.file.is_none() {
                data.file = staging.map(Arc::new);
            }
            if self.staging_file(inode.ino, &mut data).is_ok() {
                lock(&self.inner.pending).insert(
                    inode.ino,
                    PendingAttr {
                        size: 0,
                        mtime: inode.mtime,
                        ctime: inode.ctime,
                        ctime_exact: false,
                    },
                );
            }
        }
        drop(live);
        Ok((inode, fh))
    }

    pub async fn link(&self, ino: Ino, new_parent: Ino, new_name: &OsStr) -> FsResult<Inode> {
        self.writable()?;
        let name = check_name(new_name)?;
        self.txn(|tx| {
            let mut i = meta::inode(tx, ino)?;
            if i.kind == Kind::Dir {
                return Err(FsError::NotPermitted);
            }
            if i.nlink == 0 {
                return Err(FsError::NotFound);
            }
            if i.nlink >= LINK_MAX {
                return Err(FsError::TooManyLinks);
            }
            let mut p = meta::inode(tx, new_parent)?;
            if p.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            if meta::lookup(tx, new_parent, name)?.is_some() {
                return Err(FsError::Exists);
            }
            meta::add_dentry(tx, new_parent, name, ino)?;
            let now = Time::now();
            i.nlink += 1;
            i.ctime = now;
            meta::put_inode(tx, &i)?;
            p.mtime = now;
            p.ctime = now;
            meta::put_inode(tx, &p)?;
            Ok(i)
        })
        .map(|i| self.overlay(i))
    }

    /// Drops one link of `i` (already unlinked from its directory); deletes it when no link
    /// and no open handle is left. Runs inside the caller's transaction.
    fn drop_link(&self, tx: &Transaction<'_>, i: &mut Inode, now: Time) -> FsResult<bool> {
        i.nlink = if i.kind == Kind::Dir {
            0
        } else {
            i.nlink.saturating_sub(1)
        };
        i.ctime = now;
        if i.nlink == 0 && self.open_count(i.ino).0 == 0 {
            meta::delete_inode(tx, i.ino)?;
            return Ok(true);
        }
        meta::put_inode(tx, i)?;
        Ok(false)
    }

    pub async fn unlink(&self, parent: Ino, name: &OsStr) -> FsResult<()> {
        self.remove(parent, name, false)
    }

    pub async fn rmdir(&self, parent: Ino, name: &OsStr) -> FsResult<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: Ino, name: &OsStr, dir: bool) -> FsResult<()> {
        self.writable()?;
        let name = name.as_bytes();
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if dir && name == b"." {
            return Err(FsError::Invalid("cannot remove '.'"));
        }
        if dir && name == b".." {
            return Err(FsError::NotEmpty);
        }
        let deleted = self.txn(|tx| {
            let mut p = meta::inode(tx, parent)?;
            if p.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            let ino = meta::lookup(tx, parent, name)?.ok_or(FsError::NotFound)?;
            let mut i = meta::inode(tx, ino)?;
            match (dir, i.kind == Kind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !meta::dir_is_empty(tx, ino)? => return Err(FsError::NotEmpty),
                _ => {}
            }
            meta::remove_dentry(tx, parent, name)?;
            let now = Time::now();
            if dir {
                p.nlink = p.nlink.saturating_sub(1);
            }
            p.mtime = now;
            p.ctime = now;
            meta::put_inode(tx, &p)?;
            Ok(self.drop_link(tx, &mut i, now)?.then_some(ino))
        })?;
        if let Some(ino) = deleted {
            self.remove_local_files(ino);
        }
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        mode: RenameMode,
    ) -> FsResult<()> {
        self.writable()?;
        let name = name.as_bytes();
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let new_name = check_name(new_name)?;
        if name == b"." || name == b".." {
            return Err(FsError::Invalid("cannot rename '.' or '..'"));
        }
        let deleted = self.txn(|tx| {
            let now = Time::now();
            let mut p = meta::inode(tx, parent)?;
            let mut np = meta::inode(tx, new_parent)?;
            if p.kind != Kind::Dir || np.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            let src_ino = meta::lookup(tx, parent, name)?.ok_or(FsError::NotFound)?;
            let mut src = meta::inode(tx, src_ino)?;
            let dst_ino = meta::lookup(tx, new_parent, new_name)?;
            if src.kind == Kind::Dir && self.is_ancestor(tx, src_ino, new_parent)? {
                return Err(FsError::Invalid("cannot move a directory into itself"));
            }
            if mode == RenameMode::Exchange {
                let dst_ino = dst_ino.ok_or(FsError::NotFound)?;
                let mut dst = meta::inode(tx, dst_ino)?;
                if dst.kind == Kind::Dir && self.is_ancestor(tx, dst_ino, parent)? {
                    return Err(FsError::Invalid("cannot move a directory into itself"));
                }
                if src_ino == dst_ino {
                    return Ok(None);
                }
                meta::retarget_dentry(tx, parent, name, dst_ino)?;
                meta::retarget_dentry(tx, new_parent, new_name, src_ino)?;
                if parent != new_parent {
                    let (sd, dd) = (src.kind == Kind::Dir, dst.kind == Kind::Dir);
                    if sd {
                        src.parent = Some(new_parent);
                    }
                    if dd {
                        dst.parent = Some(parent);
                    }
                    if sd && !dd {
                        p.nlink -= 1;
                        np.nlink += 1;
                    } else if dd && !sd {
                        p.nlink += 1;
                        np.nlink -= 1;
                    }
                }
                src.ctime = now;
                dst.ctime = now;
                meta::put_inode(tx, &src)?;
                meta::put_inode(tx, &dst)?;
                self.touch_parents(tx, &mut p, &mut np, now)?;
                return Ok(None);
            }
            let mut deleted = None;
            if let Some(dst_ino) = dst_ino {
                if mode == RenameMode::NoReplace {
                    return Err(FsError::Exists);
                }
                if dst_ino == src_ino {
                    // Two links to one file: POSIX says do nothing.
                    return Ok(None);
                }
                let mut dst = meta::inode(tx, dst_ino)?;
                match (src.kind == Kind::Dir, dst.kind == Kind::Dir) {
                    (true, false) => return Err(FsError::NotDir),
                    (false, true) => return Err(FsError::IsDir),
                    (true, true) if !meta::dir_is_empty(tx, dst_ino)? => {
                        return Err(FsError::NotEmpty);
                    }
                    _ => {}
                }
                meta::retarget_dentry(tx, new_parent, new_name, src_ino)?;
                if dst.kind == Kind::Dir {
                    np.nlink -= 1;
                }
                if self.drop_link(tx, &mut dst, now)? {
                    deleted = Some(dst_ino);
                }
            } else {
                meta::add_dentry(tx, new_parent, new_name, src_ino)?;
            }
            meta::remove_dentry(tx, parent, name)?;
            if src.kind == Kind::Dir && parent != new_parent {
                p.nlink -= 1;
                np.nlink += 1;
                src.parent = Some(new_parent);
            }
            src.ctime = now;
            meta::put_inode(tx, &src)?;
            self.touch_parents(tx, &mut p, &mut np, now)?;
            Ok(deleted)
        })?;
        if let Some(ino) = deleted {
            self.remove_local_files(ino);
        }
        Ok(())
    }

    fn touch_parents(
        &self,
        tx: &Transaction<'_>,
        p: &mut Inode,
        np: &mut Inode,
        now: Time,
    ) -> FsResult<()> {
        if p.ino == np.ino {
            // One directory: only `np` carries changes (link counts move only between two).
            np.mtime = now;
            np.ctime = now;
            return meta::put_inode(tx, np);
        }
        for d in [p, np] {
            d.mtime = now;
            d.ctime = now;
            meta::put_inode(tx, d)?;
        }
        Ok(())
    }

    /// Whether directory `dir` is `ino` or lies below it.
    fn is_ancestor(&self, tx: &Transaction<'_>, ino: Ino, mut dir: Ino) -> FsResult<bool> {
        for _ in 0..100_000 {
            if dir == ino {
                return Ok(true);
            }
            if dir == ROOT {
                return Ok(false);
            }
            dir = meta::inode(tx, dir)?.parent.unwrap_or(ROOT);
        }
        Err(FsError::Schema("directory parents form a loop".into()))
    }

    /// A setattr of modification and change times alone on a file being written: with the
    /// writeback cache the kernel keeps those times itself and sends them before every flush.
    /// They join the file's pending size and mtime in memory (settled at close as the rest),
    /// instead of costing a commit of their own. `None`: not such a setattr.
    fn set_times_pending(&self, ino: Ino, set: &SetAttr) -> FsResult<Option<Inode>> {
        let only_times = set.mode.is_none()
            && set.uid.is_none()
            && set.gid.is_none()
            && set.size.is_none()
            && set.atime.is_none()
            && !set.kill_privileges
            && (set.mtime.is_some() || set.ctime.is_some());
        if !only_times || !lock(&self.inner.pending).contains_key(&ino) {
            return Ok(None);
        }
        self.writable()?;
        let now = Time::now();
        let i = self.read_db(|c| meta::inode(c, ino))?;
        let mut pending = lock(&self.inner.pending);
        let Some(p) = pending.get_mut(&ino) else {
            // Settled meanwhile: the slow path records it.
            return Ok(None);
        };
        if let Some(t) = set.mtime {
            p.mtime = match t {
                TimeSet::Now => now,
                TimeSet::At(t) => t,
            };
        }
        match set.ctime {
            Some(c) => {
                p.ctime = c;
                p.ctime_exact = true;
            }
            None => p.ctime = now.max(p.ctime),
        }
        drop(pending);
        Ok(Some(self.overlay(i)))
    }

    pub async fn setattr(&self, ino: Ino, set: SetAttr) -> FsResult<Inode> {
        if let Some(i) = self.set_times_pending(ino, &set)? {
            return Ok(i);
        }
        if set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.size.is_some()
            || set.atime.is_some()
            || set.mtime.is_some()
            || set.ctime.is_some()
        {
            self.writable()?;
        }
        if let Some(size) = set.size {
            self.truncate(ino, size).await?;
        }
        self.settled_txn(ino, |tx, i| {
            let mut i = i.ok_or(FsError::NotFound)?;
            let now = Time::now();
            let mut changed = false;
            if set.kill_privileges && set.mode.is_none() && i.kind != Kind::Dir {
                changed |= clear_privileges(tx, &mut i)?;
            }
            if let Some(mode) = set.mode {
                i.perm = mode & 0o7777;
                changed = true;
                // chmod rewrites the access ACL's owner, mask and other entries.
                if let Some(a) = meta::get_xattr(tx, ino, acl::ACCESS)?
                    && let Some(a) = acl::chmod(&a, i.perm)
                {
                    meta::set_xattr(tx, ino, acl::ACCESS, &a)?;
                }
            }
            if let Some(uid) = set.uid {
                i.uid = uid;
                changed = true;
            }
            if let Some(gid) = set.gid {
                i.gid = gid;
                changed = true;
            }
            if let Some(t) = set.atime {
                i.atime = match t {
                    TimeSet::Now => now,
                    TimeSet::At(t) => t,
                };
                changed = true;
            }
            if let Some(t) = set.mtime {
                i.mtime = match t {
                    TimeSet::Now => now,
                    TimeSet::At(t) => t,
                };
                changed = true;
            }
            if changed {
                i.ctime = now;
            }
            if let Some(c) = set.ctime {
                i.ctime = c;
            }
            if changed || set.ctime.is_some() {
                meta::put_inode(tx, &i)?;
            }
            Ok(i)
        })
        .map(|i| self.overlay(i))
    }

    // ---- files ---------------------------------------------------------------------------

    fn open_handle(&self, ino: Ino, flags: i32) -> u64 {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let fh = self.inner.next_fh.fetch_add(1, Ordering::Relaxed);
        self.pin(ino);
        {
            let mut map = lock(&self.inner.live);
            if let Some(e) = map.get_mut(&ino) {
                e.opens += 1;
                if write {
                    e.writers += 1;
                }
            }
        }
        lock(&self.inner.handles).insert(fh, Handle { ino, write });
        fh
    }

    pub async fn open(&self, ino: Ino, flags: i32) -> FsResult<u64> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if write {
            self.writable()?;
        }
        let i = self.getattr(ino).await?;
        match i.kind {
            Kind::Dir if write => return Err(FsError::IsDir),
            Kind::Symlink => return Err(FsError::Invalid("cannot open a symlink")),
            _ => {}
        }
        let fh = self.open_handle(ino, flags);
        if flags & libc::O_TRUNC != 0
            && write
            && i.kind == Kind::File
            && i.size > 0
            && let Err(e) = self.truncate(ino, 0).await
        {
            let _ = self.release(fh).await;
            return Err(e);
        }
        Ok(fh)
    }

    /// The staging file of `ino`, opened into `data` (it must exist: the inode is staged).
    fn staging_file(&self, ino: Ino, data: &mut LiveData) -> FsResult<Arc<File>> {
        if let Some(f) = &data.file {
            return Ok(f.clone());
        }
        let path = self.staging_path(ino);
        let f = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(format!("open staging file {}", path.display())))?,
        );
        data.file = Some(f.clone());
        Ok(f)
    }

    /// Makes `ino` staged: its whole content in a staging file (fetched if needed, unless
    /// `discard` says the old content is not wanted).
    async fn stage(&self, ino: Ino, data: &mut LiveData, discard: bool) -> FsResult<Inode> {
        let i = self.getattr(ino).await?;
        if i.staged {
            self.staging_file(ino, data)?;
            return Ok(i);
        }
        let path = self.staging_path(ino);
        let tmp = self.inner.staging_dir.join(format!("{ino}.tmp"));
        let cached = self.file_cache_path(ino, i.uploaded_gen);
        // Moved into staging or removed below: no longer the cache's.
        self.cache_forget(&cache::Key::File(ino, i.uploaded_gen));
        if !discard && fs::rename(&cached, &tmp).is_ok() {
            debug!(ino, "staged from the file cache");
        } else {
            if discard {
                // The old content is not wanted; its cache file would never be read again.
                let _ = fs::remove_file(&cached);
            }
            let f = File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
            if !discard {
                f.set_len(i.size)
                    .map_err(io_err(format!("size {}", tmp.display())))?;
                let extents = self.read_db(|c| meta::extents(c, ino))?;
                for e in extents {
                    let bytes = self.extent_bytes(ino, &e).await?;
                    f.write_all_at(&bytes, e.file_off)
                        .map_err(io_err(format!("write {}", tmp.display())))?;
                }
            }
        }
        fs::rename(&tmp, &path).map_err(io_err(format!("rename {}", path.display())))?;
        let i = self.txn(|tx| {
            let mut i = meta::inode(tx, ino)?;
            i.staged = true;
            meta::put_inode(tx, &i)?;
            Ok(i)
        })?;
        data.file = None;
        self.staging_file(ino, data)?;
        Ok(i)
    }

    /// An extent's bytes, verified against its hash: from memory, the extent cache or the
    /// network. Concurrent readers of one extent share one fetch.
    async fn extent_bytes(&self, ino: Ino, e: &Extent) -> FsResult<Arc<Vec<u8>>> {
        if let Some(b) = lock(&self.inner.hot).get(&e.hash).cloned() {
            self.inner
                .counters
                .read_from(stats::ReadSource::ExtentCache);
            self.cache_touch(&cache::Key::Extent(e.hash));
            return Ok(b);
        }
        let gate = lock(&self.inner.inflight)
            .entry(e.hash)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        let guard = gate.lock().await;
        if let Some(b) = lock(&self.inner.hot).get(&e.hash).cloned() {
            return Ok(b);
        }
        let result = self.load_extent(ino, e).await;
        if let Ok(b) = &result {
            lock(&self.inner.hot).put(e.hash, b.clone());
        }
        drop(guard);
        lock(&self.inner.inflight).remove(&e.hash);
        result
    }

    async fn load_extent(&self, ino: Ino, e: &Extent) -> FsResult<Arc<Vec<u8>>> {
        let path = self.extent_cache_path(&e.hash);
        // Reading, hashing and writing megabytes of cache would stall the async workers
        // that serve every other FUSE request: that work runs on the blocking pool.
        let (len, hash) = (e.len, e.hash);
        let p = path.clone();
        let cached = tokio::task::spawn_blocking(move || {
            let bytes = fs::read(&p).ok()?;
            let good = bytes.len() as u64 == len && *blake3::hash(&bytes).as_bytes() == hash;
            Some(good.then_some(bytes))
        })
        .await
        .ok()
        .flatten();
        match cached {
            Some(Some(bytes)) => {
                self.inner
                    .counters
                    .read_from(stats::ReadSource::ExtentCache);
                self.cache_touch(&cache::Key::Extent(e.hash));
                return Ok(Arc::new(bytes));
            }
            Some(None) => {
                warn!(path = %path.display(), "cached extent is damaged; fetching it again");
                self.cache_forget(&cache::Key::Extent(e.hash));
                let _ = fs::remove_file(&path);
            }
            None => {}
        }
        self.inner.counters.read_from(stats::ReadSource::Network);
        let bytes = self
            .inner
            .store
            .get(e.blob_id, e.blob_off..e.blob_off + e.len)
            .await?;
        let bytes = tokio::task::spawn_blocking(move || {
            let good = bytes.len() as u64 == len && *blake3::hash(&bytes).as_bytes() == hash;
            good.then(|| Arc::new(bytes))
        })
        .await
        .ok()
        .flatten()
        .ok_or(FsError::Corrupt {
            ino,
            offset: e.file_off,
        })?;
        // Awaited, so that the cache is back under its budget when the read returns. Written
        // past the page cache: the kernel already caches these bytes as the FUSE file's, and
        // filling fresh pages was a third of the mount's CPU in a cold read (`direct_io`).
        let (d, b) = (self.clone(), bytes.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let tmp = path.with_extension("tmp");
            let _ = fs::remove_file(&tmp);
            if crate::direct_io::write_new(&tmp, &[&b[..]], true).is_ok()
                && fs::rename(&tmp, &path).is_ok()
            {
                d.cache_add(cache::Key::Extent(hash));
            }
        })
        .await;
        Ok(bytes)
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let (ino, _) = self.handle(fh)?;
        let live = self.pinned(ino);
        let out = self.read_inner(fh, ino, &live, offset, size).await;
        drop(live);
        if let Ok(b) = &out {
            self.inner.counters.bytes_read(b.len());
        }
        out
    }

    async fn read_inner(
        &self,
        fh: u64,
        ino: Ino,
        live: &Live,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<u8>> {
        let data = live.data.read().await;
        let i = self.getattr(ino).await?;
        if i.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        if offset >= i.size || size == 0 {
            return Ok(Vec::new());
        }
        let end = i.size.min(offset.saturating_add(u64::from(size)));
        let len = usize::try_from(end - offset).map_err(|_| FsError::TooBig)?;
        let mut buf = vec![0u8; len];
        if i.staged {
            self.inner.counters.read_from(stats::ReadSource::Staging);
            let file = match &data.file {
                Some(f) => f.clone(),
                None => {
                    drop(data);
                    let mut d = live.data.write().await;
                    let f = self.staging_file(ino, &mut d)?;
                    drop(d);
                    return self.pread(&f, ino, offset, buf).await;
                }
            };
            return self.pread(&file, ino, offset, buf).await;
        }
        let open = lock(&live.cache_file)
            .as_ref()
            .filter(|(g, _)| *g == i.uploaded_gen)
            .map(|(_, f)| f.clone());
        let open = open.or_else(|| {
            let f = Arc::new(File::open(self.file_cache_path(ino, i.uploaded_gen)).ok()?);
            *lock(&live.cache_file) = Some((i.uploaded_gen, f.clone()));
            Some(f)
        });
        if let Some(f) = open {
            self.inner.counters.read_from(stats::ReadSource::FileCache);
            self.cache_touch(&cache::Key::File(ino, i.uploaded_gen));
            return self.pread(&f, ino, offset, buf).await;
        }
        let extents = self.read_db(|c| meta::extents(c, ino))?;
        self.prefetch(fh, ino, &extents, offset, end);
        for e in extents
            .iter()
            .filter(|e| e.file_off < end && e.file_off + e.len > offset)
        {
            let bytes = self.extent_bytes(ino, e).await?;
            let from = offset.max(e.file_off);
            let to = end.min(e.file_off + e.len);
            let src = usize::try_from(from - e.file_off).map_err(|_| FsError::TooBig)?;
            let dst = usize::try_from(from - offset).map_err(|_| FsError::TooBig)?;
            let n = usize::try_from(to - from).map_err(|_| FsError::TooBig)?;
            buf[dst..dst + n].copy_from_slice(&bytes[src..src + n]);
        }
        Ok(buf)
    }

    /// Reads `buf.len()` bytes at `offset`; bytes past the file's end on disk read as zeros.
    async fn pread(&self, f: &File, ino: Ino, offset: u64, mut buf: Vec<u8>) -> FsResult<Vec<u8>> {
        let mut done = 0;
        while done < buf.len() {
            let n = f
                .read_at(&mut buf[done..], offset + done as u64)
                .map_err(io_err(format!("read local data of inode {ino}")))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(buf)
    }

    pub async fn write(&self, fh: u64, offset: u64, bytes: &[u8]) -> FsResult<u32> {
        self.writable()?;
        let (ino, write) = self.handle(fh)?;
        if !write {
            return Err(FsError::BadHandle);
        }
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|&e| e <= i64::MAX as u64)
            .ok_or(FsError::TooBig)?;
        let _admitted = self.check_space(bytes.len() as u64)?;
        let live = self.pinned(ino);
        let result = async {
            let mut data = live.data.write().await;
            // An open staging file means the inode is staged; with a pending size, the
            // database has nothing this write needs.
            let known = lock(&self.inner.pending).get(&ino).map(|p| p.size);
            let (file, size) = match (&data.file, known) {
                (Some(f), Some(size)) => (f.clone(), size),
                _ => {
                    let i = self.stage(ino, &mut data, false).await?;
                    (self.staging_file(ino, &mut data)?, i.size)
                }
            };
            file.write_all_at(bytes, offset)
                .map_err(io_err(format!("write staging file of inode {ino}")))?;
            self.inner.counters.bytes_written(bytes.len());
            data.dirty = true;
            data.wgen += 1;
            let mtime = Time::now();
            let mut pending = lock(&self.inner.pending);
            let size = pending.get(&ino).map_or(size, |p| p.size).max(end);
            pending.insert(
                ino,
                PendingAttr {
                    size,
                    mtime,
                    ctime: mtime,
                    ctime_exact: false,
                },
            );
            drop(pending);
            u32::try_from(bytes.len()).map_err(|_| FsError::TooBig)
        }
        .await;
        drop(live);
        result
    }

    /// What the kernel leaves to us under `FUSE_HANDLE_KILLPRIV_V2` when an unprivileged
    /// caller writes or truncates a file: clear set-user-ID, set-group-ID where it means
    /// mandatory group execution (`S_IXGRP` set), and file capabilities, as a local
    /// filesystem would. Cheap when there is nothing to clear (the usual case).
    pub async fn kill_privileges(&self, ino: Ino) -> FsResult<()> {
        let i = self.getattr(ino).await?;
        let sgid_exec = libc::S_ISGID | libc::S_IXGRP;
        let kill_sgid = i.perm & sgid_exec == sgid_exec;
        let caps = self.inner.caps.load(Ordering::SeqCst);
        if i.kind != Kind::File || (i.perm & libc::S_ISUID == 0 && !kill_sgid && !caps) {
            return Ok(());
        }
        self.settled_txn(ino, |tx, i| {
            let mut i = i.ok_or(FsError::NotFound)?;
            if clear_privileges(tx, &mut i)? {
                i.ctime = Time::now();
                meta::put_inode(tx, &i)?;
            }
            Ok(())
        })
    }

    async fn truncate(&self, ino: Ino, size: u64) -> FsResult<()> {
        if size > i64::MAX as u64 {
            return Err(FsError::TooBig);
        }
        let i = self.getattr(ino).await?;
        match i.kind {
            Kind::File => {}
            Kind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid("not a regular file")),
        }
        let live = self.pinned(ino);
        let result = async {
            let mut data = live.data.write().await;
            self.stage(ino, &mut data, size == 0).await?;
            self.settle(ino)?;
            let file = self.staging_file(ino, &mut data)?;
            file.set_len(size)
                .map_err(io_err(format!("truncate staging file of inode {ino}")))?;
            data.wgen += 1;
            data.dirty = false;
            let now = Time::now();
            let changed = size != i.size;
            self.txn(|tx| {
                let mut i = meta::inode(tx, ino)?;
                i.size = size;
                if changed {
                    i.mtime = now;
                    i.ctime = now;
                }
                i.data_gen += 1;
                meta::put_inode(tx, &i)?;
                meta::queue_upload(tx, ino, i.data_gen, size)
            })
        }
        .await;
        drop(live);
        if result.is_ok() {
            self.inner.durable.closed(ino);
        }
        self.inner.upload_wake.notify_one();
        result
    }

    /// Hands what was written through this inode so far to the uploader (close and fsync).
    /// Returns the generation that holds it.
    async fn commit_writes(&self, ino: Ino, live: &Live) -> FsResult<u64> {
        let mut data = live.data.write().await;
        if !data.dirty {
            return Ok(self.getattr(ino).await?.data_gen);
        }
        let g = self.settled_txn(ino, |tx, i| {
            let mut i = i.ok_or(FsError::NotFound)?;
            i.data_gen += 1;
            meta::put_inode(tx, &i)?;
            meta::queue_upload(tx, ino, i.data_gen, i.size)?;
            Ok(i.data_gen)
        })?;
        data.dirty = false;
        drop(data);
        self.inner.durable.closed(ino);
        self.inner.upload_wake.notify_one();
        Ok(g)
    }

    /// `close(2)` of a descriptor. Its writes reached the staging file before the kernel sent
    /// this (writeback happens first), so the reply is what tells close(2) they were
    /// delivered. The upload is queued by the release that follows the last close (after a
    /// crash in between, by the next start: `recover`), so no transaction here, unless
    /// `sync_on_close` wants the content certified before close returns.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let (ino, write) = self.handle(fh)?;
        if !write || !self.inner.config.sync_on_close {
            return Ok(());
        }
        let live = self.pinned(ino);
        let g = self.commit_writes(ino, &live).await;
        drop(live);
        self.wait_uploaded(ino, g?).await
    }

    /// The last close of an open file description.
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let Some(h) = lock(&self.inner.handles).remove(&fh) else {
            return Err(FsError::BadHandle);
        };
        self.inner.prefetch.forget(fh);
        let ino = h.ino;
        let live = self.pinned(ino);
        // The handle's pin, taken at open: given back however this returns.
        let _handle = Pinned {
            drive: self.clone(),
            ino,
            live: live.live.clone(),
        };
        if h.write && live.data.read().await.dirty {
            // Queued for upload by the closer, with other closes in one transaction (the
            // kernel sends no flush, see `fuse`; close(2) does not wait for this).
            self.defer_commit(ino);
        }
        let last = {
            let mut map = lock(&self.inner.live);
            match map.get_mut(&ino) {
                Some(e) => {
                    e.opens = e.opens.saturating_sub(1);
                    if h.write {
                        e.writers = e.writers.saturating_sub(1);
                    }
                    e.opens == 0
                }
                None => true,
            }
        };
        if last {
            let mut data = live.data.write().await;
            data.file = None;
            if !data.dirty {
                self.settle(ino)?;
            }
            // Most closes find a linked file: a read says so without a write transaction.
            let unlinked = self
                .read_db(|c| meta::get_inode(c, ino))?
                .is_some_and(|i| i.nlink == 0);
            let deleted = unlinked
                && self.txn(|tx| {
                    let Some(i) = meta::get_inode(tx, ino)? else {
                        return Ok(false);
                    };
                    if i.nlink == 0 && self.open_count(ino).0 == 0 {
                        meta::delete_inode(tx, ino)?;
                        return Ok(true);
                    }
                    Ok(false)
                })?;
            if deleted {
                self.remove_local_files(ino);
            } else {
                self.try_unstage(ino, &data)?;
            }
        }
        if h.write {
            self.inner.upload_wake.notify_one();
        }
        Ok(())
    }

    /// Hands `ino`'s unqueued writes to the closer.
    fn defer_commit(&self, ino: Ino) {
        self.pin(ino);
        if !lock(&self.inner.closing).insert(ino) {
            // Already waiting, with its pin.
            self.unpin(ino);
        }
        self.inner.close_wake.notify_one();
    }

    /// The closer: queues the writes of closed files for upload, the closes of the last
    /// [`CLOSE_GROUP`] in one transaction.
    async fn close_loop(self) {
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            tokio::select! {
                () = self.inner.close_wake.notified() => {}
                _ = shutdown.changed() => break,
            }
            tokio::select! {
                () = tokio::time::sleep(CLOSE_GROUP) => {}
                _ = shutdown.changed() => {}
            }
            if let Err(e) = self.commit_closed().await {
                warn!(error = %e, "queueing closed files for upload failed; will retry");
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.inner.close_wake.notify_one();
            }
        }
        if let Err(e) = self.commit_closed().await {
            warn!(error = %e, "queueing closed files for upload at stop failed");
        }
    }

    /// Queues the writes of every file handed to the closer so far.
    pub(super) async fn commit_closed(&self) -> FsResult<()> {
        let inos: Vec<Ino> = std::mem::take(&mut *lock(&self.inner.closing))
            .into_iter()
            .collect();
        if inos.is_empty() {
            return Ok(());
        }
        // Each keeps the pin `defer_commit` took until it is dealt with.
        let lives: Vec<(Ino, Arc<Live>)> = inos.iter().map(|&i| (i, self.pin(i))).collect();
        let mut busy = Vec::new();
        let mut held = Vec::new();
        for (ino, live) in &lives {
            // A write or an upload holds it: next round (nothing here waits for a file
            // while holding another's lock).
            match live.data.try_write() {
                Ok(g) if g.dirty => held.push((*ino, g)),
                Ok(_) => {}
                Err(_) => busy.push(*ino),
            }
        }
        let attrs: Vec<Option<PendingAttr>> = {
            let pending = lock(&self.inner.pending);
            held.iter()
                .map(|(ino, _)| pending.get(ino).copied())
                .collect()
        };
        let result = self.txn(|tx| {
            let mut done = Vec::with_capacity(held.len());
            for ((ino, _), p) in held.iter().zip(&attrs) {
                let Some(mut i) = meta::get_inode(tx, *ino)? else {
                    done.push(false);
                    continue;
                };
                if let Some(p) = p {
                    p.apply(&mut i);
                }
                i.data_gen += 1;
                meta::put_inode(tx, &i)?;
                meta::queue_upload(tx, *ino, i.data_gen, i.size)?;
                done.push(true);
            }
            Ok(done)
        });
        let ok = result.is_ok();
        if let Ok(done) = &result {
            let mut pending = lock(&self.inner.pending);
            for (((ino, g), p), queued) in held.iter_mut().zip(&attrs).zip(done) {
                g.dirty = false;
                // A write that came in meanwhile left a newer entry: that one stays.
                if !queued || (p.is_some() && pending.get(ino) == p.as_ref()) {
                    pending.remove(ino);
                }
            }
        } else {
            busy.extend(held.iter().map(|(ino, _)| *ino));
        }
        let queued: Vec<Ino> = if ok {
            held.iter().map(|(ino, _)| *ino).collect()
        } else {
            Vec::new()
        };
        drop(held);
        for ino in &queued {
            self.inner.durable.closed(*ino);
        }
        // A setattr of times (the kernel's, after a link or rename of the file, say) that came
        // in during the transaction left a newer pending entry, which no close will settle
        // now: settle it here.
        if ok {
            let newer: Vec<Ino> = {
                let pending = lock(&self.inner.pending);
                queued
                    .iter()
                    .copied()
                    .filter(|ino| pending.contains_key(ino))
                    .collect()
            };
            for ino in newer {
                // Not `?`: the pins and the busy list below must be dealt with regardless (a
                // failure leaves the entry in memory, for the next settle or the stop).
                if self.open_count(ino).0 == 0
                    && let Err(e) = self.settle(ino)
                {
                    warn!(ino, error = %e, "recording a closed file's times failed");
                }
            }
        }
        {
            let mut closing = lock(&self.inner.closing);
            for ino in &busy {
                if !closing.insert(*ino) {
                    // Handed over again meanwhile, with a pin of its own.
                    self.unpin(*ino);
                }
            }
        }
        for (ino, _) in &lives {
            self.unpin(*ino);
            if !busy.contains(ino) {
                self.unpin(*ino);
            }
        }
        if !busy.is_empty() {
            self.inner.close_wake.notify_one();
        }
        if !queued.is_empty() {
            self.inner.upload_wake.notify_one();
        }
        result.map(|_| ())
    }

    /// Turns a staged file whose content is uploaded and that nobody has open back into a
    /// clean one, keeping the staging file as its file cache. `data` is the held data lock.
    fn try_unstage(&self, ino: Ino, data: &LiveData) -> FsResult<()> {
        if data.dirty || self.open_count(ino).0 > 0 {
            return Ok(());
        }
        // Usually the upload is still to come: no write transaction for that.
        let clean = self
            .read_db(|c| meta::get_inode(c, ino))?
            .is_some_and(|i| i.staged && i.uploaded_gen == i.data_gen);
        if !clean {
            return Ok(());
        }
        let cached = self.txn(|tx| {
            let Some(mut i) = meta::get_inode(tx, ino)? else {
                return Ok(None);
            };
            if !i.staged || i.uploaded_gen != i.data_gen {
                return Ok(None);
            }
            let cached = self.file_cache_path(ino, i.uploaded_gen);
            fs::rename(self.staging_path(ino), &cached)
                .map_err(io_err(format!("move staging file to {}", cached.display())))?;
            i.staged = false;
            meta::put_inode(tx, &i)?;
            Ok(Some(i.uploaded_gen))
        })?;
        // Under the cache's budget from now on (only once the file is clean in the database).
        if let Some(g) = cached {
            self.cache_add(cache::Key::File(ino, g));
        }
        Ok(())
    }

    /// fsync/fdatasync: returns once the file's content as of this call is certified.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let (ino, _) = self.handle(fh)?;
        let live = self.pinned(ino);
        let g = self.commit_writes(ino, &live).await;
        drop(live);
        let g = g?;
        self.wait_uploaded(ino, g).await
    }

    /// Waits until generation `g` of `ino` (or a later one) is certified.
    pub async fn wait_uploaded(&self, ino: Ino, g: u64) -> FsResult<()> {
        let mut rx = self.inner.progress.subscribe();
        lock(&self.inner.urgent).insert(ino);
        self.inner.upload_wake.notify_one();
        let result = loop {
            rx.borrow_and_update();
            match self.read_db(|c| meta::get_inode(c, ino))? {
                None => break Ok(()),
                Some(i) if i.uploaded_gen >= g || i.kind != Kind::File => break Ok(()),
                Some(_) => {}
            }
            if let Some((fg, msg)) = lock(&self.inner.failures).get(&ino).cloned()
                && fg >= g
            {
                warn!(ino, error = %msg, "fsync: upload failed");
                break Err(FsError::Store(crate::blobstore::BlobStoreError::Failed(
                    msg,
                )));
            }
            if *self.inner.shutdown.borrow() {
                break Err(FsError::ShuttingDown);
            }
            if rx.changed().await.is_err() {
                break Err(FsError::ShuttingDown);
            }
        };
        lock(&self.inner.urgent).remove(&ino);
        // Certified is not enough: the commit that records it must outlive a power loss too.
        result?;
        self.sync_metadata().await
    }

    /// Waits until no upload is pending (`walrusfs flush`, unmount with `--wait`).
    pub async fn wait_idle(&self) -> FsResult<()> {
        // Written and not queued yet (open, or closed with its release still on the way):
        // wanted now too.
        // Pinned, so that each is the `Live` its writers use until it is committed.
        let live: Vec<Pinned> = {
            let inos: Vec<Ino> = lock(&self.inner.live).keys().copied().collect();
            inos.into_iter().map(|ino| self.pinned(ino)).collect()
        };
        for l in live {
            if l.data.read().await.dirty
                && let Err(e) = self.commit_writes(l.ino, &l).await
            {
                // Unlinked meanwhile: nothing to upload then. Anything else means data this
                // wait must cover is not queued, so the caller hears of it.
                if !matches!(e, FsError::NotFound) {
                    return Err(e);
                }
                debug!(
                    ino = l.ino,
                    "written file unlinked before its writes were queued"
                );
            }
        }
        let mut rx = self.inner.progress.subscribe();
        loop {
            rx.borrow_and_update();
            let pending = self.read_db(|c| Ok(meta::queued_uploads(c)?.len()))?;
            if pending == 0 {
                return Ok(());
            }
            // Everything queued is wanted now, open or not.
            {
                let queued = self.read_db(meta::queued_uploads)?;
                let mut urgent = lock(&self.inner.urgent);
                urgent.extend(queued.iter().map(|q| q.ino));
            }
            self.inner.upload_wake.notify_one();
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err(FsError::ShuttingDown) },
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    // ---- directories -------------------------------------------------------------------

    pub async fn opendir(&self, ino: Ino) -> FsResult<u64> {
        let i = self.getattr(ino).await?;
        if i.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        // Counted as an open: a directory removed while open lives on (nlink 0) until its
        // last handle is released, as an unlinked open file does.
        Ok(self.open_handle(ino, libc::O_RDONLY))
    }

    /// Closes a handle from [`Drive::opendir`].
    pub async fn releasedir(&self, fh: u64) -> FsResult<()> {
        self.release(fh).await
    }

    /// Up to `limit` entries after `offset` (0 starts at the beginning; each entry's
    /// `offset` continues after it). "." and ".." come first.
    /// As [`Drive::readdir`], with each entry's attributes (for the kernel's READDIRPLUS:
    /// `ls -l` then needs no lookup per entry). Entries removed between the two reads are
    /// left out.
    pub async fn readdir_plus(
        &self,
        ino: Ino,
        offset: u64,
        limit: usize,
    ) -> FsResult<Vec<(ReadDirEntry, Inode)>> {
        let entries = self.readdir(ino, offset, limit).await?;
        let out = self.read_db(|c| {
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                if let Some(i) = meta::get_inode(c, e.ino)? {
                    out.push((e, i));
                }
            }
            Ok(out)
        })?;
        Ok(out.into_iter().map(|(e, i)| (e, self.overlay(i))).collect())
    }

    pub async fn readdir(
        &self,
        ino: Ino,
        offset: u64,
        limit: usize,
    ) -> FsResult<Vec<ReadDirEntry>> {
        self.read_db(|c| {
            let i = meta::inode(c, ino)?;
            if i.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            let mut out = Vec::new();
            if offset == 0 {
                out.push(ReadDirEntry {
                    ino,
                    offset: 1,
                    kind: Kind::Dir,
                    name: b".".to_vec(),
                });
            }
            if offset <= 1 {
                out.push(ReadDirEntry {
                    ino: i.parent.unwrap_or(ROOT),
                    offset: 2,
                    kind: Kind::Dir,
                    name: b"..".to_vec(),
                });
            }
            let after = offset.saturating_sub(2);
            for e in meta::read_dir(c, ino, after, limit.saturating_sub(out.len()))? {
                out.push(ReadDirEntry {
                    ino: e.ino,
                    offset: e.cookie + 2,
                    kind: e.kind,
                    name: e.name,
                });
            }
            Ok(out)
        })
    }

    // ---- xattrs ----------------------------------------------------------------------------

    /// Whether `getxattr(_, "security.capability")` may find something. The kernel asks for
    /// it before every write(2); while no file has one, the FUSE layer answers at once.
    pub fn no_file_capabilities(&self, name: &OsStr) -> bool {
        name.as_bytes() == CAPS_XATTR && !self.inner.caps.load(Ordering::SeqCst)
    }

    pub async fn getxattr(&self, ino: Ino, name: &OsStr) -> FsResult<Vec<u8>> {
        self.read_db(|c| {
            meta::inode(c, ino)?;
            meta::get_xattr(c, ino, name.as_bytes())?.ok_or(FsError::NoAttr)
        })
    }

    pub async fn listxattr(&self, ino: Ino) -> FsResult<Vec<u8>> {
        self.read_db(|c| {
            meta::inode(c, ino)?;
            let mut out = Vec::new();
            for n in meta::list_xattrs(c, ino)? {
                out.extend_from_slice(&n);
                out.push(0);
            }
            Ok(out)
        })
    }

    pub async fn setxattr(
        &self,
        ino: Ino,
        name: &OsStr,
        value: &[u8],
        mode: XattrMode,
    ) -> FsResult<()> {
        self.writable()?;
        let name = name.as_bytes();
        if name.is_empty() || name.len() > NAME_MAX {
            return Err(FsError::Range);
        }
        if name == CAPS_XATTR {
            self.inner.caps.store(true, Ordering::SeqCst);
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(FsError::TooBig);
        }
        let known = [&b"user."[..], b"trusted.", b"security.", b"system."];
        if !known.iter().any(|p| name.starts_with(p)) {
            return Err(FsError::NotSupported);
        }
        if name.starts_with(b"system.") {
            if name != acl::ACCESS && name != acl::DEFAULT {
                return Err(FsError::NotSupported);
            }
            if !acl::is_valid(value) {
                return Err(FsError::Invalid("malformed POSIX ACL"));
            }
        }
        self.txn(|tx| {
            let mut i = meta::inode(tx, ino)?;
            if name == acl::DEFAULT && i.kind != Kind::Dir {
                return Err(FsError::Access);
            }
            let exists = meta::get_xattr(tx, ino, name)?.is_some();
            match mode {
                XattrMode::Create if exists => return Err(FsError::Exists),
                XattrMode::Replace if !exists => return Err(FsError::NoAttr),
                _ => {}
            }
            if name == acl::ACCESS {
                // With FUSE_POSIX_ACL the filesystem keeps mode and access ACL in step: the
                // permission bits are the ACL's owner, mask (or group) and other entries, and
                // an ACL that says no more than the mode is not kept (as ext4 does).
                let (bits, minimal) = acl::mode_of(value)
                    .ok_or(FsError::Invalid("POSIX ACL lacks a required entry"))?;
                i.perm = (i.perm & !0o777) | bits;
                if minimal {
                    meta::remove_xattr(tx, ino, name)?;
                } else {
                    meta::set_xattr(tx, ino, name, value)?;
                }
            } else {
                meta::set_xattr(tx, ino, name, value)?;
            }
            i.ctime = Time::now();
            meta::put_inode(tx, &i)
        })
    }

    pub async fn removexattr(&self, ino: Ino, name: &OsStr) -> FsResult<()> {
        self.writable()?;
        self.txn(|tx| {
            let mut i = meta::inode(tx, ino)?;
            if !meta::remove_xattr(tx, ino, name.as_bytes())? {
                return Err(FsError::NoAttr);
            }
            i.ctime = Time::now();
            meta::put_inode(tx, &i)
        })
    }

    // ---- whole filesystem ------------------------------------------------------------------

    pub async fn statfs(&self) -> FsResult<StatFs> {
        let totals = self.read_db(meta::totals)?;
        let bsize = 4096u64;
        // The network's capacity is not ours to know; report a large volume so that programs
        // that check free space first (installers, rsync --max-size) go ahead, bounded by the
        // local disk that stages writes.
        let local = local_free_bytes(&self.inner.config.data_dir).unwrap_or(1 << 40);
        let used = totals.bytes.div_ceil(bsize);
        let free = local / bsize;
        Ok(StatFs {
            blocks: used + free,
            bfree: free,
            bavail: free,
            files: totals.inodes + (1 << 32),
            ffree: 1 << 32,
            bsize: bsize as u32,
            namelen: NAME_MAX as u32,
            totals,
        })
    }

    /// Stops the uploader (after the blob in flight, if any) and waits up to `grace` for
    /// pending uploads to finish first. What is still pending stays queued for the next mount.
    pub async fn shutdown(&self, grace: Duration) {
        if !self.inner.config.read_only
            && let Err(e) = self.commit_closed().await
        {
            warn!(error = %e, "queueing closed files for upload at stop failed");
        }
        if !self.inner.config.read_only && !grace.is_zero() {
            let _ = tokio::time::timeout(grace, self.wait_idle()).await;
        }
        if !self.inner.config.read_only {
            // Sizes and times that writes and setattrs left in memory (of files still open
            // at the stop, or changed after their last settle): the database keeps them.
            let inos: Vec<Ino> = lock(&self.inner.pending).keys().copied().collect();
            for ino in inos {
                if let Err(e) = self.settle(ino) {
                    warn!(ino, error = %e, "recording a file's size and times at stop failed");
                }
            }
        }
        self.inner.shutdown.send_replace(true);
        self.inner.upload_wake.notify_waiters();
        self.inner.progress.send_modify(|p| *p += 1);
        self.cache_persist();
        if !self.inner.config.read_only {
            self.seal_all().await;
        }
    }

    /// Uploads pending: (files, bytes, oldest queued time in ms since the epoch).
    pub fn pending(&self) -> FsResult<(u64, u64, Option<u64>)> {
        let q = self.read_db(meta::queued_uploads)?;
        Ok((
            q.len() as u64,
            q.iter().map(|u| u.bytes).sum(),
            q.iter().map(|u| u.queued_ms).min(),
        ))
    }
}

impl Drive {
    /// Refuses a write of `incoming` bytes with ENOSPC while the local disk's free space is
    /// below a reserve, so that what must still be written when the disk is nearly full —
    /// metadata commits, the unlink that frees space, the embedded nodes' slivers — always
    /// finds room. The reserve is 5% of the disk, between 1 MiB and 256 MiB.
    /// Admits a write of `incoming` bytes to local disk if it leaves the reserve free (kept
    /// for the metadata database, so that unlink and rename still work on a full disk). The
    /// admission lasts as long as the returned guard.
    fn check_space(&self, incoming: u64) -> FsResult<SpaceGuard<'_>> {
        let writing = &self.inner.writing;
        let before = writing.fetch_add(incoming, Ordering::SeqCst);
        let guard = SpaceGuard { writing, incoming };
        let Some((avail, total)) = local_space(&self.inner.config.data_dir) else {
            return Ok(guard);
        };
        let reserve = (total / 20).clamp(1 << 20, 256 << 20);
        if avail < reserve.saturating_add(before).saturating_add(incoming) {
            return Err(FsError::NoSpace);
        }
        Ok(guard)
    }
}

/// A write admitted by [`Drive::check_space`], counted until it is done.
struct SpaceGuard<'a> {
    writing: &'a std::sync::atomic::AtomicU64,
    incoming: u64,
}

impl Drop for SpaceGuard<'_> {
    fn drop(&mut self) {
        self.writing.fetch_sub(self.incoming, Ordering::SeqCst);
    }
}

/// Clears set-user-ID, set-group-ID where group execution is on, and the
/// `security.capability` xattr of `i` (keeping its access ACL in step with the mode), as a
/// local filesystem does on an unprivileged write, truncate or chown. Returns whether
/// anything changed; the caller stores `i` and its ctime.
fn clear_privileges(tx: &Transaction<'_>, i: &mut Inode) -> FsResult<bool> {
    let sgid_exec = libc::S_ISGID | libc::S_IXGRP;
    let mut perm = i.perm & !libc::S_ISUID;
    if perm & sgid_exec == sgid_exec {
        perm &= !libc::S_ISGID;
    }
    let had_caps = meta::remove_xattr(tx, i.ino, CAPS_XATTR)?;
    if perm == i.perm && !had_caps {
        return Ok(false);
    }
    i.perm = perm;
    if let Some(a) = meta::get_xattr(tx, i.ino, acl::ACCESS)?
        && let Some(a) = acl::chmod(&a, i.perm)
    {
        meta::set_xattr(tx, i.ino, acl::ACCESS, &a)?;
    }
    Ok(true)
}

/// (available, total) bytes of the filesystem holding `path`.
fn local_space(path: &Path) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some((s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize))
}

fn local_free_bytes(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail * s.f_frsize)
}

#[cfg(test)]
mod pack_tests;
#[cfg(test)]
mod tests;
