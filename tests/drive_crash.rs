//! SIGKILL in the middle of a copy: every file whose close(2) returned survives, byte for byte,
//! and reaches the network (certified) after the remount.

mod common;

use std::fs;
use std::io::Write as _;
use std::os::fd::IntoRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Mount;

const FILES: usize = 1000;
const KILL_AFTER: usize = 400;

/// Sizes vary: some empty, some about 1 MiB, most a few KiB.
fn content(i: usize) -> Vec<u8> {
    let len = match i % 40 {
        0 | 1 => 0,
        2 => (1 << 20) + i,
        3 => 1_000_000 - i,
        4..=9 => (i * 7919) % 200_000 + 1,
        _ => (i * 104_729) % 20_000 + 1,
    };
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn rel(i: usize) -> PathBuf {
    PathBuf::from(format!("d{}/f{i}", i % 10))
}

/// Writes one file and closes it, reporting errors of close itself (where the drive says
/// whether the data was taken).
fn copy_one(root: &Path, i: usize) -> std::io::Result<()> {
    let mut f = fs::File::create(root.join(rel(i)))?;
    f.write_all(&content(i))?;
    if i % 50 == 7 {
        f.sync_all()?;
    }
    let fd = f.into_raw_fd();
    // SAFETY: we own fd and close it once.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn verify(root: &Path, done: &[usize], when: &str) {
    for &i in done {
        let got = fs::read(root.join(rel(i)))
            .unwrap_or_else(|e| panic!("{when}: file {i} ({:?}) unreadable: {e}", rel(i)));
        let want = content(i);
        assert!(
            got == want,
            "{when}: file {i} differs: {} bytes, want {}",
            got.len(),
            want.len()
        );
    }
}

fn wait_uploaded(data: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let n = common::pending_uploads(data);
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} uploads still pending after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn closed_files_survive_sigkill_and_reach_the_network() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    let m = Mount::start(&data, &mnt, &[]);
    for d in 0..10 {
        fs::create_dir(m.path(&format!("d{d}"))).unwrap();
    }

    // Writers (several at once, as `cp -r` with parallel jobs) record each file once its
    // close returned.
    const WRITERS: usize = 4;
    let (tx, rx) = mpsc::channel::<usize>();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (stop, tx, root) = (stop.clone(), tx.clone(), m.mnt.clone());
            std::thread::spawn(move || {
                for i in (t..FILES).step_by(WRITERS) {
                    if stop.load(Ordering::Relaxed) {
                        return true;
                    }
                    match copy_one(&root, i) {
                        Ok(()) => tx.send(i).unwrap(),
                        Err(_) => return true,
                    }
                }
                false
            })
        })
        .collect();
    drop(tx);
    let mut done = Vec::new();
    while done.len() < KILL_AFTER {
        done.push(
            rx.recv_timeout(Duration::from_secs(120))
                .expect("writers stalled"),
        );
    }
    m.kill();
    stop.store(true, Ordering::Relaxed);
    let interrupted = writers
        .into_iter()
        .map(|w| w.join().unwrap())
        .filter(|&i| i)
        .count();
    done.extend(rx.try_iter());
    assert!(
        interrupted > 0,
        "the writers finished before the kill; nothing was interrupted"
    );
    let killed_at = done.len();
    let pending_at_kill = common::pending_uploads(&data);

    let m = Mount::start(&data, &mnt, &[]);
    verify(&m.mnt, &done, "after SIGKILL");
    wait_uploaded(&data, Duration::from_secs(300));
    verify(&m.mnt, &done, "after the uploads");
    m.unmount();
    assert_eq!(common::pending_uploads(&data), 0);

    // Without the local cache every byte comes from the storage nodes.
    fs::remove_dir_all(data.join("drive/cache")).unwrap();
    let staging: Vec<_> = fs::read_dir(data.join("drive/staging")).unwrap().collect();
    assert!(
        staging.is_empty(),
        "staging files left after all uploads: {}",
        staging.len()
    );
    let m = Mount::start(&data, &mnt, &[]);
    verify(&m.mnt, &done, "from the network");
    m.unmount();
    eprintln!(
        "{killed_at} files closed before the kill ({pending_at_kill} uploads pending then), \
         all intact after the remount, certified, and read back from the network"
    );
}

/// Pages written but not yet written back when the mount dies: close(2) must fail, never
/// report success for bytes the drive never received. (The kernel drops a writeback it
/// cannot send on a broken connection without an error; only a `FLUSH` that fails tells
/// the closer. A mount that switched flushes off answered such closes with 0.)
#[test]
fn a_close_after_the_mount_died_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    let mut m = Mount::start(&data, &mnt, &[]);
    // A first close on the mount, so that whatever it answers to flushes is settled.
    fs::write(m.path("first"), b"first").unwrap();
    let mut f = fs::File::create(m.path("second")).unwrap();
    f.write_all(&content(2)).unwrap();
    m.kill_process();
    let fd = f.into_raw_fd();
    // As the kernel's flusher thread does for its own reasons (dirty limits, age) at any
    // time: write the pages and the inode back. Nothing can be sent any more; the pages are
    // dropped as written and the inode's times as clean, and no error is kept for close.
    // SAFETY: fd is open.
    unsafe { libc::syncfs(fd) };
    // SAFETY: we own fd and close it once.
    let rc = unsafe { libc::close(fd) };
    let err = std::io::Error::last_os_error();
    m.kill();
    assert_ne!(
        rc, 0,
        "close(2) of a file with unwritten pages returned 0 after the mount process died"
    );
    eprintln!("close after the mount died: {err}");
}
