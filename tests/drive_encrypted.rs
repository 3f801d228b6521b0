//! A real mount on the walrus-http backend, encrypted by default, against the TEST-ONLY
//! stand-in publisher, aggregators and Sui full node (tests/standin): nothing of a file's
//! content or name leaves the machine in the clear; two drives holding the same file send
//! unrelated bytes; tampered blobs and a wrong key give EIO and a clear log line, never
//! garbage.

mod common;
#[path = "standin/mod.rs"]
mod standin;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::Mount;
use standin::sui::SuiStandIn;
use standin::{StandIn, StandInOptions};

struct Net {
    _rt: tokio::runtime::Runtime,
    standin: StandIn,
    file: PathBuf,
    capture: PathBuf,
}

fn network(dir: &Path) -> Net {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let capture = dir.join("captured");
    let (standin, file) = rt.block_on(async {
        let sui = SuiStandIn::start();
        let s = StandIn::start(
            &dir.join("standin"),
            StandInOptions::new(Arc::new(sui.clone())),
        )
        .await
        .unwrap();
        s.update_faults(|f| f.capture_dir = Some(capture.clone()));
        let file = dir.join("network.toml");
        s.write_network_file_for(&file, &sui, "").unwrap();
        // The Sui stand-in lives as long as a handle does: the recorder holds one.
        (s, file)
    });
    Net {
        _rt: rt,
        standin,
        file,
        capture,
    }
}

fn mount(net: &Net, data: &Path, mnt: &Path, extra: &[&str]) -> Mount {
    let mut args = vec!["--network", net.file.to_str().unwrap()];
    args.extend_from_slice(extra);
    Mount::start(data, mnt, &args)
}

fn write_synced(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

fn captured(net: &Net) -> Vec<Vec<u8>> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&net.capture)
        .map(|d| {
            d.flatten()
                .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.into_iter().map(|(_, b)| b).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Some text that compresses nothing and is easy to find.
fn content(seed: u8) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..20_000u32 {
        v.extend_from_slice(format!("PLAINTEXT-MARKER line {i} seed {seed}\n").as_bytes());
    }
    v
}

#[test]
fn nothing_sent_is_plaintext_and_two_drives_send_unrelated_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let net = network(tmp.path());
    let data = content(1);
    let mut sent = Vec::new();
    for drive in ["a", "b"] {
        let m = mount(
            &net,
            &tmp.path().join(format!("data-{drive}")),
            &tmp.path().join(format!("mnt-{drive}")),
            &[],
        );
        write_synced(&m.path("SECRET-NAME-7f3a.txt"), &data);
        assert_eq!(std::fs::read(m.path("SECRET-NAME-7f3a.txt")).unwrap(), data);
        m.unmount();
        let bodies = captured(&net);
        assert!(
            bodies.len() > sent.len(),
            "nothing was sent to the publisher"
        );
        sent = bodies;
    }
    assert!(sent.len() >= 2);
    for body in &sent {
        for needle in [
            &b"PLAINTEXT-MARKER"[..],
            b"SECRET-NAME-7f3a",
            &data[1000..1032],
        ] {
            assert!(
                !contains(body, needle),
                "a request body holds plaintext {:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }
    // Same file, two drives (two keys): no 32-byte window of one drive's blobs appears in
    // the other's.
    let (a, b) = (&sent[0], &sent[sent.len() - 1]);
    let windows: std::collections::HashSet<&[u8]> =
        a.chunks(32).filter(|c| c.len() == 32).collect();
    let shared = b.windows(32).filter(|w| windows.contains(w)).count();
    assert_eq!(
        shared, 0,
        "the two drives' ciphertexts share {shared} windows"
    );

    // And the drive reads it back cold, from the aggregators, through the decryption.
    let data_dir = tmp.path().join("data-a");
    std::fs::remove_dir_all(data_dir.join("drive").join("cache")).unwrap();
    let m = mount(&net, &data_dir, &tmp.path().join("mnt-a"), &[]);
    assert_eq!(std::fs::read(m.path("SECRET-NAME-7f3a.txt")).unwrap(), data);
    m.unmount();
}

#[test]
fn tampered_blobs_and_a_wrong_key_give_eio_never_garbage() {
    let tmp = tempfile::tempdir().unwrap();
    let net = network(tmp.path());
    let data_dir = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    let data = content(2);
    let m = mount(&net, &data_dir, &mnt, &[]);
    write_synced(&m.path("f"), &data);
    m.unmount();
    let blobs: Vec<PathBuf> = std::fs::read_dir(
        net.standin
            .blob_path(&walrusfs::encoding::BlobId([0; 32]))
            .parent()
            .unwrap(),
    )
    .unwrap()
    .flatten()
    .map(|e| e.path())
    .collect();
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    let blob = &blobs[0];
    let original = std::fs::read(blob).unwrap();

    let cold_read = |what: &str| {
        std::fs::remove_dir_all(data_dir.join("drive").join("cache")).unwrap();
        let m = mount(&net, &data_dir, &mnt, &[]);
        let got = std::fs::read(m.path("f"));
        let log = m.log_text();
        m.unmount();
        match got {
            Ok(bytes) => assert_eq!(bytes, data, "{what}: read returned other bytes"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {e}");
                return log;
            }
        }
        panic!("{what}: the read succeeded");
    };

    // One flipped byte in the middle of a frame.
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(blob, &bad).unwrap();
    let log = cold_read("flipped byte");
    assert!(log.contains("tampered"), "{log}");

    // Two frames swapped (same length, each authentic on its own).
    let frame = 64 * 1024 + 16;
    let header = 56;
    let mut bad = original.clone();
    let (f0, f1) = (header, header + frame);
    let first = bad[f0..f0 + frame].to_vec();
    bad.copy_within(f1..f1 + frame, f0);
    bad[f1..f1 + frame].copy_from_slice(&first);
    std::fs::write(blob, &bad).unwrap();
    cold_read("swapped frames");

    // Intact again: the file reads back.
    std::fs::write(blob, &original).unwrap();
    std::fs::remove_dir_all(data_dir.join("drive").join("cache")).unwrap();
    let m = mount(&net, &data_dir, &mnt, &[]);
    assert_eq!(std::fs::read(m.path("f")).unwrap(), data);
    m.unmount();

    // Another drive's key in place of this one's.
    let other = tmp.path().join("other");
    let out = std::process::Command::new(common::EXE)
        .args(["key", "export", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::create_dir_all(other.join("drive")).unwrap();
    let fresh = mount(&net, &other, &tmp.path().join("mnt-other"), &[]);
    fresh.unmount();
    let key = std::fs::read(other.join("drive").join("key")).unwrap();
    let mine = data_dir.join("drive").join("key");
    std::fs::write(&mine, &key).unwrap();
    let log = cold_read("wrong key");
    assert!(log.contains("wrong drive key"), "{log}");
}
