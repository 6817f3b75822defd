//! The local filesystem adapter: one file per object under a root directory.

use crate::{Backend, ObjectBlobStore};
use object_store::local::LocalFileSystem;
use parlor_core::{Error, Result};
use parlor_proto::ErrorCode;
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
