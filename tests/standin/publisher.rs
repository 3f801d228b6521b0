//! TEST-ONLY stand-in publisher: `PUT /v1/blobs` as in publisher_openapi.yaml. See `mod.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use walrusfs::encoding::{BlobId, EncodingConfig};
use walrusfs::sui::{BlobCertifiedEvent, BlobObject, StorageResource, hex};

use super::{Certified, PublisherAnswer, PublisherRequest, Shared, lock, status_body};

pub(crate) fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .route("/v1/blobs", axum::routing::put(put_blob))
        // The stand-in enforces its own limit (the `body_limit` fault), like a real publisher.
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

fn error(code: StatusCode, message: &str) -> Response {
    let status = match code.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        413 => "PAYLOAD_TOO_LARGE",
        _ => "INTERNAL",
    };
    (code, Json(status_body(code.as_u16(), status, message))).into_response()
}

fn object_hex(id: &[u8; 32]) -> String {
    format!("0x{}", hex(id))
}

fn flag(q: &HashMap<String, String>, key: &str) -> Result<bool, String> {
    match q.get(key).map(String::as_str) {
        None => Ok(false),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(v) => Err(format!("`{key}` must be true or false, not {v:?}")),
    }
}

async fn put_blob(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let query = {
        let mut pairs: Vec<_> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.sort();
        pairs.join("&")
    };
    let seq = {
        let mut requests = lock(&s.requests);
        requests.push(PublisherRequest {
            query,
            authorization: authorization.clone(),
            size: body.len(),
        });
        requests.len()
    };
    let faults = s.faults();
    if let Some(dir) = &faults.capture_dir {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(dir.join(format!("{seq:06}.bin")), &body);
    }
    if let Some(token) = &faults.require_token
        && authorization.as_deref() != Some(&format!("Bearer {token}"))
    {
        return error(
            StatusCode::UNAUTHORIZED,
            "stand-in publisher: a valid bearer token is required",
        );
    }
    if let Some(limit) = faults.body_limit
        && body.len() as u64 > limit
    {
        return (StatusCode::PAYLOAD_TOO_LARGE, "blob too large").into_response();
    }
    let epochs: u32 = match q.get("epochs").map(|e| e.parse::<u32>()) {
        None => 1,
        Some(Ok(e)) if e >= 1 => e,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "`epochs` must be a positive integer",
            );
        }
    };
    let (permanent, deletable_flag, force) = match (
        flag(&q, "permanent"),
        flag(&q, "deletable"),
        flag(&q, "force"),
    ) {
        (Ok(p), Ok(d), Ok(f)) => (p, d, f),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return error(StatusCode::BAD_REQUEST, &e);
        }
    };
    if permanent && deletable_flag {
        return error(
            StatusCode::BAD_REQUEST,
            "the blob cannot be defined as both deletable and permanent",
        );
    }
    let deletable = !permanent;

    let n_shards = s.n_shards;
    let data = body.clone();
    let computed = tokio::task::spawn_blocking(move || {
        EncodingConfig::new(n_shards)
            .and_then(|c| Ok((c.blob_id(&data)?, c.encoded_blob_length(data.len() as u64)?)))
    })
    .await;
    let (blob_id, encoded_length) = match computed {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let path = s.blob_path(&blob_id);
    let tmp = path.with_extension(format!("tmp{seq}"));
    if let Err(e) = std::fs::write(&tmp, &body).and_then(|()| std::fs::rename(&tmp, &path)) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
    }

    let epoch = s.epoch.load(Ordering::Relaxed);
    let wanted_end = epoch + epochs;
    let camel = !faults.snake_case;
    let key = |c: &'static str, snake: &'static str| if camel { c } else { snake };
    // The ID the publisher names: the true one, unless it lies.
    let named_id = if faults.wrong_blob_id {
        let mut other = *blob_id.as_bytes();
        other[0] ^= 0xff;
        BlobId(other)
    } else {
        blob_id
    };

    if !force {
        match faults.answer {
            PublisherAnswer::MarkedInvalid => {
                let digest = bs58::encode(s.fresh_id()).into_string();
                return Json(json!({"markedInvalid": {
                    key("blobId", "blob_id"): named_id.to_string(),
                    "event": {"txDigest": digest, "eventSeq": "0"}}}))
                .into_response();
            }
            PublisherAnswer::Error => {
                return Json(json!({"error": {
                    key("blobId", "blob_id"): named_id.to_string(),
                    key("failurePhase", "failure_phase"): "certify",
                    key("errorMsg", "error_msg"): "stand-in publisher: injected store failure"}}))
                .into_response();
            }
            PublisherAnswer::AlreadyCertifiedEvent | PublisherAnswer::AlreadyCertifiedShort => {
                let end = if faults.answer == PublisherAnswer::AlreadyCertifiedShort {
                    wanted_end - 1
                } else {
                    wanted_end
                };
                let c = certify(
                    &s,
                    named_id,
                    body.len() as u64,
                    encoded_length,
                    epoch,
                    end,
                    false,
                    true,
                );
                return already_certified_event(&c, named_id, camel);
            }
            PublisherAnswer::AlreadyCertifiedObject => {
                let c = certify(
                    &s,
                    named_id,
                    body.len() as u64,
                    encoded_length,
                    epoch,
                    wanted_end,
                    true,
                    true,
                );
                return Json(json!({"alreadyCertified": {
                    key("blobId", "blob_id"): named_id.to_string(),
                    "object": object_hex(&c.object_id),
                    key("endEpoch", "end_epoch"): c.end_epoch}}))
                .into_response();
            }
            PublisherAnswer::Normal => {
                let existing = lock(&s.certified).get(&blob_id).cloned();
                if let Some(c) = existing
                    && c.end_epoch >= wanted_end
                    && (deletable || !c.deletable)
                {
                    return if c.deletable {
                        Json(json!({"alreadyCertified": {
                            key("blobId", "blob_id"): named_id.to_string(),
                            "object": object_hex(&c.object_id),
                            key("endEpoch", "end_epoch"): c.end_epoch}}))
                        .into_response()
                    } else {
                        already_certified_event(&c, named_id, camel)
                    };
                }
            }
        }
    }

    let end = if faults.short_end_epoch {
        wanted_end - 1
    } else {
        wanted_end
    };
    let certified = !faults.uncertified;
    let c = certify(
        &s,
        named_id,
        body.len() as u64,
        encoded_length,
        epoch,
        end,
        deletable,
        certified,
    );
    let blob_object = json!({
        "id": object_hex(&c.object_id),
        "registeredEpoch": epoch,
        "blobId": named_id.to_string(),
        "size": body.len(),
        "encodingType": "RS2",
        "certifiedEpoch": if certified { Some(epoch) } else { None },
        "storage": {
            "id": object_hex(&s.fresh_id()),
            "startEpoch": epoch,
            "endEpoch": end,
            "storageSize": encoded_length,
        },
        "deletable": deletable,
    });
    Json(json!({"newlyCreated": {
        key("blobObject", "blob_object"): blob_object,
        key("resourceOperation", "resource_operation"): {"registerFromScratch": {
            key("encodedLength", "encoded_length"): encoded_length,
            key("epochsAhead", "epochs_ahead"): epochs}},
        "cost": encoded_length / 1000,
    }}))
    .into_response()
}

fn already_certified_event(c: &Certified, named_id: BlobId, camel: bool) -> Response {
    let (blob_key, end_key) = if camel {
        ("blobId", "endEpoch")
    } else {
        ("blob_id", "end_epoch")
    };
    let event = if camel {
        json!({"txDigest": c.event.0, "eventSeq": c.event.1.to_string()})
    } else {
        // The YAML shows the digest as an array of bytes.
        let bytes = bs58::decode(&c.event.0).into_vec().unwrap_or_default();
        json!({"txDigest": bytes, "eventSeq": c.event.1})
    };
    let mut inner = serde_json::Map::new();
    inner.insert(blob_key.into(), Value::String(named_id.to_string()));
    inner.insert("event".into(), event);
    inner.insert(end_key.into(), json!(c.end_epoch));
    Json(json!({ "alreadyCertified": inner })).into_response()
}

/// Records a blob object (and, if certified, its `BlobCertified` event) on Sui and in the
/// publisher's own list.
#[allow(clippy::too_many_arguments)]
fn certify(
    s: &Shared,
    blob_id: BlobId,
    size: u64,
    encoded_length: u64,
    epoch: u32,
    end_epoch: u32,
    deletable: bool,
    certified: bool,
) -> Certified {
    let object_id = s.fresh_id();
    s.sui.record_blob(BlobObject {
        object_id,
        registered_epoch: epoch,
        blob_id,
        size,
        encoding_type: 1,
        certified_epoch: certified.then_some(epoch),
        storage: StorageResource {
            object_id: s.fresh_id(),
            start_epoch: epoch,
            end_epoch,
            storage_size: encoded_length,
        },
        deletable,
    });
    let event = if certified {
        s.sui.record_event(BlobCertifiedEvent {
            epoch,
            blob_id,
            end_epoch,
            deletable,
            object_id,
            is_extension: false,
        })
    } else {
        // A transaction nobody can find: the object is not certified.
        (bs58::encode(s.fresh_id()).into_string(), 0)
    };
    let c = Certified {
        object_id,
        end_epoch,
        deletable,
        event,
    };
    if certified {
        lock(&s.certified).insert(blob_id, c.clone());
    }
    c
}
