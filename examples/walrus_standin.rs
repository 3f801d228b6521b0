//! The TEST-ONLY stand-in Walrus publisher and aggregators of `tests/walrus_http.rs`
//! (`tests/standin/mod.rs`), to run by hand:
//!
//! ```sh
//! cargo run --example walrus_standin -- DIR [--aggregators N] [--shards N] [--sui-url URL]
//! ```
//!
//! It serves a publisher and N aggregators on loopback, keeps blobs in `DIR/blobs`, writes
//! `DIR/network.toml` (a `walrus-http` network file naming them, with `--sui-url` as the Sui
//! full node) and prints its path. Faults are set while it runs, e.g.
//! `curl -X PUT ADMIN/faults -H 'content-type: application/json' -d '{"wrong_blob_id":true}'`
//! (`GET ADMIN/faults` shows them; see `Faults` in tests/standin/mod.rs for every knob).
//!
//! The blob objects it "certifies" are recorded in an in-memory Sui state inside this
//! process. A mount can only check them once the stand-in Sui full node
//! (`tests/standin/sui.rs`, built separately) serves that state over gRPC at `--sui-url`;
//! until then a mount over this network file fails its Sui checks, by design.

#[path = "../tests/standin/mod.rs"]
mod standin;

use std::path::PathBuf;
use std::sync::Arc;

use walrusfs::sui::MemorySui;

fn usage() -> ! {
    eprintln!("usage: walrus_standin DIR [--aggregators N] [--shards N] [--sui-url URL]");
    std::process::exit(2);
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    let (mut aggregators, mut shards, mut sui_url) =
        (2usize, 10u16, "http://127.0.0.1:9000".to_string());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--aggregators" => {
                aggregators = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--shards" => {
                shards = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--sui-url" => sui_url = args.next().unwrap_or_else(|| usage()),
            _ if dir.is_none() && !a.starts_with('-') => dir = Some(PathBuf::from(a)),
            _ => usage(),
        }
    }
    let Some(dir) = dir else { usage() };
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(dir)?;
    let sui = Arc::new(MemorySui::new(1));
    let mut options = standin::StandInOptions::new(sui);
    options.aggregators = aggregators.max(1);
    options.n_shards = shards;
    let s = standin::StandIn::start(&dir, options).await?;
    let net = dir.join("network.toml");
    s.write_network_file(&net, &sui_url)?;
    println!("TEST-ONLY Walrus stand-in (not a real network)");
    println!("publisher:   {}", s.publisher_url);
    for a in &s.aggregator_urls {
        println!("aggregator:  {a}");
    }
    println!("admin:       {}/faults", s.admin_url);
    println!("network file: {}", net.display());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
