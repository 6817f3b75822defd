//! Engine processes that cannot outlive the test process.
//!
//! # Why a shell guard
//! Shared engines live in a `static` and are never dropped, and a test binary can be
//! killed or abort at any point, so `Drop` alone cannot guarantee that no PostgreSQL,
//! Redis or NATS process is left behind. The workspace denies `unsafe`, which rules out
//! `prctl(PR_SET_PDEATHSIG)` from Rust (and that signal fires when the spawning *thread*
//! exits, not the process, which would kill shared engines when their first test ends).
//!
//! Each engine therefore runs under a small `bash` wrapper ([`GUARD_SCRIPT`]):
//!
//! - the wrapper starts the engine in the background and prints its pid, so the test kit
//!   signals the real engine process (tests SIGKILL it and see it gone);
//! - a guard subshell blocks reading the wrapper's stdin, a pipe whose only write end is
//!   held by the test process (Rust opens pipes close-on-exec, so no other child inherits
//!   it). The kernel closes it when the test process exits for any reason, including
//!   SIGKILL; the guard then reads EOF, stops the engine (the engine's stop signal, then
//!   SIGKILL after 5 s) and removes the engine's temporary directory, which a `static`
//!   would otherwise leak;
//! - when the engine dies first (a test killed it, or the kit stopped it), the wrapper
//!   reaps it, tells the guard to exit quietly (SIGUSR1) and exits with the engine's
//!   status, so a later restart starts a fresh wrapper.
//!
//! Non-interactive shells start background jobs with SIGINT and SIGQUIT ignored; every
//! engine here installs its own handlers for the signals the kit sends (PostgreSQL:
//! SIGINT for a fast shutdown, SIGQUIT for an immediate one), so this does not matter.

use anyhow::{anyhow, bail, Context};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// Arguments: `$1` the signal the guard sends first, `$2` a directory to remove once the
/// engine is gone after the test process died (empty for none), then the engine's argv.
const GUARD_SCRIPT: &str = r#"
sig=$1; dir=$2; shift 2
exec 3<&0 </dev/null
"$@" 3<&- >&2 &
child=$!
echo "$child"
(
  trap 'exit 0' USR1
  read -r -u 3 _
  # The test process is gone: from here on nothing may interrupt the clean-up.
  trap '' USR1
  kill -s "$sig" "$child" 2>/dev/null
  i=0
  while [ "$i" -lt 100 ] && kill -0 "$child" 2>/dev/null; do i=$((i+1)); sleep 0.05; done
  kill -s KILL "$child" 2>/dev/null
  if [ -n "$dir" ]; then rm -rf -- "$dir"; fi
) 3<&3 &
guard=$!
exec 3<&- >/dev/null
wait "$child"
status=$?
kill -s USR1 "$guard" 2>/dev/null
wait "$guard"
exit "$status"
"#;

/// How long [`Supervised`] waits for an engine to exit after a signal before SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start one engine process.
pub(crate) struct EngineCommand<'a> {
    /// For error messages, e.g. `postgres`.
    pub name: &'a str,
    pub program: &'a Path,
    pub args: Vec<OsString>,
    /// Run as this OS user (through `setpriv`, which execs, so the pid stays the
    /// engine's). PostgreSQL refuses to run as root.
    pub run_as: Option<&'a str>,
    pub cwd: &'a Path,
    /// The engine's stdout and stderr are appended here.
    pub log: &'a Path,
    /// What the guard and [`Drop`] send first: `KILL` for engines with nothing to clean
    /// up, `QUIT` for PostgreSQL so that its shared memory segment is removed.
    pub stop_signal: &'static str,
    /// Removed by the guard if the test process dies while the engine runs.
    pub cleanup: Option<&'a Path>,
}

/// A running engine under its guard wrapper. Dropping it stops the engine.
pub(crate) struct Supervised {
    name: String,
    wrapper: Child,
    engine_pid: u32,
    stop_signal: &'static str,
    /// Never written: the guard watches for it to close.
    _lifeline: ChildStdin,
}

impl Supervised {
    pub(crate) fn spawn(cmd: EngineCommand<'_>) -> anyhow::Result<Supervised> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(cmd.log)
            .with_context(|| format!("open {}", cmd.log.display()))?;
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(user) = cmd.run_as {
            let setpriv = super::find_in_path("setpriv").ok_or_else(|| {
                anyhow!(
                    "setpriv (util-linux) not found: needed to run {} as {user}",
                    cmd.name
                )
            })?;
            argv.push(setpriv.into());
            argv.push(format!("--reuid={user}").into());
            argv.push(format!("--regid={user}").into());
            argv.push("--init-groups".into());
            argv.push("--".into());
        }
        argv.push(cmd.program.into());
        argv.extend(cmd.args);

        let mut wrapper = Command::new("bash")
            .arg("-c")
            .arg(GUARD_SCRIPT)
            .arg(format!("parlor-{}-guard", cmd.name))
            .arg(cmd.stop_signal)
            .arg(cmd.cleanup.map(Path::as_os_str).unwrap_or_default())
            .args(&argv)
            .current_dir(cmd.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn bash to run {}", cmd.name))?;
        let lifeline = wrapper
            .stdin
            .take()
            .ok_or_else(|| anyhow!("guard stdin is not piped"))?;
        let stdout = wrapper
            .stdout
            .take()
            .ok_or_else(|| anyhow!("guard stdout is not piped"))?;
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let engine_pid = match read.map(|_| line.trim().parse::<u32>()) {
            Ok(Ok(pid)) => pid,
            other => {
                let _ = wrapper.kill();
                let _ = wrapper.wait();
                bail!("{} guard did not report a pid ({other:?})", cmd.name);
            }
        };
        Ok(Supervised {
            name: cmd.name.to_owned(),
            wrapper,
            engine_pid,
            stop_signal: cmd.stop_signal,
            _lifeline: lifeline,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.engine_pid
    }

    /// Whether the engine still runs (the wrapper exits right after reaping it).
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.wrapper.try_wait(), Ok(None))
    }

    /// Sends `signal` (a name such as `KILL` or `INT`) to the engine process itself.
    pub(crate) fn signal(&mut self, signal: &str) -> anyhow::Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        send_signal(signal, self.engine_pid)
            .with_context(|| format!("signal {} {signal}", self.name))
    }

    /// Waits up to `timeout` for the engine to exit; whether it did.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .wrapper
                .try_wait()
                .with_context(|| format!("wait for {}", self.name))?
                .is_some()
            {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal`, waits for the exit, and falls back to SIGKILL after 10 s.
    pub(crate) fn stop_with(&mut self, signal: &str) -> anyhow::Result<()> {
        self.signal(signal)?;
        if self.wait_exit(EXIT_TIMEOUT)? {
            return Ok(());
        }
        self.signal("KILL")?;
        if self.wait_exit(EXIT_TIMEOUT)? {
            return Ok(());
        }
        bail!(
            "{} (pid {}) did not exit after SIGKILL",
            self.name,
            self.engine_pid
        )
    }

    /// SIGKILL and wait until the process is gone.
    pub(crate) fn kill(&mut self) -> anyhow::Result<()> {
        self.stop_with("KILL")
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let signal = self.stop_signal;
        let _ = self.stop_with(signal);
        if self.is_running() {
            let _ = self.wrapper.kill();
        }
        let _ = self.wrapper.wait();
    }
}

/// Through bash's builtin `kill`: `procps` (which ships `/usr/bin/kill`) is not on every
/// minimal Debian, bash is, and the guard needs it anyway.
pub(crate) fn send_signal(signal: &str, pid: u32) -> anyhow::Result<()> {
    let status = Command::new("bash")
        .arg("-c")
        .arg(r#"kill -s "$1" "$2""#)
        .arg("parlor-kill")
        .arg(signal)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("run bash for kill")?;
    if !status.success() {
        bail!("kill -s {signal} {pid} failed: {status}");
    }
    Ok(())
}

/// Size of a log file now, so that a later error shows only what one start wrote.
pub(crate) fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// What a log file gained since `offset`, at most the last `max` bytes of it.
pub(crate) fn log_since(path: &Path, offset: u64, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let from = from.max(bytes.len().saturating_sub(max));
            String::from_utf8_lossy(&bytes[from..]).into_owned()
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
