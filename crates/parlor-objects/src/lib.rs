//! Object storage for upload bytes: [`parlor_core::ports::BlobStore`] over the
//! `object_store` crate.
//!
//! One type, [`ObjectBlobStore`], serves both adapters so that streaming, error mapping
//! and the cut-body rule live in one place; only construction differs:
//!
//! - [`ObjectBlobStore::local`]: files under a directory (the embedded default).
//! - [`ObjectBlobStore::s3`] / [`ObjectBlobStore::s3_with`]: any S3-compatible service.
//!
//! # Memory
//! Nothing holds a whole object. `put` keeps at most one part ([`PART_SIZE`]) buffered
//! plus [`PARTS_IN_FLIGHT`] parts being sent; bodies smaller than a part go up in one
//! request, larger ones as a multipart upload. `get` hands the service's stream through;
//! a local file is read in chunks of [`FILE_CHUNK`] (see `local.rs`).
//!
//! # Errors
//! Storage failures are logged here, with the key and the cause, and reach the caller as
//! [`Error::unavailable`]: the client may retry, and the cause stays in the log. A
//! missing object is `NotFound`, a range starting past the end `RangeNotSatisfiable`; a
//! range ending past the end is cut at the end, as HTTP ranges are.
//!
//! # Operating S3
//! A `put` whose future is dropped midway (the server shutting down) leaves the parts
//! of its multipart upload in the bucket, where S3 keeps them until an
//! `AbortIncompleteMultipartUpload` lifecycle rule removes them: configure one. `copy`
//! is a single `CopyObject`, which AWS allows up to 5 GiB.

mod local;
mod put;
mod s3;

pub use s3::{S3Config, S3Options};

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore};
use parlor_core::ports::{BlobStore, ByteStream, Written};
use parlor_core::{Error, Result};
use parlor_proto::ErrorCode;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

/// Size of each part of a multipart upload, and the largest body sent in one request.
/// S3 wants parts of at least 5 MiB (but the last); bigger parts mean fewer requests
/// but more memory per upload in progress.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Parts of one upload sent at once. Two keep the connection busy while the next part
/// fills, without multiplying the memory an upload holds.
pub const PARTS_IN_FLIGHT: usize = 2;

/// Bytes per read of a local file. `object_store` reads 8 KiB per blocking task, which
/// made a download cost a thread hop per 8 KiB; this keeps the hops rare and the memory
/// per download small.
pub const FILE_CHUNK: usize = 256 * 1024;

/// A [`BlobStore`] on the local filesystem or an S3-compatible service. Cheap to clone:
/// clones share one client.
#[derive(Clone)]
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    backend: Backend,
}

/// Which adapter a store is, for logs and for `ping`.
#[derive(Debug, Clone)]
enum Backend {
    Local { root: PathBuf },
    S3 { bucket: String },
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Local { .. } => "local",
            Backend::S3 { .. } => "s3",
        }
    }
}

impl std::fmt::Debug for ObjectBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client itself would print credentials-adjacent configuration.
        f.debug_struct("ObjectBlobStore")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl ObjectBlobStore {
    /// Where this store keeps objects: `local:<dir>` or `s3:<bucket>`, for logs.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Local { root } => format!("local:{}", root.display()),
            Backend::S3 { bucket } => format!("s3:{bucket}"),
        }
    }

    fn path(&self, key: &str) -> Result<Path> {
        // Keys are built by the server, so a key that is not a valid object path is a
        // bug, not bad input.
        Path::parse(key).map_err(|e| {
            tracing::error!(store = self.backend.name(), key, error = %e, "invalid object key");
            Error::internal()
        })
    }

    fn failed(&self, op: &'static str, key: &str, e: &object_store::Error) -> Error {
        tracing::warn!(
            store = self.backend.name(),
            op,
            key,
            error = %e,
            "object storage failed"
        );
        Error::unavailable()
    }

    /// Why a ranged read failed, when the reason is the object rather than the storage:
    /// `object_store` reports a range past the end as a generic error, worded by each
    /// service its own way, so the object's size is asked for separately.
    async fn range_problem(&self, path: &Path, range: &Range<u64>) -> Option<Error> {
        match self.store.head(path).await {
            Ok(meta) if range.start >= meta.size => Some(range_not_satisfiable()),
            Err(object_store::Error::NotFound { .. }) => Some(not_found()),
            _ => None,
        }
    }
}

fn not_found() -> Error {
    Error::new(ErrorCode::NotFound, "no such object")
}

fn range_not_satisfiable() -> Error {
    Error::new(ErrorCode::RangeNotSatisfiable, "range outside the object")
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn put(&self, key: &str, body: ByteStream) -> Result<Written> {
        let path = self.path(key)?;
        match put::stream_into(&self.store, &path, body).await {
            Ok(written) => {
                if let Some(cut) = &written.cut {
                    tracing::debug!(
                        store = self.backend.name(),
                        key,
                        bytes = written.bytes,
                        error = %cut,
                        "body cut, kept what arrived"
                    );
                }
                Ok(written)
            }
            Err(e) => Err(self.failed("put", key, &e)),
        }
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream> {
        let path = self.path(key)?;
        if let Some(r) = &range {
            if r.start > r.end {
                return Err(range_not_satisfiable());
            }
            // `object_store` refuses empty ranges. One within the object (its very end
            // included) reads as nothing.
            if r.start == r.end {
                return match self.store.head(&path).await {
                    Ok(meta) if r.start > meta.size => Err(range_not_satisfiable()),
                    Ok(_) => Ok(futures_util::stream::empty().boxed()),
                    Err(object_store::Error::NotFound { .. }) => Err(not_found()),
                    Err(e) => Err(self.failed("head", key, &e)),
                };
            }
        }
        let options = GetOptions {
            range: range.clone().map(GetRange::Bounded),
            ..GetOptions::default()
        };
        match self.store.get_opts(&path, options).await {
            Ok(result) => {
                let store = self.backend.name();
                let key = key.to_owned();
                let range = result.range.clone();
                let stream = match result.payload {
                    GetResultPayload::File(file, _) => return Ok(local::file_stream(file, range)),
                    GetResultPayload::Stream(stream) => stream,
                };
                Ok(stream
                    .map_err(move |e| {
                        tracing::warn!(store, key, error = %e, "object read failed");
                        std::io::Error::from(e)
                    })
                    .boxed())
            }
            Err(object_store::Error::NotFound { .. }) => Err(not_found()),
            Err(e) => {
                if let Some(r) = &range {
                    if let Some(problem) = self.range_problem(&path, r).await {
                        return Err(problem);
                    }
                }
                Err(self.failed("get", key, &e))
            }
        }
    }

    async fn copy(&self, from: &str, to: &str) -> Result<()> {
        let (src, dst) = (self.path(from)?, self.path(to)?);
        match self.store.copy(&src, &dst).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Err(not_found()),
            Err(e) => Err(self.failed("copy", from, &e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("delete", key, &e)),
        }
    }

    async fn ping(&self) -> Result<()> {
        if let Backend::Local { root } = &self.backend {
            // Listing a missing directory succeeds (as empty), so check it exists.
            match tokio::fs::metadata(root).await {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    tracing::warn!(root = %root.display(), "storage root is not a directory");
                    return Err(Error::unavailable());
                }
                Err(e) => {
                    tracing::warn!(root = %root.display(), error = %e, "storage root unreadable");
                    return Err(Error::unavailable());
                }
            }
        }
        // The top level holds a few prefixes (`blobs/`, `staging/`), so this is one small
        // request; unlike a HEAD of some key, it fails when the bucket is missing.
        match self.store.list_with_delimiter(None).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.failed("ping", "", &e)),
        }
    }
}
