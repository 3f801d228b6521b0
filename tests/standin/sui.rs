//! A stand-in Sui full node, for tests only.
//!
//! It serves `sui.rpc.v2.LedgerService` (GetServiceInfo, GetObject, GetTransaction; every
//! other method answers `Unimplemented`) over gRPC on 127.0.0.1, from objects and
//! transactions kept in memory. Answers are built the way a real full node builds them: the
//! objects are `sui_sdk_types::Object`s with Walrus's BCS layouts and Move types, rendered
//! through sui-rpc's own `Merge` under the request's read mask (validated like a node does);
//! the staking state lives in the dynamic field `Field<u64, StakingInnerV1>` keyed by the
//! staking object's version, at the ID Sui derives for it. The system object is served but
//! not its inner state, which nothing here reads.
//!
//! Include it with `#[path = "standin/sui.rs"] mod sui_standin;` (or from
//! `tests/standin/mod.rs`); it depends only on the walrusfs library and external crates.
//! [`SuiStandIn::start`] must be called inside a tokio runtime.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sui_rpc::field::{FieldMask, FieldMaskTree, FieldMaskUtil};
use sui_rpc::merge::Merge;
use sui_rpc::proto::sui::rpc::v2::ledger_service_server::{LedgerService, LedgerServiceServer};
use sui_rpc::proto::sui::rpc::v2::{
    ExecutedTransaction, GetObjectRequest, GetObjectResponse, GetServiceInfoRequest,
    GetServiceInfoResponse, GetTransactionRequest, GetTransactionResponse, Object as ProtoObject,
    TransactionEvents as ProtoTransactionEvents,
};
use sui_sdk_types::{
    Address, Digest, Event, Identifier, MoveStruct, Object, ObjectData, Owner, StructTag,
    TransactionEvents,
};
use tonic::{Request, Response, Status};
use walrusfs::sui::layout::{self, StakingInnerPrefix};
use walrusfs::sui::{BlobCertifiedEvent, BlobObject, ObjectId};

/// The contract version the stand-in's system and staking objects carry: the key of their
/// inner-state dynamic fields. Not 1, so a reader that assumes the key is caught.
pub const WALRUS_CONTRACT_VERSION: u64 = 2;

/// A fault the stand-in injects into its answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuiFault {
    /// Answer normally.
    None,
    /// Answer every call with gRPC `UNAVAILABLE`.
    Unavailable,
    /// Never answer: calls hang until the client gives up.
    Stall,
    /// Serve this object with another Move type (`<package>::storage_resource::Storage`).
    WrongType(ObjectId),
}

/// Handle to a running stand-in full node; clones share it. The server stops when the last
/// handle is dropped.
#[derive(Clone)]
pub struct SuiStandIn {
    shared: Arc<Shared>,
}

struct Shared {
    addr: SocketAddr,
    /// The original Walrus package: the address in every Walrus Move type.
    package: Address,
    /// The latest upgrade of the package, as the system and staking objects record it.
    upgraded_package: Address,
    system_object: Address,
    staking_object: Address,
    state: Mutex<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct State {
    objects: HashMap<Address, Object>,
    /// Events per transaction digest (base58).
    transactions: HashMap<String, Vec<Event>>,
    fault: SuiFault,
    /// Lamport clock for object versions.
    next_version: u64,
    epoch: u32,
    staking_inner: StakingInnerPrefix,
    extended_field_ids: [ObjectId; 2],
}

impl SuiStandIn {
    /// Binds 127.0.0.1 on a free port and serves from a tokio task, at Walrus epoch 1.
    pub fn start() -> SuiStandIn {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();

        let random = || Address::new(rand::random::<[u8; 32]>());
        let (package, upgraded_package) = (random(), random());
        let (system_object, staking_object) = (random(), random());
        let state = State {
            objects: HashMap::new(),
            transactions: HashMap::new(),
            fault: SuiFault::None,
            next_version: 1,
            epoch: 1,
            staking_inner: StakingInnerPrefix {
                n_shards: 1000,
                epoch_duration_ms: 86_400_000,
                first_epoch_start_ms: 1_700_000_000_000,
                pools_id: rand::random(),
                pools_size: 0,
                epoch: 1,
            },
            extended_field_ids: [rand::random(), rand::random()],
        };

        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| {
            let service = Service {
                shared: weak.clone(),
            };
            let server = tokio::spawn(async move {
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                let result = tonic::transport::Server::builder()
                    .add_service(LedgerServiceServer::new(service))
                    .serve_with_incoming(incoming)
                    .await;
                if let Err(e) = result {
                    eprintln!("Sui stand-in server stopped: {e}");
                }
            });
            Shared {
                addr,
                package,
                upgraded_package,
                system_object,
                staking_object,
                state: Mutex::new(state),
                server,
            }
        });
        let standin = SuiStandIn { shared };
        {
            let mut state = standin.lock();
            let s = &standin.shared;
            for (id, module, name) in [
                (s.system_object, "system", "System"),
                (s.staking_object, "staking", "Staking"),
            ] {
                let contents = layout::encode_versioned_object(
                    id.into_inner(),
                    WALRUS_CONTRACT_VERSION,
                    s.upgraded_package.into_inner(),
                    None,
                );
                let type_ = StructTag::new(
                    s.package,
                    Identifier::new(module).unwrap(),
                    Identifier::new(name).unwrap(),
                    vec![],
                );
                let version = state.bump();
                state.put(type_, contents, Owner::Shared(version), false, version);
            }
            standin.write_staking_inner(&mut state);
        }
        standin
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    pub fn system_object(&self) -> ObjectId {
        self.shared.system_object.into_inner()
    }

    pub fn staking_object(&self) -> ObjectId {
        self.shared.staking_object.into_inner()
    }

    /// The Walrus package the Move types name (`<package>::blob::Blob`, ...). The system and
    /// staking objects' `package_id` fields hold a different, later upgrade, as on testnet.
    pub fn package_id(&self) -> ObjectId {
        self.shared.package.into_inner()
    }

    /// Sets the current Walrus epoch, as an epoch change would.
    pub fn set_epoch(&self, epoch: u32) {
        let mut state = self.lock();
        state.epoch = epoch;
        state.staking_inner.epoch = epoch;
        self.write_staking_inner(&mut state);
    }

    /// Stores (or replaces) a `Blob` object, owned by some address.
    pub fn insert_blob(&self, blob: BlobObject) {
        let mut state = self.lock();
        let version = state.bump();
        state.put(
            layout::blob_type(self.package_id()),
            layout::encode_blob(&blob),
            Owner::Address(Address::new(rand::random())),
            true,
            version,
        );
    }

    /// Stores an object of any Move type; `contents` must start with its 32-byte UID.
    pub fn insert_raw_object(&self, type_: StructTag, contents: Vec<u8>) {
        let mut state = self.lock();
        let version = state.bump();
        let owner = Owner::Address(Address::new(rand::random()));
        state.put(type_, contents, owner, true, version);
    }

    /// Records a transaction emitting this one `BlobCertified` event; returns the
    /// transaction digest (base58) and the event's index in it.
    pub fn insert_certified_event(&self, event: BlobCertifiedEvent) -> (String, u64) {
        let contents = layout::encode_blob_certified(&event);
        let digest = self.insert_events(vec![(
            layout::blob_certified_type(self.package_id()),
            contents,
        )]);
        (digest, 0)
    }

    /// Records a transaction emitting these events (Move type, BCS contents), in order, as
    /// if from a call into the Walrus `system` module; returns its digest.
    pub fn insert_events(&self, events: Vec<(StructTag, Vec<u8>)>) -> String {
        let sender = Address::new(rand::random());
        let events = events
            .into_iter()
            .map(|(type_, contents)| Event {
                package_id: self.shared.upgraded_package,
                module: Identifier::new("system").unwrap(),
                sender,
                type_,
                contents,
            })
            .collect();
        let mut state = self.lock();
        let digest = Digest::new(rand::random()).to_string();
        state.transactions.insert(digest.clone(), events);
        digest
    }

    /// Injects a fault into every later answer (replacing the previous one).
    pub fn set_fault(&self, fault: SuiFault) {
        self.lock().fault = fault;
    }

    fn write_staking_inner(&self, state: &mut State) {
        let staking = self.staking_object();
        let field_id = layout::versioned_inner_field_id(staking, WALRUS_CONTRACT_VERSION);
        let contents = layout::encode_staking_inner_field(
            field_id,
            WALRUS_CONTRACT_VERSION,
            &state.staking_inner,
            state.extended_field_ids,
            1_700_000_000_000 + u64::from(state.epoch) * 86_400_000,
        );
        let version = state.bump();
        state.put(
            layout::staking_inner_field_type(self.package_id()),
            contents,
            Owner::Object(self.shared.staking_object),
            false,
            version,
        );
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn bump(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    fn put(
        &mut self,
        type_: StructTag,
        contents: Vec<u8>,
        owner: Owner,
        has_public_transfer: bool,
        version: u64,
    ) {
        let data = MoveStruct::new(type_, has_public_transfer, version, contents)
            .expect("contents start with the object's UID");
        let object = Object::new(
            ObjectData::Struct(data),
            owner,
            Digest::new(rand::random()),
            988_000,
        );
        self.objects.insert(object.object_id(), object);
    }
}

/// The gRPC service; holds the state weakly so that dropping every handle stops it.
struct Service {
    shared: std::sync::Weak<Shared>,
}

impl Service {
    fn shared(&self) -> Result<Arc<Shared>, Status> {
        self.shared
            .upgrade()
            .ok_or_else(|| Status::unavailable("the Sui stand-in is shutting down"))
    }

    /// Applies the global faults; returns the fault for per-object handling.
    async fn fault(&self) -> Result<SuiFault, Status> {
        let fault = {
            let shared = self.shared()?;
            let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            state.fault.clone()
        };
        match fault {
            SuiFault::Unavailable => Err(Status::unavailable(
                "Sui stand-in: unavailable (injected fault)",
            )),
            SuiFault::Stall => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(Status::unavailable(
                    "Sui stand-in: stalled (injected fault)",
                ))
            }
            other => Ok(other),
        }
    }
}

fn read_mask<M: sui_rpc::field::MessageFields>(
    mask: Option<FieldMask>,
    default: &str,
) -> Result<FieldMaskTree, Status> {
    let mask = mask.unwrap_or_else(|| <FieldMask as FieldMaskUtil>::from_str(default));
    mask.validate::<M>()
        .map_err(|path| Status::invalid_argument(format!("invalid read_mask path: {path}")))?;
    Ok(FieldMaskTree::from_field_mask(&mask))
}

#[tonic::async_trait]
impl LedgerService for Service {
    async fn get_service_info(
        &self,
        _request: Request<GetServiceInfoRequest>,
    ) -> Result<Response<GetServiceInfoResponse>, Status> {
        self.fault().await?;
        let mut info = GetServiceInfoResponse::default();
        info.chain_id = Some(Digest::new([7; 32]).to_string());
        info.chain = Some("walrusfs-standin".into());
        info.epoch = Some(0);
        info.checkpoint_height = Some(0);
        info.lowest_available_checkpoint = Some(0);
        info.lowest_available_checkpoint_objects = Some(0);
        info.server = Some("walrusfs Sui stand-in".into());
        Ok(Response::new(info))
    }

    async fn get_object(
        &self,
        request: Request<GetObjectRequest>,
    ) -> Result<Response<GetObjectResponse>, Status> {
        let fault = self.fault().await?;
        let request = request.into_inner();
        let object_id: Address = request
            .object_id
            .as_deref()
            .ok_or_else(|| Status::invalid_argument("missing object_id"))?
            .parse()
            .map_err(|e| Status::invalid_argument(format!("invalid object_id: {e}")))?;
        let mask = read_mask::<ProtoObject>(request.read_mask, "object_id,version,digest")?;
        let shared = self.shared()?;
        let mut object = {
            let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            state
                .objects
                .get(&object_id)
                .filter(|o| request.version.is_none_or(|v| v == o.version()))
                .cloned()
                .ok_or_else(|| Status::not_found(format!("Object {object_id} not found")))?
        };
        if fault == SuiFault::WrongType(object_id.into_inner())
            && let ObjectData::Struct(s) = object.data()
        {
            let wrong = StructTag::new(
                shared.package,
                Identifier::new("storage_resource").unwrap(),
                Identifier::new("Storage").unwrap(),
                vec![],
            );
            let data = MoveStruct::new(wrong, true, s.version(), s.contents().to_vec()).unwrap();
            object = Object::new(
                ObjectData::Struct(data),
                *object.owner(),
                object.previous_transaction(),
                object.storage_rebate(),
            );
        }
        let mut response = GetObjectResponse::default();
        response.object = Some(ProtoObject::merge_from(object, &mask));
        Ok(Response::new(response))
    }

    async fn get_transaction(
        &self,
        request: Request<GetTransactionRequest>,
    ) -> Result<Response<GetTransactionResponse>, Status> {
        self.fault().await?;
        let request = request.into_inner();
        let digest: Digest = request
            .digest
            .as_deref()
            .ok_or_else(|| Status::invalid_argument("missing digest"))?
            .parse()
            .map_err(|e| Status::invalid_argument(format!("invalid digest: {e}")))?;
        let mask = read_mask::<ExecutedTransaction>(request.read_mask, "digest")?;
        let shared = self.shared()?;
        let events = {
            let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            state
                .transactions
                .get(&digest.to_string())
                .cloned()
                .ok_or_else(|| Status::not_found(format!("Transaction {digest} not found")))?
        };
        let mut transaction = ExecutedTransaction::default();
        if mask.contains("digest") {
            transaction.digest = Some(digest.to_string());
        }
        if let Some(submask) = mask.subtree("events") {
            transaction.events = Some(ProtoTransactionEvents::merge_from(
                TransactionEvents(events),
                &submask,
            ));
        }
        let mut response = GetTransactionResponse::default();
        response.transaction = Some(transaction);
        Ok(Response::new(response))
    }
}
