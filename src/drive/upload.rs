//! The uploader: one background task that packs queued files into blobs, stores them, and
//! records the extents once they are certified; between rounds it deletes blobs that no file
//! references any more.
//!
//! One task on purpose: a blob ID is a hash of content, so the same blob can be wanted again
//! (identical files) while it waits for deletion; doing both in one task makes that race
//! impossible.
//!
//! A file's content is read from its staging file without holding its lock; the write
//! generation (`LiveData::wgen`) read before and checked at commit tells whether the file
//! changed meanwhile, in which case nothing is recorded and the file stays queued.

use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileExt as _;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::error::{FsError, FsResult, io_err};
use super::meta::{self, BlobRecord, Extent, Ino, Kind, QueuedUpload};
use super::{Drive, Live, Pinned, lock};
use crate::blobstore::{PutOptions, StoredBlob};
use crate::encoding::BlobId;

/// A file taken for upload.
struct Piece {
    ino: Ino,
    data_gen: u64,
    wgen: u64,
    /// Pinned until the commit: see [`Drive::pinned`].
    live: Pinned,
    /// Extents; `blob` indexes the blobs of this round.
    extents: Vec<(Extent, usize)>,
}

/// Blobs whose storage ends within this many epochs are extended.
pub const RENEW_MARGIN: u64 = 2;

/// When an fsync wakes the uploader, it waits this long before taking files, so that fsyncs
/// issued together (many threads, `sync` of many files) share one blob and one
/// certification (a group commit; a certification takes far longer).
const GROUP_COMMIT: Duration = Duration::from_millis(5);

/// While waiting for a blob to fill, the uploader looks at the queue this often.
const FILL_POLL: Duration = Duration::from_millis(250);

/// What one round of the uploader did.
enum Round {
    /// Stored a batch; there may be more.
    Stored,
    /// Nothing is eligible for upload.
    Idle,
    /// Files are pending but less than a blob's worth and nobody waits for them: wait up to
    /// this long for more (wait-to-fill).
    Fill(Duration),
}

/// Blob IDs are not known until a blob is stored; extents point at this until then.
const UNSET: BlobId = BlobId([0; 32]);

/// Batches of at least this many bytes wait for the store to settle before being gathered.
const LARGE_BLOB: u64 = 8 << 20;

struct Packer {
    max: u64,
    /// Whether this batch makes a large blob (see `BlobStore::settle_before_large_put`).
    large: bool,
    buf: Vec<u8>,
    blobs: Vec<StoredBlob>,
}

impl Drive {
    pub(super) async fn upload_loop(self) {
        let mut shutdown = self.inner.shutdown.subscribe();
        let mut backoff = Duration::from_millis(250);
        // Renew at once after a start: the drive may have been unmounted for a while.
        let mut last_renewal: Option<std::time::Instant> = None;
        let mut last_compaction = std::time::Instant::now();
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let fill = match self.upload_round().await {
                Ok(Round::Stored) => {
                    backoff = Duration::from_millis(250);
                    continue;
                }
                Ok(Round::Idle) => None,
                Ok(Round::Fill(d)) => Some(d),
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "upload failed; will retry");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            if let Err(e) = self.collect_garbage().await {
                debug!(error = %e, "deleting unreferenced blobs failed; will retry");
            }
            if last_renewal.is_none_or(|t| t.elapsed() >= self.inner.config.renew_interval) {
                last_renewal = Some(std::time::Instant::now());
                if let Err(e) = self.renew_blobs().await {
                    warn!(error = %e, "extending blobs near their end epoch failed; will retry");
                }
            }
            if fill.is_none()
                && self.inner.config.compact_threshold > 0.0
                && last_compaction.elapsed() >= self.inner.config.compact_interval
            {
                last_compaction = std::time::Instant::now();
                match self.compact_once().await {
                    // More may be due: look again at the next pass.
                    Ok(true) => last_compaction -= self.inner.config.compact_interval,
                    Ok(false) => {}
                    Err(e) => debug!(error = %e, "compaction failed; will retry"),
                }
            }
            let nap = match fill {
                // Waiting for a blob to fill: closes do not cut the wait short (the queue is
                // looked at every FILL_POLL), an fsync does.
                Some(d) => {
                    let deadline = tokio::time::Instant::now() + d.min(FILL_POLL);
                    loop {
                        tokio::select! {
                            () = tokio::time::sleep_until(deadline) => break,
                            () = self.inner.upload_wake.notified() => {
                                if !lock(&self.inner.urgent).is_empty() {
                                    break;
                                }
                            }
                            _ = shutdown.changed() => break,
                        }
                    }
                    false
                }
                None => {
                    tokio::select! {
                        () = self.inner.upload_wake.notified() => true,
                        _ = shutdown.changed() => false,
                        () = tokio::time::sleep(Duration::from_secs(5)) => false,
                    }
                }
            };
            if nap || !lock(&self.inner.urgent).is_empty() {
                // Let fsyncs issued together share a blob.
                tokio::time::sleep(GROUP_COMMIT).await;
            }
        }
        debug!("uploader stopped");
    }

    /// Uploads one batch of queued files, unless it is better to wait for more.
    async fn upload_round(&self) -> FsResult<Round> {
        let queued = self.read_db(meta::queued_uploads)?;
        let urgent = lock(&self.inner.urgent).clone();
        // Files still open for writing wait for their last close, unless someone fsyncs.
        let eligible: Vec<QueuedUpload> = queued
            .into_iter()
            .filter(|q| self.open_count(q.ino).1 == 0 || urgent.contains(&q.ino))
            .collect();
        if eligible.is_empty() {
            return Ok(Round::Idle);
        }
        let max = self
            .inner
            .config
            .max_pack
            .min(self.inner.store.max_blob_size().await?)
            .max(1);
        if let Some(d) = self.fill_wait(&eligible, &urgent, max) {
            return Ok(Round::Fill(d));
        }
        // Urgent files first, then in queue order; as many as fit one blob, or one large
        // file that spans several.
        let (mut first, rest): (Vec<_>, Vec<_>) =
            eligible.into_iter().partition(|q| urgent.contains(&q.ino));
        first.extend(rest);
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        for q in first {
            if !batch.is_empty() && bytes.saturating_add(q.bytes) > max {
                break;
            }
            bytes = bytes.saturating_add(q.bytes);
            batch.push(q);
        }
        let inos: Vec<Ino> = batch.iter().map(|q| q.ino).collect();
        match self.upload_batch(batch, max).await {
            Ok(()) => Ok(Round::Stored),
            Err(e) => {
                // Transient failures (too few nodes now, a busy ledger) are retried with
                // backoff and an fsync keeps waiting for them; others are reported to it.
                let transient = matches!(&e, FsError::Store(s) if s.is_transient());
                if !e.is_routine() && !transient {
                    let msg = e.to_string();
                    let mut failures = lock(&self.inner.failures);
                    for ino in inos {
                        let g = self
                            .read_db(|c| meta::get_inode(c, ino))
                            .ok()
                            .flatten()
                            .map_or(0, |i| i.data_gen);
                        failures.insert(ino, (g, msg.clone()));
                    }
                }
                self.inner.progress.send_modify(|p| *p += 1);
                Err(e)
            }
        }
    }

    /// Wait-to-fill: how much longer to wait for more files before packing `eligible`, or
    /// `None` to pack now. Packing waits while less than a blob's worth (`max`) is pending,
    /// nobody waits for any of it (fsync, flush, unmount), files were queued within the last
    /// `pack_linger`, and the oldest has waited less than `pack_max_wait`. Each blob costs a
    /// fixed amount whatever its size (on Walrus, its metadata is stored once per shard), so
    /// a burst of small files should fill one blob rather than many.
    fn fill_wait(
        &self,
        eligible: &[QueuedUpload],
        urgent: &std::collections::HashSet<Ino>,
        max: u64,
    ) -> Option<Duration> {
        if eligible.iter().any(|q| urgent.contains(&q.ino)) {
            return None;
        }
        let bytes: u64 = eligible.iter().map(|q| q.bytes).sum();
        if bytes >= max {
            return None;
        }
        let now = meta::now_ms();
        let newest = eligible.iter().map(|q| q.queued_ms).max()?;
        let oldest = eligible.iter().map(|q| q.queued_ms).min()?;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let idle_left =
            ms(self.inner.config.pack_linger).saturating_sub(now.saturating_sub(newest));
        let age_left =
            ms(self.inner.config.pack_max_wait).saturating_sub(now.saturating_sub(oldest));
        let left = idle_left.min(age_left);
        (left > 0).then(|| Duration::from_millis(left))
    }

    async fn upload_batch(&self, batch: Vec<QueuedUpload>, max: u64) -> FsResult<()> {
        let bytes: u64 = batch.iter().map(|q| q.bytes).sum();
        let mut packer = Packer {
            max,
            large: bytes >= LARGE_BLOB,
            buf: Vec::new(),
            blobs: Vec::new(),
        };
        let mut pieces = Vec::new();
        let mut result = Ok(());
        for q in batch {
            match self.take(q, &mut packer).await {
                Ok(Some(p)) => pieces.push(p),
                Ok(None) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() && !packer.buf.is_empty() {
            result = self.put_blob(&mut packer).await;
        }
        // Commit whatever was taken even after a failure: blobs already stored are then
        // either referenced or queued for deletion, never forgotten.
        let commit = self.commit(pieces, &packer.blobs).await;
        for p in &packer.blobs {
            debug!(blob_id = %p.blob_id, size = p.size, "blob stored");
        }
        result.and(commit)
    }

    /// Takes one queued file: reads its staged content into the packer.
    async fn take(&self, q: QueuedUpload, packer: &mut Packer) -> FsResult<Option<Piece>> {
        let live = self.pinned(q.ino);
        let r = self.take_inner(q, packer, &live).await;
        r.map(|o| {
            o.map(|(data_gen, wgen, extents)| Piece {
                ino: q.ino,
                data_gen,
                wgen,
                live,
                extents,
            })
        })
    }

    #[allow(clippy::type_complexity)]
    async fn take_inner(
        &self,
        q: QueuedUpload,
        packer: &mut Packer,
        live: &Live,
    ) -> FsResult<Option<(u64, u64, Vec<(Extent, usize)>)>> {
        let (file, size, data_gen, wgen) = {
            let mut data = live.data.write().await;
            let Some(mut i) = self.read_db(|c| meta::get_inode(c, q.ino))? else {
                self.txn(|tx| meta::remove_upload(tx, q.ino))?;
                return Ok(None);
            };
            if i.kind != Kind::File || !i.staged {
                // Nothing staged: the queue entry is stale.
                self.txn(|tx| meta::remove_upload(tx, q.ino))?;
                return Ok(None);
            }
            if data.dirty {
                // Written since the last close was queued (an fsync, or a close the closer
                // has not queued yet). Take the content as it is now, with the size and
                // times the writes left in memory.
                i = self.settled_txn(q.ino, |tx, i| {
                    let mut i = i.ok_or(FsError::NotFound)?;
                    i.data_gen += 1;
                    meta::put_inode(tx, &i)?;
                    meta::queue_upload(tx, q.ino, i.data_gen, i.size)?;
                    Ok(i)
                })?;
                data.dirty = false;
            }
            if i.uploaded_gen >= i.data_gen {
                self.txn(|tx| meta::remove_upload(tx, q.ino))?;
                return Ok(None);
            }
            let file = self.staging_file(q.ino, &mut data)?;
            (file, i.size, i.data_gen, data.wgen)
        };
        let mut extents = Vec::new();
        let extent_size = self.inner.config.extent_size.max(1);
        for (start, end) in data_segments(&file, size)? {
            let mut off = start;
            while off < end {
                let room = packer.max - packer.buf.len() as u64;
                if room == 0 {
                    self.put_blob(packer).await?;
                    continue;
                }
                let len = (end - off).min(extent_size).min(room);
                let n = usize::try_from(len).map_err(|_| FsError::TooBig)?;
                if packer.buf.capacity() == 0 {
                    if packer.large {
                        self.inner.store.settle_before_large_put().await;
                    }
                    // Room for a full blob and the encoder's padding (under 1/64 of it), so
                    // that neither filling nor padding reallocates: growing by doubling
                    // held the old and the new copy of the blob at once, up to twice its
                    // size, at the mount's peak of memory. Untouched capacity costs no
                    // memory.
                    let cap = usize::try_from(packer.max + (packer.max >> 6) + (64 << 10))
                        .map_err(|_| FsError::TooBig)?;
                    packer.buf.reserve_exact(cap);
                }
                let at = packer.buf.len();
                packer.buf.resize(at + n, 0);
                read_full(&file, &mut packer.buf[at..], off)
                    .map_err(io_err(format!("read staging file of inode {}", q.ino)))?;
                let hash = *blake3::hash(&packer.buf[at..]).as_bytes();
                extents.push((
                    Extent {
                        file_off: off,
                        len,
                        blob_id: UNSET,
                        blob_off: at as u64,
                        hash,
                    },
                    packer.blobs.len(),
                ));
                off += len;
            }
        }
        Ok(Some((data_gen, wgen, extents)))
    }

    async fn put_blob(&self, packer: &mut Packer) -> FsResult<()> {
        let data = std::mem::take(&mut packer.buf);
        let stored = self.store_blob(data).await?;
        packer.blobs.push(stored);
        Ok(())
    }

    /// Stores `data` as one blob and records it, unreferenced (in `dead_blobs`) until a
    /// commit points extents at it, so that a failure later cannot forget it.
    pub(super) async fn store_blob(&self, data: Vec<u8>) -> FsResult<StoredBlob> {
        let size = data.len();
        let stored = self
            .inner
            .store
            .put(
                data,
                PutOptions {
                    epochs: self.inner.config.epochs,
                    deletable: true,
                },
            )
            .await?;
        info!(blob_id = %stored.blob_id, size, "blob certified");
        // Record it at once, so that a failure later in the round cannot forget it.
        let record = BlobRecord {
            blob_id: stored.blob_id,
            backend: self.inner.store.kind().to_string(),
            object_id: stored.object_id,
            owner: stored.owner.clone(),
            size: stored.size,
            encoded_size: stored.encoded_size,
            end_epoch: stored.end_epoch,
            deletable: stored.deletable,
        };
        self.txn(|tx| {
            meta::insert_blob(tx, &record)?;
            // Unreferenced until the commit says otherwise.
            meta::mark_dead_if_unreferenced(tx, &[record.blob_id])
        })?;
        Ok(stored)
    }

    /// Records the extents of every piece whose content is still what was uploaded.
    async fn commit(&self, pieces: Vec<Piece>, blobs: &[StoredBlob]) -> FsResult<()> {
        let mut committed = Vec::new();
        for p in pieces {
            if p.extents.iter().any(|(_, b)| *b >= blobs.len()) {
                // Part of it never reached a stored blob.
                continue;
            }
            let mut data = p.live.data.write().await;
            if data.wgen != p.wgen {
                debug!(ino = p.ino, "changed during upload; stays queued");
                continue;
            }
            let extents: Vec<Extent> = p
                .extents
                .iter()
                .map(|(e, b)| Extent {
                    blob_id: blobs[*b].blob_id,
                    ..e.clone()
                })
                .collect();
            let done = self.txn(|tx| {
                let Some(mut i) = meta::get_inode(tx, p.ino)? else {
                    return Ok(false);
                };
                if p.data_gen <= i.uploaded_gen {
                    return Ok(false);
                }
                meta::replace_extents(tx, p.ino, &extents)?;
                i.uploaded_gen = p.data_gen;
                meta::put_inode(tx, &i)?;
                // The content is unchanged since it was taken (write generation), so is its size.
                super::durable::record_uploaded(tx, p.ino, i.size)?;
                // By key: a batch commits thousands of files, each in its own transaction.
                if meta::queued_upload(tx, p.ino)?.is_some_and(|q| q.data_gen <= p.data_gen) {
                    meta::remove_upload(tx, p.ino)?;
                }
                Ok(true)
            })?;
            if done {
                lock(&self.inner.failures).remove(&p.ino);
                if self.open_count(p.ino).0 == 0 {
                    data.file = None;
                    self.try_unstage(p.ino, &data)?;
                }
                committed.push(p.ino);
            }
        }
        let ids: Vec<BlobId> = blobs.iter().map(|b| b.blob_id).collect();
        self.txn(|tx| {
            for id in &ids {
                let used = tx
                    .prepare_cached("SELECT 1 FROM extents WHERE blob_id = ?1 LIMIT 1")?
                    .exists([&id.0[..]])?;
                if used {
                    tx.prepare_cached("DELETE FROM dead_blobs WHERE blob_id = ?1")?
                        .execute([&id.0[..]])?;
                }
            }
            Ok(())
        })?;
        if !committed.is_empty() {
            debug!(files = committed.len(), "uploads committed");
        }
        self.inner.progress.send_modify(|p| *p += 1);
        Ok(())
    }

    /// Deletes blobs no extent references (a few per round).
    async fn collect_garbage(&self) -> FsResult<()> {
        let dead = self.read_db(|c| meta::dead_blobs(c, 16))?;
        if !dead.is_empty() {
            // What made them unreferenced must be durable before they go: after a power loss
            // the metadata must not point at a deleted blob.
            self.sync_metadata().await?;
        }
        for blob_id in dead {
            let used = self.read_db(|c| {
                Ok(
                    c.prepare_cached("SELECT 1 FROM extents WHERE blob_id = ?1 LIMIT 1")?
                        .exists([&blob_id.0[..]])?,
                )
            })?;
            if !used {
                match self.inner.store.delete(blob_id).await {
                    Ok(()) => debug!(%blob_id, "unreferenced blob deleted"),
                    // Someone else's object (a publisher's): it expires at its end epoch.
                    Err(e @ crate::blobstore::BlobStoreError::NotOwner { .. }) => {
                        debug!(%blob_id, reason = %e, "unreferenced blob left to expire");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            self.txn(|tx| {
                if used {
                    tx.prepare_cached("DELETE FROM dead_blobs WHERE blob_id = ?1")?
                        .execute([&blob_id.0[..]])?;
                    Ok(())
                } else {
                    meta::forget_blob(tx, &blob_id)
                }
            })?;
        }
        Ok(())
    }
}

impl Drive {
    /// Extends every referenced blob whose storage ends within [`RENEW_MARGIN`] epochs, so
    /// that nothing a file references expires while the drive is mounted. A referenced blob
    /// already expired is reported loudly: the files using it cannot be read any more.
    async fn renew_blobs(&self) -> FsResult<()> {
        let epoch = self.inner.store.current_epoch().await?;
        let due: Vec<(BlobId, u64)> = self.read_db(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT b.blob_id, b.end_epoch FROM blobs b
                 WHERE b.end_epoch <= ?1
                   AND EXISTS (SELECT 1 FROM extents e WHERE e.blob_id = b.blob_id)",
            )?;
            let rows = stmt.query_map([epoch + RENEW_MARGIN], |r| {
                let id: Vec<u8> = r.get(0)?;
                Ok((id, r.get::<_, u64>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, end) = row?;
                if let Ok(id) = <[u8; 32]>::try_from(id) {
                    out.push((BlobId(id), end));
                }
            }
            Ok(out)
        })?;
        let mut failed = None;
        for (blob_id, end) in due {
            if end <= epoch {
                let files = self.read_db(|c| super::stats::files_using(c, &blob_id, 10))?;
                warn!(%blob_id, end_epoch = end, epoch, files = %files.join(", "),
                    "a blob holding file data has expired; the files using it can no longer \
                     be read from the network (reads of the parts it held fail with EIO)");
                continue;
            }
            let new_end = match self
                .inner
                .store
                .extend(blob_id, self.inner.config.epochs)
                .await
            {
                Ok(e) => e,
                Err(e) => {
                    let files = self
                        .read_db(|c| super::stats::files_using(c, &blob_id, 10))
                        .unwrap_or_default();
                    warn!(%blob_id, end_epoch = end, epoch, files = %files.join(", "),
                        error = %e, "cannot extend a blob near its end epoch; will retry");
                    failed.get_or_insert(e);
                    continue;
                }
            };
            info!(%blob_id, end_epoch = new_end, "blob extended");
            self.txn(|tx| {
                tx.prepare_cached("UPDATE blobs SET end_epoch = ?2 WHERE blob_id = ?1")?
                    .execute(rusqlite::params![&blob_id.0[..], new_end])?;
                Ok(())
            })?;
        }
        failed.map_or(Ok(()), |e| Err(e.into()))
    }
}

/// The byte ranges of `file` below `size` that hold data (holes are skipped: they read as
/// zeros and cost nothing to store).
fn data_segments(file: &std::fs::File, size: u64) -> FsResult<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    let size_i = i64::try_from(size).map_err(|_| FsError::TooBig)?;
    while pos < size_i {
        // SAFETY: lseek on a valid descriptor has no memory effects.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            if e.raw_os_error() == Some(libc::EINVAL) {
                // No SEEK_DATA on this filesystem: all of it is data.
                out.push((pos as u64, size));
                break;
            }
            return Err(io_err("find data in a staging file")(e));
        }
        if data >= size_i {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { size_i } else { hole.min(size_i) };
        out.push((data as u64, end as u64));
        pos = end;
    }
    Ok(out)
}

/// Reads exactly `buf.len()` bytes at `offset`; past the end of the file reads zeros (a
/// concurrent truncate; the write generation catches it).
fn read_full(f: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            buf[done..].fill(0);
            break;
        }
        done += n;
    }
    Ok(())
}
