//! The publisher's answers, parsed leniently in form and strictly in substance.
//!
//! The running services answer in camelCase (`newlyCreated`, `blobObject`, `endEpoch`) while
//! publisher_openapi.yaml shows snake_case for the inner fields (`blob_object`, `end_epoch`);
//! both are accepted. Numbers may come as JSON numbers or strings (`eventSeq` is a string in
//! Sui's JSON), a transaction digest as base58 text or as an array of bytes. Only what the
//! backend then checks against Sui is taken: object IDs, event IDs, blob IDs, end epochs;
//! everything else a publisher says is ignored, since nothing it says is trusted.

use serde_json::{Map, Value};

use super::config::parse_object_id;
use crate::encoding::BlobId;
use crate::sui::ObjectId;

/// Where a publisher says a certification can be seen on Sui.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Proof {
    /// A `BlobCertified` event.
    Event(EventRef),
    /// A `Blob` object (deletable blobs owned by the publisher's wallet).
    Object(ObjectId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventRef {
    /// Base58, as Sui displays digests.
    pub tx_digest: String,
    pub event_seq: u64,
}

impl std::fmt::Display for EventRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "event {} of transaction {}",
            self.event_seq, self.tx_digest
        )
    }
}

/// A publisher's answer to a store (`BlobStoreResult`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreAnswer {
    NewlyCreated {
        blob_id: BlobId,
        object_id: ObjectId,
    },
    AlreadyCertified {
        blob_id: BlobId,
        end_epoch: u64,
        proof: Proof,
    },
    MarkedInvalid {
        blob_id: BlobId,
        event: Option<EventRef>,
    },
    Error {
        blob_id: Option<BlobId>,
        failure_phase: String,
        message: String,
    },
}

/// Looks `camel` up, then `snake`.
fn field<'a>(obj: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    obj.get(camel).or_else(|| obj.get(snake))
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("`{what}` is not a JSON object"))
}

fn required<'a>(
    obj: &'a Map<String, Value>,
    camel: &str,
    snake: &str,
) -> Result<&'a Value, String> {
    field(obj, camel, snake).ok_or_else(|| format!("`{camel}` is missing"))
}

fn blob_id(v: &Value, what: &str) -> Result<BlobId, String> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("`{what}` = {v} is not a blob ID"))
}

fn object_id(v: &Value, what: &str) -> Result<ObjectId, String> {
    v.as_str()
        .and_then(parse_object_id)
        .ok_or_else(|| format!("`{what}` = {v} is not a Sui object ID"))
}

fn number(v: &Value, what: &str) -> Result<u64, String> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| format!("`{what}` = {v} is not a non-negative integer"))
}

fn event(v: &Value) -> Result<EventRef, String> {
    let e = object(v, "event")?;
    let digest = required(e, "txDigest", "tx_digest")?;
    let tx_digest = match digest {
        Value::String(s) if bs58::decode(s).into_vec().is_ok_and(|b| b.len() == 32) => s.clone(),
        Value::Array(items) => {
            let bytes: Option<Vec<u8>> = items
                .iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            match bytes {
                Some(b) if b.len() == 32 => bs58::encode(b).into_string(),
                _ => return Err(format!("`txDigest` = {digest} is not 32 bytes")),
            }
        }
        _ => return Err(format!("`txDigest` = {digest} is not a transaction digest")),
    };
    let event_seq = number(required(e, "eventSeq", "event_seq")?, "eventSeq")?;
    Ok(EventRef {
        tx_digest,
        event_seq,
    })
}

/// Parses the body of a 2xx answer to `PUT /v1/blobs`.
pub(crate) fn parse_store_answer(body: &[u8]) -> Result<StoreAnswer, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let top = object(&v, "answer")?;
    if let Some(n) = field(top, "newlyCreated", "newly_created") {
        let n = object(n, "newlyCreated")?;
        let blob = object(required(n, "blobObject", "blob_object")?, "blobObject")?;
        return Ok(StoreAnswer::NewlyCreated {
            blob_id: blob_id(required(blob, "blobId", "blob_id")?, "blobObject.blobId")?,
            object_id: object_id(required(blob, "id", "id")?, "blobObject.id")?,
        });
    }
    if let Some(a) = field(top, "alreadyCertified", "already_certified") {
        let a = object(a, "alreadyCertified")?;
        let proof = if let Some(e) = a.get("event") {
            Proof::Event(event(e)?)
        } else if let Some(o) = a.get("object") {
            Proof::Object(object_id(o, "alreadyCertified.object")?)
        } else {
            return Err("`alreadyCertified` has neither `event` nor `object`".into());
        };
        return Ok(StoreAnswer::AlreadyCertified {
            blob_id: blob_id(required(a, "blobId", "blob_id")?, "alreadyCertified.blobId")?,
            end_epoch: number(
                required(a, "endEpoch", "end_epoch")?,
                "alreadyCertified.endEpoch",
            )?,
            proof,
        });
    }
    if let Some(m) = field(top, "markedInvalid", "marked_invalid") {
        let m = object(m, "markedInvalid")?;
        return Ok(StoreAnswer::MarkedInvalid {
            blob_id: blob_id(required(m, "blobId", "blob_id")?, "markedInvalid.blobId")?,
            event: m.get("event").map(event).transpose()?,
        });
    }
    if let Some(e) = top.get("error") {
        let e = object(e, "error")?;
        let text = |camel, snake| {
            field(e, camel, snake)
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .unwrap_or_default()
        };
        return Ok(StoreAnswer::Error {
            blob_id: match field(e, "blobId", "blob_id") {
                None | Some(Value::Null) => None,
                Some(v) => Some(blob_id(v, "error.blobId")?),
            },
            failure_phase: text("failurePhase", "failure_phase"),
            message: text("errorMsg", "error_msg"),
        });
    }
    Err(format!(
        "none of newlyCreated, alreadyCertified, markedInvalid or error (keys: {})",
        top.keys().cloned().collect::<Vec<_>>().join(", ")
    ))
}

/// The human-readable message of a failed call (`Status`: `{"error": {"message": ...}}`),
/// else the start of the body as text.
pub(crate) fn error_message(body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        let e = v.get("error")?;
        e.get("message")
            .or_else(|| e.get("errorMsg"))
            .or_else(|| e.get("error_msg"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| e.as_str().map(str::to_string))
    });
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    if text.is_empty() {
        return "(no message)".into();
    }
    let mut cut: String = text.chars().take(500).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "E7_nNXvFU_3qZVu3OH1yycRG7LZlyn1-UxEDCDDqGGU";
    const OBJ: &str = "0x56ae1c86e17db174ea002f8340e28880bc8a8587c56e8604a4fa6b1170b23a60";
    const DIGEST: &str = "EhtoQF9UpPyg5PsPUs69LdkcRrjQ3R4cTsHnwxZVTNrC";

    #[test]
    fn newly_created_camel_and_snake() {
        for body in [
            format!(
                r#"{{"newlyCreated":{{"blobObject":{{"id":"{OBJ}","registeredEpoch":3,"blobId":"{ID}","size":5,"encodingType":"RS2","certifiedEpoch":3,"storage":{{"id":"0x1","startEpoch":3,"endEpoch":8,"storageSize":100}},"deletable":true}},"resourceOperation":{{"registerFromScratch":{{"encodedLength":100,"epochsAhead":5}}}},"cost":1}}}}"#
            ),
            format!(
                r#"{{"newlyCreated":{{"blob_object":{{"id":"{OBJ}","blob_id":"{ID}"}},"resource_operation":{{}},"cost":1}}}}"#
            ),
        ] {
            let a = parse_store_answer(body.as_bytes()).unwrap();
            let StoreAnswer::NewlyCreated { blob_id, object_id } = a else {
                panic!("{a:?}")
            };
            assert_eq!(blob_id.to_string(), ID);
            assert_eq!(object_id[0], 0x56);
        }
    }

    #[test]
    fn already_certified_event_and_object() {
        let body = format!(
            r#"{{"alreadyCertified":{{"blobId":"{ID}","event":{{"txDigest":"{DIGEST}","eventSeq":"2"}},"endEpoch":9}}}}"#
        );
        let a = parse_store_answer(body.as_bytes()).unwrap();
        assert_eq!(
            a,
            StoreAnswer::AlreadyCertified {
                blob_id: ID.parse().unwrap(),
                end_epoch: 9,
                proof: Proof::Event(EventRef {
                    tx_digest: DIGEST.into(),
                    event_seq: 2
                })
            }
        );
        // The YAML's form: snake_case fields and the digest as bytes.
        let bytes: Vec<u8> = bs58::decode(DIGEST).into_vec().unwrap();
        let body = serde_json::json!({"alreadyCertified": {"blob_id": ID, "end_epoch": "9",
            "event": {"txDigest": bytes, "eventSeq": 2}}});
        assert_eq!(parse_store_answer(body.to_string().as_bytes()).unwrap(), a);
        let body =
            format!(r#"{{"alreadyCertified":{{"blobId":"{ID}","object":"{OBJ}","endEpoch":9}}}}"#);
        assert!(matches!(
            parse_store_answer(body.as_bytes()).unwrap(),
            StoreAnswer::AlreadyCertified { proof: Proof::Object(o), .. } if o[0] == 0x56
        ));
    }

    #[test]
    fn marked_invalid_and_error() {
        let body = format!(
            r#"{{"markedInvalid":{{"blobId":"{ID}","event":{{"txDigest":"{DIGEST}","eventSeq":0}}}}}}"#
        );
        assert!(matches!(
            parse_store_answer(body.as_bytes()).unwrap(),
            StoreAnswer::MarkedInvalid { event: Some(_), .. }
        ));
        let body = r#"{"error":{"blobId":null,"failurePhase":"register","errorMsg":"out of gas"}}"#;
        assert_eq!(
            parse_store_answer(body.as_bytes()).unwrap(),
            StoreAnswer::Error {
                blob_id: None,
                failure_phase: "register".into(),
                message: "out of gas".into()
            }
        );
    }

    #[test]
    fn malformed_answers_are_errors() {
        for body in [
            "not json",
            "[]",
            r#"{"somethingElse":{}}"#,
            r#"{"newlyCreated":{"blobObject":{"id":"0x1","blobId":"short"}}}"#,
            r#"{"newlyCreated":{"blobObject":{"id":"nothex","blobId":"E7_nNXvFU_3qZVu3OH1yycRG7LZlyn1-UxEDCDDqGGU"}}}"#,
            r#"{"alreadyCertified":{"blobId":"E7_nNXvFU_3qZVu3OH1yycRG7LZlyn1-UxEDCDDqGGU","endEpoch":1}}"#,
            r#"{"alreadyCertified":{"blobId":"E7_nNXvFU_3qZVu3OH1yycRG7LZlyn1-UxEDCDDqGGU","endEpoch":-1,"object":"0x1"}}"#,
            r#"{"alreadyCertified":{"blobId":"E7_nNXvFU_3qZVu3OH1yycRG7LZlyn1-UxEDCDDqGGU","endEpoch":1,"event":{"txDigest":"abc","eventSeq":0}}}"#,
        ] {
            assert!(parse_store_answer(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn status_messages() {
        let body = br#"{"error":{"status":"UNAUTHENTICATED","code":401,"message":"missing token","details":[]}}"#;
        assert_eq!(error_message(body), "missing token");
        assert_eq!(error_message(b"plain text\n"), "plain text");
        assert_eq!(error_message(b""), "(no message)");
        assert_eq!(error_message(&[b'x'; 600]).chars().count(), 501);
    }
}
