//! A throwaway PostgreSQL server that accepts only TLS connections with a client
//! certificate.
//!
//! `initdb` and `postgres` refuse to run as root, and CI runs as root, so as root the
//! data directory is handed to the `postgres` OS user (created by Debian's
//! `postgresql-common`) and both run through `setpriv` as that user. Administration
//! (creating databases) goes over a Unix socket in the temporary directory with `trust`
//! authentication; TCP on `127.0.0.1` accepts only `hostssl ... cert`, i.e. TLS with a
//! client certificate whose CN is the role (`parlor`).

use super::certs::CertFiles;
use super::process::{log_len, log_since, EngineCommand, Supervised};
use super::{find_in_path, free_port, is_root, lock, make_traversable, temp_dir};
use anyhow::{anyhow, bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The superuser `initdb` creates, and the CN of the client certificate.
pub const PG_USER: &str = "parlor";

/// How long a start may take, including waiting for the backends of a killed server to
/// go away.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The PostgreSQL programs of one installation.
#[derive(Debug, Clone)]
pub struct PgBins {
    pub postgres: PathBuf,
    pub initdb: PathBuf,
    pub psql: PathBuf,
}

impl PgBins {
    /// `postgres` from `PATH` (or a system `bin`), else from the highest
    /// `/usr/lib/postgresql/*/bin/`; `initdb` and `psql` from the same installation when
    /// it has them (a `PATH` entry is often a symlink into it), else from `PATH`.
    pub fn find() -> Option<PgBins> {
        let postgres = find_in_path("postgres").or_else(|| {
            let dir = debian_bin_dir()?;
            let p = dir.join("postgres");
            p.is_file().then_some(p)
        })?;
        let install_dir = std::fs::canonicalize(&postgres)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let sibling = |name: &str| {
            install_dir
                .as_ref()
                .map(|d| d.join(name))
                .filter(|p| p.is_file())
                .or_else(|| find_in_path(name))
                .or_else(|| {
                    debian_bin_dir()
                        .map(|d| d.join(name))
                        .filter(|p| p.is_file())
                })
        };
        Some(PgBins {
            initdb: sibling("initdb")?,
            psql: sibling("psql")?,
            postgres,
        })
    }
}

/// `/usr/lib/postgresql/<highest version>/bin`.
fn debian_bin_dir() -> Option<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let Ok(version) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join("postgres").is_file() && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

/// Admin access over the Unix socket; cheap to clone, needs no reference to the server.
#[derive(Debug, Clone)]
pub(crate) struct PgAdmin {
    psql: PathBuf,
    socket_dir: PathBuf,
    port: u16,
}

impl PgAdmin {
    /// Runs `sql` in `database` as the superuser; returns `psql -At` output.
    pub(crate) fn run(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(&self.psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", PG_USER, "-d", database, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {}", self.psql.display()))?;
        if !out.status.success() {
            bail!(
                "psql {sql:?} in {database} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    pub(crate) fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        check_identifier(name)?;
        self.run(
            "postgres",
            &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        )
        .map(drop)
    }
}

/// A running (or stopped) PostgreSQL server on `127.0.0.1` with a fixed port. Dropping it
/// shuts the server down (immediate mode) and deletes its directory.
pub struct Postgres {
    bins: PgBins,
    run_as: Option<&'static str>,
    dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
    cleanup: PathBuf,
    proc: Mutex<Option<Supervised>>,
    /// Declared after `proc` so that the server is gone before its files.
    _tmp: Option<TempDir>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Postgres {
    /// `initdb` in a new temporary directory, then starts the server with TLS and client
    /// certificate authentication, and waits until it accepts connections.
    pub fn launch(certs: &CertFiles) -> anyhow::Result<Postgres> {
        let tmp = temp_dir("parlor-postgres-")?;
        let dir = tmp.path().to_owned();
        Postgres::launch_in(&dir, certs, &dir, Some(tmp), false)
    }

    /// As [`Postgres::launch`], in `dir` (created), which the guard removes if the test
    /// process dies (`cleanup`, usually the enclosing temporary directory). `fsync`:
    /// durable settings (see [`super::EngineOptions::postgres_fsync`]) instead of the
    /// tests' `fsync = off`.
    pub(crate) fn launch_in(
        dir: &Path,
        certs: &CertFiles,
        cleanup: &Path,
        tmp: Option<TempDir>,
        fsync: bool,
    ) -> anyhow::Result<Postgres> {
        let bins = PgBins::find().ok_or_else(|| {
            anyhow!(
                "PostgreSQL not found (postgres, initdb, psql in PATH or \
                 /usr/lib/postgresql/*/bin): apt-get install postgresql"
            )
        })?;
        let run_as = is_root()?.then_some("postgres");
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let socket_dir = dir.join("socket");
        std::fs::create_dir_all(&socket_dir)
            .with_context(|| format!("create {}", socket_dir.display()))?;
        // PostgreSQL insists that its key belongs to it and is private, so it gets its
        // own copies rather than the shared files.
        let tls_dir = dir.join("tls");
        std::fs::create_dir_all(&tls_dir)
            .with_context(|| format!("create {}", tls_dir.display()))?;
        let server_crt = tls_dir.join("server.crt");
        let server_key = tls_dir.join("server.key");
        let ca_crt = tls_dir.join("ca.crt");
        copy(&certs.server_cert_file, &server_crt)?;
        copy(&certs.server_key_file, &server_key)?;
        copy(&certs.ca_file, &ca_crt)?;
        if let Some(user) = run_as {
            make_traversable(dir)?;
            chown_recursive(dir, user)?;
        }

        let data_dir = dir.join("data");
        let log = dir.join("postgres.log");
        let started = Instant::now();
        initdb(&bins, run_as, &data_dir, dir)?;
        let initdb_took = started.elapsed();

        let port = free_port()?;
        // fsync and full-page writes only protect against an OS crash, which a test
        // never survives anyway. synchronous_commit stays on: with it off a COMMIT
        // returns before its WAL record is written, and a SIGKILLed server (the failure
        // tests' tool) loses commits a node already acknowledged. With fsync off it
        // costs about 0.3 ms per commit (pgbench: 4,700 vs 7,000 TPS on 2 cores).
        // Benchmarks may ask for the durable settings instead.
        let durability = if fsync { "on" } else { "off" };
        let conf = format!(
            "\n# parlor-testkit\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket}'\n\
             ssl = on\n\
             ssl_cert_file = '{cert}'\n\
             ssl_key_file = '{key}'\n\
             ssl_ca_file = '{ca}'\n\
             max_connections = 400\n\
             fsync = {durability}\n\
             full_page_writes = {durability}\n",
            socket = conf_path(&socket_dir)?,
            cert = conf_path(&server_crt)?,
            key = conf_path(&server_key)?,
            ca = conf_path(&ca_crt)?,
        );
        append(&data_dir.join("postgresql.conf"), &conf)?;
        // Replaces the file initdb wrote: nothing but these two lines may match.
        std::fs::write(
            data_dir.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 cert\n",
        )
        .context("write pg_hba.conf")?;

        let pg = Postgres {
            bins,
            run_as,
            dir: dir.to_owned(),
            data_dir,
            socket_dir,
            log,
            port,
            cleanup: cleanup.to_owned(),
            proc: Mutex::new(None),
            _tmp: tmp,
        };
        pg.start()
            .with_context(|| format!("start PostgreSQL (initdb took {initdb_took:?})"))?;
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where the admin socket is (`psql -h <this>`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server's log (stderr), kept across restarts.
    pub fn log_file(&self) -> &Path {
        &self.log
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.proc)
            .as_mut()
            .and_then(|p| p.is_running().then(|| p.pid()))
    }

    /// `postgres://parlor@127.0.0.1:PORT/DATABASE?sslmode=require`. The client must also
    /// present the client certificate; `sslmode=require` is what `tokio-postgres`
    /// understands, and the node verifies the server against the CA on its own.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{PG_USER}@127.0.0.1:{}/{database}?sslmode=require",
            self.port
        )
    }

    /// Creates an empty database (`name`: lower-case letters, digits, `_`) and returns
    /// its URL (see [`Postgres::url`]).
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        check_identifier(name)?;
        self.admin()
            .run("postgres", &format!("CREATE DATABASE \"{name}\""))
            .with_context(|| format!("create database {name}"))?;
        Ok(self.url(name))
    }

    /// Drops a database, disconnecting its sessions.
    pub fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        self.admin().drop_database(name)
    }

    /// Runs `sql` in `database` as the superuser over the Unix socket and returns the
    /// unaligned, tuples-only output (`psql -At`).
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        self.admin().run(database, sql)
    }

    pub(crate) fn admin(&self) -> PgAdmin {
        PgAdmin {
            psql: self.bins.psql.clone(),
            socket_dir: self.socket_dir.clone(),
            port: self.port,
        }
    }

    /// Whether the postmaster runs and reports that it accepts connections.
    pub fn is_up(&self) -> bool {
        let pid = self.pid();
        pid.is_some_and(|pid| pid_file_ready(&self.data_dir, pid))
    }

    /// SIGKILL the postmaster and wait until it is gone. Its backends notice and exit on
    /// their own shortly after; [`Postgres::start`] waits for them.
    pub fn kill(&self) -> anyhow::Result<()> {
        if let Some(mut p) = lock(&self.proc).take() {
            p.kill().context("kill PostgreSQL")?;
        }
        Ok(())
    }

    /// Fast shutdown (SIGINT: sessions are disconnected, a checkpoint is written).
    pub fn stop(&self) -> anyhow::Result<()> {
        if let Some(mut p) = lock(&self.proc).take() {
            p.stop_with("INT").context("stop PostgreSQL")?;
        }
        Ok(())
    }

    /// Starts the server on the same data directory and port (after [`Postgres::kill`] or
    /// [`Postgres::stop`]; nothing happens if it runs) and waits until it accepts
    /// connections. After a kill, the old backends may still hold the shared memory for a
    /// moment, so a start that fails for that reason is retried.
    pub fn start(&self) -> anyhow::Result<()> {
        let mut proc = lock(&self.proc);
        if let Some(p) = proc.as_mut() {
            if p.is_running() {
                return Ok(());
            }
        }
        *proc = None;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let offset = log_len(&self.log);
            let mut p = Supervised::spawn(EngineCommand {
                name: "postgres",
                program: &self.bins.postgres,
                args: vec!["-D".into(), self.data_dir.clone().into()],
                run_as: self.run_as,
                cwd: &self.dir,
                log: &self.log,
                // Immediate shutdown: unlike SIGKILL it removes the shared memory segment.
                stop_signal: "QUIT",
                cleanup: Some(&self.cleanup),
            })?;
            loop {
                if !p.is_running() {
                    break;
                }
                if pid_file_ready(&self.data_dir, p.pid()) {
                    *proc = Some(p);
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    drop(p);
                    bail!(
                        "PostgreSQL not ready within {}s; log:\n{}",
                        START_TIMEOUT.as_secs(),
                        log_since(&self.log, offset, 4000)
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let log = log_since(&self.log, offset, 4000);
            let transient = [
                "pre-existing shared memory block",
                "already in use",
                "lock file",
            ]
            .iter()
            .any(|s| log.contains(s));
            if !transient || Instant::now() >= deadline {
                bail!("PostgreSQL exited during start-up; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fast shutdown, then start on the same data and port.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop()?;
        self.start()
    }
}

/// `pg_ctl -w` does the same: the postmaster writes `ready` into line 8 of
/// `postmaster.pid` once it accepts connections. The pid check skips the stale file a
/// killed server leaves behind.
fn pid_file_ready(data_dir: &Path, pid: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let lines: Vec<&str> = text.lines().collect();
    lines.first().and_then(|l| l.trim().parse::<u32>().ok()) == Some(pid)
        && lines.get(7).is_some_and(|l| l.trim() == "ready")
}

fn initdb(bins: &PgBins, run_as: Option<&str>, data_dir: &Path, cwd: &Path) -> anyhow::Result<()> {
    let mut cmd = match (run_as, find_in_path("setpriv")) {
        (Some(user), Some(setpriv)) => {
            let mut cmd = Command::new(setpriv);
            cmd.arg(format!("--reuid={user}"))
                .arg(format!("--regid={user}"))
                .args(["--init-groups", "--"])
                .arg(&bins.initdb);
            cmd
        }
        (Some(_), None) => bail!("setpriv (util-linux) not found: needed to run initdb"),
        (None, _) => Command::new(&bins.initdb),
    };
    // C.UTF-8 (built into glibc since 2.35) keeps collation byte-wise and predictable
    // while upper()/lower() still know non-ASCII letters. -N: no fsync, it is thrown away.
    let locale = if Path::new("/usr/lib/locale/C.utf8").exists() {
        "C.UTF-8"
    } else {
        "C"
    };
    let out = cmd
        .arg("-D")
        .arg(data_dir)
        .args(["-U", PG_USER, "--auth=trust", "-E", "UTF8", "-N"])
        .arg(format!("--locale={locale}"))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", bins.initdb.display()))?;
    if !out.status.success() {
        bail!(
            "initdb failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn chown_recursive(dir: &Path, user: &str) -> anyhow::Result<()> {
    let out = Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:{user}"))
        .arg(dir)
        .output()
        .context("run chown")?;
    if !out.status.success() {
        bail!(
            "chown -R {user} {} failed (does the `{user}` OS user exist? Debian's \
             postgresql-common creates it): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `std::fs::copy` carries the permission bits over, so the key stays 0600; ownership
/// is fixed by the `chown -R` that follows.
fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copy {} to {}", from.display(), to.display()))
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

/// A path as a single-quoted `postgresql.conf` value.
fn conf_path(path: &Path) -> anyhow::Result<String> {
    let s = path
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", path.display()))?;
    if s.contains('\'') {
        bail!("path with a quote: {s}");
    }
    Ok(s.to_owned())
}

/// Database names are interpolated into SQL, so only plain lower-case identifiers.
fn check_identifier(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        bail!("invalid database name {name:?} (use a-z, 0-9, _; at most 63)");
    }
    Ok(())
}
