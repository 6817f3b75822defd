//! The store's batched insert: messages appended concurrently are committed in groups.
//! Each iteration appends `n` messages to one conversation and waits for every commit.

use parlor_core::model::NewMessage;
use parlor_core::ports::Store;
use parlor_embedded::{InProcessBus, SqliteStore, StoreOptions};
use std::sync::Arc;

fn main() {
    divan::main();
}

#[divan::bench(args = [1, 100, 1000], sample_count = 20)]
fn append_pipelined(bencher: divan::Bencher, n: usize) {
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else { return };
    let bus = Arc::new(InProcessBus::new());
    let Ok(store) = SqliteStore::open(StoreOptions::new(dir.path()), bus) else {
        return;
    };
    let setup = runtime.block_on(async {
        let a = store.create_user("alice", "!").await.ok()?;
        let b = store.create_user("bob", "!").await.ok()?;
        let conv = store
            .create_group(a.id, "bench", &[b.id], 1000)
            .await
            .ok()?;
        Some((a.id, conv.id))
    });
    let Some((sender, conv)) = setup else { return };
    bencher
        .counter(divan::counter::ItemsCount::new(n))
        .bench_local(|| {
            runtime.block_on(async {
                let pending: Vec<_> = (0..n)
                    .map(|i| {
                        store.append_message(NewMessage {
                            conv,
                            sender,
                            cid: None,
                            text: format!("message number {i} with a typical length of text"),
                            reply_to: None,
                            mentions: Vec::new(),
                            mention_all: false,
                            attachments: Vec::new(),
                        })
                    })
                    .collect();
                for commit in pending {
                    let _ = commit.await;
                }
            })
        });
    runtime.block_on(store.close());
}
