//! Running walrusfs like real software: the systemd units' commands as written (with a
//! NOTIFY_SOCKET of our own, since PID 1 here is not systemd), `systemd-analyze verify`, the
//! fstab mount helper, `status --json` and `flush` against a real upload, config errors.

mod common;

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{EXE, Mount, pending_uploads};

const UNIT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");
/// Where the units expect the binary; replaced by the one under test.
const INSTALLED_EXE: &str = "/usr/local/bin/walrusfs";

fn walrusfs(args: &[&str]) -> Output {
    Command::new(EXE).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn is_mounted(mnt: &Path) -> bool {
    let want = mnt.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_ref()))
}

fn status_json(mnt: &Path) -> serde_json::Value {
    let o = walrusfs(&["status", "--json", mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A pseudo-random, incompressible buffer.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn status_json_during_upload_then_flush_empties_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let m = Mount::start(&tmp.path().join("data"), &tmp.path().join("mnt"), &[]);
    let data = noise(48 << 20, 7);
    // Written, closed (queued) and at once opened for writing again: the uploader leaves a
    // file open for writing alone until someone asks for it, so the upload is pending for
    // sure when status looks.
    std::fs::write(m.path("big"), &data).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.path("big"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let s = status_json(&m.mnt);
    assert_eq!(s["version"], 1);
    assert_eq!(s["mountpoint"], m.mnt.to_str().unwrap());
    assert_eq!(
        s["data_dir"],
        std::fs::canonicalize(&m.data_dir)
            .unwrap()
            .to_str()
            .unwrap()
    );
    assert_eq!(s["network"]["kind"], "embedded");
    assert_eq!(s["network"]["epoch"], 0);
    assert_eq!(s["read_only"], false);
    assert!(s["pending"]["files"].as_u64().unwrap() >= 1, "{s:#}");
    assert!(
        s["pending"]["bytes"].as_u64().unwrap() >= data.len() as u64,
        "{s:#}"
    );
    assert!(s["pending"]["oldest_age_secs"].as_f64().is_some(), "{s:#}");
    assert!(s["cache"]["bytes_written"].as_u64().unwrap() >= data.len() as u64);
    let nodes = s["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 7);
    assert!(nodes.iter().all(|n| n["healthy"] == true), "{s:#}");
    for key in ["certified", "expiring", "cache", "files"] {
        assert!(s[key].is_object(), "{key} missing: {s:#}");
    }

    assert_eq!(pending_uploads(&m.data_dir), 1);

    // flush takes even the file still open, and returns only once the queue is empty.
    let o = walrusfs(&["flush", m.mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(pending_uploads(&m.data_dir), 0);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("flushed: 1 file(s)"),
        "{}",
        text(&o)
    );
    drop(f);
    let s = status_json(&m.mnt);
    assert_eq!(s["pending"]["files"], 0, "{s:#}");
    assert_eq!(s["pending"]["bytes"], 0, "{s:#}");
    assert!(s["pending"]["oldest_age_secs"].is_null());
    assert!(s["certified"]["blobs"].as_u64().unwrap() > 0, "{s:#}");
    assert!(s["certified"]["bytes"].as_u64().unwrap() >= data.len() as u64);
    assert!(
        s["certified"]["encoded_bytes"].as_u64().unwrap()
            > s["certified"]["bytes"].as_u64().unwrap()
    );
    assert_eq!(s["expiring"]["within_epochs"], 2);
    assert_eq!(s["expiring"]["blobs"], 0, "blobs live 5 epochs: {s:#}");

    // Reads are counted by where they come from (past the page cache, which would answer
    // them without asking the drive).
    {
        use std::os::fd::AsRawFd as _;
        let f = std::fs::File::open(m.path("big")).unwrap();
        // SAFETY: an open descriptor; advice only.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    assert_eq!(std::fs::read(m.path("big")).unwrap(), data);
    let s = status_json(&m.mnt);
    let reads = &s["cache"]["reads"];
    let total: u64 = ["staging", "file_cache", "extent_cache", "network"]
        .iter()
        .map(|k| reads[k].as_u64().unwrap())
        .sum();
    assert!(total > 0, "{s:#}");
    assert!(s["cache"]["hit_rate"].as_f64().is_some());

    // A second flush with nothing pending returns at once.
    let o = walrusfs(&["flush", m.mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing pending"));

    // Human output, and the socket is the documented one.
    let o = walrusfs(&["status", m.mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("7 of 7 healthy") && out.contains("certified:"),
        "{out}"
    );
    let sock = std::fs::canonicalize(&m.data_dir)
        .unwrap()
        .join("drive/control.sock");
    assert!(sock.exists());
    let data_dir = m.data_dir.clone();
    m.unmount();
    assert!(!sock.exists(), "the control socket is removed on exit");
    let o = walrusfs(&["status", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is it mounted"),
        "{}",
        text(&o)
    );
}

// ---- systemd units, run as written ----------------------------------------------------

/// `systemd-escape --path`.
fn escape_path(p: &Path) -> String {
    let s = p.to_str().unwrap().trim_matches('/');
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        match c {
            '/' => out.push('-'),
            '.' if i == 0 => out.push_str("\\x2e"),
            c if c.is_ascii_alphanumeric() || ":_.".contains(c) => out.push(c),
            c => {
                let mut b = [0; 4];
                for byte in c.encode_utf8(&mut b).bytes() {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
            }
        }
    }
    out
}

/// A unit file's directives of `[Service]` (all values of repeated keys, in order).
fn service_section(unit: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(UNIT_DIR).join(unit)).unwrap();
    let mut in_service = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap();
        out.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    out
}

/// One Exec line made runnable: specifiers and `${VAR}` substituted, the installed binary
/// replaced by the one under test. Returns (may fail, argv).
fn exec_line(
    line: &str,
    specifiers: &HashMap<char, String>,
    env: &HashMap<String, String>,
) -> (bool, Vec<String>) {
    let mut line = line;
    let mut may_fail = false;
    while let Some(rest) = line.strip_prefix(['-', '@', '+', ':', '!']) {
        may_fail |= line.starts_with('-');
        line = rest;
    }
    let mut s = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '%' {
            let k = chars.next().unwrap();
            if k == '%' {
                s.push('%');
            } else {
                s.push_str(
                    specifiers
                        .get(&k)
                        .unwrap_or_else(|| panic!("specifier %{k} not handled by the test")),
                );
            }
        } else {
            s.push(c);
        }
    }
    let argv = s
        .split_whitespace()
        .map(|w| {
            let mut w = w.to_owned();
            for (k, v) in env {
                w = w.replace(&format!("${{{k}}}"), v);
            }
            assert!(!w.contains('$'), "unsubstituted variable in {w}");
            if w == INSTALLED_EXE {
                EXE.to_owned()
            } else {
                w
            }
        })
        .collect();
    (may_fail, argv)
}

fn environment(
    directives: &[(String, String)],
    specifiers: &HashMap<char, String>,
) -> HashMap<String, String> {
    directives
        .iter()
        .filter(|(k, _)| k == "Environment")
        .map(|(_, v)| {
            let (_, argv) = exec_line(v, specifiers, &HashMap::new());
            let (k, v) = argv[0].split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The datagram socket systemd would listen on.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self {
            sock,
            path,
            seen: Vec::new(),
        }
    }

    /// Waits for a message holding the line `want`, while `child` runs.
    fn expect(&mut self, want: &str, child: &mut Child, timeout: Duration, log: &Path) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.seen.iter().any(|m| m.lines().any(|l| l == want)) {
                return;
            }
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                continue;
            }
            let log = std::fs::read_to_string(log).unwrap_or_default();
            if want == "READY=1"
                && let Some(status) = child.try_wait().unwrap()
            {
                panic!(
                    "exited ({status}) before {want}; messages {:?}\n{log}",
                    self.seen
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {want} in {timeout:?}; messages {:?}\n{log}",
                self.seen
            );
        }
    }
}

fn run_exec(argv: &[String], env: &HashMap<String, String>, notify: &Path) -> Output {
    Command::new(&argv[0])
        .args(&argv[1..])
        .envs(env)
        .env("NOTIFY_SOCKET", notify)
        .output()
        .unwrap()
}

fn wait_exit(child: &mut Child, timeout: Duration, log: &Path) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "did not exit in {timeout:?}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mount_unit_start_and_stop_commands_notify_and_flush() {
    let tmp = tempfile::Builder::new()
        .prefix("wfsunit")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    let mnt = root.join("mnt");
    let instance = escape_path(&mnt);
    let specifiers: HashMap<char, String> = [
        ('i', instance.clone()),
        (
            'I',
            mnt.to_str().unwrap().trim_start_matches('/').to_owned(),
        ),
        ('f', mnt.to_str().unwrap().to_owned()),
        ('S', root.join("state").to_str().unwrap().to_owned()),
        ('E', root.join("etc").to_str().unwrap().to_owned()),
        ('t', root.join("run").to_str().unwrap().to_owned()),
    ]
    .into();
    let directives = service_section("walrusfs@.service");
    assert!(directives.contains(&("Type".into(), "notify".into())));
    let env = environment(&directives, &specifiers);
    let grace: u64 = env["WALRUSFS_UPLOAD_GRACE"].parse().unwrap();
    let flush_timeout: u64 = env["WALRUSFS_FLUSH_TIMEOUT"].parse().unwrap();
    let stop_timeout: u64 = directives
        .iter()
        .find(|(k, _)| k == "TimeoutStopSec")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    assert!(
        stop_timeout > grace + flush_timeout,
        "TimeoutStopSec must cover the flush and the upload grace"
    );
    let lines = |key: &str| -> Vec<(bool, Vec<String>)> {
        directives
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| exec_line(v, &specifiers, &env))
            .collect()
    };
    let mut notify = NotifySocket::bind(root);

    for (_, argv) in lines("ExecStartPre") {
        let o = run_exec(&argv, &env, &notify.path);
        assert!(o.status.success(), "{argv:?}: {}", text(&o));
    }
    assert!(mnt.is_dir(), "ExecStartPre creates the mount point");
    let start = lines("ExecStart");
    assert_eq!(start.len(), 1);
    let log = root.join("service.log");
    let logf = std::fs::File::create(&log).unwrap();
    let argv = &start[0].1;
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .envs(&env)
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap();
    notify.expect("READY=1", &mut child, Duration::from_secs(90), &log);
    assert!(is_mounted(&mnt), "READY=1 comes once mounted");
    let data_dir = root.join("state/walrusfs").join(&instance);
    assert!(data_dir.join("drive/meta.db").exists());

    // Pending uploads at stop time: ExecStop waits for them.
    let data = noise(24 << 20, 3);
    std::fs::write(mnt.join("file"), &data).unwrap();
    for (may_fail, argv) in lines("ExecStop") {
        let o = run_exec(&argv, &env, &notify.path);
        assert!(
            o.status.success(),
            "{argv:?} (may fail: {may_fail}): {}",
            text(&o)
        );
    }
    notify.expect("STOPPING=1", &mut child, Duration::from_secs(30), &log);
    let status = wait_exit(&mut child, Duration::from_secs(stop_timeout), &log);
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&mnt));
    assert_eq!(pending_uploads(&data_dir), 0, "nothing left pending");
    assert!(!data_dir.join("drive/control.sock").exists());
}

#[test]
fn node_unit_start_and_stop_notify() {
    let tmp = tempfile::Builder::new()
        .prefix("wfsnode")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    let devnet = root.join("devnet");
    let d = devnet.to_str().unwrap();
    let o = walrusfs(&["devnet", "up", "--dir", d, "--nodes", "4", "--shards", "10"]);
    assert!(o.status.success(), "{}", text(&o));
    // Stops the other nodes however the test ends.
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = walrusfs(&["devnet", "down", "--dir", &self.0, "--purge"]);
        }
    }
    let _down = Down(d.to_owned());
    let o = walrusfs(&["devnet", "stop-node", "0", "--dir", d]);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::create_dir_all(root.join("etc/walrusfs")).unwrap();
    std::os::unix::fs::symlink(
        devnet.join("nodes/0/node.toml"),
        root.join("etc/walrusfs/node-0.toml"),
    )
    .unwrap();

    let specifiers: HashMap<char, String> = [
        ('i', "0".to_owned()),
        ('I', "0".to_owned()),
        ('E', root.join("etc").to_str().unwrap().to_owned()),
    ]
    .into();
    let directives = service_section("walrusfs-node@.service");
    assert!(directives.contains(&("Type".into(), "notify".into())));
    let env = environment(&directives, &specifiers);
    let start: Vec<_> = directives
        .iter()
        .filter(|(k, _)| k == "ExecStart")
        .map(|(_, v)| exec_line(v, &specifiers, &env))
        .collect();
    assert_eq!(start.len(), 1);
    assert!(
        !directives.iter().any(|(k, _)| k == "ExecStop"),
        "the node stops on SIGTERM"
    );
    let mut notify = NotifySocket::bind(root);
    let log = root.join("node.log");
    let logf = std::fs::File::create(&log).unwrap();
    let argv = &start[0].1;
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .envs(&env)
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap();
    notify.expect("READY=1", &mut child, Duration::from_secs(30), &log);
    let listening = std::fs::read_to_string(&log).unwrap();
    assert!(
        listening.contains("listening on"),
        "READY=1 comes once listening: {listening}"
    );
    // What systemd does to stop it: SIGTERM.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    notify.expect("STOPPING=1", &mut child, Duration::from_secs(10), &log);
    let status = wait_exit(&mut child, Duration::from_secs(30), &log);
    assert!(status.success(), "{status}");
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("note: systemd-analyze is not installed; unit verification skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for (template, instance) in [
        ("walrusfs@.service", "walrusfs@mnt-drive.service"),
        ("walrusfs-node@.service", "walrusfs-node@0.service"),
    ] {
        let text = std::fs::read_to_string(Path::new(UNIT_DIR).join(template)).unwrap();
        std::fs::write(tmp.path().join(template), text.replace(INSTALLED_EXE, EXE)).unwrap();
        std::os::unix::fs::symlink(template, tmp.path().join(instance)).unwrap();
        names.push(instance);
    }
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .args(names)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(o.stderr.is_empty(), "{all}");
}

// ---- fstab -----------------------------------------------------------------------------

fn wait_pid_gone(pid: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{pid}")).exists() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.split_whitespace().nth(2) == Some("Z") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "mount process {pid} still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Mounts through a helper command, uses the drive, checks `status` finds it from the
/// mount point alone, unmounts.
fn helper_round_trip(cmd: &mut Command, data: &Path, mnt: &Path) {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(is_mounted(mnt), "the helper returns once mounted");
    std::fs::write(mnt.join("hello"), b"from fstab").unwrap();
    assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"from fstab");
    let s = status_json(mnt);
    assert_eq!(
        s["data_dir"],
        std::fs::canonicalize(data).unwrap().to_str().unwrap()
    );
    let pid = s["pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("--epochs 3"), "{cmdline}");
    let o = walrusfs(&["flush", mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = walrusfs(&["umount", mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    wait_pid_gone(pid);
    assert_eq!(pending_uploads(data), 0);
}

#[test]
fn fstab_helper_mounts_as_mount_8_and_mount_fuse3_call_it() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let data = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();

    // As mount(8) runs /sbin/mount.fuse.walrusfs for `-t fuse.walrusfs` (an fstab line).
    let helper = bin.join("mount.fuse.walrusfs");
    std::os::unix::fs::symlink(EXE, &helper).unwrap();
    helper_round_trip(
        Command::new(&helper).arg(&data).arg(&mnt).args([
            "-n",
            "-o",
            "rw,_netdev,noauto,nofail,x-systemd.automount,epochs=3",
        ]),
        &data,
        &mnt,
    );

    // Unknown options are refused before anything is mounted.
    let o = Command::new(&helper)
        .arg(&data)
        .arg(&mnt)
        .args(["-o", "compression=zstd"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown mount option `compression=zstd`"),
        "{}",
        text(&o)
    );
    assert!(!is_mounted(&mnt));

    // As mount.fuse3 runs it: `walrusfs SOURCE MOUNTPOINT -o OPTIONS`, found on PATH.
    let Some(fuse3) = ["/sbin/mount.fuse3", "/usr/sbin/mount.fuse3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        println!("note: mount.fuse3 is not installed; that path is not checked");
        return;
    };
    std::os::unix::fs::symlink(EXE, bin.join("walrusfs")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    helper_round_trip(
        Command::new(fuse3)
            .arg(&data)
            .arg(&mnt)
            .args(["-t", "fuse.walrusfs", "-o", "rw,_netdev,epochs=3"])
            .env("PATH", path),
        &data,
        &mnt,
    );
}

// ---- config ----------------------------------------------------------------------------

#[test]
fn config_errors_name_the_file_the_key_and_what_is_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "data_dri = \"/x\"\n",
            &["unknown field `data_dri`", "data_dir"],
        ),
        ("epochs = 0\n", &["`epochs`", "1 to 1000"]),
        ("epochs = \"five\"\n", &["epochs", "u32"]),
        ("max_pack = \"lots\"\n", &["max_pack", "MiB"]),
        (
            "metrics_addr = \"nowhere\"\n",
            &["`metrics_addr`", "IP:PORT"],
        ),
        ("log = \"walrusfs=chatty\"\n", &["`log`", "RUST_LOG"]),
        ("epochs = [\n", &["not valid"]),
    ];
    for (i, (body, wants)) in cases.iter().enumerate() {
        let file = tmp.path().join(format!("bad{i}.toml"));
        std::fs::write(&file, body).unwrap();
        let o = Command::new(EXE)
            .arg("mount")
            .arg(&mnt)
            .arg("--config")
            .arg(&file)
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{body}: {}", text(&o));
        assert!(err.contains(file.to_str().unwrap()), "{body}: {err}");
        for w in *wants {
            assert!(err.contains(w), "{body}: want {w:?} in {err}");
        }
        assert!(!is_mounted(&mnt));
    }
    let missing = tmp.path().join("missing.toml");
    let o = Command::new(EXE)
        .arg("mount")
        .arg(&mnt)
        .arg("--config")
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("does not exist") && err.contains(missing.to_str().unwrap()),
        "{err}"
    );

    // The default file ($XDG_CONFIG_HOME/walrusfs/config.toml) is read when present, and a
    // flag still wins over it.
    let xdg = tmp.path().join("xdg");
    std::fs::create_dir_all(xdg.join("walrusfs")).unwrap();
    std::fs::write(xdg.join("walrusfs/config.toml"), "epochs = 0\n").unwrap();
    let o = Command::new(EXE)
        .arg("mount")
        .arg(&mnt)
        .env("XDG_CONFIG_HOME", &xdg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("xdg/walrusfs/config.toml") && err.contains("`epochs`"),
        "{err}"
    );
}

#[test]
fn config_file_settings_reach_the_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = tmp.path().join("walrusfs.toml");
    std::fs::write(
        &cfg,
        "data_dir = \"data\"\nread_only = true\nepochs = 2\nlog = \"info\"\n",
    )
    .unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let o = Command::new(EXE)
        .arg("mount")
        .arg(&mnt)
        .arg("--daemon")
        .arg("--config")
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let s = status_json(&mnt);
    assert_eq!(s["read_only"], true, "{s:#}");
    assert_eq!(
        s["data_dir"],
        std::fs::canonicalize(&data).unwrap().to_str().unwrap(),
        "data_dir is relative to the config file"
    );
    assert!(std::fs::write(mnt.join("x"), b"x").is_err(), "read-only");
    let pid = s["pid"].as_u64().unwrap();
    let o = walrusfs(&["umount", mnt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    wait_pid_gone(pid);
    // `log = "info"` from the file: the mount logged at info level.
    let log = std::fs::read_to_string(data.join("mount.log")).unwrap();
    assert!(
        log.contains("INFO") && log.contains("configuration loaded"),
        "{log}"
    );
}
