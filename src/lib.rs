//! walrusfs: a FUSE drive over Walrus. See ARCHITECTURE.md for the layers.

// Library code reports errors; only tests may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod blobstore;
pub mod cli;
pub mod client;
pub mod control;
pub mod devnet;
pub mod direct_io;
pub mod drive;
pub mod encoding;
pub mod fuse;
pub mod ledger;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod sui;
pub mod workers;
