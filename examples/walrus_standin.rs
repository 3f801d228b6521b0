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
//! Without `--sui-url` it also runs the stand-in Sui full node (`tests/standin/sui.rs`, gRPC)
//! and records the blob objects it "certifies" there, so a real mount over this network file
//! checks them as it would on Walrus: `walrusfs mount M --network DIR/network.toml`. With
//! `--sui-url`, objects are kept in memory here only (for a Sui node run elsewhere).

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
    let (mut aggregators, mut shards, mut sui_url) = (2usize, 10u16, None::<String>);
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
            "--sui-url" => sui_url = Some(args.next().unwrap_or_else(|| usage())),
            _ if dir.is_none() && !a.starts_with('-') => dir = Some(PathBuf::from(a)),
            _ => usage(),
        }
    }
    let Some(dir) = dir else { usage() };
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(dir)?;
    // Without --sui-url, a stand-in Sui full node runs here too and the publisher records
    // its objects there, for the real gRPC reader of a mount.
    let sui_standin = sui_url.is_none().then(standin::sui::SuiStandIn::start);
    let recorder: Arc<dyn standin::SuiRecorder> = match &sui_standin {
        Some(s) => Arc::new(s.clone()),
        None => Arc::new(MemorySui::new(1)),
    };
    let mut options = standin::StandInOptions::new(recorder);
    options.aggregators = aggregators.max(1);
    options.n_shards = shards;
    let s = standin::StandIn::start(&dir, options).await?;
    let net = dir.join("network.toml");
    match (&sui_standin, &sui_url) {
        (Some(sui), _) => {
            s.write_network_file_for(&net, sui, "")?;
            println!("sui:         {}", sui.url());
        }
        (None, Some(url)) => s.write_network_file(&net, url)?,
        (None, None) => unreachable!("one of the two is set"),
    }
    println!("TEST-ONLY Walrus stand-in (not a real network)");
    println!("publisher:   {}", s.publisher_url);
    for a in &s.aggregator_urls {
        println!("aggregator:  {a}");
    }
    println!("admin:       {}/faults", s.admin_url);
    println!("network file: {}", net.display());
    use std::io::Write as _;
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c().await?;
    Ok(())
}
