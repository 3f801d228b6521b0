//! Shared harness for tests against a real FUSE mount: runs `walrusfs mount` (the real
//! binary, embedded network included) on a temporary directory and tears it down.
//!
//! With `WALRUSFS_TEST_BACKEND=walrus-http`, every mount (that names no network itself)
//! runs instead over the TEST-ONLY stand-in publisher, aggregators and Sui full node
//! (`examples/walrus_standin`, built by `cargo test`), one per mount, keeping its blobs in
//! `DATA_DIR/standin` so that remounts find them: the same tests, on the other backend.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const EXE: &str = env!("CARGO_BIN_EXE_walrusfs");

/// A running mount. Dropping it unmounts (lazily if needed) and stops the process.
pub struct Mount {
    pub data_dir: PathBuf,
    pub mnt: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    standin: Option<Child>,
}

/// Starts the stand-in network for a mount of `data_dir` when the tests run on the
/// `walrus-http` backend; returns it and the network file it wrote.
fn start_standin(data_dir: &Path) -> Option<(Child, PathBuf)> {
    use std::io::BufRead as _;
    if std::env::var("WALRUSFS_TEST_BACKEND").ok()?.as_str() != "walrus-http" {
        return None;
    }
    let exe = Path::new(EXE)
        .parent()
        .unwrap()
        .join("examples")
        .join("walrus_standin");
    assert!(
        exe.exists(),
        "{} is missing: build it with `cargo build --examples` (or run `cargo test`)",
        exe.display()
    );
    let mut child = Command::new(&exe)
        .arg(data_dir.join("standin"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(path) = line.strip_prefix("network file: ") {
            return Some((child, PathBuf::from(path)));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the stand-in exited before naming its network file");
}

fn is_mounted(mnt: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = mnt.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_ref()))
}

impl Mount {
    /// Mounts the drive in `data_dir` on `mnt` (both created if missing) with `extra` flags,
    /// and waits until the mount is live.
    pub fn start(data_dir: &Path, mnt: &Path, extra: &[&str]) -> Mount {
        std::fs::create_dir_all(data_dir).unwrap();
        std::fs::create_dir_all(mnt).unwrap();
        let mnt = std::fs::canonicalize(mnt).unwrap();
        let log = data_dir.join(format!(
            "test-mount-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let logf = std::fs::File::create(&log).unwrap();
        let standin = if extra.contains(&"--network") {
            None
        } else {
            start_standin(data_dir)
        };
        let network: Vec<PathBuf> = standin
            .as_ref()
            .map(|(_, p)| vec!["--network".into(), p.clone()])
            .unwrap_or_default();
        let child = Command::new(EXE)
            .arg("mount")
            .arg(&mnt)
            .arg("--data-dir")
            .arg(data_dir)
            .args(&network)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let mut m = Mount {
            data_dir: data_dir.to_path_buf(),
            mnt: mnt.clone(),
            child: Some(child),
            log,
            standin: standin.map(|(c, _)| c),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !is_mounted(&mnt) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("walrusfs mount exited ({status}):\n{}", m.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "mount not ready in 60 s:\n{}",
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Unmounts with `walrusfs umount` and waits for the process to finish its shutdown.
    pub fn unmount(mut self) {
        self.unmount_inner();
    }

    fn unmount_inner(&mut self) {
        if self.child.is_none() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(EXE)
                .arg("umount")
                .arg(&self.mnt)
                .output()
                .unwrap();
            if out.status.success() || !is_mounted(&self.mnt) {
                break;
            }
            // Busy right after a close: the kernel may still be releasing files. On failure
            // the child stays in `self`, so Drop still stops it.
            assert!(
                Instant::now() < deadline,
                "umount failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                assert!(
                    status.success(),
                    "mount exited with {status}:\n{}",
                    self.log_text()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mount process did not stop:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the mount process (no clean shutdown at all) and clears the dead mount.
    /// SIGKILL of the mount process only: the mount point stays, its connection aborted, as
    /// after a crash (`kill` then unmounts it).
    pub fn kill_process(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mnt)
            .status();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new(EXE)
                .arg("umount")
                .arg("--lazy")
                .arg(&self.mnt)
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut s) = self.standin.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

/// Reads the drive's metadata database directly (read-only), for checks on uploads.
pub fn pending_uploads(data_dir: &Path) -> u64 {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("drive").join("meta.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row("SELECT COUNT(*) FROM uploads", [], |r| r.get(0))
        .unwrap()
}
