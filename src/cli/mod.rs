//! The command line: clap definitions and the glue from subcommands to the library. Errors
//! become `anyhow` here and nowhere else.

mod blob;
mod devnet;
mod mount;
mod node;

use clap::{Parser, Subcommand};

/// walrusfs: a drive whose files live as blobs on Walrus, the decentralized blob store on Sui.
#[derive(Debug, Parser)]
#[command(name = "walrusfs", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount the drive: a directory whose files are stored as blobs on Walrus. With no
    /// --network, a local network runs inside the mount (nothing else to set up).
    Mount(mount::MountArgs),
    /// Unmount a drive mounted with `walrusfs mount` (pending uploads resume at the next
    /// mount).
    Umount(mount::UmountArgs),
    /// Work with single blobs: compute blob IDs, encode into slivers, decode from slivers.
    #[command(subcommand)]
    Blob(blob::BlobCommand),
    /// Run a local network (storage nodes and a ledger) on this machine.
    #[command(subcommand)]
    Devnet(devnet::DevnetCommand),
    /// Run a storage node serving the Walrus storage-node REST API.
    Node(node::NodeArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Mount(args) => mount::run(args),
        Command::Umount(args) => mount::run_umount(args),
        Command::Blob(cmd) => blob::run(cmd),
        Command::Devnet(cmd) => devnet::run(cmd),
        Command::Node(args) => node::run(args),
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings and errors).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
