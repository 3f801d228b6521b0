//! `walrusfs status` and `walrusfs flush`: ask a running mount through its control socket
//! (see `crate::control` for how a mount point leads to it).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use indicatif::HumanBytes;

use super::progress;
use crate::control::{self, ControlClient, ControlError, DEFAULT_EXPIRING_WITHIN, Status};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The drive's mount point [default: every walrusfs mount on this machine].
    pub mountpoint: Option<PathBuf>,
    /// Ask the mount of the drive in this data directory (instead of finding it from the
    /// mount point).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON for scripts: one object for a MOUNTPOINT or --data-dir, else an array with
    /// one object per mount. Field names are stable; the README lists them.
    #[arg(long)]
    pub json: bool,
    /// Count blobs whose storage ends within this many epochs as "expiring".
    #[arg(long, default_value_t = DEFAULT_EXPIRING_WITHIN, value_name = "EPOCHS")]
    pub expiring_within: u64,
}

#[derive(Debug, clap::Args)]
pub struct FlushArgs {
    /// The drive's mount point.
    pub mountpoint: PathBuf,
    /// Ask the mount of the drive in this data directory (instead of finding it from the
    /// mount point).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Give up after this many seconds (exit status 1; what is left stays queued and keeps
    /// uploading) [default: wait as long as it takes].
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

fn connect(data_dir: &std::path::Path) -> Result<ControlClient, ControlError> {
    ControlClient::connect(data_dir)
}

pub fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let single = args.mountpoint.is_some() || args.data_dir.is_some();
    let targets = control::resolve(args.mountpoint.as_deref(), args.data_dir.as_deref())?;
    let mut all = Vec::new();
    let mut failed = 0;
    for t in &targets {
        match connect(&t.data_dir).and_then(|mut c| c.status(args.expiring_within)) {
            Ok(status) => all.push(status),
            // One mount that does not answer must not hide the others.
            Err(e) if !single && targets.len() > 1 => {
                eprintln!("error: {e}");
                failed += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut out = String::new();
    if args.json {
        out = if single && all.len() == 1 {
            serde_json::to_string_pretty(&all[0])?
        } else {
            serde_json::to_string_pretty(&all)?
        };
        out.push('\n');
    } else {
        for (i, s) in all.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&render(s));
        }
    }
    print!("{out}");
    if failed > 0 {
        bail!("{failed} of {} mount(s) did not answer", targets.len());
    }
    Ok(())
}

fn ago(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// The human-readable report.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{}: walrusfs drive{}, mounted by pid {} for {}",
        s.mountpoint.display(),
        if s.read_only { " (read-only)" } else { "" },
        s.pid,
        ago(s.uptime_secs as f64)
    );
    let _ = writeln!(o, "  data:      {}", s.data_dir.display());
    let epoch = match (s.network.epoch, &s.network.epoch_error) {
        (Some(e), _) => format!("ledger epoch {e}"),
        (None, Some(err)) => format!("ledger epoch unknown: {err}"),
        (None, None) => "ledger epoch unknown".into(),
    };
    let net = match s.network.kind.as_str() {
        "embedded" => format!(
            "embedded in this mount ({} nodes, {})",
            s.nodes.len(),
            s.network.path.display()
        ),
        _ => format!("network file {}", s.network.path.display()),
    };
    let _ = writeln!(o, "  network:   {net}; {epoch}");
    let _ = writeln!(
        o,
        "  files:     {} files and directories, {}",
        s.files.count,
        HumanBytes(s.files.bytes)
    );
    if s.pending.files == 0 {
        let _ = writeln!(
            o,
            "  pending:   nothing: every closed file is certified on the network"
        );
    } else {
        let _ = writeln!(
            o,
            "  pending:   {} file(s), {} waiting for upload; oldest queued {} ago \
             (`walrusfs flush {}` waits for them)",
            s.pending.files,
            HumanBytes(s.pending.bytes),
            ago(s.pending.oldest_age_secs.unwrap_or(0.0)),
            s.mountpoint.display()
        );
    }
    let _ = writeln!(
        o,
        "  certified: {} blob(s), {} ({} stored on the network with erasure coding)",
        s.certified.blobs,
        HumanBytes(s.certified.bytes),
        HumanBytes(s.certified.encoded_bytes)
    );
    match &s.expiring {
        None => {
            let _ = writeln!(o, "  expiring:  unknown (no ledger epoch)");
        }
        Some(x) if x.blobs == 0 => {
            let _ = writeln!(
                o,
                "  expiring:  no blob ends within {} epoch(s)",
                x.within_epochs
            );
        }
        Some(x) => {
            let _ = writeln!(
                o,
                "  expiring:  {} blob(s), {}, end within {} epoch(s) (first at the end of epoch {}); \
                 extend them with `walrusfs blob extend BLOB_ID --epochs N`",
                x.blobs,
                HumanBytes(x.bytes),
                x.within_epochs,
                x.first_end_epoch.unwrap_or_default()
            );
        }
    }
    if s.at_risk.is_empty() {
        if s.expiring.is_some() {
            let _ = writeln!(
                o,
                "  at risk:   nothing: every blob a file uses is stored beyond the renewal margin"
            );
        }
    } else {
        let expired = s.at_risk.iter().filter(|b| b.expired).count();
        let _ = writeln!(
            o,
            "  AT RISK:   {} blob(s) holding file data ({expired} expired: those parts read as EIO; \
             the others are due for renewal and not extended yet, see the log)",
            s.at_risk.len()
        );
        for b in &s.at_risk {
            let more = b.file_count.saturating_sub(b.files.len() as u64);
            let _ = writeln!(
                o,
                "    {} {} at the end of epoch {}, {} in {} file(s): {}{}",
                b.blob_id,
                if b.expired { "EXPIRED" } else { "ends" },
                b.end_epoch,
                HumanBytes(b.bytes),
                b.file_count,
                b.files.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
        }
    }
    let r = &s.cache.reads;
    let rate = match s.cache.hit_rate {
        Some(h) => format!("{:.0}% of reads served locally", h * 100.0),
        None => "no reads yet".into(),
    };
    let _ = writeln!(
        o,
        "  cache:     {} on disk (+ {} staged); {rate} (staging {}, file cache {}, extent cache {}, network {})",
        HumanBytes(s.cache.bytes),
        HumanBytes(s.cache.staging_bytes),
        r.staging,
        r.file_cache,
        r.extent_cache,
        r.network
    );
    let _ = writeln!(
        o,
        "  traffic:   {} read, {} written since mounted",
        HumanBytes(s.cache.bytes_read),
        HumanBytes(s.cache.bytes_written)
    );
    if !s.nodes.is_empty() {
        let healthy = s.nodes.iter().filter(|n| n.healthy).count();
        let _ = writeln!(o, "  nodes:     {healthy} of {} healthy", s.nodes.len());
        for n in &s.nodes {
            let _ = writeln!(
                o,
                "    node {:<3} {:<22} {}",
                n.index,
                n.address,
                if n.healthy {
                    "healthy".to_string()
                } else {
                    format!("NOT HEALTHY: {}", n.detail)
                }
            );
        }
    }
    o
}

pub fn run_flush(args: FlushArgs) -> anyhow::Result<()> {
    let targets = control::resolve(Some(&args.mountpoint), args.data_dir.as_deref())?;
    let Some(target) = targets.first() else {
        bail!("no walrusfs mount on {}", args.mountpoint.display());
    };
    let mut client = connect(&target.data_dir)?;
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut most = 0u64;
    let mut first: Option<(u64, u64)> = None;
    let mut last = (0u64, 0u64);
    let timeout = args.timeout.map(Duration::from_secs);
    let result = client.flush(timeout, |p| {
        first.get_or_insert((p.files, p.bytes));
        last = (p.files, p.bytes);
        if p.files == 0 {
            return;
        }
        most = most.max(p.bytes);
        let pb = bar.get_or_insert_with(|| progress::bytes_bar(most, "uploading"));
        pb.set_length(most);
        pb.set_position(most - p.bytes);
        pb.set_message(format!("{} file(s) left", p.files));
    });
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }
    match result {
        Ok(elapsed) => {
            match first {
                Some((files, bytes)) if files > 0 => println!(
                    "flushed: {files} file(s), {} certified in {:.1} s; nothing pending",
                    HumanBytes(bytes),
                    elapsed.as_secs_f64()
                ),
                _ => println!("nothing pending: every closed file is certified"),
            }
            Ok(())
        }
        Err(ControlError::TimedOut { .. }) => bail!(
            "gave up after {} s with {} file(s), {} still pending on {}; they stay queued and \
             keep uploading (see `walrusfs status {}`)",
            args.timeout.unwrap_or_default(),
            last.0,
            HumanBytes(last.1),
            args.mountpoint.display(),
            args.mountpoint.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot flush {}", args.mountpoint.display())),
    }
}
