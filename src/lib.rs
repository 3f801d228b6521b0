pub mod cli;
pub mod client;
pub mod devnet;
pub mod encoding;
pub mod ledger;
pub mod node;
pub mod protocol;
