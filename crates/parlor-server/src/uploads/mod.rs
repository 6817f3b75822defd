//! The upload service: creation under limits and quota, resumable receiving of parts,
//! completion (in [`complete`]), access checks for downloads, and garbage collection
//! (in [`gc`]). HTTP framing (tus headers, ranges, response headers) lives in
//! `http/uploads.rs`; this module sees only ports.
//!
//! # Where the bytes go
//! Each request body is streamed into its own part object (`staging/<upload>/<offset>`)
//! on the [`BlobStore`], and the store records the new offset. Parts live in object
//! storage rather than on the receiving node's disk so that, in cluster mode, an
//! interrupted upload can resume on any node. On the last byte the parts are read back
//! once: hashed, type-checked, written as the blob, and media are processed from a
//! scratch copy on local disk.

mod complete;
pub mod gc;

use crate::config::UploadsConfig;
use crate::metrics::Metrics;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use parlor_core::error::{Error, Result};
use parlor_core::model::UserId;
use parlor_core::ports::{BlobStore, ByteStream, UploadStore};
use parlor_core::uploads::{self as rules, BlobRecord, NewUpload, UploadRecord};
use parlor_proto::rest::ThumbnailSize;
use parlor_proto::{ErrorCode, Id};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Semaphore;

pub struct Uploads {
    store: Arc<dyn UploadStore>,
    blobs: Arc<dyn BlobStore>,
    config: UploadsConfig,
    ffmpeg: Option<PathBuf>,
    /// Local scratch space for media processing (decoders want a file, not a stream).
    scratch: PathBuf,
    /// Bounds concurrent decodes: each may take up to the decode limit of memory.
    processing: Semaphore,
    /// Uploads with a request body being stored on this node. A second request for one
    /// of them (a client retrying while its first attempt still streams) is refused
    /// rather than let both write the same part object.
    receiving: parking_lot::Mutex<HashSet<Id>>,
    metrics: Arc<Metrics>,
}

/// What a request body did to an upload.
pub struct Received {
    pub upload: UploadRecord,
    /// The body broke off (the client went away); what arrived before is kept.
    pub cut: Option<std::io::Error>,
}

impl Uploads {
    pub fn new(
        store: Arc<dyn UploadStore>,
        blobs: Arc<dyn BlobStore>,
        config: UploadsConfig,
        scratch: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Self {
        let ffmpeg = match config.ffmpeg.as_str() {
            "" => None,
            "auto" => parlor_media::find_ffmpeg(),
            path => Some(PathBuf::from(path)),
        };
        tracing::info!(
            ffmpeg = ffmpeg.as_ref().map(|p| p.display().to_string()).as_deref().unwrap_or("none"),
            storage = %config.storage,
            "uploads ready"
        );
        let processing = Semaphore::new(config.max_concurrent_processing.max(1));
        Uploads {
            store,
            blobs,
            config,
            ffmpeg,
            scratch,
            processing,
            receiving: parking_lot::Mutex::new(HashSet::new()),
            metrics,
        }
    }

    pub fn config(&self) -> &UploadsConfig {
        &self.config
    }

    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    pub async fn create(
        &self,
        owner: UserId,
        name: &str,
        declared_type: Option<&str>,
        length: u64,
    ) -> Result<UploadRecord> {
        if length > self.config.max_bytes {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!("files are limited to {} bytes", self.config.max_bytes),
            ));
        }
        let declared_type = rules::declared_type(declared_type)?;
        if let Some(declared) = &declared_type {
            self.check_allowed(declared)?;
        }
        self.store
            .create_upload(
                NewUpload {
                    owner,
                    name: rules::file_name(name),
                    declared_type,
                    length,
                },
                self.config.quota_bytes,
            )
            .await
    }

    fn check_allowed(&self, content_type: &str) -> Result<()> {
        if rules::type_allowed(&self.config.allowed_types, content_type) {
            return Ok(());
        }
        Err(Error::new(
            ErrorCode::UnsupportedType,
            format!("files of type {content_type} are not accepted here"),
        ))
    }

    /// The caller's own upload; someone else's answers `not_found` like a missing one.
    pub async fn own(&self, owner: UserId, id: Id) -> Result<UploadRecord> {
        match self.store.upload(id).await? {
            Some(upload) if upload.owner == owner => Ok(upload),
            _ => Err(Error::new(ErrorCode::NotFound, "upload not found")),
        }
    }

    /// Stores a request body as the part of `id` starting at `offset`, and completes the
    /// upload when it was the last one. Runs to the end even if the caller's future is
    /// dropped (the client went away): what arrived must be recorded for the resume.
    pub async fn receive(
        self: &Arc<Self>,
        owner: UserId,
        id: Id,
        offset: u64,
        body: ByteStream,
    ) -> Result<Received> {
        if !self.receiving.lock().insert(id) {
            return Err(Error::new(
                ErrorCode::Conflict,
                "another request for this upload is still running; retry once it has ended",
            ));
        }
        let busy = Busy {
            uploads: Arc::clone(self),
            id,
        };
        tokio::spawn(async move {
            let busy = busy;
            busy.uploads.receive_inner(owner, id, offset, body).await
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "upload task failed");
            Error::internal()
        })?
    }

    async fn receive_inner(
        &self,
        owner: UserId,
        id: Id,
        offset: u64,
        body: ByteStream,
    ) -> Result<Received> {
        let upload = self.own(owner, id).await?;
        if upload.blob.is_some() || upload.offset != offset {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!("upload offset is {}", upload.offset),
            ));
        }
        let room = upload.length - upload.offset;
        if room == 0 {
            // Every byte is here already (an empty file, or a retry after a completion
            // that failed for want of storage): nothing to store, only to complete.
            let mut body = body;
            while let Some(chunk) = body.try_next().await.ok().flatten() {
                if !chunk.is_empty() {
                    return Err(Error::new(
                        ErrorCode::PayloadTooLarge,
                        too_long().to_string(),
                    ));
                }
            }
            let upload = self.complete(upload).await?;
            return Ok(Received { upload, cut: None });
        }
        let written = self
            .blobs
            .put(&rules::part_key(id, offset), bounded(body, room))
            .await?;
        self.metrics.upload_bytes.inc_by(written.bytes);
        let upload = match written.bytes {
            0 => upload,
            n => self.store.advance_upload(id, offset, offset + n).await?,
        };
        if let Some(cut) = written.cut {
            if cut.kind() == std::io::ErrorKind::InvalidData {
                // The body ran past the announced length: a client error, not a cut.
                return Err(Error::new(ErrorCode::PayloadTooLarge, cut.to_string()));
            }
            tracing::debug!(upload = %id, received = upload.offset, error = %cut, "upload body cut");
            return Ok(Received {
                upload,
                cut: Some(cut),
            });
        }
        if upload.offset == upload.length {
            let upload = self.complete(upload).await?;
            return Ok(Received { upload, cut: None });
        }
        Ok(Received { upload, cut: None })
    }

    /// A ready upload `viewer` may download, and its blob. Anything else, including an
    /// upload that exists but is not theirs to read, is `not_found`.
    pub async fn readable(&self, viewer: UserId, id: Id) -> Result<(UploadRecord, BlobRecord)> {
        let not_found = || Error::new(ErrorCode::NotFound, "upload not found");
        if !self.store.may_download(viewer, id).await? {
            return Err(not_found());
        }
        let upload = self.store.upload(id).await?.ok_or_else(not_found)?;
        let blob = upload
            .blob
            .clone()
            .ok_or_else(|| Error::new(ErrorCode::Conflict, "upload is not complete yet"))?;
        Ok((upload, blob))
    }

    pub fn thumbnail_key(blob: &BlobRecord, size: ThumbnailSize) -> Option<String> {
        blob.thumbnail(size)
            .map(|_| rules::thumbnail_key(&blob.key, size))
    }

    /// The owner gives up on an upload no message carries.
    pub async fn delete(&self, owner: UserId, id: Id) -> Result<()> {
        self.own(owner, id).await?;
        let garbage = self.store.delete_upload(id).await?;
        self.remove_objects(&garbage.objects).await;
        Ok(())
    }

    pub async fn usage(&self, owner: UserId) -> Result<u64> {
        self.store.usage(owner).await
    }

    /// Deletes objects whose rows are gone. A failure leaves an orphan object (storage
    /// cost, never a wrong answer), so it is logged, not returned.
    async fn remove_objects(&self, keys: &[String]) {
        for key in keys {
            if let Err(e) = self.blobs.delete(key).await {
                tracing::warn!(key = %key, error = %e, "cannot delete object");
            }
        }
    }
}

/// Marks an upload as receiving on this node until dropped (also if the task panics).
struct Busy {
    uploads: Arc<Uploads>,
    id: Id,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.uploads.receiving.lock().remove(&self.id);
    }
}

/// Ends the body with an `InvalidData` error at the first chunk that goes past `room`
/// bytes (the store keeps what came before it and stops reading).
fn bounded(body: ByteStream, room: u64) -> ByteStream {
    let mut left = room;
    body.map(move |chunk| {
        let chunk = chunk?;
        if (chunk.len() as u64) > left {
            return Err(too_long());
        }
        left -= chunk.len() as u64;
        Ok(chunk)
    })
    .boxed()
}

fn too_long() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "request body is longer than the rest of the upload",
    )
}

/// One chunk as a [`ByteStream`].
pub fn once(bytes: Vec<u8>) -> ByteStream {
    futures_util::stream::once(std::future::ready(Ok(Bytes::from(bytes)))).boxed()
}
