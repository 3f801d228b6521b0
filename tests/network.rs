//! The network end to end: real `walrusfs node` processes on loopback, the embedded ledger,
//! and the client's store and read pipelines, with nodes stopped, killed, lying and stalled.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use walrusfs::client::{Client, ClientConfig, ClientError, StoreOptions};
use walrusfs::devnet::{Devnet, DevnetParams, NetworkFile};
use walrusfs::encoding::BlobId;

/// A 7-node devnet over 21 shards (3 per node; f = 6, so 2 nodes may fail and 3 suffice to read).
struct Net {
    _tmp: tempfile::TempDir,
    devnet: Devnet,
    client: Client,
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.devnet.down(false);
    }
}

async fn devnet(faults: &[(usize, &str)]) -> Net {
    let tmp = tempfile::tempdir().unwrap();
    let devnet = Devnet::with_exe(tmp.path().join("net"), env!("CARGO_BIN_EXE_walrusfs"));
    devnet
        .create(&DevnetParams {
            nodes: 7,
            shards: 21,
            epoch_duration: Some(Duration::from_secs(3600)),
            base_port: 0,
        })
        .unwrap();
    for (i, fault) in faults {
        let node = devnet.node(*i).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(node.config_path())
            .unwrap();
        writeln!(f, "\n[faults]\n{fault} = true").unwrap();
    }
    for i in 0..7 {
        devnet.start_node(i).unwrap();
    }
    for i in 0..7 {
        // A stalled node accepts connections and never answers, health checks included.
        if !faults.iter().any(|(f, what)| *f == i && *what == "stall") {
            devnet
                .wait_healthy(i, Duration::from_secs(30))
                .await
                .unwrap();
        }
    }
    let network = NetworkFile::load(&devnet.network_file()).unwrap();
    let ledger = network.ledger_config().open().unwrap();
    let client = Client::new(ledger, ClientConfig::default()).unwrap();
    Net {
        _tmp: tmp,
        devnet,
        client,
    }
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn put(net: &Net, blob: &[u8]) -> Result<BlobId, ClientError> {
    let outcome = net
        .client
        .store(blob.to_vec(), StoreOptions::default())
        .await?;
    Ok(outcome.blob_id)
}

/// The blob read twice, streamed (as `blob get` does, with the metadata fetched alongside the
/// first slivers) and whole (as the drive does, then with the metadata cached): both must
/// return the same bytes.
async fn get(net: &Net, id: BlobId) -> Vec<u8> {
    let mut streamed = Vec::new();
    let mut pieces = 0;
    net.client
        .read_streaming(id, None, &mut |piece| {
            streamed.extend_from_slice(piece);
            pieces += 1;
            Ok(())
        })
        .await
        .unwrap();
    let whole = net.client.read(id, None).await.unwrap().0;
    assert!(
        streamed == whole,
        "the streamed read differs from the whole one"
    );
    assert!(pieces >= 1 || whole.is_empty());
    whole
}

/// Starts node `i` again and waits for it; on failure shows the node's log.
async fn restart(net: &Net, i: usize) {
    net.devnet.start_node(i).unwrap();
    if let Err(e) = net.devnet.wait_healthy(i, Duration::from_secs(30)).await {
        let log =
            std::fs::read_to_string(net.devnet.node(i).unwrap().log_path()).unwrap_or_default();
        panic!("node {i} did not come back: {e}\n{log}");
    }
}

fn stop(net: &Net, nodes: &[usize]) {
    for &i in nodes {
        net.devnet.stop_node(i, Duration::from_secs(5)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_two_stopped_nodes_and_refuses_with_four() {
    let net = devnet(&[]).await;
    let before = data(300_000, 1);
    let id_before = put(&net, &before).await.unwrap();

    stop(&net, &[1, 5]);
    let blob = data(250_001, 2);
    let id = put(&net, &blob).await.unwrap();
    assert_eq!(get(&net, id).await, blob);
    assert_eq!(get(&net, id_before).await, before);
    // A byte range, served from the systematic slivers that are still there or decoded.
    let (part, _) = net.client.read(id, Some(1000..101_000)).await.unwrap();
    assert_eq!(part, blob[1000..101_000]);

    stop(&net, &[2, 6]);
    let refused = data(10_000, 3);
    let err = put(&net, &refused).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            ClientError::NotEnoughConfirmations {
                weight: 9,
                needed: 15,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("quorum needs 15"), "{msg}");
    let refused_id = walrusfs::encoding::EncodingConfig::new(21)
        .unwrap()
        .blob_id(&refused)
        .unwrap();
    let (status, _, _) = net.client.status(refused_id).await.unwrap();
    assert!(
        !status.is_certified(),
        "nothing may be certified without a quorum"
    );

    // Three nodes left hold 9 = n − 2f shards: enough to read.
    assert_eq!(get(&net, id).await, blob);
    assert_eq!(get(&net, id_before).await, before);

    // Once the nodes are back, storing again reuses the registration and certifies.
    for i in [1, 2, 5, 6] {
        restart(&net, i).await;
    }
    assert_eq!(put(&net, &refused).await.unwrap(), refused_id);
    assert_eq!(get(&net, refused_id).await, refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_killed_mid_upload() {
    let net = Arc::new(devnet(&[]).await);
    let blob = data(1_500_000, 4);
    let store = {
        let net = net.clone();
        let blob = blob.clone();
        tokio::spawn(async move { put(&net, &blob).await })
    };
    // Kill two nodes while the upload runs (they may or may not have received their share).
    tokio::time::sleep(Duration::from_millis(5)).await;
    net.devnet.kill_node(0).unwrap();
    net.devnet.kill_node(4).unwrap();
    let id = store.await.unwrap().unwrap();
    assert_eq!(get(&net, id).await, blob);
    // The killed nodes come back with their data dirs intact and serve what they persisted.
    for i in [0, 4] {
        restart(&net, i).await;
    }
    assert_eq!(get(&net, id).await, blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_in_place_across_slivers_and_sequential_small_reads() {
    let net = devnet(&[]).await;
    // 21 shards: 9 systematic rows of 15 symbols; this blob's rows are 34 710 bytes.
    let blob = data(312_345, 9);
    let id = put(&net, &blob).await.unwrap();
    assert_eq!(get(&net, id).await, blob);
    let len = blob.len() as u64;
    for range in [
        0..1,
        0..len,
        1..len,
        34_000..36_000,
        34_710..69_420,
        100_000..250_000,
        len - 1..len,
        len..len,
    ] {
        let (part, stats) = net.client.read(id, Some(range.clone())).await.unwrap();
        assert_eq!(
            part,
            blob[range.start as usize..range.end as usize],
            "{range:?}"
        );
        assert!(!stats.decoded, "{range:?}");
    }
    // A reader going through the blob in ranges smaller than a sliver.
    let mut back = Vec::new();
    while back.len() < blob.len() {
        let at = back.len() as u64;
        let (part, _) = net
            .client
            .read(id, Some(at..(at + 10_000).min(len)))
            .await
            .unwrap();
        back.extend_from_slice(&part);
    }
    assert_eq!(back, blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_nodes_cannot_corrupt_or_forge() {
    let net = devnet(&[
        (0, "corrupt_slivers"),
        (3, "corrupt_metadata"),
        (5, "wrong_signing_key"),
    ])
    .await;
    let blob = data(400_000, 5);
    let outcome = net
        .client
        .store(blob.clone(), StoreOptions::default())
        .await
        .unwrap();
    let id = outcome.blob_id;
    // The certificate the ledger accepted has no signature of the node with the wrong key.
    assert!(
        !outcome.signers.contains(&5),
        "signers {:?}",
        outcome.signers
    );
    let objects = net.client.status(id).await.unwrap().1;
    assert!(objects.iter().any(|o| o.is_certified()));
    for _ in 0..3 {
        let (read, _) = net.client.read(id, None).await.unwrap();
        assert_eq!(read, blob);
    }
    // The liars really lie: node 3's metadata and node 0's slivers fail verification.
    let config = walrusfs::encoding::EncodingConfig::new(21).unwrap();
    let http = reqwest::Client::new();
    let api = |i: usize| {
        walrusfs::client::NodeApi::new(
            http.clone(),
            &net.devnet.node_address(i).unwrap(),
            Duration::from_secs(5),
        )
    };
    let bad_meta = api(3).get_metadata(&id).await;
    assert!(bad_meta.map(|m| m.verify(&config).is_err()).unwrap_or(true));
    let good_meta = api(1).get_metadata(&id).await.unwrap();
    good_meta.verify(&config).unwrap();
    let committee = net.client.ledger().committee().unwrap();
    let shard = committee.member(0).unwrap().shard_ids[0];
    let pair = walrusfs::encoding::shard_to_pair(shard, 21, &id);
    let len = config
        .sliver_len(walrusfs::encoding::SliverType::Primary, blob.len() as u64)
        .unwrap();
    // Unparseable is fine too; parseable must not verify.
    if let Ok(s) = api(0)
        .get_sliver(&id, pair, walrusfs::encoding::SliverType::Primary, len)
        .await
    {
        assert!(s.verify(&config, &good_meta.metadata).is_err());
    }
    let (part, _) = net.client.read(id, Some(0..5000)).await.unwrap();
    assert_eq!(part, blob[..5000]);

    // A streamed read whose range needs a sliver of the lying node: the corrupt sliver is
    // caught and the rest read around it. Blobs are stored until one puts a systematic
    // sliver (one of the first n − 2f = 9) on node 0.
    for seed in 100.. {
        let blob = data(200_000, seed);
        let id = put(&net, &blob).await.unwrap();
        let pair = walrusfs::encoding::shard_to_pair(shard, 21, &id);
        if pair >= 9 {
            continue;
        }
        let (start, end) = (
            blob.len() as u64 * u64::from(pair) / 9,
            blob.len() as u64 * u64::from(pair + 1) / 9,
        );
        let mut out = Vec::new();
        let stats = net
            .client
            .read_streaming(id, Some(start..end), &mut |p| {
                out.extend_from_slice(p);
                Ok(())
            })
            .await
            .unwrap();
        assert!(out == blob[start as usize..end as usize]);
        assert!(!stats.failures.is_empty(), "the lie went unnoticed");
        break;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_read_reports_a_failing_output_and_reads_ranges() {
    let net = devnet(&[]).await;
    let blob = data(500_000, 8);
    let id = put(&net, &blob).await.unwrap();
    // The output fails after the first piece: the read stops with that error.
    let mut calls = 0;
    let err = net
        .client
        .read_streaming(id, None, &mut |_| {
            calls += 1;
            Err(std::io::Error::other("disk full"))
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Output(_)), "{err}");
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(calls, 1);
    // Ranges within one sliver, across several, at the end, and empty.
    let len = blob.len() as u64;
    for range in [0..1, 10..70_000, 123_456..len, len..len, 0..len] {
        let mut out = Vec::new();
        net.client
            .read_streaming(id, Some(range.clone()), &mut |p| {
                out.extend_from_slice(p);
                Ok(())
            })
            .await
            .unwrap();
        assert!(
            out == blob[range.start as usize..range.end as usize],
            "range {range:?}"
        );
    }
    // Past the end: a clear error, nothing written.
    let mut wrote = false;
    let err = net
        .client
        .read_streaming(id, Some(0..len + 1), &mut |_| {
            wrote = true;
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(!wrote, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_costs_little() {
    // Baseline on a healthy network.
    let healthy = devnet(&[]).await;
    let blob = data(600_000, 6);
    let t = Instant::now();
    let id = put(&healthy, &blob).await.unwrap();
    assert_eq!(get(&healthy, id).await, blob);
    let healthy_time = t.elapsed();
    drop(healthy);

    let net = devnet(&[(2, "stall")]).await;
    let t = Instant::now();
    let id = put(&net, &blob).await.unwrap();
    assert_eq!(get(&net, id).await, blob);
    let stalled_time = t.elapsed();
    let allowed = Duration::from_secs(5).max(healthy_time * 2);
    assert!(
        stalled_time <= healthy_time + allowed,
        "healthy {healthy_time:?}, with a stalled node {stalled_time:?}"
    );
}

#[test]
fn devnet_cli_up_status_stop_start_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_walrusfs"))
            .args(args)
            .arg("--dir")
            .arg(&dir)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = run(&["devnet", "up", "--nodes", "4", "--shards", "13"]);
    assert!(ok, "{out}");
    assert!(Path::new(&dir).join("network.toml").exists());
    let (ok, out) = run(&["devnet", "status"]);
    assert!(ok, "{out}");
    assert_eq!(out.matches("healthy").count(), 4, "{out}");
    let (ok, out) = run(&["devnet", "stop-node", "2"]);
    assert!(ok, "{out}");
    let (_, out) = run(&["devnet", "status"]);
    assert_eq!(out.matches("healthy").count(), 3, "{out}");
    assert!(out.contains("stopped"), "{out}");
    let (ok, out) = run(&["devnet", "start-node", "2"]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["devnet", "up"]);
    assert!(!ok && out.contains("already holds a devnet"), "{out}");
    let (ok, out) = run(&["devnet", "down", "--purge"]);
    assert!(ok, "{out}");
    assert!(out.contains("stopped 4 node(s)"), "{out}");
    assert!(!dir.exists());
}

#[test]
fn blob_cli_put_get_range_status_extend_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let net = dir.join("network.toml");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_walrusfs"))
            .args(args)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.stdout,
        )
    };
    let d = dir.to_str().unwrap();
    let n = net.to_str().unwrap();
    let (ok, out, err, _) = run(&["devnet", "up", "--dir", d, "--nodes", "4", "--shards", "13"]);
    assert!(ok, "{out}{err}");
    let _down = scopeguard(dir.clone());

    let blob = data(123_457, 9);
    std::fs::write(tmp.path().join("f"), &blob).unwrap();
    let (ok, out, err, _) = run(&["blob", "put", "f", "--epochs", "2", "--network", n]);
    assert!(ok, "{out}{err}");
    let id = out.lines().last().unwrap().to_string();
    assert!(out.contains("stored until the end of epoch 2"), "{out}");
    // The same content again: already certified long enough, nothing uploaded.
    let (ok, out, err, _) = run(&["blob", "put", "f", "--network", n]);
    assert!(ok && out.contains("nothing uploaded"), "{out}{err}");
    assert_eq!(out.lines().last().unwrap(), id);

    let (ok, out, err, _) = run(&["blob", "get", &id, "-o", "back", "--network", n]);
    assert!(ok, "{out}{err}");
    assert_eq!(std::fs::read(tmp.path().join("back")).unwrap(), blob);
    let (ok, _, err, raw) = run(&[
        "blob",
        "get",
        &id,
        "--range",
        "100-199",
        "-o",
        "-",
        "--network",
        n,
    ]);
    assert!(ok, "{err}");
    assert_eq!(raw, &blob[100..200]);
    let (ok, _, err, _) = run(&[
        "blob",
        "get",
        &id,
        "--range",
        "5-2",
        "-o",
        "-",
        "--network",
        n,
    ]);
    assert!(!ok && err.contains("not a byte range"), "{err}");
    let (ok, _, err, _) = run(&[
        "blob",
        "get",
        &id,
        "--range",
        "0-999999",
        "-o",
        "-",
        "--network",
        n,
    ]);
    assert!(!ok && err.contains("outside the blob"), "{err}");

    let (ok, out, err, _) = run(&["blob", "status", &id, "--network", n]);
    assert!(
        ok && out.contains("certified: yes, stored until the end of epoch 2"),
        "{out}{err}"
    );
    let (ok, out, err, _) = run(&["blob", "extend", &id, "--epochs", "3", "--network", n]);
    assert!(ok && out.contains("until the end of epoch 5"), "{out}{err}");
    let (ok, out, err, _) = run(&["blob", "delete", &id, "--network", n]);
    assert!(ok && out.contains("deleted 1 blob object"), "{out}{err}");
    let (ok, _, err, _) = run(&["blob", "get", &id, "-o", "gone", "--network", n]);
    assert!(!ok && err.contains("not stored on this network"), "{err}");
    let (ok, _, err, _) = run(&["blob", "delete", &id, "--network", n]);
    assert!(
        !ok && err.contains("no live deletable blob object"),
        "{err}"
    );

    let (ok, _, err, _) = run(&[
        "blob",
        "get",
        &id,
        "-o",
        "x",
        "--network",
        "/nonexistent/network.toml",
    ]);
    assert!(!ok && err.contains("no network file at"), "{err}");
    let (ok, _, err, _) = run(&["blob", "get", "not-a-blob-id", "-o", "x", "--network", n]);
    assert!(!ok && err.contains("is not a blob ID"), "{err}");
}

/// Stops the devnet in `dir` when dropped, even if the test fails.
fn scopeguard(dir: std::path::PathBuf) -> impl Drop {
    struct Down(std::path::PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = Devnet::new(&self.0).down(false);
        }
    }
    Down(dir)
}
