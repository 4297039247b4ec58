//! `shoal`: operate a Shoal cluster. See `shoal --help`; exit codes are documented in
//! docs/operations.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use shuffle_client::cli::{self, local::LocalUp, status};
use shuffle_proto::messages::{ClusterStatus, GetStatus};
use shuffle_proto::transport::{Client, ClientOptions, MasterClient, Tls};

#[derive(Parser, Debug)]
#[command(name = "shoal", version, about = "Operate a Shoal remote shuffle cluster")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Args, Debug)]
struct Conn {
    /// Master endpoints, HOST:PORT comma separated (any master; calls follow the leader).
    #[arg(long, env = "SHOAL_MASTERS", value_delimiter = ',', required = true)]
    masters: Vec<String>,
    /// The cluster CA certificate (PEM).
    #[arg(long, env = "SHOAL_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Skip server verification (throwaway local clusters only).
    #[arg(long)]
    tls_insecure: bool,
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Masters and their roles, workers with state, bytes and partitions.
    Status(Conn),
    /// A local cluster as child processes.
    Local {
        #[command(subcommand)]
        cmd: LocalCmd,
    },
}

#[derive(Subcommand, Debug)]
enum LocalCmd {
    /// Start masters and workers on loopback; Ctrl-C or SIGTERM stops them.
    Up {
        #[arg(long, default_value_t = 1)]
        masters: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, default_value = ".shoal")]
        data_dir: PathBuf,
        /// Object store URL (default: file://DATA_DIR/objects).
        #[arg(long)]
        object_store: Option<String>,
        /// First port to use (0: any free ports).
        #[arg(long, default_value_t = 0)]
        base_port: u16,
    },
}

/// Writes to stdout; a closed pipe (`shoal status | head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        Cmd::Status(conn) => {
            let tls = cli::tls_source(conn.tls_ca, conn.tls_insecure).map_err(anyhow::Error::msg)?;
            let client = Client::new(&Tls::load(&tls)?, ClientOptions::default())?;
            let mc = MasterClient::new(client, conn.masters, Duration::from_secs(10))?;
            let st: ClusterStatus = mc.call_typed(GetStatus {}).await?;
            let text = match conn.output {
                Output::Json => serde_json::to_string_pretty(&status::to_json(&st))? + "\n",
                Output::Table => status::to_table(&st),
            };
            print_out(&text)?;
        }
        Cmd::Local { cmd: LocalCmd::Up { masters, workers, data_dir, object_store, base_port } } => {
            let exe = std::env::current_exe()?;
            let bin_dir = exe.parent().context("no directory for the shoal executable")?.to_path_buf();
            let up = LocalUp { masters, workers, data_dir, object_store, base_port, bin_dir };
            let mut running = up.start().await?;
            print_out(&format!(
                "{}\ncluster.json written to {}; Ctrl-C to stop\n",
                running.summary(),
                up.data_dir.join("cluster.json").display()
            ))?;
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("stopping the local cluster");
            running.stop();
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("shoal: {e:#}");
        std::process::exit(cli::exit_code(&e));
    }
}
