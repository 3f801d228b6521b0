//! Logs: `tracing` to stderr.
//!
//! - On a terminal: colours and timestamps.
//! - Under systemd (stderr is the journal stream named by `$JOURNAL_STREAM`): no colours, no
//!   timestamps (journald adds its own), and each line starts with its syslog priority
//!   (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug and trace), which journald turns
//!   into the entry's priority (`journalctl -p warning` works).
//! - Anything else (a file, a pipe): timestamps, no colours.
//!
//! The filter uses `RUST_LOG` syntax (`warn`, `info`, `walrusfs=debug,warn`): `$RUST_LOG` if
//! set, else the config file's `log`, else `warn`.

use std::fmt;
use std::io::IsTerminal as _;
use std::os::unix::fs::MetadataExt as _;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStyle {
    Terminal,
    Journal,
    Plain,
}

impl LogStyle {
    /// Decides from `$JOURNAL_STREAM` (`DEV:INODE` of the journal's stream, set by systemd)
    /// and what stderr is.
    pub fn detect() -> LogStyle {
        let stderr = std::io::stderr();
        let stat = std::fs::metadata("/proc/self/fd/2").ok();
        Self::decide(
            std::env::var("JOURNAL_STREAM").ok().as_deref(),
            stat.map(|m| (m.dev(), m.ino())),
            stderr.is_terminal(),
        )
    }

    /// `journal_stream` is `$JOURNAL_STREAM`, `stderr` the device and inode of stderr.
    pub fn decide(journal_stream: Option<&str>, stderr: Option<(u64, u64)>, tty: bool) -> Self {
        let journal = journal_stream
            .and_then(|v| v.split_once(':'))
            .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
            .is_some_and(|js| stderr == Some(js));
        match (journal, tty) {
            (true, _) => LogStyle::Journal,
            (false, true) => LogStyle::Terminal,
            (false, false) => LogStyle::Plain,
        }
    }
}

/// Prefixes each line with its syslog priority, for journald.
struct JournalPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// The filter: `$RUST_LOG`, else `configured`, else `warn`. A bad `$RUST_LOG` is reported
/// and the next one used.
fn filter(configured: Option<&str>) -> EnvFilter {
    if let Ok(v) = std::env::var("RUST_LOG")
        && !v.trim().is_empty()
    {
        match EnvFilter::try_new(&v) {
            Ok(f) => return f,
            Err(e) => eprintln!("walrusfs: ignoring RUST_LOG={v:?}: {e}"),
        }
    }
    configured
        .and_then(|c| EnvFilter::try_new(c).ok())
        .unwrap_or_else(|| EnvFilter::new(super::config::DEFAULT_LOG))
}

/// Sets up logging once; later calls do nothing.
pub fn init(configured: Option<&str>) {
    let filter = filter(configured);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match LogStyle::detect() {
        LogStyle::Terminal => builder.with_ansi(true).try_init(),
        LogStyle::Plain => builder.with_ansi(false).try_init(),
        LogStyle::Journal => builder
            .with_ansi(false)
            .event_format(JournalPriority(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_only_when_stderr_is_the_journal_stream() {
        let s = Some((8, 1234));
        assert_eq!(
            LogStyle::decide(Some("8:1234"), s, false),
            LogStyle::Journal
        );
        assert_eq!(LogStyle::decide(Some("8:1234"), s, true), LogStyle::Journal);
        // Inherited by a child whose stderr went elsewhere.
        assert_eq!(LogStyle::decide(Some("8:99"), s, true), LogStyle::Terminal);
        assert_eq!(LogStyle::decide(Some("junk"), s, false), LogStyle::Plain);
        assert_eq!(LogStyle::decide(None, s, false), LogStyle::Plain);
    }
}
