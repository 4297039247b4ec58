//! `shuffle-worker`: runs one Shoal worker.

use std::path::PathBuf;

use clap::Parser;
use shuffle_worker::config::{WorkerSettings, KEYS};
use shuffle_worker::node::WorkerNode;
use tracing::info;

#[derive(Parser, Debug)]
#[command(name = "shuffle-worker", version, about = "Shoal worker: shuffle data ingest, spill and reads")]
struct Args {
    /// TOML file with the same keys as the flags (snake_case); flags and SHOAL_* win over it.
    #[arg(long, env = "SHOAL_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: WorkerSettings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    // Fault-test builds take failpoints from FAILPOINTS (e.g. "worker-after-put=return(crash)").
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    let args = Args::parse();
    let file: WorkerSettings =
        shuffle_proto::settings::read_toml_file(args.config.as_ref(), KEYS).map_err(anyhow::Error::msg)?;
    let cfg = args.settings.over(file).resolve()?;
    let mut node = WorkerNode::start(cfg).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("interrupted"),
        _ = term.recv() => info!("terminated"),
        _ = node.decommissioned() => info!("decommission complete; exiting"),
    }
    node.shutdown().await;
    Ok(())
}
