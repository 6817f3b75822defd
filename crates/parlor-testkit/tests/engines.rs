//! Tests of the engine support: each engine starts with mutual TLS, refuses a client
//! without a certificate, and comes back after being killed; no engine outlives a
//! killed test process.
//!
//! These tests need PostgreSQL, Redis and NATS installed (`scripts/test` installs them)
//! and fail, rather than skip, when they are missing: a silently skipped engine test
//! would hide a broken CI image.

use anyhow::{bail, ensure, Context, Result};
use parlor_testkit::engines::{CertFiles, Certs, NatsCluster, PgBins, Postgres, Redis};
use parlor_testkit::{cluster_env, missing_engines, shared_engines, ServerOptions, TestServer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn certs(dir: &Path) -> Result<CertFiles> {
    let missing = missing_engines();
    ensure!(
        missing.is_empty(),
        "engines missing: {}",
        missing.join(", ")
    );
    Certs::get()?.write_to(&dir.join("certs"))
}

/// Whether `pid` is a live process (a zombie counts as gone: it runs nothing).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}

/// `psql` over TCP with TLS verifying the server, with or without the client certificate.
/// `HOME` is a fresh directory so that no `~/.postgresql/postgresql.crt` sneaks in.
fn psql_tcp(
    pg: &Postgres,
    db: &str,
    certs: &CertFiles,
    with_cert: bool,
    sql: &str,
) -> Result<String> {
    let bins = PgBins::find().context("psql")?;
    let home = tempfile::tempdir()?;
    let mut conninfo = format!(
        "host=127.0.0.1 port={} user=parlor dbname={db} sslmode=verify-full sslrootcert={}",
        pg.port(),
        certs.ca_file.display()
    );
    if with_cert {
        conninfo.push_str(&format!(
            " sslcert={} sslkey={}",
            certs.client_cert_file.display(),
            certs.client_key_file.display()
        ));
    }
    let out = Command::new(bins.psql)
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
            &conninfo,
        ])
        .env("HOME", home.path())
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim())
    }
}

#[test]
fn postgres_takes_only_tls_with_a_client_certificate_and_survives_kill() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(dir.path())?;
    let started = Instant::now();
    let pg = Postgres::launch(&certs)?;
    eprintln!("postgres: initdb + start in {:?}", started.elapsed());
    assert!(pg.is_up());

    let url = pg.create_database("kit_pg")?;
    assert_eq!(
        url,
        format!(
            "postgres://parlor@127.0.0.1:{}/kit_pg?sslmode=require",
            pg.port()
        )
    );
    let who = psql_tcp(
        &pg,
        "kit_pg",
        &certs,
        true,
        "select current_user || ' ' || ssl from pg_stat_ssl where pid = pg_backend_pid()",
    )?;
    assert_eq!(who, "parlor true");
    let refused = psql_tcp(&pg, "kit_pg", &certs, false, "select 1")
        .expect_err("a client without a certificate must be refused");
    assert!(refused.to_string().contains("certificate"), "{refused}");

    pg.psql(
        "kit_pg",
        "create table t (x int); insert into t values (42)",
    )?;
    let pid = pg.pid().context("postgres pid")?;
    pg.kill()?;
    assert!(!pg.is_up());
    assert!(!alive(pid), "postmaster {pid} still alive after kill");
    assert!(psql_tcp(&pg, "kit_pg", &certs, true, "select 1").is_err());

    let restarted = Instant::now();
    pg.start()?;
    eprintln!("postgres: start after SIGKILL in {:?}", restarted.elapsed());
    assert_ne!(pg.pid(), Some(pid));
    assert_eq!(
        psql_tcp(&pg, "kit_pg", &certs, true, "select x from t")?,
        "42"
    );

    pg.stop()?;
    assert!(!pg.is_up());
    let restarted = Instant::now();
    pg.start()?;
    eprintln!(
        "postgres: start after fast shutdown in {:?}",
        restarted.elapsed()
    );
    assert_eq!(pg.psql("kit_pg", "select x from t")?, "42");
    Ok(())
}

fn redis_cli(redis: &Redis, certs: &CertFiles, with_cert: bool, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["--tls", "--cacert"]).arg(&certs.ca_file).args([
        "-h",
        "127.0.0.1",
        "-p",
        &redis.port().to_string(),
    ]);
    if with_cert {
        cmd.arg("--cert")
            .arg(&certs.client_cert_file)
            .arg("--key")
            .arg(&certs.client_key_file);
    }
    let out = cmd.args(args).stdin(Stdio::null()).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // redis-cli exits 0 on some server errors; an error reply is printed, not a value.
    if out.status.success() && !stdout.starts_with("ERR") {
        Ok(stdout)
    } else {
        bail!(
            "redis-cli {args:?}: {} {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

#[test]
fn redis_takes_only_tls_with_a_client_certificate_and_restarts_empty() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(dir.path())?;
    let started = Instant::now();
    let redis = Redis::launch(&certs)?;
    eprintln!("redis: start in {:?}", started.elapsed());
    assert_eq!(redis.url(), format!("rediss://127.0.0.1:{}", redis.port()));

    assert_eq!(redis_cli(&redis, &certs, true, &["ping"])?, "PONG");
    assert!(
        redis_cli(&redis, &certs, false, &["ping"]).is_err(),
        "a client without a certificate must be refused"
    );

    redis_cli(&redis, &certs, true, &["set", "k", "v"])?;
    assert_eq!(redis_cli(&redis, &certs, true, &["get", "k"])?, "v");
    let pid = redis.pid().context("redis pid")?;
    redis.kill()?;
    assert!(!redis.is_up());
    assert!(!alive(pid));
    assert!(redis_cli(&redis, &certs, true, &["ping"]).is_err());

    let restarted = Instant::now();
    redis.restart()?;
    eprintln!("redis: restart in {:?}", restarted.elapsed());
    assert!(redis.is_up());
    assert_eq!(redis_cli(&redis, &certs, true, &["get", "k"])?, "");
    Ok(())
}

/// Connects to a NATS client port the way nats-server 2.9 expects (INFO in clear text,
/// then the TLS handshake), sends CONNECT and PING, and waits for PONG. `Err` carries
/// the reason the server refused.
fn nats_ping(
    port: u16,
    certs: &CertFiles,
    with_cert: bool,
) -> Result<std::result::Result<(), String>> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut info = Vec::new();
    let mut byte = [0u8; 1];
    while !info.ends_with(b"\n") {
        tcp.read_exact(&mut byte).context("read INFO")?;
        info.push(byte[0]);
    }
    let info = String::from_utf8_lossy(&info);
    ensure!(info.starts_with("INFO "), "{info}");
    ensure!(info.contains("\"tls_required\":true"), "{info}");
    ensure!(info.contains("\"tls_verify\":true"), "{info}");

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&certs.ca_file)? {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = if with_cert {
        let chain = CertificateDer::pem_file_iter(&certs.client_cert_file)?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&certs.client_key_file)?;
        builder.with_client_auth_cert(chain, key)?
    } else {
        builder.with_no_client_auth()
    };
    let conn = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1")?)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    if let Err(e) = tls.write_all(b"CONNECT {\"verbose\":false,\"tls_required\":true}\r\nPING\r\n")
    {
        return Ok(Err(e.to_string()));
    }
    let mut reader = BufReader::new(tls);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(Err("connection closed".into())),
            Ok(_) if line.starts_with("PONG") => return Ok(Ok(())),
            Ok(_) if line.starts_with("-ERR") => return Ok(Err(line.trim().to_owned())),
            Ok(_) => continue,
            Err(e) => return Ok(Err(e.to_string())),
        }
    }
}

#[test]
fn nats_takes_only_tls_with_a_client_certificate_and_survives_kill() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(dir.path())?;
    let started = Instant::now();
    let nats = NatsCluster::launch(1, &certs)?;
    eprintln!("nats (1 server): start in {:?}", started.elapsed());
    let port = nats.client_port(0)?;
    assert_eq!(nats.urls(), format!("tls://127.0.0.1:{port}"));

    let varz = nats.monitor(0, "/varz")?;
    assert_eq!(varz["tls_verify"], true, "{varz}");
    assert!(
        varz["jetstream"]["config"]["store_dir"].is_string(),
        "{varz}"
    );
    assert_eq!(nats_ping(port, &certs, true)?, Ok(()));
    let refused = nats_ping(port, &certs, false)?;
    eprintln!("nats: client without certificate: {refused:?}");
    assert!(
        refused.is_err(),
        "a client without a certificate must be refused"
    );

    let pid = nats.pid(0).context("nats pid")?;
    nats.kill(0)?;
    assert!(!nats.is_up(0));
    assert!(!alive(pid));
    assert!(nats.meta_leader().is_none());
    let restarted = Instant::now();
    nats.start(0)?;
    eprintln!("nats (1 server): restart in {:?}", restarted.elapsed());
    assert_eq!(nats_ping(port, &certs, true)?, Ok(()));
    Ok(())
}

#[test]
fn nats_cluster_keeps_a_meta_leader_when_one_server_dies_and_takes_it_back() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(dir.path())?;
    let started = Instant::now();
    let nats = NatsCluster::launch(3, &certs)?;
    eprintln!("nats (3 servers): start in {:?}", started.elapsed());
    assert_eq!(nats.urls().split(',').count(), 3);
    for i in 0..3 {
        assert_eq!(nats.monitor(i, "/routez")?["num_routes"], 2);
        assert_eq!(nats.monitor(i, "/jsz")?["meta_cluster"]["cluster_size"], 3);
    }

    // Killing the leader is the harder case: the other two must elect a new one.
    let leader = nats.meta_leader_index().context("no meta leader")?;
    nats.kill(leader)?;
    assert!(!nats.is_up(leader));
    let took = wait_for("a new meta leader", Duration::from_secs(20), || {
        nats.meta_leader_index().is_some_and(|l| l != leader)
    })?;
    eprintln!(
        "nats: new meta leader {:?} after {took:?}",
        nats.meta_leader()
    );
    let survivor = (leader + 1) % 3;
    assert_eq!(
        nats_ping(nats.client_port(survivor)?, &certs, true)?,
        Ok(())
    );

    let restarted = Instant::now();
    nats.restart(leader)?;
    eprintln!("nats: killed server rejoined in {:?}", restarted.elapsed());
    assert_eq!(nats.monitor(leader, "/routez")?["num_routes"], 2);
    assert!(nats.meta_leader().is_some());
    assert_eq!(nats_ping(nats.client_port(leader)?, &certs, true)?, Ok(()));
    Ok(())
}

#[test]
fn shared_engines_give_each_spec_its_own_database_and_namespace() -> Result<()> {
    let started = Instant::now();
    let engines = shared_engines()?;
    eprintln!("shared engines: ready in {:?}", started.elapsed());
    let a = engines.spec_for_new_test()?;
    let b = engines.spec_for_new_test()?;
    assert_ne!(a.namespace, b.namespace);
    for spec in [&a, &b] {
        assert!(spec
            .namespace
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        assert!(spec
            .postgres_url
            .ends_with(&format!("/{}?sslmode=require", spec.namespace)));
        assert!(spec.nats_url.starts_with("tls://127.0.0.1:"));
        assert!(spec.redis_url.starts_with("rediss://127.0.0.1:"));
    }

    // The spec's own files let a client in.
    let files = CertFiles {
        dir: engines.certs.dir.clone(),
        ca_file: a.ca_file.clone(),
        server_cert_file: engines.certs.server_cert_file.clone(),
        server_key_file: engines.certs.server_key_file.clone(),
        client_cert_file: a.cert_file.clone(),
        client_key_file: a.key_file.clone(),
    };
    assert_eq!(
        psql_tcp(
            &engines.postgres,
            &a.namespace,
            &files,
            true,
            "select current_database()"
        )?,
        a.namespace
    );

    let env = cluster_env(&ServerOptions::cluster(&a).with_node_name("node_a"));
    let get = |k: &str| {
        env.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("PARLOR_CLUSTER__ENABLED"), Some("true"));
    assert_eq!(get("PARLOR_CLUSTER__NODE_NAME"), Some("node_a"));
    assert_eq!(get("PARLOR_CLUSTER__NAMESPACE"), Some(a.namespace.as_str()));
    assert_eq!(
        get("PARLOR_CLUSTER__POSTGRES_URL"),
        Some(a.postgres_url.as_str())
    );
    assert_eq!(get("PARLOR_CLUSTER__NATS_URL"), Some(a.nats_url.as_str()));
    assert_eq!(get("PARLOR_CLUSTER__REDIS_URL"), Some(a.redis_url.as_str()));
    for key in ["CA_FILE", "CERT_FILE", "KEY_FILE"] {
        let path = get(&format!("PARLOR_CLUSTER__TLS__{key}")).context(key)?;
        assert!(Path::new(path).is_file(), "{key} {path}");
    }
    let secret = get("PARLOR_AUTH__JWT_SECRET").context("jwt secret")?;
    assert!(
        secret.len() >= 32,
        "nodes of one cluster share a valid token key"
    );
    assert_eq!(env.len(), 10);

    // The database lives as long as a clone of its spec.
    let count = |name: &str| {
        engines.postgres.psql(
            "postgres",
            &format!("select count(*) from pg_database where datname = '{name}'"),
        )
    };
    let name = a.namespace.clone();
    let clone = a.clone();
    drop(a);
    assert_eq!(count(&name)?, "1");
    drop(clone);
    assert_eq!(count(&name)?, "0");
    assert_eq!(count(&b.namespace)?, "1");
    Ok(())
}

/// Set in the copy of this test binary that [`engines_die_with_the_test_process`] starts.
const ORPHAN_HELPER: &str = "PARLOR_TESTKIT_ORPHAN_HELPER";

/// Starts a copy of this test binary that brings up the shared engines, SIGKILLs it,
/// and checks that every engine process and the engines' directory disappear.
#[test]
fn engines_die_with_the_test_process() -> Result<()> {
    if std::env::var_os(ORPHAN_HELPER).is_some() {
        let engines = shared_engines()?;
        let pids = [
            engines.postgres.pid(),
            engines.redis.pid(),
            engines.nats.pid(0),
        ];
        let pids: Vec<String> = pids
            .iter()
            .map(|p| p.map(|p| p.to_string()).unwrap_or_default())
            .collect();
        println!("ENGINES {} {}", engines.dir().display(), pids.join(" "));
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_secs(120));
        return Ok(());
    }

    let exe = std::env::current_exe()?;
    let mut helper = Command::new(exe)
        .args([
            "--exact",
            "engines_die_with_the_test_process",
            "--nocapture",
        ])
        .env(ORPHAN_HELPER, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = helper.stdout.take().context("helper stdout")?;
    let mut report = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("ENGINES ") {
            report = Some(rest.to_owned());
            break;
        }
    }
    let Some(report) = report else {
        let _ = helper.kill();
        let status = helper.wait()?;
        bail!("helper exited without reporting its engines ({status})");
    };
    let mut fields = report.split_whitespace();
    let dir = fields.next().context("engines dir")?.to_owned();
    let pids: Vec<u32> = fields
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()?;
    assert_eq!(pids.len(), 3, "{report}");
    assert!(pids.iter().all(|&p| alive(p)), "{report}");
    assert!(Path::new(&dir).is_dir());

    helper.kill()?; // SIGKILL: no destructor, no unwinding, no atexit
    helper.wait()?;
    let took = wait_for("engines to die", Duration::from_secs(10), || {
        pids.iter().all(|&p| !alive(p))
    })?;
    eprintln!("orphaned engines gone {took:?} after the test process was killed");
    wait_for("engines dir to be removed", Duration::from_secs(10), || {
        !Path::new(&dir).exists()
    })?;
    Ok(())
}

/// A stand-in for the `parlor` binary that records the cluster environment it was given
/// (in `<data dir>/env.<pid>`) and prints the line [`TestServer`] waits for. The server
/// side of cluster mode is not what these tests check.
fn fake_parlor(dir: &Path) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("fake-parlor");
    std::fs::write(
        &bin,
        "#!/bin/sh\n\
         # serve --listen 127.0.0.1:0 --data-dir DIR\n\
         if [ \"$1\" = probe ]; then exit 0; fi\n\
         env | grep '^PARLOR_CLUSTER__' | sort > \"$5/env.$$\"\n\
         echo 'listening on http://127.0.0.1:9'\n\
         exec sleep 60\n",
    )?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    // Another test's fork may still hold the file open for writing for a moment, and
    // exec then fails with ETXTBSY; wait until it runs.
    wait_for(
        "fake parlor to be executable",
        Duration::from_secs(5),
        || Command::new(&bin).arg("probe").status().is_ok(),
    )?;
    Ok(bin)
}

fn recorded_envs(data_dir: &Path) -> Result<Vec<String>> {
    let mut envs = Vec::new();
    for entry in std::fs::read_dir(data_dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("env."))
        {
            envs.push(std::fs::read_to_string(path)?);
        }
    }
    Ok(envs)
}

#[test]
fn a_cluster_test_server_gets_its_spec_and_keeps_it_across_restarts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bin = fake_parlor(dir.path())?;
    let engines = shared_engines()?;
    let spec = engines.spec_for_new_test()?;

    let mut a = TestServer::start(&bin, ServerOptions::cluster(&spec))?;
    let mut b = TestServer::start(&bin, ServerOptions::cluster(&spec))?;
    assert_ne!(a.node_name(), b.node_name(), "each node needs its own name");
    assert_eq!(
        a.cluster_spec().map(|s| &s.namespace),
        Some(&spec.namespace)
    );
    a.restart()?;
    b.kill()?;

    let envs = recorded_envs(&a.data_dir())?;
    assert_eq!(envs.len(), 2, "{envs:?}");
    assert_eq!(envs[0], envs[1], "a restart keeps the spec and node name");
    let node = a.node_name().context("node name")?;
    for line in [
        "PARLOR_CLUSTER__ENABLED=true".to_owned(),
        format!("PARLOR_CLUSTER__NODE_NAME={node}"),
        format!("PARLOR_CLUSTER__NAMESPACE={}", spec.namespace),
        format!("PARLOR_CLUSTER__POSTGRES_URL={}", spec.postgres_url),
        format!("PARLOR_CLUSTER__NATS_URL={}", spec.nats_url),
        format!("PARLOR_CLUSTER__REDIS_URL={}", spec.redis_url),
        format!("PARLOR_CLUSTER__TLS__CA_FILE={}", spec.ca_file.display()),
        format!(
            "PARLOR_CLUSTER__TLS__CERT_FILE={}",
            spec.cert_file.display()
        ),
        format!("PARLOR_CLUSTER__TLS__KEY_FILE={}", spec.key_file.display()),
    ] {
        assert!(
            envs[0].lines().any(|l| l == line),
            "{line} not in {}",
            envs[0]
        );
    }

    let embedded = TestServer::start(&bin, ServerOptions::default().with_embedded())?;
    assert!(embedded.cluster_spec().is_none());
    assert_eq!(recorded_envs(&embedded.data_dir())?, vec![String::new()]);
    Ok(())
}

/// Set in the copies of this test binary that [`the_backend_variable_selects_the_engines`]
/// starts, to the value of `PARLOR_TEST_BACKEND` they were given.
const BACKEND_HELPER: &str = "PARLOR_TESTKIT_BACKEND_HELPER";

/// `PARLOR_TEST_BACKEND` is read by every start, so it is set only in child copies of
/// this binary rather than in this multi-threaded process.
#[test]
fn the_backend_variable_selects_the_engines() -> Result<()> {
    if let Some(value) = std::env::var_os(BACKEND_HELPER) {
        let dir = tempfile::tempdir()?;
        let bin = fake_parlor(dir.path())?;
        let server = TestServer::start(&bin, ServerOptions::default());
        match value.to_str() {
            Some("cluster") => {
                let server = server?;
                let spec = server.cluster_spec().context("cluster spec")?;
                let envs = recorded_envs(&server.data_dir())?;
                ensure!(
                    envs.len() == 1 && envs[0].contains(&spec.namespace),
                    "{envs:?}"
                );
                // An explicit choice wins over the variable.
                let embedded = TestServer::start(&bin, ServerOptions::default().with_embedded())?;
                ensure!(embedded.cluster_spec().is_none());
            }
            Some("embedded") => ensure!(server?.cluster_spec().is_none()),
            _ => {
                let err = server.expect_err("an unknown backend must fail");
                ensure!(err.to_string().contains("PARLOR_TEST_BACKEND"), "{err:#}");
            }
        }
        return Ok(());
    }

    let exe = std::env::current_exe()?;
    for value in ["cluster", "embedded", "sqlite"] {
        let out = Command::new(&exe)
            .args(["--exact", "the_backend_variable_selects_the_engines"])
            .env(BACKEND_HELPER, value)
            .env(parlor_testkit::BACKEND_ENV, value)
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "PARLOR_TEST_BACKEND={value}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
