//! [`EncryptedStore`]: a [`BlobStore`] that encrypts every blob before another store keeps it.
//!
//! Every Walrus blob is public, so a drive's content must leave the machine encrypted. This
//! wrapper sits in front of any backend and keeps the trait's meaning in plaintext terms: the
//! drive puts plaintext, reads plaintext byte ranges, and never sees the framing.
//!
//! # Blob format (version 1)
//!
//! ```text
//! header (56 bytes)  magic "WFSCRYPT" | version 1 | 3 zero bytes | frame size u32 LE
//!                    | plaintext length u64 LE | salt (32 random bytes)
//! frame 0            ciphertext of plaintext [0, F)      | 16-byte Poly1305 tag
//! frame 1            ciphertext of plaintext [F, 2F)     | tag
//! ...
//! last frame         ciphertext of the rest (1..=F bytes; 0 for an empty blob) | tag
//! ```
//!
//! - AEAD: XChaCha20-Poly1305. The per-blob key is BLAKE3 `derive_key` over the drive key
//!   and the blob's random salt, so no two blobs share a key and the frame index alone is a
//!   unique nonce (the random salt also makes the same plaintext stored twice, or by two
//!   drives, unrelated ciphertext).
//! - The associated data of frame `i` is the whole header, `i` (u64 LE) and a last-frame flag.
//!   So a flipped bit anywhere, frames reordered or swapped between blobs, a header from
//!   another blob, a blob cut after any frame, or the wrong key all fail authentication; no
//!   byte is returned unless its frame authenticated under this blob's header.
//! - An empty blob still has one (empty) frame, so even it proves the key and header.
//!
//! # Reads stay range reads
//!
//! `get(blob, a..b)` reads the header (cached per blob ID in a small LRU once a frame has
//! authenticated under it, so a sequential reader fetches it once) and then only the frames
//! covering `a..b`, in one ranged get: at most two inner gets per call, one when the header is
//! cached. An empty range still authenticates the frame at its position.
//!
//! # Sizes
//!
//! [`StoredBlob::size`] from this store is the **plaintext** length: the bytes `get`
//! addresses, which is what the drive's extents (`blob_off`, `len`) and its compaction
//! arithmetic (live bytes against blob size) count. [`StoredBlob::encoded_size`] is the inner
//! store's, i.e. what the network bills for the ciphertext. [`BlobStore::max_blob_size`] is
//! the largest plaintext whose ciphertext fits the inner maximum, exactly. Out-of-range gets
//! report [`BlobStoreError::BadRange`] in plaintext coordinates.
//!
//! # Errors
//!
//! Authentication failures are [`BlobStoreError::Failed`] (not transient: the same bytes will
//! fail again) whose message names the blob, the frame and "wrong drive key or tampered blob",
//! and are logged at error level; the drive maps them to `EIO`.

use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chacha20poly1305::{AeadInOut as _, KeyInit as _};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use lru::LruCache;
use tracing::error;
use zeroize::Zeroizing;

use super::key::{DriveKey, KeyId};
use super::{BlobStore, BlobStoreError, PutOptions, StoredBlob};
use crate::encoding::BlobId;

/// Plaintext bytes per frame of the blobs this store writes.
pub const FRAME_SIZE: u32 = 64 * 1024;
/// Bytes of the header that starts every encrypted blob.
pub const HEADER_LEN: u64 = 56;
/// Bytes of the authentication tag after every frame.
pub const TAG_LEN: u64 = 16;
/// What the drive's `blobs.framing` column says for blobs of this format.
pub const FRAMING: &str = "xchacha20poly1305-v1";

const MAGIC: [u8; 8] = *b"WFSCRYPT";
const VERSION: u8 = 1;
/// Frames larger than this are refused when reading, so a forged header cannot make a read
/// allocate without bound.
const MAX_FRAME_SIZE: u32 = 16 << 20;
/// Fixed, unique to this use, never reused: the BLAKE3 context of per-blob keys.
const BLOB_KEY_CONTEXT: &str = "walrusfs 2025-06 encrypted blob key v1";
/// Headers (with their derived keys) kept per store: ~200 bytes each.
const HEADER_CACHE: NonZeroUsize = match NonZeroUsize::new(4096) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};
/// Crypto on more bytes than this runs on the blocking pool. Measured on this machine kind:
/// sealing 64 MiB took 255 ms with a load of 9 on 2 cores, i.e. about 1.2 GB/s for a core of
/// its own; so 128 KiB (two frames) costs ~100 µs, less than a hop to the pool and short
/// enough not to stall an async worker. The drive's network reads are whole extents (4 MiB
/// by default) and its puts up to 64 MiB (~50 ms): those go to the pool.
const IN_PLACE_LIMIT: u64 = 128 * 1024;

/// What can go wrong in the encryption layer itself; becomes a [`BlobStoreError`].
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error(
        "blob {blob_id}: frame {frame} of {frames} failed authentication: wrong drive key or \
         tampered blob (this drive's key is {key_id})"
    )]
    Auth {
        blob_id: BlobId,
        frame: u64,
        frames: u64,
        key_id: KeyId,
    },
    #[error(
        "blob {blob_id} is not an encrypted walrusfs blob ({reason}): it was stored without \
         encryption or by another program, or it was tampered with"
    )]
    NotEncrypted { blob_id: BlobId, reason: String },
    #[error(
        "blob {blob_id} says it uses encryption format version {version}, but this walrusfs \
         reads only version {VERSION}: upgrade walrusfs (or the blob was tampered with)"
    )]
    Version { blob_id: BlobId, version: u8 },
    #[error(
        "blob {blob_id} is cut short: its header describes {expected} bytes but the store holds \
         {len}: tampered blob"
    )]
    Truncated {
        blob_id: BlobId,
        expected: u64,
        len: u64,
    },
    #[error("no randomness from the operating system for a blob's salt: {0}")]
    Random(String),
    #[error("a {size}-byte blob is too large to encrypt in one piece on this machine")]
    TooLarge { size: u64 },
    #[error("the encryption task failed: {0}")]
    Task(String),
}

impl From<CryptError> for BlobStoreError {
    fn from(e: CryptError) -> Self {
        BlobStoreError::Failed(e.to_string())
    }
}

/// Length of the ciphertext of `len` plaintext bytes cut into frames of `frame` bytes, or
/// `None` if it does not fit a `u64`.
pub fn ciphertext_len(len: u64, frame: u32) -> Option<u64> {
    let frames = frame_count(len, frame);
    HEADER_LEN
        .checked_add(len)?
        .checked_add(frames.checked_mul(TAG_LEN)?)
}

/// The largest plaintext whose ciphertext (frames of `frame` bytes) is at most `max` bytes;
/// 0 if not even an empty blob fits (the inner store's put then reports it).
pub fn plaintext_max(max: u64, frame: u32) -> u64 {
    let Some(body) = max.checked_sub(HEADER_LEN) else {
        return 0;
    };
    // As many full frames with their tags as fit, then a partial frame with its tag in what
    // is left (nothing if not even the tag fits).
    let f = u64::from(frame.max(1));
    let full = body / (f + TAG_LEN);
    let rest = body % (f + TAG_LEN);
    full * f + rest.saturating_sub(TAG_LEN)
}

fn frame_count(len: u64, frame: u32) -> u64 {
    len.div_ceil(u64::from(frame.max(1))).max(1)
}

/// A blob's parsed header.
#[derive(Clone)]
struct Header {
    bytes: [u8; HEADER_LEN as usize],
    frame_size: u32,
    len: u64,
}

impl Header {
    fn new(len: u64, frame_size: u32, salt: &[u8; 32]) -> Header {
        let mut bytes = [0u8; HEADER_LEN as usize];
        bytes[..8].copy_from_slice(&MAGIC);
        bytes[8] = VERSION;
        bytes[12..16].copy_from_slice(&frame_size.to_le_bytes());
        bytes[16..24].copy_from_slice(&len.to_le_bytes());
        bytes[24..56].copy_from_slice(salt);
        Header {
            bytes,
            frame_size,
            len,
        }
    }

    fn parse(blob_id: BlobId, raw: &[u8]) -> Result<Header, CryptError> {
        let not = |reason: &str| CryptError::NotEncrypted {
            blob_id,
            reason: reason.to_owned(),
        };
        let bytes: [u8; HEADER_LEN as usize] = raw
            .try_into()
            .map_err(|_| not("shorter than the encryption header"))?;
        if bytes[..8] != MAGIC {
            return Err(not("no encryption header"));
        }
        if bytes[8] != VERSION {
            return Err(CryptError::Version {
                blob_id,
                version: bytes[8],
            });
        }
        if bytes[9..12] != [0, 0, 0] {
            return Err(not("unknown header flags"));
        }
        let mut f = [0u8; 4];
        f.copy_from_slice(&bytes[12..16]);
        let frame_size = u32::from_le_bytes(f);
        let mut l = [0u8; 8];
        l.copy_from_slice(&bytes[16..24]);
        let len = u64::from_le_bytes(l);
        if frame_size == 0 || frame_size > MAX_FRAME_SIZE {
            return Err(not("impossible frame size"));
        }
        if ciphertext_len(len, frame_size).is_none() {
            return Err(not("impossible length"));
        }
        Ok(Header {
            bytes,
            frame_size,
            len,
        })
    }

    fn salt(&self) -> &[u8] {
        &self.bytes[24..56]
    }

    fn frames(&self) -> u64 {
        frame_count(self.len, self.frame_size)
    }

    fn frame_size(&self) -> u64 {
        u64::from(self.frame_size)
    }

    /// Plaintext bytes in frame `i`.
    fn plain_len(&self, i: u64) -> u64 {
        let start = i * self.frame_size();
        self.len.saturating_sub(start).min(self.frame_size())
    }

    /// Where frame `i` starts in the blob. Cannot overflow for `i < frames()`: the whole
    /// ciphertext length was checked to fit when the header was made or parsed.
    fn frame_offset(&self, i: u64) -> u64 {
        HEADER_LEN + i * (self.frame_size() + TAG_LEN)
    }

    /// The frames covering `range` (non-empty), which must lie within the blob: an empty
    /// range gets the frame at its position, so that even it authenticates something.
    fn frames_for(&self, range: &Range<u64>) -> (u64, u64) {
        let last_frame = self.frames() - 1;
        let first = (range.start / self.frame_size()).min(last_frame);
        let last = if range.end > range.start {
            ((range.end - 1) / self.frame_size()).min(last_frame)
        } else {
            first
        };
        (first, last)
    }
}

/// A blob's header with the key derived for it.
struct BlobCipher {
    header: Header,
    aead: XChaCha20Poly1305,
}

impl BlobCipher {
    fn new(key: &DriveKey, header: Header) -> BlobCipher {
        let mut material = Zeroizing::new([0u8; 64]);
        material[..32].copy_from_slice(key.as_bytes());
        material[32..].copy_from_slice(header.salt());
        let blob_key = Zeroizing::new(blake3::derive_key(BLOB_KEY_CONTEXT, &material[..]));
        let aead = XChaCha20Poly1305::new(&(*blob_key).into());
        BlobCipher { header, aead }
    }

    fn nonce(i: u64) -> XNonce {
        let mut n = [0u8; 24];
        n[..8].copy_from_slice(&i.to_le_bytes());
        n.into()
    }

    fn aad(&self, i: u64) -> [u8; HEADER_LEN as usize + 9] {
        let mut aad = [0u8; HEADER_LEN as usize + 9];
        aad[..HEADER_LEN as usize].copy_from_slice(&self.header.bytes);
        aad[HEADER_LEN as usize..HEADER_LEN as usize + 8].copy_from_slice(&i.to_le_bytes());
        aad[HEADER_LEN as usize + 8] = u8::from(i + 1 == self.header.frames());
        aad
    }

    /// The whole encrypted blob for `plaintext` (whose length the header holds).
    fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptError> {
        let h = &self.header;
        let size = plaintext.len() as u64;
        let total = ciphertext_len(size, h.frame_size)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(CryptError::TooLarge { size })?;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&h.bytes);
        for i in 0..h.frames() {
            // In bounds: frames cover exactly the plaintext.
            let start = (i * h.frame_size()) as usize;
            let end = start + h.plain_len(i) as usize;
            let at = out.len();
            out.extend_from_slice(&plaintext[start..end]);
            let tag = self
                .aead
                .encrypt_inout_detached(&Self::nonce(i), &self.aad(i), (&mut out[at..]).into())
                .map_err(|_| CryptError::TooLarge { size })?;
            out.extend_from_slice(&tag);
        }
        Ok(out)
    }

    /// Decrypts frames `first..` held in `ct` (starting at frame `first`'s offset) and returns
    /// plaintext `want` (absolute plaintext offsets, within those frames).
    fn open(
        &self,
        blob_id: BlobId,
        key_id: KeyId,
        first: u64,
        mut ct: Vec<u8>,
        want: Range<u64>,
    ) -> Result<Vec<u8>, CryptError> {
        let h = &self.header;
        let mut out = Vec::with_capacity((want.end - want.start) as usize);
        let mut at = 0usize;
        let mut i = first;
        while at < ct.len() {
            let n = h.plain_len(i) as usize;
            let (body, rest) = ct[at..].split_at_mut(n);
            let authentic = Tag::try_from(&rest[..TAG_LEN as usize]).is_ok_and(|tag| {
                self.aead
                    .decrypt_inout_detached(&Self::nonce(i), &self.aad(i), body.into(), &tag)
                    .is_ok()
            });
            if !authentic {
                let e = CryptError::Auth {
                    blob_id,
                    frame: i,
                    frames: h.frames(),
                    key_id,
                };
                error!(%blob_id, frame = i, %key_id, "{e}");
                return Err(e);
            }
            let frame_start = i * h.frame_size();
            let from = want.start.max(frame_start);
            let to = want.end.min(frame_start + n as u64);
            if from < to {
                out.extend_from_slice(
                    &body[(from - frame_start) as usize..(to - frame_start) as usize],
                );
            }
            at += n + TAG_LEN as usize;
            i += 1;
        }
        Ok(out)
    }
}

/// A [`BlobStore`] that encrypts blobs with the drive key before `inner` stores them; see the
/// module documentation for the format and for what `size` means.
pub struct EncryptedStore {
    inner: Arc<dyn BlobStore>,
    key: Arc<DriveKey>,
    key_id: KeyId,
    frame_size: u32,
    /// Headers that authenticated (or that this store wrote), with their derived keys.
    headers: Mutex<LruCache<BlobId, Arc<BlobCipher>>>,
}

impl std::fmt::Debug for EncryptedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("inner", &self.inner.kind())
            .field("key_id", &self.key_id)
            .field("frame_size", &self.frame_size)
            .finish_non_exhaustive()
    }
}

impl EncryptedStore {
    /// Encrypts with `key` what `inner` stores.
    pub fn new(inner: Arc<dyn BlobStore>, key: DriveKey) -> EncryptedStore {
        EncryptedStore {
            inner,
            key_id: key.id(),
            key: Arc::new(key),
            frame_size: FRAME_SIZE,
            headers: Mutex::new(LruCache::new(HEADER_CACHE)),
        }
    }

    /// Writes new blobs with frames of `frame_size` plaintext bytes (1..=16 MiB; clamped)
    /// instead of [`FRAME_SIZE`]. Blobs of any frame size are read. For tests that need many
    /// frames in small blobs.
    pub fn with_frame_size(mut self, frame_size: u32) -> EncryptedStore {
        self.frame_size = frame_size.clamp(1, MAX_FRAME_SIZE);
        self
    }

    /// The fingerprint of the drive key, for logs and the drive's `blobs.key_id` column.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The store that keeps the ciphertext.
    pub fn inner(&self) -> &Arc<dyn BlobStore> {
        &self.inner
    }

    fn cache(&self) -> MutexGuard<'_, LruCache<BlobId, Arc<BlobCipher>>> {
        // Every access is one insert or lookup: a panic elsewhere cannot leave it half-done.
        self.headers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads and parses the header of `blob_id` (not yet authenticated: that happens with the
    /// first frame).
    async fn fetch_header(&self, blob_id: BlobId) -> Result<BlobCipher, BlobStoreError> {
        let raw = match self.inner.get(blob_id, 0..HEADER_LEN).await {
            Ok(raw) => raw,
            Err(BlobStoreError::BadRange { .. }) => {
                let e = CryptError::NotEncrypted {
                    blob_id,
                    reason: "shorter than the encryption header".into(),
                };
                error!(%blob_id, "{e}");
                return Err(e.into());
            }
            Err(e) => return Err(e),
        };
        let header = Header::parse(blob_id, &raw).inspect_err(|e| error!(%blob_id, "{e}"))?;
        Ok(BlobCipher::new(&self.key, header))
    }
}

#[async_trait::async_trait]
impl BlobStore for EncryptedStore {
    /// The inner store's kind: the blobs live there. That they are encrypted is recorded per
    /// blob by the drive (`blobs.framing`, see [`FRAMING`]).
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn max_blob_size(&self) -> Result<u64, BlobStoreError> {
        Ok(plaintext_max(
            self.inner.max_blob_size().await?,
            self.frame_size,
        ))
    }

    async fn put(&self, data: Vec<u8>, options: PutOptions) -> Result<StoredBlob, BlobStoreError> {
        let size = data.len() as u64;
        let mut salt = [0u8; 32];
        getrandom::fill(&mut salt).map_err(|e| CryptError::Random(e.to_string()))?;
        let cipher = Arc::new(BlobCipher::new(
            &self.key,
            Header::new(size, self.frame_size, &salt),
        ));
        let ciphertext = if size > IN_PLACE_LIMIT {
            let c = cipher.clone();
            tokio::task::spawn_blocking(move || c.seal(&data))
                .await
                .map_err(|e| CryptError::Task(e.to_string()))??
        } else {
            cipher.seal(&data)?
        };
        let frame_size = self.frame_size;
        let stored = self
            .inner
            .put(ciphertext, options)
            .await
            .map_err(|e| match e {
                BlobStoreError::TooLarge { max, .. } => BlobStoreError::TooLarge {
                    size,
                    max: plaintext_max(max, frame_size),
                },
                e => e,
            })?;
        // The drive often reads back what it just wrote (compaction, other handles).
        self.cache().put(stored.blob_id, cipher);
        Ok(StoredBlob { size, ..stored })
    }

    async fn get(&self, blob_id: BlobId, range: Range<u64>) -> Result<Vec<u8>, BlobStoreError> {
        let cached = self.cache().get(&blob_id).cloned();
        let fresh = cached.is_none();
        let cipher = match cached {
            Some(c) => c,
            None => Arc::new(self.fetch_header(blob_id).await?),
        };
        let h = &cipher.header;
        if range.start > range.end || range.end > h.len {
            return Err(BlobStoreError::BadRange {
                blob_id,
                start: range.start,
                end: range.end,
                len: h.len,
            });
        }
        let (first, last) = h.frames_for(&range);
        let ct_range = h.frame_offset(first)..h.frame_offset(last) + h.plain_len(last) + TAG_LEN;
        let expected = ct_range.end - ct_range.start;
        let truncated = |len| {
            let e = CryptError::Truncated {
                blob_id,
                expected: ciphertext_len(h.len, h.frame_size).unwrap_or(u64::MAX),
                len,
            };
            error!(%blob_id, "{e}");
            BlobStoreError::from(e)
        };
        let ct = match self.inner.get(blob_id, ct_range.clone()).await {
            Ok(ct) if ct.len() as u64 == expected => ct,
            Ok(ct) => return Err(truncated(ct_range.start + ct.len() as u64)),
            Err(BlobStoreError::BadRange { len, .. }) => return Err(truncated(len)),
            Err(e) => return Err(e),
        };
        let key_id = self.key_id;
        let plaintext = if expected > IN_PLACE_LIMIT {
            let c = cipher.clone();
            tokio::task::spawn_blocking(move || c.open(blob_id, key_id, first, ct, range))
                .await
                .map_err(|e| CryptError::Task(e.to_string()))??
        } else {
            cipher.open(blob_id, key_id, first, ct, range)?
        };
        if fresh {
            // Authenticated now: later reads may trust it without fetching it.
            self.cache().put(blob_id, cipher);
        }
        Ok(plaintext)
    }

    async fn delete(&self, blob_id: BlobId) -> Result<(), BlobStoreError> {
        self.inner.delete(blob_id).await?;
        self.cache().pop(&blob_id);
        Ok(())
    }

    async fn extend(&self, blob_id: BlobId, epochs: u32) -> Result<u64, BlobStoreError> {
        self.inner.extend(blob_id, epochs).await
    }

    async fn current_epoch(&self) -> Result<u64, BlobStoreError> {
        self.inner.current_epoch().await
    }

    async fn settle_before_large_put(&self) {
        self.inner.settle_before_large_put().await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;
    use crate::blobstore::MemoryStore;

    const OPTS: PutOptions = PutOptions {
        epochs: 2,
        deletable: true,
    };
    const F: u64 = FRAME_SIZE as u64;
    const MARKER: &[u8; 32] = b"\x00walrusfs-secret-marker-32-bytes";

    fn mem() -> Arc<MemoryStore> {
        Arc::new(MemoryStore::new(10).unwrap())
    }

    fn key(seed: u8) -> DriveKey {
        DriveKey::from_bytes([seed; 32])
    }

    fn enc(inner: &Arc<MemoryStore>, seed: u8) -> EncryptedStore {
        EncryptedStore::new(inner.clone() as Arc<dyn BlobStore>, key(seed))
    }

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// The bytes the inner store holds for `id`.
    async fn raw(inner: &MemoryStore, id: BlobId) -> Vec<u8> {
        let len = inner.stored(&id).unwrap().size;
        inner.get(id, 0..len).await.unwrap()
    }

    /// Stores `bytes` as they are (a forged or damaged blob) and returns its ID.
    async fn put_raw(inner: &MemoryStore, bytes: Vec<u8>) -> BlobId {
        inner.put(bytes, OPTS).await.unwrap().blob_id
    }

    fn is_auth_failure(e: &BlobStoreError) -> bool {
        matches!(e, BlobStoreError::Failed(m) if m.contains("tampered"))
    }

    #[tokio::test]
    async fn round_trips_at_frame_boundaries() {
        let inner = mem();
        let store = enc(&inner, 1);
        let f = F as usize;
        for len in [0, 1, f - 1, f, f + 1, 3 * f + 5] {
            let plain = data(len, len as u64);
            let stored = store.put(plain.clone(), OPTS).await.unwrap();
            assert_eq!(stored.size, len as u64, "size is the plaintext length");
            let ct_len = ciphertext_len(len as u64, FRAME_SIZE).unwrap();
            let held = inner.stored(&stored.blob_id).unwrap();
            assert_eq!(held.size, ct_len);
            assert_eq!(
                stored.encoded_size, held.encoded_size,
                "encoded_size is what the network bills for the ciphertext"
            );
            // A fresh store (no cached header) and the writer both read it back.
            for reader in [&store, &enc(&inner, 1)] {
                let got = reader.get(stored.blob_id, 0..len as u64).await.unwrap();
                assert_eq!(got, plain, "{len}");
                if len > 2 {
                    let r = 1..len as u64 - 1;
                    let got = reader.get(stored.blob_id, r.clone()).await.unwrap();
                    assert_eq!(got, plain[1..len - 1]);
                }
                for at in [0, len as u64 / 2, len as u64] {
                    assert!(reader.get(stored.blob_id, at..at).await.unwrap().is_empty());
                }
            }
        }
    }

    #[tokio::test]
    async fn out_of_range_is_bad_range_in_plaintext_coordinates() {
        let inner = mem();
        let store = enc(&inner, 1);
        let id = store.put(data(1000, 1), OPTS).await.unwrap().blob_id;
        for bad in [0..1001, 999..1001, 1001..1001, Range { start: 7, end: 3 }] {
            let e = enc(&inner, 1).get(id, bad.clone()).await.unwrap_err();
            assert!(
                matches!(e, BlobStoreError::BadRange { len: 1000, start, end, .. }
                    if start == bad.start && end == bad.end),
                "{bad:?}: {e}"
            );
            // Cached header, same answer.
            let e = store.get(id, bad.clone()).await.unwrap_err();
            assert!(matches!(e, BlobStoreError::BadRange { len: 1000, .. }));
        }
    }

    #[test]
    fn random_ranges_read_what_was_written() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let inner = mem();
        // Small frames so that ranges cross many of them; and the real size.
        let small = enc(&inner, 1).with_frame_size(100);
        let real = enc(&inner, 1);
        let plain = data(2345, 9);
        let big = data(3 * F as usize + 777, 10);
        let (small_id, real_id) = rt.block_on(async {
            (
                small.put(plain.clone(), OPTS).await.unwrap().blob_id,
                real.put(big.clone(), OPTS).await.unwrap().blob_id,
            )
        });
        let mut runner = TestRunner::new(Config::with_cases(300));
        runner
            .run(&(0..2400u64, 0..2400u64, any::<bool>()), |(a, b, warm)| {
                // The writer (header cached) or a fresh reader; the frame size a store writes
                // with does not matter for reading.
                let fresh = enc(&inner, 1).with_frame_size(7);
                let reader = if warm { &small } else { &fresh };
                let got = rt.block_on(reader.get(small_id, a..b));
                if a <= b && b <= plain.len() as u64 {
                    prop_assert_eq!(got.unwrap(), &plain[a as usize..b as usize]);
                } else {
                    let bad = matches!(got, Err(BlobStoreError::BadRange { len: 2345, .. }));
                    prop_assert!(bad);
                }
                Ok(())
            })
            .unwrap();
        let n = big.len() as u64;
        runner
            .run(&(0..=n, 0..=n), |(a, b)| {
                let (a, b) = (a.min(b), a.max(b));
                let got = rt.block_on(real.get(real_id, a..b)).unwrap();
                prop_assert_eq!(got, &big[a as usize..b as usize]);
                Ok(())
            })
            .unwrap();
    }

    #[tokio::test]
    async fn reads_fetch_only_the_header_and_the_covering_frames() {
        let inner = mem();
        let store = enc(&inner, 1);
        let plain = data(5 * F as usize + 10, 2);
        let id = store.put(plain.clone(), OPTS).await.unwrap().blob_id;

        let reader = enc(&inner, 1);
        let before = inner.stats();
        // Inside frame 2 only.
        let r = 2 * F + 5..3 * F - 5;
        assert_eq!(
            reader.get(id, r.clone()).await.unwrap(),
            plain[r.start as usize..r.end as usize]
        );
        let after = inner.stats();
        assert_eq!(after.gets - before.gets, 2, "header, then frames");
        assert_eq!(
            after.bytes_read - before.bytes_read,
            HEADER_LEN + F + TAG_LEN
        );

        // Sequential reads: the header is cached, one get each, frames 2..=3 for a range
        // across their boundary.
        let before = inner.stats();
        let r = 3 * F - 5..3 * F + 5;
        assert_eq!(
            reader.get(id, r.clone()).await.unwrap(),
            plain[r.start as usize..r.end as usize]
        );
        let after = inner.stats();
        assert_eq!(after.gets - before.gets, 1);
        assert_eq!(after.bytes_read - before.bytes_read, 2 * (F + TAG_LEN));

        // The writer has the header cached from the put.
        let before = inner.stats();
        store.get(id, 0..1).await.unwrap();
        assert_eq!(inner.stats().gets - before.gets, 1);
    }

    #[tokio::test]
    async fn max_blob_size_is_exact() {
        for frame in [1u32, 7, 100, FRAME_SIZE] {
            for inner_max in [0u64, 56, 71, 72, 73, 200, 1000, 200_003, 1_834_952] {
                let m = plaintext_max(inner_max, frame);
                let fits = |len| ciphertext_len(len, frame).is_some_and(|c| c <= inner_max);
                if fits(0) {
                    assert!(fits(m), "{frame} {inner_max}: {m}");
                } else {
                    assert_eq!(m, 0);
                }
                assert!(!fits(m + 1), "{frame} {inner_max}: {m}");
            }
        }
        let inner = mem();
        inner.set_max_blob_size(300_000);
        let store = enc(&inner, 1);
        let max = store.max_blob_size().await.unwrap();
        assert_eq!(max, plaintext_max(300_000, FRAME_SIZE));
        let stored = store.put(data(max as usize, 3), OPTS).await.unwrap();
        assert_eq!(inner.stored(&stored.blob_id).unwrap().size, 300_000);
        let e = store
            .put(data(max as usize + 1, 3), OPTS)
            .await
            .unwrap_err();
        assert!(
            matches!(e, BlobStoreError::TooLarge { size, max: m } if size == max + 1 && m == max),
            "{e}"
        );
    }

    #[test]
    fn max_blob_size_is_exact_for_any_inner_maximum() {
        proptest!(|(inner_max in 0u64..10_000_000, frame in 1u32..200_000)| {
            let m = plaintext_max(inner_max, frame);
            let ct = |len| ciphertext_len(len, frame).unwrap();
            prop_assert!(ct(m + 1) > inner_max);
            prop_assert!(ct(m) <= inner_max || (m == 0 && ct(0) > inner_max));
        });
    }

    #[tokio::test]
    async fn every_flipped_byte_fails_never_returns_data() {
        let inner = mem();
        // 4 frames (32, 32, 32, 4 bytes): header, bodies and tags are all small enough to
        // flip every byte.
        let store = enc(&inner, 1).with_frame_size(32);
        let plain = data(100, 4);
        let id = store.put(plain.clone(), OPTS).await.unwrap().blob_id;
        let len = raw(&inner, id).await.len() as u64;
        assert_eq!(len, HEADER_LEN + 100 + 4 * TAG_LEN);
        // Ranges and the frames they cover.
        let ranges = [
            (0..100, 0..=3),
            (0..32, 0..=0),
            (32..64, 1..=1),
            (64..96, 2..=2),
            (96..100, 3..=3),
            (50..50, 1..=1),
            (100..100, 3..=3),
        ];
        for at in 0..len {
            assert!(inner.corrupt(&id, at));
            // The header is in every frame's associated data; a body or tag byte belongs
            // to one frame.
            let hit = at.checked_sub(HEADER_LEN).map(|x| x / (32 + TAG_LEN));
            for (r, frames) in ranges.clone() {
                // A reader that has not seen the header yet.
                let got = enc(&inner, 1).get(id, r.clone()).await;
                if hit.is_none_or(|f| frames.contains(&f)) {
                    assert!(
                        got.is_err(),
                        "byte {at} flipped, range {r:?}: returned data"
                    );
                } else {
                    let want = &plain[r.start as usize..r.end as usize];
                    assert_eq!(got.unwrap(), want, "byte {at}, range {r:?}");
                }
            }
            assert!(inner.corrupt(&id, at));
        }
        assert_eq!(enc(&inner, 1).get(id, 0..100).await.unwrap(), plain);

        // Real frame size: every header byte, and both ends of every body and tag.
        let plain = data(2 * F as usize + 3, 5);
        let id = enc(&inner, 1)
            .put(plain.clone(), OPTS)
            .await
            .unwrap()
            .blob_id;
        let mut spots: Vec<u64> = (0..HEADER_LEN).collect();
        for i in 0..3 {
            let start = HEADER_LEN + i * (F + TAG_LEN);
            let body = if i == 2 { 3 } else { F };
            spots.extend([
                start,
                start + body - 1,
                start + body,
                start + body + TAG_LEN - 1,
            ]);
        }
        for at in spots {
            assert!(inner.corrupt(&id, at));
            let e = enc(&inner, 1)
                .get(id, 0..plain.len() as u64)
                .await
                .expect_err("flipped byte");
            assert!(at < 24 || is_auth_failure(&e), "byte {at}: {e}");
            assert!(inner.corrupt(&id, at));
        }
        assert_eq!(
            enc(&inner, 1).get(id, 0..plain.len() as u64).await.unwrap(),
            plain
        );
    }

    #[tokio::test]
    async fn the_message_names_blob_frame_and_cause() {
        let inner = mem();
        let id = enc(&inner, 1)
            .put(data(3 * F as usize, 6), OPTS)
            .await
            .unwrap()
            .blob_id;
        assert!(inner.corrupt(&id, HEADER_LEN + 2 * (F + TAG_LEN) + 17));
        let e = enc(&inner, 1).get(id, 0..3 * F).await.unwrap_err();
        let msg = e.to_string();
        assert!(!e.is_transient());
        for part in [
            &id.to_string(),
            "frame 2 of 3",
            "wrong drive key or tampered blob",
            &key(1).id().to_string(),
        ] {
            assert!(msg.contains(part), "{part:?} not in {msg}");
        }
        // Frames before it still read.
        enc(&inner, 1).get(id, 0..2 * F).await.unwrap();
    }

    #[tokio::test]
    async fn truncated_blobs_fail() {
        let inner = mem();
        let store = enc(&inner, 1).with_frame_size(32);
        let plain = data(100, 7);
        let id = store.put(plain, OPTS).await.unwrap().blob_id;
        let ct = raw(&inner, id).await;
        let last_frame = HEADER_LEN as usize + 3 * (32 + TAG_LEN as usize);
        for cut in [
            0,
            10,
            HEADER_LEN as usize,
            HEADER_LEN as usize + 5,
            last_frame,
            ct.len() - 1,
        ] {
            let forged = put_raw(&inner, ct[..cut].to_vec()).await;
            let e = enc(&inner, 1).get(forged, 0..100).await.unwrap_err();
            assert!(matches!(e, BlobStoreError::Failed(_)), "cut at {cut}: {e}");
            // Even a range the remaining bytes still cover fails when the header is gone.
            if cut < HEADER_LEN as usize {
                assert!(enc(&inner, 1).get(forged, 0..1).await.is_err());
            }
        }
        // Cut after frame 2 with the header's length edited to match: frame 2 was not the
        // last when sealed, and the header is not the one the frames were sealed with.
        let mut forged = ct[..last_frame].to_vec();
        forged[16..24].copy_from_slice(&96u64.to_le_bytes());
        let forged = put_raw(&inner, forged).await;
        let e = enc(&inner, 1).get(forged, 0..96).await.unwrap_err();
        assert!(is_auth_failure(&e), "{e}");
        assert!(enc(&inner, 1).get(forged, 64..96).await.is_err());
    }

    #[tokio::test]
    async fn swapped_frames_and_foreign_headers_fail() {
        let inner = mem();
        let store = enc(&inner, 1).with_frame_size(32);
        let a_plain = data(96, 8);
        let a = store.put(a_plain.clone(), OPTS).await.unwrap().blob_id;
        let b = store.put(data(96, 9), OPTS).await.unwrap().blob_id;
        let (a_ct, b_ct) = (raw(&inner, a).await, raw(&inner, b).await);
        let frame = |i: usize| {
            let s = HEADER_LEN as usize + i * (32 + TAG_LEN as usize);
            s..s + 32 + TAG_LEN as usize
        };
        // Frames 0 and 1 swapped.
        let mut swapped = a_ct.clone();
        swapped[frame(0)].copy_from_slice(&a_ct[frame(1)]);
        swapped[frame(1)].copy_from_slice(&a_ct[frame(0)]);
        let id = put_raw(&inner, swapped).await;
        for r in [0..32, 32..64, 0..96] {
            assert!(is_auth_failure(
                &enc(&inner, 1).get(id, r).await.unwrap_err()
            ));
        }
        // Frame 2 untouched still reads.
        assert_eq!(
            enc(&inner, 1).get(id, 64..96).await.unwrap(),
            a_plain[64..96]
        );
        // Frame 1 of blob B in blob A.
        let mut mixed = a_ct.clone();
        mixed[frame(1)].copy_from_slice(&b_ct[frame(1)]);
        let id = put_raw(&inner, mixed).await;
        assert!(is_auth_failure(
            &enc(&inner, 1).get(id, 32..64).await.unwrap_err()
        ));
        // B's header on A's frames, and the other way round.
        for (head, body) in [(&b_ct, &a_ct), (&a_ct, &b_ct)] {
            let mut forged = head[..HEADER_LEN as usize].to_vec();
            forged.extend_from_slice(&body[HEADER_LEN as usize..]);
            let id = put_raw(&inner, forged).await;
            for r in [0..32, 64..96, 0..0] {
                assert!(is_auth_failure(
                    &enc(&inner, 1).get(id, r).await.unwrap_err()
                ));
            }
        }
    }

    #[tokio::test]
    async fn wrong_key_fails_even_for_an_empty_blob() {
        let inner = mem();
        for len in [0, 10, 2 * F as usize] {
            let id = enc(&inner, 1)
                .put(data(len, 11), OPTS)
                .await
                .unwrap()
                .blob_id;
            let e = enc(&inner, 2).get(id, 0..len as u64).await.unwrap_err();
            assert!(is_auth_failure(&e), "{e}");
            assert!(e.to_string().contains("wrong drive key"), "{e}");
            assert!(e.to_string().contains(&key(2).id().to_string()), "{e}");
        }
    }

    #[tokio::test]
    async fn a_plain_blob_is_reported_as_not_encrypted() {
        let inner = mem();
        let id = put_raw(&inner, data(1000, 12)).await;
        let e = enc(&inner, 1).get(id, 0..10).await.unwrap_err();
        assert!(
            e.to_string().contains("not an encrypted walrusfs blob"),
            "{e}"
        );
        // A future format version is named as such.
        let mut ct = raw(
            &inner,
            enc(&inner, 1).put(data(10, 1), OPTS).await.unwrap().blob_id,
        )
        .await;
        ct[8] = 2;
        let id = put_raw(&inner, ct).await;
        let e = enc(&inner, 1).get(id, 0..10).await.unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
    }

    /// Every 16-byte window of `a` that also occurs in `b`.
    fn common_windows(a: &[u8], b: &[u8]) -> usize {
        let set: HashSet<&[u8]> = b.windows(16).collect();
        a.windows(16).filter(|w| set.contains(w)).count()
    }

    #[tokio::test]
    async fn same_plaintext_gives_unrelated_ciphertext() {
        let inner = mem();
        // Repetitive plaintext is the hard case: equal frames must not give equal ciphertext.
        let mut plain = vec![0u8; 3 * F as usize + 100];
        plain[..32].copy_from_slice(MARKER);
        let body = |ct: &[u8]| ct[HEADER_LEN as usize..].to_vec();
        let one = enc(&inner, 1).put(plain.clone(), OPTS).await.unwrap();
        let two = enc(&inner, 2).put(plain.clone(), OPTS).await.unwrap();
        let again = enc(&inner, 1).put(plain.clone(), OPTS).await.unwrap();
        assert!(one.blob_id != two.blob_id && one.blob_id != again.blob_id);
        let (c1, c2, c3) = (
            raw(&inner, one.blob_id).await,
            raw(&inner, two.blob_id).await,
            raw(&inner, again.blob_id).await,
        );
        // Two drives, and the same drive twice (random salt): nothing in common past the
        // fixed part of the header (magic, version, frame size, length).
        assert_eq!(common_windows(&body(&c1), &c2), 0);
        assert_eq!(common_windows(&body(&c1), &c3), 0);
        assert_eq!(common_windows(&body(&c2), &c3), 0);
        assert_eq!(common_windows(&c1[24..56], &c3), 0, "salts differ");
        // Nor do equal frames within one blob look alike.
        let f = F as usize + TAG_LEN as usize;
        let frames = body(&c1);
        assert_eq!(common_windows(&frames[f..2 * f], &frames[2 * f..3 * f]), 0);
    }

    #[tokio::test]
    async fn the_plaintext_never_reaches_the_inner_store() {
        let inner = mem();
        let store = enc(&inner, 1);
        // The marker at the start, across a frame boundary, at the end, and in a tiny blob.
        let mut plain = data(2 * F as usize + 64, 13);
        for at in [0, F as usize - 16, plain.len() - 32] {
            plain[at..at + 32].copy_from_slice(MARKER);
        }
        store.put(plain, OPTS).await.unwrap();
        store.put(MARKER.to_vec(), OPTS).await.unwrap();
        for id in inner.blob_ids() {
            let ct = raw(&inner, id).await;
            assert!(!ct.windows(32).any(|w| w == MARKER), "marker in {id}");
            assert!(
                !ct.windows(8).any(|w| w == &MARKER[8..16]),
                "part of the marker in {id}"
            );
        }
    }

    #[tokio::test]
    async fn delete_extend_and_epoch_pass_through() {
        let inner = mem();
        let store = enc(&inner, 1);
        assert_eq!(store.kind(), "memory");
        let stored = store.put(data(10, 14), OPTS).await.unwrap();
        assert_eq!(store.extend(stored.blob_id, 3).await.unwrap(), 5);
        assert_eq!(store.current_epoch().await.unwrap(), 0);
        store.delete(stored.blob_id).await.unwrap();
        assert!(!inner.contains(&stored.blob_id));
        // Not served from the header cache once deleted.
        assert!(matches!(
            store.get(stored.blob_id, 0..10).await,
            Err(BlobStoreError::NotFound { .. })
        ));
        // Transient inner failures stay transient.
        let id = store.put(data(10, 15), OPTS).await.unwrap().blob_id;
        inner.fail_next_gets(1);
        assert!(
            enc(&inner, 1)
                .get(id, 0..10)
                .await
                .unwrap_err()
                .is_transient()
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_drive_reads_a_tampered_blob_as_eio_never_as_bytes() {
        use std::ffi::OsStr;
        use std::time::Duration;

        use crate::drive::{Caller, Drive, DriveConfig, ROOT};

        let tmp = tempfile::tempdir().unwrap();
        let inner = mem();
        let mut config = DriveConfig::new(tmp.path());
        config.pack_linger = Duration::from_millis(10);
        // One extent per frame, so that one bad frame spoils one extent only.
        config.extent_size = F;
        config.prefetch_budget = 0;
        let store = Arc::new(enc(&inner, 1)) as Arc<dyn BlobStore>;
        let d = Drive::start(config, store).await.unwrap();
        let mut content = data(3 * F as usize, 16);
        content[1000..1032].copy_from_slice(MARKER);
        let (attr, fh) = d
            .create(
                Caller::ROOT,
                ROOT,
                OsStr::new("f"),
                0o644,
                0o022,
                libc::O_RDWR,
            )
            .await
            .unwrap();
        for (i, chunk) in content.chunks(F as usize).enumerate() {
            d.write(fh, i as u64 * F, chunk).await.unwrap();
        }
        d.flush(fh).await.unwrap();
        d.release(fh).await.unwrap();
        d.wait_idle().await.unwrap();
        let ids = inner.blob_ids();
        assert_eq!(ids.len(), 1);
        let id = ids[0];
        assert!(!raw(&inner, id).await.windows(32).any(|w| w == MARKER));

        // Drop the local copies, so that reads go to the store.
        for sub in ["cache/files", "cache/extents"] {
            for e in std::fs::read_dir(tmp.path().join(sub)).unwrap() {
                std::fs::remove_file(e.unwrap().path()).unwrap();
            }
        }
        // A flipped byte in frame 1 (the second extent).
        assert!(inner.corrupt(&id, HEADER_LEN + F + TAG_LEN + 10));
        let fh = d.open(attr.ino, libc::O_RDONLY).await.unwrap();
        assert_eq!(d.read(fh, 0, 4096).await.unwrap(), &content[..4096]);
        for (off, len) in [(F, 100), (F + 10, 1), (0, 3 * F as u32)] {
            let e = d.read(fh, off, len).await.expect_err("tampered frame");
            assert_eq!(e.errno(), libc::EIO, "{e}");
            assert!(
                e.to_string().contains("wrong drive key or tampered blob"),
                "{e}"
            );
        }
        // Repaired, it reads again: nothing wrong was cached.
        assert!(inner.corrupt(&id, HEADER_LEN + F + TAG_LEN + 10));
        let mut back = Vec::new();
        while back.len() < content.len() {
            let chunk = d.read(fh, back.len() as u64, 128 * 1024).await.unwrap();
            assert!(!chunk.is_empty());
            back.extend_from_slice(&chunk);
        }
        assert_eq!(back, content);
        d.release(fh).await.unwrap();
        d.shutdown(Duration::ZERO).await;
    }
}
