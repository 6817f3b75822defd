//! HTTPS and WSS, end to end against the real `parlor` binary: with the test kit's
//! throwaway certificate, without trusting it, and with a certificate made by
//! `parlor cert`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{start, WAIT};
use parlor_client::proto::ws::ServerFrame;
use parlor_client::{ClientError, Http, WsClient};
use parlor_testkit::{self_signed, unique_name, user, ServerOptions};
use std::process::Command;

/// Whether a transport error is about the server's certificate (as opposed to, say, the
/// connection being refused).
fn is_certificate_error(e: &ClientError) -> bool {
    match e {
        ClientError::Transport(msg) => {
            let msg = msg.to_ascii_lowercase();
            msg.contains("certificate") || msg.contains("unknownissuer")
        }
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_register_login_and_healthz_work_when_trusting_the_ca() {
    let server = start(ServerOptions::default().with_tls());
    assert!(
        server.base_url().starts_with("https://"),
        "{}",
        server.base_url()
    );
    assert!(server.ca_pem().is_some());
    let http = server.http();

    assert_eq!(http.healthz().await.unwrap(), 200);
    assert_eq!(http.readyz().await.unwrap(), 200);
    let (me, tokens) = user(&http, &unique_name("tls")).await.unwrap();
    assert_eq!(http.me(&tokens.access_token).await.unwrap(), me);

    // The certificate also names `localhost`.
    let port = server.base_url().rsplit(':').next().unwrap().to_owned();
    let by_name = Http::new(
        &format!("https://localhost:{port}"),
        server.ca_pem().as_deref(),
    )
    .unwrap();
    assert_eq!(by_name.healthz().await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_clients_authenticate_and_exchange_a_message() {
    let server = start(ServerOptions::default().with_tls());
    let http = server.http();
    let (alice, alice_tokens) = user(&http, &unique_name("alice")).await.unwrap();
    let (bob, bob_tokens) = user(&http, &unique_name("bob")).await.unwrap();
    let conv = http
        .open_direct(&alice_tokens.access_token, bob.id)
        .await
        .unwrap();

    let mut alice_ws = server.ws(&alice_tokens.access_token, None).await.unwrap();
    let mut bob_ws = server.ws(&bob_tokens.access_token, None).await.unwrap();
    alice_ws.wait_synced(WAIT).await.unwrap();
    bob_ws.wait_synced(WAIT).await.unwrap();

    alice_ws
        .send_message(conv.id, "tls-1", "over TLS")
        .await
        .unwrap();
    let ack = alice_ws
        .wait_for(WAIT, |f| match f {
            ServerFrame::Ack(a) => Some(a.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!((ack.cid.as_str(), ack.conv, ack.seq), ("tls-1", conv.id, 1));

    let got = bob_ws
        .wait_for(WAIT, |f| match f {
            ServerFrame::Message(m) => Some(m.message.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(
        (got.conv, got.sender, got.text.as_str(), got.id),
        (conv.id, alice.id, "over TLS", ack.id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_not_trusting_the_certificate_are_refused() {
    let server = start(ServerOptions::default().with_tls());
    let base = server.base_url();

    // Public web roots only (reqwest's defaults).
    let untrusting = Http::new(base, None).unwrap();
    let err = untrusting.healthz().await.unwrap_err();
    assert!(is_certificate_error(&err), "{err:?}");

    // Trusting some other self-signed certificate.
    let dir = tempfile_dir();
    let (_, _, other_pem) = self_signed(&dir.join("other")).unwrap();
    let wrong_ca = Http::new(base, Some(&other_pem)).unwrap();
    let err = wrong_ca.healthz().await.unwrap_err();
    assert!(is_certificate_error(&err), "{err:?}");

    // WebSockets: no roots at all, and the wrong root.
    let err = WsClient::connect_raw(base, None, Vec::new())
        .await
        .unwrap_err();
    assert!(is_certificate_error(&err), "{err:?}");
    let err = WsClient::connect_raw(base, Some(&other_pem), Vec::new())
        .await
        .unwrap_err();
    assert!(is_certificate_error(&err), "{err:?}");

    // Plain HTTP to the TLS port gets no answer either.
    let plain = Http::new(&base.replacen("https://", "http://", 1), None).unwrap();
    assert!(plain.healthz().await.is_err());

    // The server is unharmed by failed handshakes.
    assert_eq!(server.http().healthz().await.unwrap(), 200);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_command_writes_a_certificate_the_server_can_serve() {
    let dir = tempfile_dir();
    let out = dir.join("certs");
    let output = Command::new(env!("CARGO_BIN_EXE_parlor"))
        .arg("cert")
        .arg("--out-dir")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "parlor cert failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cert_path = out.join("cert.pem");
    let key_path = out.join("key.pem");
    let cert_pem = std::fs::read(&cert_path).unwrap();
    let key_pem = std::fs::read_to_string(&key_path).unwrap();
    assert!(String::from_utf8_lossy(&cert_pem).contains("BEGIN CERTIFICATE"));
    assert!(key_pem.contains("PRIVATE KEY"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key.pem is readable by others: {mode:o}");
    }

    // The test kit passes no certificate (tls: false); the arguments bring our own.
    let server = start(
        ServerOptions::default()
            .with_arg("--tls-cert")
            .with_arg(cert_path.to_string_lossy())
            .with_arg("--tls-key")
            .with_arg(key_path.to_string_lossy()),
    );
    let base = server.base_url().to_owned();
    assert!(base.starts_with("https://"), "{base}");

    let http = Http::new(&base, Some(&cert_pem)).unwrap();
    assert_eq!(http.healthz().await.unwrap(), 200);
    let (_, tokens) = user(&http, &unique_name("certcmd")).await.unwrap();
    let mut ws = WsClient::connect(&base, Some(&cert_pem), &tokens.access_token, None)
        .await
        .unwrap();
    ws.wait_synced(WAIT).await.unwrap();
    ws.close().await.unwrap();

    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// A fresh private directory under the system temp dir (removed by the test).
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("parlor-tls-test-{}", unique_name("d")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
