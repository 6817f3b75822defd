//! Versioned schema migrations, applied in order at open. `PRAGMA user_version` records
//! the last applied one; a migration is never edited after release, only appended.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: accounts, sessions, conversations, members, messages, membership events.
    r#"
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        device_name TEXT NOT NULL,
        refresh_hash BLOB NOT NULL UNIQUE,
        previous_hash BLOB,
        expires_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX sessions_previous ON sessions(previous_hash);
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        kind INTEGER NOT NULL,           -- 0 direct, 1 group
        name TEXT,
        direct_key TEXT UNIQUE,          -- 'lo:hi' user ids for direct conversations
        member_count INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE members (
        conv_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        role INTEGER NOT NULL,           -- 0 owner, 1 admin, 2 member
        joined_pos INTEGER NOT NULL,
        left_pos INTEGER,                -- set while the user is not a member any more
        left_seq INTEGER,                -- last message they may read after leaving
        read_seq INTEGER NOT NULL DEFAULT 0,
        read_pos INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (conv_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX members_by_user ON members(user_id);
    -- Clustered by conversation and sequence: history pages are contiguous reads.
    CREATE TABLE messages (
        conv_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        id INTEGER NOT NULL,
        pos INTEGER NOT NULL,
        sender INTEGER NOT NULL,
        cid TEXT,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (conv_id, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX messages_client_id ON messages(sender, cid);
    CREATE INDEX messages_by_pos ON messages(conv_id, pos);
    CREATE TABLE member_events (
        pos INTEGER PRIMARY KEY,
        conv_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        change INTEGER NOT NULL,         -- 0 added, 1 removed, 2 left, 3 role
        actor INTEGER NOT NULL,
        role INTEGER,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX member_events_by_conv ON member_events(conv_id, pos);
    "#,
    // 2: replies, mentions, edits and deletes, delivered markers, last seen.
    r#"
    ALTER TABLE messages ADD COLUMN reply_to INTEGER;
    ALTER TABLE messages ADD COLUMN mentions TEXT;          -- space-separated user ids
    ALTER TABLE messages ADD COLUMN mention_all INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN edited_at INTEGER;
    ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
    -- Edits and deletes, in the sync order: a client that saw the original learns of the
    -- change at this position.
    CREATE TABLE message_changes (
        pos INTEGER PRIMARY KEY,
        conv_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        kind INTEGER NOT NULL,           -- 0 edited, 1 deleted
        actor INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX message_changes_by_conv ON message_changes(conv_id, pos);
    -- Who was mentioned where, for notifications.
    CREATE TABLE mentions (
        user_id INTEGER NOT NULL,
        conv_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (user_id, conv_id, seq)
    ) WITHOUT ROWID;
    ALTER TABLE members ADD COLUMN delivered_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN last_seen INTEGER;
    "#,
    // 3: uploads. Content is stored once per SHA-256 (blobs); uploads are a user's
    // files; attachment_refs say which messages carry which upload.
    r#"
    CREATE TABLE blobs (
        id INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL UNIQUE,
        key TEXT NOT NULL,               -- object key in blob storage
        size INTEGER NOT NULL,
        content_type TEXT NOT NULL,
        width INTEGER,
        height INTEGER,
        blurhash TEXT,
        thumbnails TEXT NOT NULL DEFAULT '[]',   -- JSON list of ThumbnailView
        created_at INTEGER NOT NULL
    );
    CREATE TABLE uploads (
        id INTEGER PRIMARY KEY,
        owner INTEGER NOT NULL,
        name TEXT NOT NULL,
        declared_type TEXT,
        length INTEGER NOT NULL,
        received INTEGER NOT NULL DEFAULT 0,
        parts TEXT NOT NULL DEFAULT '',  -- space-separated start offsets of stored parts
        created_at INTEGER NOT NULL,
        blob_id INTEGER,                 -- set once complete
        attached_at INTEGER,             -- first time a message carried it
        detached_at INTEGER              -- a message carrying it was deleted since
    );
    CREATE INDEX uploads_by_owner ON uploads(owner);
    CREATE INDEX uploads_by_blob ON uploads(blob_id);
    CREATE INDEX uploads_unattached ON uploads(created_at) WHERE attached_at IS NULL;
    -- Garbage collection looks only at uploads that lost a reference, not at every
    -- attached one.
    CREATE INDEX uploads_detached ON uploads(detached_at) WHERE detached_at IS NOT NULL;
    CREATE TABLE attachment_refs (
        upload_id INTEGER NOT NULL,
        conv_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (upload_id, conv_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX attachment_refs_by_message ON attachment_refs(conv_id, seq);
    ALTER TABLE messages ADD COLUMN attachments TEXT;  -- JSON list of AttachmentView
    "#,
    // 4: reads by position find their sequence range on the primary key instead
    // (`positions.rs`), which saves one index page per conversation in every commit.
    r#"
    DROP INDEX messages_by_pos;
    "#,
    // 5: client ids leave `messages`' unique index for a table the writer fills a sender
    // at a time, many ids per leaf (`writer/client_ids.rs`); `floor` is the position up
    // to which every client id is in it.
    r#"
    CREATE TABLE message_cids (
        sender INTEGER NOT NULL,
        cid TEXT NOT NULL,
        conv_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (sender, cid)
    ) WITHOUT ROWID;
    INSERT INTO message_cids (sender, cid, conv_id, seq)
        SELECT sender, cid, conv_id, seq FROM messages WHERE cid IS NOT NULL;
    DROP INDEX messages_client_id;
    CREATE TABLE cid_index_state (id INTEGER PRIMARY KEY CHECK (id = 1), floor INTEGER NOT NULL);
    INSERT INTO cid_index_state (id, floor) VALUES (1, (SELECT COALESCE(MAX(pos), 0) FROM messages));
    "#,
    // 6: new messages are appended by position to `message_tail` and copied into the
    // conversation-clustered table a conversation at a time (`writer/tail.rs`); readers
    // see both through the `messages` view. A tail row already copied is hidden by the
    // view until the writer deletes the tail's copied prefix.
    r#"
    ALTER TABLE messages RENAME TO message_rows;
    CREATE TABLE message_tail (
        pos INTEGER PRIMARY KEY,
        conv_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        id INTEGER NOT NULL,
        sender INTEGER NOT NULL,
        cid TEXT,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        reply_to INTEGER,
        mentions TEXT,
        mention_all INTEGER NOT NULL DEFAULT 0,
        edited_at INTEGER,
        deleted INTEGER NOT NULL DEFAULT 0,
        attachments TEXT
    );
    CREATE VIEW messages AS
        SELECT conv_id, seq, id, pos, sender, cid, body, created_at, reply_to, mentions,
               mention_all, edited_at, deleted, attachments
        FROM message_rows
        UNION ALL
        SELECT conv_id, seq, id, pos, sender, cid, body, created_at, reply_to, mentions,
               mention_all, edited_at, deleted, attachments
        FROM message_tail t
        WHERE NOT EXISTS (SELECT 1 FROM message_rows r WHERE r.conv_id = t.conv_id AND r.seq = t.seq);
    "#,
];

pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "applied schema migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_6_keeps_every_message_and_shows_it_through_the_view() {
        crate::sqlite::page_cache::install();
        let mut conn = Connection::open_in_memory().expect("open");
        for (index, sql) in MIGRATIONS.iter().enumerate().take(5) {
            conn.execute_batch(sql).expect("older migration");
            conn.pragma_update(None, "user_version", index + 1)
                .expect("version");
        }
        conn.execute_batch(
            "INSERT INTO messages (conv_id, seq, id, pos, sender, cid, body, created_at, edited_at)
             VALUES (1, 1, 10, 1, 5, 'a', 'one', 0, NULL), (1, 2, 11, 3, 5, NULL, 'two', 0, 7),
                    (2, 1, 12, 2, 6, 'b', 'three', 0, NULL);",
        )
        .expect("v5 rows");
        migrate(&mut conn).expect("migrate");
        let rows: Vec<(i64, i64, i64, String, Option<i64>)> = conn
            .prepare("SELECT conv_id, seq, pos, body, edited_at FROM messages ORDER BY pos")
            .expect("prepare")
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(
            rows,
            vec![
                (1, 1, 1, "one".to_owned(), None),
                (2, 1, 2, "three".to_owned(), None),
                (1, 2, 3, "two".to_owned(), Some(7)),
            ]
        );
        let in_tail: i64 = conn
            .query_row("SELECT COUNT(*) FROM message_tail", [], |r| r.get(0))
            .expect("tail");
        assert_eq!(in_tail, 0);
    }
}
