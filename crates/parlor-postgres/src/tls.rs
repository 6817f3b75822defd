//! Mutual TLS to PostgreSQL: the server is verified against the given CA, and the node
//! presents its client certificate (with `hostssl … cert` authentication its common name
//! is the role).
//!
//! The `ClientConfig` is built with an explicit ring provider rather than the process
//! default, so that it works whether or not (and whichever) default provider the server
//! installed.

use crate::TlsFiles;
use anyhow::{anyhow, Context};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot read certificates from {}", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .with_context(|| format!("cannot read the private key in {}", path.display()))?
        .ok_or_else(|| anyhow!("no private key in {}", path.display()))
}

/// The rustls client configuration for `files`.
fn client_config(files: &TlsFiles) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&files.ca_file)? {
        roots
            .add(cert)
            .with_context(|| format!("bad CA certificate in {}", files.ca_file.display()))?;
    }
    let chain = read_certs(&files.cert_file)?;
    let key = read_key(&files.key_file)?;
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("tls protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("client certificate and key do not match")?;
    Ok(config)
}

/// The `tokio-postgres` connector for `files`: what the store's pools connect with, and
/// what anything else opening its own connection to the same server (an integration
/// test inspecting the database) needs, so both present the same client certificate.
pub fn tls_connector(files: &TlsFiles) -> anyhow::Result<MakeRustlsConnect> {
    Ok(MakeRustlsConnect::new(client_config(files)?))
}
