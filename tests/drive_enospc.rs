//! A full local disk: writes fail with ENOSPC, nothing already written is lost, and the drive
//! works again once space is freed.

mod common;

use std::io::Write as _;
use std::process::Command;

use common::Mount;

/// A small tmpfs for the drive's data directory (needs root; CI runs as root).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes 400 MiB into a drive whose data directory has 96 MiB, and returns the error the
/// application saw: from write(2), or at the latest from fsync.
fn fill(m: &Mount, name: &str) -> std::io::Error {
    let mut f = std::fs::File::create(m.path(name)).unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..400 {
        if let Err(e) = f.write_all(&chunk) {
            return e;
        }
    }
    f.sync_all()
        .expect_err("writing 400 MiB into 96 MiB must fail by fsync")
}

fn full_disk(mount_flags: &[&str], error_at_write: bool) {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let disk = SmallDisk::new("96m").expect("mount a tmpfs");
    let tmp = tempfile::tempdir().unwrap();
    let data = disk.dir.path().join("data");
    let mnt = tmp.path().join("mnt");
    let m = Mount::start(&data, &mnt, mount_flags);
    let keep: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(m.path("keep"), &keep).unwrap();
    std::fs::File::open(m.path("keep"))
        .unwrap()
        .sync_all()
        .unwrap();

    // Far more than fits: ENOSPC reaches the application; nothing hangs or crashes.
    let mut f = std::fs::File::create(m.path("big")).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut at_write = None;
    for _ in 0..400 {
        if let Err(e) = f.write_all(&chunk) {
            at_write = Some(e);
            break;
        }
    }
    let err = match at_write {
        Some(e) => e,
        None => {
            assert!(
                !error_at_write,
                "write(2) must fail with ENOSPC on this mount"
            );
            f.sync_all().expect_err("fsync must report the lost writes")
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    assert_eq!(std::fs::read(m.path("keep")).unwrap(), keep);

    // Freeing the space makes the drive writable again.
    std::fs::remove_file(m.path("big")).unwrap();
    std::fs::write(m.path("after"), b"room again").unwrap();
    std::fs::File::open(m.path("after"))
        .unwrap()
        .sync_all()
        .unwrap();
    // And a second fill fails the same way, on a drive that has recovered.
    let err = fill(&m, "big2");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    std::fs::remove_file(m.path("big2")).unwrap();
    m.unmount();
    let m = Mount::start(&data, &mnt, mount_flags);
    assert_eq!(std::fs::read(m.path("keep")).unwrap(), keep);
    assert_eq!(std::fs::read(m.path("after")).unwrap(), b"room again");
    m.unmount();
}

/// With the kernel writeback cache (the default), write(2) lands in the page cache: ENOSPC
/// comes back from fsync (or close) once the kernel hands the pages to the drive.
#[test]
fn a_full_disk_gives_enospc_and_loses_nothing() {
    full_disk(&[], false);
}

/// Without it, the write(2) that does not fit fails itself.
#[test]
fn a_full_disk_fails_the_write_itself_without_writeback_cache() {
    full_disk(&["--no-writeback-cache"], true);
}
