//! The mount helper for fstab and `mount -t fuse.walrusfs`, following FUSE conventions.
//!
//! mount(8) runs `/sbin/mount.fuse.walrusfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]` (a
//! symlink to `walrusfs`), and `mount.fuse3` runs `walrusfs SOURCE MOUNTPOINT -o OPTIONS`.
//! Both are recognised here: by the program name, or by a first argument that is no
//! subcommand followed by a second one that is no flag. The mount then starts as
//! `walrusfs mount --daemon` would, returning once the drive is mounted.
//!
//! SOURCE is the data directory (`walrusfs` or `none` for the default one). Options:
//! `data_dir=DIR`, `network=FILE`, `config=FILE`, `epochs=N`, `upload_grace=SECS`,
//! `max_pack=SIZE`, `metrics_addr=ADDR`, `ro`, `rw`, `allow_other`, `sync_on_close`,
//! `writeback_cache`, `no_writeback_cache`, `public`.
//! Ignored (they concern mount(8) or systemd, or are always on): [`IGNORED`] and any `x-…`
//! or `comment=…`. Anything else is an error, unless `-s` (sloppy) is given.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::bail;
use tracing::warn;

use super::mount::MountArgs;

/// Options accepted and ignored.
pub const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "_netdev",
    "nofail",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "async",
    "default_permissions",
    "rw",
];

const SUBCOMMANDS: &[&str] = &[
    "mount", "umount", "status", "flush", "blob", "devnet", "node", "help", "key",
];

/// Whether this invocation is the mount helper's.
pub fn detect(args: &[OsString]) -> bool {
    let prog = args
        .first()
        .map(|a| {
            PathBuf::from(a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    if prog.starts_with("mount.fuse.walrusfs") || prog.starts_with("mount.walrusfs") {
        return true;
    }
    match (args.get(1), args.get(2)) {
        (Some(a), Some(b)) => {
            let (a, b) = (a.to_string_lossy(), b.to_string_lossy());
            !a.starts_with('-') && !SUBCOMMANDS.contains(&a.as_ref()) && !b.starts_with('-')
        }
        _ => false,
    }
}

/// A parsed helper invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub args: MountArgs,
    /// `-f`: check everything, mount nothing.
    pub fake: bool,
}

/// Parses `PROG SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]`.
pub fn parse(args: &[OsString]) -> anyhow::Result<Invocation> {
    let mut positional: Vec<OsString> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let (mut sloppy, mut fake) = (false, false);
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        match s.as_ref() {
            "-o" => match it.next() {
                Some(o) => options.push(o.to_string_lossy().into_owned()),
                None => bail!("-o needs a list of options"),
            },
            "-t" => {
                it.next();
            }
            "-N" => bail!("walrusfs cannot mount into another mount namespace (-N)"),
            "-h" | "--help" => bail!(
                "usage: mount.fuse.walrusfs DATA_DIR MOUNTPOINT [-o OPTIONS]; see `walrusfs mount --help` and the README (fstab)"
            ),
            _ if s.starts_with("-o") => options.push(s[2..].to_owned()),
            _ if s.starts_with('-')
                && s.len() > 1
                && s[1..].chars().all(|c| "sfnv".contains(c)) =>
            {
                sloppy |= s.contains('s');
                fake |= s.contains('f');
            }
            _ if s.starts_with('-') => bail!("unknown mount helper flag {s}"),
            _ => positional.push(a.clone()),
        }
    }
    let [source, mountpoint] = <[OsString; 2]>::try_from(positional).map_err(|p| {
        anyhow::anyhow!(
            "expected SOURCE MOUNTPOINT (e.g. /var/lib/walrusfs /mnt/drive), got {} argument(s)",
            p.len()
        )
    })?;
    let mut m = MountArgs::new(PathBuf::from(mountpoint));
    m.daemon = true;
    let source = source.to_string_lossy().into_owned();
    if !matches!(source.as_str(), "walrusfs" | "none" | "") {
        m.data_dir = Some(PathBuf::from(&source));
    }
    for opt in options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let need = |v: Option<&str>| -> anyhow::Result<String> {
            v.map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("mount option {key} needs a value ({key}=…)"))
        };
        let number = |v: Option<&str>| -> anyhow::Result<u64> {
            need(v)?
                .parse()
                .map_err(|_| anyhow::anyhow!("mount option {opt}: {key} takes a whole number"))
        };
        match key {
            "data_dir" => m.data_dir = Some(need(value)?.into()),
            "network" => m.network = Some(need(value)?.into()),
            "config" => m.config = Some(need(value)?.into()),
            "epochs" => {
                m.epochs = Some(
                    u32::try_from(number(value)?)
                        .map_err(|_| anyhow::anyhow!("mount option {opt}: too many epochs"))?,
                )
            }
            "upload_grace" => m.upload_grace = Some(number(value)?),
            "max_pack" => m.max_pack = Some(need(value)?),
            "metrics_addr" => m.metrics_addr = Some(need(value)?),
            "ro" => m.read_only = true,
            "allow_other" => m.allow_other = true,
            "sync_on_close" => m.sync_on_close = true,
            "writeback_cache" => m.writeback_cache = true,
            "no_writeback_cache" => m.no_writeback_cache = true,
            "public" => m.public = true,
            _ if IGNORED.contains(&key) || key.starts_with("x-") || key == "comment" => {}
            _ if sloppy => warn!(option = opt, "ignoring an unknown mount option (-s)"),
            _ => bail!(
                "unknown mount option `{opt}`; walrusfs takes data_dir=, network=, config=, \
                 epochs=, upload_grace=, max_pack=, metrics_addr=, ro, rw, allow_other, \
                 sync_on_close, writeback_cache, no_writeback_cache, public, and ignores {}, x-* and comment=",
                IGNORED.join(", ")
            ),
        }
    }
    Ok(Invocation { args: m, fake })
}

/// Runs the helper: mounts in the background and returns once the drive is mounted.
pub fn run(args: &[OsString]) -> anyhow::Result<()> {
    let inv = parse(args)?;
    if inv.fake {
        return Ok(());
    }
    super::mount::run(inv.args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn detection() {
        assert!(detect(&os(&["/sbin/mount.fuse.walrusfs", "/d", "/m"])));
        assert!(detect(&os(&[
            "walrusfs",
            "/var/lib/w",
            "/mnt/d",
            "-o",
            "rw"
        ])));
        assert!(!detect(&os(&["walrusfs", "status", "/mnt/d"])));
        assert!(!detect(&os(&["walrusfs", "mount", "/mnt/d"])));
        assert!(!detect(&os(&["walrusfs", "--help"])));
        assert!(!detect(&os(&["walrusfs", "/x"])));
    }

    #[test]
    fn options_translate_to_mount_flags() {
        let inv = parse(&os(&[
            "mount.fuse.walrusfs",
            "/var/lib/walrusfs/a",
            "/mnt/a",
            "-n",
            "-o",
            "rw,ro,allow_other,_netdev,noauto,nofail,x-systemd.automount,epochs=7,upload_grace=90,network=/srv/n.toml",
            "-t",
            "fuse.walrusfs",
        ]))
        .unwrap();
        let a = &inv.args;
        assert!(a.daemon && a.read_only && a.allow_other && !inv.fake);
        assert_eq!(a.data_dir, Some(PathBuf::from("/var/lib/walrusfs/a")));
        assert_eq!(a.mountpoint, PathBuf::from("/mnt/a"));
        assert_eq!(a.epochs, Some(7));
        assert_eq!(a.upload_grace, Some(90));
        assert_eq!(a.network, Some(PathBuf::from("/srv/n.toml")));
        let inv = parse(&os(&[
            "walrusfs",
            "walrusfs",
            "/mnt/a",
            "-o",
            "data_dir=/d",
            "-f",
        ]))
        .unwrap();
        assert!(inv.fake);
        assert_eq!(inv.args.data_dir, Some(PathBuf::from("/d")));
    }

    #[test]
    fn unknown_options_are_errors_unless_sloppy() {
        let e = parse(&os(&["walrusfs", "/d", "/m", "-o", "compress=zstd"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("compress=zstd") && e.contains("data_dir="),
            "{e}"
        );
        assert!(parse(&os(&["walrusfs", "/d", "/m", "-s", "-o", "compress=zstd"])).is_ok());
        let e = parse(&os(&["walrusfs", "/d", "/m", "-o", "epochs=many"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("epochs"), "{e}");
    }
}
