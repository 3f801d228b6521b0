//! The gRPC `GrpcSuiReader` against the stand-in Sui full node over loopback.

#[path = "standin/sui.rs"]
mod sui_standin;

use std::time::{Duration, Instant};

use sui_standin::{SuiFault, SuiStandIn};
use walrusfs::encoding::BlobId;
use walrusfs::sui::layout;
use walrusfs::sui::{
    BlobCertifiedEvent, BlobObject, GrpcSuiReader, StorageResource, SuiError, SuiReader,
};

fn reader(standin: &SuiStandIn) -> GrpcSuiReader {
    GrpcSuiReader::new(
        &standin.url(),
        standin.system_object(),
        standin.staking_object(),
    )
    .unwrap()
    .with_timeout(Duration::from_secs(2))
}

fn blob(object_id: u8, certified_epoch: Option<u32>) -> BlobObject {
    BlobObject {
        object_id: [object_id; 32],
        registered_epoch: 3,
        blob_id: BlobId(std::array::from_fn(|i| i as u8)),
        size: 123_456,
        encoding_type: 1,
        certified_epoch,
        storage: StorageResource {
            object_id: [object_id.wrapping_add(1); 32],
            start_epoch: 3,
            end_epoch: 56,
            storage_size: 66_034_000,
        },
        deletable: certified_epoch.is_none(),
    }
}

fn event(object_id: u8) -> BlobCertifiedEvent {
    BlobCertifiedEvent {
        epoch: 4,
        blob_id: BlobId([0x5a; 32]),
        end_epoch: 56,
        deletable: false,
        object_id: [object_id; 32],
        is_extension: false,
    }
}

#[tokio::test]
async fn blob_objects_round_trip_certified_or_not() {
    let standin = SuiStandIn::start();
    let reader = reader(&standin);
    let certified = blob(0x10, Some(4));
    let registered = blob(0x20, None);
    standin.insert_blob(certified.clone());
    standin.insert_blob(registered.clone());

    assert_eq!(
        reader.blob_object(certified.object_id).await.unwrap(),
        certified
    );
    assert_eq!(
        reader.blob_object(registered.object_id).await.unwrap(),
        registered
    );
    assert_eq!(
        reader.walrus_package().await.unwrap(),
        standin.package_id(),
        "the package is the address in the Move types"
    );

    // Certifying the same object later shows on the next read.
    let mut now_certified = registered.clone();
    now_certified.certified_epoch = Some(5);
    standin.insert_blob(now_certified.clone());
    assert_eq!(
        reader.blob_object(registered.object_id).await.unwrap(),
        now_certified
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_one_reader() {
    let standin = SuiStandIn::start();
    let reader = std::sync::Arc::new(reader(&standin));
    let blobs: Vec<_> = (0..16).map(|i| blob(0x70 + i, Some(4))).collect();
    for b in &blobs {
        standin.insert_blob(b.clone());
    }
    let tasks: Vec<_> = blobs
        .iter()
        .cloned()
        .map(|b| {
            let reader = reader.clone();
            tokio::spawn(async move {
                assert_eq!(reader.blob_object(b.object_id).await.unwrap(), b);
                assert_eq!(reader.current_epoch().await.unwrap(), 1);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn missing_object_is_not_found() {
    let standin = SuiStandIn::start();
    let reader = reader(&standin);
    match reader.blob_object([0x99; 32]).await {
        Err(SuiError::NotFound(m)) => assert!(m.contains(&"99".repeat(32)), "{m}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn object_of_another_type_is_invalid() {
    let standin = SuiStandIn::start();
    let reader = reader(&standin);
    let b = blob(0x30, Some(4));
    standin.insert_blob(b.clone());

    // The staking object exists but is no blob.
    match reader.blob_object(standin.staking_object()).await {
        Err(SuiError::Invalid(m)) => {
            assert!(
                m.contains("::staking::Staking") && m.contains("::blob::Blob"),
                "{m}"
            )
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    // A blob served under another type.
    standin.set_fault(SuiFault::WrongType(b.object_id));
    match reader.blob_object(b.object_id).await {
        Err(SuiError::Invalid(m)) => {
            assert!(
                m.contains(&"30".repeat(32)) && m.contains("storage_resource::Storage"),
                "{m}"
            )
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    standin.set_fault(SuiFault::None);
    assert_eq!(reader.blob_object(b.object_id).await.unwrap(), b);
}

#[tokio::test]
async fn lookalike_blob_type_from_another_package_is_invalid() {
    // Anyone can publish a module `blob` with a struct `Blob`: only the Walrus package's counts.
    let standin = SuiStandIn::start();
    let reader = reader(&standin);
    let b = blob(0x40, Some(4));
    standin.insert_raw_object(layout::blob_type([0xee; 32]), layout::encode_blob(&b));
    match reader.blob_object(b.object_id).await {
        Err(SuiError::Invalid(m)) => assert!(m.contains(&"ee".repeat(32)), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn undecodable_blob_contents_are_invalid() {
    let standin = SuiStandIn::start();
    let reader = reader(&standin);
    let mut bytes = layout::encode_blob(&blob(0x41, Some(4)));
    bytes.push(0);
    standin.insert_raw_object(layout::blob_type(standin.package_id()), bytes);
    match reader.blob_object([0x41; 32]).await {
        Err(SuiError::Invalid(m)) => assert!(m.contains("left over"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn certified_event_lookup() {
    let standin = SuiStandIn::start();
    let reader = reader(&standin);
    let e = event(0x50);
    let (digest, seq) = standin.insert_certified_event(e.clone());
    assert_eq!(reader.certified_event(&digest, seq).await.unwrap(), e);

    // Past the last event, and an unknown transaction.
    assert!(matches!(
        reader.certified_event(&digest, seq + 1).await,
        Err(SuiError::NotFound(_))
    ));
    let unknown = sui_sdk_types::Digest::new([3; 32]).to_string();
    assert!(matches!(
        reader.certified_event(&unknown, 0).await,
        Err(SuiError::NotFound(_))
    ));

    // The second event of a transaction, after one of another type; and that other one.
    let other_type: sui_sdk_types::StructTag = format!(
        "{}::events::BlobRegistered",
        layout::object_id_string(&standin.package_id())
    )
    .parse()
    .unwrap();
    let second = event(0x51);
    let digest = standin.insert_events(vec![
        (other_type, vec![0; 10]),
        (
            layout::blob_certified_type(standin.package_id()),
            layout::encode_blob_certified(&second),
        ),
    ]);
    assert_eq!(reader.certified_event(&digest, 1).await.unwrap(), second);
    match reader.certified_event(&digest, 0).await {
        Err(SuiError::Invalid(m)) => assert!(m.contains("BlobRegistered"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }

    // A BlobCertified event from a look-alike package.
    let fake = layout::blob_certified_type([0xee; 32]);
    let digest = standin.insert_events(vec![(fake, layout::encode_blob_certified(&second))]);
    assert!(matches!(
        reader.certified_event(&digest, 0).await,
        Err(SuiError::Invalid(_))
    ));

    // Undecodable contents under the right type.
    let digest = standin.insert_events(vec![(
        layout::blob_certified_type(standin.package_id()),
        vec![1, 2, 3],
    )]);
    match reader.certified_event(&digest, 0).await {
        Err(SuiError::Invalid(m)) => assert!(m.contains("cannot decode"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn current_epoch_follows_the_staking_object() {
    let standin = SuiStandIn::start();
    let reader = reader(&standin);
    assert_eq!(reader.current_epoch().await.unwrap(), 1);
    standin.set_epoch(7);
    assert_eq!(reader.current_epoch().await.unwrap(), 7);
    standin.set_epoch(u32::MAX - 1);
    assert_eq!(reader.current_epoch().await.unwrap(), u32::MAX - 1);
}

#[tokio::test]
async fn swapped_system_and_staking_objects_are_invalid() {
    let standin = SuiStandIn::start();
    let reader = GrpcSuiReader::new(
        &standin.url(),
        standin.staking_object(),
        standin.system_object(),
    )
    .unwrap();
    match reader.current_epoch().await {
        Err(SuiError::Invalid(m)) => assert!(m.contains("staking::Staking"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn unavailable_node_is_unavailable_within_the_timeout() {
    let standin = SuiStandIn::start();
    let b = blob(0x60, Some(4));
    standin.insert_blob(b.clone());
    let reader = reader(&standin);

    standin.set_fault(SuiFault::Unavailable);
    assert!(matches!(
        reader.blob_object(b.object_id).await,
        Err(SuiError::Unavailable(_))
    ));

    standin.set_fault(SuiFault::Stall);
    let started = Instant::now();
    match reader.current_epoch().await {
        Err(SuiError::Unavailable(m)) => assert!(m.contains("did not answer"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} with a 2 s timeout"
    );

    standin.set_fault(SuiFault::None);
    assert_eq!(reader.blob_object(b.object_id).await.unwrap(), b);
}

#[tokio::test]
async fn nothing_listening_is_unavailable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let reader = GrpcSuiReader::new(&format!("http://127.0.0.1:{port}"), [1; 32], [2; 32])
        .unwrap()
        .with_timeout(Duration::from_secs(2));
    let started = Instant::now();
    assert!(matches!(
        reader.current_epoch().await,
        Err(SuiError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn stand_in_answers_unknown_methods_with_unimplemented() {
    use sui_rpc::proto::sui::rpc::v2::GetEpochRequest;
    let standin = SuiStandIn::start();
    let mut client = sui_rpc::Client::new(standin.url()).unwrap();
    let status = client
        .ledger_client()
        .get_epoch(GetEpochRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    let info = client
        .ledger_client()
        .get_service_info(sui_rpc::proto::sui::rpc::v2::GetServiceInfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(info.chain.is_some());
}

/// Reads the real Walrus testnet objects (needs internet; run with `--ignored`).
#[tokio::test]
#[ignore = "needs internet: reads Walrus testnet through fullnode.testnet.sui.io"]
async fn reads_walrus_testnet() {
    let id = |s: &str| layout::parse_object_id(s).unwrap();
    // From MystenLabs/walrus setup/client_config.yaml, context `testnet`.
    let reader = GrpcSuiReader::new(
        "https://fullnode.testnet.sui.io:443",
        id("0x6c2547cbbc38025cf3adac45f63cb0a8d12ecf777cdc75a4971612bf97fdf6af"),
        id("0xbe46180321c30aab2f8b3501e24048377287fa708018a5b7c2792b35fe339ee3"),
    )
    .unwrap()
    .with_timeout(Duration::from_secs(20));
    let epoch = reader.current_epoch().await.unwrap();
    let package = reader.walrus_package().await.unwrap();
    eprintln!(
        "Walrus testnet: epoch {epoch}, package {}",
        layout::object_id_string(&package)
    );
    assert!(epoch > 0);
}
