//! A throwaway S3-compatible server (`s3s-fs`) for tests of S3 object storage.
//!
//! # Why s3s-fs
//! The S3 adapter's behaviour that matters (request signing, path-style addressing,
//! multipart uploads, ranged reads, error codes) lives in the protocol, so tests talk to
//! a real server rather than a mock. `s3s-fs` is a small Rust binary that serves a
//! directory over the S3 API: each bucket is a directory under its root and each object
//! a file, so a test can also look at what was stored.
//!
//! # Lifetime
//! Like the engines ([`crate::engines`]), the server runs under a `bash` wrapper whose
//! stdin is a pipe only the test process writes to. When the [`S3Server`] is dropped or
//! the test process ends for any reason, even SIGKILL, the pipe closes and the wrapper
//! kills the server and removes its directory.

use crate::engines::{find_in_path, free_port, port_open, temp_dir};
use anyhow::{anyhow, bail, Context};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Overrides where the `s3s-fs` binary is looked for.
pub const S3S_FS_ENV: &str = "PARLOR_TEST_S3S_FS";

/// How `scripts/test` installs the binary (0.14.1: later versions need a newer rustc
/// than the workspace's minimum).
pub const S3S_FS_INSTALL: &str =
    "cargo install --locked s3s-fs@0.14.1 --features binary --root \"${CARGO_TARGET_DIR:-target}/tools\"";

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Start attempts: another process may take the free port before the server binds it.
const START_ATTEMPTS: usize = 3;

/// `$1` the directory to remove once the server is gone, then the server's argv.
///
/// The watcher subshell blocks reading fd 3, the wrapper's stdin: a pipe whose only
/// write end is held by the test process (Rust opens pipes close-on-exec, so no other
/// child inherits it). EOF means the test process dropped the [`S3Server`] or died; the
/// watcher then kills the server. When the server exits for any reason the wrapper
/// stops the watcher, so it never signals a pid that may have been reused.
const WRAPPER: &str = r#"
dir=$1; shift
exec 3<&0 </dev/null
"$@" 3<&- >&2 &
server=$!
( read -r -u 3 _; kill -s KILL "$server" 2>/dev/null ) &
watcher=$!
exec 3<&-
wait "$server"
status=$?
kill -s KILL "$watcher" 2>/dev/null
wait "$watcher" 2>/dev/null
rm -rf -- "$dir"
exit "$status"
"#;

/// A running `s3s-fs` on `127.0.0.1` with one empty bucket. Dropping it stops the
/// server and deletes everything it stored.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`: path-style requests only, plain HTTP.
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// Any region signs correctly; this is the one to configure.
    pub region: String,
    port: u16,
    root: PathBuf,
    log: PathBuf,
    wrapper: Child,
    /// Never written: closing it (on drop) is what stops the server.
    lifeline: Option<ChildStdin>,
    /// Declared last: removed after the server stopped.
    _dir: TempDir,
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl S3Server {
    /// Starts `s3s-fs` on a free loopback port in a new temporary directory, with the
    /// bucket already created and fresh credentials, and returns once it accepts
    /// connections. Blocks the calling thread for the start-up (well under a second).
    pub fn start() -> anyhow::Result<S3Server> {
        let bin = s3s_fs_bin().ok_or_else(|| {
            anyhow!(
                "s3s-fs not found (looked at ${S3S_FS_ENV}, PATH, $CARGO_TARGET_DIR/tools/bin, \
                 target/tools/bin, /work/tools/bin); install it with: {S3S_FS_INSTALL} \
                 (scripts/test does this)"
            )
        })?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match S3Server::start_once(&bin) {
                Ok(server) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("s3s-fs did not start")))
    }

    fn start_once(bin: &Path) -> anyhow::Result<S3Server> {
        let dir = temp_dir("parlor-s3-")?;
        let root = dir.path().join("data");
        let bucket = "parlor".to_owned();
        // s3s-fs serves every directory under its root as a bucket.
        std::fs::create_dir_all(root.join(&bucket))
            .with_context(|| format!("create {}", root.display()))?;
        let log = dir.path().join("s3s-fs.log");
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let port = free_port()?;
        let (access_key, secret_key) = credentials();

        let mut wrapper = Command::new("bash")
            .arg("-c")
            .arg(WRAPPER)
            .arg("parlor-s3s-fs-guard")
            .arg(dir.path())
            .arg(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &access_key, "--secret-key", &secret_key])
            .arg(&root)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("spawn bash to run s3s-fs")?;
        let lifeline = wrapper.stdin.take();
        let mut server = S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket,
            access_key,
            secret_key,
            region: "us-east-1".to_owned(),
            port,
            root,
            log,
            wrapper,
            lifeline,
            _dir: dir,
        };

        let deadline = Instant::now() + START_TIMEOUT;
        // s3s-fs binds its port last, once it can serve: accepting means ready.
        while !port_open(port) {
            if !server.is_running() {
                bail!("s3s-fs exited during start-up; log:\n{}", server.log_tail());
            }
            if Instant::now() >= deadline {
                bail!(
                    "s3s-fs not listening on port {port} within {}s; log:\n{}",
                    START_TIMEOUT.as_secs(),
                    server.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bucket's directory: each object is a file at its key below it.
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.join(&self.bucket)
    }

    /// Where the server's output goes.
    pub fn log_file(&self) -> &Path {
        &self.log
    }

    /// Whether the server process still runs (the wrapper exits right after it).
    pub fn is_running(&mut self) -> bool {
        matches!(self.wrapper.try_wait(), Ok(None))
    }

    fn log_tail(&self) -> String {
        const MAX: usize = 4000;
        match std::fs::read(&self.log) {
            Ok(bytes) => {
                let from = bytes.len().saturating_sub(MAX);
                String::from_utf8_lossy(&bytes[from..]).into_owned()
            }
            Err(e) => format!("(cannot read {}: {e})", self.log.display()),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.lifeline.take();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.is_running() {
            let _ = self.wrapper.kill();
        }
        let _ = self.wrapper.wait();
    }
}

/// Whether `s3s-fs` is installed where [`S3Server::start`] looks.
pub fn s3s_fs_available() -> bool {
    s3s_fs_bin().is_some()
}

/// The `s3s-fs` binary: `$PARLOR_TEST_S3S_FS` when set (and only there, so a wrong setting
/// is noticed), else the first found in `PATH`, `$CARGO_TARGET_DIR/tools/bin`, the
/// target directory of the running test binary, `<workspace>/target/tools/bin` and
/// `/work/tools/bin`.
pub fn s3s_fs_bin() -> Option<PathBuf> {
    const NAME: &str = "s3s-fs";
    if let Some(path) = std::env::var_os(S3S_FS_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return is_executable(&path).then_some(path);
    }
    if let Some(path) = find_in_path(NAME) {
        return Some(path);
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR").filter(|p| !p.is_empty()) {
        dirs.push(PathBuf::from(target).join("tools/bin"));
    }
    // Test binaries run from `<target>/<profile>/deps/`, whatever the target dir is.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe.ancestors().nth(3) {
            dirs.push(target.join("tools/bin"));
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    dirs.push(workspace.join("target/tools/bin"));
    dirs.push(PathBuf::from("/work/tools/bin"));
    dirs.into_iter()
        .map(|dir| dir.join(NAME))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// An access key in the shape AWS uses (20 upper-case characters) and a 40-character
/// secret, different for every server.
fn credentials() -> (String, String) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = crate::splitmix(nanos ^ (u64::from(std::process::id()) << 32) ^ n);
    let words: Vec<u64> = (1..=3u64)
        .map(|i| crate::splitmix(seed.wrapping_add(i)))
        .collect();
    let access = format!("PK{:018X}", words[0] >> 8);
    let secret = format!("{:016x}{:016x}{:08x}", seed, words[1], words[2] >> 32);
    (access, secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    #[test]
    fn credentials_have_aws_shape_and_differ() {
        let (a1, s1) = credentials();
        let (a2, s2) = credentials();
        assert_eq!(a1.len(), 20);
        assert_eq!(s1.len(), 40);
        assert!(a1
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
        assert_ne!(a1, a2);
        assert_ne!(s1, s2);
    }

    /// An unsigned request must be refused: proves the server checks the credentials
    /// it was started with, and that it speaks HTTP on the endpoint.
    #[test]
    fn starts_refuses_anonymous_and_stops() -> anyhow::Result<()> {
        let server = S3Server::start()?;
        assert!(server.bucket_dir().is_dir());
        let mut stream = TcpStream::connect(("127.0.0.1", server.port()))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            server.bucket
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response.split_whitespace().nth(1).unwrap_or_default();
        assert!(
            status.starts_with('4'),
            "anonymous request answered {status}"
        );
        let port = server.port();
        let dir = server.bucket_dir();
        drop(server);
        assert!(!port_open(port), "s3s-fs still listening after drop");
        assert!(!dir.exists(), "s3s-fs directory left behind");
        Ok(())
    }
}
