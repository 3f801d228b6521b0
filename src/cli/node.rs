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

/// Runs the node until Ctrl-C or SIGTERM.
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let config = NodeConfig::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(crate::node::run(config, shutdown_signal()))?;
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
