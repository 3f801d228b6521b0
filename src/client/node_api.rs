//! Typed calls to one storage node's REST API (`walrus-spec/storage_openapi.yaml`).

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{NodeError, plain_get};
use crate::encoding::{BlobId, BlobMetadataWithId, Sliver, SliverBcsReader, SliverType};
use crate::protocol::{ApiSuccess, ObjectId, SignedMessage, StorageConfirmation};

/// A storage node's HTTP endpoint.
#[derive(Clone)]
pub struct NodeApi {
    http: reqwest::Client,
    base: String,
    /// Time allowed per MiB of body on top of the base timeout, so large slivers do not time
    /// out on a loaded machine while small requests still fail fast.
    per_mib: Duration,
    timeout: Duration,
    /// For `http://` nodes: sliver GETs read straight into place (see [`super::plain_get`]).
    plain: Option<(Arc<plain_get::Pool>, Duration)>,
}

fn axis(t: SliverType) -> &'static str {
    match t {
        SliverType::Primary => "primary",
        SliverType::Secondary => "secondary",
    }
}

/// A request body sent as a sequence of byte pieces, with its length known up front (so it
/// goes out with a `Content-Length`, not chunked).
struct PiecesBody {
    pieces: std::collections::VecDeque<bytes::Bytes>,
    remaining: u64,
}

impl PiecesBody {
    fn new(pieces: &[bytes::Bytes]) -> Self {
        Self {
            pieces: pieces.iter().filter(|p| !p.is_empty()).cloned().collect(),
            remaining: pieces.iter().map(|p| p.len() as u64).sum(),
        }
    }
}

impl http_body::Body for PiecesBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let piece = self.pieces.pop_front();
        if let Some(p) = &piece {
            self.remaining -= p.len() as u64;
        }
        std::task::Poll::Ready(piece.map(|p| Ok(http_body::Frame::data(p))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

impl NodeApi {
    pub fn new(http: reqwest::Client, network_address: &str, timeout: Duration) -> Self {
        let base =
            if network_address.starts_with("http://") || network_address.starts_with("https://") {
                network_address.trim_end_matches('/').to_string()
            } else {
                format!("http://{network_address}")
            };
        Self {
            http,
            base,
            per_mib: Duration::from_millis(200),
            timeout,
            plain: None,
        }
    }

    /// Reads slivers from an `http://` node without `reqwest`, keeping idle connections in
    /// `pool` and allowing `connect_timeout` for a new one (see [`super::plain_get`]).
    pub(super) fn with_plain_gets(
        mut self,
        pool: Arc<plain_get::Pool>,
        connect_timeout: Duration,
    ) -> Self {
        self.plain = Some((pool, connect_timeout));
        self
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn timeout_for(&self, bytes: usize) -> Duration {
        self.timeout + self.per_mib.mul_f64(bytes as f64 / (1 << 20) as f64)
    }

    fn err(&self, e: reqwest::Error, timeout: Duration) -> NodeError {
        if e.is_timeout() {
            NodeError::Timeout {
                url: self.base.clone(),
                secs: timeout.as_secs_f64(),
            }
        } else {
            NodeError::Unreachable {
                url: self.base.clone(),
                reason: e.to_string(),
            }
        }
    }

    /// Sends `req` and returns the response if it is a success; otherwise the node's error.
    async fn start(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, NodeError> {
        let resp = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.err(e, timeout))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.map_err(|e| self.err(e, timeout))?;
        // The spec's `Status` JSON carries a message; fall back to the raw body.
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(|m| m.as_str())
                    .map(String::from)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
        Err(NodeError::Status {
            url: self.base.clone(),
            status: status.as_u16(),
            message,
        })
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<bytes_body::Body, NodeError> {
        let resp = self.start(req, timeout).await?;
        let body = resp.bytes().await.map_err(|e| self.err(e, timeout))?;
        // Usually a move, not a copy: the body was collected into one unique buffer.
        Ok(bytes_body::Body(Vec::from(body)))
    }

    /// Streams a sliver body into `reader` as it arrives (the timeout covers the whole body):
    /// through [`plain_get`] from an `http://` node, else (or if that declines) through
    /// reqwest.
    async fn stream_sliver(
        &self,
        blob_id: &BlobId,
        pair: u16,
        sliver_type: SliverType,
        expected_len: usize,
        reader: &mut SliverBcsReader<'_>,
    ) -> Result<(), NodeError> {
        let path = format!("/v1/blobs/{blob_id}/slivers/{pair}/{}", axis(sliver_type));
        let t = self.timeout_for(expected_len);
        if self.plain_get(&path, t, reader).await? {
            return Ok(());
        }
        let mut resp = self
            .start(self.http.get(format!("{}{path}", self.base)), t)
            .await?;
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.err(e, t))? {
            reader.feed(&chunk).map_err(|source| NodeError::Invalid {
                url: self.base.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// A GET of `path` through [`plain_get`] into `sink`, within `t`. `false`: not done (not
    /// an `http://` node, or it answered other than a plain `200`), nothing given to `sink`.
    async fn plain_get(
        &self,
        path: &str,
        t: Duration,
        sink: &mut (dyn plain_get::BodySink + Send),
    ) -> Result<bool, NodeError> {
        let Some(((pool, connect), authority)) =
            self.plain.as_ref().zip(plain_get::authority(&self.base))
        else {
            return Ok(false);
        };
        let got = tokio::time::timeout(
            t,
            plain_get::get_into(pool, authority, path, *connect, sink),
        )
        .await
        .map_err(|_| NodeError::Timeout {
            url: self.base.clone(),
            secs: t.as_secs_f64(),
        })?;
        match got {
            Ok(plain_get::Outcome::Done) => Ok(true),
            Ok(plain_get::Outcome::Declined) => Ok(false),
            Err(plain_get::PlainError::Io(e)) => Err(NodeError::Unreachable {
                url: self.base.clone(),
                reason: e.to_string(),
            }),
            Err(plain_get::PlainError::Framing(reason)) => Err(NodeError::Malformed {
                url: self.base.clone(),
                reason,
            }),
            Err(plain_get::PlainError::Body(source)) => Err(NodeError::Invalid {
                url: self.base.clone(),
                source,
            }),
        }
    }

    fn json<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, NodeError> {
        serde_json::from_slice::<ApiSuccess<T>>(body)
            .map(|s| s.success.data)
            .map_err(|e| NodeError::Malformed {
                url: self.base.clone(),
                reason: e.to_string(),
            })
    }

    /// Stores metadata: the body is BCS `BlobMetadata` (the blob ID is in the path).
    pub async fn put_metadata(&self, metadata: &BlobMetadataWithId) -> Result<(), NodeError> {
        let body = bcs::to_bytes(&metadata.metadata).map_err(|e| NodeError::Malformed {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        let t = self.timeout_for(body.len());
        let url = format!("{}/v1/blobs/{}/metadata", self.base, metadata.blob_id);
        self.send(
            self.http
                .put(url)
                .header("content-type", "application/octet-stream")
                .body(body),
            t,
        )
        .await?;
        Ok(())
    }

    /// Metadata as the node has it (BCS `BlobMetadataWithId`, as walrus-core's nodes answer),
    /// not yet verified against the blob ID.
    pub async fn get_metadata(&self, blob_id: &BlobId) -> Result<BlobMetadataWithId, NodeError> {
        let path = format!("/v1/blobs/{blob_id}/metadata");
        let t = self.timeout_for(1 << 16);
        // Metadata is 64 n + 50 bytes; nothing near this is legitimate.
        let mut collect = plain_get::Collect {
            bytes: Vec::new(),
            limit: 1 << 20,
        };
        let body = if self.plain_get(&path, t, &mut collect).await? {
            collect.bytes
        } else {
            self.send(self.http.get(format!("{}{path}", self.base)), t)
                .await?
                .0
        };
        BlobMetadataWithId::from_bcs(&body).map_err(|source| NodeError::Invalid {
            url: self.base.clone(),
            source,
        })
    }

    pub async fn put_sliver(
        &self,
        blob_id: &BlobId,
        pair: u16,
        sliver: &Sliver,
    ) -> Result<(), NodeError> {
        self.put_sliver_bcs(blob_id, pair, sliver.sliver_type, &[sliver.to_bcs().into()])
            .await
    }

    /// Like [`Self::put_sliver`], with the sliver's BCS bytes already made, in pieces sent
    /// one after another as one body (see [`crate::encoding::EncodedBlob::sliver_bcs_pieces`]):
    /// no piece is copied before the socket's own copy, nor for a retry.
    pub async fn put_sliver_bcs(
        &self,
        blob_id: &BlobId,
        pair: u16,
        sliver_type: SliverType,
        pieces: &[bytes::Bytes],
    ) -> Result<(), NodeError> {
        let body = PiecesBody::new(pieces);
        let t = self.timeout_for(body.remaining as usize);
        let url = format!(
            "{}/v1/blobs/{blob_id}/slivers/{pair}/{}",
            self.base,
            axis(sliver_type)
        );
        self.send(
            self.http
                .put(url)
                .header("content-type", "application/octet-stream")
                .body(reqwest::Body::wrap(body)),
            t,
        )
        .await?;
        Ok(())
    }

    /// A sliver as the node sends it, parsed but not yet verified against the metadata.
    pub async fn get_sliver(
        &self,
        blob_id: &BlobId,
        pair: u16,
        sliver_type: SliverType,
        expected_len: usize,
    ) -> Result<Sliver, NodeError> {
        let mut reader = SliverBcsReader::new(sliver_type);
        self.stream_sliver(blob_id, pair, sliver_type, expected_len, &mut reader)
            .await?;
        reader.finish().map_err(|source| NodeError::Invalid {
            url: self.base.clone(),
            source,
        })
    }

    /// Receives a sliver's symbols straight into `dest` (exactly the sliver's length; a
    /// sliver of another length is refused) and returns its symbol size and index. Framing is
    /// checked, the symbols are not yet verified against the metadata.
    pub async fn get_sliver_into(
        &self,
        blob_id: &BlobId,
        pair: u16,
        sliver_type: SliverType,
        dest: &mut [u8],
    ) -> Result<(u16, u16), NodeError> {
        let len = dest.len();
        let mut reader = SliverBcsReader::into_slice(sliver_type, dest);
        self.stream_sliver(blob_id, pair, sliver_type, len, &mut reader)
            .await?;
        reader
            .finish_in_place()
            .map_err(|source| NodeError::Invalid {
                url: self.base.clone(),
                source,
            })
    }

    pub async fn get_confirmation(
        &self,
        blob_id: &BlobId,
        object_id: Option<ObjectId>,
    ) -> Result<SignedMessage, NodeError> {
        let url = match object_id {
            Some(o) => format!(
                "{}/v1/blobs/{blob_id}/confirmation/deletable/{o}",
                self.base
            ),
            None => format!("{}/v1/blobs/{blob_id}/confirmation/permanent", self.base),
        };
        let body = self.send(self.http.get(url), self.timeout).await?;
        Ok(self.json::<StorageConfirmation>(&body.0)?.into_signed())
    }

    /// `GET /v1/health`, as raw JSON (only used for liveness and display).
    pub async fn health(&self) -> Result<serde_json::Value, NodeError> {
        let url = format!("{}/v1/health", self.base);
        let body = self.send(self.http.get(url), self.timeout).await?;
        self.json(&body.0)
    }
}

mod bytes_body {
    /// A response body that was read completely.
    pub struct Body(pub Vec<u8>);
}
