//! The `walrusfs blob` commands as a user runs them: outputs, round trips and error messages.

use std::path::Path;
use std::process::{Command, Output};

fn walrusfs(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walrusfs"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run walrusfs")
}

fn stdout_last_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
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
fn id_encode_decode_agree_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let blob = data(300_001, 1);
    std::fs::write(d.join("f"), &blob).unwrap();

    let id = walrusfs(&["blob", "id", "f", "--shards", "10"], d);
    assert!(id.status.success(), "{}", stderr(&id));
    let blob_id = stdout_last_line(&id);
    assert_eq!(blob_id.len(), 43);
    let lib_id = walrusfs::encoding::EncodingConfig::new(10)
        .unwrap()
        .blob_id(&blob)
        .unwrap();
    assert_eq!(blob_id, lib_id.to_string());

    for (out, extra) in [("enc", None), ("enc_stream", Some("--streaming"))] {
        let mut args = vec!["blob", "encode", "f", "--shards", "10", "-o", out];
        args.extend(extra);
        let enc = walrusfs(&args, d);
        assert!(enc.status.success(), "{}", stderr(&enc));
        assert_eq!(stdout_last_line(&enc), blob_id);
    }
    // The streaming encoder writes the same files as the in-memory one.
    for entry in std::fs::read_dir(d.join("enc/slivers")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            std::fs::read(d.join("enc_stream/slivers").join(name)).unwrap(),
            "{name:?}"
        );
    }
    assert_eq!(
        std::fs::read(d.join("enc/metadata.bcs")).unwrap(),
        std::fs::read(d.join("enc_stream/metadata.bcs")).unwrap()
    );

    // Lose the systematic slivers 0 and 1 and corrupt sliver 2: 8 of 10 remain, 7 valid, 4 needed.
    std::fs::remove_file(d.join("enc/slivers/00000.primary.bcs")).unwrap();
    std::fs::remove_file(d.join("enc/slivers/00001.primary.bcs")).unwrap();
    let p2 = d.join("enc/slivers/00002.primary.bcs");
    let mut b = std::fs::read(&p2).unwrap();
    b[100] ^= 0x40;
    std::fs::write(&p2, b).unwrap();
    let dec = walrusfs(&["blob", "decode", "enc", "-o", "back"], d);
    assert!(dec.status.success(), "{}", stderr(&dec));
    assert_eq!(stdout_last_line(&dec), blob_id);
    assert!(
        stderr(&dec).contains("00002.primary.bcs"),
        "corrupt sliver named: {}",
        stderr(&dec)
    );
    assert_eq!(std::fs::read(d.join("back")).unwrap(), blob);

    // Down to 3 valid primary slivers: a clear error, and no output file.
    for i in 3..7 {
        std::fs::remove_file(d.join(format!("enc/slivers/0000{i}.primary.bcs"))).unwrap();
    }
    let dec = walrusfs(&["blob", "decode", "enc", "-o", "back2"], d);
    assert!(!dec.status.success());
    assert!(
        stderr(&dec).contains("not enough valid primary slivers to decode: have 3, need 4"),
        "{}",
        stderr(&dec)
    );
    assert!(!d.join("back2").exists());
}

#[test]
fn default_is_a_mainnet_sized_committee() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"hello walrus").unwrap();
    let out = walrusfs(&["blob", "id", "f"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = walrusfs::encoding::EncodingConfig::new(1000)
        .unwrap()
        .blob_id(b"hello walrus")
        .unwrap();
    assert_eq!(stdout_last_line(&out), expected.to_string());
}

#[test]
fn errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("big"), vec![7u8; 1_834_953]).unwrap();
    std::fs::write(d.join("max"), vec![7u8; 1_834_952]).unwrap();
    std::fs::create_dir(d.join("notablob")).unwrap();

    let cases: &[(&[&str], &str)] = &[
        (&["blob", "id", "missing"], "cannot read missing"),
        (&["blob", "id", "notablob"], "is not a regular file"),
        (
            &["blob", "id", "max", "--shards", "3"],
            "3 shards is out of range",
        ),
        (
            &["blob", "id", "max", "--shards", "5000"],
            "5000 shards is out of range",
        ),
        (
            &["blob", "id", "big", "--shards", "10"],
            "the maximum is 1834952 bytes",
        ),
        (
            &["blob", "encode", "big", "--shards", "10", "-o", "x"],
            "the maximum is 1834952 bytes",
        ),
        (
            &["blob", "decode", "notablob", "-o", "y"],
            "has no metadata.bcs",
        ),
    ];
    for (args, needle) in cases {
        let out = walrusfs(args, d);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    // The maximum itself is fine.
    let out = walrusfs(&["blob", "id", "max", "--shards", "10"], d);
    assert!(out.status.success(), "{}", stderr(&out));

    // Corrupt metadata is rejected as such.
    let enc = walrusfs(&["blob", "encode", "max", "--shards", "10", "-o", "m"], d);
    assert!(enc.status.success(), "{}", stderr(&enc));
    let mp = d.join("m/metadata.bcs");
    let mut b = std::fs::read(&mp).unwrap();
    let last = b.len() - 1;
    b[last] ^= 1;
    std::fs::write(&mp, b).unwrap();
    let out = walrusfs(&["blob", "decode", "m", "-o", "z"], d);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not hash to blob ID"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn maximum_blob_size_at_100_shards_natively() {
    // About 149 MB: the largest blob a 100-shard network takes, and one byte more.
    let config = walrusfs::encoding::EncodingConfig::new(100).unwrap();
    let max = config.max_blob_size() as usize;
    let mut blob = data(max, 7);
    let meta = config.compute_metadata(&blob).unwrap();
    meta.verify(&config).unwrap();
    assert_eq!(meta.metadata.unencoded_length(), max as u64);
    blob.push(1);
    assert!(matches!(
        config.compute_metadata(&blob),
        Err(walrusfs::encoding::EncodingError::BlobTooLarge { .. })
    ));
}
