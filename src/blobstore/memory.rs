//! [`MemoryStore`]: blobs in memory, with Walrus's blob IDs, sizes and lifetimes, for tests of
//! the layers above.
//!
//! It follows what [`crate::client::Client`] and the ledger do, so that a drive tested against
//! it behaves the same on a network:
//! - the blob ID is computed by the real encoder (for `n_shards` shards; keep `n` small, the
//!   work grows with `n²`), so it equals the ID the same bytes get on a network of `n` shards;
//! - a put creates a blob object ending `epochs` after the current epoch, unless a live object
//!   for the same blob ID already lasts that long (then that one is returned and nothing is
//!   stored, whatever its deletability, as `Client::store` does);
//! - a blob is readable while some object for it has not expired (`end_epoch > epoch`);
//! - delete removes every live deletable object; extend extends every live object;
//! - `epochs` must be `1..=max_epochs_ahead` (the ledger's `InvalidEpochsAhead`).
//!
//! Tests steer it: [`MemoryStore::set_epoch`] moves time, [`MemoryStore::fail_next`] makes the
//! next calls fail with [`BlobStoreError::Unavailable`], [`MemoryStore::hold_puts`] keeps puts
//! waiting (an upload in flight, for as long as a test needs), [`MemoryStore::corrupt`] flips
//! stored bytes, and [`MemoryStore::stats`] counts what was asked.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use super::{BlobStore, BlobStoreError, PutOptions, StoredBlob};
use crate::encoding::{BlobId, EncodingConfig, EncodingError};
use crate::ledger::LedgerParams;

/// Operations whose failure can be injected with [`MemoryStore::fail_next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryOp {
    Put,
    Get,
    Delete,
    Extend,
}

/// What a [`MemoryStore`] was asked to do. Injected failures are counted in `injected_failures`
/// only, not in the per-operation counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStoreStats {
    /// Successful puts, including those that found the blob already stored.
    pub puts: u64,
    /// Successful puts that found a live object lasting long enough and stored nothing.
    pub puts_reused: u64,
    /// Bytes passed to successful puts.
    pub bytes_put: u64,
    /// Successful gets.
    pub gets: u64,
    /// Bytes returned by successful gets.
    pub bytes_read: u64,
    /// Successful deletes (including deletes of blobs that were gone).
    pub deletes: u64,
    /// Successful extends.
    pub extends: u64,
    /// Calls that failed because a failure was injected.
    pub injected_failures: u64,
}

#[derive(Debug, Clone)]
struct Object {
    object_id: [u8; 32],
    end_epoch: u64,
    deletable: bool,
}

#[derive(Debug)]
struct Entry {
    data: Vec<u8>,
    /// Every object ever created for the blob ID and not deleted, expired ones included (as
    /// on the ledger).
    objects: Vec<Object>,
}

#[derive(Debug)]
struct State {
    blobs: HashMap<BlobId, Entry>,
    epoch: u64,
    max_blob_size: u64,
    max_epochs_ahead: u32,
    failures: HashMap<MemoryOp, u32>,
    next_object: u64,
    stats: MemoryStoreStats,
}

impl State {
    /// Consumes one injected failure of `op`, if any is pending.
    fn take_failure(&mut self, op: MemoryOp) -> Result<(), BlobStoreError> {
        match self.failures.get_mut(&op) {
            Some(n) if *n > 0 => {
                *n -= 1;
                self.stats.injected_failures += 1;
                Err(BlobStoreError::Unavailable(format!(
                    "injected failure of {op:?} (MemoryStore::fail_next)"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Blobs in memory; see the module documentation.
#[derive(Debug)]
pub struct MemoryStore {
    config: EncodingConfig,
    state: Mutex<State>,
    /// While true, puts wait (see [`MemoryStore::hold_puts`]).
    puts_held: watch::Sender<bool>,
    puts_waiting: AtomicUsize,
}

impl MemoryStore {
    /// A store whose blob IDs are those of a network of `n_shards` shards (4..=4096; 10 keeps
    /// the encoding cheap and allows blobs of up to 1,834,952 bytes). Starts at epoch 0.
    pub fn new(n_shards: u16) -> Result<Self, EncodingError> {
        let config = EncodingConfig::new(n_shards)?;
        Ok(Self {
            state: Mutex::new(State {
                blobs: HashMap::new(),
                epoch: 0,
                max_blob_size: config.max_blob_size(),
                max_epochs_ahead: LedgerParams::default().max_epochs_ahead,
                failures: HashMap::new(),
                next_object: 1,
                stats: MemoryStoreStats::default(),
            }),
            config,
            puts_held: watch::Sender::new(false),
            puts_waiting: AtomicUsize::new(0),
        })
    }

    /// Lowers the largest blob accepted (to test how the layer above splits data). Values
    /// above what `n_shards` shards can encode are capped at that limit, since every blob ID
    /// is computed by the real encoder; [`BlobStore::max_blob_size`] reports the value in force.
    pub fn with_max_blob_size(self, max: u64) -> Self {
        self.set_max_blob_size(max);
        self
    }

    /// As [`Self::with_max_blob_size`], at any time.
    pub fn set_max_blob_size(&self, max: u64) {
        self.lock().max_blob_size = max.min(self.config.max_blob_size());
    }

    /// How many epochs ahead a put or extend may reach (the ledger's `max_epochs_ahead`,
    /// 53 by default).
    pub fn set_max_epochs_ahead(&self, max: u32) {
        self.lock().max_epochs_ahead = max;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every await-free step, so a panic elsewhere cannot
        // have left it half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The encoding whose blob IDs and encoded sizes this store reports.
    pub fn encoding_config(&self) -> EncodingConfig {
        self.config
    }

    /// Moves time to `epoch` (forward or back). Blobs whose end epoch is not after it read as
    /// not found; objects are never dropped, so moving back revives them.
    pub fn set_epoch(&self, epoch: u64) {
        self.lock().epoch = epoch;
    }

    /// Moves to the next epoch; returns it.
    pub fn advance_epoch(&self) -> u64 {
        let mut s = self.lock();
        s.epoch += 1;
        s.epoch
    }

    /// Makes the next `n` calls of `op` fail with [`BlobStoreError::Unavailable`] (replacing
    /// any count still pending for `op`). A failed put stores nothing.
    pub fn fail_next(&self, op: MemoryOp, n: u32) {
        self.lock().failures.insert(op, n);
    }

    /// `fail_next(MemoryOp::Put, n)`.
    pub fn fail_next_puts(&self, n: u32) {
        self.fail_next(MemoryOp::Put, n);
    }

    /// `fail_next(MemoryOp::Get, n)`.
    pub fn fail_next_gets(&self, n: u32) {
        self.fail_next(MemoryOp::Get, n);
    }

    /// Puts from now on wait, before doing anything, until [`Self::release_puts`].
    pub fn hold_puts(&self) {
        self.puts_held.send_replace(true);
    }

    /// Lets held puts go on.
    pub fn release_puts(&self) {
        self.puts_held.send_replace(false);
    }

    /// How many puts wait on [`Self::hold_puts`] now.
    pub fn waiting_puts(&self) -> usize {
        self.puts_waiting.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> MemoryStoreStats {
        self.lock().stats
    }

    /// Whether `blob_id` is readable now.
    pub fn contains(&self, blob_id: &BlobId) -> bool {
        let s = self.lock();
        s.blobs
            .get(blob_id)
            .is_some_and(|e| e.objects.iter().any(|o| o.end_epoch > s.epoch))
    }

    /// The readable blobs, in no particular order.
    pub fn blob_ids(&self) -> Vec<BlobId> {
        let s = self.lock();
        s.blobs
            .iter()
            .filter(|(_, e)| e.objects.iter().any(|o| o.end_epoch > s.epoch))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The longest-lived readable object of `blob_id`, as a put would report it.
    pub fn stored(&self, blob_id: &BlobId) -> Option<StoredBlob> {
        let s = self.lock();
        let entry = s.blobs.get(blob_id)?;
        let object = entry
            .objects
            .iter()
            .filter(|o| o.end_epoch > s.epoch)
            .max_by_key(|o| o.end_epoch)?;
        Some(self.stored_blob(*blob_id, entry.data.len() as u64, object))
    }

    /// Flips the bits of the byte at `offset` of a stored blob, as a store that lies would
    /// (for tests of the caller's own verification). Returns whether there was such a byte.
    pub fn corrupt(&self, blob_id: &BlobId, offset: u64) -> bool {
        let mut s = self.lock();
        let byte = s
            .blobs
            .get_mut(blob_id)
            .and_then(|e| e.data.get_mut(usize::try_from(offset).ok()?));
        match byte {
            Some(b) => {
                *b = !*b;
                true
            }
            None => false,
        }
    }

    fn stored_blob(&self, blob_id: BlobId, size: u64, object: &Object) -> StoredBlob {
        StoredBlob {
            blob_id,
            object_id: Some(object.object_id),
            owner: None,
            size,
            // Cannot fail: sizes above the encoding's maximum are refused before storing.
            encoded_size: self.config.encoded_blob_length(size).unwrap_or(0),
            end_epoch: object.end_epoch,
            deletable: object.deletable,
        }
    }

    fn check_epochs(epochs: u64, max: u32) -> Result<(), BlobStoreError> {
        if epochs == 0 || epochs > u64::from(max) {
            return Err(BlobStoreError::Failed(format!(
                "{epochs} epochs is not allowed: the period must be 1..={max} epochs ahead of the current epoch"
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl BlobStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn max_blob_size(&self) -> Result<u64, BlobStoreError> {
        Ok(self.lock().max_blob_size)
    }

    async fn put(&self, data: Vec<u8>, options: PutOptions) -> Result<StoredBlob, BlobStoreError> {
        let size = data.len() as u64;
        let mut held = self.puts_held.subscribe();
        if *held.borrow_and_update() {
            self.puts_waiting.fetch_add(1, Ordering::SeqCst);
            // Only a dropped sender ends this early, and the store owns it.
            let _ = held.wait_for(|h| !*h).await;
            self.puts_waiting.fetch_sub(1, Ordering::SeqCst);
        }
        {
            let mut s = self.lock();
            s.take_failure(MemoryOp::Put)?;
            if size > s.max_blob_size {
                return Err(BlobStoreError::TooLarge {
                    size,
                    max: s.max_blob_size,
                });
            }
            Self::check_epochs(u64::from(options.epochs), s.max_epochs_ahead)?;
        }
        // Encoding is CPU work: off the async threads, as the Walrus client does it.
        let config = self.config;
        let (blob_id, data) =
            tokio::task::spawn_blocking(move || config.blob_id(&data).map(|id| (id, data)))
                .await
                .map_err(|e| BlobStoreError::Failed(format!("encoding task failed: {e}")))?
                .map_err(|e| BlobStoreError::Failed(e.to_string()))?;

        let mut s = self.lock();
        // The epoch may have moved while encoding; judge by the current one.
        let epoch = s.epoch;
        let needed_end = epoch + u64::from(options.epochs);
        s.stats.puts += 1;
        s.stats.bytes_put += size;
        if let Some(object) = s.blobs.get(&blob_id).and_then(|e| {
            e.objects
                .iter()
                .filter(|o| o.end_epoch > epoch && o.end_epoch >= needed_end)
                .max_by_key(|o| o.end_epoch)
                .cloned()
        }) {
            s.stats.puts_reused += 1;
            return Ok(self.stored_blob(blob_id, size, &object));
        }
        let mut object_id = [0u8; 32];
        object_id[24..].copy_from_slice(&s.next_object.to_be_bytes());
        s.next_object += 1;
        let object = Object {
            object_id,
            end_epoch: needed_end,
            deletable: options.deletable,
        };
        s.blobs
            .entry(blob_id)
            .or_insert_with(|| Entry {
                data,
                objects: Vec::new(),
            })
            .objects
            .push(object.clone());
        Ok(self.stored_blob(blob_id, size, &object))
    }

    async fn get(&self, blob_id: BlobId, range: Range<u64>) -> Result<Vec<u8>, BlobStoreError> {
        let mut s = self.lock();
        s.take_failure(MemoryOp::Get)?;
        let epoch = s.epoch;
        let entry = s
            .blobs
            .get(&blob_id)
            .filter(|e| e.objects.iter().any(|o| o.end_epoch > epoch))
            .ok_or(BlobStoreError::NotFound { blob_id })?;
        let len = entry.data.len() as u64;
        if range.start > range.end || range.end > len {
            return Err(BlobStoreError::BadRange {
                blob_id,
                start: range.start,
                end: range.end,
                len,
            });
        }
        // In bounds of a `Vec`, so both fit in `usize`.
        let out = entry.data[range.start as usize..range.end as usize].to_vec();
        s.stats.gets += 1;
        s.stats.bytes_read += out.len() as u64;
        Ok(out)
    }

    async fn delete(&self, blob_id: BlobId) -> Result<(), BlobStoreError> {
        let mut s = self.lock();
        s.take_failure(MemoryOp::Delete)?;
        let epoch = s.epoch;
        if let Some(entry) = s.blobs.get_mut(&blob_id) {
            let before = entry.objects.len();
            entry
                .objects
                .retain(|o| !(o.deletable && o.end_epoch > epoch));
            let permanent = entry.objects.iter().any(|o| o.end_epoch > epoch);
            if entry.objects.len() == before && permanent {
                return Err(BlobStoreError::Failed(format!(
                    "blob {blob_id} is stored as permanent and cannot be deleted before it expires"
                )));
            }
            if entry.objects.is_empty() {
                s.blobs.remove(&blob_id);
            }
        }
        s.stats.deletes += 1;
        Ok(())
    }

    async fn extend(&self, blob_id: BlobId, epochs: u32) -> Result<u64, BlobStoreError> {
        let mut s = self.lock();
        s.take_failure(MemoryOp::Extend)?;
        let (epoch, max) = (s.epoch, s.max_epochs_ahead);
        let entry = s
            .blobs
            .get_mut(&blob_id)
            .ok_or(BlobStoreError::NotFound { blob_id })?;
        let live: Vec<&mut Object> = entry
            .objects
            .iter_mut()
            .filter(|o| o.end_epoch > epoch)
            .collect();
        if live.is_empty() {
            return Err(BlobStoreError::NotFound { blob_id });
        }
        if epochs == 0 {
            return Err(BlobStoreError::Failed(format!(
                "cannot extend blob {blob_id} by 0 epochs"
            )));
        }
        for o in &live {
            Self::check_epochs(o.end_epoch - epoch + u64::from(epochs), max)?;
        }
        let mut new_end = 0;
        for o in live {
            o.end_epoch += u64::from(epochs);
            new_end = new_end.max(o.end_epoch);
        }
        s.stats.extends += 1;
        Ok(new_end)
    }

    async fn current_epoch(&self) -> Result<u64, BlobStoreError> {
        Ok(self.lock().epoch)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const DELETABLE: PutOptions = PutOptions {
        epochs: 2,
        deletable: true,
    };
    const PERMANENT: PutOptions = PutOptions {
        epochs: 2,
        deletable: false,
    };

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn put_get_ranges_and_walrus_blob_ids() {
        let store = MemoryStore::new(10).unwrap();
        let blob = data(100_000, 1);
        let stored = store.put(blob.clone(), DELETABLE).await.unwrap();
        let config = EncodingConfig::new(10).unwrap();
        assert_eq!(stored.blob_id, config.blob_id(&blob).unwrap());
        assert_eq!(stored.size, 100_000);
        assert_eq!(
            stored.encoded_size,
            config.encoded_blob_length(100_000).unwrap()
        );
        assert_eq!(stored.end_epoch, 2);
        assert!(stored.deletable && stored.owner.is_none() && stored.object_id.is_some());
        assert_eq!(store.kind(), "memory");

        let id = stored.blob_id;
        assert_eq!(store.get(id, 0..100_000).await.unwrap(), blob);
        assert_eq!(store.get(id, 10..20).await.unwrap(), blob[10..20]);
        assert!(store.get(id, 5..5).await.unwrap().is_empty());
        for bad in [0..100_001, Range { start: 7, end: 3 }] {
            assert!(matches!(
                store.get(id, bad).await,
                Err(BlobStoreError::BadRange { len: 100_000, .. })
            ));
        }
        let unknown = config.blob_id(b"never stored").unwrap();
        let err = store.get(unknown, 0..1).await.unwrap_err();
        assert!(matches!(err, BlobStoreError::NotFound { .. }) && !err.is_transient());

        let stats = store.stats();
        assert_eq!((stats.puts, stats.bytes_put), (1, 100_000));
        assert_eq!((stats.gets, stats.bytes_read), (3, 100_010));
        assert_eq!(store.blob_ids(), vec![id]);
        assert_eq!(store.stored(&id), Some(stored));
    }

    #[tokio::test]
    async fn empty_blob() {
        let store = MemoryStore::new(10).unwrap();
        let stored = store.put(Vec::new(), DELETABLE).await.unwrap();
        assert_eq!(stored.size, 0);
        assert!(store.get(stored.blob_id, 0..0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn max_blob_size_is_enforced_and_capped_by_the_encoding() {
        let store = MemoryStore::new(10).unwrap();
        assert_eq!(store.max_blob_size().await.unwrap(), 1_834_952);
        let store = store.with_max_blob_size(1000);
        assert_eq!(store.max_blob_size().await.unwrap(), 1000);
        store.put(data(1000, 0), DELETABLE).await.unwrap();
        assert!(matches!(
            store.put(data(1001, 0), DELETABLE).await,
            Err(BlobStoreError::TooLarge {
                size: 1001,
                max: 1000
            })
        ));
        store.set_max_blob_size(u64::MAX);
        assert_eq!(store.max_blob_size().await.unwrap(), 1_834_952);
    }

    #[tokio::test]
    async fn blobs_expire_at_their_end_epoch() {
        let store = MemoryStore::new(10).unwrap();
        store.set_epoch(5);
        let id = store.put(data(10, 0), DELETABLE).await.unwrap().blob_id;
        assert_eq!(store.current_epoch().await.unwrap(), 5);
        assert_eq!(store.advance_epoch(), 6);
        assert_eq!(store.get(id, 0..10).await.unwrap(), data(10, 0));
        store.set_epoch(7);
        assert!(matches!(
            store.get(id, 0..10).await,
            Err(BlobStoreError::NotFound { .. })
        ));
        assert!(!store.contains(&id) && store.blob_ids().is_empty());
        assert!(matches!(
            store.extend(id, 1).await,
            Err(BlobStoreError::NotFound { .. })
        ));
        // Storing it again makes a new object.
        let again = store.put(data(10, 0), DELETABLE).await.unwrap();
        assert_eq!((again.blob_id, again.end_epoch), (id, 9));
    }

    #[tokio::test]
    async fn epochs_must_be_in_range() {
        let store = MemoryStore::new(10).unwrap();
        store.set_max_epochs_ahead(5);
        for epochs in [0, 6] {
            let r = store
                .put(
                    data(10, 0),
                    PutOptions {
                        epochs,
                        deletable: true,
                    },
                )
                .await;
            assert!(matches!(r, Err(BlobStoreError::Failed(_))), "{epochs}");
        }
        let id = store.put(data(10, 0), DELETABLE).await.unwrap().blob_id;
        assert_eq!(store.extend(id, 3).await.unwrap(), 5);
        assert!(matches!(
            store.extend(id, 1).await,
            Err(BlobStoreError::Failed(_))
        ));
        assert!(matches!(
            store.extend(id, 0).await,
            Err(BlobStoreError::Failed(_))
        ));
        assert_eq!(store.stored(&id).unwrap().end_epoch, 5);
    }

    #[tokio::test]
    async fn put_reuses_a_long_enough_object_like_the_walrus_client() {
        let store = MemoryStore::new(10).unwrap();
        let first = store
            .put(
                data(10, 3),
                PutOptions {
                    epochs: 4,
                    deletable: true,
                },
            )
            .await
            .unwrap();
        let second = store.put(data(10, 3), PERMANENT).await.unwrap();
        assert_eq!(second, first);
        assert_eq!(store.stats().puts_reused, 1);
        // Longer than the existing object: a new one.
        let third = store
            .put(
                data(10, 3),
                PutOptions {
                    epochs: 6,
                    deletable: true,
                },
            )
            .await
            .unwrap();
        assert_ne!(third.object_id, first.object_id);
        assert_eq!(third.end_epoch, 6);
        assert_eq!(store.extend(first.blob_id, 1).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn delete_removes_deletable_objects_only() {
        let store = MemoryStore::new(10).unwrap();
        let id = store.put(data(10, 4), DELETABLE).await.unwrap().blob_id;
        store.delete(id).await.unwrap();
        assert!(!store.contains(&id));
        // Deleting what is gone is fine.
        store.delete(id).await.unwrap();

        let id = store.put(data(10, 5), PERMANENT).await.unwrap().blob_id;
        assert!(matches!(
            store.delete(id).await,
            Err(BlobStoreError::Failed(_))
        ));
        assert!(store.contains(&id));
        // A deletable object next to a permanent one: deleting it leaves the permanent one.
        store
            .put(
                data(10, 5),
                PutOptions {
                    epochs: 3,
                    deletable: true,
                },
            )
            .await
            .unwrap();
        store.delete(id).await.unwrap();
        let left = store.stored(&id).unwrap();
        assert!(!left.deletable && left.end_epoch == 2);
        assert_eq!(store.stats().deletes, 3);
    }

    #[tokio::test]
    async fn injected_failures_are_transient_and_counted() {
        let store = MemoryStore::new(10).unwrap();
        store.fail_next_puts(2);
        for _ in 0..2 {
            let e = store.put(data(10, 6), DELETABLE).await.unwrap_err();
            assert!(e.is_transient(), "{e}");
        }
        let id = store.put(data(10, 6), DELETABLE).await.unwrap().blob_id;
        store.fail_next_gets(1);
        assert!(store.get(id, 0..1).await.unwrap_err().is_transient());
        store.get(id, 0..1).await.unwrap();
        store.fail_next(MemoryOp::Delete, 1);
        store.fail_next(MemoryOp::Extend, 1);
        assert!(store.delete(id).await.unwrap_err().is_transient());
        assert!(store.extend(id, 1).await.unwrap_err().is_transient());
        let stats = store.stats();
        assert_eq!(stats.injected_failures, 5);
        assert_eq!(
            (stats.puts, stats.gets, stats.deletes, stats.extends),
            (1, 1, 0, 0)
        );
    }

    #[tokio::test]
    async fn corrupt_flips_a_stored_byte() {
        let store = MemoryStore::new(10).unwrap();
        let id = store.put(vec![0u8; 4], DELETABLE).await.unwrap().blob_id;
        assert!(store.corrupt(&id, 2));
        assert!(!store.corrupt(&id, 4));
        assert_eq!(store.get(id, 0..4).await.unwrap(), [0, 0, 0xff, 0]);
    }

    #[tokio::test]
    async fn usable_as_a_trait_object_from_many_tasks() {
        let store: Arc<dyn BlobStore> = Arc::new(MemoryStore::new(10).unwrap());
        let tasks: Vec<_> = (0..8u8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let blob = data(1000 + usize::from(i), i);
                    let id = store.put(blob.clone(), DELETABLE).await.unwrap().blob_id;
                    assert_eq!(store.get(id, 0..blob.len() as u64).await.unwrap(), blob);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
}
