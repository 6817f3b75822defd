//! The S3 adapter: AWS S3 or any service speaking its API (MinIO, Ceph, Garage, …).

use crate::{Backend, ObjectBlobStore};
use object_store::aws::AmazonS3Builder;
use object_store::{BackoffConfig, Certificate, ClientOptions, RetryConfig};
use parlor_core::{Error, Result};
use parlor_proto::ErrorCode;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where the objects go. The server maps its configuration onto this.
#[derive(Clone, Default)]
pub struct S3Config {
    /// Base URL of an S3-compatible service (`http://127.0.0.1:9000`); `None` (or empty)
    /// for AWS, whose endpoint follows from `region`.
    pub endpoint: Option<String>,
    /// Part of every request signature; services other than AWS mostly accept any.
    /// Empty means `us-east-1`.
    pub region: String,
    pub bucket: String,
    /// Both empty: credentials from the environment the process runs in (web identity
    /// token, ECS task role, EC2 instance metadata), never from environment variables
    /// this crate would read behind the server's configuration.
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Accept an `http://` endpoint (a service on loopback or a private network).
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// Less common settings of [`ObjectBlobStore::s3_with`]; the default suits AWS and the
/// usual self-hosted services.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Bucket in the path (`endpoint/bucket/key`) rather than in the host name
    /// (`bucket.endpoint/key`). `None`: path style with an `endpoint` (self-hosted
    /// services rarely have a wildcard DNS name per bucket), virtual-hosted on AWS.
    pub path_style: Option<bool>,
    /// PEM file of CA certificates trusted in addition to the system's, for a service
    /// with a private CA.
    pub ca_file: Option<PathBuf>,
}

/// Gives up on a request after this long, retries included, so that a health check or
/// an upload fails while the client still waits rather than minutes later.
const RETRY_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl ObjectBlobStore {
    /// Objects in `config.bucket`, with the default [`S3Options`]. Nothing is sent until
    /// the first call; [`parlor_core::ports::BlobStore::ping`] checks the bucket answers.
    pub fn s3(config: S3Config) -> Result<Self> {
        ObjectBlobStore::s3_with(config, S3Options::default())
    }

    /// [`ObjectBlobStore::s3`] with every setting.
    pub fn s3_with(config: S3Config, options: S3Options) -> Result<Self> {
        let invalid = |what: String| {
            tracing::error!(bucket = %config.bucket, error = %what, "s3 configuration invalid");
            Error::new(ErrorCode::Internal, what)
        };
        let mut client = ClientOptions::new()
            .with_allow_http(config.allow_http)
            .with_connect_timeout(CONNECT_TIMEOUT);
        if let Some(ca_file) = &options.ca_file {
            let pem = std::fs::read(ca_file)
                .map_err(|e| invalid(format!("read {}: {e}", ca_file.display())))?;
            let certs = Certificate::from_pem_bundle(&pem)
                .map_err(|e| invalid(format!("certificates in {}: {e}", ca_file.display())))?;
            if certs.is_empty() {
                return Err(invalid(format!("no certificate in {}", ca_file.display())));
            }
            for cert in certs {
                client = client.with_root_certificate(cert);
            }
        }
        let endpoint = config.endpoint.as_deref().filter(|e| !e.is_empty());
        let path_style = options.path_style.unwrap_or(endpoint.is_some());
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_allow_http(config.allow_http)
            .with_virtual_hosted_style_request(!path_style)
            .with_client_options(client)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 5,
                retry_timeout: RETRY_TIMEOUT,
            });
        if let Some(endpoint) = endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        // Left unset when empty, so that the builder signs for its default, us-east-1.
        if !config.region.is_empty() {
            builder = builder.with_region(&config.region);
        }
        // Set only when given: an empty pair is how the configuration asks for the
        // environment's credentials, and the builder would sign with empty keys instead.
        if !config.access_key_id.is_empty() || !config.secret_access_key.is_empty() {
            builder = builder
                .with_access_key_id(&config.access_key_id)
                .with_secret_access_key(&config.secret_access_key);
        }
        let store = builder
            .build()
            .map_err(|e| invalid(format!("s3 client: {e}")))?;
        tracing::debug!(
            bucket = %config.bucket,
            endpoint = endpoint.unwrap_or("aws"),
            path_style,
            "s3 object storage"
        );
        Ok(ObjectBlobStore {
            store: Arc::new(store),
            backend: Backend::S3 {
                bucket: config.bucket,
            },
        })
    }
}
