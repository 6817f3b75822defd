//! Upload metadata writes: creation under the quota, resumable progress, completion
//! onto a shared blob, deletion and garbage collection. Each runs in a savepoint of
//! the writer's batch, so a failure part-way leaves nothing behind.

use super::super::uploads::{load_upload, thumbnails_to_json};
use super::*;
use parlor_core::uploads::{Garbage, NewBlob, NewUpload, UploadRecord};

/// Garbage collection removes at most this many uploads per call, so one call never
/// holds the writer for long; the server calls again while there is more.
const GC_BATCH: i64 = 500;

impl Writer {
    pub(super) fn create_upload(&mut self, upload: NewUpload, quota: u64) -> Result<UploadRecord> {
        let used = super::super::uploads::usage(&self.conn, upload.owner).map_err(db_err)?;
        if used.saturating_add(upload.length) > quota {
            return Err(Error::new(
                ErrorCode::QuotaExceeded,
                format!("storage quota of {quota} bytes exceeded ({used} bytes used)"),
            ));
        }
        let now = now_ms();
        let id = Id(self.ids.next_id(now));
        self.conn
            .prepare_cached(
                "INSERT INTO uploads (id, owner, name, declared_type, length, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id.0 as i64,
                    upload.owner.0 as i64,
                    upload.name,
                    upload.declared_type,
                    upload.length as i64,
                    now
                ])
            })
            .map_err(db_err)?;
        Ok(UploadRecord {
            id,
            owner: upload.owner,
            name: upload.name,
            declared_type: upload.declared_type,
            length: upload.length,
            offset: 0,
            parts: Vec::new(),
            created_at: now,
            blob: None,
            attached: false,
        })
    }

    fn existing_upload(&self, id: Id) -> Result<UploadRecord> {
        load_upload(&self.conn, id)
            .map_err(db_err)?
            .ok_or_else(|| Error::not_found("upload not found"))
    }

    pub(super) fn advance_upload(&mut self, id: Id, from: u64, to: u64) -> Result<UploadRecord> {
        let mut upload = self.existing_upload(id)?;
        if upload.blob.is_some() || upload.offset != from || to < from || to > upload.length {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!("upload offset is {}", upload.offset),
            ));
        }
        if to == from {
            return Ok(upload);
        }
        upload.parts.push(from);
        upload.offset = to;
        let parts: Vec<String> = upload.parts.iter().map(u64::to_string).collect();
        self.conn
            .prepare_cached("UPDATE uploads SET received = ?2, parts = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id.0 as i64, to as i64, parts.join(" ")]))
            .map_err(db_err)?;
        Ok(upload)
    }

    pub(super) fn complete_upload(
        &mut self,
        id: Id,
        blob: NewBlob,
    ) -> Result<(UploadRecord, bool)> {
        let upload = self.existing_upload(id)?;
        if upload.blob.is_some() || upload.offset != upload.length {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "upload is not awaiting completion (offset {} of {})",
                    upload.offset, upload.length
                ),
            ));
        }
        let existing =
            super::super::uploads::blob_by_sha(&self.conn, &blob.sha256).map_err(db_err)?;
        let (blob_id, used) = match existing {
            Some(found) => (found.id, false),
            None => {
                let now = now_ms();
                let blob_id = self.ids.next_id(now);
                self.conn
                    .prepare_cached(
                        "INSERT INTO blobs (id, sha256, key, size, content_type, width, height, blurhash, thumbnails, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            blob_id as i64,
                            blob.sha256,
                            blob.key,
                            blob.size as i64,
                            blob.content_type,
                            blob.width.map(i64::from),
                            blob.height.map(i64::from),
                            blob.blurhash,
                            thumbnails_to_json(&blob.thumbnails),
                            now
                        ])
                    })
                    .map_err(db_err)?;
                (Id(blob_id), true)
            }
        };
        self.conn
            .prepare_cached("UPDATE uploads SET blob_id = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id.0 as i64, blob_id.0 as i64]))
            .map_err(db_err)?;
        let ready = self.existing_upload(id)?;
        Ok((ready, used))
    }

    pub(super) fn delete_upload(&mut self, id: Id) -> Result<Garbage> {
        let upload = self.existing_upload(id)?;
        let carried: bool = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM attachment_refs WHERE upload_id = ?1)")
            .and_then(|mut s| s.query_row([id.0 as i64], |r| r.get(0)))
            .map_err(db_err)?;
        if carried {
            return Err(Error::new(
                ErrorCode::Conflict,
                "upload is attached to a message; delete the message instead",
            ));
        }
        let mut garbage = Garbage::default();
        self.remove_upload(&upload, &mut garbage)?;
        Ok(garbage)
    }

    /// Deletes one upload row and, if it was the last user of its blob, the blob row.
    fn remove_upload(&mut self, upload: &UploadRecord, garbage: &mut Garbage) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM uploads WHERE id = ?1")
            .and_then(|mut s| s.execute([upload.id.0 as i64]))
            .map_err(db_err)?;
        garbage.uploads += 1;
        garbage
            .objects
            .extend(upload.part_keys().into_iter().map(|(key, _, _)| key));
        if let Some(blob) = &upload.blob {
            let removed = self
                .conn
                .prepare_cached(
                    "DELETE FROM blobs WHERE id = ?1
                       AND NOT EXISTS (SELECT 1 FROM uploads WHERE blob_id = ?1)",
                )
                .and_then(|mut s| s.execute([blob.id.0 as i64]))
                .map_err(db_err)?;
            if removed > 0 {
                garbage.blobs += 1;
                garbage.objects.extend(blob.object_keys());
            }
        }
        Ok(())
    }

    pub(super) fn collect_garbage(&mut self, unattached_before_ms: i64) -> Result<Garbage> {
        let ids: Vec<i64> = self
            .conn
            .prepare_cached(
                "SELECT id FROM uploads WHERE attached_at IS NULL AND created_at < ?1
                 UNION ALL
                 SELECT u.id FROM uploads u WHERE u.detached_at IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM attachment_refs a WHERE a.upload_id = u.id)
                 LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(params![unattached_before_ms, GC_BATCH], |r| r.get(0))?
                    .collect()
            })
            .map_err(db_err)?;
        // Uploads that lost one reference but are still carried elsewhere stay.
        self.conn
            .prepare_cached(
                "UPDATE uploads SET detached_at = NULL WHERE detached_at IS NOT NULL
                   AND EXISTS (SELECT 1 FROM attachment_refs a WHERE a.upload_id = uploads.id)",
            )
            .and_then(|mut s| s.execute([]))
            .map_err(db_err)?;
        let mut garbage = Garbage::default();
        for id in ids {
            if let Some(upload) = load_upload(&self.conn, Id(id as u64)).map_err(db_err)? {
                self.remove_upload(&upload, &mut garbage)?;
            }
        }
        Ok(garbage)
    }
}
