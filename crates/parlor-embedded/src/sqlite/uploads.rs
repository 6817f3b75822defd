//! Upload and blob rows, read the same way by the writer (under its transaction) and
//! the read pool.

use parlor_core::uploads::{BlobRecord, UploadRecord};
use parlor_proto::rest::{AttachmentView, ThumbnailView};
use parlor_proto::Id;
use rusqlite::{params, Connection, OptionalExtension, Row};

const UPLOAD_COLUMNS: &str = "u.id, u.owner, u.name, u.declared_type, u.length, u.received, u.parts, u.created_at, u.attached_at,
     b.id, b.key, b.sha256, b.size, b.content_type, b.width, b.height, b.blurhash, b.thumbnails";

fn upload_row(r: &Row<'_>) -> rusqlite::Result<UploadRecord> {
    let parts: String = r.get(6)?;
    let blob = match r.get::<_, Option<i64>>(9)? {
        Some(id) => Some(BlobRecord {
            id: Id(id as u64),
            key: r.get(10)?,
            sha256: r.get(11)?,
            size: r.get::<_, i64>(12)? as u64,
            content_type: r.get(13)?,
            width: r.get::<_, Option<i64>>(14)?.map(|v| v as u32),
            height: r.get::<_, Option<i64>>(15)?.map(|v| v as u32),
            blurhash: r.get(16)?,
            thumbnails: thumbnails_from_json(&r.get::<_, String>(17)?),
        }),
        None => None,
    };
    Ok(UploadRecord {
        id: Id(r.get::<_, i64>(0)? as u64),
        owner: Id(r.get::<_, i64>(1)? as u64),
        name: r.get(2)?,
        declared_type: r.get(3)?,
        length: r.get::<_, i64>(4)? as u64,
        offset: r.get::<_, i64>(5)? as u64,
        parts: parts.split(' ').filter_map(|p| p.parse().ok()).collect(),
        created_at: r.get(7)?,
        attached: r.get::<_, Option<i64>>(8)?.is_some(),
        blob,
    })
}

pub fn load_upload(conn: &Connection, id: Id) -> rusqlite::Result<Option<UploadRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {UPLOAD_COLUMNS} FROM uploads u LEFT JOIN blobs b ON b.id = u.blob_id WHERE u.id = ?1"
    ))?
    .query_row([id.0 as i64], upload_row)
    .optional()
}

pub fn blob_by_sha(conn: &Connection, sha256: &str) -> rusqlite::Result<Option<BlobRecord>> {
    conn.prepare_cached(
        "SELECT id, key, sha256, size, content_type, width, height, blurhash, thumbnails
         FROM blobs WHERE sha256 = ?1",
    )?
    .query_row([sha256], |r| {
        Ok(BlobRecord {
            id: Id(r.get::<_, i64>(0)? as u64),
            key: r.get(1)?,
            sha256: r.get(2)?,
            size: r.get::<_, i64>(3)? as u64,
            content_type: r.get(4)?,
            width: r.get::<_, Option<i64>>(5)?.map(|v| v as u32),
            height: r.get::<_, Option<i64>>(6)?.map(|v| v as u32),
            blurhash: r.get(7)?,
            thumbnails: thumbnails_from_json(&r.get::<_, String>(8)?),
        })
    })
    .optional()
}

pub fn usage(conn: &Connection, owner: Id) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT COALESCE(SUM(length), 0) FROM uploads WHERE owner = ?1")?
        .query_row([owner.0 as i64], |r| r.get::<_, i64>(0))
        .map(|v| v as u64)
}

/// The uploader, or a member who can read a message carrying the upload (a former
/// member up to the last message they could read).
pub fn may_download(conn: &Connection, viewer: Id, id: Id) -> rusqlite::Result<bool> {
    let owner: Option<i64> = conn
        .prepare_cached("SELECT owner FROM uploads WHERE id = ?1")?
        .query_row([id.0 as i64], |r| r.get(0))
        .optional()?;
    match owner {
        None => Ok(false),
        Some(owner) if owner as u64 == viewer.0 => Ok(true),
        Some(_) => conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM attachment_refs a
                   JOIN members m ON m.conv_id = a.conv_id AND m.user_id = ?2
                  WHERE a.upload_id = ?1 AND (m.left_pos IS NULL OR a.seq <= m.left_seq))",
            )?
            .query_row(params![id.0 as i64, viewer.0 as i64], |r| r.get(0)),
    }
}

pub fn thumbnails_to_json(thumbnails: &[ThumbnailView]) -> String {
    serde_json::to_string(thumbnails).unwrap_or_else(|_| "[]".to_owned())
}

fn thumbnails_from_json(json: &str) -> Vec<ThumbnailView> {
    serde_json::from_str(json).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "unreadable thumbnail list");
        Vec::new()
    })
}

pub fn attachments_to_json(attachments: &[AttachmentView]) -> Option<String> {
    if attachments.is_empty() {
        return None;
    }
    serde_json::to_string(attachments).ok()
}

pub fn attachments_from_json(json: Option<&str>) -> Vec<AttachmentView> {
    let Some(json) = json else { return Vec::new() };
    serde_json::from_str(json).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "unreadable attachment list");
        Vec::new()
    })
}
