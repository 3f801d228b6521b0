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
