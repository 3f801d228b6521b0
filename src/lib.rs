pub mod cli;
pub mod encoding;
