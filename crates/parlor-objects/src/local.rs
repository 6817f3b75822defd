//! The local filesystem adapter: one file per object under a root directory.

use crate::{Backend, ObjectBlobStore, FILE_CHUNK};
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::local::LocalFileSystem;
use parlor_core::ports::ByteStream;
use parlor_core::{Error, Result};
use parlor_proto::ErrorCode;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

impl ObjectBlobStore {
    /// Objects as files under `root`, which is created if missing. Keys map to paths
    /// below it (`blobs/…` → `root/blobs/…`). Each object is written to a temporary file
    /// and renamed into place, so a reader never sees a half-written object.
    pub fn local(root: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&root).map_err(|e| {
            Error::new(
                ErrorCode::Unavailable,
                format!("create {}: {e}", root.display()),
            )
        })?;
        let fs = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| Error::new(ErrorCode::Unavailable, e.to_string()))?
            // Part keys live in one directory per upload; without this every finished
            // upload would leave an empty directory behind.
            .with_automatic_cleanup(true);
        tracing::debug!(root = %root.display(), "local object storage");
        Ok(ObjectBlobStore {
            store: Arc::new(fs),
            backend: Backend::Local { root },
        })
    }
}

/// `range` of an open file, read on blocking threads one [`FILE_CHUNK`] at a time.
pub(crate) fn file_stream(file: std::fs::File, range: Range<u64>) -> ByteStream {
    futures_util::stream::try_unfold(
        (Some(file), range.start, false),
        move |(file, pos, positioned)| async move {
            let Some(mut file) = file else {
                return Ok(None);
            };
            if pos >= range.end {
                return Ok(None);
            }
            let want = (range.end - pos).min(FILE_CHUNK as u64) as usize;
            tokio::task::spawn_blocking(move || {
                if !positioned {
                    file.seek(SeekFrom::Start(pos))?;
                }
                let mut buf = vec![0; want];
                let mut filled = 0;
                while filled < want {
                    match file.read(&mut buf[filled..])? {
                        0 => break,
                        n => filled += n,
                    }
                }
                if filled == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "object is shorter than its size",
                    ));
                }
                buf.truncate(filled);
                Ok(Some((
                    Bytes::from(buf),
                    (Some(file), pos + filled as u64, true),
                )))
            })
            .await
            .map_err(std::io::Error::other)?
        },
    )
    .boxed()
}
