//! The test-only LazyFS-like layer of `tests/drive_power.rs` (`tests/lazyfs/mod.rs`), to run by
//! hand: `cargo run --example lazyfs -- STATE_DIR MOUNTPOINT` serves `STATE_DIR/live` on
//! MOUNTPOINT, keeping in `STATE_DIR/disk` only what a completed fsync covered. Unmount it
//! (`fusermount3 -u MOUNTPOINT`) to "cut the power"; run it again to see what survived.

#[path = "../tests/lazyfs/mod.rs"]
mod lazyfs;

use std::path::PathBuf;
use std::time::Duration;

fn mounted(mnt: &std::path::Path) -> bool {
    let want = mnt.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
}

fn main() -> std::io::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [state, mnt] = args.as_slice() else {
        eprintln!("usage: lazyfs STATE_DIR MOUNTPOINT");
        std::process::exit(2);
    };
    std::fs::create_dir_all(mnt)?;
    let mnt = std::fs::canonicalize(mnt)?;
    let session = lazyfs::LazyFs::mount(state, &mnt)?;
    eprintln!(
        "lazyfs: {} mounted over {}; unmount it to cut the power",
        mnt.display(),
        state.display()
    );
    while mounted(&mnt) {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(session);
    Ok(())
}
