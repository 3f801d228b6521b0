//! TEST-ONLY stand-in aggregator: `GET /v1/blobs/{blob_id}` with `Range: bytes=a-b`, as in
//! aggregator_openapi.yaml. See `mod.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use walrusfs::encoding::BlobId;

use super::{AggregatorFault, Shared, status_body};

#[derive(Clone)]
struct Aggregator {
    shared: Arc<Shared>,
    index: usize,
}

pub(crate) fn router(shared: Arc<Shared>, index: usize) -> axum::Router {
    axum::Router::new()
        .route("/v1/blobs/{blob_id}", axum::routing::get(get_blob))
        .with_state(Aggregator { shared, index })
}

fn error(code: StatusCode, status: &str, message: &str) -> Response {
    (code, Json(status_body(code.as_u16(), status, message))).into_response()
}

/// `bytes=a-b`, the only form the real aggregator supports.
fn parse_range(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.trim().strip_prefix("bytes=")?.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

async fn get_blob(
    State(a): State<Aggregator>,
    Path(blob_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    a.shared.aggregator_hits[a.index].fetch_add(1, Ordering::Relaxed);
    let fault = a
        .shared
        .faults()
        .aggregators
        .get(a.index)
        .copied()
        .unwrap_or_default();
    match fault {
        AggregatorFault::Slow { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
        AggregatorFault::Fail => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "stand-in aggregator: injected failure",
            );
        }
        _ => {}
    }
    let Ok(id) = blob_id.parse::<BlobId>() else {
        return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "not a blob ID");
    };
    let Ok(mut blob) = std::fs::read(a.shared.blob_path(&id)) else {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "the requested blob has not yet been stored on Walrus",
        );
    };
    if fault == AggregatorFault::WrongBytes {
        for b in &mut blob {
            *b ^= 0xff;
        }
    }
    let len = blob.len() as u64;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let Some(range) = range.filter(|_| fault != AggregatorFault::IgnoreRange) else {
        return (StatusCode::OK, blob).into_response();
    };
    let Some((first, last)) = parse_range(range).filter(|&(f, l)| f <= l && l < len) else {
        let mut r = error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "OUT_OF_RANGE",
            "the byte range parameters are invalid",
        );
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        return r;
    };
    let mut part = blob[first as usize..=last as usize].to_vec();
    if fault == AggregatorFault::ShortBody {
        part.pop();
    }
    let mut r = (StatusCode::PARTIAL_CONTENT, part).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")) {
        r.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    r
}
