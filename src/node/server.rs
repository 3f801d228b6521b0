//! The HTTP face of the storage node: routes of `walrus-spec/storage_openapi.yaml`, request
//! decoding (never trusting a byte), per-request spans, fault injection, and the server's
//! start and stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt as _;
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{Instrument as _, debug, debug_span, info, info_span, warn};

use crate::encoding::{BlobId, BlobMetadata, BlobMetadataWithId, EncodingError, SliverType};
use crate::protocol::{
    ApiSuccess, ApiSuccessBody, BlobPersistenceType, ObjectId, StorageConfirmation,
};

use super::api::{ApiBlobStatus, ServiceHealthInfo};
use super::config::NodeConfig;
use super::error::NodeError;
use super::received::ReceivedSliver;
use super::service::StorageNode;

pub const METADATA_ENDPOINT: &str = "/v1/blobs/{blob_id}/metadata";
pub const SLIVER_ENDPOINT: &str = "/v1/blobs/{blob_id}/slivers/{sliver_pair_index}/{sliver_type}";
pub const PERMANENT_CONFIRMATION_ENDPOINT: &str = "/v1/blobs/{blob_id}/confirmation/permanent";
pub const DELETABLE_CONFIRMATION_ENDPOINT: &str =
    "/v1/blobs/{blob_id}/confirmation/deletable/{object_id}";
pub const BLOB_STATUS_ENDPOINT: &str = "/v1/blobs/{blob_id}/status";
pub const HEALTH_ENDPOINT: &str = "/v1/health";

/// How long a shutdown waits for requests in flight before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

type NodeState = Arc<StorageNode>;

/// The node's REST API as an axum router.
pub fn router(node: NodeState) -> Router {
    Router::new()
        .route(
            METADATA_ENDPOINT,
            // Bodies are read by the handlers, which enforce the node's limits themselves.
            get(get_metadata).put(put_metadata),
        )
        .route(SLIVER_ENDPOINT, get(get_sliver).put(put_sliver))
        .route(
            PERMANENT_CONFIRMATION_ENDPOINT,
            get(get_permanent_confirmation),
        )
        .route(
            DELETABLE_CONFIRMATION_ENDPOINT,
            get(get_deletable_confirmation),
        )
        .route(BLOB_STATUS_ENDPOINT, get(get_blob_status))
        .route(HEALTH_ENDPOINT, get(get_health))
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(
            node.clone(),
            request_context,
        ))
        .with_state(node)
}

// ---------------------------------------------------------------------------------------------
// Middleware: request spans and fault injection
// ---------------------------------------------------------------------------------------------

static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

async fn request_context(State(node): State<NodeState>, req: Request, next: Next) -> Response {
    let id = NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("request", id, method = %req.method(), path = %req.uri().path());
    async move {
        let faults = node.faults();
        if faults.stall {
            // TEST ONLY: hold the request (and its connection) forever.
            debug!("stalling (fault injection)");
            std::future::pending::<()>().await;
        }
        if faults.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.delay_ms)).await;
        }
        let response = next.run(req).await;
        debug!(status = response.status().as_u16(), "answered");
        response
    }
    .instrument(span)
    .await
}

// ---------------------------------------------------------------------------------------------
// Request decoding
// ---------------------------------------------------------------------------------------------

fn parse_blob_id(s: &str) -> Result<BlobId, NodeError> {
    s.parse().map_err(
        |e: crate::encoding::BlobIdParseError| NodeError::InvalidParameter {
            reason: e.to_string(),
        },
    )
}

fn parse_pair_index(s: &str) -> Result<u32, NodeError> {
    s.parse().map_err(|_| NodeError::InvalidParameter {
        reason: format!(
            "sliver pair index `{}` is not a non-negative integer",
            s.chars().take(40).collect::<String>()
        ),
    })
}

fn parse_sliver_type(s: &str) -> Result<SliverType, NodeError> {
    match s {
        "primary" => Ok(SliverType::Primary),
        "secondary" => Ok(SliverType::Secondary),
        other => Err(NodeError::InvalidParameter {
            reason: format!(
                "sliver type `{}` is neither `primary` nor `secondary`",
                other.chars().take(40).collect::<String>()
            ),
        }),
    }
}

fn parse_object_id(s: &str) -> Result<ObjectId, NodeError> {
    s.parse().map_err(
        |e: crate::protocol::ObjectIdParseError| NodeError::InvalidParameter {
            reason: e.to_string(),
        },
    )
}

fn path_error(e: PathRejection) -> NodeError {
    NodeError::InvalidParameter {
        reason: e.body_text(),
    }
}

fn query_error(e: QueryRejection) -> NodeError {
    NodeError::InvalidParameter {
        reason: format!("invalid query string: {}", e.body_text()),
    }
}

/// Bodies are BCS: no content type (as Walrus clients send them) or `application/octet-stream`.
fn check_content_type(headers: &HeaderMap) -> Result<(), NodeError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("<not text>");
    let media_type = text.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case("application/octet-stream") {
        Ok(())
    } else {
        Err(NodeError::UnsupportedContentType {
            content_type: text.chars().take(80).collect(),
        })
    }
}

/// A request's `Content-Length`, if it has a valid one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Hands a body of at most `limit` bytes to `feed` chunk by chunk as it arrives. A longer
/// one is refused as soon as that is known: from `Content-Length`, else once more than
/// `limit` bytes have arrived; its rest is drained first ([`drain_refused`]).
async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    mut feed: impl FnMut(&[u8]) -> Result<(), NodeError>,
) -> Result<(), NodeError> {
    let mut stream = body.into_data_stream();
    if let Some(n) = content_length(headers).filter(|&n| n > limit as u64) {
        drain_refused(stream, n).await;
        return Err(NodeError::BodyTooLarge { limit });
    }
    let mut received = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| NodeError::BadBody {
            reason: format!("cannot read the body: {e}"),
        })?;
        received += chunk.len();
        if received > limit {
            drain_refused(stream, u64::MAX).await;
            return Err(NodeError::BodyTooLarge { limit });
        }
        feed(&chunk)?;
    }
    Ok(())
}

/// Receives a sliver PUT body into a page-aligned buffer, then checks its framing
/// ([`ReceivedSliver`]: the buffer is the file the store writes). With a `Content-Length`,
/// the buffer is allocated once, at its final size; without one it grows as the body
/// arrives. A body longer than `limit` is refused ([`read_limited`]).
async fn read_sliver_body(
    headers: &HeaderMap,
    body: Body,
    sliver_type: SliverType,
    limit: usize,
) -> Result<ReceivedSliver, NodeError> {
    let announced = content_length(headers).unwrap_or(0).min(limit as u64);
    let mut bcs = crate::direct_io::aligned_with_capacity(usize::try_from(announced).unwrap_or(0));
    read_limited(headers, body, limit, |chunk| {
        bcs.extend_from_slice(chunk);
        Ok(())
    })
    .await?;
    ReceivedSliver::new(bcs, sliver_type).map_err(|source| NodeError::MalformedBody {
        what: "sliver",
        source,
    })
}

/// At most this much of a refused body is read (and dropped) before the refusal is sent.
const DRAIN_MAX: u64 = 16 << 20;
/// ... and for at most this long.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads and drops the rest of a body that is refused as too large (`announced` bytes in
/// all, `u64::MAX` if unknown), within [`DRAIN_MAX`] and [`DRAIN_TIME`]. An HTTP/1.1 server
/// that answers early closes the connection on a client still sending, whose next write
/// then fails with a reset, often before it reads the answer: the client would see a broken
/// connection instead of "413, body too large". A body far over the limit is not read: the
/// connection is closed on it as before.
async fn drain_refused(mut stream: axum::body::BodyDataStream, announced: u64) {
    if announced != u64::MAX && announced > DRAIN_MAX {
        return;
    }
    let drain = async {
        let mut read = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len() as u64;
            if read > DRAIN_MAX {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}

/// Reads a whole (small) body of at most `limit` bytes; a longer one is refused
/// ([`read_limited`]).
async fn read_small_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, NodeError> {
    let announced = content_length(headers).unwrap_or(0).min(limit as u64);
    let mut bytes = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
    read_limited(headers, body, limit, |chunk| {
        bytes.extend_from_slice(chunk);
        Ok(())
    })
    .await?;
    Ok(bytes.into())
}

/// Decodes a metadata PUT body for `blob_id`. Walrus clients send `BlobMetadata`; a
/// `BlobMetadataWithId` naming the same blob is accepted too.
fn decode_metadata(blob_id: BlobId, bytes: &[u8]) -> Result<BlobMetadata, NodeError> {
    match bcs::from_bytes::<BlobMetadata>(bytes) {
        Ok(m) => Ok(m),
        Err(first) => match BlobMetadataWithId::from_bcs(bytes) {
            Ok(with_id) if with_id.blob_id == blob_id => Ok(with_id.metadata),
            Ok(with_id) => Err(NodeError::MetadataBlobIdMismatch {
                path: blob_id,
                body: with_id.blob_id,
            }),
            Err(_) => Err(NodeError::MalformedBody {
                what: "blob metadata",
                source: EncodingError::Bcs {
                    what: "blob metadata",
                    reason: first.to_string(),
                },
            }),
        },
    }
}

fn success<T>(code: StatusCode, data: T) -> (StatusCode, Json<ApiSuccess<T>>) {
    (
        code,
        Json(ApiSuccess {
            success: ApiSuccessBody {
                code: code.as_u16(),
                data,
            },
        }),
    )
}

fn octet_stream(bytes: impl Into<Bytes>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        bytes.into(),
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
struct UploadQuery {
    /// Walrus's "buffer until registered" flag. Our nodes consult the ledger directly, so
    /// uploads for registered blobs succeed at once and others fail either way.
    #[serde(default)]
    #[allow(dead_code)]
    pending: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct ConfirmationQuery {
    #[serde(default)]
    wait_for_registration: bool,
    #[serde(default)]
    wait_millis: Option<u64>,
}

impl ConfirmationQuery {
    fn wait(&self) -> Option<Duration> {
        self.wait_for_registration.then(|| {
            self.wait_millis
                .map_or(Duration::MAX, Duration::from_millis)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

async fn get_metadata(
    State(node): State<NodeState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, NodeError> {
    let Path(blob_id) = path.map_err(path_error)?;
    let blob_id = parse_blob_id(&blob_id)?;
    node.metadata_bcs(blob_id)
        .instrument(debug_span!("get_metadata", %blob_id))
        .await
        .map(octet_stream)
}

async fn put_metadata(
    State(node): State<NodeState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, NodeError> {
    let Path(blob_id) = path.map_err(path_error)?;
    let blob_id = parse_blob_id(&blob_id)?;
    query.map_err(query_error)?;
    check_content_type(&headers)?;
    let bytes = read_small_body(&headers, body, node.limits().max_metadata_body_bytes).await?;
    let metadata = decode_metadata(blob_id, &bytes)?;
    let stored = node
        .store_metadata(blob_id, metadata)
        .instrument(debug_span!("put_metadata", %blob_id))
        .await?;
    Ok(if stored {
        success(StatusCode::CREATED, "metadata successfully stored")
    } else {
        success(StatusCode::OK, "metadata already stored")
    })
}

async fn get_sliver(
    State(node): State<NodeState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, NodeError> {
    let Path((blob_id, pair, sliver_type)) = path.map_err(path_error)?;
    let blob_id = parse_blob_id(&blob_id)?;
    let pair = parse_pair_index(&pair)?;
    let sliver_type = parse_sliver_type(&sliver_type)?;
    node.sliver_bcs(blob_id, pair, sliver_type)
        .instrument(debug_span!("get_sliver", %blob_id, pair, %sliver_type))
        .await
        .map(octet_stream)
}

async fn put_sliver(
    State(node): State<NodeState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, NodeError> {
    let Path((blob_id, pair, sliver_type)) = path.map_err(path_error)?;
    let blob_id = parse_blob_id(&blob_id)?;
    let pair = parse_pair_index(&pair)?;
    let sliver_type = parse_sliver_type(&sliver_type)?;
    query.map_err(query_error)?;
    check_content_type(&headers)?;
    let sliver = read_sliver_body(
        &headers,
        body,
        sliver_type,
        node.limits().max_sliver_body_bytes,
    )
    .await?;
    let stored = node
        .store_sliver(blob_id, pair, sliver)
        .instrument(debug_span!("put_sliver", %blob_id, pair, %sliver_type))
        .await?;
    Ok(if stored {
        success(StatusCode::CREATED, "sliver stored successfully")
    } else {
        success(StatusCode::OK, "sliver already stored")
    })
}

async fn confirm(
    node: &StorageNode,
    blob_id: BlobId,
    persistence: BlobPersistenceType,
    query: Result<Query<ConfirmationQuery>, QueryRejection>,
) -> Result<Json<ApiSuccess<StorageConfirmation>>, NodeError> {
    let Query(query) = query.map_err(query_error)?;
    let confirmation = node
        .confirmation_with_wait(blob_id, persistence, query.wait())
        .instrument(debug_span!("confirmation", %blob_id, %persistence))
        .await?;
    Ok(Json(ApiSuccess::ok(confirmation)))
}

async fn get_permanent_confirmation(
    State(node): State<NodeState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ConfirmationQuery>, QueryRejection>,
) -> Result<Json<ApiSuccess<StorageConfirmation>>, NodeError> {
    let Path(blob_id) = path.map_err(path_error)?;
    let blob_id = parse_blob_id(&blob_id)?;
    confirm(&node, blob_id, BlobPersistenceType::Permanent, query).await
}

async fn get_deletable_confirmation(
    State(node): State<NodeState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<ConfirmationQuery>, QueryRejection>,
) -> Result<Json<ApiSuccess<StorageConfirmation>>, NodeError> {
    let Path((blob_id, object_id)) = path.map_err(path_error)?;
    let blob_id = parse_blob_id(&blob_id)?;
    let object_id = parse_object_id(&object_id)?;
    confirm(
        &node,
        blob_id,
        BlobPersistenceType::Deletable { object_id },
        query,
    )
    .await
}

async fn get_blob_status(
    State(node): State<NodeState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ApiSuccess<ApiBlobStatus>>, NodeError> {
    let Path(blob_id) = path.map_err(path_error)?;
    let blob_id = parse_blob_id(&blob_id)?;
    let status = node
        .blob_status(blob_id)
        .instrument(debug_span!("blob_status", %blob_id))
        .await?;
    Ok(Json(ApiSuccess::ok(status)))
}

/// Always 200 while the process serves requests; `nodeStatus` tells how it fares. The
/// `detailed` query parameter is accepted and ignored: the shard list is always included.
async fn get_health(State(node): State<NodeState>) -> Json<ApiSuccess<ServiceHealthInfo>> {
    Json(ApiSuccess::ok(node.health().await))
}

async fn no_route(method: Method, uri: Uri) -> NodeError {
    NodeError::NoRoute {
        method: method.to_string(),
        path: uri.path().chars().take(200).collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Running the server
// ---------------------------------------------------------------------------------------------

/// A node serving its API on a background task.
#[derive(Debug)]
pub struct RunningNode {
    addr: SocketAddr,
    node: NodeState,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), NodeError>>,
}

impl RunningNode {
    /// Opens the node of `config` and serves it on `config.listen`.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        let listen = config.listen;
        let node = tokio::task::spawn_blocking(move || StorageNode::open(&config))
            .await
            .map_err(|e| NodeError::Internal {
                reason: format!("opening the node panicked: {e}"),
            })??;
        Self::serve(node, listen).await
    }

    /// Serves an opened node on `listen` (port 0: any free port; see [`Self::local_addr`]).
    pub async fn serve(node: StorageNode, listen: SocketAddr) -> Result<Self, NodeError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| NodeError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: listen,
            source,
        })?;
        let node = Arc::new(node);
        let app = router(node.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    // A dropped sender also means "stop".
                    let _ = rx.await;
                })
                .await
                .map_err(NodeError::Serve)
        });
        info!(%addr, public_key = %node.public_key(), "storage node listening");
        Ok(Self {
            addr,
            node,
            shutdown: Some(tx),
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port`, the base URL of the API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn node(&self) -> &Arc<StorageNode> {
        &self.node
    }

    /// Stops accepting connections, lets requests in flight finish for a few seconds, then
    /// drops the rest (a stalled node's requests never finish).
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        if self.node.faults().stall {
            // TEST ONLY: a stalled node's requests never finish; do not wait for them.
            self.task.abort();
            return Ok(());
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(NodeError::Internal {
                reason: format!("the server task failed: {e}"),
            }),
            Err(_) => {
                warn!(addr = %self.addr, "requests still open after the grace period; dropping them");
                self.task.abort();
                Ok(())
            }
        }
    }

    /// Waits until the server stops by itself (it only does on an I/O error).
    pub async fn wait(mut self) -> Result<(), NodeError> {
        (&mut self.task).await.map_err(|e| NodeError::Internal {
            reason: format!("the server task failed: {e}"),
        })?
    }
}

/// Runs the node of `config` until `shutdown` completes. Prints `listening on ADDR` on
/// stdout once the API accepts connections, so scripts using port 0 learn the port.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), NodeError> {
    keep_freed_memory();
    // The codec's tables (a few ms), built before the first sliver arrives.
    std::thread::spawn(crate::encoding::prepare_codec);
    let mut node = RunningNode::start(config).await?;
    println!("listening on {}", node.local_addr());
    tokio::select! {
        () = shutdown => {}
        // The server only stops by itself on an I/O error.
        result = &mut node.task => {
            return result.map_err(|e| NodeError::Internal {
                reason: format!("the server task failed: {e}"),
            })?;
        }
    }
    info!("shutting down");
    node.shutdown().await
}

/// Makes glibc's allocator of this process keep freed memory for reuse: sliver bodies and
/// verification buffers (MBs each, hundreds per blob) then land in memory touched before
/// instead of fresh mappings, whose page faults and zeroing cost more than the copies into
/// them (on a VM especially). Memory is still reused, only not returned to the system. Also
/// used by the `blob` commands (HTTP receive buffers that grow by reallocation).
pub(crate) fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; glibc takes its own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}
