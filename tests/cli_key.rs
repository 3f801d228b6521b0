//! `walrusfs key export` / `key import` as a user runs them: outputs, file modes, refusals
//! and their messages.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::io::AsRawFd as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use walrusfs::blobstore::DriveKey;

fn walrusfs(args: &[&str], home: &Path, stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_walrusfs"))
        .args(args)
        .current_dir(home)
        // Keep the user's own config and data out of it.
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run walrusfs");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn key_file(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("drive/key")
}

#[test]
fn export_then_import_on_another_drive() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let a = home.join("a");
    let a_s = a.to_str().unwrap();

    // No drive, then a drive without a key yet.
    let o = walrusfs(&["key", "export", "--data-dir", a_s], home, None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no drive in"), "{}", stderr(&o));
    std::fs::create_dir_all(a.join("drive")).unwrap();
    let o = walrusfs(&["key", "export", "--data-dir", a_s], home, None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no key yet"), "{}", stderr(&o));

    let (key, created) = DriveKey::load_or_create(&key_file(&a)).unwrap();
    assert!(created);

    // To standard output: the key line only; the warning on standard error.
    let o = walrusfs(&["key", "export", "--data-dir", a_s], home, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o);
    assert_eq!(line.trim_end(), &*key.to_text());
    assert_eq!(line.lines().count(), 1);
    let warning = stderr(&o);
    assert!(
        warning.contains("anyone who has this key can read every file")
            && warning.contains("without it"),
        "{warning}"
    );

    // To a file: mode 0600, and never overwritten.
    let o = walrusfs(
        &["key", "export", "--data-dir", a_s, "-o", "backup.key"],
        home,
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains(&key.id().to_string()), "{}", stderr(&o));
    let backup = home.join("backup.key");
    assert_eq!(mode(&backup), 0o600);
    let o = walrusfs(
        &["key", "export", "--data-dir", a_s, "-o", "backup.key"],
        home,
        None,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("never overwritten"), "{}", stderr(&o));

    // Import from the file into drive B, and from standard input into drive C.
    let b = home.join("b");
    let o = walrusfs(
        &[
            "key",
            "import",
            "backup.key",
            "--data-dir",
            b.to_str().unwrap(),
        ],
        home,
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("installed drive key"), "{}", stderr(&o));
    assert_eq!(mode(&key_file(&b)), 0o600);
    assert_eq!(DriveKey::load(&key_file(&b)).unwrap(), key);
    let c = home.join("c");
    let o = walrusfs(
        &["key", "import", "-", "--data-dir", c.to_str().unwrap()],
        home,
        Some(&line),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(DriveKey::load(&key_file(&c)).unwrap(), key);
    // Again: nothing to change.
    let o = walrusfs(
        &["key", "import", "-", "--data-dir", c.to_str().unwrap()],
        home,
        Some(&line),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing to change"), "{}", stderr(&o));
}

#[test]
fn a_mistyped_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let text = DriveKey::from_bytes([5; 32]).to_text();
    // One character changed in the middle.
    let mut typo = text.as_bytes().to_vec();
    let at = text.len() - 20;
    typo[at] = if typo[at] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    for bad in [typo.as_str(), &text[..text.len() - 3], "walrusfs-key-v1:"] {
        let o = walrusfs(&["key", "import", "-", "--data-dir", "d"], home, Some(bad));
        assert!(!o.status.success(), "{bad}");
        let err = stderr(&o);
        assert!(
            err.contains("does not hold a valid drive key")
                && (err.contains("mistyped") || err.contains("cut short")),
            "{err}"
        );
        assert!(!key_file(&home.join("d")).exists());
    }
}

#[test]
fn import_refuses_to_replace_a_different_key_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let d = home.join("d");
    let d_s = d.to_str().unwrap();
    let (old, _) = DriveKey::load_or_create(&key_file(&d)).unwrap();
    let new = DriveKey::from_bytes([9; 32]);
    let new_text = format!("{}\n", &*new.to_text());

    let o = walrusfs(
        &["key", "import", "-", "--data-dir", d_s],
        home,
        Some(&new_text),
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("different drive key")
            && err.contains("unreadable")
            && err.contains("--force")
            && err.contains(&old.id().to_string()),
        "{err}"
    );
    assert_eq!(DriveKey::load(&key_file(&d)).unwrap(), old);

    let o = walrusfs(
        &["key", "import", "-", "--data-dir", d_s, "--force"],
        home,
        Some(&new_text),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(DriveKey::load(&key_file(&d)).unwrap(), new);
    assert_eq!(mode(&key_file(&d)), 0o600);
    let kept = d.join(format!("drive/key.replaced-{}", old.id()));
    assert!(
        stderr(&o).contains(kept.to_str().unwrap()),
        "{}",
        stderr(&o)
    );
    assert_eq!(DriveKey::load(&kept).unwrap(), old);
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let d = home.join("d");
    DriveKey::load_or_create(&key_file(&d)).unwrap();
    std::fs::set_permissions(key_file(&d), std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = walrusfs(
        &["key", "export", "--data-dir", d.to_str().unwrap()],
        home,
        None,
    );
    assert!(!o.status.success());
    assert!(stdout(&o).is_empty(), "the key must not be printed");
    let err = stderr(&o);
    assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
}

#[test]
fn import_refuses_while_the_drive_is_mounted() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let d = home.join("d");
    std::fs::create_dir_all(d.join("drive")).unwrap();
    // Hold the lock a running mount holds.
    let lock = std::fs::File::create(d.join("drive/lock")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let text = format!("{}\n", &*DriveKey::from_bytes([1; 32]).to_text());
    let o = walrusfs(
        &["key", "import", "-", "--data-dir", d.to_str().unwrap()],
        home,
        Some(&text),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is mounted"), "{}", stderr(&o));
    assert!(!key_file(&d).exists());
    drop(lock);
    let o = walrusfs(
        &["key", "import", "-", "--data-dir", d.to_str().unwrap()],
        home,
        Some(&text),
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn help_explains_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let o = walrusfs(&["--help"], tmp.path(), None);
    assert!(stdout(&o).contains("key"), "{}", stdout(&o));
    for sub in ["export", "import"] {
        let o = walrusfs(&["key", sub, "--help"], tmp.path(), None);
        assert!(o.status.success());
        let help = stdout(&o);
        assert!(help.contains("--data-dir"), "{help}");
        assert!(
            help.contains("Walrus is public") || help.contains("--force"),
            "{help}"
        );
    }
}
