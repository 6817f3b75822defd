//! Full-text search, end to end against the real binary: ranked results with snippets
//! and highlight ranges, filters (conversation, sender, time range), cursor pagination,
//! strict visibility (only the caller's conversations; a former member up to leaving),
//! accent- and case-insensitive Latin, Chinese, Japanese and Korean, deletes and edits,
//! and clean refusals of bad queries.
//!
//! The index is fed a few milliseconds after each commit, so every test first polls until
//! its newest message is findable (the index applies changes in commit order: when the
//! newest is there, so is everything before it).

#![allow(clippy::unwrap_used)]

mod features;
mod support;

use features::*;
use parlor_client::proto::rest::{SearchHit, SearchResults};
use parlor_client::proto::{ErrorBody, ErrorCode, Id};
use parlor_client::{ClientError, Http};
use std::collections::HashSet;
use std::time::Duration;
use support::*;

/// The search rate limit is not what these tests are about.
fn start_search() -> parlor_testkit::TestServer {
    start_search_with(&[])
}

fn start_search_with(extra: &[(&str, &str)]) -> parlor_testkit::TestServer {
    let mut env = vec![
        ("PARLOR_RATE__SEARCH_PER_USER__BURST", "100000"),
        ("PARLOR_RATE__SEARCH_PER_USER__PER_SECOND", "100000"),
    ];
    env.extend_from_slice(extra);
    start(&env)
}

async fn search(http: &Http, user: &User, q: &str) -> SearchResults {
    search_with(http, user, q, &[]).await
}

async fn search_with(
    http: &Http,
    user: &User,
    q: &str,
    filters: &[(&str, String)],
) -> SearchResults {
    http.search(&user.token, q, filters)
        .await
        .unwrap_or_else(|e| panic!("search {q:?} {filters:?}: {e}"))
}

/// Polls until `q` finds at least `n` messages for `user`.
async fn indexed(http: &Http, user: &User, q: &str, n: usize) -> SearchResults {
    search_until(http, &user.token, q, &[], |r| r.results.len() >= n).await
}

/// The text a highlight range covers in the snippet (character offsets).
fn highlighted(hit: &SearchHit) -> Vec<String> {
    let chars: Vec<char> = hit.snippet.chars().collect();
    hit.highlights
        .iter()
        .map(|&(start, end)| {
            assert!(
                start < end && end <= chars.len(),
                "bad range {start}..{end} in {hit:?}"
            );
            chars[start..end].iter().collect()
        })
        .collect()
}

fn texts(results: &SearchResults) -> Vec<&str> {
    results
        .results
        .iter()
        .map(|h| h.message.text.as_str())
        .collect()
}

#[track_caller]
fn expect_error(result: Result<SearchResults, ClientError>, status: u16, code: ErrorCode) {
    match result {
        Err(ClientError::Api { status: s, body }) => {
            assert_eq!((s, body.code), (status, code), "{}", body.message)
        }
        other => panic!("expected {code}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_carry_a_snippet_and_highlights_on_the_matched_words() {
    let server = start_search();
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = direct(&http, &alice, &bob).await;
    post(
        &http,
        &alice,
        conv,
        "Let's meet at the Café de Flore tomorrow",
    )
    .await;
    post(&http, &bob, conv, "nothing to see here").await;
    let filler = "lorem ipsum dolor sit amet ".repeat(20);
    let long = format!("{filler}and then the Zanzibar plan starts, {filler}");
    post(&http, &bob, conv, &long).await;
    indexed(&http, &alice, "zanzibar", 1).await;

    let found = search(&http, &alice, "cafe").await;
    assert_eq!(found.results.len(), 1, "{found:?}");
    let hit = &found.results[0];
    assert_eq!((hit.message.conv, hit.message.seq), (conv, 1));
    assert_eq!(hit.message.text, "Let's meet at the Café de Flore tomorrow");
    assert_eq!(hit.message.sender, alice.id);
    assert_eq!(
        hit.snippet, hit.message.text,
        "a short text is its own snippet"
    );
    assert_eq!(highlighted(hit), vec!["Café"]);
    assert_eq!(found.next_cursor, None);

    // Every term must match; each is highlighted.
    let found = search(&http, &bob, "meet flore").await;
    assert_eq!(hits(&found), vec![(conv, 1)]);
    assert_eq!(highlighted(&found.results[0]), vec!["meet", "Flore"]);
    assert!(search(&http, &bob, "meet zanzibar")
        .await
        .results
        .is_empty());

    // A long text is cut around the match; the highlight still points at it.
    let found = search(&http, &alice, "Zanzibar").await;
    assert_eq!(hits(&found), vec![(conv, 3)]);
    let hit = &found.results[0];
    assert_eq!(hit.message.text, long, "the message itself is whole");
    assert!(
        hit.snippet.chars().count() < long.chars().count(),
        "{hit:?}"
    );
    assert!(hit.snippet.contains("Zanzibar"), "{hit:?}");
    assert_eq!(highlighted(hit), vec!["Zanzibar"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accents_case_and_cjk_text_are_found() {
    let server = start_search();
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = direct(&http, &alice, &bob).await;
    let texts_sent = [
        "un café crème, s'il vous plaît", // 1
        "明日は東京都に行きます",         // 2
        "서울 날씨",                      // 3
        "コーヒーを飲みましょう",         // 4
        "我住在北京",                     // 5
        "NAÏVE résumé",                   // 6
    ];
    for text in texts_sent {
        post(&http, &alice, conv, text).await;
    }
    indexed(&http, &bob, "résumé", 1).await;

    let cases: &[(&str, &[u64], &str)] = &[
        ("cafe", &[1], "café"),
        ("Cafe", &[1], "café"),
        ("CAFÉ", &[1], "café"),
        ("café", &[1], "café"),
        ("naive", &[6], "NAÏVE"),
        ("RESUME", &[6], "résumé"),
        ("東京", &[2], "東京"),
        ("東京都", &[2], "東京都"),
        ("行きます", &[2], "行きます"),
        ("서울", &[3], "서울"),
        ("날씨", &[3], "날씨"),
        ("コーヒー", &[4], "コーヒー"),
        ("ましょう", &[4], "ましょう"),
        ("北京", &[5], "北京"),
        // A single character, at the start, inside and at the end of a run.
        ("東", &[2], "東"),
        ("住", &[5], "住"),
        ("京", &[2, 5], "京"),
        ("す", &[2], "す"),
    ];
    for &(q, want, mark) in cases {
        let found = search(&http, &bob, q).await;
        let mut seqs: Vec<u64> = found.results.iter().map(|h| h.message.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, want, "search {q:?}: {:?}", texts(&found));
        for hit in &found.results {
            assert!(
                highlighted(hit).iter().any(|h| h == mark),
                "search {q:?}: no highlight on {mark:?} in {hit:?}"
            );
        }
    }

    // Characters that are not adjacent do not match as a word.
    for q in ["京東", "東都", "大阪", "서날"] {
        let found = search(&http, &bob, q).await;
        assert!(
            found.results.is_empty(),
            "search {q:?}: {:?}",
            texts(&found)
        );
    }
}

/// A sent message, as acknowledged.
struct Sent {
    conv: Id,
    seq: u64,
    sender: Id,
    ts: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_by_conversation_sender_and_time_range() {
    let server = start_search();
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let first = direct(&http, &alice, &bob).await;
    let second = group(&http, &alice, &[&bob]).await;
    let mut sent: Vec<Sent> = Vec::new();
    for (i, (conv, who)) in [
        (first, &alice),
        (first, &bob),
        (second, &alice),
        (first, &alice),
        (second, &bob),
        (first, &bob),
    ]
    .into_iter()
    .enumerate()
    {
        let ack = post(&http, who, conv, &format!("budget review number {i}")).await;
        sent.push(Sent {
            conv,
            seq: ack.seq,
            sender: who.id,
            ts: ack.ts,
        });
        // Distinct timestamps make the time range below meaningful.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    indexed(&http, &alice, "budget", sent.len()).await;

    let set = |r: &SearchResults| -> HashSet<(Id, u64)> { hits(r).into_iter().collect() };
    let expect = |f: &dyn Fn(&Sent) -> bool| -> HashSet<(Id, u64)> {
        sent.iter()
            .filter(|m| f(m))
            .map(|m| (m.conv, m.seq))
            .collect()
    };

    let all = search(&http, &alice, "budget").await;
    assert_eq!(set(&all), expect(&|_| true));

    let only_first = search_with(&http, &alice, "budget", &[("conv", first.to_string())]).await;
    assert_eq!(set(&only_first), expect(&|m| m.conv == first));

    let by_bob = search_with(&http, &alice, "budget", &[("sender", bob.id.to_string())]).await;
    assert_eq!(set(&by_bob), expect(&|m| m.sender == bob.id));
    assert!(by_bob.results.iter().all(|h| h.message.sender == bob.id));

    let both = search_with(
        &http,
        &bob,
        "budget",
        &[
            ("conv", second.to_string()),
            ("sender", alice.id.to_string()),
        ],
    )
    .await;
    assert_eq!(
        set(&both),
        expect(&|m| m.conv == second && m.sender == alice.id)
    );

    let (from, to) = (sent[1].ts, sent[4].ts);
    let range = search_with(
        &http,
        &alice,
        "budget",
        &[("from", from.to_string()), ("to", to.to_string())],
    )
    .await;
    let want = expect(&|m| (from..=to).contains(&m.ts));
    assert_eq!(set(&range), want);
    assert!(want.len() < sent.len(), "the range excludes something");
    let since = search_with(&http, &alice, "budget", &[("from", to.to_string())]).await;
    assert_eq!(set(&since), expect(&|m| m.ts >= to));
    let until = search_with(&http, &alice, "budget", &[("to", from.to_string())]).await;
    assert_eq!(set(&until), expect(&|m| m.ts <= from));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_ranked_and_paginated_with_a_cursor() {
    let server = start_search();
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = direct(&http, &alice, &bob).await;
    let long = "yesterday I finally had an apple with some of my good old friends from school";
    for text in [
        long,
        "apple apple apple pie",
        "an apple",
        "green apple juice",
        "apple",
        "pears only",
    ] {
        post(&http, &alice, conv, text).await;
    }
    let everything = indexed(&http, &bob, "apple", 5).await;
    assert_eq!(everything.results.len(), 5, "{:?}", texts(&everything));
    assert_eq!(everything.next_cursor, None);
    // Relevance: the long text with a single occurrence comes last.
    assert_eq!(
        texts(&everything).last(),
        Some(&long),
        "{:?}",
        texts(&everything)
    );

    // Pages of two follow the same order, without duplicates or gaps.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut filters = vec![("limit", "2".to_string())];
        if let Some(c) = &cursor {
            filters.push(("cursor", c.clone()));
        }
        let page = search_with(&http, &bob, "apple", &filters).await;
        assert!(page.results.len() <= 2);
        pages += 1;
        paged.extend(hits(&page));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, hits(&everything));
    let unique: HashSet<_> = paged.iter().collect();
    assert_eq!(unique.len(), 5);
}

/// A search ranks only the newest `limits.search_candidates` matches, and among equally
/// relevant ones the newest comes first (the index walks its postings newest first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_matches_are_ranked_and_ties_put_the_newest_first() {
    let server = start_search_with(&[("PARLOR_LIMITS__SEARCH_CANDIDATES", "3")]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = direct(&http, &alice, &bob).await;
    for n in 1..=6 {
        post(&http, &alice, conv, &format!("plum number{n}")).await;
    }
    indexed(&http, &bob, "number6", 1).await;
    let found = search(&http, &bob, "plum").await;
    assert_eq!(
        texts(&found),
        ["plum number6", "plum number5", "plum number4"],
        "{:?}",
        texts(&found)
    );
}

/// A search walks the newest matches and skips other conversations'; when most of what it
/// sees is not the caller's, it finishes inside the index on the caller's conversations,
/// from where the walk stopped. Either way it finds the caller's newest matches, however
/// many newer ones other conversations hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_newest_matches_are_found_behind_many_foreign_ones() {
    let server = start_search_with(&[("PARLOR_LIMITS__SEARCH_CANDIDATES", "2")]);
    let http = server.http();
    let ann = user(&http, "ann").await;
    let ben = user(&http, "ben").await;
    let cat = user(&http, "cat").await;
    let ours = direct(&http, &ann, &ben).await;
    let theirs = direct(&http, &cat, &ben).await;
    for n in 1..=4 {
        post(&http, &ann, ours, &format!("fig ours{n}")).await;
    }
    for n in 1..=30 {
        post(&http, &cat, theirs, &format!("fig theirs{n:02}")).await;
    }
    indexed(&http, &cat, "theirs30", 1).await;
    // Every newer match is foreign: the walk gives up at once.
    let found = search(&http, &ann, "fig").await;
    assert_eq!(texts(&found), ["fig ours4", "fig ours3"]);

    // One of ann's matches is newest, then foreign ones: the walk keeps it and the index
    // finds the next one behind the foreign matches.
    post(&http, &ann, ours, "fig ours5").await;
    for n in 31..=40 {
        post(&http, &cat, theirs, &format!("fig theirs{n:02}")).await;
    }
    indexed(&http, &cat, "theirs40", 1).await;
    let found = search(&http, &ann, "fig").await;
    assert_eq!(texts(&found), ["fig ours5", "fig ours4"]);
    // Ben is in both: his newest matches are cat's.
    let found = search(&http, &ben, "fig").await;
    assert_eq!(texts(&found), ["fig theirs40", "fig theirs39"]);
    let found = search(&http, &cat, "fig").await;
    assert_eq!(texts(&found), ["fig theirs40", "fig theirs39"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_callers_conversations_are_searched() {
    let server = start_search();
    let http = server.http();
    let ann = user(&http, "ann").await;
    let ben = user(&http, "ben").await;
    let cat = user(&http, "cat").await;
    let dan = user(&http, "dan").await;
    let outsider = user(&http, "outsider").await;
    let ours = group(&http, &ann, &[&ben]).await;
    let theirs = group(&http, &cat, &[&dan]).await;
    post(&http, &ann, ours, "the pineapple plan is ours").await;
    post(&http, &cat, theirs, "the pineapple plan is theirs").await;
    post(&http, &dan, theirs, "pineapple again").await;
    indexed(&http, &dan, "pineapple", 2).await;
    indexed(&http, &ann, "pineapple", 1).await;

    for (who, want) in [(&ann, vec![(ours, 1)]), (&ben, vec![(ours, 1)])] {
        let found = search(&http, who, "pineapple").await;
        assert_eq!(hits(&found), want, "{:?}", texts(&found));
    }
    let found = search(&http, &cat, "pineapple").await;
    let got: HashSet<_> = hits(&found).into_iter().collect();
    assert_eq!(got, HashSet::from([(theirs, 1), (theirs, 2)]));
    assert!(search(&http, &outsider, "pineapple")
        .await
        .results
        .is_empty());
    assert!(search(&http, &outsider, "plan").await.results.is_empty());
    // Filtering by a foreign sender does not open their conversations.
    let found = search_with(&http, &ann, "pineapple", &[("sender", cat.id.to_string())]).await;
    assert!(found.results.is_empty(), "{:?}", texts(&found));

    expect_error(
        http.search(&ann.token, "pineapple", &[("conv", theirs.to_string())])
            .await,
        403,
        ErrorCode::NotMember,
    );
    expect_error(
        http.search(&outsider.token, "pineapple", &[("conv", ours.to_string())])
            .await,
        403,
        ErrorCode::NotMember,
    );
    expect_error(
        http.search(&ann.token, "pineapple", &[("conv", "4242".to_string())])
            .await,
        404,
        ErrorCode::NotFound,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_left_finds_messages_up_to_leaving() {
    let server = start_search();
    let http = server.http();
    let owner = user(&http, "owner").await;
    let leaver = user(&http, "leaver").await;
    let removed = user(&http, "removed").await;
    let room = group(&http, &owner, &[&leaver, &removed]).await;
    post(&http, &owner, room, "kiwi one").await;
    post(&http, &leaver, room, "kiwi two").await;
    http.leave(&leaver.token, room).await.unwrap();
    post(&http, &owner, room, "kiwi three").await;
    http.remove_member(&owner.token, room, removed.id)
        .await
        .unwrap();
    post(&http, &owner, room, "kiwi four").await;
    indexed(&http, &owner, "kiwi", 4).await;

    let found = search(&http, &leaver, "kiwi").await;
    let mut seqs: Vec<u64> = found.results.iter().map(|h| h.message.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2], "{:?}", texts(&found));
    let found = search(&http, &removed, "kiwi").await;
    let mut seqs: Vec<u64> = found.results.iter().map(|h| h.message.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2, 3], "{:?}", texts(&found));
    // Also when asking for that conversation explicitly.
    let found = search_with(&http, &leaver, "kiwi", &[("conv", room.to_string())]).await;
    assert_eq!(found.results.len(), 2, "{:?}", texts(&found));
    assert!(search(&http, &leaver, "four").await.results.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_messages_disappear_and_edited_ones_are_found_by_their_new_text() {
    let server = start_search();
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = direct(&http, &alice, &bob).await;
    post(&http, &alice, conv, "the zebra crossing is closed").await;
    post(&http, &alice, conv, "an original walrus").await;
    post(&http, &alice, conv, "zebra stripes forever").await;
    indexed(&http, &bob, "walrus", 1).await;
    assert_eq!(search(&http, &bob, "zebra").await.results.len(), 2);

    http.delete_message(&alice.token, conv, 1).await.unwrap();
    let after_delete =
        search_until(&http, &bob.token, "zebra", &[], |r| r.results.len() == 1).await;
    assert_eq!(hits(&after_delete), vec![(conv, 3)]);
    assert!(search(&http, &bob, "crossing").await.results.is_empty());

    http.edit(&alice.token, conv, 2, "an updated narwhal")
        .await
        .unwrap();
    let found = indexed(&http, &bob, "narwhal", 1).await;
    assert_eq!(hits(&found), vec![(conv, 2)]);
    assert_eq!(found.results[0].message.text, "an updated narwhal");
    assert!(found.results[0].message.edited_at.is_some());
    assert!(
        search(&http, &bob, "walrus").await.results.is_empty(),
        "old text still found"
    );
    assert!(
        search(&http, &bob, "original").await.results.is_empty(),
        "old text still found"
    );
    assert_eq!(search(&http, &bob, "updated").await.results.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_are_refused_cleanly() {
    let server = start_search();
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = direct(&http, &alice, &bob).await;
    post(
        &http,
        &alice,
        conv,
        "select star from near where or and not",
    )
    .await;
    post(&http, &alice, conv, "one equals one").await;
    indexed(&http, &alice, "equals", 1).await;

    expect_error(
        http.search(&alice.token, "", &[]).await,
        400,
        ErrorCode::BadRequest,
    );
    expect_error(
        http.search(&alice.token, "   ", &[]).await,
        400,
        ErrorCode::BadRequest,
    );
    let (status, body) = http
        .get_raw("/v1/search", Some(&alice.token))
        .await
        .unwrap();
    assert_eq!(status, 400, "missing q: {body}");
    let long = "a".repeat(257);
    expect_error(
        http.search(&alice.token, &long, &[]).await,
        400,
        ErrorCode::BadRequest,
    );
    let long = "é".repeat(129); // 258 bytes
    expect_error(
        http.search(&alice.token, &long, &[]).await,
        400,
        ErrorCode::BadRequest,
    );
    // At the limit is fine.
    http.search(&alice.token, &"a".repeat(256), &[])
        .await
        .unwrap();
    let many = vec!["x"; 17].join(" ");
    expect_error(
        http.search(&alice.token, &many, &[]).await,
        400,
        ErrorCode::BadRequest,
    );

    // Query syntax of the engine and SQL never leak through: results or a clean 400.
    let hostile = [
        "\" OR 1=1 --",
        "*",
        "NEAR(",
        "NEAR(select star)",
        "\"",
        "'",
        "''",
        "select*",
        "OR",
        "AND NOT",
        "one OR two",
        "-one",
        "^select",
        "body:select",
        "conv_id:1",
        "{body}: near",
        "(select",
        "select)",
        "'; DROP TABLE messages; --",
        "%",
        "\\",
        "\u{0}",
        "a\u{0}b",
        "\u{202e}select",
        "🙂",
        "1=1",
    ];
    for q in hostile {
        let path = format!("/v1/search?q={}", percent(q));
        let (status, body) = http.get_raw(&path, Some(&alice.token)).await.unwrap();
        match status {
            200 => {
                let parsed: SearchResults = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("{q:?}: bad results body ({e}): {body}"));
                for hit in &parsed.results {
                    assert_eq!(hit.message.conv, conv, "{q:?}");
                }
            }
            400 => {
                let parsed: ErrorBody = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("{q:?}: bad error body ({e}): {body}"));
                assert_eq!(parsed.code, ErrorCode::BadRequest, "{q:?}: {body}");
            }
            other => panic!("search {q:?} answered {other}: {body}"),
        }
    }
    // Words that are operators to the engine are plain words here.
    let found = search(&http, &alice, "near or not").await;
    assert_eq!(hits(&found), vec![(conv, 1)]);

    // Bad pagination and filters are clean 400s too.
    for filters in [
        vec![("limit", "0".to_string())],
        vec![("limit", "51".to_string())],
        vec![("cursor", "not-a-cursor".to_string())],
        vec![("from", "20".to_string()), ("to", "10".to_string())],
        vec![("from", "yesterday".to_string())],
        vec![("sender", "nobody".to_string())],
    ] {
        let err = http
            .search(&alice.token, "one", &filters)
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(400), "{filters:?}: {err}");
    }

    // And the server is fine afterwards.
    assert_eq!(
        hits(&search(&http, &alice, "equals").await),
        vec![(conv, 2)]
    );
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
