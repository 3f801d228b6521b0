//! TEST-ONLY STAND-IN for Walrus's publisher and aggregators (not Walrus, not for real data):
//! one publisher and N aggregators on loopback, built from the wire contract in
//! `walrus-spec/publisher_openapi.yaml` and `aggregator_openapi.yaml`, so that the
//! `walrus-http` backend can be tested with real HTTP and no network. Used by
//! `tests/walrus_http.rs` and run by hand with `cargo run --example walrus_standin`.
//!
//! What it does like the real services:
//! - the publisher computes the real blob ID with our RS2 encoding at `n_shards`, keeps the
//!   bytes on disk (`DIR/blobs/<blob ID>`), and records a `Blob` object and a
//!   `BlobCertified` event in a Sui state through a [`SuiRecorder`] (a [`MemorySui`] here; the
//!   stand-in Sui full node of `tests/standin/sui.rs` once it is merged);
//! - it answers `newlyCreated`, or `alreadyCertified` (with `object` for a deletable blob it
//!   already holds, `event` for a permanent one) when the blob is certified long enough and
//!   `force` was not given, in camelCase like the running services;
//! - the aggregators serve `GET /v1/blobs/{id}` with `Range: bytes=a-b` (206 and
//!   `Content-Range`), 404 for unknown blobs and 416 for ranges outside the blob.
//!
//! Faults ([`Faults`]) are set at run time through [`StandIn::set_faults`] or, for the
//! example binary, `PUT {admin_url}/faults` with the same JSON (`GET` shows them).
#![allow(dead_code)]

mod aggregator;
mod publisher;
pub mod sui;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use walrusfs::encoding::BlobId;
use walrusfs::sui::{BlobCertifiedEvent, BlobObject, MemorySui};

/// Where the stand-in publisher records what it "certified". The stand-in Sui full node
/// (`tests/standin/sui.rs`, another branch) implements this too, so the real gRPC
/// `SuiReader` can then read the same objects.
pub trait SuiRecorder: Send + Sync + 'static {
    fn record_blob(&self, blob: BlobObject);
    /// Records a transaction emitting `event`; returns its digest and the event's number.
    fn record_event(&self, event: BlobCertifiedEvent) -> (String, u64);
    fn set_epoch(&self, epoch: u32);
}

impl SuiRecorder for sui::SuiStandIn {
    fn record_blob(&self, blob: BlobObject) {
        self.insert_blob(blob);
    }
    fn record_event(&self, event: BlobCertifiedEvent) -> (String, u64) {
        self.insert_certified_event(event)
    }
    fn set_epoch(&self, epoch: u32) {
        sui::SuiStandIn::set_epoch(self, epoch);
    }
}

impl SuiRecorder for MemorySui {
    fn record_blob(&self, blob: BlobObject) {
        self.insert_blob(blob);
    }
    fn record_event(&self, event: BlobCertifiedEvent) -> (String, u64) {
        let digest = bs58::encode(rand::random::<[u8; 32]>()).into_string();
        self.insert_event(&digest, 0, event);
        (digest, 0)
    }
    fn set_epoch(&self, epoch: u32) {
        MemorySui::set_epoch(self, epoch);
    }
}

/// What the publisher answers to a store without `force=true`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublisherAnswer {
    /// What the real publisher would answer.
    #[default]
    Normal,
    /// `alreadyCertified` with a `BlobCertified` event of a permanent blob (recorded on Sui).
    AlreadyCertifiedEvent,
    /// `alreadyCertified` with the object of a deletable blob (recorded on Sui), whatever
    /// was asked for.
    AlreadyCertifiedObject,
    /// `alreadyCertified` with an event whose end epoch is one short of what was asked.
    AlreadyCertifiedShort,
    /// `markedInvalid`.
    MarkedInvalid,
    /// The `error` result (`failurePhase`, `errorMsg`), with status 200.
    Error,
}

/// What one aggregator does wrong.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregatorFault {
    #[default]
    None,
    /// Sleeps this long before answering.
    Slow { ms: u64 },
    /// 500 to everything.
    Fail,
    /// The right length, every byte flipped.
    WrongBytes,
    /// A 206 with the right `Content-Range` and one byte missing.
    ShortBody,
    /// Ignores `Range`: 200 with the whole blob.
    IgnoreRange,
}

/// Faults of the stand-in, all off by default. JSON for the admin endpoint, e.g.
/// `{"wrong_blob_id": true}` or `{"aggregators": [{"slow": {"ms": 5000}}, "fail"]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// The publisher names another blob ID in its answer (and on Sui).
    pub wrong_blob_id: bool,
    pub answer: PublisherAnswer,
    /// The publisher wants `Authorization: Bearer <this>` (401 without).
    pub require_token: Option<String>,
    /// The publisher refuses larger bodies with 413.
    pub body_limit: Option<u64>,
    /// `newlyCreated`, but the object on Sui is not certified.
    pub uncertified: bool,
    /// `newlyCreated`, but the object on Sui ends one epoch early.
    pub short_end_epoch: bool,
    /// Answer in the YAML's snake_case (`blob_object`, `end_epoch`) instead of camelCase.
    pub snake_case: bool,
    /// Per aggregator, by index; missing entries are healthy.
    pub aggregators: Vec<AggregatorFault>,
    /// Write every request body the publisher receives to this directory.
    pub capture_dir: Option<PathBuf>,
}

/// How to start a stand-in.
pub struct StandInOptions {
    pub n_shards: u16,
    pub aggregators: usize,
    pub epoch: u32,
    pub sui: Arc<dyn SuiRecorder>,
}

impl StandInOptions {
    /// 10 shards (blobs up to 1,834,952 bytes, fast to encode), 2 aggregators, epoch 1.
    pub fn new(sui: Arc<dyn SuiRecorder>) -> Self {
        Self {
            n_shards: 10,
            aggregators: 2,
            epoch: 1,
            sui,
        }
    }
}

/// A store request as the publisher saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherRequest {
    pub query: String,
    pub authorization: Option<String>,
    pub size: usize,
}

/// A blob the publisher certified.
#[derive(Debug, Clone)]
pub(crate) struct Certified {
    pub object_id: [u8; 32],
    pub end_epoch: u32,
    pub deletable: bool,
    pub event: (String, u64),
}

/// State shared by the publisher, the aggregators and the admin endpoint.
pub(crate) struct Shared {
    pub blobs_dir: PathBuf,
    pub n_shards: u16,
    pub faults: Mutex<Faults>,
    pub sui: Arc<dyn SuiRecorder>,
    pub epoch: AtomicU32,
    pub certified: Mutex<HashMap<BlobId, Certified>>,
    pub requests: Mutex<Vec<PublisherRequest>>,
    pub aggregator_hits: Vec<AtomicU64>,
    pub counter: AtomicU64,
}

impl Shared {
    pub fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    /// A fresh 32-byte ID (objects, digests): unique per stand-in and run.
    pub fn fresh_id(&self) -> [u8; 32] {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut h = blake3::Hasher::new();
        h.update(self.blobs_dir.as_os_str().as_encoded_bytes());
        h.update(&n.to_le_bytes());
        *h.finalize().as_bytes()
    }

    pub fn blob_path(&self, blob_id: &BlobId) -> PathBuf {
        self.blobs_dir.join(blob_id.to_string())
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running stand-in. Dropping it stops the servers.
pub struct StandIn {
    pub dir: PathBuf,
    pub publisher_url: String,
    pub aggregator_urls: Vec<String>,
    /// `GET`/`PUT {admin_url}/faults` (JSON [`Faults`]), `PUT {admin_url}/epoch` (a number).
    pub admin_url: String,
    pub n_shards: u16,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn serve(router: axum::Router) -> std::io::Result<(String, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((url, task))
}

/// The stand-in's system and staking objects (they are only written into the client config).
pub const SYSTEM_OBJECT: &str =
    "0x5157a4d5e0000000000000000000000000000000000000000000000000005157";
pub const STAKING_OBJECT: &str =
    "0x5157a4d5e000000000000000000000000000000000000000000000000005a4e0";

impl StandIn {
    /// Starts a publisher, `options.aggregators` aggregators and the admin endpoint on
    /// loopback, keeping blobs in `dir/blobs`.
    pub async fn start(dir: &Path, options: StandInOptions) -> std::io::Result<StandIn> {
        let blobs_dir = dir.join("blobs");
        std::fs::create_dir_all(&blobs_dir)?;
        options.sui.set_epoch(options.epoch);
        let shared = Arc::new(Shared {
            blobs_dir,
            n_shards: options.n_shards,
            faults: Mutex::new(Faults::default()),
            sui: options.sui,
            epoch: AtomicU32::new(options.epoch),
            certified: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            aggregator_hits: (0..options.aggregators)
                .map(|_| AtomicU64::new(0))
                .collect(),
            counter: AtomicU64::new(0),
        });
        let mut tasks = Vec::new();
        let (publisher_url, t) = serve(publisher::router(shared.clone())).await?;
        tasks.push(t);
        let mut aggregator_urls = Vec::new();
        for i in 0..options.aggregators {
            let (url, t) = serve(aggregator::router(shared.clone(), i)).await?;
            aggregator_urls.push(url);
            tasks.push(t);
        }
        let (admin_url, t) = serve(admin_router(shared.clone())).await?;
        tasks.push(t);
        Ok(StandIn {
            dir: dir.to_path_buf(),
            publisher_url,
            aggregator_urls,
            admin_url,
            n_shards: options.n_shards,
            shared,
            tasks,
        })
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    /// Changes the faults in place: `standin.update_faults(|f| f.wrong_blob_id = true)`.
    pub fn update_faults(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut lock(&self.shared.faults));
    }

    pub fn epoch(&self) -> u32 {
        self.shared.epoch.load(Ordering::Relaxed)
    }

    /// Moves the network's epoch (here and in the Sui state).
    pub fn set_epoch(&self, epoch: u32) {
        self.shared.epoch.store(epoch, Ordering::Relaxed);
        self.shared.sui.set_epoch(epoch);
    }

    /// Every store request the publisher received, in order.
    pub fn publisher_requests(&self) -> Vec<PublisherRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Requests each aggregator received.
    pub fn aggregator_hits(&self) -> Vec<u64> {
        self.shared
            .aggregator_hits
            .iter()
            .map(|h| h.load(Ordering::Relaxed))
            .collect()
    }

    /// Where the publisher keeps a blob's bytes.
    pub fn blob_path(&self, blob_id: &BlobId) -> PathBuf {
        self.shared.blob_path(blob_id)
    }

    /// Writes a `walrus-http` network file at `path` for this stand-in, and beside it the
    /// Walrus client config it names (`<stem>.client_config.yaml`) with `sui_url` as its only
    /// rpc URL. `extra` is appended to the network file as is (TOML lines: timeouts, a token
    /// file, ...).
    pub fn write_network_file_with(
        &self,
        path: &Path,
        sui_url: &str,
        extra: &str,
    ) -> std::io::Result<()> {
        self.write_network_file_objects(path, sui_url, SYSTEM_OBJECT, STAKING_OBJECT, extra)
    }

    /// A network file naming the stand-in Sui full node `sui` (its URL and objects), for
    /// the real gRPC reader.
    pub fn write_network_file_for(
        &self,
        path: &Path,
        sui: &sui::SuiStandIn,
        extra: &str,
    ) -> std::io::Result<()> {
        let object = walrusfs::sui::layout::object_id_string;
        self.write_network_file_objects(
            path,
            &sui.url(),
            &object(&sui.system_object()),
            &object(&sui.staking_object()),
            extra,
        )
    }

    fn write_network_file_objects(
        &self,
        path: &Path,
        sui_url: &str,
        system_object: &str,
        staking_object: &str,
        extra: &str,
    ) -> std::io::Result<()> {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "network".into());
        let yaml_name = format!("{stem}.client_config.yaml");
        let yaml = format!(
            "# TEST-ONLY stand-in network (tests/standin), not a real Walrus network.\n\
             system_object: {system_object}\n\
             staking_object: {staking_object}\n\
             n_shards: {}\n\
             max_epochs_ahead: 53\n\
             rpc_urls:\n- {sui_url}\n",
            self.n_shards
        );
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::write(dir.join(&yaml_name), yaml)?;
        let quoted = |urls: &[String]| {
            urls.iter()
                .map(|u| format!("\"{u}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let toml = format!(
            "# TEST-ONLY stand-in publisher/aggregators (tests/standin), not a real Walrus network.\n\
             backend = \"walrus-http\"\n\
             walrus_config = \"{yaml_name}\"\n\
             publishers = [{}]\n\
             aggregators = [{}]\n{extra}\n",
            quoted(std::slice::from_ref(&self.publisher_url)),
            quoted(&self.aggregator_urls),
        );
        std::fs::write(path, toml)
    }

    /// [`Self::write_network_file_with`] with nothing extra.
    pub fn write_network_file(&self, path: &Path, sui_url: &str) -> std::io::Result<()> {
        self.write_network_file_with(path, sui_url, "")
    }
}

fn admin_router(shared: Arc<Shared>) -> axum::Router {
    async fn get_faults(State(s): State<Arc<Shared>>) -> Json<Faults> {
        Json(s.faults())
    }
    async fn put_faults(State(s): State<Arc<Shared>>, Json(f): Json<Faults>) -> Json<Faults> {
        *lock(&s.faults) = f.clone();
        Json(f)
    }
    async fn put_epoch(State(s): State<Arc<Shared>>, Json(epoch): Json<u32>) -> Json<u32> {
        s.epoch.store(epoch, Ordering::Relaxed);
        s.sui.set_epoch(epoch);
        Json(epoch)
    }
    axum::Router::new()
        .route("/faults", get(get_faults).put(put_faults))
        .route("/epoch", axum::routing::put(put_epoch))
        .with_state(shared)
}

/// A `Status` error body as the Walrus services send it.
pub(crate) fn status_body(code: u16, status: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"error": {"status": status, "code": code, "message": message, "details": []}})
}
