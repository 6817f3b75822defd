//! TLS configuration trusting exactly the given root certificates.
//!
//! Test servers use throwaway self-signed certificates, so the client must trust those
//! and nothing else. The `ring` provider is selected explicitly: the dependency tree
//! enables only `ring`, and being explicit avoids depending on a process-wide default
//! provider being installed.

use crate::error::{ClientError, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::sync::Arc;

/// A client configuration that trusts exactly the certificates in `root_pem` (one or
/// more PEM `CERTIFICATE` blocks). Fails when the PEM holds no usable certificate.
pub fn client_config(root_pem: &[u8]) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem) {
        let cert = cert.map_err(|e| ClientError::Transport(format!("bad root PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Transport(format!("bad root certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Transport(
            "root PEM contains no certificate".into(),
        ));
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Transport(format!("TLS configuration: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(config)
}
