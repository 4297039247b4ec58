//! `shoal`: operate a Shoal cluster. See `shoal --help`; exit codes are documented in
//! docs/operations.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use shuffle_client::cli::{self, admin, certs, local::LocalUp, masters, status};
use shuffle_proto::messages::{
    Ack, AppList, ClusterStatus, GetStatus, ListApps, ListMasters, ListShuffles, MasterList, RecommissionWorker,
    RemoveWorker, ShuffleList,
};
use shuffle_proto::transport::{Client, ClientOptions, MasterClient, Tls};
use shuffle_proto::WorkerId;

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
    /// A file holding the admin credential (name:secret); else SHOAL_CREDENTIAL is used.
    #[arg(long, env = "SHOAL_CREDENTIAL_FILE")]
    credential_file: Option<PathBuf>,
    /// A node certificate (PEM), with --tls-key: call as a cluster node instead of an admin
    /// (what a worker's preStop hook does with its own certificate).
    #[arg(long, env = "SHOAL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The node certificate's private key (PEM).
    #[arg(long, env = "SHOAL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Masters and their roles, workers with state, bytes and partitions.
    Status(Conn),
    /// Workers: list them.
    Workers {
        #[command(subcommand)]
        cmd: WorkersCmd,
    },
    /// One worker: decommission or recommission it.
    Worker {
        #[command(subcommand)]
        cmd: WorkerCmd,
    },
    /// The master group: list, add or remove masters (one change at a time).
    Masters {
        #[command(subcommand)]
        cmd: MastersCmd,
    },
    /// Shuffles: list them.
    Shuffles {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Applications: list them.
    Apps {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// A local cluster as child processes.
    Local {
        #[command(subcommand)]
        cmd: LocalCmd,
    },
    /// Cluster certificates: make a CA, issue node certificates with it.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// Authentication material: signing keys, tenant and admin credentials.
    Auth {
        #[command(subcommand)]
        cmd: AuthCmd,
    },
}

#[derive(Subcommand, Debug)]
enum AuthCmd {
    /// Make a new cluster's material in --out: signing-keys.toml and principals.toml for the
    /// masters, and NAME.credential (mode 0600) for each tenant and the admin.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// A tenant to admit (repeat or comma separate).
        #[arg(long, value_delimiter = ',', default_value = "spark")]
        tenant: Vec<String>,
        /// The admin's name.
        #[arg(long, default_value = "admin")]
        admin: String,
    },
    /// A new secret for one principal: writes NAME.credential (mode 0600) in --out and prints
    /// the line to add to principals.toml (under [tenants], or [admins] with --admin).
    Principal {
        name: String,
        #[arg(long)]
        admin: bool,
        #[arg(long)]
        out: PathBuf,
    },
    /// A new signing key for rotation: prints the `ID = "seed"` line for signing-keys.toml.
    Key {
        #[arg(long)]
        id: u32,
    },
}

#[derive(Subcommand, Debug)]
enum CertsCmd {
    /// Make a new cluster CA: writes ca.pem and ca.key (mode 0600) in --out.
    Ca {
        #[arg(long)]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = shuffle_proto::certs::DEFAULT_CA_NAME)]
        name: String,
        /// Days the CA is valid for.
        #[arg(long, default_value_t = shuffle_proto::certs::DEFAULT_CA_VALIDITY_DAYS)]
        days: u32,
    },
    /// Issue a node certificate (always valid for the name "shoal"): writes NAME.pem and
    /// NAME.key (mode 0600) in --out, signed by ca.pem/ca.key in --ca-dir.
    Node {
        /// The directory holding ca.pem and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The certificate's common name and the files' stem.
        #[arg(long)]
        name: String,
        /// A further DNS name (repeat or comma separate), e.g. a pod's DNS name or a wildcard.
        #[arg(long, value_delimiter = ',')]
        dns: Vec<String>,
        /// An IP address to be valid for (repeat or comma separate).
        #[arg(long, value_delimiter = ',')]
        ip: Vec<std::net::IpAddr>,
        /// Days the certificate is valid for.
        #[arg(long, default_value_t = shuffle_proto::certs::DEFAULT_NODE_VALIDITY_DAYS)]
        days: u32,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum MastersCmd {
    /// Ids, addresses, voter or learner, and the leader.
    List(Conn),
    /// Add a master started with --join: as a learner, then as a voter once it caught up.
    Add {
        /// The new master's id (unused in the group so far).
        id: u64,
        /// HOST:PORT where every master reaches it (its QUIC address).
        addr: String,
        /// How long the leader waits for it to catch up and for the change to commit.
        #[arg(long, default_value = "2m")]
        timeout: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a master (a voter or a learner); refused if the rest could not commit.
    Remove {
        id: u64,
        #[arg(long, default_value = "1m")]
        timeout: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
enum WorkersCmd {
    List(Conn),
}

#[derive(Subcommand, Debug)]
enum ListCmd {
    List(Conn),
}

#[derive(Subcommand, Debug)]
enum WorkerCmd {
    /// Drain a worker to the object store; with --wait, until it is decommissioned.
    Decommission {
        id: String,
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (exit code 4), e.g. "30m".
        #[arg(long, default_value = "1h")]
        timeout: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Return a draining or decommissioned worker to service.
    Recommission {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Forget a decommissioned or lost worker (after scaling in for good).
    Remove {
        id: String,
        #[command(flatten)]
        conn: Conn,
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

fn connect(conn: &Conn) -> anyhow::Result<MasterClient> {
    connect_with(conn, ClientOptions::default())
}

fn connect_with(conn: &Conn, opts: ClientOptions) -> anyhow::Result<MasterClient> {
    let node = conn.tls_cert.clone().zip(conn.tls_key.clone());
    let tls = cli::tls_source(conn.tls_ca.clone(), conn.tls_insecure, node).map_err(anyhow::Error::msg)?;
    let cred = cli::credential(conn.credential_file.as_deref())?;
    let client = Client::new(&Tls::load(&tls)?, opts)?.with_credential(cred.as_ref())?;
    Ok(MasterClient::new(client, conn.masters.clone(), Duration::from_secs(10))?)
}

/// A client whose calls outlast a membership change the leader may take `timeout` for.
fn connect_for_change(conn: &Conn, timeout: Duration) -> anyhow::Result<MasterClient> {
    let opts = ClientOptions { call_timeout: timeout + Duration::from_secs(10), ..ClientOptions::default() };
    connect_with(conn, opts)
}

fn parse_timeout(t: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(t).map_err(|e| anyhow::anyhow!("--timeout: {e}"))
}

fn emit<T: serde::Serialize>(output: Output, json: &T, table: impl FnOnce() -> String) -> anyhow::Result<()> {
    match output {
        Output::Json => print_out(&(serde_json::to_string_pretty(json)? + "\n")),
        Output::Table => print_out(&table()),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        Cmd::Completions { shell } => {
            let mut cmd = <Args as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "shoal", &mut std::io::stdout());
        }
        Cmd::Workers { cmd: WorkersCmd::List(conn) } => {
            let st: ClusterStatus = connect(&conn)?.call_typed(GetStatus {}).await?;
            emit(conn.output, &status::to_json(&st).workers, || admin::workers_table(&st))?;
        }
        Cmd::Masters { cmd: MastersCmd::List(conn) } => {
            let l: MasterList = connect(&conn)?.call_typed(ListMasters {}).await?;
            emit(conn.output, &masters::to_json(&l), || masters::to_table(&l))?;
        }
        Cmd::Masters { cmd: MastersCmd::Add { id, addr, timeout, conn } } => {
            let limit = parse_timeout(&timeout)?;
            let req = masters::add_request(id, &addr, limit)?;
            let l: MasterList = connect_for_change(&conn, limit)?.call_typed(req).await?;
            emit(conn.output, &masters::to_json(&l), || format!("added master {id}\n{}", masters::to_table(&l)))?;
        }
        Cmd::Masters { cmd: MastersCmd::Remove { id, timeout, conn } } => {
            let limit = parse_timeout(&timeout)?;
            let req = masters::remove_request(id, limit)?;
            let l: MasterList = connect_for_change(&conn, limit)?.call_typed(req).await?;
            emit(conn.output, &masters::to_json(&l), || format!("removed master {id}\n{}", masters::to_table(&l)))?;
        }
        Cmd::Shuffles { cmd: ListCmd::List(conn) } => {
            let l: ShuffleList = connect(&conn)?.call_typed(ListShuffles {}).await?;
            emit(conn.output, &admin::shuffles_json(&l), || admin::shuffles_table(&l))?;
        }
        Cmd::Apps { cmd: ListCmd::List(conn) } => {
            let l: AppList = connect(&conn)?.call_typed(ListApps {}).await?;
            emit(conn.output, &admin::apps_json(&l), || admin::apps_table(&l))?;
        }
        Cmd::Worker { cmd: WorkerCmd::Recommission { id, conn } } => {
            let _: Ack = connect(&conn)?.call_typed(RecommissionWorker { worker: WorkerId::new(id)? }).await?;
        }
        Cmd::Worker { cmd: WorkerCmd::Remove { id, conn } } => {
            let _: Ack = connect(&conn)?.call_typed(RemoveWorker { worker: WorkerId::new(id)? }).await?;
        }
        Cmd::Worker { cmd: WorkerCmd::Decommission { id, wait, timeout, conn } } => {
            let mc = connect(&conn)?;
            let limit = parse_timeout(&timeout)?;
            let bar = match (wait, conn.output) {
                (true, Output::Table) => indicatif::ProgressBar::new(0),
                _ => indicatif::ProgressBar::hidden(),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template("draining [{bar:40}] {bytes}/{total_bytes} spilled, {elapsed}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let worker = WorkerId::new(id)?;
            let report = admin::decommission(&mc, &worker, wait.then_some(limit), |left, start| {
                bar.set_length(start.max(left));
                bar.set_position(start.saturating_sub(left));
            })
            .await;
            bar.finish_and_clear();
            let report = report?;
            emit(conn.output, &report, || {
                format!(
                    "{}: {} ({} bytes drained in {:.1} s)\n",
                    report.worker, report.state, report.bytes_at_start, report.seconds
                )
            })?;
        }
        Cmd::Status(conn) => {
            let st: ClusterStatus = connect(&conn)?.call_typed(GetStatus {}).await?;
            emit(conn.output, &status::to_json(&st), || status::to_table(&st))?;
        }
        Cmd::Certs { cmd: CertsCmd::Ca { out, name, days } } => {
            let w = certs::make_ca(&out, &name, days)?;
            print_out(&format!(
                "wrote {} and {}; keep the key out of the cluster\n",
                w.cert.display(),
                w.key.display()
            ))?;
        }
        Cmd::Certs { cmd: CertsCmd::Node { ca_dir, name, dns, ip, days, out } } => {
            let w = certs::make_node(&ca_dir, &out, &certs::node_spec(name, dns, ip, days))?;
            print_out(&format!("wrote {} and {}\n", w.cert.display(), w.key.display()))?;
        }
        Cmd::Auth { cmd: AuthCmd::Init { out, tenant, admin } } => {
            let tenants: Vec<&str> = tenant.iter().map(String::as_str).collect();
            let f = shuffle_proto::auth::init_auth_dir(&out, &tenants, &admin)?;
            print_out(&format!(
                "masters: {} and {}\nadmin credential: {}\n{}",
                f.principals.display(),
                f.signing_keys.display(),
                f.admin.display(),
                f.tenants.iter().map(|(t, p)| format!("tenant {t}: {}\n", p.display())).collect::<String>()
            ))?;
        }
        Cmd::Auth { cmd: AuthCmd::Principal { name, admin, out } } => {
            let (cred, line) = shuffle_proto::auth::Principals::new_secret(&name)?;
            std::fs::create_dir_all(&out)?;
            let path = out.join(format!("{name}.credential"));
            shuffle_proto::auth::write_private(&path, &format!("{cred}\n"))?;
            let table = if admin { "[admins]" } else { "[tenants]" };
            print_out(&format!("wrote {}\nadd under {table} in principals.toml:\n{line}\n", path.display()))?;
        }
        Cmd::Auth { cmd: AuthCmd::Key { id } } => {
            let file = shuffle_proto::auth::SigningKeys::generate_file(id)?;
            let line = file.lines().find(|l| l.starts_with(&format!("{id} ="))).unwrap_or_default();
            print_out(&format!("{line}\n"))?;
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
