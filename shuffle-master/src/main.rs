//! `shuffle-master`: runs one master of a Shoal cluster.

use std::path::PathBuf;

use clap::Parser;
use shuffle_master::config::{MasterSettings, KEYS};
use shuffle_master::node::MasterNode;
use tracing::info;

#[derive(Parser, Debug)]
#[command(name = "shuffle-master", version, about = "Shoal master: Raft-replicated shuffle metadata")]
struct Args {
    /// TOML file with the same keys as the flags (snake_case); flags and SHOAL_* win over it.
    #[arg(long, env = "SHOAL_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: MasterSettings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .init();
    let args = Args::parse();
    let file: MasterSettings =
        shuffle_proto::settings::read_toml_file(args.config.as_ref(), KEYS).map_err(anyhow::Error::msg)?;
    let cfg = args.settings.over(file).resolve()?;
    let node = MasterNode::start(cfg).await?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        why = node.stopped() => {
            // Raft stopped on a storage error: exit non-zero, so the supervisor restarts this
            // master once its disk is usable again; the rest of the group keeps serving.
            tracing::error!("the master's Raft node stopped ({why}); exiting");
            node.shutdown().await;
            std::process::exit(1);
        }
    }
    info!("shutting down");
    node.shutdown().await;
    Ok(())
}
