//! The `parlor` binary: `parlor serve` runs the server; `parlor cert` makes a self-signed
//! certificate for local HTTPS.

use clap::{Parser, Subcommand};
use parlor_server::config::Config;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "parlor",
    version,
    about = "A self-hostable real-time chat server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the chat server: embedded store by default (no external service needed), or
    /// a cluster node on PostgreSQL, NATS JetStream and Redis with `--cluster`.
    Serve(ServeArgs),
    /// Write a self-signed certificate and key for local HTTPS/WSS.
    Cert {
        /// Directory to write cert.pem and key.pem into.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Host names and IP addresses the certificate is valid for.
        #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
        hosts: Vec<String>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long, env = "PARLOR_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./parlor-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS and WSS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Run as a cluster node; the engines come from the `[cluster]` section or
    /// `PARLOR_CLUSTER__*` variables (see docs/cluster.md).
    #[arg(long)]
    cluster: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Cert { out_dir, hosts } => cert(&out_dir, hosts),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let vars = std::env::vars().filter(|(k, _)| k != "PARLOR_CONFIG");
    let mut config = Config::load(args.config.as_deref(), vars)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if args.tls_cert.is_some() {
        config.tls_cert = args.tls_cert;
        config.tls_key = args.tls_key;
    }
    if args.cluster {
        config.cluster.enabled = true;
    }
    config.validate()?;
    init_logging(&config.log_format);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime_threads(cores))
        .enable_all()
        .build()?;
    runtime.block_on(parlor_server::run(config, shutdown_signal(), |url| {
        // A stable line on stdout that scripts and tests wait for.
        println!("parlor listening on {url}");
        let _ = std::io::stdout().flush();
    }))
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn cert(out_dir: &std::path::Path, hosts: Vec<String>) -> anyhow::Result<()> {
    let certified = rcgen::generate_simple_self_signed(hosts)?;
    std::fs::create_dir_all(out_dir)?;
    let cert_path = out_dir.join("cert.pem");
    let key_path = out_dir.join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem())?;
    write_key(&key_path, certified.signing_key.serialize_pem().as_bytes())?;
    println!("wrote {} and {}", cert_path.display(), key_path.display());
    println!(
        "run: parlor serve --tls-cert {} --tls-key {}",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

#[cfg(unix)]
fn write_key(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)?;
    Ok(())
}

#[cfg(not(unix))]
fn write_key(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, data)?;
    Ok(())
}
