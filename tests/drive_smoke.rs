//! The drive through a real FUSE mount: write, remount, read back from the network.

mod common;

use common::Mount;

#[test]
fn files_survive_remount_and_come_back_from_the_network() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    let m = Mount::start(&data, &mnt, &[]);
    let big: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(m.path("big"), &big).unwrap();
    std::fs::write(m.path("small"), b"hello").unwrap();
    std::fs::create_dir(m.path("dir")).unwrap();
    std::fs::File::open(m.path("big"))
        .unwrap()
        .sync_all()
        .unwrap();
    m.unmount();
    assert_eq!(common::pending_uploads(&data), 0);
    // Drop every local copy: what comes back now comes from the storage nodes.
    std::fs::remove_dir_all(data.join("drive/cache")).unwrap();
    let m = Mount::start(&data, &mnt, &[]);
    assert_eq!(std::fs::read(m.path("big")).unwrap(), big);
    assert_eq!(std::fs::read(m.path("small")).unwrap(), b"hello");
    assert!(m.path("dir").is_dir());
    m.unmount();
}

/// VmHWM of a process, in MiB.
fn peak_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

/// The mount's peak memory (its in-process storage nodes included) stays under 512 MiB
/// while it packs, encodes and uploads five 64 MiB blobs, and while a cold read fetches them
/// back. Before the allocator was bounded, a 1 GiB upload peaked at 750–930 MiB.
#[test]
fn peak_memory_stays_bounded_through_uploads_and_a_cold_read() {
    const MIB: usize = 1 << 20;
    const LIMIT_MIB: u64 = 512;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    let m = Mount::start(&data, &mnt, &[]);
    let base: Vec<u8> = (0..MIB as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let chunk = |i: usize| {
        let mut c = base.clone();
        c[..8].copy_from_slice(&(i as u64).to_le_bytes());
        c
    };
    let n = 320;
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(m.path("big")).unwrap();
        for i in 0..n {
            f.write_all(&chunk(i)).unwrap();
        }
        // fsync returns once the file is certified on the network.
        f.sync_all().unwrap();
    }
    let upload_peak = peak_mib(m.pid());
    m.unmount();
    assert_eq!(common::pending_uploads(&data), 0);
    assert!(
        upload_peak < LIMIT_MIB,
        "uploading {n} MiB peaked at {upload_peak} MiB"
    );

    std::fs::remove_dir_all(data.join("drive/cache")).unwrap();
    let m = Mount::start(&data, &mnt, &[]);
    {
        use std::io::Read as _;
        let mut f = std::fs::File::open(m.path("big")).unwrap();
        let mut buf = vec![0u8; MIB];
        for i in 0..n {
            f.read_exact(&mut buf).unwrap();
            assert!(buf == chunk(i), "MiB {i} differs");
        }
    }
    let read_peak = peak_mib(m.pid());
    m.unmount();
    eprintln!("peak memory: upload {upload_peak} MiB, cold read {read_peak} MiB");
    assert!(
        read_peak < LIMIT_MIB,
        "a cold read of {n} MiB peaked at {read_peak} MiB"
    );
}
