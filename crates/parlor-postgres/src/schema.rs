//! Versioned schema migrations, applied at connect inside one transaction that holds a
//! transaction-scoped advisory lock, so that several nodes starting together apply each
//! migration exactly once (the others wait, then find nothing left to do).
//! `schema_migrations` records what is applied. A migration is never edited once
//! released, only appended.
//!
//! Schema notes (see `docs/postgres.md`):
//! - `parlor_head` is the single-row position counter (see the crate docs).
//! - `messages` is hash-partitioned by `conv_id`; its primary key `(conv_id, seq)`
//!   contains the partition key as PostgreSQL requires. The per-sender client-id
//!   uniqueness cannot be a unique index there (it does not contain `conv_id`), so it is
//!   the primary key of `message_cids`, written in the same transaction, which also
//!   keeps what a duplicate's acknowledgement needs.
//! - `messages.tsv` is built by the node from the core tokenizer's folded tokens (see
//!   `search.rs`); PostgreSQL only stores and matches it.
//! - `event_log` is the transactional outbox of position-bearing events.
//! - Uploads (migration 2): `blobs` hold each distinct content once (by SHA-256),
//!   `uploads` are users' files and point at their blob once complete,
//!   `attachment_refs` say which messages carry which upload, and `messages.attachments`
//!   keeps the attachment views a message was sent with (see `uploads.rs`).
//! - Notifications (migration 3): push targets, mutes, do-not-disturb, the feed and the
//!   push queue (see `notifications.rs`).

use anyhow::Context;
use deadpool_postgres::Object;

/// Key of the advisory lock that serializes migrations ("parlor" in ASCII).
const MIGRATION_LOCK: i64 = 0x7061_726c_6f72;

/// The SQL of each migration; `partitions` is used only when the tables are created.
fn migration(version: usize, partitions: u32) -> Option<String> {
    match version {
        1 => Some(initial(partitions)),
        2 => Some(UPLOADS.to_owned()),
        3 => Some(NOTIFICATIONS.to_owned()),
        _ => None,
    }
}

const LATEST: usize = 3;

/// Migration 3: notifications.
///
/// Push targets and queued pushes get identity ids rather than Snowflakes: they never
/// leave the cluster's database except as provider idempotency keys, which only need
/// to be unique. A target's address is unique across users, so that registering a
/// device again (or on another account) moves it instead of doubling its pushes.
///
/// The queue's `(target_id, message_id)` key makes `record` idempotent; it leads with
/// the target so that it also serves the cascade when a target is deleted. A pending
/// push is ready at `GREATEST(due_at, lease_until)` (`GREATEST` skips the NULL lease),
/// which the claim and the sender's next wake-up both read through one index. Finished
/// rows stay a day so that a redelivered event still finds them, and are deleted in
/// batches through `push_queue_finished`.
const NOTIFICATIONS: &str = r#"
    CREATE TABLE push_targets (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id bigint NOT NULL,
        kind text NOT NULL,                -- PushKind::as_str
        address text NOT NULL UNIQUE,      -- endpoint, token or URL at the provider
        target text NOT NULL,              -- JSON of the whole TargetAddress (keys, secret)
        created_at bigint NOT NULL
    );
    CREATE INDEX push_targets_by_user ON push_targets (user_id, id);

    CREATE TABLE notification_mutes (
        user_id bigint NOT NULL,
        conv_id bigint NOT NULL,
        until bigint,                      -- NULL: until unmuted
        mentions boolean NOT NULL,         -- mentions are muted too
        PRIMARY KEY (user_id, conv_id)
    );

    CREATE TABLE notification_dnd (
        user_id bigint PRIMARY KEY,        -- no row: do-not-disturb off
        until bigint                       -- NULL: until turned off
    );

    CREATE TABLE notifications (
        user_id bigint NOT NULL,
        id bigint NOT NULL,
        kind text NOT NULL CHECK (kind IN ('mention', 'reply')),
        conv_id bigint NOT NULL,
        seq bigint NOT NULL,
        message_id bigint NOT NULL,
        sender bigint NOT NULL,
        preview text NOT NULL,
        ts bigint NOT NULL,
        read boolean NOT NULL DEFAULT false,
        PRIMARY KEY (user_id, id)
    );
    CREATE INDEX notifications_unread ON notifications (user_id, id) WHERE NOT read;

    CREATE TABLE push_queue (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id bigint NOT NULL,
        target_id bigint NOT NULL REFERENCES push_targets (id) ON DELETE CASCADE,
        conv_id bigint NOT NULL,
        message_id bigint NOT NULL,
        content text NOT NULL,             -- JSON of PushContent
        state text NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'sent', 'superseded', 'dropped')),
        due_at bigint NOT NULL,
        lease_until bigint,                -- claimed by a sender until then
        attempts int NOT NULL DEFAULT 0,
        created_at bigint NOT NULL,
        UNIQUE (target_id, message_id)
    );
    CREATE INDEX push_queue_ready ON push_queue ((GREATEST(due_at, lease_until)))
        WHERE state = 'pending';
    CREATE INDEX push_queue_collapse ON push_queue (target_id, conv_id, id)
        WHERE state = 'pending';
    CREATE INDEX push_queue_finished ON push_queue (created_at) WHERE state <> 'pending';
"#;

/// Migration 2: uploads and attachments.
///
/// JSON (thumbnail lists, a message's attachment views) is stored as `text`: only the
/// node reads it, so `jsonb`'s parsing on every write would buy nothing.
///
/// `uploads.detached_at` is set when a message carrying the upload is deleted and
/// cleared when a message attaches it again; garbage collection finds "attached once,
/// carried by no message any more" through its partial index instead of scanning every
/// attached upload, and re-checks `attachment_refs` before removing anything.
/// `messages.attachments` is added to the partitioned parent, which adds it to every
/// partition; without a default this changes only the catalog.
const UPLOADS: &str = r#"
    CREATE TABLE blobs (
        id bigint PRIMARY KEY,
        sha256 text NOT NULL UNIQUE,
        key text NOT NULL,                 -- object key in blob storage
        size bigint NOT NULL,
        content_type text NOT NULL,
        width int,
        height int,
        blurhash text,
        thumbnails text NOT NULL DEFAULT '[]',   -- JSON list of ThumbnailView
        created_at bigint NOT NULL
    );

    CREATE TABLE uploads (
        id bigint PRIMARY KEY,
        owner bigint NOT NULL,
        name text NOT NULL,
        declared_type text,
        length bigint NOT NULL,
        received bigint NOT NULL DEFAULT 0,      -- bytes stored so far ("offset")
        parts bigint[] NOT NULL DEFAULT '{}',    -- start offsets of the stored parts
        created_at bigint NOT NULL,
        blob_id bigint REFERENCES blobs (id),    -- set once complete
        attached_at bigint,                      -- first time a message carried it
        detached_at bigint                       -- a carrying message was deleted since
    );
    CREATE INDEX uploads_by_owner ON uploads (owner);
    CREATE INDEX uploads_by_blob ON uploads (blob_id);
    CREATE INDEX uploads_unattached ON uploads (created_at) WHERE attached_at IS NULL;
    CREATE INDEX uploads_detached ON uploads (detached_at) WHERE detached_at IS NOT NULL;

    CREATE TABLE attachment_refs (
        upload_id bigint NOT NULL REFERENCES uploads (id),
        conv_id bigint NOT NULL,
        seq bigint NOT NULL,
        PRIMARY KEY (upload_id, conv_id, seq)
    );
    CREATE INDEX attachment_refs_by_message ON attachment_refs (conv_id, seq);

    ALTER TABLE messages ADD COLUMN attachments text;   -- JSON list of AttachmentView
"#;

fn initial(partitions: u32) -> String {
    let partitions = partitions.max(1);
    let mut sql = String::from(
        r#"
        CREATE TABLE parlor_head (
            id boolean PRIMARY KEY DEFAULT true CHECK (id),
            pos bigint NOT NULL
        );
        INSERT INTO parlor_head (id, pos) VALUES (true, 0);

        CREATE TABLE machine_leases (
            machine_id int PRIMARY KEY,
            holder text NOT NULL,
            expires_at timestamptz NOT NULL,
            -- Newest id the holder reported generating: the next holder continues above it.
            last_id bigint NOT NULL DEFAULT 0
        );

        CREATE TABLE users (
            id bigint PRIMARY KEY,
            username text NOT NULL UNIQUE,
            password_hash text NOT NULL,
            created_at bigint NOT NULL,
            last_seen bigint
        );

        CREATE TABLE sessions (
            id bigint PRIMARY KEY,
            user_id bigint NOT NULL REFERENCES users(id),
            device_name text NOT NULL,
            refresh_hash bytea NOT NULL UNIQUE,
            previous_hash bytea,
            expires_at bigint NOT NULL,
            created_at bigint NOT NULL,
            revoked boolean NOT NULL DEFAULT false
        );
        CREATE INDEX sessions_previous ON sessions (previous_hash);

        CREATE TABLE conversations (
            id bigint PRIMARY KEY,
            kind smallint NOT NULL,            -- 0 direct, 1 group
            name text,
            direct_key text UNIQUE,            -- 'lo:hi' user ids of a direct conversation
            member_count int NOT NULL,
            created_at bigint NOT NULL,
            -- Newest seq: assigned under this row's lock, gap-free.
            last_seq bigint NOT NULL DEFAULT 0,
            -- Position of the last membership change: a node's cached member list of the
            -- conversation is current while this has not moved.
            roster_pos bigint NOT NULL DEFAULT 0
        );

        CREATE TABLE members (
            conv_id bigint NOT NULL,
            user_id bigint NOT NULL,
            role smallint NOT NULL,            -- 0 owner, 1 admin, 2 member
            joined_pos bigint NOT NULL,
            left_pos bigint,                   -- set while the user is not a member any more
            left_seq bigint,                   -- last message they may read after leaving
            read_seq bigint NOT NULL DEFAULT 0,
            read_pos bigint NOT NULL DEFAULT 0,
            delivered_seq bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (conv_id, user_id)
        );
        CREATE INDEX members_by_user ON members (user_id);

        CREATE TABLE messages (
            conv_id bigint NOT NULL,
            seq bigint NOT NULL,
            id bigint NOT NULL,
            pos bigint NOT NULL,
            sender bigint NOT NULL,
            cid text,
            -- bytea, not text: a message may contain NUL, which text cannot hold.
            body bytea NOT NULL,
            created_at bigint NOT NULL,
            reply_to bigint,
            mentions bigint[],
            mention_all boolean NOT NULL DEFAULT false,
            edited_at bigint,
            deleted boolean NOT NULL DEFAULT false,
            tsv tsvector,
            PRIMARY KEY (conv_id, seq)
        ) PARTITION BY HASH (conv_id);
        CREATE INDEX messages_by_pos ON messages (conv_id, pos);
        CREATE INDEX messages_search ON messages USING gin (tsv);

        CREATE TABLE message_cids (
            sender bigint NOT NULL,
            cid text NOT NULL,
            conv_id bigint NOT NULL,
            seq bigint NOT NULL,
            id bigint NOT NULL,
            pos bigint NOT NULL,
            created_at bigint NOT NULL,
            PRIMARY KEY (sender, cid)
        );

        CREATE TABLE member_events (
            pos bigint PRIMARY KEY,
            conv_id bigint NOT NULL,
            user_id bigint NOT NULL,
            change smallint NOT NULL,          -- 0 added, 1 removed, 2 left, 3 role
            actor bigint NOT NULL,
            role smallint,
            created_at bigint NOT NULL
        );
        CREATE INDEX member_events_by_conv ON member_events (conv_id, pos);

        CREATE TABLE message_changes (
            pos bigint PRIMARY KEY,
            conv_id bigint NOT NULL,
            seq bigint NOT NULL,
            kind smallint NOT NULL,            -- 0 edited, 1 deleted
            actor bigint NOT NULL,
            created_at bigint NOT NULL
        );
        CREATE INDEX message_changes_by_conv ON message_changes (conv_id, pos);
        CREATE INDEX message_changes_by_message ON message_changes (conv_id, seq);

        CREATE TABLE mentions (
            user_id bigint NOT NULL,
            conv_id bigint NOT NULL,
            seq bigint NOT NULL,
            PRIMARY KEY (user_id, conv_id, seq)
        );

        CREATE TABLE event_log (
            pos bigint PRIMARY KEY,
            conv_id bigint NOT NULL,
            logged_at timestamptz NOT NULL DEFAULT now(),
            -- The core's event wire form (JSON bytes); not jsonb, which refuses \u0000.
            body bytea NOT NULL
        );
        CREATE INDEX event_log_by_time ON event_log (logged_at);
        "#,
    );
    for i in 0..partitions {
        sql.push_str(&format!(
            "CREATE TABLE messages_p{i} PARTITION OF messages FOR VALUES WITH (MODULUS {partitions}, REMAINDER {i});\n"
        ));
    }
    sql
}

/// Applies every migration not applied yet.
pub async fn migrate(client: &mut Object, partitions: u32) -> anyhow::Result<()> {
    let tx = client
        .transaction()
        .await
        .context("cannot begin the migration")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("cannot take the migration lock")?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version int PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await
    .context("cannot create schema_migrations")?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .context("cannot read schema_migrations")?
        .get(0);
    let current = usize::try_from(current).unwrap_or(0);
    if current > LATEST {
        anyhow::bail!(
            "the database schema (version {current}) is newer than this build knows ({LATEST})"
        );
    }
    for version in current + 1..=LATEST {
        let Some(sql) = migration(version, partitions) else {
            break;
        };
        tx.batch_execute(&sql)
            .await
            .with_context(|| format!("migration {version} failed"))?;
        let v = i32::try_from(version).unwrap_or(i32::MAX);
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&v])
            .await
            .context("cannot record the migration")?;
        tracing::info!(version, "applied schema migration");
    }
    tx.commit().await.context("cannot commit the migration")?;
    Ok(())
}
