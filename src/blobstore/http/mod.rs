//! [`WalrusHttpStore`]: the blob store over Walrus's HTTP services: publishers store blobs
//! (they hold the wallet, encode, register and certify on Sui), aggregators read them back.
//! Nothing said over HTTP is taken on trust.
//!
//! **Store.** The blob ID is computed here from the very bytes sent, with our RS2 encoding
//! ([`crate::encoding`]) at the network's shard count. A publisher's answer must name that
//! blob ID (else the put fails naming both, and nothing counts as stored), and Sui, read
//! through [`SuiReader`], must show the blob certified with the right blob ID and size, until
//! at least `current epoch + epochs`, and not deletable when a permanent blob was asked for:
//! - `newlyCreated` / `alreadyCertified {object}`: the `Blob` object is read from Sui;
//! - `alreadyCertified {event}`: the `BlobCertified` event is read from Sui. An event of a
//!   *deletable* blob is not accepted as proof (whoever owns that blob may delete it), and
//!   neither is a certification that ends too early: in both cases the blob is stored again
//!   on the same publisher with `force=true`, and that answer must pass the checks in full;
//! - `markedInvalid`: the network rejected this blob ID; the put fails for good;
//! - `error`, transport failures, timeouts, 408/429/5xx: the next publisher is tried after a
//!   backoff; other 4xx are permanent and show the publisher's message (401/403: the token;
//!   413: `max_body_bytes` is more than the publisher takes).
//!
//! A publisher whose answer fails a check is not asked again within that put; the put then
//! fails with [`BlobStoreError::Failed`] (if every publisher was only unreachable or busy,
//! [`BlobStoreError::Unavailable`]). Sui may lag the publisher by a moment, so a missing or
//! not-yet-certified object is polled for up to `sui_wait_secs`.
//!
//! **Read.** `GET /v1/blobs/{id}` with `Range: bytes=a-b` (closed; our range is half-open).
//! A 206 must carry the exact `Content-Range` and length; a 200 (an aggregator that ignores
//! Range) is a full blob and is sliced. Each request is bounded by `read_timeout_secs`; on a
//! failure, a time-out or a wrong length the next aggregator is asked. The first aggregator
//! rotates per read so load spreads; one that failed is put last for [`AGGREGATOR_COOLDOWN`]
//! (so a dead one costs one timeout, not one per read), and when all have failed recently the
//! last one that served goes first. 404 from every aggregator is
//! [`BlobStoreError::NotFound`]. Aggregators cannot prove bytes against the blob ID (they
//! send no slivers); the drive checks every extent it reads against the BLAKE3 hash in its
//! metadata (`Drive::load_extent` in src/drive/mod.rs), which catches a lying aggregator that
//! gets the length right.
//!
//! **Delete, extend.** The blob objects belong to the publisher's wallet, so this backend
//! cannot touch them: deleting gives [`BlobStoreError::NotOwner`] (the blobs stay until
//! their end epoch), and extending stores the same bytes again (same blob ID, a new object).

mod config;
mod wire;

use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use tracing::{debug, info, warn};

pub use config::{
    BACKEND, DEFAULT_MAX_BODY_BYTES, KEYS, WalrusHttpConfig, WalrusHttpConfigError,
    is_walrus_http_network_file, network_file_backend,
};

use super::{BlobStore, BlobStoreError, PutOptions, StoredBlob};
use crate::encoding::{BlobId, EncodingConfig};
use crate::sui::{BlobObject, ObjectId, SuiError, SuiReader, hex};
use wire::{EventRef, Proof, StoreAnswer};

/// How long an aggregator that failed is asked only after the others.
pub const AGGREGATOR_COOLDOWN: Duration = Duration::from_secs(30);

/// Backoff between store attempts: doubles from this, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Attempts per put: every publisher once, and at least this many in all.
const MIN_PUT_ATTEMPTS: usize = 3;
/// A publisher's JSON answer is small; more than this is not an answer.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// The blob store over publishers and aggregators; see the module documentation.
pub struct WalrusHttpStore {
    config: WalrusHttpConfig,
    encoding: EncodingConfig,
    sui: Arc<dyn SuiReader>,
    http: reqwest::Client,
    next_publisher: AtomicUsize,
    next_aggregator: AtomicUsize,
    health: Mutex<ReadHealth>,
}

impl std::fmt::Debug for WalrusHttpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalrusHttpStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Which aggregators failed lately, and which served last.
#[derive(Debug, Default)]
struct ReadHealth {
    failed_at: Vec<Option<Instant>>,
    last_good: Option<usize>,
}

/// How one store attempt on one publisher ended, if not with a verified blob.
#[derive(Debug)]
enum Attempt {
    /// Unreachable, busy or failed for now: try the next publisher.
    Transient(String),
    /// The publisher's answer failed a check: do not ask it again in this put.
    Rejected(String),
    /// An `alreadyCertified` that does not prove what we need: store again with `force`.
    NotEnough(String),
    /// Stop the put with this error.
    Stop(BlobStoreError),
}

/// How one read from one aggregator ended, if not with the bytes.
#[derive(Debug)]
enum ReadFailure {
    NotFound,
    /// 416; the blob's length if the aggregator said it.
    BadRange(Option<u64>),
    Other(String),
}

impl WalrusHttpStore {
    /// A store over the publishers and aggregators of `config`, checking against `sui`.
    pub fn new(config: WalrusHttpConfig, sui: Arc<dyn SuiReader>) -> Result<Self, BlobStoreError> {
        let encoding = config.encoding().map_err(|e| {
            BlobStoreError::Failed(format!("{}: n_shards: {e}", config.path.display()))
        })?;
        let http = http_client(config.connect_timeout)
            .map_err(|e| BlobStoreError::Failed(format!("cannot set up HTTP: {e}")))?;
        let health = ReadHealth {
            failed_at: vec![None; config.aggregators.len()],
            last_good: None,
        };
        Ok(Self {
            config,
            encoding,
            sui,
            http,
            next_publisher: AtomicUsize::new(0),
            next_aggregator: AtomicUsize::new(0),
            health: Mutex::new(health),
        })
    }

    pub fn config(&self) -> &WalrusHttpConfig {
        &self.config
    }

    fn max_size(&self) -> u64 {
        self.config
            .max_body_bytes
            .min(self.encoding.max_blob_size())
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, ReadHealth> {
        // Plain bookkeeping; a panic elsewhere cannot leave it inconsistent.
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn sui_epoch(&self) -> Result<u64, BlobStoreError> {
        self.sui
            .current_epoch()
            .await
            .map(u64::from)
            .map_err(|e| sui_error(e, "the current epoch"))
    }

    /// One store request to `publisher`, and the checks of its answer.
    async fn put_once(
        &self,
        publisher: &str,
        body: &Bytes,
        want: &Want,
        force: bool,
    ) -> Result<StoredBlob, Attempt> {
        let mut url = format!("{publisher}/v1/blobs?epochs={}", want.epochs);
        if !want.deletable {
            url.push_str("&permanent=true");
        }
        if force {
            url.push_str("&force=true");
        }
        let mut req = self
            .http
            .put(&url)
            .timeout(self.config.request_timeout)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body.clone());
        if let Some(token) = &self.config.publisher_auth_token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        debug!(%url, size = body.len(), blob_id = %want.blob_id, "storing through a publisher");
        let resp = req
            .send()
            .await
            .map_err(|e| Attempt::Transient(describe(&e, self.config.request_timeout)))?;
        let status = resp.status();
        let answer = read_body(resp, MAX_ANSWER_BYTES, self.config.request_timeout)
            .await
            .map_err(Attempt::Transient)?;
        if !status.is_success() {
            return Err(self.publisher_status(publisher, status, &answer, body.len()));
        }
        let answer = wire::parse_store_answer(&answer).map_err(|e| {
            Attempt::Rejected(format!(
                "answered something that is not a store result: {e}"
            ))
        })?;
        match answer {
            StoreAnswer::NewlyCreated { blob_id, object_id } => {
                want.check_id(blob_id)?;
                self.verify_object(object_id, want, publisher, false).await
            }
            StoreAnswer::AlreadyCertified {
                blob_id,
                end_epoch,
                proof,
            } => {
                want.check_id(blob_id)?;
                debug!(%blob_id, end_epoch, ?proof, "publisher says the blob is already certified");
                match proof {
                    Proof::Object(object_id) => {
                        self.verify_object(object_id, want, publisher, true).await
                    }
                    Proof::Event(event) => self.verify_event(&event, want, publisher).await,
                }
            }
            StoreAnswer::MarkedInvalid { blob_id, event } => {
                want.check_id(blob_id)?;
                Err(Attempt::Stop(BlobStoreError::Failed(format!(
                    "Walrus has marked blob {blob_id} invalid{} (publisher {publisher}): the \
                     storage nodes found its encoding inconsistent, so it cannot be stored under \
                     this ID",
                    event.map(|e| format!(" ({e})")).unwrap_or_default()
                ))))
            }
            StoreAnswer::Error {
                blob_id,
                failure_phase,
                message,
            } => {
                if let Some(id) = blob_id {
                    want.check_id(id)?;
                }
                Err(Attempt::Transient(format!(
                    "failed in phase `{failure_phase}`: {message}"
                )))
            }
        }
    }

    /// What a non-2xx status from a publisher means.
    fn publisher_status(
        &self,
        publisher: &str,
        status: StatusCode,
        body: &[u8],
        size: usize,
    ) -> Attempt {
        let message = wire::error_message(body);
        let file = self.config.path.display();
        match status.as_u16() {
            401 | 403 => Attempt::Stop(BlobStoreError::Failed(format!(
                "publisher {publisher} refused the store ({status}: {message}). It needs a valid \
                 token: put it in a file named by `publisher_auth_token_file` in {file} ({}). \
                 Mainnet has no public publisher: run your own (`walrus publisher`) or use one \
                 whose operator gave you a token",
                if self.config.publisher_auth_token.is_some() {
                    "the token there was not accepted"
                } else {
                    "none is set now"
                }
            ))),
            413 => Attempt::Stop(BlobStoreError::Failed(format!(
                "publisher {publisher} refused a blob of {size} bytes as too large (413: \
                 {message}): `max_body_bytes` = {} in {file} is more than this publisher takes; \
                 lower it to the publisher's limit (10485760 for the public ones)",
                self.config.max_body_bytes
            ))),
            408 | 429 | 500..=599 => Attempt::Transient(format!("{status}: {message}")),
            _ => Attempt::Stop(BlobStoreError::Failed(format!(
                "publisher {publisher} refused the store ({status}): {message}"
            ))),
        }
    }

    /// Reads blob object `object_id` from Sui until it proves `want` or `sui_wait` runs out.
    /// `already`: the publisher said "already certified", so a short or deletable answer
    /// means "store again" rather than "the publisher lied".
    async fn verify_object(
        &self,
        object_id: ObjectId,
        want: &Want,
        publisher: &str,
        already: bool,
    ) -> Result<StoredBlob, Attempt> {
        let shown = format!("0x{}", hex(&object_id));
        let deadline = Instant::now() + self.config.sui_wait;
        let mut pause = Duration::from_millis(100);
        loop {
            let problem = match self.sui.blob_object(object_id).await {
                Ok(obj) => {
                    if let Some(wrong) = want.wrong_object(&obj) {
                        let msg = format!("Sui object {shown} {wrong}");
                        // An earlier deletable blob does not serve a permanent store: store
                        // again. Any other mismatch is a wrong answer.
                        return Err(
                            if already && obj.blob_id == want.blob_id && obj.size == want.size {
                                Attempt::NotEnough(msg)
                            } else {
                                Attempt::Rejected(msg)
                            },
                        );
                    }
                    match want.short_object(&obj) {
                        None => return Ok(self.stored(want, object_id, publisher, &obj)),
                        Some(p) => p,
                    }
                }
                Err(SuiError::NotFound(_)) => "does not exist on Sui".to_string(),
                Err(SuiError::Invalid(m)) => {
                    return Err(Attempt::Rejected(format!(
                        "Sui object {shown} is not a Walrus blob: {m}"
                    )));
                }
                Err(e @ SuiError::Unavailable(_)) => {
                    return Err(Attempt::Stop(sui_error(e, "the blob object")));
                }
            };
            if Instant::now() + pause > deadline {
                let msg = format!(
                    "blob object {shown} {problem} (checked for {}s)",
                    self.config.sui_wait.as_secs()
                );
                return Err(if already {
                    Attempt::NotEnough(msg)
                } else {
                    Attempt::Rejected(msg)
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Reads a `BlobCertified` event from Sui and checks that it proves `want`.
    async fn verify_event(
        &self,
        event: &EventRef,
        want: &Want,
        publisher: &str,
    ) -> Result<StoredBlob, Attempt> {
        let deadline = Instant::now() + self.config.sui_wait;
        let mut pause = Duration::from_millis(100);
        let ev = loop {
            match self
                .sui
                .certified_event(&event.tx_digest, event.event_seq)
                .await
            {
                Ok(ev) => break ev,
                Err(SuiError::NotFound(_)) if Instant::now() + pause <= deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(SuiError::NotFound(_)) => {
                    return Err(Attempt::Rejected(format!(
                        "pointed at {event}, which Sui does not have"
                    )));
                }
                Err(SuiError::Invalid(m)) => {
                    return Err(Attempt::Rejected(format!(
                        "pointed at {event}, which is not a BlobCertified event: {m}"
                    )));
                }
                Err(e @ SuiError::Unavailable(_)) => {
                    return Err(Attempt::Stop(sui_error(e, "the certification event")));
                }
            }
        };
        if ev.blob_id != want.blob_id {
            return Err(Attempt::Rejected(format!(
                "pointed at {event}, which certifies blob {}, not {}",
                ev.blob_id, want.blob_id
            )));
        }
        if ev.deletable {
            return Err(Attempt::NotEnough(format!(
                "{event} certifies a deletable blob of another owner, who may delete it"
            )));
        }
        if u64::from(ev.end_epoch) < want.end_epoch {
            return Err(Attempt::NotEnough(format!(
                "{event} keeps the blob until epoch {}, short of the {} asked for",
                ev.end_epoch, want.end_epoch
            )));
        }
        Ok(StoredBlob {
            blob_id: want.blob_id,
            object_id: Some(ev.object_id),
            owner: Some(publisher.to_string()),
            size: want.size,
            encoded_size: want.encoded_size,
            end_epoch: u64::from(ev.end_epoch),
            deletable: false,
        })
    }

    fn stored(
        &self,
        want: &Want,
        object_id: ObjectId,
        publisher: &str,
        obj: &BlobObject,
    ) -> StoredBlob {
        StoredBlob {
            blob_id: want.blob_id,
            object_id: Some(object_id),
            owner: Some(publisher.to_string()),
            size: want.size,
            encoded_size: want.encoded_size,
            end_epoch: u64::from(obj.storage.end_epoch),
            deletable: obj.deletable,
        }
    }

    /// The order in which to ask the aggregators for one read.
    fn aggregator_order(&self) -> Vec<usize> {
        let n = self.config.aggregators.len();
        let start = self.next_aggregator.fetch_add(1, Ordering::Relaxed) % n;
        let health = self.lock_health();
        let now = Instant::now();
        let cooling = |i: usize| {
            health.failed_at[i].is_some_and(|t| now.duration_since(t) < AGGREGATOR_COOLDOWN)
        };
        let rotated = (0..n).map(|k| (start + k) % n);
        let mut order: Vec<usize> = rotated.clone().filter(|&i| !cooling(i)).collect();
        let mut rest: Vec<usize> = rotated.filter(|&i| cooling(i)).collect();
        if order.is_empty()
            && let Some(good) = health.last_good
            && let Some(pos) = rest.iter().position(|&i| i == good)
        {
            rest.remove(pos);
            order.push(good);
        }
        order.extend(rest);
        order
    }

    fn mark_aggregator(&self, i: usize, ok: bool) {
        let mut health = self.lock_health();
        if ok {
            health.failed_at[i] = None;
            health.last_good = Some(i);
        } else {
            health.failed_at[i] = Some(Instant::now());
        }
    }

    /// One ranged read from aggregator `i`.
    async fn get_once(
        &self,
        i: usize,
        blob_id: BlobId,
        range: &Range<u64>,
    ) -> Result<Vec<u8>, ReadFailure> {
        let aggregator = &self.config.aggregators[i];
        let timeout = self.config.read_timeout;
        let want = range.end - range.start;
        let resp = self
            .http
            .get(format!("{aggregator}/v1/blobs/{blob_id}"))
            .header(RANGE, format!("bytes={}-{}", range.start, range.end - 1))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| ReadFailure::Other(describe(&e, timeout)))?;
        let status = resp.status();
        let content_range = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let Some((first, last, _)) = content_range.as_deref().and_then(parse_content_range)
                else {
                    return Err(ReadFailure::Other(format!(
                        "answered 206 with Content-Range {content_range:?}, not `bytes A-B/LEN`"
                    )));
                };
                if first != Some(range.start) || last != Some(range.end - 1) {
                    return Err(ReadFailure::Other(format!(
                        "answered Content-Range {} for bytes {}-{}",
                        content_range.unwrap_or_default(),
                        range.start,
                        range.end - 1
                    )));
                }
                let bytes = read_body(resp, want, timeout)
                    .await
                    .map_err(ReadFailure::Other)?;
                if bytes.len() as u64 != want {
                    return Err(ReadFailure::Other(format!(
                        "sent {} bytes for a range of {want}",
                        bytes.len()
                    )));
                }
                Ok(bytes)
            }
            StatusCode::OK => {
                // An aggregator that ignores Range sends the whole blob.
                let mut bytes = read_body(resp, self.max_size(), timeout)
                    .await
                    .map_err(ReadFailure::Other)?;
                if (bytes.len() as u64) < range.end {
                    return Err(ReadFailure::Other(format!(
                        "sent a whole blob of {} bytes, too short for bytes {}-{}",
                        bytes.len(),
                        range.start,
                        range.end - 1
                    )));
                }
                // Bounded by the length check just above.
                let (start, end) = (range.start as usize, range.end as usize);
                bytes.truncate(end);
                bytes.drain(..start);
                Ok(bytes)
            }
            StatusCode::NOT_FOUND => Err(ReadFailure::NotFound),
            StatusCode::RANGE_NOT_SATISFIABLE => Err(ReadFailure::BadRange(
                content_range
                    .as_deref()
                    .and_then(parse_content_range)
                    .and_then(|r| r.2),
            )),
            _ => {
                let body = read_body(resp, MAX_ANSWER_BYTES, timeout)
                    .await
                    .unwrap_or_default();
                Err(ReadFailure::Other(format!(
                    "{status}: {}",
                    wire::error_message(&body)
                )))
            }
        }
    }
}

/// What a put must end with.
struct Want {
    blob_id: BlobId,
    size: u64,
    encoded_size: u64,
    epochs: u32,
    /// The least end epoch that keeps the blob `epochs` epochs past the current one.
    end_epoch: u64,
    deletable: bool,
}

impl Want {
    fn check_id(&self, theirs: BlobId) -> Result<(), Attempt> {
        if theirs == self.blob_id {
            Ok(())
        } else {
            Err(Attempt::Rejected(format!(
                "answered blob ID {theirs} for our {} bytes, whose blob ID is {}: it stored \
                 something else (or encodes differently); not counted as stored",
                self.size, self.blob_id
            )))
        }
    }

    /// A mismatch no waiting can fix.
    fn wrong_object(&self, obj: &BlobObject) -> Option<String> {
        if obj.blob_id != self.blob_id {
            return Some(format!("holds blob {}, not {}", obj.blob_id, self.blob_id));
        }
        if obj.size != self.size {
            return Some(format!(
                "records {} bytes for blob {}, not {}",
                obj.size, self.blob_id, self.size
            ));
        }
        if !self.deletable && obj.deletable {
            return Some(format!(
                "is deletable, but blob {} was to be stored permanently",
                self.blob_id
            ));
        }
        None
    }

    /// What keeps the object from proving the store yet, if anything.
    fn short_object(&self, obj: &BlobObject) -> Option<String> {
        if obj.certified_epoch.is_none() {
            return Some("is not certified".to_string());
        }
        let end = u64::from(obj.storage.end_epoch);
        if end < self.end_epoch {
            return Some(format!(
                "is stored until epoch {end}, short of the {} asked for ({} epochs)",
                self.end_epoch, self.epochs
            ));
        }
        None
    }
}

#[async_trait::async_trait]
impl BlobStore for WalrusHttpStore {
    fn kind(&self) -> &'static str {
        BACKEND
    }

    async fn max_blob_size(&self) -> Result<u64, BlobStoreError> {
        Ok(self.max_size())
    }

    async fn put(&self, data: Vec<u8>, options: PutOptions) -> Result<StoredBlob, BlobStoreError> {
        let size = data.len() as u64;
        let max = self.max_size();
        if size > max {
            return Err(BlobStoreError::TooLarge { size, max });
        }
        if options.epochs == 0 {
            return Err(BlobStoreError::Failed(
                "a blob must be stored for at least 1 epoch".into(),
            ));
        }
        let encoding = self.encoding;
        let (blob_id, data) = tokio::task::spawn_blocking(move || {
            let id = encoding.blob_id(&data);
            (id, data)
        })
        .await
        .map_err(|e| BlobStoreError::Failed(format!("blob ID computation failed: {e}")))?;
        let blob_id = blob_id.map_err(|e| BlobStoreError::Failed(e.to_string()))?;
        let encoded_size = encoding
            .encoded_blob_length(size)
            .map_err(|e| BlobStoreError::Failed(e.to_string()))?;
        let epoch = self.sui_epoch().await?;
        let want = Want {
            blob_id,
            size,
            encoded_size,
            epochs: options.epochs,
            end_epoch: epoch + u64::from(options.epochs),
            deletable: options.deletable,
        };
        let body = Bytes::from(data);

        let publishers = &self.config.publishers;
        let n = publishers.len();
        let start = self.next_publisher.fetch_add(1, Ordering::Relaxed);
        let mut rejected = vec![false; n];
        let mut failures: Vec<String> = Vec::new();
        let mut backoff = FIRST_BACKOFF;
        for attempt in 0..n.max(MIN_PUT_ATTEMPTS) {
            let Some(i) = (0..n)
                .map(|k| (start + attempt + k) % n)
                .find(|&i| !rejected[i])
            else {
                break;
            };
            let publisher = &publishers[i];
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            let mut result = self.put_once(publisher, &body, &want, false).await;
            if let Err(Attempt::NotEnough(why)) = &result {
                info!(%blob_id, %publisher, %why, "already-certified answer does not prove the store; storing again");
                result = match self.put_once(publisher, &body, &want, true).await {
                    Err(Attempt::NotEnough(m)) => Err(Attempt::Rejected(m)),
                    other => other,
                };
            }
            match result {
                Ok(stored) => {
                    info!(%blob_id, size, %publisher, end_epoch = stored.end_epoch, "blob stored and checked on Sui");
                    return Ok(stored);
                }
                Err(Attempt::Stop(e)) => return Err(e),
                Err(Attempt::Transient(m)) => {
                    warn!(%blob_id, %publisher, error = %m, "store attempt failed; trying again");
                    failures.push(format!("{publisher}: {m}"));
                }
                Err(Attempt::Rejected(m) | Attempt::NotEnough(m)) => {
                    warn!(%blob_id, %publisher, error = %m, "publisher's answer failed the checks");
                    rejected[i] = true;
                    failures.push(format!("{publisher}: {m}"));
                }
            }
        }
        let summary = format!(
            "could not store blob {blob_id} ({size} bytes) through any publisher: {}",
            failures.join("; ")
        );
        Err(if rejected.iter().any(|&r| r) {
            BlobStoreError::Failed(summary)
        } else {
            BlobStoreError::Unavailable(summary)
        })
    }

    async fn get(&self, blob_id: BlobId, range: Range<u64>) -> Result<Vec<u8>, BlobStoreError> {
        if range.start > range.end {
            return Err(BlobStoreError::Failed(format!(
                "range {}..{} of blob {blob_id} ends before it starts",
                range.start, range.end
            )));
        }
        if range.is_empty() {
            // HTTP has no empty byte range; nothing to fetch.
            return Ok(Vec::new());
        }
        let order = self.aggregator_order();
        let (mut not_found, mut bad_range) = (0, None::<Option<u64>>);
        let mut failures = Vec::new();
        for i in order.iter().copied() {
            let aggregator = &self.config.aggregators[i];
            match self.get_once(i, blob_id, &range).await {
                Ok(bytes) => {
                    self.mark_aggregator(i, true);
                    return Ok(bytes);
                }
                Err(ReadFailure::NotFound) => not_found += 1,
                Err(ReadFailure::BadRange(len)) => {
                    bad_range = Some(len.or(bad_range.flatten()));
                    failures.push(format!("{aggregator}: 416 range not satisfiable"));
                }
                Err(ReadFailure::Other(m)) => {
                    warn!(%blob_id, %aggregator, error = %m, "aggregator read failed; asking the next");
                    self.mark_aggregator(i, false);
                    failures.push(format!("{aggregator}: {m}"));
                }
            }
        }
        let n = order.len();
        if not_found == n {
            return Err(BlobStoreError::NotFound { blob_id });
        }
        if let Some(Some(len)) = bad_range
            && failures.len() + not_found == n
            && failures
                .iter()
                .all(|f| f.ends_with("416 range not satisfiable"))
        {
            return Err(BlobStoreError::BadRange {
                blob_id,
                start: range.start,
                end: range.end,
                len,
            });
        }
        if not_found > 0 {
            failures.push(format!("{not_found} aggregator(s) answered 404"));
        }
        Err(BlobStoreError::Unavailable(format!(
            "no aggregator served bytes {}..{} of blob {blob_id}: {}",
            range.start,
            range.end,
            failures.join("; ")
        )))
    }

    async fn delete(&self, blob_id: BlobId) -> Result<(), BlobStoreError> {
        Err(self.not_owner("delete", blob_id))
    }

    /// The blob object belongs to the publisher's wallet, so it cannot be extended from
    /// here; the blob is stored again instead, through a publisher, for `epochs` from now:
    /// its bytes are read back from an aggregator, checked to hash to `blob_id` (so what is
    /// stored again is exactly the blob), and put as any blob, with every check of a put.
    /// The blob ID stays the same; the new Blob object carries the new end epoch.
    async fn extend(&self, blob_id: BlobId, epochs: u32) -> Result<u64, BlobStoreError> {
        let data = self.fetch_whole(blob_id).await?;
        let stored = self
            .put(
                data,
                PutOptions {
                    epochs,
                    deletable: true,
                },
            )
            .await?;
        if stored.blob_id != blob_id {
            return Err(BlobStoreError::Failed(format!(
                "storing blob {blob_id} again gave blob {}",
                stored.blob_id
            )));
        }
        Ok(stored.end_epoch)
    }

    async fn current_epoch(&self) -> Result<u64, BlobStoreError> {
        self.sui_epoch().await
    }
}

impl WalrusHttpStore {
    /// The whole blob from the first aggregator whose bytes hash to `blob_id`.
    async fn fetch_whole(&self, blob_id: BlobId) -> Result<Vec<u8>, BlobStoreError> {
        let timeout = self.config.read_timeout;
        let mut failures = Vec::new();
        for i in self.aggregator_order() {
            let aggregator = &self.config.aggregators[i];
            let resp = match self
                .http
                .get(format!("{aggregator}/v1/blobs/{blob_id}"))
                .timeout(timeout)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{aggregator}: {}", describe(&e, timeout)));
                    continue;
                }
            };
            if resp.status() != StatusCode::OK {
                failures.push(format!("{aggregator}: answered {}", resp.status()));
                continue;
            }
            let bytes = match read_body(resp, self.max_size(), timeout).await {
                Ok(b) => b,
                Err(m) => {
                    failures.push(format!("{aggregator}: {m}"));
                    continue;
                }
            };
            let encoding = self.encoding;
            let checked = tokio::task::spawn_blocking(move || {
                let id = encoding.blob_id(&bytes);
                (id, bytes)
            })
            .await;
            match checked {
                Ok((Ok(id), bytes)) if id == blob_id => return Ok(bytes),
                Ok((Ok(id), _)) => {
                    warn!(%blob_id, %aggregator, got = %id, "aggregator sent bytes of another blob");
                    failures.push(format!("{aggregator}: sent bytes of blob {id}"));
                }
                Ok((Err(e), _)) => failures.push(format!("{aggregator}: {e}")),
                Err(e) => failures.push(format!("{aggregator}: {e}")),
            }
        }
        Err(BlobStoreError::Unavailable(format!(
            "cannot read blob {blob_id} back to store it again: {}",
            failures.join("; ")
        )))
    }

    fn not_owner(&self, operation: &'static str, blob_id: BlobId) -> BlobStoreError {
        BlobStoreError::NotOwner {
            operation,
            blob_id,
            owner: format!("the publisher ({})", self.config.publishers.join(", ")),
            backend: BACKEND,
        }
    }
}

/// The HTTP client of the backend: HTTPS (rustls, the system's roots) and plain HTTP.
fn http_client(connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .user_agent(concat!("walrusfs/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn sui_error(e: SuiError, what: &str) -> BlobStoreError {
    let msg = format!("cannot read {what} from Sui: {e}");
    match e {
        SuiError::Unavailable(_) => BlobStoreError::Unavailable(msg),
        SuiError::NotFound(_) | SuiError::Invalid(_) => BlobStoreError::Failed(msg),
    }
}

/// A transport error in words: time-out, refused connection, with its causes.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {}s", timeout.as_secs());
    }
    let mut msg = if e.is_connect() {
        "cannot connect".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Reads a body of at most `cap` bytes.
async fn read_body(
    mut resp: reqwest::Response,
    cap: u64,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    if let Some(n) = resp.content_length()
        && n > cap
    {
        return Err(format!("announced {n} bytes, more than the {cap} expected"));
    }
    let mut out = Vec::with_capacity(resp.content_length().unwrap_or(0).min(cap) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e, timeout))? {
        if out.len() as u64 + chunk.len() as u64 > cap {
            return Err(format!("sent more than the {cap} bytes expected"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `bytes A-B/LEN`, `bytes A-B/*` or `bytes */LEN`.
fn parse_content_range(v: &str) -> Option<(Option<u64>, Option<u64>, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (span, len) = rest.split_once('/')?;
    let len = match len.trim() {
        "*" => None,
        l => Some(l.parse().ok()?),
    };
    if span.trim() == "*" {
        return Some((None, None, len));
    }
    let (a, b) = span.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((Some(a), Some(b), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The public services are HTTPS only: an https URL must get a TLS handshake.
    #[tokio::test]
    async fn https_urls_speak_tls() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut first = [0u8; 3];
            sock.read_exact(&mut first).await.unwrap();
            first
        });
        let http = http_client(Duration::from_secs(2)).unwrap();
        let sent = http
            .get(format!("https://127.0.0.1:{port}/v1/blobs/x"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        assert!(sent.is_err());
        // A TLS record of type handshake (22), version 3.x: a ClientHello.
        let first = server.await.unwrap();
        assert_eq!((first[0], first[1]), (0x16, 0x03), "{first:?}");
    }

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((Some(0), Some(9), Some(100)))
        );
        assert_eq!(
            parse_content_range("bytes 5-5/*"),
            Some((Some(5), Some(5), None))
        );
        assert_eq!(
            parse_content_range("bytes */42"),
            Some((None, None, Some(42)))
        );
        for bad in [
            "bytes 9-0/100",
            "items 0-1/2",
            "bytes 0-1",
            "bytes a-b/3",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }
}
