//! The epoch clock against a real mount: the embedded network is created with short epochs
//! (`WALRUSFS_DEVNET_EPOCH_SECS`, a test-only knob read when the network is created) and
//! blobs bought for few epochs.
//!
//! - A drive left mounted across many epochs keeps every file readable: the uploader
//!   extends blobs before their end, so a cold remount (cache deleted) reads everything back
//!   from the storage nodes.
//! - An unmounted drive renews nothing: once its blobs pass their end epoch, the next mount
//!   reports them (log and `walrusfs status`, with the files using them) and reads of those
//!   files fail with EIO; never wrong bytes.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{EXE, Mount};

const EPOCH_SECS: u64 = 4;
/// Epochs each blob is bought for (and extended by).
const EPOCHS: &str = "3";

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn status_json(mnt: &Path) -> serde_json::Value {
    let out = Command::new(EXE)
        .args(["status", "--json"])
        .arg(mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn epoch(mnt: &Path) -> u64 {
    status_json(mnt)["network"]["epoch"].as_u64().unwrap()
}

fn flush(mnt: &Path) {
    let out = Command::new(EXE)
        .arg("flush")
        .arg(mnt)
        .args(["--timeout", "120"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "flush: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn blobs_live_while_mounted_and_expire_as_documented_when_not() {
    // SAFETY: the only test in this binary; set before any thread or child starts.
    unsafe { std::env::set_var("WALRUSFS_DEVNET_EPOCH_SECS", EPOCH_SECS.to_string()) };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            let len = if i == 0 { 3 << 20 } else { 10_000 + i * 777 };
            (format!("d/f{i}"), pattern(len, i as u64))
        })
        .collect();

    // Mounted across many epochs.
    let m = Mount::start(&data, &mnt, &["--epochs", EPOCHS]);
    std::fs::create_dir(m.path("d")).unwrap();
    for (name, bytes) in &files {
        std::fs::write(m.path(name), bytes).unwrap();
    }
    flush(&m.mnt);
    let first = epoch(&m.mnt);
    let deadline = Instant::now() + Duration::from_secs(EPOCH_SECS * 30);
    while epoch(&m.mnt) < first + 10 {
        assert!(Instant::now() < deadline, "epochs do not advance");
        std::thread::sleep(Duration::from_secs(1));
    }
    let s = status_json(&m.mnt);
    let expired: Vec<_> = s["at_risk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["expired"].as_bool() == Some(true))
        .collect();
    assert!(expired.is_empty(), "expired while mounted: {s}");
    m.unmount();

    // Cold remount right away: every byte comes from the storage nodes.
    std::fs::remove_dir_all(data.join("drive").join("cache")).unwrap();
    let m = Mount::start(&data, &mnt, &["--epochs", EPOCHS]);
    for (name, bytes) in &files {
        let got = std::fs::read(m.path(name))
            .unwrap_or_else(|e| panic!("{name} after {} epochs: {e}\n{}", 10, m.log_text()));
        assert!(&got == bytes, "{name} reads back different bytes");
    }
    let last = epoch(&m.mnt);
    m.unmount();

    // Unmounted: nothing is renewed. Past every blob's end (at most EPOCHS beyond the
    // last renewal, plus the margin), the next mount reports them.
    let epochs: u64 = EPOCHS.parse().unwrap();
    std::thread::sleep(Duration::from_secs(EPOCH_SECS * (epochs + 3)));
    std::fs::remove_dir_all(data.join("drive").join("cache")).unwrap();
    let m = Mount::start(&data, &mnt, &["--epochs", EPOCHS]);
    assert!(epoch(&m.mnt) > last + epochs, "the clock moved on");
    let s = status_json(&m.mnt);
    let at_risk = s["at_risk"].as_array().unwrap();
    assert!(
        !at_risk.is_empty() && at_risk.iter().all(|b| b["expired"] == true),
        "status reports the expired blobs: {s}"
    );
    let named: Vec<&str> = at_risk
        .iter()
        .flat_map(|b| b["files"].as_array().unwrap())
        .filter_map(|f| f.as_str())
        .collect();
    for (name, _) in &files {
        assert!(
            named.contains(&format!("/{name}").as_str()),
            "{name} not named in {named:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !m.log_text().contains("has expired") {
        assert!(Instant::now() < deadline, "no log line:\n{}", m.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    for (name, _) in &files {
        let e = std::fs::read(m.path(name)).expect_err("expired data must not read");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{name}: {e}");
    }
    // The human-readable status says so too.
    let out = Command::new(EXE)
        .arg("status")
        .arg(&m.mnt)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("AT RISK") && text.contains("EXPIRED"),
        "{text}"
    );
    m.unmount();
}
