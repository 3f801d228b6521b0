//! The command line: clap definitions and the glue from subcommands to the library. Errors
//! become `anyhow` here and nowhere else.

mod blob;
mod config;
mod devnet;
mod helper;
mod key;
mod logging;
mod mount;
mod node;
mod notify;
mod progress;
mod status;

pub use config::KEYS as CONFIG_KEYS;

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
    ///
    /// Settings come from flags, then the config file, then defaults. The same program is
    /// also the fstab mount helper: `mount -t fuse.walrusfs DATA_DIR MOUNTPOINT -o OPTIONS`
    /// once linked as /sbin/mount.fuse.walrusfs (see the README).
    Mount(mount::MountArgs),
    /// Unmount a drive mounted with `walrusfs mount` (pending uploads resume at the next
    /// mount).
    Umount(mount::UmountArgs),
    /// Show what a mounted drive is doing: network and ledger epoch, uploads waiting,
    /// blobs stored and nearing their end, cache use and hit rate, storage node health.
    Status(status::StatusArgs),
    /// Wait until every pending upload of a mounted drive is certified on the network (with
    /// a progress bar on a terminal); exits 0 once nothing is pending.
    Flush(status::FlushArgs),
    /// Work with single blobs: compute blob IDs, encode into slivers, decode from slivers.
    #[command(subcommand)]
    Blob(blob::BlobCommand),
    /// Run a local network (storage nodes and a ledger) on this machine.
    #[command(subcommand)]
    Devnet(devnet::DevnetCommand),
    /// Run a storage node serving the Walrus storage-node REST API.
    Node(node::NodeArgs),
    /// Back up or restore the key that encrypts the drive's blobs (`key export`,
    /// `key import`).
    #[command(subcommand)]
    Key(key::KeyCommand),
}

/// Runs the parsed command line. `walrusfs mount` sets up logging itself, once it has read
/// its config file.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if !matches!(cli.command, Command::Mount(_)) {
        logging::init(None);
    }
    match cli.command {
        Command::Mount(args) => mount::run(args),
        Command::Umount(args) => mount::run_umount(args),
        Command::Status(args) => status::run_status(args),
        Command::Flush(args) => status::run_flush(args),
        Command::Blob(cmd) => blob::run(cmd),
        Command::Devnet(cmd) => devnet::run(cmd),
        Command::Node(args) => node::run(args),
        Command::Key(cmd) => key::run(cmd),
    }
}

/// The program: the mount helper when called as one (fstab, `mount -t fuse.walrusfs`), else
/// the command line.
pub fn main() -> std::process::ExitCode {
    use clap::Parser as _;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let result = if helper::detect(&argv) {
        helper::run(&argv)
    } else {
        run(Cli::parse())
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
