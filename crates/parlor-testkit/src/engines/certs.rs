//! Throwaway certificates for mutual TLS between nodes and engines.
//!
//! One CA per test process, generated on first use and kept in memory ([`Certs::get`]);
//! each set of engines writes it to its own temporary directory ([`Certs::write_to`]),
//! so the files disappear with the engines and nothing is ever committed. Because every
//! directory holds the same CA, a client certificate from any of them is accepted by
//! every engine of the process.
//!
//! - the server certificate covers `localhost` and `127.0.0.1` and is used by all three
//!   engines; it also allows client authentication so that NATS routes could use it;
//! - the client certificate has CN `parlor`: PostgreSQL's `cert` authentication maps the
//!   CN to the role, and `initdb -U parlor` creates that role.

use anyhow::{anyhow, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The role name clients authenticate as (the client certificate's CN).
pub const CLIENT_CN: &str = "parlor";

/// The process's CA and the certificates it signed, as PEM.
#[derive(Debug)]
pub struct Certs {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

/// Where [`Certs::write_to`] put the PEM files. Key files are mode 0600: libpq refuses a
/// client key that others can read.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub dir: PathBuf,
    pub ca_file: PathBuf,
    pub server_cert_file: PathBuf,
    pub server_key_file: PathBuf,
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
}

impl Certs {
    /// The certificates of this test process, generated on the first call.
    pub fn get() -> anyhow::Result<&'static Certs> {
        static CERTS: OnceLock<Result<Certs, String>> = OnceLock::new();
        CERTS
            .get_or_init(|| Certs::generate().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("generate test certificates: {e}"))
    }

    /// A new CA with a server and a client certificate. Prefer [`Certs::get`]: one CA
    /// per process keeps every engine and node of the process mutually trusting.
    pub fn generate() -> anyhow::Result<Certs> {
        let ca_key = KeyPair::generate().context("generate CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        ca_params.distinguished_name = name("Parlor throwaway test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).context("self-sign CA")?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().context("generate server key")?;
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .context("server params")?;
        server_params.distinguished_name = name("localhost");
        server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server_params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .context("sign server certificate")?;

        let client_key = KeyPair::generate().context("generate client key")?;
        let mut client_params =
            CertificateParams::new(Vec::<String>::new()).context("client params")?;
        client_params.distinguished_name = name(CLIENT_CN);
        client_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params
            .signed_by(&client_key, &issuer)
            .context("sign client certificate")?;

        Ok(Certs {
            ca_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        })
    }

    /// Writes `ca.crt`, `server.crt`, `server.key`, `client.crt`, `client.key` into
    /// `dir` (created if needed).
    pub fn write_to(&self, dir: &Path) -> anyhow::Result<CertFiles> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let files = CertFiles {
            dir: dir.to_owned(),
            ca_file: dir.join("ca.crt"),
            server_cert_file: dir.join("server.crt"),
            server_key_file: dir.join("server.key"),
            client_cert_file: dir.join("client.crt"),
            client_key_file: dir.join("client.key"),
        };
        write_file(&files.ca_file, &self.ca_pem, 0o644)?;
        write_file(&files.server_cert_file, &self.server_cert_pem, 0o644)?;
        write_file(&files.server_key_file, &self.server_key_pem, 0o600)?;
        write_file(&files.client_cert_file, &self.client_cert_pem, 0o644)?;
        write_file(&files.client_key_file, &self.client_key_pem, 0o600)?;
        Ok(files)
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Creates `path` with `mode` (not chmod after writing, so a key is never readable by
/// others even briefly).
pub(crate) fn write_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}
