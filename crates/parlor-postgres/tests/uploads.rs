//! The PostgreSQL store through the `UploadStore` port and the message path that
//! attaches uploads, with two stores on one database standing for two nodes.

mod support;

use futures_util::StreamExt;
use parlor_core::model::*;
use parlor_core::ports::{EventLog, Store, UploadStore};
use parlor_core::uploads::{blob_key, part_key, Garbage, NewBlob, NewUpload, UploadRecord};
use parlor_proto::rest::{AttachmentView, ThumbnailSize, ThumbnailView};
use parlor_proto::ws::ServerFrame;
use parlor_proto::{ErrorCode, Id};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use support::*;

fn msg(conv: Id, sender: Id, text: &str, attachments: Vec<Id>) -> NewMessage {
    NewMessage {
        conv,
        sender,
        cid: None,
        text: text.into(),
        reply_to: None,
        mentions: Vec::new(),
        mention_all: false,
        attachments,
    }
}

async fn user(store: &dyn Store, name: &str) -> Id {
    store
        .create_user(name, "hash")
        .await
        .expect("create user")
        .id
}

fn new_upload(owner: Id, length: u64) -> NewUpload {
    NewUpload {
        owner,
        name: "photo.png".into(),
        declared_type: Some("image/png".into()),
        length,
    }
}

/// A blob of content `n` under a fresh key, with one thumbnail.
fn blob(n: u64, size: u64) -> NewBlob {
    static NONCE: AtomicU64 = AtomicU64::new(1);
    NewBlob {
        key: blob_key(NONCE.fetch_add(1, Ordering::Relaxed)),
        sha256: format!("{n:064x}"),
        size,
        content_type: "image/png".into(),
        width: Some(640),
        height: Some(480),
        blurhash: Some("LEHV6nWB2yk8pyo0adR*.7kCMdnj".into()),
        thumbnails: vec![ThumbnailView {
            size: ThumbnailSize::Small,
            content_type: "image/webp".into(),
            width: 160,
            height: 120,
        }],
    }
}

/// An upload received in two parts and completed on content `n`.
async fn ready(store: &impl UploadStore, owner: Id, n: u64) -> (UploadRecord, bool) {
    let upload = store
        .create_upload(new_upload(owner, 10), 1 << 30)
        .await
        .expect("create");
    store
        .advance_upload(upload.id, 0, 6)
        .await
        .expect("first part");
    store
        .advance_upload(upload.id, 6, 10)
        .await
        .expect("second part");
    store
        .complete_upload(upload.id, blob(n, 10))
        .await
        .expect("complete")
}

fn attachment(upload: &UploadRecord) -> AttachmentView {
    upload
        .attachment()
        .expect("a ready upload has an attachment view")
}

fn code<T: std::fmt::Debug>(result: parlor_core::error::Result<T>) -> ErrorCode {
    result.expect_err("an error").code
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn keys(garbage: &Garbage) -> BTreeSet<String> {
    garbage.objects.iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_counts_every_upload_and_concurrent_creates_do_not_overshoot() {
    let db = TestDb::create().await;
    let (a, b) = tokio::join!(node(&db, "a"), node(&db, "b"));
    let alice = user(&*a.store, "alice").await;
    a.store
        .create_upload(new_upload(alice, 60), 100)
        .await
        .expect("fits");
    let refused = a
        .store
        .create_upload(new_upload(alice, 50), 100)
        .await
        .expect_err("over the quota");
    assert_eq!(refused.code, ErrorCode::QuotaExceeded);
    assert_eq!(
        refused.message,
        "storage quota of 100 bytes exceeded (60 bytes used)"
    );
    assert_eq!(a.store.usage(alice).await.expect("usage"), 60);
    assert!(a
        .store
        .create_upload(new_upload(alice, 40), 100)
        .await
        .is_ok());

    // Ten creations of 30 bytes under a quota of 100, through both nodes at once: three
    // fit, whatever the interleaving.
    let bob = user(&*a.store, "bob").await;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = if i % 2 == 0 {
                a.store.clone()
            } else {
                b.store.clone()
            };
            tokio::spawn(async move { store.create_upload(new_upload(bob, 30), 100).await })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => created += 1,
            Err(e) => assert_eq!(e.code, ErrorCode::QuotaExceeded),
        }
    }
    assert_eq!(created, 3);
    assert_eq!(b.store.usage(bob).await.expect("usage"), 90);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_compare_and_set() {
    let db = TestDb::create().await;
    let (a, b) = tokio::join!(node(&db, "a"), node(&db, "b"));
    let alice = user(&*a.store, "alice").await;
    let upload = a
        .store
        .create_upload(new_upload(alice, 10), 1000)
        .await
        .expect("create");
    assert_eq!((upload.offset, upload.parts.clone()), (0, vec![]));
    let moved = a.store.advance_upload(upload.id, 0, 4).await.expect("part");
    assert_eq!((moved.offset, moved.parts.clone()), (4, vec![0]));

    let stale = a
        .store
        .advance_upload(upload.id, 0, 8)
        .await
        .expect_err("not from the current offset");
    assert_eq!(stale.code, ErrorCode::Conflict);
    assert_eq!(stale.message, "upload offset is 4");
    assert_eq!(
        code(a.store.advance_upload(upload.id, 4, 11).await),
        ErrorCode::Conflict,
        "beyond the length"
    );
    assert_eq!(
        code(a.store.advance_upload(Id(12345), 0, 1).await),
        ErrorCode::NotFound
    );
    let same = a
        .store
        .advance_upload(upload.id, 4, 4)
        .await
        .expect("empty");
    assert_eq!((same.offset, same.parts.clone()), (4, vec![0]));

    // Two writers continue from 4 at the same moment, through two nodes: one wins.
    for round in 0..10 {
        let upload = a
            .store
            .create_upload(new_upload(alice, 10), 1000)
            .await
            .expect("create");
        a.store.advance_upload(upload.id, 0, 4).await.expect("part");
        let (x, y) = tokio::join!(
            a.store.advance_upload(upload.id, 4, 10),
            b.store.advance_upload(upload.id, 4, 7)
        );
        assert_eq!(x.is_ok() as u8 + y.is_ok() as u8, 1, "round {round}");
        for lost in [&x, &y].into_iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(lost.code, ErrorCode::Conflict);
        }
        let now = a
            .store
            .upload(upload.id)
            .await
            .expect("read")
            .expect("upload");
        assert_eq!(now.parts, vec![0, 4]);
        assert!(now.offset == 10 || now.offset == 7);
    }

    // Complete: no more progress, and completion only once.
    let done = a
        .store
        .advance_upload(upload.id, 4, 10)
        .await
        .expect("rest");
    assert_eq!(
        done.part_keys(),
        vec![
            (part_key(upload.id, 0), 0, 4),
            (part_key(upload.id, 4), 4, 10)
        ]
    );
    let (ready, used) = a
        .store
        .complete_upload(upload.id, blob(1, 10))
        .await
        .expect("complete");
    assert!(used);
    assert!(ready.blob.is_some() && !ready.attached);
    assert_eq!(
        code(a.store.advance_upload(upload.id, 10, 10).await),
        ErrorCode::Conflict
    );
    assert_eq!(
        code(a.store.complete_upload(upload.id, blob(1, 10)).await),
        ErrorCode::Conflict
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_shares_one_blob_per_content() {
    let db = TestDb::create().await;
    let (a, b) = tokio::join!(node(&db, "a"), node(&db, "b"));
    let alice = user(&*a.store, "alice").await;
    let bob = user(&*a.store, "bob").await;
    let partial = a
        .store
        .create_upload(new_upload(alice, 10), 1000)
        .await
        .expect("create");
    a.store
        .advance_upload(partial.id, 0, 5)
        .await
        .expect("part");
    let early = a
        .store
        .complete_upload(partial.id, blob(7, 10))
        .await
        .expect_err("not all received");
    assert_eq!(early.code, ErrorCode::Conflict);
    assert_eq!(
        early.message,
        "upload is not awaiting completion (offset 5 of 10)"
    );
    assert_eq!(
        code(a.store.complete_upload(Id(999), blob(7, 10)).await),
        ErrorCode::NotFound
    );

    assert!(a
        .store
        .blob_by_sha(&format!("{:064x}", 7))
        .await
        .expect("sha")
        .is_none());
    let (first, used) = ready(&*a.store, alice, 7).await;
    assert!(used);
    let (second, used) = ready(&*b.store, bob, 7).await;
    assert!(!used, "the second upload of the same bytes reuses the blob");
    let (x, y) = (
        first.blob.expect("blob"),
        second.blob.clone().expect("blob"),
    );
    assert_eq!(x, y);
    assert_eq!(
        b.store.blob_by_sha(&x.sha256).await.expect("sha"),
        Some(x.clone())
    );
    assert_eq!(
        second.attachment().map(|v| v.sha256),
        Some(x.sha256.clone())
    );

    // Many completions of one new content at once, through both nodes: one blob.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let store = if i % 2 == 0 {
            a.store.clone()
        } else {
            b.store.clone()
        };
        tasks.push(tokio::spawn(async move { ready(&*store, alice, 8).await }));
    }
    let mut blobs = BTreeSet::new();
    let mut used = 0;
    for task in tasks {
        let (upload, fresh) = task.await.expect("task");
        blobs.insert(upload.blob.expect("blob").id);
        used += fresh as u32;
    }
    assert_eq!((blobs.len(), used), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_carry_their_attachments() {
    let db = TestDb::create().await;
    let a = node(&db, "a").await;
    let s = &*a.store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let group = s
        .create_group(alice, "g", &[bob], 10)
        .await
        .expect("group")
        .id;
    let (photo, _) = ready(s, alice, 1).await;
    let (scan, _) = ready(s, alice, 2).await;
    let (bobs, _) = ready(s, bob, 3).await;
    let receiving = s
        .create_upload(new_upload(alice, 10), 1 << 30)
        .await
        .expect("create");
    let views = vec![attachment(&scan), attachment(&photo)];

    let sent = s
        .append_message(msg(group, alice, "two files", vec![scan.id, photo.id]))
        .await
        .expect("append");
    let history = s
        .history(bob, group, Page::Latest { limit: 10 })
        .await
        .expect("history");
    assert_eq!(history.messages.len(), 1);
    assert_eq!(
        history.messages[0].attachments, views,
        "in the sender's order"
    );
    assert!(
        s.upload(photo.id)
            .await
            .expect("read")
            .expect("upload")
            .attached
    );

    // Sync, the live event and the event log carry them too.
    let backlog = s.backlog(bob, 0, 100).await.expect("backlog");
    let events: Vec<Event> = backlog
        .pages
        .map(|p| p.expect("page"))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect();
    let carried = |events: &[Event]| -> Option<Vec<AttachmentView>> {
        events.iter().find_map(|e| match &e.frame {
            ServerFrame::Message(m) if m.message.seq == sent.seq => {
                Some(m.message.attachments.clone())
            }
            _ => None,
        })
    };
    assert_eq!(carried(&events), Some(views.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(carried(&a.published.lock()), Some(views.clone()));
    let logged = s.events_after(0, 1000).await.expect("log");
    assert_eq!(carried(&logged), Some(views.clone()));
    // The conversation list's last message, and an edit, keep them.
    let list = s.conversations(alice).await.expect("list");
    assert_eq!(
        list[0].last_message.as_ref().map(|m| m.attachments.clone()),
        Some(views.clone())
    );
    let edited = s
        .edit_message(alice, group, sent.seq, "two files, edited".into())
        .await
        .expect("edit");
    assert_eq!(edited.attachments, views);

    // Someone else's upload is not found (as an unknown one); an incomplete one conflicts.
    let foreign = s
        .append_message(msg(group, alice, "not mine", vec![bobs.id]))
        .await
        .expect_err("foreign upload");
    assert_eq!(foreign.code, ErrorCode::NotFound);
    assert_eq!(
        code(
            s.append_message(msg(group, alice, "unknown", vec![Id(424242)]))
                .await
        ),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(
            s.append_message(msg(group, alice, "early", vec![receiving.id]))
                .await
        ),
        ErrorCode::Conflict
    );

    // Batches where one message fails: the others are stored with consecutive seqs,
    // and the failed one takes none. Queued all at once, so that while the writer
    // commits the first of them the others gather into shared batches.
    let rounds = 5;
    let queued: Vec<_> = (0..rounds)
        .flat_map(|_| {
            [
                s.append_message(msg(group, alice, "one", vec![photo.id])),
                s.append_message(msg(group, alice, "bad", vec![photo.id, bobs.id])),
                s.append_message(msg(group, bob, "plain", vec![])),
                s.append_message(msg(group, bob, "own", vec![bobs.id])),
            ]
        })
        .collect();
    let results = futures_util::future::join_all(queued).await;
    let mut seqs = Vec::new();
    for round in results.chunks(4) {
        assert_eq!(
            round[1].as_ref().err().map(|e| e.code),
            Some(ErrorCode::NotFound)
        );
        for stored in [&round[0], &round[2], &round[3]] {
            seqs.push(stored.as_ref().expect("stored").seq);
        }
    }
    assert_eq!(
        seqs,
        (sent.seq + 1..=sent.seq + 3 * rounds).collect::<Vec<_>>()
    );
    let history = s
        .history(alice, group, Page::Latest { limit: 50 })
        .await
        .expect("history");
    let stored: Vec<(&str, Vec<Id>)> = history
        .messages
        .iter()
        .map(|m| {
            (
                m.text.as_str(),
                m.attachments.iter().map(|v| v.id).collect(),
            )
        })
        .collect();
    let mut expected = vec![("two files, edited", vec![scan.id, photo.id])];
    for _ in 0..rounds {
        expected.push(("one", vec![photo.id]));
        expected.push(("plain", vec![]));
        expected.push(("own", vec![bobs.id]));
    }
    assert_eq!(stored, expected);
    // Search results carry them as well.
    let found = s
        .search(
            bob,
            SearchQuery {
                query: parlor_core::search::parse_query("one").expect("query"),
                conv: None,
                sender: None,
                from: None,
                to: None,
                offset: 0,
                limit: 10,
            },
        )
        .await
        .expect("search");
    assert_eq!(
        found.results.first().map(|h| h.message.attachments.clone()),
        Some(vec![attachment(&photo)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_follow_what_history_shows() {
    let db = TestDb::create().await;
    let a = node(&db, "a").await;
    let s = &*a.store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let carol = user(s, "carol").await;
    let dave = user(s, "dave").await;
    let group = s
        .create_group(alice, "g", &[bob, dave], 10)
        .await
        .expect("group")
        .id;
    let (before, _) = ready(s, alice, 1).await;
    let (after, _) = ready(s, alice, 2).await;
    let (unsent, _) = ready(s, alice, 3).await;
    s.append_message(msg(group, alice, "before", vec![before.id]))
        .await
        .expect("append");
    s.change_membership(
        MembershipCommand::Leave {
            conv: group,
            user: dave,
        },
        10,
    )
    .await
    .expect("leave");
    s.append_message(msg(group, alice, "after", vec![after.id]))
        .await
        .expect("append");

    let may = |viewer: Id, upload: Id| async move {
        s.may_download(viewer, upload).await.expect("may download")
    };
    assert!(may(alice, unsent.id).await, "the uploader");
    assert!(!may(bob, unsent.id).await, "carried by no message");
    assert!(
        may(bob, before.id).await && may(bob, after.id).await,
        "a member"
    );
    assert!(!may(carol, before.id).await, "not a member");
    assert!(may(dave, before.id).await, "sent before dave left");
    assert!(!may(dave, after.id).await, "sent after dave left");
    assert!(!may(alice, Id(777)).await, "no such upload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_garbage_collection() {
    let db = TestDb::create().await;
    let (a, b) = tokio::join!(node(&db, "a"), node(&db, "b"));
    let s = &*a.store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let group = s
        .create_group(alice, "g", &[bob], 10)
        .await
        .expect("group")
        .id;

    // Expired and never attached: one part received.
    let expired = s
        .create_upload(new_upload(alice, 10), 1 << 30)
        .await
        .expect("create");
    s.advance_upload(expired.id, 0, 3).await.expect("part");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let cutoff = now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    // Not expired yet.
    let fresh = s
        .create_upload(new_upload(alice, 10), 1 << 30)
        .await
        .expect("create");
    // Attached to a message that is then deleted: collected with its blob.
    let (orphaned, _) = ready(s, alice, 1).await;
    let gone = s
        .append_message(msg(group, alice, "gone", vec![orphaned.id]))
        .await
        .expect("append");
    // Carried by two messages, one deleted: kept.
    let (twice, _) = ready(s, alice, 2).await;
    let kept_message = s
        .append_message(msg(group, alice, "kept", vec![twice.id]))
        .await
        .expect("append");
    let dropped = s
        .append_message(msg(group, alice, "dropped", vec![twice.id]))
        .await
        .expect("append");
    // Bob's copy of the orphaned content on a deleted message, alice's still carried:
    // bob's upload goes, the shared blob stays.
    let (shared, _) = ready(s, alice, 3).await;
    let (bobs_copy, used) = ready(s, bob, 3).await;
    assert!(!used);
    s.append_message(msg(group, alice, "shared", vec![shared.id]))
        .await
        .expect("append");
    let bobs_message = s
        .append_message(msg(group, bob, "copy", vec![bobs_copy.id]))
        .await
        .expect("append");

    // An attached upload cannot be deleted; deleting the message drops the reference.
    let refused = s.delete_upload(orphaned.id).await.expect_err("attached");
    assert_eq!(refused.code, ErrorCode::Conflict);
    assert_eq!(
        refused.message,
        "upload is attached to a message; delete the message instead"
    );
    s.delete_message(alice, group, gone.seq)
        .await
        .expect("delete");
    s.delete_message(alice, group, dropped.seq)
        .await
        .expect("delete");
    s.delete_message(bob, group, bobs_message.seq)
        .await
        .expect("delete");
    let history = s
        .history(bob, group, Page::Latest { limit: 20 })
        .await
        .expect("history");
    let tombstone = history
        .messages
        .iter()
        .find(|m| m.seq == gone.seq)
        .expect("tombstone");
    assert!(tombstone.deleted && tombstone.attachments.is_empty());
    let logged = s.events_after(0, 1000).await.expect("log");
    assert!(logged.iter().all(|e| match &e.frame {
        ServerFrame::Message(m) if m.message.seq == gone.seq => m.message.attachments.is_empty(),
        _ => true,
    }));
    assert!(!s.may_download(bob, orphaned.id).await.expect("may"));
    assert!(s.may_download(bob, twice.id).await.expect("may"));

    // One collection, through the other node, finds exactly the garbage.
    let garbage = b.store.collect_garbage(cutoff).await.expect("collect");
    let orphan_blob = orphaned.blob.clone().expect("blob");
    let mut expected: BTreeSet<String> = BTreeSet::new();
    expected.insert(part_key(expired.id, 0));
    for upload in [&orphaned, &bobs_copy] {
        expected.extend(upload.part_keys().into_iter().map(|(key, _, _)| key));
    }
    expected.extend(orphan_blob.object_keys());
    assert_eq!((garbage.uploads, garbage.blobs), (3, 1));
    assert_eq!(keys(&garbage), expected);
    assert_eq!(
        orphan_blob.object_keys().len(),
        2,
        "content and a thumbnail"
    );
    for gone in [expired.id, orphaned.id, bobs_copy.id] {
        assert!(s.upload(gone).await.expect("read").is_none());
    }
    for kept in [fresh.id, twice.id, shared.id] {
        assert!(s.upload(kept).await.expect("read").is_some());
    }
    assert!(s
        .blob_by_sha(&orphan_blob.sha256)
        .await
        .expect("sha")
        .is_none());
    assert!(s
        .blob_by_sha(&shared.blob.clone().expect("blob").sha256)
        .await
        .expect("sha")
        .is_some());
    assert_eq!(
        b.store.collect_garbage(cutoff).await.expect("again"),
        Garbage::default()
    );
    let history = s
        .history(bob, group, Page::Latest { limit: 20 })
        .await
        .expect("history");
    let kept = history
        .messages
        .iter()
        .find(|m| m.seq == kept_message.seq)
        .expect("kept");
    assert_eq!(kept.attachments, vec![attachment(&twice)]);

    // The same bytes uploaded again get a new blob (a new key), never the collected one.
    let (again, used) = ready(s, alice, 1).await;
    assert!(used);
    assert_ne!(again.blob.expect("blob").key, orphan_blob.key);

    // Deleting an upload no message carries: its parts, and its blob if unshared.
    let garbage = s.delete_upload(fresh.id).await.expect("delete");
    assert_eq!((garbage.uploads, garbage.blobs), (1, 0));
    let (alone, _) = ready(s, alice, 9).await;
    let garbage = s.delete_upload(alone.id).await.expect("delete");
    let mut expected: BTreeSet<String> = alone
        .part_keys()
        .into_iter()
        .map(|(key, _, _)| key)
        .collect();
    expected.extend(alone.blob.clone().expect("blob").object_keys());
    assert_eq!((garbage.uploads, garbage.blobs), (1, 1));
    assert_eq!(keys(&garbage), expected);
    assert_eq!(code(s.delete_upload(alone.id).await), ErrorCode::NotFound);
    // A shared blob stays with its other upload.
    let (copy, _) = ready(s, bob, 2).await;
    let garbage = s.delete_upload(copy.id).await.expect("delete");
    assert_eq!(garbage.blobs, 0);
    assert!(s
        .upload(twice.id)
        .await
        .expect("read")
        .expect("upload")
        .blob
        .is_some());
}
