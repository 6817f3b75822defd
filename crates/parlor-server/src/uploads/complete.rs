//! Completion: from the last byte of an upload to a ready attachment.
//!
//! One pass over the stored parts hashes them (SHA-256, for deduplication and the
//! ETag), and, when there are several parts, writes their concatenation as the blob; a
//! single part is copied inside the storage instead. The type is decided from the first
//! bytes before that pass, so a refused file costs one small read. Images and videos
//! also get a scratch copy on local disk, which the decoders read on blocking threads.

use super::Uploads;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use parlor_core::error::{Error, Result};
use parlor_core::ports::ByteStream;
use parlor_core::uploads::{self as rules, NewBlob, UploadRecord};
use parlor_proto::rest::ThumbnailView;
use parlor_proto::ErrorCode;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes read to decide the type: enough for every signature `parlor_media` knows.
const HEAD_BYTES: u64 = 4096;
const FFMPEG_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Media {
    Image,
    Video,
}

/// Objects written so far, deleted again if completion fails.
#[derive(Default)]
struct Written {
    keys: Vec<String>,
    scratch: Option<PathBuf>,
}

/// What the pass over the parts computes as the bytes stream by.
struct Pass {
    hasher: Sha256,
    size: u64,
    scratch: Option<std::fs::File>,
    scratch_error: Option<std::io::Error>,
}

impl Uploads {
    pub(super) async fn complete(&self, upload: UploadRecord) -> Result<UploadRecord> {
        let started = Instant::now();
        let mut written = Written::default();
        let result = self.complete_inner(&upload, &mut written).await;
        if let Some(path) = written.scratch.take() {
            let _ = tokio::fs::remove_file(&path).await;
        }
        match &result {
            Ok((_, outcome)) => {
                self.metrics
                    .uploads_completed
                    .with_label_values(&[outcome])
                    .inc();
                self.metrics
                    .upload_processing
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                self.remove_objects(&written.keys).await;
                if refuses_content(e.code) {
                    // The file itself is refused: nothing of it stays, and its bytes stop
                    // counting against the quota.
                    self.metrics
                        .uploads_completed
                        .with_label_values(&["rejected"])
                        .inc();
                    match self.store.delete_upload(upload.id).await {
                        Ok(garbage) => self.remove_objects(&garbage.objects).await,
                        Err(e) => {
                            tracing::warn!(upload = %upload.id, error = %e, "cannot drop refused upload")
                        }
                    }
                }
            }
        }
        result.map(|(upload, _)| upload)
    }

    async fn complete_inner(
        &self,
        upload: &UploadRecord,
        written: &mut Written,
    ) -> Result<(UploadRecord, &'static str)> {
        let parts = upload.part_keys();
        let head = self.head(&parts).await?;
        let sniffed = parlor_media::sniff(&head);
        let content_type = rules::effective_type(upload.declared_type.as_deref(), sniffed)?;
        self.check_allowed(&content_type)?;
        let media = if parlor_media::decodable_image(&content_type) {
            Some(Media::Image)
        } else if content_type.starts_with("video/") {
            Some(Media::Video)
        } else {
            None
        };

        let key = rules::blob_key(rand::random());
        let scratch_path = media.map(|_| {
            self.scratch
                .join(format!("{}-{}", upload.id, rand::random::<u32>()))
        });
        let scratch = match &scratch_path {
            Some(path) => {
                let file = std::fs::File::create(path).map_err(|e| {
                    tracing::error!(path = %path.display(), error = %e, "cannot create scratch file");
                    Error::unavailable()
                })?;
                written.scratch = Some(path.clone());
                Some(file)
            }
            None => None,
        };
        let pass = Arc::new(Mutex::new(Pass {
            hasher: Sha256::new(),
            size: 0,
            scratch,
            scratch_error: None,
        }));
        let stream = self.parts_stream(&parts, Arc::clone(&pass));
        if parts.len() == 1 {
            // One part already is the whole file: read it for the hash only, and let the
            // storage copy it (server-side on S3).
            let mut stream = stream;
            while stream.try_next().await.map_err(read_error)?.is_some() {}
        } else {
            written.keys.push(key.clone());
            let result = self.blobs.put(&key, stream).await?;
            if let Some(cut) = result.cut {
                return Err(read_error(cut));
            }
        }
        let (sha256, size) = {
            let mut pass = pass.lock();
            if let Some(e) = pass.scratch_error.take() {
                tracing::error!(error = %e, "cannot write scratch file");
                return Err(Error::unavailable());
            }
            pass.scratch.take();
            let digest = std::mem::take(&mut pass.hasher).finalize();
            (hex(&digest), pass.size)
        };
        if size != upload.length {
            // Only a client racing itself with two requests for one offset gets here;
            // the parts cannot be trusted, so the upload goes.
            match self.store.delete_upload(upload.id).await {
                Ok(garbage) => self.remove_objects(&garbage.objects).await,
                Err(e) => tracing::warn!(upload = %upload.id, error = %e, "cannot drop upload"),
            }
            return Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "stored parts hold {size} bytes, not {}; upload the file again",
                    upload.length
                ),
            ));
        }

        if let Some(existing) = self.store.blob_by_sha(&sha256).await? {
            let (ready, _) = self
                .store
                .complete_upload(upload.id, to_new(&existing))
                .await?;
            self.remove_objects(&written.keys).await;
            written.keys.clear();
            self.remove_parts(upload).await;
            return Ok((ready, "deduplicated"));
        }

        let mut blob = NewBlob {
            key: key.clone(),
            sha256,
            size,
            content_type: content_type.clone(),
            width: None,
            height: None,
            blurhash: None,
            thumbnails: Vec::new(),
        };
        if let (Some(media), Some(path)) = (media, &scratch_path) {
            let thumbnails = self.process(media, path, &content_type, &mut blob).await?;
            for (view, bytes) in thumbnails {
                let thumb_key = rules::thumbnail_key(&key, view.size);
                written.keys.push(thumb_key.clone());
                self.blobs.put(&thumb_key, super::once(bytes)).await?;
                blob.thumbnails.push(view);
            }
        }
        if parts.len() == 1 {
            written.keys.push(key.clone());
            self.blobs.copy(&parts[0].0, &key).await?;
        }
        let (ready, used) = self.store.complete_upload(upload.id, blob).await?;
        if !used {
            // The same content completed elsewhere meanwhile; the upload now uses that.
            self.remove_objects(&written.keys).await;
        }
        written.keys.clear();
        self.remove_parts(upload).await;
        Ok((ready, if used { "stored" } else { "deduplicated" }))
    }

    /// The first bytes of the file, from its first part(s).
    async fn head(&self, parts: &[(String, u64, u64)]) -> Result<Vec<u8>> {
        let mut head = Vec::new();
        for (key, start, end) in parts {
            let want = HEAD_BYTES
                .saturating_sub(head.len() as u64)
                .min(end - start);
            if want == 0 {
                break;
            }
            let mut stream = self.blobs.get(key, Some(0..want)).await?;
            while let Some(chunk) = stream.try_next().await.map_err(read_error)? {
                head.extend_from_slice(&chunk);
            }
        }
        Ok(head)
    }

    fn parts_stream(&self, parts: &[(String, u64, u64)], pass: Arc<Mutex<Pass>>) -> ByteStream {
        let blobs = Arc::clone(&self.blobs);
        let keys: Vec<String> = parts.iter().map(|(key, _, _)| key.clone()).collect();
        futures_util::stream::iter(keys)
            .then(move |key| {
                let blobs = Arc::clone(&blobs);
                async move {
                    blobs
                        .get(&key, None)
                        .await
                        .map_err(|e| std::io::Error::other(e.message))
                }
            })
            .try_flatten()
            .inspect_ok(move |chunk: &Bytes| {
                let mut pass = pass.lock();
                pass.hasher.update(chunk);
                pass.size += chunk.len() as u64;
                // A page-cache write of one chunk: short enough for the async thread.
                if let Some(file) = pass.scratch.as_mut() {
                    if let Err(e) = file.write_all(chunk) {
                        pass.scratch = None;
                        pass.scratch_error = Some(e);
                    }
                }
            })
            .boxed()
    }

    /// Dimensions, placeholder and thumbnails of an image or video, on a blocking thread.
    async fn process(
        &self,
        media: Media,
        path: &Path,
        content_type: &str,
        blob: &mut NewBlob,
    ) -> Result<Vec<(ThumbnailView, Vec<u8>)>> {
        let _permit = self
            .processing
            .acquire()
            .await
            .map_err(|_| Error::unavailable())?;
        let path = path.to_owned();
        let content_type = content_type.to_owned();
        let limits = parlor_media::Limits {
            max_pixels: self.config.max_image_pixels,
            ..parlor_media::Limits::default()
        };
        let ffmpeg = self.ffmpeg.clone();
        let outcome = tokio::task::spawn_blocking(move || match media {
            Media::Image => {
                parlor_media::process_image(&path, &content_type, &limits).map(|info| {
                    let thumbs = info.thumbnails.into_iter().map(thumbnail).collect();
                    (
                        (Some(info.width), Some(info.height)),
                        Some(info.blurhash),
                        thumbs,
                    )
                })
            }
            Media::Video => {
                let dims = parlor_media::mp4_dimensions(&path);
                let poster = ffmpeg.and_then(|ffmpeg| {
                    parlor_media::video_poster(&ffmpeg, &path, FFMPEG_TIMEOUT)
                        .map_err(|e| tracing::warn!(error = %e, "no poster frame"))
                        .ok()
                        .flatten()
                });
                let dims = dims.or(poster.as_ref().map(|p| (p.width, p.height)));
                let thumbs = poster.into_iter().map(thumbnail).collect();
                Ok(((dims.map(|d| d.0), dims.map(|d| d.1)), None, thumbs))
            }
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "media task failed");
            Error::internal()
        })?;
        match outcome {
            Ok(((width, height), blurhash, thumbs)) => {
                blob.width = width;
                blob.height = height;
                blob.blurhash = blurhash;
                Ok(thumbs)
            }
            Err(parlor_media::MediaError::Io(e)) => {
                tracing::error!(error = %e, "cannot read scratch file");
                Err(Error::unavailable())
            }
            Err(e) => Err(Error::new(
                ErrorCode::InvalidMedia,
                format!("the image cannot be used: {e}"),
            )),
        }
    }

    async fn remove_parts(&self, upload: &UploadRecord) {
        let keys: Vec<String> = upload.part_keys().into_iter().map(|(k, _, _)| k).collect();
        self.remove_objects(&keys).await;
    }
}

fn thumbnail(t: parlor_media::Thumbnail) -> (ThumbnailView, Vec<u8>) {
    (
        ThumbnailView {
            size: t.size,
            content_type: t.content_type.to_owned(),
            width: t.width,
            height: t.height,
        },
        t.bytes,
    )
}

fn to_new(blob: &parlor_core::uploads::BlobRecord) -> NewBlob {
    NewBlob {
        key: blob.key.clone(),
        sha256: blob.sha256.clone(),
        size: blob.size,
        content_type: blob.content_type.clone(),
        width: blob.width,
        height: blob.height,
        blurhash: blob.blurhash.clone(),
        thumbnails: blob.thumbnails.clone(),
    }
}

/// Errors that mean "this file is refused", as opposed to "try again later".
fn refuses_content(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::TypeMismatch | ErrorCode::UnsupportedType | ErrorCode::InvalidMedia
    )
}

fn read_error(e: std::io::Error) -> Error {
    tracing::error!(error = %e, "cannot read stored upload parts");
    Error::unavailable()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}
