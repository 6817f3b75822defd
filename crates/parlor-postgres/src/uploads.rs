//! Upload metadata: the [`parlor_core::ports::UploadStore`] port on the cluster's
//! database, next to the messages that carry the uploads.
//!
//! # Locks
//!
//! Several nodes run these concurrently, and PostgreSQL's READ COMMITTED lets a
//! statement miss what another uncommitted transaction is doing. Each decision is
//! therefore taken under a row lock, in a statement that starts after the lock is held
//! (so it sees every commit before it):
//!
//! - **Quota.** An owner's creations are serialized by a transaction-scoped advisory
//!   lock on the owner, so two concurrent creations cannot both fit under the quota.
//! - **Progress.** `advance_upload` is one conditional `UPDATE` (compare-and-set on
//!   `received`); of two writers from the same offset, the second re-evaluates the
//!   condition on the first one's row and updates nothing.
//! - **Attaching.** The append writer locks the uploads it attaches (`FOR UPDATE`,
//!   after the conversation rows); deleting or collecting an upload locks it too, so an
//!   upload is never removed while a commit is attaching it.
//! - **Blobs.** Whoever may remove a blob's last upload (`delete_upload`, garbage
//!   collection) locks the blob row `FOR UPDATE` and only then checks whether any upload
//!   still uses it; `complete_upload` reuses an existing blob only after locking it
//!   `FOR KEY SHARE`. So a blob is never removed while an upload is being completed
//!   onto it, and a completion that finds its blob removed inserts a new one.
//!
//! Lock order, which keeps all of this free of deadlocks with the message path:
//! conversations, then uploads (by id), then blobs (by id), then the position counter.
//! Nothing here takes conversation locks or positions.
//!
//! # Garbage
//!
//! A blob row loses its last upload only in `delete_upload` and `collect_garbage`, and
//! both remove it in the same transaction, so no sweep over all blobs is needed.
//! Attached uploads that no message carries any more are found through
//! `uploads.detached_at`, set by `delete_message` (see `messages.rs`), instead of a scan
//! of every attached upload.

use crate::codec::sql_id;
use crate::error::DbResult;
use crate::{now_ms, Core};
use deadpool_postgres::GenericClient;
use parlor_core::error::{Error, Result};
use parlor_core::model::UserId;
use parlor_core::uploads::{BlobRecord, Garbage, NewBlob, NewUpload, UploadRecord};
use parlor_proto::rest::ThumbnailView;
use parlor_proto::{ErrorCode, Id};
use std::collections::HashMap;
use tokio_postgres::Row;

/// Uploads (and then blobs) one garbage collection call removes at most, so that it
/// never holds many locks for long. A call handles one batch and returns; the caller
/// calls again until a call reports nothing removed.
const GC_BATCH: i64 = 500;

/// A completion retries this many times when the blob it found is removed under it.
const COMPLETE_ATTEMPTS: usize = 3;

/// First key of the two-key advisory lock that serializes an owner's creations (a
/// keyspace apart from the migration lock, which uses the one-key form).
const QUOTA_LOCK: i32 = 0x7570_6c64;

/// The columns [`upload_record`] reads: the upload `u` and its blob `b` (left-joined).
pub const UPLOAD_COLUMNS: &str =
    "u.id, u.owner, u.name, u.declared_type, u.length, u.received, u.parts, u.created_at, u.attached_at,
     b.id, b.key, b.sha256, b.size, b.content_type, b.width, b.height, b.blurhash, b.thumbnails";

const BLOB_COLUMNS: &str =
    "b.id, b.key, b.sha256, b.size, b.content_type, b.width, b.height, b.blurhash, b.thumbnails";

/// An upload from [`UPLOAD_COLUMNS`].
pub fn upload_record(row: &Row) -> UploadRecord {
    let blob = row.get::<_, Option<i64>>(9).map(|_| blob_record(row, 9));
    UploadRecord {
        id: Id(row.get::<_, i64>(0) as u64),
        owner: Id(row.get::<_, i64>(1) as u64),
        name: row.get(2),
        declared_type: row.get(3),
        length: row.get::<_, i64>(4) as u64,
        offset: row.get::<_, i64>(5) as u64,
        parts: row
            .get::<_, Vec<i64>>(6)
            .into_iter()
            .map(|p| p as u64)
            .collect(),
        created_at: row.get(7),
        attached: row.get::<_, Option<i64>>(8).is_some(),
        blob,
    }
}

/// A blob from [`BLOB_COLUMNS`] starting at `start`.
fn blob_record(row: &Row, start: usize) -> BlobRecord {
    BlobRecord {
        id: Id(row.get::<_, i64>(start) as u64),
        key: row.get(start + 1),
        sha256: row.get(start + 2),
        size: row.get::<_, i64>(start + 3) as u64,
        content_type: row.get(start + 4),
        width: row.get::<_, Option<i32>>(start + 5).map(|v| v as u32),
        height: row.get::<_, Option<i32>>(start + 6).map(|v| v as u32),
        blurhash: row.get(start + 7),
        thumbnails: decode_thumbnails(row.get(start + 8)),
    }
}

fn encode_thumbnails(thumbnails: &[ThumbnailView]) -> Result<String> {
    serde_json::to_string(thumbnails).map_err(|e| {
        tracing::error!(error = %e, "cannot encode thumbnails");
        Error::internal()
    })
}

/// A blob whose thumbnail list cannot be read is served without thumbnails.
fn decode_thumbnails(json: &str) -> Vec<ThumbnailView> {
    serde_json::from_str(json).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "unreadable thumbnail list");
        Vec::new()
    })
}

fn dimension(v: Option<u32>) -> Option<i32> {
    v.map(|v| i32::try_from(v).unwrap_or(i32::MAX))
}

fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn not_found() -> Error {
    Error::not_found("upload not found")
}

/// Loads uploads with their blobs; with `lock`, the upload rows are locked `FOR UPDATE`
/// in id order (the lock order of uploads).
pub async fn load_many(
    client: &impl GenericClient,
    ids: &[i64],
    lock: bool,
) -> Result<HashMap<Id, UploadRecord>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {UPLOAD_COLUMNS} FROM uploads u LEFT JOIN blobs b ON b.id = u.blob_id
         WHERE u.id = ANY($1) ORDER BY u.id{}",
        if lock { " FOR UPDATE OF u" } else { "" }
    );
    let stmt = client.prepare_cached(&sql).await?;
    Ok(client
        .query(&stmt, &[&ids])
        .await?
        .iter()
        .map(|r| {
            let record = upload_record(r);
            (record.id, record)
        })
        .collect())
}

async fn load(client: &impl GenericClient, id: Id, lock: bool) -> Result<Option<UploadRecord>> {
    Ok(load_many(client, &[sql_id(id)], lock)
        .await
        .db()?
        .remove(&id))
}

async fn usage_of(client: &impl GenericClient, owner: UserId) -> Result<u64> {
    let stmt = client
        .prepare_cached("SELECT COALESCE(SUM(length), 0)::bigint FROM uploads WHERE owner = $1")
        .await
        .db()?;
    let used: i64 = client
        .query_one(&stmt, &[&sql_id(owner)])
        .await
        .db()?
        .get(0);
    Ok(used.max(0) as u64)
}

/// Second key of an owner's quota lock: the id folded to 32 bits. Two owners that
/// share a key only wait for each other.
fn quota_key(owner: UserId) -> i32 {
    (owner.0 ^ (owner.0 >> 32)) as u32 as i32
}

pub async fn create_upload(core: &Core, upload: NewUpload, quota: u64) -> Result<UploadRecord> {
    let mut client = core.db.primary().await?;
    let tx = client.transaction().await.db()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&QUOTA_LOCK, &quota_key(upload.owner)],
    )
    .await
    .db()?;
    let used = usage_of(&tx, upload.owner).await?;
    if used.saturating_add(upload.length) > quota {
        return Err(Error::new(
            ErrorCode::QuotaExceeded,
            format!("storage quota of {quota} bytes exceeded ({used} bytes used)"),
        ));
    }
    let id = Id(core.ids.next_id()?);
    let created_at = now_ms();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO uploads (id, owner, name, declared_type, length, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await
        .db()?;
    tx.execute(
        &stmt,
        &[
            &sql_id(id),
            &sql_id(upload.owner),
            &upload.name,
            &upload.declared_type,
            &sql_u64(upload.length),
            &created_at,
        ],
    )
    .await
    .db()?;
    tx.commit().await.db()?;
    Ok(UploadRecord {
        id,
        owner: upload.owner,
        name: upload.name,
        declared_type: upload.declared_type,
        length: upload.length,
        offset: 0,
        parts: Vec::new(),
        created_at,
        blob: None,
        attached: false,
    })
}

pub async fn upload(core: &Core, id: Id) -> Result<Option<UploadRecord>> {
    let client = core.db.primary().await?;
    load(&client, id, false).await
}

pub async fn advance_upload(core: &Core, id: Id, from: u64, to: u64) -> Result<UploadRecord> {
    let client = core.db.primary().await?;
    if to > from {
        // Compare-and-set: only from the offset the caller names. A concurrent writer
        // that got there first moved `received`, so this one updates nothing.
        let stmt = client
            .prepare_cached(&format!(
                "WITH u AS (
                    UPDATE uploads SET received = $3, parts = array_append(parts, $2)
                    WHERE id = $1 AND received = $2 AND blob_id IS NULL AND $3 <= length
                    RETURNING *)
                 SELECT {UPLOAD_COLUMNS} FROM u LEFT JOIN blobs b ON b.id = u.blob_id"
            ))
            .await
            .db()?;
        let row = client
            .query_opt(&stmt, &[&sql_id(id), &sql_u64(from), &sql_u64(to)])
            .await
            .db()?;
        if let Some(row) = row {
            return Ok(upload_record(&row));
        }
    }
    // Nothing moved. A compare-and-set that matched no row conflicts (`to != from`);
    // an empty part succeeds only where a real one could have been stored.
    let upload = load(&client, id, false).await?.ok_or_else(not_found)?;
    if upload.blob.is_some() || upload.offset != from || to != from || to > upload.length {
        return Err(Error::new(
            ErrorCode::Conflict,
            format!("upload offset is {}", upload.offset),
        ));
    }
    Ok(upload)
}

pub async fn blob_by_sha(core: &Core, sha256: &str) -> Result<Option<BlobRecord>> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {BLOB_COLUMNS} FROM blobs b WHERE b.sha256 = $1"
        ))
        .await
        .db()?;
    Ok(client
        .query_opt(&stmt, &[&sha256])
        .await
        .db()?
        .map(|r| blob_record(&r, 0)))
}

pub async fn complete_upload(core: &Core, id: Id, blob: NewBlob) -> Result<(UploadRecord, bool)> {
    let mut client = core.db.primary().await?;
    let tx = client.transaction().await.db()?;
    let upload = load(&tx, id, true).await?.ok_or_else(not_found)?;
    if upload.blob.is_some() || upload.offset != upload.length {
        return Err(Error::new(
            ErrorCode::Conflict,
            format!(
                "upload is not awaiting completion (offset {} of {})",
                upload.offset, upload.length
            ),
        ));
    }
    let thumbnails = encode_thumbnails(&blob.thumbnails)?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO blobs (id, sha256, key, size, content_type, width, height, blurhash,
                                thumbnails, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (sha256) DO NOTHING RETURNING id",
        )
        .await
        .db()?;
    // Locking the existing blob keeps a concurrent removal of its last upload from
    // removing it before this upload points at it.
    let existing = tx
        .prepare_cached("SELECT id FROM blobs WHERE sha256 = $1 FOR KEY SHARE")
        .await
        .db()?;
    let mut found = None;
    for _ in 0..COMPLETE_ATTEMPTS {
        let blob_id = core.ids.next_id()?;
        let inserted = tx
            .query_opt(
                &insert,
                &[
                    &(blob_id as i64),
                    &blob.sha256,
                    &blob.key,
                    &sql_u64(blob.size),
                    &blob.content_type,
                    &dimension(blob.width),
                    &dimension(blob.height),
                    &blob.blurhash,
                    &thumbnails,
                    &now_ms(),
                ],
            )
            .await
            .db()?;
        if let Some(row) = inserted {
            found = Some((row.get::<_, i64>(0), true));
            break;
        }
        // Another upload of the same bytes has a blob; none if it was removed after the
        // insert saw it, and then the next attempt inserts.
        if let Some(row) = tx.query_opt(&existing, &[&blob.sha256]).await.db()? {
            found = Some((row.get::<_, i64>(0), false));
            break;
        }
    }
    let Some((blob_id, used)) = found else {
        tracing::warn!(upload = %id, "blob kept changing during completion");
        return Err(Error::unavailable());
    };
    let stmt = tx
        .prepare_cached("UPDATE uploads SET blob_id = $2 WHERE id = $1")
        .await
        .db()?;
    tx.execute(&stmt, &[&sql_id(id), &blob_id]).await.db()?;
    let ready = load(&tx, id, false).await?.ok_or_else(Error::internal)?;
    tx.commit().await.db()?;
    Ok((ready, used))
}

/// Locks blobs `FOR UPDATE` in id order, then removes those no upload uses (a statement
/// that starts after the locks, so it sees every upload committed before them).
async fn remove_unused_blobs(
    tx: &deadpool_postgres::Transaction<'_>,
    blob_ids: &mut Vec<i64>,
    garbage: &mut Garbage,
) -> Result<()> {
    if blob_ids.is_empty() {
        return Ok(());
    }
    blob_ids.sort_unstable();
    blob_ids.dedup();
    let lock = tx
        .prepare_cached("SELECT id FROM blobs WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .await
        .db()?;
    tx.query(&lock, &[&*blob_ids]).await.db()?;
    let remove = tx
        .prepare_cached(&format!(
            "DELETE FROM blobs b WHERE b.id = ANY($1)
               AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.blob_id = b.id)
             RETURNING {BLOB_COLUMNS}"
        ))
        .await
        .db()?;
    for row in tx.query(&remove, &[&*blob_ids]).await.db()? {
        garbage.blobs += 1;
        garbage.objects.extend(blob_record(&row, 0).object_keys());
    }
    Ok(())
}

pub async fn delete_upload(core: &Core, id: Id) -> Result<Garbage> {
    let mut client = core.db.primary().await?;
    let tx = client.transaction().await.db()?;
    // Locked: no message can attach it while this decides.
    let upload = load(&tx, id, true).await?.ok_or_else(not_found)?;
    let stmt = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM attachment_refs WHERE upload_id = $1)")
        .await
        .db()?;
    let carried: bool = tx.query_one(&stmt, &[&sql_id(id)]).await.db()?.get(0);
    if carried {
        return Err(Error::new(
            ErrorCode::Conflict,
            "upload is attached to a message; delete the message instead",
        ));
    }
    let mut blob_ids: Vec<i64> = upload.blob.iter().map(|b| sql_id(b.id)).collect();
    if !blob_ids.is_empty() {
        // The blob first, so that a concurrent removal of its other upload and this one
        // cannot each leave it to the other.
        let lock = tx
            .prepare_cached("SELECT id FROM blobs WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .await
            .db()?;
        tx.query(&lock, &[&blob_ids]).await.db()?;
    }
    let stmt = tx
        .prepare_cached("DELETE FROM uploads WHERE id = $1")
        .await
        .db()?;
    tx.execute(&stmt, &[&sql_id(id)]).await.db()?;
    let mut garbage = Garbage {
        uploads: 1,
        blobs: 0,
        // A complete upload's parts were deleted when it completed; naming them again
        // is harmless (deleting a missing object succeeds) and covers a crash between.
        objects: upload
            .part_keys()
            .into_iter()
            .map(|(key, _, _)| key)
            .collect(),
    };
    remove_unused_blobs(&tx, &mut blob_ids, &mut garbage).await?;
    tx.commit().await.db()?;
    Ok(garbage)
}

pub async fn may_download(core: &Core, viewer: UserId, id: Id) -> Result<bool> {
    // The primary: a download right after the message arrived must not be refused by a
    // replica that has not seen it yet. Former members see what history shows them:
    // messages up to `left_seq`.
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(
            "SELECT u.owner = $2 OR EXISTS (
                SELECT 1 FROM attachment_refs a
                JOIN members m ON m.conv_id = a.conv_id AND m.user_id = $2
                WHERE a.upload_id = $1 AND (m.left_seq IS NULL OR a.seq <= m.left_seq))
             FROM uploads u WHERE u.id = $1",
        )
        .await
        .db()?;
    Ok(client
        .query_opt(&stmt, &[&sql_id(id), &sql_id(viewer)])
        .await
        .db()?
        .is_some_and(|r| r.get::<_, bool>(0)))
}

pub async fn usage(core: &Core, owner: UserId) -> Result<u64> {
    let client = core.db.primary().await?;
    usage_of(&client, owner).await
}

/// One batch: up to [`GC_BATCH`] expired unattached uploads, up to as many attached
/// uploads no message carries any more, and the blobs they leave unused.
pub async fn collect_garbage(core: &Core, unattached_before_ms: i64) -> Result<Garbage> {
    let mut client = core.db.primary().await?;
    let tx = client.transaction().await.db()?;
    // Candidates, locked; SKIP LOCKED leaves uploads being attached (or collected by
    // another node) to a later call.
    let expired = tx
        .prepare_cached(
            "SELECT id FROM uploads WHERE attached_at IS NULL AND created_at < $1
             ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .await
        .db()?;
    let detached = tx
        .prepare_cached(
            "SELECT id FROM uploads WHERE detached_at IS NOT NULL
             ORDER BY detached_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .await
        .db()?;
    let mut candidates: Vec<i64> = tx
        .query(&expired, &[&unattached_before_ms, &GC_BATCH])
        .await
        .db()?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let detached: Vec<i64> = tx
        .query(&detached, &[&GC_BATCH])
        .await
        .db()?
        .iter()
        .map(|r| r.get(0))
        .collect();
    candidates.extend(&detached);
    if candidates.is_empty() {
        return Ok(Garbage::default());
    }
    // The conditions again, in a statement that starts after the locks: the candidate
    // scan may have missed a commit that attached an upload just before.
    let remove = tx
        .prepare_cached(&format!(
            "WITH u AS (
                DELETE FROM uploads u WHERE u.id = ANY($1)
                  AND ((u.attached_at IS NULL AND u.created_at < $2)
                    OR (u.attached_at IS NOT NULL
                        AND NOT EXISTS (SELECT 1 FROM attachment_refs a WHERE a.upload_id = u.id)))
                RETURNING *)
             SELECT {UPLOAD_COLUMNS} FROM u LEFT JOIN blobs b ON b.id = u.blob_id"
        ))
        .await
        .db()?;
    let mut garbage = Garbage::default();
    let mut blob_ids = Vec::new();
    for row in tx
        .query(&remove, &[&candidates, &unattached_before_ms])
        .await
        .db()?
    {
        let upload = upload_record(&row);
        garbage.uploads += 1;
        garbage
            .objects
            .extend(upload.part_keys().into_iter().map(|(key, _, _)| key));
        blob_ids.extend(upload.blob.map(|b| sql_id(b.id)));
    }
    if !detached.is_empty() {
        // Marked uploads still carried by another message are not candidates any more.
        let clear = tx
            .prepare_cached(
                "UPDATE uploads SET detached_at = NULL WHERE id = ANY($1) AND detached_at IS NOT NULL",
            )
            .await
            .db()?;
        tx.execute(&clear, &[&detached]).await.db()?;
    }
    remove_unused_blobs(&tx, &mut blob_ids, &mut garbage).await?;
    tx.commit().await.db()?;
    if garbage.uploads > 0 || garbage.blobs > 0 {
        tracing::debug!(
            uploads = garbage.uploads,
            blobs = garbage.blobs,
            "collected upload garbage"
        );
    }
    Ok(garbage)
}
