//! [`SuiReader`] over a Sui full node's gRPC API (`sui.rpc.v2.LedgerService`).
//!
//! Which Walrus deployment to trust comes from the system and staking object IDs the user
//! configured (as in Walrus's own `client_config.yaml`). The address in those objects' Move
//! types is the Walrus package that first defined them, and `blob::Blob` and
//! `events::BlobCertified` were defined in that same package: a blob or event is accepted only
//! if its type carries that address. Matching on module and name alone would let anyone
//! publish a look-alike `blob::Blob` claiming any blob ID and end epoch. We do not compare
//! with the `package_id` field of the system object: that is the *latest* upgrade of the
//! package, while type addresses keep the original one.

use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use sui_rpc::field::{FieldMask, FieldMaskUtil};
use sui_rpc::proto::sui::rpc::v2::{
    GetObjectRequest, GetTransactionRequest, Object as ProtoObject,
};
use sui_sdk_types::StructTag;
use tokio::sync::OnceCell;
use tonic::Code;

use super::layout::{self, object_id_string};
use super::{BlobCertifiedEvent, BlobObject, ObjectId, SuiError, SuiReader};

/// [`SuiReader`] over a Sui full node's gRPC API, e.g. `https://fullnode.testnet.sui.io:443`.
pub struct GrpcSuiReader {
    url: String,
    system_object: ObjectId,
    staking_object: ObjectId,
    timeout: Duration,
    /// Built on first use: tonic's channel needs a running tokio runtime, `new` does not.
    client: OnceCell<sui_rpc::Client>,
    /// The Walrus package address, learnt once from the system and staking objects' types.
    package: OnceCell<ObjectId>,
    /// The staking object's version: the key of the dynamic field holding the epoch. It only
    /// changes when Walrus migrates to a new package version, so we keep it and re-read it
    /// when the field it names is gone.
    staking_version: Mutex<Option<u64>>,
}

impl GrpcSuiReader {
    /// How long one call to the full node may take before it counts as unavailable.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A reader for the Walrus deployment whose shared system and staking objects are
    /// `system_object` and `staking_object`, through the full node at `url` (`https://` or
    /// `http://`, with a port unless it is the scheme's default). Nothing is sent until the
    /// first call.
    pub fn new(
        url: &str,
        system_object: ObjectId,
        staking_object: ObjectId,
    ) -> Result<Self, SuiError> {
        let uri = url
            .parse::<tonic::codegen::http::Uri>()
            .map_err(|e| SuiError::Invalid(format!("`{url}` is not a full node URL: {e}")))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.host().is_some() => {}
            _ => {
                return Err(SuiError::Invalid(format!(
                    "`{url}` is not a full node URL: expected http://HOST:PORT or https://HOST[:PORT]"
                )));
            }
        }
        Ok(Self {
            url: url.to_string(),
            system_object,
            staking_object,
            timeout: Self::DEFAULT_TIMEOUT,
            client: OnceCell::new(),
            package: OnceCell::new(),
            staking_version: Mutex::new(None),
        })
    }

    /// Bounds every call to the full node (connecting included) by `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address of the Walrus package, as the types of the system and staking objects tell.
    pub async fn walrus_package(&self) -> Result<ObjectId, SuiError> {
        self.package
            .get_or_try_init(|| self.learn_package())
            .await
            .copied()
    }

    async fn learn_package(&self) -> Result<ObjectId, SuiError> {
        let (staking, system) = tokio::try_join!(
            self.get_object(self.staking_object, "the Walrus staking object", false),
            self.get_object(self.system_object, "the Walrus system object", false),
        )?;
        let staking_pkg = package_of(&staking, self.staking_object, "staking", "Staking")?;
        let system_pkg = package_of(&system, self.system_object, "system", "System")?;
        if staking_pkg != system_pkg {
            return Err(SuiError::Invalid(format!(
                "the staking object {} belongs to Walrus package {} but the system object {} to {}: \
                 the configured objects are from different Walrus deployments",
                object_id_string(&self.staking_object),
                object_id_string(&staking_pkg),
                object_id_string(&self.system_object),
                object_id_string(&system_pkg),
            )));
        }
        tracing::debug!(package = %object_id_string(&staking_pkg), url = %self.url, "Walrus package");
        Ok(staking_pkg)
    }

    async fn client(&self) -> Result<sui_rpc::Client, SuiError> {
        self.client
            .get_or_try_init(|| async {
                sui_rpc::Client::new(self.url.as_str()).map_err(|e| {
                    SuiError::Invalid(format!(
                        "cannot use `{}` as a Sui full node: {}",
                        self.url,
                        e.message()
                    ))
                })
            })
            .await
            .cloned()
    }

    /// Runs one RPC under the timeout and maps its failure to a [`SuiError`] about `subject`.
    async fn call<T, F>(&self, subject: &str, rpc: F) -> Result<T, SuiError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(self.timeout, rpc).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) if status.code() != Code::DeadlineExceeded => {
                Err(status_error(&self.url, subject, &status))
            }
            // The deadline travels with the request too, so the client library may report it
            // as DeadlineExceeded before our own timer fires.
            Ok(Err(_)) | Err(_) => Err(SuiError::Unavailable(format!(
                "{} did not answer within {:?} when asked for {subject}",
                self.url, self.timeout
            ))),
        }
    }

    /// Fetches an object's type (and its contents if `contents`).
    async fn get_object(
        &self,
        object_id: ObjectId,
        what: &str,
        contents: bool,
    ) -> Result<ProtoObject, SuiError> {
        let subject = format!("{what} {}", object_id_string(&object_id));
        let mut request = GetObjectRequest::default();
        request.object_id = Some(object_id_string(&object_id));
        let paths: &[&str] = if contents {
            &["object_id", "object_type", "contents"]
        } else {
            &["object_id", "object_type"]
        };
        request.read_mask = Some(FieldMask::from_paths(paths));
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.timeout);
        let mut client = self.client().await?;
        let response = self
            .call(&subject, async move {
                client.ledger_client().get_object(request).await
            })
            .await?;
        response.object.ok_or_else(|| {
            SuiError::Invalid(format!("{} answered no object for {subject}", self.url))
        })
    }

    /// The contents of a Move object after checking that its type is `expected`.
    fn checked_contents(
        &self,
        object: ProtoObject,
        object_id: ObjectId,
        what: &str,
        expected: &StructTag,
    ) -> Result<Vec<u8>, SuiError> {
        let actual = object.object_type.as_deref().unwrap_or("");
        let matches = StructTag::from_str(actual).is_ok_and(|t| &t == expected);
        if !matches {
            return Err(SuiError::Invalid(format!(
                "object {} is not {what}: its type is `{actual}`, expected `{expected}`",
                object_id_string(&object_id)
            )));
        }
        object
            .contents
            .and_then(|bcs| bcs.value)
            .map(|b| b.to_vec())
            .ok_or_else(|| {
                SuiError::Invalid(format!(
                    "{} sent object {} without its contents",
                    self.url,
                    object_id_string(&object_id)
                ))
            })
    }

    async fn staking_version(&self, refresh: bool) -> Result<u64, SuiError> {
        if !refresh && let Some(v) = *lock(&self.staking_version) {
            return Ok(v);
        }
        let package = self.walrus_package().await?;
        let what = "the Walrus staking object";
        let object = self.get_object(self.staking_object, what, true).await?;
        let bytes = self.checked_contents(
            object,
            self.staking_object,
            what,
            &layout::staking_type(package),
        )?;
        let (id, version) = layout::decode_versioned_object_prefix(&bytes, "staking::Staking")
            .map_err(|e| invalid_object(self.staking_object, e))?;
        if id != self.staking_object {
            return Err(SuiError::Invalid(format!(
                "object {} holds the id {}",
                object_id_string(&self.staking_object),
                object_id_string(&id)
            )));
        }
        *lock(&self.staking_version) = Some(version);
        Ok(version)
    }

    async fn epoch_at_version(&self, version: u64) -> Result<u32, SuiError> {
        let package = self.walrus_package().await?;
        let field_id = layout::versioned_inner_field_id(self.staking_object, version);
        let what = "the Walrus staking state (dynamic field of the staking object)";
        let object = self.get_object(field_id, what, true).await?;
        let bytes = self.checked_contents(
            object,
            field_id,
            what,
            &layout::staking_inner_field_type(package),
        )?;
        let (id, key, inner) = layout::decode_staking_inner_field_prefix(&bytes)
            .map_err(|e| invalid_object(field_id, e))?;
        if id != field_id || key != version {
            return Err(SuiError::Invalid(format!(
                "object {} holds field {} for version {key}, expected version {version}",
                object_id_string(&field_id),
                object_id_string(&id)
            )));
        }
        Ok(inner.epoch)
    }
}

#[async_trait::async_trait]
impl SuiReader for GrpcSuiReader {
    async fn blob_object(&self, object_id: ObjectId) -> Result<BlobObject, SuiError> {
        let package = self.walrus_package().await?;
        let what = "a Walrus blob";
        let object = self
            .get_object(object_id, "the Walrus blob object", true)
            .await?;
        let bytes = self.checked_contents(object, object_id, what, &layout::blob_type(package))?;
        let blob = layout::decode_blob(&bytes).map_err(|e| invalid_object(object_id, e))?;
        if blob.object_id != object_id {
            return Err(SuiError::Invalid(format!(
                "object {} holds the id {}",
                object_id_string(&object_id),
                object_id_string(&blob.object_id)
            )));
        }
        Ok(blob)
    }

    async fn certified_event(
        &self,
        tx_digest: &str,
        event_seq: u64,
    ) -> Result<BlobCertifiedEvent, SuiError> {
        let package = self.walrus_package().await?;
        let subject = format!("transaction {tx_digest}");
        let mut request = GetTransactionRequest::default();
        request.digest = Some(tx_digest.to_string());
        request.read_mask = Some(FieldMask::from_paths([
            "digest",
            "events.events.event_type",
            "events.events.contents",
        ]));
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.timeout);
        let mut client = self.client().await?;
        let response = self
            .call(&subject, async move {
                client.ledger_client().get_transaction(request).await
            })
            .await?;
        let events = response
            .transaction
            .and_then(|t| t.events)
            .map(|e| e.events)
            .unwrap_or_default();
        let count = events.len();
        let event = usize::try_from(event_seq)
            .ok()
            .and_then(|i| events.into_iter().nth(i))
            .ok_or_else(|| {
                SuiError::NotFound(format!(
                    "event {event_seq} of transaction {tx_digest}: the transaction emitted {count} events"
                ))
            })?;
        let expected = layout::blob_certified_type(package);
        let actual = event.event_type.as_deref().unwrap_or("");
        if !StructTag::from_str(actual).is_ok_and(|t| t == expected) {
            return Err(SuiError::Invalid(format!(
                "event {event_seq} of transaction {tx_digest} is a `{actual}`, expected `{expected}`"
            )));
        }
        let bytes = event.contents.and_then(|b| b.value).ok_or_else(|| {
            SuiError::Invalid(format!(
                "{} sent event {event_seq} of transaction {tx_digest} without its contents",
                self.url
            ))
        })?;
        layout::decode_blob_certified(&bytes).map_err(|e| {
            SuiError::Invalid(format!("event {event_seq} of transaction {tx_digest}: {e}"))
        })
    }

    async fn current_epoch(&self) -> Result<u32, SuiError> {
        let version = self.staking_version(false).await?;
        match self.epoch_at_version(version).await {
            // A package migration moves the state under the new version's key.
            Err(SuiError::NotFound(_)) => {
                let version = self.staking_version(true).await?;
                self.epoch_at_version(version).await
            }
            other => other,
        }
    }
}

/// The package address of an object whose type must be `<package>::<module>::<name>`.
fn package_of(
    object: &ProtoObject,
    object_id: ObjectId,
    module: &str,
    name: &str,
) -> Result<ObjectId, SuiError> {
    let actual = object.object_type.as_deref().unwrap_or("");
    match StructTag::from_str(actual) {
        Ok(t)
            if t.module().as_str() == module
                && t.name().as_str() == name
                && t.type_params().is_empty() =>
        {
            Ok(t.address().into_inner())
        }
        _ => Err(SuiError::Invalid(format!(
            "object {} is not the Walrus {module} object: its type is `{actual}`, expected \
             `<walrus package>::{module}::{name}` (check the configured object IDs)",
            object_id_string(&object_id)
        ))),
    }
}

fn invalid_object(object_id: ObjectId, e: layout::LayoutError) -> SuiError {
    SuiError::Invalid(format!("object {}: {e}", object_id_string(&object_id)))
}

/// Maps a gRPC status to our error kinds: a node that cannot answer now is unavailable,
/// an unknown object or transaction is not found, and anything else is an answer we cannot
/// use (including a node that does not serve the v2 API).
fn status_error(url: &str, subject: &str, status: &tonic::Status) -> SuiError {
    let message = format!(
        "{url} failed to return {subject}: {:?}: {}",
        status.code(),
        status.message()
    );
    match status.code() {
        Code::NotFound => SuiError::NotFound(format!("{subject} (asked {url})")),
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal => SuiError::Unavailable(message),
        Code::Unimplemented => SuiError::Invalid(format!(
            "{message} (does {url} serve Sui's gRPC API sui.rpc.v2?)"
        )),
        _ => SuiError::Invalid(message),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded value is a plain cache; a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_urls_without_scheme_or_host() {
        for bad in ["fullnode.testnet.sui.io", "ftp://x:1", "", "http://"] {
            assert!(
                matches!(
                    GrpcSuiReader::new(bad, [0; 32], [0; 32]),
                    Err(SuiError::Invalid(_))
                ),
                "{bad}"
            );
        }
        GrpcSuiReader::new("https://fullnode.testnet.sui.io:443", [0; 32], [0; 32]).unwrap();
        GrpcSuiReader::new("http://127.0.0.1:9000", [0; 32], [0; 32]).unwrap();
    }

    #[test]
    fn status_codes_map_to_error_kinds() {
        let map = |code| status_error("http://n", "object 0x1", &tonic::Status::new(code, "m"));
        assert!(matches!(map(Code::NotFound), SuiError::NotFound(_)));
        assert!(matches!(map(Code::Unavailable), SuiError::Unavailable(_)));
        assert!(matches!(
            map(Code::DeadlineExceeded),
            SuiError::Unavailable(_)
        ));
        assert!(matches!(map(Code::InvalidArgument), SuiError::Invalid(_)));
        let SuiError::Invalid(m) = map(Code::Unimplemented) else {
            panic!()
        };
        assert!(m.contains("sui.rpc.v2"), "{m}");
    }
}
