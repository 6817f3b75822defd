//! A throwaway Redis server reachable only over TLS with a client certificate.
//!
//! The plain port is disabled (`--port 0`) and `--tls-auth-clients yes` makes the
//! certificate mandatory. Nothing is persisted (`--save ""`, no AOF), so a restart comes
//! back on the same port with an empty keyspace, which is what a node must survive.

use super::certs::CertFiles;
use super::process::{log_len, log_since, EngineCommand, Supervised};
use super::{find_in_path, free_port, lock, port_open, temp_dir};
use anyhow::{anyhow, bail, Context};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running (or killed) `redis-server` on `127.0.0.1`. Dropping it kills the process and
/// deletes its directory.
pub struct Redis {
    bin: PathBuf,
    args: Vec<OsString>,
    dir: PathBuf,
    log: PathBuf,
    port: u16,
    cleanup: PathBuf,
    proc: Mutex<Option<Supervised>>,
    _tmp: Option<TempDir>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("port", &self.port)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Starts `redis-server` in a new temporary directory and waits for its TLS port.
    pub fn launch(certs: &CertFiles) -> anyhow::Result<Redis> {
        let tmp = temp_dir("parlor-redis-")?;
        let dir = tmp.path().to_owned();
        Redis::launch_in(&dir, certs, &dir, Some(tmp))
    }

    pub(crate) fn launch_in(
        dir: &Path,
        certs: &CertFiles,
        cleanup: &Path,
        tmp: Option<TempDir>,
    ) -> anyhow::Result<Redis> {
        let bin = find_in_path("redis-server").ok_or_else(|| {
            anyhow!("redis-server not found in PATH: apt-get install redis-server")
        })?;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let port = free_port()?;
        let mut args: Vec<OsString> = Vec::new();
        let mut opt = |k: &str, v: &dyn AsRef<std::ffi::OsStr>| {
            args.push(format!("--{k}").into());
            args.push(v.as_ref().to_owned());
        };
        opt("bind", &"127.0.0.1");
        opt("port", &"0");
        opt("tls-port", &port.to_string());
        opt("tls-cert-file", &certs.server_cert_file);
        opt("tls-key-file", &certs.server_key_file);
        opt("tls-ca-cert-file", &certs.ca_file);
        opt("tls-auth-clients", &"yes");
        opt("save", &"");
        opt("appendonly", &"no");
        opt("dir", &dir);
        let redis = Redis {
            bin,
            args,
            dir: dir.to_owned(),
            log: dir.join("redis.log"),
            port,
            cleanup: cleanup.to_owned(),
            proc: Mutex::new(None),
            _tmp: tmp,
        };
        redis.start()?;
        Ok(redis)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rediss://127.0.0.1:PORT` (TLS; the client must present the client certificate).
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    pub fn log_file(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> Option<u32> {
        lock(&self.proc)
            .as_mut()
            .and_then(|p| p.is_running().then(|| p.pid()))
    }

    /// Whether the process runs and its TLS port accepts connections.
    pub fn is_up(&self) -> bool {
        let running = lock(&self.proc).as_mut().is_some_and(|p| p.is_running());
        running && port_open(self.port)
    }

    /// SIGKILL and wait until the process is gone.
    pub fn kill(&self) -> anyhow::Result<()> {
        if let Some(mut p) = lock(&self.proc).take() {
            p.kill().context("kill redis-server")?;
        }
        Ok(())
    }

    /// Starts the server on the same port (nothing happens if it runs) and waits until
    /// the port accepts connections. The keyspace starts empty.
    pub fn start(&self) -> anyhow::Result<()> {
        let mut proc = lock(&self.proc);
        if let Some(p) = proc.as_mut() {
            if p.is_running() {
                return Ok(());
            }
        }
        *proc = None;
        let offset = log_len(&self.log);
        let mut p = Supervised::spawn(EngineCommand {
            name: "redis",
            program: &self.bin,
            args: self.args.clone(),
            run_as: None,
            cwd: &self.dir,
            log: &self.log,
            stop_signal: "KILL",
            cleanup: Some(&self.cleanup),
        })?;
        let deadline = Instant::now() + START_TIMEOUT;
        // Redis binds its port after initialising and loads nothing, so an accepting
        // port means ready.
        while !port_open(self.port) {
            if !p.is_running() {
                bail!(
                    "redis-server exited during start-up; log:\n{}",
                    log_since(&self.log, offset, 4000)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "redis-server not listening within {}s; log:\n{}",
                    START_TIMEOUT.as_secs(),
                    log_since(&self.log, offset, 4000)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        *proc = Some(p);
        Ok(())
    }

    /// Kills the server (if it runs) and starts it again: same port, empty keyspace.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.kill()?;
        self.start()
    }
}
