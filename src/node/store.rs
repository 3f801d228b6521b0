//! The node's durable storage: one file per sliver and per blob's metadata.
//!
//! ```text
//! data_dir/
//!   tmp/                       files being written (emptied at open)
//!   blobs/<ab>/<blob_id>/      <ab> = first byte of the blob ID in hex (256-way fan-out)
//!     metadata                 BCS BlobMetadataWithId
//!     <pair>.primary           BCS SliverData of the primary sliver of pair <pair>
//!     <pair>.secondary         BCS SliverData of the secondary sliver of pair <pair>
//! ```
//!
//! Why files and not SQLite: slivers are large (up to `(n − f) · 65534` bytes, 43 MiB at
//! n = 1000) and written once, read whole; files keep them out of a database's page cache and
//! WAL (which would write every byte twice), and the file system is the index we need. The
//! presence of a file is the only state, so there is no index to keep consistent with data.
//!
//! Durability: a file is written under `tmp/`, fsynced, and renamed into place. The rename is
//! atomic, so a name in `blobs/` always points at a complete, fsynced file: **a file exists
//! only if it was verified and its content is durable**. The name itself becomes durable when
//! the directory is fsynced: at once for metadata, and for slivers once per confirmation
//! ([`SliverStore::sync_blob`], called before the node signs), not once per sliver (a crash
//! before it may lose recently renamed slivers, never leave a partial one). Slivers
//! other than the systematic primary ones are written with `O_DIRECT` (see [`crate::direct_io::DIRECT_MIN`]). A blob's
//! directory (and its fan-out directory) is created, and both parents fsynced, when its
//! metadata is stored, which always precedes its slivers. A crash leaves at worst orphans in
//! `tmp/`, removed at the next open.
//!
//! All methods block on disk I/O; async callers run them on a blocking thread.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::direct_io::AlignedBytes;
use crate::encoding::{BlobId, BlobMetadataWithId, Sliver, SliverType};

use super::error::StoreError;

/// Durable sliver and metadata storage under one directory.
#[derive(Debug)]
pub struct SliverStore {
    root: PathBuf,
    tmp: PathBuf,
    blobs: PathBuf,
    /// Distinguishes temporary files of concurrent writes in this process.
    next_tmp: AtomicU64,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// fsyncs a directory, making the names created in or renamed into it durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn create_dir_if_missing(dir: &Path) -> Result<(), StoreError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// Sliver files at least this large are served from a mapping of their page-cache pages when
/// all of them are cached (see [`map_if_cached`]).
const MAP_MIN: usize = 256 << 10;

/// Maps `file` read-only if every page of it is in the page cache, else `None`.
///
/// Why: a sliver read into a buffer is copied out of the page cache into fresh memory, and
/// the fresh pages' faults cost more than the copy; both were over half of a node's CPU time
/// when serving the systematic slivers of a read. A mapping of cached pages costs neither:
/// the socket copies straight from the page cache.
///
/// Only cached files are mapped because a mapping turns a read error into `SIGBUS`, which
/// would take the node down: with every page cached, there is nothing left to read from the
/// disk. (A page evicted between the check and the send is read back like any other; only a
/// disk failure in that moment would still be fatal.) Files written with `O_DIRECT` are not
/// cached, so they are read as before, which caches them for the next read.
fn map_if_cached(file: &File) -> Option<memmap2::Mmap> {
    // SAFETY: sliver files are never written after they are renamed into place, nor
    // truncated (a deleted blob's files are unlinked, which leaves a mapping intact), so the
    // mapped bytes cannot change under the `&[u8]` the mapping hands out.
    let map = unsafe { memmap2::Mmap::map(file) }.ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|&p| p > 0)
        .unwrap_or(4096);
    let mut resident = vec![0u8; map.len().div_ceil(page)];
    // SAFETY: `map` is a live mapping of `map.len()` bytes, page-aligned, and `resident` has
    // one byte per page of it, as mincore(2) requires.
    let r = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            map.len(),
            resident.as_mut_ptr(),
        )
    };
    (r == 0 && resident.iter().all(|b| b & 1 == 1)).then_some(map)
}

fn sliver_file_name(pair: u16, sliver_type: SliverType) -> String {
    format!("{pair}.{sliver_type}")
}

impl SliverStore {
    /// Opens (creating if needed) the store in `root`, and removes leftovers of interrupted
    /// writes.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = root.as_ref().to_path_buf();
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        let tmp = root.join("tmp");
        let blobs = root.join("blobs");
        create_dir_if_missing(&tmp)?;
        create_dir_if_missing(&blobs)?;
        // Make the directories' names durable (whether this call or a crashed one made them).
        sync_dir(&root)?;
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty())
            && let Err(e) = sync_dir(parent)
        {
            tracing::warn!(error = %e, "cannot fsync the data directory's parent");
        }
        // Whatever is in tmp/ was never renamed into place, so nothing refers to it.
        for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let path = entry.map_err(io_err(&tmp))?.path();
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover temporary file");
            }
        }
        Ok(Self {
            root,
            tmp,
            blobs,
            next_tmp: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_dir(&self, blob_id: &BlobId) -> PathBuf {
        self.blobs
            .join(format!("{:02x}", blob_id.0[0]))
            .join(blob_id.to_string())
    }

    fn metadata_path(&self, blob_id: &BlobId) -> PathBuf {
        self.blob_dir(blob_id).join("metadata")
    }

    fn sliver_path(&self, blob_id: &BlobId, pair: u16, sliver_type: SliverType) -> PathBuf {
        self.blob_dir(blob_id)
            .join(sliver_file_name(pair, sliver_type))
    }

    /// Writes `dir/name` with `create` (which makes a new file at the path it is given and
    /// returns it unsynced), unless that file exists already: content fsynced, then renamed
    /// into place, then (if `sync_name`) `dir` fsynced. Returns whether it was written.
    fn write_durably(
        &self,
        dir: &Path,
        name: &str,
        create: impl FnOnce(&Path) -> io::Result<File>,
        sync_name: bool,
    ) -> Result<bool, StoreError> {
        let dest = dir.join(name);
        if dest.exists() {
            return Ok(false);
        }
        let tmp = self.tmp.join(format!(
            "{}-{}.tmp",
            std::process::id(),
            self.next_tmp.fetch_add(1, Ordering::Relaxed)
        ));
        let written = create(&tmp).and_then(|f| f.sync_all());
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &dest)) {
            // Best effort: a leftover is also removed at the next open.
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&dest)(e));
        }
        if sync_name {
            sync_dir(dir)?;
        }
        Ok(true)
    }

    fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
        match fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    /// Stores verified metadata; returns `false` if it was stored already.
    pub fn put_metadata(&self, metadata: &BlobMetadataWithId) -> Result<bool, StoreError> {
        let dir = self.blob_dir(&metadata.blob_id);
        if self.metadata_path(&metadata.blob_id).exists() {
            return Ok(false);
        }
        // Both levels are fsynced every time, not only when this call created them: a crash
        // may have left a directory created but its name not yet durable.
        let fanout = dir.parent().unwrap_or(&self.blobs).to_path_buf();
        create_dir_if_missing(&fanout)?;
        sync_dir(&self.blobs)?;
        create_dir_if_missing(&dir)?;
        sync_dir(&fanout)?;
        let bcs = metadata.to_bcs();
        self.write_durably(
            &dir,
            "metadata",
            |path| crate::direct_io::write_new(path, &[&bcs], false),
            true,
        )
    }

    pub fn has_metadata(&self, blob_id: &BlobId) -> bool {
        self.metadata_path(blob_id).exists()
    }

    /// The stored metadata of `blob_id`, if any. It was verified before it was stored.
    pub fn get_metadata(&self, blob_id: &BlobId) -> Result<Option<BlobMetadataWithId>, StoreError> {
        let path = self.metadata_path(blob_id);
        let Some(bytes) = Self::read_optional(&path)? else {
            return Ok(None);
        };
        let metadata = BlobMetadataWithId::from_bcs(&bytes).map_err(|e| StoreError::Corrupt {
            what: "metadata",
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if metadata.blob_id != *blob_id {
            return Err(StoreError::Corrupt {
                what: "metadata",
                path,
                reason: format!("it is for blob {}", metadata.blob_id),
            });
        }
        Ok(Some(metadata))
    }

    /// Stores a verified sliver of pair `pair`; returns `false` if it was stored already.
    /// The blob's metadata must be stored first (it creates the blob's directory).
    pub fn put_sliver(
        &self,
        blob_id: &BlobId,
        pair: u16,
        sliver: &Sliver,
    ) -> Result<bool, StoreError> {
        let mut bcs = crate::direct_io::aligned_with_capacity(sliver.data.len() + 9);
        bcs.extend_from_slice(&sliver.to_bcs());
        self.put_sliver_bcs(blob_id, pair, sliver.sliver_type, &mut bcs, false)
    }

    /// Stores the BCS bytes `bcs` of a verified sliver of pair `pair` (the file is exactly
    /// these bytes); returns `false` if it was stored already. `keep_cached`: write through
    /// the page cache, so that the sliver is served from memory next time (the systematic
    /// primary slivers, which every read of the blob fetches); otherwise the file is written
    /// with `O_DIRECT`, in one write straight from `bcs` (the other slivers are read only to
    /// recover, and copying them into the page cache is most of the CPU a buffered write
    /// costs). `bcs` is left as it was.
    pub fn put_sliver_bcs(
        &self,
        blob_id: &BlobId,
        pair: u16,
        sliver_type: SliverType,
        bcs: &mut AlignedBytes,
        keep_cached: bool,
    ) -> Result<bool, StoreError> {
        let dir = self.blob_dir(blob_id);
        if !self.has_metadata(blob_id) {
            return Err(StoreError::Corrupt {
                what: "blob directory",
                path: dir,
                reason: "a sliver was stored before the blob's metadata".into(),
            });
        }
        self.write_durably(
            &dir,
            &sliver_file_name(pair, sliver_type),
            |path| crate::direct_io::write_new_aligned(path, bcs, !keep_cached),
            // The blob's directory is fsynced once before a confirmation ([`Self::sync_blob`]),
            // not once per sliver.
            false,
        )
    }

    /// Makes the names of the blob's files durable (fsyncs its directory). Their contents
    /// are durable from the moment they have their names; a confirmation additionally needs
    /// the names to survive a crash, so the node calls this before it signs one.
    pub fn sync_blob(&self, blob_id: &BlobId) -> Result<(), StoreError> {
        sync_dir(&self.blob_dir(blob_id))
    }

    pub fn has_sliver(&self, blob_id: &BlobId, pair: u16, sliver_type: SliverType) -> bool {
        self.sliver_path(blob_id, pair, sliver_type).exists()
    }

    /// The stored BCS bytes of a sliver, if any.
    pub fn get_sliver_bcs(
        &self,
        blob_id: &BlobId,
        pair: u16,
        sliver_type: SliverType,
    ) -> Result<Option<Bytes>, StoreError> {
        let path = self.sliver_path(blob_id, pair, sliver_type);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len >= MAP_MIN as u64
            && let Some(map) = map_if_cached(&file)
        {
            return Ok(Some(Bytes::from_owner(map)));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        io::Read::read_to_end(&mut &file, &mut bytes).map_err(io_err(&path))?;
        Ok(Some(bytes.into()))
    }

    /// Of the slivers of `pairs` (both types each) and the metadata, those not stored.
    pub fn missing(&self, blob_id: &BlobId, pairs: &[u16]) -> Vec<String> {
        let mut missing = Vec::new();
        if !self.has_metadata(blob_id) {
            missing.push("metadata".to_string());
        }
        for &pair in pairs {
            for t in [SliverType::Primary, SliverType::Secondary] {
                if !self.has_sliver(blob_id, pair, t) {
                    missing.push(format!("{t} sliver of pair {pair}"));
                }
            }
        }
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::EncodingConfig;

    #[test]
    fn round_trip_idempotence_and_tmp_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let config = EncodingConfig::new(7).unwrap();
        let blob: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let encoded = config.encode(&blob).unwrap();
        let id = encoded.metadata.blob_id;

        let store = SliverStore::open(dir.path()).unwrap();
        let s = encoded.primary_sliver(2);
        // Slivers need the metadata first.
        assert!(store.put_sliver(&id, 2, &s).is_err());
        assert!(store.put_metadata(&encoded.metadata).unwrap());
        assert!(!store.put_metadata(&encoded.metadata).unwrap());
        assert!(store.put_sliver(&id, 2, &s).unwrap());
        assert!(!store.put_sliver(&id, 2, &s).unwrap());
        assert_eq!(
            store
                .get_sliver_bcs(&id, 2, SliverType::Primary)
                .unwrap()
                .as_deref(),
            Some(&s.to_bcs()[..])
        );
        assert_eq!(
            store.get_sliver_bcs(&id, 2, SliverType::Secondary).unwrap(),
            None
        );
        assert_eq!(store.missing(&id, &[2]), vec!["secondary sliver of pair 2"]);
        assert!(
            store
                .put_sliver(&id, 2, &encoded.secondary_sliver(2))
                .unwrap()
        );
        assert!(store.missing(&id, &[2]).is_empty());

        // A leftover temporary file disappears at the next open; stored data stays.
        fs::write(dir.path().join("tmp/orphan.tmp"), b"x").unwrap();
        drop(store);
        let store = SliverStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(
            store.get_metadata(&id).unwrap(),
            Some(encoded.metadata.clone())
        );
        assert!(store.has_sliver(&id, 2, SliverType::Primary));
    }

    /// Large sliver files are served from a mapping when their pages are cached, else read;
    /// both give the stored bytes, and a mapping outlives the file's deletion.
    #[test]
    fn large_slivers_are_served_mapped_or_read() {
        let dir = tempfile::tempdir().unwrap();
        let config = EncodingConfig::new(7).unwrap();
        let blob: Vec<u8> = (0..900_000u32).map(|i| (i * 13 + i / 7) as u8).collect();
        let encoded = config.encode(&blob).unwrap();
        let id = encoded.metadata.blob_id;
        let store = SliverStore::open(dir.path()).unwrap();
        store.put_metadata(&encoded.metadata).unwrap();
        for pair in [0u16, 6] {
            // Pair 0's primary sliver is systematic (written through the page cache), pair
            // 6's is not (written with O_DIRECT where the file system allows it).
            let s = encoded.primary_sliver(usize::from(pair));
            assert!(s.to_bcs().len() >= MAP_MIN, "the test needs a large sliver");
            store.put_sliver(&id, pair, &s).unwrap();
            for _ in 0..2 {
                let got = store
                    .get_sliver_bcs(&id, pair, SliverType::Primary)
                    .unwrap()
                    .unwrap();
                assert!(got[..] == s.to_bcs()[..], "pair {pair}: bytes differ");
            }
        }

        // A file read once is cached, so it is mapped; the mapping keeps the bytes after the
        // file is unlinked (as when a blob is deleted while a read is being sent).
        let path = store.sliver_path(&id, 0, SliverType::Primary);
        let want = fs::read(&path).unwrap();
        let map = map_if_cached(&File::open(&path).unwrap()).expect("a cached file is mapped");
        fs::remove_file(&path).unwrap();
        assert!(map[..] == want[..]);
        assert_eq!(
            store.get_sliver_bcs(&id, 0, SliverType::Primary).unwrap(),
            None
        );

        // Pages dropped from the cache: read, not mapped, and still the stored bytes.
        let path = store.sliver_path(&id, 6, SliverType::Primary);
        let file = File::open(&path).unwrap();
        // SAFETY: a valid descriptor; the advice only drops clean cached pages.
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        let got = store
            .get_sliver_bcs(&id, 6, SliverType::Primary)
            .unwrap()
            .unwrap();
        assert!(got[..] == encoded.primary_sliver(6).to_bcs()[..]);
    }

    #[test]
    fn corrupt_metadata_file_is_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let config = EncodingConfig::new(4).unwrap();
        let encoded = config.encode(b"abc").unwrap();
        let id = encoded.metadata.blob_id;
        let store = SliverStore::open(dir.path()).unwrap();
        store.put_metadata(&encoded.metadata).unwrap();
        fs::write(store.metadata_path(&id), b"garbage").unwrap();
        assert!(matches!(
            store.get_metadata(&id),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
