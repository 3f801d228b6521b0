//! `walrusfs node --config NODE_FILE`: run a storage node.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::node::NodeConfig;

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's TOML configuration file (listen address, data dir, key file, ledger).
    #[arg(long, value_name = "NODE_FILE")]
    pub config: PathBuf,
}

/// Runs the node until Ctrl-C or SIGTERM. Under systemd (`Type=notify`) it reports
/// `READY=1` once it accepts connections and `STOPPING=1` when it stops.
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    // Through a symlink (/etc/walrusfs/node-0.toml -> DIR/nodes/0/node.toml), relative
    // paths in the file are relative to the file it points to.
    let path = std::fs::canonicalize(&args.config).unwrap_or_else(|_| args.config.clone());
    let config = NodeConfig::load(&path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // `run` polls the shutdown future only once the node listens: that is when it is ready.
    // Signal handlers are installed before READY=1, so a stop right after it is caught.
    let lifecycle = async {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                super::notify::notify("READY=1");
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                super::notify::notify("READY=1");
                shutdown_signal().await;
            }
        }
        super::notify::notify("STOPPING=1");
    };
    runtime.block_on(crate::node::run(config, lifecycle))?;
    Ok(())
}

/// Completes on Ctrl-C or, on Unix, SIGTERM (how process supervisors and tests stop nodes).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
