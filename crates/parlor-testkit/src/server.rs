//! Starting, stopping and restarting the real `parlor` binary.

use crate::engines::{shared_engines, ClusterSpec, BACKEND_ENV};
use crate::{self_signed, unique_name};
use anyhow::{anyhow, bail, Context};
use parlor_client::proto::Id;
use parlor_client::{Http, WsClient};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long the server may take to print its address, or to exit after SIGTERM.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

/// Set to a few messages for every test server unless the test or the caller's
/// environment sets it.
const PENDING_MESSAGES_ENV: &str = "PARLOR_LIMITS__PENDING_MESSAGES";

/// Rate rules the test kit relaxes by default (see [`relaxed_rate_limits`]).
pub const RELAXED_RATE_RULES: &[&str] = &[
    "REGISTER_PER_IP",
    "LOGIN_PER_IP",
    "LOGIN_PER_USER",
    "CONNECT_PER_IP",
    "CONNECT_PER_USER",
    "REST_PER_USER",
    "FRAMES_PER_CONNECTION",
];

/// The environment [`TestServer::start`] adds so that tests registering many users from
/// `127.0.0.1` are not throttled by the production defaults (e.g. 10 registrations per
/// IP): `PARLOR_RATE__<RULE>__BURST=100000` and `..._PER_SECOND=100000` for each rule in
/// [`RELAXED_RATE_RULES`].
///
/// A rule is left alone (server default or test value) when the test's
/// [`ServerOptions::env`] or the inherited process environment sets *any* key of it, so
/// `with_env("PARLOR_RATE__LOGIN_PER_IP__BURST", "3")` alone gives a real limit of 3 with
/// the default refill rate, not 3 with an instant refill. Rate-limit tests set both keys.
pub fn relaxed_rate_limits(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for rule in RELAXED_RATE_RULES {
        let prefix = format!("PARLOR_RATE__{rule}__");
        let set_by_test = env.iter().any(|(k, _)| k.starts_with(&prefix))
            || std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with(&prefix));
        if !set_by_test {
            out.push((format!("{prefix}BURST"), "100000".to_owned()));
            out.push((format!("{prefix}PER_SECOND"), "100000".to_owned()));
        }
    }
    out
}

/// What a [`TestServer`] stores its data in.
#[derive(Debug, Clone)]
pub enum Backend {
    /// SQLite and the in-process bus in the data directory (the binary's default).
    Embedded,
    /// Cluster mode on the engines of this spec; nodes sharing a spec form one cluster.
    Cluster(ClusterSpec),
}

/// The backend for options that chose none, from `PARLOR_TEST_BACKEND`: unset, empty or
/// `embedded` for [`Backend::Embedded`]; `cluster` for a fresh [`ClusterSpec`] on
/// [`shared_engines`] (failing, not skipping, when the engines are missing).
pub fn default_backend() -> anyhow::Result<Backend> {
    match std::env::var(BACKEND_ENV).as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("" | "embedded") => Ok(Backend::Embedded),
        Ok("cluster") => {
            let engines = shared_engines()
                .with_context(|| format!("{BACKEND_ENV}=cluster needs the engines"))?;
            Ok(Backend::Cluster(engines.spec_for_new_test()?))
        }
        Ok(other) => bail!("{BACKEND_ENV}={other:?}: expected `embedded` or `cluster`"),
        Err(e) => bail!("{BACKEND_ENV}: {e}"),
    }
}

/// How to start a [`TestServer`].
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Serve HTTPS/WSS with a throwaway self-signed certificate.
    pub tls: bool,
    /// Extra environment variables. `RUST_LOG` defaults to `warn` unless given here, rate
    /// limits are relaxed unless given here (see [`relaxed_rate_limits`]), and the
    /// embedded store's message tail is 4 messages long.
    pub env: Vec<(String, String)>,
    /// Extra command-line arguments, appended after the ones the test kit passes.
    pub args: Vec<String>,
    /// Use this data directory instead of a temporary one (which is then not deleted).
    pub data_dir: Option<PathBuf>,
    /// `None`: decided by `PARLOR_TEST_BACKEND` at start (see [`default_backend`]).
    pub backend: Option<Backend>,
    /// The cluster node name; a unique one is generated when `None`. Ignored by the
    /// embedded backend.
    pub node_name: Option<String>,
}

impl ServerOptions {
    /// Options for a cluster node on `spec` (see [`ServerOptions::with_cluster`]).
    pub fn cluster(spec: &ClusterSpec) -> Self {
        ServerOptions::default().with_cluster(spec)
    }

    /// Run in cluster mode on `spec`, whatever `PARLOR_TEST_BACKEND` says.
    pub fn with_cluster(mut self, spec: &ClusterSpec) -> Self {
        self.backend = Some(Backend::Cluster(spec.clone()));
        self
    }

    /// Run on the embedded store, whatever `PARLOR_TEST_BACKEND` says (for tests of
    /// embedded-only behaviour such as the SQLite files).
    pub fn with_embedded(mut self) -> Self {
        self.backend = Some(Backend::Embedded);
        self
    }

    pub fn with_node_name(mut self, name: impl Into<String>) -> Self {
        self.node_name = Some(name.into());
        self
    }

    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }

    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn with_arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }
}

struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    pem: Vec<u8>,
}

/// A running `parlor serve` process on `127.0.0.1` with a free port. Dropping it kills
/// the process and deletes the temporary directory.
pub struct TestServer {
    bin: PathBuf,
    opts: ServerOptions,
    data_dir: PathBuf,
    tls: Option<TlsFiles>,
    child: Child,
    base_url: String,
    http: Http,
    /// Holds the data directory (unless one was given) and the TLS files. Declared last
    /// so that it is removed after the process is gone.
    _tmp: TempDir,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("pid", &self.child.id())
            .field("base_url", &self.base_url)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// Spawns `bin serve --listen 127.0.0.1:0 --data-dir DIR [--tls-cert C --tls-key K]
    /// ARGS...` and waits (at most 20 s) for the `listening on <url>` line on stdout.
    /// Rate limits are relaxed unless the test sets them (see [`relaxed_rate_limits`]).
    ///
    /// In cluster mode (chosen in `opts` or by `PARLOR_TEST_BACKEND=cluster`) the node
    /// also gets the `PARLOR_CLUSTER__*` environment of its [`ClusterSpec`]; the resolved
    /// spec and node name are kept, so [`TestServer::restart`] comes back on the same
    /// database and namespace.
    pub fn start(bin: &Path, mut opts: ServerOptions) -> anyhow::Result<TestServer> {
        if opts.backend.is_none() {
            opts.backend = Some(default_backend()?);
        }
        if matches!(opts.backend, Some(Backend::Cluster(_))) && opts.node_name.is_none() {
            opts.node_name = Some(unique_name("node"));
        }
        let tmp = tempfile::Builder::new()
            .prefix("parlor-test-")
            .tempdir()
            .context("create temporary directory")?;
        let data_dir = match &opts.data_dir {
            Some(dir) => dir.clone(),
            None => tmp.path().join("data"),
        };
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("create {}", data_dir.display()))?;
        let tls = if opts.tls {
            let (cert, key, pem) = self_signed(&tmp.path().join("tls"))?;
            Some(TlsFiles { cert, key, pem })
        } else {
            None
        };
        let (child, base_url) = spawn(bin, &opts, &data_dir, tls.as_ref())?;
        let http = match Http::new(&base_url, tls.as_ref().map(|t| t.pem.as_slice())) {
            Ok(http) => http,
            Err(e) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                return Err(e).context("build HTTP client");
            }
        };
        Ok(TestServer {
            bin: bin.to_owned(),
            opts,
            data_dir,
            tls,
            child,
            base_url,
            http,
            _tmp: tmp,
        })
    }

    /// E.g. `http://127.0.0.1:41234` or `https://127.0.0.1:41234` (the certificate
    /// covers the IP address as well as `localhost`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A REST client for this server, trusting its certificate when TLS is on.
    pub fn http(&self) -> Http {
        self.http.clone()
    }

    /// Opens a WebSocket and sends `hello` with `token` and `since`.
    pub async fn ws(&self, token: &str, since: Option<Id>) -> parlor_client::Result<WsClient> {
        WsClient::connect(&self.base_url, self.ca_pem_ref(), token, since).await
    }

    /// Opens a WebSocket with extra upgrade headers and sends nothing.
    pub async fn ws_raw(
        &self,
        extra_headers: Vec<(String, String)>,
    ) -> parlor_client::Result<WsClient> {
        WsClient::connect_raw(&self.base_url, self.ca_pem_ref(), extra_headers).await
    }

    /// The certificate PEM to trust, when TLS is on.
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        self.tls.as_ref().map(|t| t.pem.clone())
    }

    fn ca_pem_ref(&self) -> Option<&[u8]> {
        self.tls.as_ref().map(|t| t.pem.as_slice())
    }

    /// The process id of the current server process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    /// The spec this node runs on, in cluster mode.
    pub fn cluster_spec(&self) -> Option<&ClusterSpec> {
        match &self.opts.backend {
            Some(Backend::Cluster(spec)) => Some(spec),
            _ => None,
        }
    }

    /// This node's `PARLOR_CLUSTER__NODE_NAME`, in cluster mode.
    pub fn node_name(&self) -> Option<&str> {
        self.cluster_spec().and(self.opts.node_name.as_deref())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, then reap the process. Nothing happens if it already exited.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            self.child.kill().context("kill server")?;
        }
        self.child.wait().context("wait for server")?;
        Ok(())
    }

    /// Sends SIGTERM without waiting, for tests that watch the shutdown from a client
    /// (then call [`TestServer::wait_exit`]).
    pub fn send_sigterm(&mut self) -> anyhow::Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("run kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed: {status}", self.child.id());
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("wait for server")? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait up to 20 s for a graceful exit and return its status. If the
    /// process does not exit in time it is killed and an error returned.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        self.send_sigterm()?;
        match self.wait_exit(SHUTDOWN_TIMEOUT)? {
            Some(status) => Ok(status),
            None => {
                let _ = self.kill();
                bail!(
                    "server did not exit within {}s of SIGTERM",
                    SHUTDOWN_TIMEOUT.as_secs()
                )
            }
        }
    }

    /// Sets (or replaces) an environment variable for the next [`TestServer::restart`].
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.opts.env.retain(|(k, _)| k != key);
        self.opts.env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts the server again with the same data directory, certificate, environment
    /// and arguments (killing it first if it still runs). The port may change;
    /// [`TestServer::base_url`] and [`TestServer::http`] follow it.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        let (child, base_url) = spawn(&self.bin, &self.opts, &self.data_dir, self.tls.as_ref())?;
        self.child = child;
        self.http = Http::new(&base_url, self.ca_pem_ref()).context("build HTTP client")?;
        self.base_url = base_url;
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Spawns the server and waits for its address. On failure the process is killed.
fn spawn(
    bin: &Path,
    opts: &ServerOptions,
    data_dir: &Path,
    tls: Option<&TlsFiles>,
) -> anyhow::Result<(Child, String)> {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir);
    if let Some(tls) = tls {
        cmd.arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(&tls.key);
    }
    cmd.args(&opts.args);
    cmd.envs(cluster_env(opts));
    if !opts.env.iter().any(|(k, _)| k == "RUST_LOG") {
        cmd.env("RUST_LOG", "warn");
    }
    cmd.envs(relaxed_rate_limits(&opts.env));
    // A tail of a few messages, so that every test reads the embedded store's messages
    // from both of its tables (`writer/tail.rs` in parlor-embedded), not only the tail.
    if !opts.env.iter().any(|(k, _)| k == PENDING_MESSAGES_ENV)
        && std::env::var_os(PENDING_MESSAGES_ENV).is_none()
    {
        cmd.env(PENDING_MESSAGES_ENV, "4");
    }
    cmd.envs(opts.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    match wait_for_address(&mut child, tls.is_some()) {
        Ok(url) => Ok((child, url)),
        Err(e) => {
            let _ = child.kill();
            let status = child.wait().ok();
            Err(e.context(format!(
                "starting {} (exit status: {status:?})",
                bin.display()
            )))
        }
    }
}

/// The cluster-mode environment of a node, empty for the embedded backend. Applied
/// before [`ServerOptions::env`], so a test can still override any variable.
pub fn cluster_env(opts: &ServerOptions) -> Vec<(String, String)> {
    match (&opts.backend, &opts.node_name) {
        (Some(Backend::Cluster(spec)), Some(node)) => spec.env(node),
        (Some(Backend::Cluster(spec)), None) => spec.env("node"),
        _ => Vec::new(),
    }
}

fn wait_for_address(child: &mut Child, tls: bool) -> anyhow::Result<String> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("server stdout is not piped"))?;
    let rx = drain_stdout(stdout)?;
    match rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(url) => Ok(normalize_url(&url, tls)),
        Err(mpsc::RecvTimeoutError::Timeout) => bail!(
            "no `listening on` line within {}s",
            STARTUP_TIMEOUT.as_secs()
        ),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            bail!("server closed stdout before printing `listening on`")
        }
    }
}

/// Reads stdout on a thread for the process's lifetime so the pipe never fills; the
/// first `listening on <url>` is sent back, every other line is echoed to stderr.
fn drain_stdout(stdout: ChildStdout) -> anyhow::Result<mpsc::Receiver<String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("parlor-stdout".into())
        .spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.is_some() {
                    if let Some(url) = address_in(&line) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(url);
                        }
                        continue;
                    }
                }
                eprintln!("[parlor stdout] {line}");
            }
        })
        .context("spawn stdout reader thread")?;
    Ok(rx)
}

fn address_in(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("listening on ")?;
    rest.split_whitespace().next().map(str::to_owned)
}

fn normalize_url(url: &str, tls: bool) -> String {
    let url = url.trim_end_matches('/');
    if url.contains("://") {
        url.to_owned()
    } else if tls {
        format!("https://{url}")
    } else {
        format!("http://{url}")
    }
}

/// Finds the `parlor` binary for tests outside the `parlor` package: `$PARLOR_BIN`,
/// then `$CARGO_BIN_EXE_parlor`, then `parlor` next to the test executable's `deps/`
/// directory (`target/<profile>/parlor`). It does not build the binary.
pub fn parlor_bin() -> anyhow::Result<PathBuf> {
    for var in ["PARLOR_BIN", "CARGO_BIN_EXE_parlor"] {
        if let Some(path) = std::env::var_os(var) {
            return Ok(PathBuf::from(path));
        }
    }
    let exe = std::env::current_exe().context("locate test executable")?;
    let mut dir = exe.parent().map(Path::to_path_buf);
    if dir.as_deref().and_then(Path::file_name) == Some("deps".as_ref()) {
        dir = dir.as_deref().and_then(Path::parent).map(Path::to_path_buf);
    }
    let candidate = dir
        .map(|d| d.join(format!("parlor{}", std::env::consts::EXE_SUFFIX)))
        .ok_or_else(|| anyhow!("test executable has no parent directory"))?;
    if candidate.is_file() {
        Ok(candidate)
    } else {
        bail!(
            "parlor binary not found at {} (set PARLOR_BIN or build it first)",
            candidate.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_address() {
        assert_eq!(
            address_in("parlor listening on http://127.0.0.1:41234").as_deref(),
            Some("http://127.0.0.1:41234")
        );
        assert_eq!(address_in("starting"), None);
        assert_eq!(normalize_url("127.0.0.1:1/", true), "https://127.0.0.1:1");
    }

    #[test]
    fn test_env_keeps_its_rate_rules() {
        let env = vec![(
            "PARLOR_RATE__LOGIN_PER_IP__BURST".to_owned(),
            "3".to_owned(),
        )];
        let relaxed = relaxed_rate_limits(&env);
        assert!(relaxed.iter().all(|(k, _)| !k.contains("LOGIN_PER_IP")));
        assert!(relaxed
            .iter()
            .any(|(k, _)| k == "PARLOR_RATE__REGISTER_PER_IP__BURST"));
    }
}
