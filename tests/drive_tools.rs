//! Real tools on a real FUSE mount: rsync, tar, git and dd, with what they wrote compared
//! after remounts (data then comes back from the storage nodes).
//!
//! The tools come from `scripts/setup` (rsync, acl, attr, git); a test whose tool is missing
//! says so and passes.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::Mount;

struct Env {
    tmp: tempfile::TempDir,
    data: PathBuf,
    mnt: PathBuf,
}

impl Env {
    fn new() -> (Env, Mount) {
        let tmp = tempfile::tempdir().unwrap();
        let env = Env {
            data: tmp.path().join("data"),
            mnt: tmp.path().join("mnt"),
            tmp,
        };
        let m = env.mount();
        (env, m)
    }

    fn mount(&self) -> Mount {
        Mount::start(&self.data, &self.mnt, &[])
    }

    fn local(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Unmounts (uploads finish first), drops every local copy of file content, mounts again.
    fn remount_cold(&self, m: Mount) -> Mount {
        m.unmount();
        assert_eq!(
            common::pending_uploads(&self.data),
            0,
            "uploads left pending"
        );
        fs::remove_dir_all(self.data.join("drive/cache")).unwrap();
        self.mount()
    }
}

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("{tool} is missing (scripts/setup installs it); test skipped");
    }
    found
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(script: &str) -> String {
    run(Command::new("bash").arg("-c").arg(script))
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn cs(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn set_times(path: &Path, mtime: (i64, i64)) {
    let c = cs(path);
    let ts = [
        libc::timespec {
            tv_sec: mtime.0 - 1000,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    // SAFETY: a valid C string and two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

fn lsetxattr(path: &Path, name: &str, value: &[u8]) {
    let (c, n) = (cs(path), CString::new(name).unwrap());
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name} on {}", path.display());
}

/// Every xattr of `path` (not following symlinks), sorted by name.
fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = cs(path);
    // SAFETY: NULL with size 0 asks for the size.
    let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    assert!(n >= 0, "listxattr {}", path.display());
    let mut names = vec![0u8; n as usize];
    // SAFETY: a buffer of the size asked for.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0);
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut buf = vec![0u8; 70_000];
        // SAFETY: a buffer of its own size.
        let r =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(r >= 0, "getxattr {}", path.display());
        buf.truncate(r as usize);
        out.push((name.to_vec(), buf));
    }
    out.sort();
    out
}

/// What a tree holds, path by path: type, mode, owner, link count, size, mtime (ns), content
/// hash or link target, xattrs (ACLs included), and which paths are one inode.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    size: Option<u64>,
    mtime: (i64, i64),
    content: Option<String>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The first path (in order) of the same inode, for hard links.
    same_as: Option<PathBuf>,
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        out.push(rel.to_path_buf());
        let p = root.join(rel);
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            let mut names: Vec<_> = fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                walk(root, &rel.join(n), out);
            }
        }
    }
    let mut paths = Vec::new();
    walk(root, Path::new(""), &mut paths);
    let mut first_of_ino = BTreeMap::new();
    let mut out = BTreeMap::new();
    for rel in paths {
        let p = root.join(&rel);
        let st = fs::symlink_metadata(&p).unwrap();
        let ft = st.file_type();
        let (kind, size, content) = if ft.is_symlink() {
            let t = fs::read_link(&p).unwrap();
            ("symlink", Some(st.len()), Some(t.display().to_string()))
        } else if ft.is_dir() {
            ("dir", None, None)
        } else if ft.is_file() {
            let bytes = fs::read(&p).unwrap();
            (
                "file",
                Some(st.len()),
                Some(blake3::hash(&bytes).to_hex().to_string()),
            )
        } else {
            ("special", Some(st.len()), None)
        };
        let same_as = if !ft.is_dir() && st.nlink() > 1 {
            let first = first_of_ino.entry(st.ino()).or_insert_with(|| rel.clone());
            Some(first.clone())
        } else {
            None
        };
        out.insert(
            rel,
            Node {
                kind,
                mode: st.mode(),
                uid: st.uid(),
                gid: st.gid(),
                nlink: st.nlink(),
                size,
                mtime: (st.mtime(), st.mtime_nsec()),
                content,
                xattrs: xattrs(&p),
                same_as,
            },
        );
    }
    out
}

fn assert_same_tree(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    let ka: Vec<_> = sa.keys().collect();
    let kb: Vec<_> = sb.keys().collect();
    assert_eq!(ka, kb, "paths of {} and {}", a.display(), b.display());
    for (path, na) in &sa {
        assert_eq!(
            na,
            &sb[path],
            "{:?} differs between {} and {}",
            path,
            a.display(),
            b.display()
        );
    }
}

/// A tree with what tools trip over: hard links, symlinks (dangling too), xattrs, ACLs, odd
/// names, empty files, a sparse file, a fifo, owners, modes and nanosecond mtimes.
fn build_tree(root: &Path, with_acls: bool) {
    fs::create_dir_all(root.join("dir/nested")).unwrap();
    fs::write(root.join("plain.txt"), b"plain text\n").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("dir/nested/deep.bin"), pattern(200_000, 1)).unwrap();
    fs::write(root.join("hard1"), b"linked content").unwrap();
    fs::hard_link(root.join("hard1"), root.join("dir/hard2")).unwrap();
    fs::hard_link(root.join("hard1"), root.join("dir/nested/hard3")).unwrap();
    std::os::unix::fs::symlink("plain.txt", root.join("sym-rel")).unwrap();
    std::os::unix::fs::symlink("../plain.txt", root.join("dir/sym-up")).unwrap();
    std::os::unix::fs::symlink("nowhere/at/all", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("dir", root.join("sym-dir")).unwrap();
    for name in [
        "with space",
        "new\nline",
        "tab\there",
        "ünïcødé-名前",
        "-leading-dash",
        "*?[]{}$'\"\\",
        ".hidden",
        &"a".repeat(255),
    ] {
        fs::write(root.join("dir").join(name), name.as_bytes()).unwrap();
    }
    // Sparse: a 5 MiB hole between two pieces of data.
    let f = fs::File::create(root.join("sparse")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"start", 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"end", 5 << 20).unwrap();
    drop(f);
    let fifo = cs(&root.join("fifo"));
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    lsetxattr(&root.join("plain.txt"), "user.a", b"alpha");
    lsetxattr(&root.join("plain.txt"), "user.bin", &[0, 1, 2, 255]);
    lsetxattr(&root.join("dir"), "user.on-dir", b"yes");
    lsetxattr(&root.join("empty"), "user.big", &pattern(2000, 2));
    fs::set_permissions(root.join("plain.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(root.join("hard1"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(root.join("dir/nested"), fs::Permissions::from_mode(0o2750)).unwrap();
    std::os::unix::fs::chown(root.join("dir/nested/deep.bin"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(root.join("sym-rel"), Some(42), Some(43)).unwrap();
    if with_acls {
        fs::create_dir(root.join("acl-dir")).unwrap();
        sh(&format!(
            "setfacl -m u:1234:rw '{p}/plain.txt' && setfacl -m u:4321:rx,g:99:r '{p}/acl-dir' \
             && setfacl -d -m u:1234:rwx '{p}/acl-dir'",
            p = root.display()
        ));
        fs::write(root.join("acl-dir/inherits"), b"x").unwrap();
    }
    // Distinct mtimes with nanoseconds on everything, directories after their content.
    // (rsync compares mtimes to the second only, so nothing may keep an mtime from the
    // second the copy runs in.)
    fn stamp_all(p: &Path, n: &mut i64) {
        let st = fs::symlink_metadata(p).unwrap();
        if st.is_dir() {
            let mut names: Vec<_> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for name in names {
                stamp_all(&p.join(name), n);
            }
        }
        *n += 1;
        set_times(p, (1_600_000_000 + *n * 1000, *n * 1_234_567 + 89));
    }
    stamp_all(root, &mut 0);
}

#[test]
fn rsync_round_trip_keeps_everything() {
    if !have("rsync") || !have("setfacl") {
        return;
    }
    let (env, m) = Env::new();
    let src = env.local("src");
    build_tree(&src, true);
    let dst = m.path("copy");
    let t = Instant::now();
    run(Command::new("rsync")
        .arg("-aHAX")
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display())));
    eprintln!("rsync into the mount: {:?}", t.elapsed());
    assert_same_tree(&src, &dst);
    // A second rsync finds nothing to do: sizes and mtimes match.
    let out = run(Command::new("rsync")
        .args(["-aHAX", "--itemize-changes"])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display())));
    assert_eq!(out.trim(), "", "second rsync changed things:\n{out}");
    let m = env.remount_cold(m);
    let dst = m.path("copy");
    assert_same_tree(&src, &dst);
    let out_dir = env.local("out");
    run(Command::new("rsync")
        .arg("-aHAX")
        .arg(format!("{}/", dst.display()))
        .arg(format!("{}/", out_dir.display())));
    assert_same_tree(&src, &out_dir);
    run(Command::new("diff")
        .args(["-r", "--no-dereference", "--exclude=fifo"])
        .arg(&src)
        .arg(&out_dir));
    // ACLs as getfacl prints them (one block per file, in readdir order: sorted here).
    let facl = |root: &Path| {
        let out = sh(&format!(
            "cd '{}' && getfacl -R -P -n . 2>/dev/null",
            root.display()
        ));
        let mut blocks: Vec<String> = out.split("\n\n").map(str::to_owned).collect();
        blocks.sort();
        blocks
    };
    assert_eq!(facl(&src), facl(&dst));
    assert_eq!(facl(&src), facl(&out_dir));
    m.unmount();
}

#[test]
fn tar_round_trip_keeps_listing_and_content() {
    let (env, m) = Env::new();
    let src = env.local("src");
    build_tree(&src, false);
    let t1 = env.local("t1.tar");
    let t2 = env.local("t2.tar");
    let create = |archive: &Path, dir: &Path| {
        run(Command::new("tar")
            .args(["--format=gnu", "--sort=name", "--numeric-owner", "-cf"])
            .arg(archive)
            .arg("-C")
            .arg(dir)
            .arg("."));
    };
    let listing = |archive: &Path| {
        run(Command::new("tar")
            .args(["--numeric-owner", "--full-time", "-tvf"])
            .arg(archive))
    };
    create(&t1, &src);
    let x = m.path("x");
    fs::create_dir(&x).unwrap();
    let t = Instant::now();
    run(Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(&t1)
        .arg("-C")
        .arg(&x));
    eprintln!("tar extract into the mount: {:?}", t.elapsed());
    create(&t2, &x);
    assert_eq!(listing(&t1), listing(&t2));
    assert!(
        fs::read(&t1).unwrap() == fs::read(&t2).unwrap(),
        "archives differ"
    );
    // After a cold remount (content from the network), the same again.
    let m = env.remount_cold(m);
    let t3 = env.local("t3.tar");
    create(&t3, &m.path("x"));
    assert!(
        fs::read(&t1).unwrap() == fs::read(&t3).unwrap(),
        "archives differ after remount"
    );
    let out = env.local("out");
    fs::create_dir(&out).unwrap();
    run(Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(&t3)
        .arg("-C")
        .arg(&out));
    run(Command::new("diff")
        .args(["-r", "--no-dereference", "--exclude=fifo"])
        .arg(&src)
        .arg(&out));
    m.unmount();
}

#[test]
fn git_clone_onto_the_drive_passes_fsck() {
    if !have("git") {
        return;
    }
    let (env, m) = Env::new();
    // A repository with some history of our own, so the test does not depend on where it runs.
    let origin = env.local("origin");
    let here = env!("CARGO_MANIFEST_DIR");
    let git = |dir: &Path, args: &[&str]| {
        run(Command::new("git")
            .args([
                "-c",
                "safe.directory=*",
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
            ])
            .arg("-C")
            .arg(dir)
            .args(args))
    };
    run(Command::new("git")
        .args([
            "-c",
            "safe.directory=*",
            "clone",
            "--quiet",
            "--no-hardlinks",
            here,
        ])
        .arg(&origin));
    // More history: a few commits on top, with a rename and a deletion.
    fs::write(origin.join("added.txt"), b"added\n").unwrap();
    git(&origin, &["add", "added.txt"]);
    git(&origin, &["commit", "--quiet", "-m", "add"]);
    git(&origin, &["mv", "added.txt", "renamed.txt"]);
    git(&origin, &["commit", "--quiet", "-m", "rename"]);
    let repo = m.path("repo");
    let t = Instant::now();
    run(Command::new("git")
        .args([
            "-c",
            "safe.directory=*",
            "clone",
            "--quiet",
            "--no-hardlinks",
        ])
        .arg(&origin)
        .arg(&repo));
    eprintln!("git clone onto the mount: {:?}", t.elapsed());
    git(&repo, &["fsck", "--full", "--strict"]);
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    let head = git(&origin, &["rev-parse", "HEAD"]);
    assert_eq!(git(&repo, &["rev-parse", "HEAD"]), head);
    // Work in the clone: commit, gc (repacks: rename, mmap, unlink), then check again.
    fs::write(repo.join("new-file"), b"on the drive\n").unwrap();
    git(&repo, &["add", "new-file"]);
    git(&repo, &["commit", "--quiet", "-m", "on the drive"]);
    git(&repo, &["gc", "--quiet", "--prune=now"]);
    git(&repo, &["fsck", "--full", "--strict"]);
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let m = env.remount_cold(m);
    let repo = m.path("repo");
    git(&repo, &["fsck", "--full", "--strict"]);
    assert_eq!(git(&repo, &["rev-parse", "HEAD"]), head);
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    let files = git(&repo, &["ls-files"]);
    assert!(files.lines().any(|l| l == "new-file"));
    assert_eq!(
        files.lines().count(),
        git(&origin, &["ls-files"]).lines().count() + 1
    );
    m.unmount();
}

/// 2 GiB of AES-CTR keystream (deterministic: fixed password, no salt), written with dd and
/// checked by SHA-256 after a cold remount.
#[test]
fn two_gib_file_written_with_dd_survives_remount() {
    if !have("openssl") || !have("sha256sum") {
        return;
    }
    let (env, m) = Env::new();
    let size: u64 = 2 << 30;
    let stream = format!(
        "openssl enc -aes-256-ctr -nosalt -pbkdf2 -pass pass:walrusfs -in /dev/zero 2>/dev/null \
         | head -c {size}"
    );
    let want = sh(&format!("{stream} | sha256sum"));
    let big = m.path("big");
    let t = Instant::now();
    sh(&format!(
        "{stream} | dd of='{}' bs=1M iflag=fullblock conv=fsync status=none",
        big.display()
    ));
    let written = t.elapsed();
    assert_eq!(fs::metadata(&big).unwrap().len(), size);
    let t = Instant::now();
    let m = env.remount_cold(m);
    let remount = t.elapsed();
    let t = Instant::now();
    let got = sh(&format!("sha256sum < '{}'", m.path("big").display()));
    let read = t.elapsed();
    eprintln!(
        "2 GiB: dd + fsync (certified) {written:?}, unmount + cold remount {remount:?}, \
         sha256 read from the network {read:?}"
    );
    assert_eq!(got, want);
    m.unmount();
}
