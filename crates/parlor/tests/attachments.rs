//! Attachments end to end against the real binary: uploads (one request and tus
//! resumable, including a resume after a cut connection), byte-exact downloads with
//! ranges and ETags, who may download, hostile files (image bombs, truncated images,
//! lying types, HTML), thumbnails and placeholders, quotas and limits, deduplication,
//! garbage collection, and attachments in live events, history and sync.
//!
//! Every test runs on the storage `PARLOR_TEST_STORAGE` names: `local` (default) or
//! `s3`, a real `s3s-fs` server started on loopback for the test. `scripts/test` runs
//! the file both ways.

#![allow(clippy::unwrap_used)]

mod features;
mod support;

use features::*;
use parlor_client::proto::rest::{SendRequest, ThumbnailSize, UploadState, UploadView};
use parlor_client::proto::ws::ServerFrame;
use parlor_client::proto::{ErrorCode, Id};
use parlor_client::{ClientError, Http};
use parlor_testkit::TestServer;
use sha2::{Digest, Sha256};
use std::io::Cursor;
use std::time::Duration;
use support::*;
use tokio::io::AsyncWriteExt;

/// A server and, in S3 mode, the storage service it uses (dropped after the server).
struct Setup {
    server: TestServer,
    http: Http,
    _s3: Option<parlor_testkit::s3::S3Server>,
}

fn storage_is_s3() -> bool {
    std::env::var("PARLOR_TEST_STORAGE").is_ok_and(|v| v == "s3")
}

fn setup(env: &[(&str, &str)]) -> Setup {
    let mut vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let s3 = storage_is_s3().then(|| {
        let s3 = parlor_testkit::s3::S3Server::start().expect("start s3s-fs");
        for (k, v) in [
            ("PARLOR_UPLOADS__STORAGE", "s3".to_string()),
            ("PARLOR_UPLOADS__S3__ENDPOINT", s3.endpoint.clone()),
            ("PARLOR_UPLOADS__S3__BUCKET", s3.bucket.clone()),
            ("PARLOR_UPLOADS__S3__ACCESS_KEY_ID", s3.access_key.clone()),
            (
                "PARLOR_UPLOADS__S3__SECRET_ACCESS_KEY",
                s3.secret_key.clone(),
            ),
            ("PARLOR_UPLOADS__S3__ALLOW_HTTP", "true".to_string()),
        ] {
            vars.push((k.to_string(), v));
        }
        s3
    });
    let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = start(&refs);
    let http = server.http();
    Setup {
        server,
        http,
        _s3: s3,
    }
}

impl Setup {
    /// The directory objects land in: `<data_dir>/uploads`, or the S3 bucket's
    /// directory of the s3s-fs server (which stores objects as plain files).
    fn storage_dir(&self) -> std::path::PathBuf {
        match &self._s3 {
            Some(s3) => s3.bucket_dir(),
            None => self.server.data_dir().join("uploads"),
        }
    }

    /// Files (objects) under `prefix` of the storage, at any depth.
    fn objects(&self, prefix: &str) -> usize {
        fn count(dir: &std::path::Path) -> usize {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .map(|e| match e.file_type() {
                            Ok(t) if t.is_dir() => count(&e.path()),
                            Ok(t) if t.is_file() => 1,
                            _ => 0,
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        count(&self.storage_dir().join(prefix))
    }
}

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic, incompressible-looking bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn png(width: u32, height: u32, alpha: bool) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    if alpha {
        image::RgbaImage::from_fn(width, height, |x, y| {
            image::Rgba([(x % 256) as u8, (y % 256) as u8, 90, (x % 200) as u8])
        })
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    } else {
        image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 200])
        })
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    }
    out.into_inner()
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, 120, (y % 256) as u8])
    })
    .write_to(&mut out, image::ImageFormat::Jpeg)
    .unwrap();
    out.into_inner()
}

/// A PNG whose header claims `width` × `height` with almost no pixel data: decoding it
/// naively would allocate gigabytes.
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = png(8, 8, false);
    // IHDR data starts at byte 16 (8 signature + 4 length + 4 type).
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

async fn upload(http: &Http, user: &User, name: &str, ty: &str, bytes: &[u8]) -> UploadView {
    let view = http
        .upload(&user.token, name, ty, bytes.to_vec())
        .await
        .unwrap_or_else(|e| panic!("upload {name}: {e}"));
    assert_eq!(view.state, UploadState::Ready, "{view:?}");
    view
}

async fn send_with(http: &Http, user: &User, conv: Id, text: &str, attachments: Vec<Id>) -> u64 {
    http.send_request(
        &user.token,
        conv,
        &SendRequest {
            cid: Some(format!("att-{}", parlor_testkit::unique_name("c"))),
            text: text.into(),
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
            attachments,
        },
    )
    .await
    .expect("send with attachments")
    .seq
}

#[track_caller]
fn expect_code<T: std::fmt::Debug>(result: Result<T, ClientError>, status: u16, code: ErrorCode) {
    match result {
        Err(ClientError::Api { status: s, body }) => {
            assert_eq!((s, body.code), (status, code), "{}", body.message);
            assert!(!body.message.is_empty());
        }
        other => panic!("expected {code} ({status}), got {other:?}"),
    }
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_and_large_files_round_trip_byte_exact() {
    let s = setup(&[]);
    let alice = user(&s.http, "alice").await;

    let small = b"hello, attachments\n".to_vec();
    let view = upload(&s.http, &alice, "note.txt", "text/plain", &small).await;
    let att = view.attachment.clone().unwrap();
    assert_eq!(att.size, small.len() as u64);
    assert_eq!(att.sha256, sha_hex(&small));
    assert_eq!(att.content_type, "text/plain");
    assert_eq!(att.name, "note.txt");
    assert_eq!(
        s.http.download_bytes(&alice.token, view.id).await.unwrap(),
        small
    );

    // 50 MiB through tus in 8 MiB requests, and the same size in one request.
    let big = noise(50 * 1024 * 1024, 7);
    let created = s
        .http
        .tus_create(
            &alice.token,
            "big.bin",
            "application/octet-stream",
            big.len() as u64,
        )
        .await
        .unwrap();
    assert_eq!((created.offset, created.state), (0, UploadState::Receiving));
    let mut offset = 0u64;
    for chunk in big.chunks(8 * 1024 * 1024) {
        let next = s
            .http
            .tus_patch(&alice.token, created.id, offset, chunk.to_vec())
            .await
            .unwrap();
        assert_eq!(next, offset + chunk.len() as u64);
        offset = next;
    }
    let done = s.http.upload_info(&alice.token, created.id).await.unwrap();
    assert_eq!(done.state, UploadState::Ready);
    assert_eq!(done.attachment.as_ref().unwrap().sha256, sha_hex(&big));
    let back = s
        .http
        .download_bytes(&alice.token, created.id)
        .await
        .unwrap();
    assert!(back == big, "50 MiB tus upload differs after download");

    let other = noise(50 * 1024 * 1024, 11);
    let one = upload(
        &s.http,
        &alice,
        "big2.bin",
        "application/octet-stream",
        &other,
    )
    .await;
    let back = s.http.download_bytes(&alice.token, one.id).await.unwrap();
    assert!(back == other, "50 MiB single upload differs after download");

    let usage = s.http.upload_usage(&alice.token).await.unwrap();
    assert_eq!(
        usage.used_bytes,
        (small.len() + big.len() + other.len()) as u64
    );
}

/// Opens a raw PATCH of upload `id` from `offset` announcing `announced` bytes and writes
/// `bytes` of the body: the rest is up to the caller (finish it, or cut it).
async fn raw_patch(
    base: &str,
    token: &str,
    id: Id,
    offset: u64,
    announced: u64,
    bytes: &[u8],
) -> tokio::net::TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PATCH /v1/uploads/{id} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Tus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\nConnection: close\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: {announced}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    tcp.flush().await.unwrap();
    tcp
}

/// A PATCH whose connection breaks after `bytes`: a client cut off mid-upload.
async fn cut_patch(base: &str, token: &str, id: Id, offset: u64, announced: u64, bytes: &[u8]) {
    let tcp = raw_patch(base, token, id, offset, announced, bytes).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(tcp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_resumes_where_it_stopped() {
    let s = setup(&[]);
    if s.server.base_url().starts_with("https") {
        return;
    }
    let alice = user(&s.http, "alice").await;
    let file = noise(12 * 1024 * 1024, 3);
    let created = s
        .http
        .tus_create(
            &alice.token,
            "movie.bin",
            "application/octet-stream",
            file.len() as u64,
        )
        .await
        .unwrap();
    // The first 5 MiB arrive, then the connection breaks.
    cut_patch(
        s.server.base_url(),
        &alice.token,
        created.id,
        0,
        file.len() as u64,
        &file[..5 * 1024 * 1024],
    )
    .await;
    let offset = poll("the cut part to be recorded", || async {
        let offset = s.http.tus_offset(&alice.token, created.id).await.ok()?;
        (offset > 0).then_some(offset)
    })
    .await;
    assert!(offset <= 5 * 1024 * 1024, "offset {offset}");
    // A PATCH from a stale offset is refused with the current one.
    expect_code(
        s.http
            .tus_patch(&alice.token, created.id, 0, file[..10].to_vec())
            .await,
        409,
        ErrorCode::Conflict,
    );
    let end = s
        .http
        .tus_patch(
            &alice.token,
            created.id,
            offset,
            file[offset as usize..].to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(end, file.len() as u64);
    let back = s
        .http
        .download_bytes(&alice.token, created.id)
        .await
        .unwrap();
    assert!(back == file, "resumed upload differs");
    assert_eq!(
        s.http
            .upload_info(&alice.token, created.id)
            .await
            .unwrap()
            .attachment
            .unwrap()
            .sha256,
        sha_hex(&file)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_serve_ranges_etags_and_safe_headers() {
    let s = setup(&[]);
    let alice = user(&s.http, "alice").await;
    let bytes = noise(100_000, 5);
    let view = upload(
        &s.http,
        &alice,
        "data.bin",
        "application/octet-stream",
        &bytes,
    )
    .await;
    let path = format!("/v1/uploads/{}/content", view.id);
    let etag = format!("\"{}\"", sha_hex(&bytes));

    let whole = s.http.download(&alice.token, &path, &[]).await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(header(&whole, "etag"), etag);
    assert_eq!(header(&whole, "accept-ranges"), "bytes");
    assert_eq!(header(&whole, "x-content-type-options"), "nosniff");
    assert!(header(&whole, "content-security-policy").contains("sandbox"));
    assert_eq!(header(&whole, "content-type"), "application/octet-stream");
    assert!(header(&whole, "content-disposition").starts_with("attachment;"));
    assert_eq!(header(&whole, "content-length"), "100000");

    for (range, start, end) in [
        ("bytes=0-9", 0usize, 9usize),
        ("bytes=99990-", 99_990, 99_999),
        ("bytes=-100", 99_900, 99_999),
        ("bytes=5000-5000", 5000, 5000),
        ("bytes=50000-999999", 50_000, 99_999),
    ] {
        let resp = s
            .http
            .download(&alice.token, &path, &[("Range", range)])
            .await
            .unwrap();
        assert_eq!(resp.status(), 206, "{range}");
        assert_eq!(
            header(&resp, "content-range"),
            format!("bytes {start}-{end}/100000"),
            "{range}"
        );
        let body = resp.bytes().await.unwrap();
        assert_eq!(&body[..], &bytes[start..=end], "{range}");
    }
    let resp = s
        .http
        .download(&alice.token, &path, &[("Range", "bytes=100000-")])
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    assert_eq!(header(&resp, "content-range"), "bytes */100000");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "range_not_satisfiable");

    let resp = s
        .http
        .download(&alice.token, &path, &[("If-None-Match", &etag)])
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    // If-Range with another version sends everything.
    let resp = s
        .http
        .download(
            &alice.token,
            &path,
            &[("Range", "bytes=0-9"), ("If-Range", "\"other\"")],
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A raster image is shown inline under its real type, unless a download is asked for.
    let image = upload(&s.http, &alice, "pic.png", "image/png", &png(40, 30, false)).await;
    let resp = s
        .http
        .download(
            &alice.token,
            &format!("/v1/uploads/{}/content", image.id),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(header(&resp, "content-type"), "image/png");
    assert!(header(&resp, "content-disposition").starts_with("inline;"));
    let resp = s
        .http
        .download(
            &alice.token,
            &format!("/v1/uploads/{}/content?download=true", image.id),
            &[],
        )
        .await
        .unwrap();
    assert!(header(&resp, "content-disposition").starts_with("attachment;"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_uploader_and_members_who_see_the_message_can_download() {
    let s = setup(&[]);
    let alice = user(&s.http, "alice").await;
    let bob = user(&s.http, "bob").await;
    let carol = user(&s.http, "carol").await;
    let dave = user(&s.http, "dave").await;
    let conv = direct(&s.http, &alice, &bob).await;
    let (mut bob_ws, bob_pos) = live(&s.server, &bob.token).await;

    let bytes = png(64, 48, false);
    let view = upload(&s.http, &alice, "cat.png", "image/png", &bytes).await;
    // Not shared yet: only its uploader can read it; others see "not found".
    expect_code(
        s.http.download_bytes(&bob.token, view.id).await,
        404,
        ErrorCode::NotFound,
    );
    expect_code(
        s.http.upload_info(&bob.token, view.id).await,
        404,
        ErrorCode::NotFound,
    );
    // Nobody can attach someone else's upload, or an unknown id.
    let carol_conv = direct(&s.http, &carol, &alice).await;
    let foreign = s
        .http
        .send_request(
            &carol.token,
            carol_conv,
            &SendRequest {
                cid: Some("steal".into()),
                text: "mine now".into(),
                reply_to: None,
                mentions: Vec::new(),
                mention_all: false,
                attachments: vec![view.id],
            },
        )
        .await;
    expect_code(foreign, 404, ErrorCode::NotFound);
    let unknown = s
        .http
        .send_request(
            &alice.token,
            conv,
            &SendRequest {
                cid: Some("unknown".into()),
                text: String::new(),
                reply_to: None,
                mentions: Vec::new(),
                mention_all: false,
                attachments: vec![Id(12345)],
            },
        )
        .await;
    expect_code(unknown, 404, ErrorCode::NotFound);

    // Shared in the conversation (with no text): bob sees it live and can download it.
    let seq = send_with(&s.http, &alice, conv, "", vec![view.id]).await;
    let live_event = wait_for(&mut bob_ws, |f| match f {
        ServerFrame::Message(m) if m.message.conv == conv && m.message.seq == seq => {
            Some(m.message.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(live_event.attachments.len(), 1);
    assert_eq!(live_event.attachments[0].id, view.id);
    assert_eq!(live_event.attachments[0].width, Some(64));
    assert_eq!(
        s.http.download_bytes(&bob.token, view.id).await.unwrap(),
        bytes
    );
    assert_eq!(
        s.http
            .upload_info(&bob.token, view.id)
            .await
            .unwrap()
            .attachment,
        view.attachment
    );
    let thumb = s
        .http
        .download(
            &bob.token,
            &format!("/v1/uploads/{}/thumbnails/small", view.id),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(thumb.status(), 200);
    // Carol and dave are in no conversation where it was shared.
    expect_code(
        s.http.download_bytes(&carol.token, view.id).await,
        404,
        ErrorCode::NotFound,
    );
    expect_code(
        s.http.download_bytes(&dave.token, view.id).await,
        404,
        ErrorCode::NotFound,
    );

    // History and sync carry the attachment too.
    let history = full_history(&s.http, &bob.token, conv).await;
    let stored = history.iter().find(|m| m.seq == seq).unwrap();
    assert_eq!(stored.attachments, live_event.attachments);
    drop(bob_ws);
    let (_ws, backlog, _) = connect(&s.server, &bob.token, Some(Id(bob_pos.0))).await;
    let synced = backlog
        .iter()
        .find_map(|f| match f {
            ServerFrame::Message(m) if m.message.seq == seq && m.message.conv == conv => {
                Some(m.message.clone())
            }
            _ => None,
        })
        .expect("message in sync");
    assert_eq!(synced.attachments, live_event.attachments);

    // In a group, a member removed later keeps access to what was shared before they left.
    let group_id = group(&s.http, &alice, &[&carol, &dave]).await;
    let doc = upload(
        &s.http,
        &alice,
        "plan.pdf",
        "application/pdf",
        b"%PDF-1.4 plan",
    )
    .await;
    send_with(&s.http, &alice, group_id, "the plan", vec![doc.id]).await;
    assert!(s.http.download_bytes(&dave.token, doc.id).await.is_ok());
    s.http
        .remove_member(&alice.token, group_id, dave.id)
        .await
        .unwrap();
    assert!(s.http.download_bytes(&dave.token, doc.id).await.is_ok());
    let later = upload(
        &s.http,
        &alice,
        "later.txt",
        "text/plain",
        b"after dave left",
    )
    .await;
    send_with(&s.http, &alice, group_id, "newer", vec![later.id]).await;
    expect_code(
        s.http.download_bytes(&dave.token, later.id).await,
        404,
        ErrorCode::NotFound,
    );
    assert!(s.http.download_bytes(&carol.token, later.id).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_files_are_refused_or_defused() {
    let s = setup(&[]);
    let alice = user(&s.http, "alice").await;

    // An image bomb: a tiny PNG claiming 100,000 × 100,000 pixels.
    let bomb = png_bomb(100_000, 100_000);
    expect_code(
        s.http
            .upload(&alice.token, "bomb.png", "image/png", bomb)
            .await,
        422,
        ErrorCode::InvalidMedia,
    );
    // Within the per-side limit but far over the pixel budget.
    expect_code(
        s.http
            .upload(
                &alice.token,
                "wide.png",
                "image/png",
                png_bomb(16_000, 16_000),
            )
            .await,
        422,
        ErrorCode::InvalidMedia,
    );
    // A truncated image.
    let whole = jpeg(400, 300);
    let truncated = whole[..whole.len() / 2].to_vec();
    expect_code(
        s.http
            .upload(&alice.token, "half.jpg", "image/jpeg", truncated)
            .await,
        422,
        ErrorCode::InvalidMedia,
    );
    // Bytes that are not what they claim to be.
    expect_code(
        s.http
            .upload(
                &alice.token,
                "cat.png",
                "image/png",
                b"%PDF-1.7 not a cat".to_vec(),
            )
            .await,
        415,
        ErrorCode::TypeMismatch,
    );
    // Nothing refused stays or counts against the quota.
    assert_eq!(
        s.http.upload_usage(&alice.token).await.unwrap().used_bytes,
        0
    );

    // HTML and SVG are accepted as files but never served as something a browser runs.
    for (name, body) in [
        (
            "page.html",
            &b"<!DOCTYPE html><script>alert(1)</script>"[..],
        ),
        (
            "pic.svg",
            &b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"[..],
        ),
    ] {
        let view = upload(&s.http, &alice, name, "text/html", body).await;
        let resp = s
            .http
            .download(
                &alice.token,
                &format!("/v1/uploads/{}/content", view.id),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            header(&resp, "content-type"),
            "application/octet-stream",
            "{name}"
        );
        assert!(
            header(&resp, "content-disposition").starts_with("attachment;"),
            "{name}"
        );
        assert_eq!(header(&resp, "x-content-type-options"), "nosniff");
        assert!(header(&resp, "content-security-policy").contains("sandbox"));
    }
    // Path tricks in names are dropped.
    let view = upload(&s.http, &alice, "../../etc/passwd", "text/plain", b"x").await;
    assert_eq!(view.name, "passwd");
    // The server still works after all that.
    assert!(s.http.me(&alice.token).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_get_thumbnails_and_a_placeholder() {
    let s = setup(&[]);
    let alice = user(&s.http, "alice").await;
    for (name, ty, bytes, thumb_type) in [
        (
            "wide.png",
            "image/png",
            png(2000, 1000, false),
            "image/jpeg",
        ),
        ("photo.jpg", "image/jpeg", jpeg(2000, 1000), "image/jpeg"),
        ("alpha.png", "image/png", png(2000, 1000, true), "image/png"),
    ] {
        let view = upload(&s.http, &alice, name, ty, &bytes).await;
        let att = view.attachment.unwrap();
        assert_eq!((att.width, att.height), (Some(2000), Some(1000)), "{name}");
        assert!(
            att.blurhash.as_ref().is_some_and(|b| b.len() >= 6),
            "{name}"
        );
        for (size, w, h) in [
            (ThumbnailSize::Small, 160, 80),
            (ThumbnailSize::Medium, 800, 400),
        ] {
            let t = att
                .thumbnails
                .iter()
                .find(|t| t.size == size)
                .expect("thumbnail");
            assert_eq!((t.width, t.height), (w, h), "{name} {size:?}");
            assert_eq!(t.content_type, thumb_type, "{name}");
            let resp = s
                .http
                .download(
                    &alice.token,
                    &format!("/v1/uploads/{}/thumbnails/{}", view.id, size.as_str()),
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(header(&resp, "content-type"), thumb_type);
            let body = resp.bytes().await.unwrap();
            let decoded = image::load_from_memory(&body).unwrap();
            assert_eq!(
                (decoded.width(), decoded.height()),
                (w, h),
                "{name} {size:?}"
            );
        }
    }
    // A small image is never enlarged.
    let view = upload(
        &s.http,
        &alice,
        "tiny.png",
        "image/png",
        &png(100, 50, false),
    )
    .await;
    let att = view.attachment.unwrap();
    assert!(att
        .thumbnails
        .iter()
        .all(|t| (t.width, t.height) == (100, 50)));
    // No thumbnails for files that are not images; unknown sizes are 404.
    let view = upload(&s.http, &alice, "a.txt", "text/plain", b"text").await;
    assert!(view.attachment.unwrap().thumbnails.is_empty());
    let resp = s
        .http
        .download(
            &alice.token,
            &format!("/v1/uploads/{}/thumbnails/small", view.id),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = s
        .http
        .download(
            &alice.token,
            &format!("/v1/uploads/{}/thumbnails/huge", view.id),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

/// A minimal MP4 header (ftyp, and moov/trak/tkhd for a 640 × 360 track), enough for the
/// type and the dimensions; no ffmpeg can decode it, so it gets no poster.
fn tiny_mp4() -> Vec<u8> {
    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }
    let mut tkhd = vec![0u8; 84];
    tkhd[76..80].copy_from_slice(&(640u32 << 16).to_be_bytes());
    tkhd[80..84].copy_from_slice(&(360u32 << 16).to_be_bytes());
    let trak = boxed(b"trak", &boxed(b"tkhd", &tkhd));
    let mut out = boxed(b"ftyp", b"isom\0\0\x02\0isomiso2mp41");
    out.extend(boxed(b"moov", &trak));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn videos_upload_without_ffmpeg_and_get_a_poster_with_it() {
    let s = setup(&[("PARLOR_UPLOADS__FFMPEG", "")]);
    let alice = user(&s.http, "alice").await;
    let view = upload(&s.http, &alice, "clip.mp4", "video/mp4", &tiny_mp4()).await;
    let att = view.attachment.unwrap();
    assert_eq!(att.content_type, "video/mp4");
    assert_eq!((att.width, att.height), (Some(640), Some(360)));
    assert!(att.thumbnails.is_empty());
    let resp = s
        .http
        .download(
            &alice.token,
            &format!("/v1/uploads/{}/content", view.id),
            &[("Range", "bytes=0-3")],
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(header(&resp, "content-type"), "video/mp4");

    let Some(ffmpeg) = ["/usr/bin/ffmpeg", "/usr/local/bin/ffmpeg"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("ffmpeg is not installed: poster frames not exercised");
        return;
    };
    let dir = tempfile_dir();
    let out = dir.join("test.mp4");
    let status = std::process::Command::new(ffmpeg)
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=10",
            "-t",
            "1",
        ])
        .args(["-pix_fmt", "yuv420p", "-y"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let video = std::fs::read(&out).unwrap();
    let s = setup(&[("PARLOR_UPLOADS__FFMPEG", ffmpeg)]);
    let alice = user(&s.http, "alice").await;
    let view = upload(&s.http, &alice, "test.mp4", "video/mp4", &video).await;
    let att = view.attachment.unwrap();
    assert_eq!((att.width, att.height), (Some(320), Some(240)));
    let poster = att
        .thumbnails
        .iter()
        .find(|t| t.size == ThumbnailSize::Poster)
        .expect("poster");
    assert_eq!((poster.width, poster.height), (320, 240));
    let resp = s
        .http
        .download(
            &alice.token,
            &format!("/v1/uploads/{}/thumbnails/poster", view.id),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(header(&resp, "content-type"), "image/jpeg");
    let decoded = image::load_from_memory(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (320, 240));
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(parlor_testkit::unique_name("parlor-video"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limit_quota_and_types_are_enforced() {
    let s = setup(&[
        ("PARLOR_UPLOADS__MAX_BYTES", "600"),
        ("PARLOR_UPLOADS__QUOTA_BYTES", "1000"),
        (
            "PARLOR_UPLOADS__ALLOWED_TYPES",
            "[\"image/*\", \"text/plain\"]",
        ),
    ]);
    let alice = user(&s.http, "alice").await;
    let bob = user(&s.http, "bob").await;
    let too_big = s
        .http
        .upload(&alice.token, "big.txt", "text/plain", vec![b'a'; 601])
        .await;
    let message = match &too_big {
        Err(ClientError::Api { body, .. }) => body.message.clone(),
        _ => String::new(),
    };
    expect_code(too_big, 413, ErrorCode::PayloadTooLarge);
    assert!(message.contains("600"), "the limit is named: {message}");
    let first = upload(&s.http, &alice, "a.txt", "text/plain", &[b'a'; 500]).await;
    expect_code(
        s.http
            .upload(&alice.token, "b.txt", "text/plain", vec![b'b'; 501])
            .await,
        413,
        ErrorCode::QuotaExceeded,
    );
    // tus creation is checked the same way, before any byte is sent.
    expect_code(
        s.http
            .tus_create(&alice.token, "c.txt", "text/plain", 501)
            .await,
        413,
        ErrorCode::QuotaExceeded,
    );
    // Quotas are per user.
    upload(&s.http, &bob, "b.txt", "text/plain", &[b'b'; 501]).await;
    // Deleting an upload gives its bytes back.
    s.http.delete_upload(&alice.token, first.id).await.unwrap();
    expect_code(
        s.http.download_bytes(&alice.token, first.id).await,
        404,
        ErrorCode::NotFound,
    );
    upload(&s.http, &alice, "b.txt", "text/plain", &[b'b'; 501]).await;
    let usage = s.http.upload_usage(&alice.token).await.unwrap();
    assert_eq!(
        (usage.used_bytes, usage.quota_bytes, usage.max_upload_bytes),
        (501, 1000, 600)
    );
    // Types outside the allow-list, declared or found in the bytes.
    expect_code(
        s.http
            .upload(
                &alice.token,
                "x.pdf",
                "application/pdf",
                b"%PDF-1.4".to_vec(),
            )
            .await,
        415,
        ErrorCode::UnsupportedType,
    );
    expect_code(
        s.http
            .upload(
                &alice.token,
                "x.bin",
                "application/octet-stream",
                b"%PDF-1.4".to_vec(),
            )
            .await,
        415,
        ErrorCode::UnsupportedType,
    );
    // Someone else cannot delete or resume alice's upload.
    let mine = s
        .http
        .tus_create(&alice.token, "d.txt", "text/plain", 10)
        .await
        .unwrap();
    expect_code(
        s.http.delete_upload(&bob.token, mine.id).await,
        404,
        ErrorCode::NotFound,
    );
    expect_code(
        s.http
            .tus_patch(&bob.token, mine.id, 0, b"0123456789".to_vec())
            .await,
        404,
        ErrorCode::NotFound,
    );
    // More bytes than announced are refused.
    expect_code(
        s.http
            .tus_patch(&alice.token, mine.id, 0, vec![b'x'; 11])
            .await,
        413,
        ErrorCode::PayloadTooLarge,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_content_is_stored_once() {
    let s = setup(&[]);
    let alice = user(&s.http, "alice").await;
    let bob = user(&s.http, "bob").await;
    let bytes = png(300, 200, false);
    let a = upload(&s.http, &alice, "a.png", "image/png", &bytes).await;
    let b = upload(&s.http, &bob, "b.png", "image/png", &bytes).await;
    assert_ne!(a.id, b.id);
    let (aa, ba) = (a.attachment.unwrap(), b.attachment.unwrap());
    assert_eq!(aa.sha256, ba.sha256);
    assert_eq!(aa.thumbnails, ba.thumbnails);
    assert_eq!(ba.name, "b.png");
    assert_eq!(
        metric(
            &s.http,
            "parlor_uploads_completed_total{outcome=\"deduplicated\"}"
        )
        .await,
        1.0
    );
    // Removing one upload leaves the shared content for the other.
    s.http.delete_upload(&alice.token, a.id).await.unwrap();
    assert_eq!(
        s.http.download_bytes(&bob.token, b.id).await.unwrap(),
        bytes
    );
    assert_eq!(s.objects("blobs"), 3, "one content and its two thumbnails");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_removes_unused_uploads() {
    let s = setup(&[
        ("PARLOR_UPLOADS__UNATTACHED_TTL_SECS", "2"),
        ("PARLOR_UPLOADS__GC_INTERVAL_SECS", "1"),
    ]);
    let alice = user(&s.http, "alice").await;
    let bob = user(&s.http, "bob").await;
    let conv = direct(&s.http, &alice, &bob).await;

    let forgotten = upload(
        &s.http,
        &alice,
        "forgotten.txt",
        "text/plain",
        b"never sent",
    )
    .await;
    let kept = upload(&s.http, &alice, "kept.txt", "text/plain", b"sent and kept").await;
    let dropped = upload(
        &s.http,
        &alice,
        "dropped.txt",
        "text/plain",
        b"sent, then deleted",
    )
    .await;
    let unfinished = s
        .http
        .tus_create(&alice.token, "half.bin", "application/octet-stream", 100)
        .await
        .unwrap();
    s.http
        .tus_patch(&alice.token, unfinished.id, 0, vec![1; 50])
        .await
        .unwrap();
    send_with(&s.http, &alice, conv, "kept", vec![kept.id]).await;
    let seq = send_with(&s.http, &alice, conv, "dropped", vec![dropped.id]).await;
    s.http
        .delete_message(&alice.token, conv, seq)
        .await
        .unwrap();

    for id in [forgotten.id, dropped.id, unfinished.id] {
        poll("the upload to be collected", || async {
            matches!(
                s.http.upload_info(&alice.token, id).await,
                Err(ClientError::Api { status: 404, .. })
            )
            .then_some(())
        })
        .await;
    }
    assert_eq!(
        s.http.download_bytes(&bob.token, kept.id).await.unwrap(),
        b"sent and kept"
    );
    assert_eq!(
        s.http.upload_usage(&alice.token).await.unwrap().used_bytes,
        b"sent and kept".len() as u64
    );
    // The deleted message no longer lists the file.
    let history = full_history(&s.http, &bob.token, conv).await;
    assert!(history
        .iter()
        .find(|m| m.seq == seq)
        .unwrap()
        .attachments
        .is_empty());
    // Only the kept content is left in storage, and no staged parts.
    poll("storage to be cleaned", || async {
        (s.objects("blobs") == 1).then_some(())
    })
    .await;
    assert_eq!(s.objects("staging"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_need_a_token_and_bad_requests_get_clear_errors() {
    let s = setup(&[]);
    let alice = user(&s.http, "alice").await;
    let (status, body) = s
        .http
        .post_raw("/v1/uploads?name=x", None, "text/plain", b"x".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, body) = s.http.get_raw("/v1/uploads/1/content", None).await.unwrap();
    assert_eq!(status, 401, "{body}");
    // A PATCH without the tus content type, a missing offset, garbage ids.
    let created = s
        .http
        .tus_create(&alice.token, "f.bin", "application/octet-stream", 4)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("{}/v1/uploads/{}", s.server.base_url(), created.id);
    let resp = client
        .patch(&url)
        .bearer_auth(&alice.token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", "0")
        .body("abcd")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    assert_eq!(header(&resp, "tus-resumable"), "1.0.0");
    let resp = client
        .patch(&url)
        .bearer_auth(&alice.token)
        .header("Tus-Resumable", "1.0.0")
        .header("Content-Type", "application/offset+octet-stream")
        .body("abcd")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = client
        .post(format!("{}/v1/uploads", s.server.base_url()))
        .bearer_auth(&alice.token)
        .header("Tus-Resumable", "0.2.0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/uploads", s.server.base_url()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(header(&resp, "tus-extension").contains("creation-with-upload"));
    let (status, _) = s
        .http
        .get_raw("/v1/uploads/not-an-id/content", Some(&alice.token))
        .await
        .unwrap();
    assert_eq!(status, 404);
    // tus creation with the first bytes in the same request.
    let resp = client
        .post(format!("{}/v1/uploads", s.server.base_url()))
        .bearer_auth(&alice.token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "4")
        .header(
            "Upload-Metadata",
            "filename aGkudHh0,filetype dGV4dC9wbGFpbg==",
        )
        .header("Content-Type", "application/offset+octet-stream")
        .body("hi!\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "upload-offset"), "4");
    let view: UploadView = resp.json().await.unwrap();
    assert_eq!(view.name, "hi.txt");
    assert_eq!(view.state, UploadState::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_go_out_over_websocket_too() {
    let s = setup(&[]);
    let alice = user(&s.http, "alice").await;
    let bob = user(&s.http, "bob").await;
    let conv = direct(&s.http, &alice, &bob).await;
    let (mut alice_ws, _) = live(&s.server, &alice.token).await;
    let (mut bob_ws, _) = live(&s.server, &bob.token).await;
    let a = upload(&s.http, &alice, "one.png", "image/png", &png(20, 10, false)).await;
    let b = upload(&s.http, &alice, "two.txt", "text/plain", b"two").await;
    alice_ws
        .send_frame(&parlor_client::proto::ws::ClientFrame::Send {
            cid: "ws-att".into(),
            conv,
            text: "two files".into(),
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
            attachments: vec![a.id, b.id],
        })
        .await
        .unwrap();
    let acked = ack(&mut alice_ws, "ws-att").await;
    let got = wait_for(&mut bob_ws, |f| match f {
        ServerFrame::Message(m) if m.message.seq == acked.seq => Some(m.message.clone()),
        _ => None,
    })
    .await;
    let ids: Vec<Id> = got.attachments.iter().map(|x| x.id).collect();
    assert_eq!(ids, vec![a.id, b.id], "in the order the sender gave");
    // A retry of the same cid is the same message, not a second one.
    alice_ws
        .send_frame(&parlor_client::proto::ws::ClientFrame::Send {
            cid: "ws-att".into(),
            conv,
            text: "two files".into(),
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
            attachments: vec![a.id, b.id],
        })
        .await
        .unwrap();
    let again = ack(&mut alice_ws, "ws-att").await;
    assert!(again.duplicate);
    assert_eq!(again.seq, acked.seq);
    // Too many, or the same one twice, is a clear error on the frame.
    alice_ws
        .send_frame(&parlor_client::proto::ws::ClientFrame::Send {
            cid: "ws-twice".into(),
            conv,
            text: "x".into(),
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
            attachments: vec![a.id, a.id],
        })
        .await
        .unwrap();
    let error = error_for(&mut alice_ws, "ws-twice").await;
    assert_eq!(error.code, ErrorCode::BadRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_is_a_file_too() {
    let s = setup(&[]);
    let alice = user(&s.http, "alice").await;
    let view = upload(&s.http, &alice, "empty.txt", "text/plain", b"").await;
    let att = view.attachment.unwrap();
    assert_eq!((att.size, att.sha256.as_str()), (0, sha_hex(b"").as_str()));
    assert!(s
        .http
        .download_bytes(&alice.token, view.id)
        .await
        .unwrap()
        .is_empty());
    let resp = s
        .http
        .download(
            &alice.token,
            &format!("/v1/uploads/{}/content", view.id),
            &[("Range", "bytes=0-")],
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    // Through tus: created with length 0, it is complete at once.
    let created = s
        .http
        .tus_create(&alice.token, "nothing.bin", "application/octet-stream", 0)
        .await
        .unwrap();
    assert_eq!(created.state, UploadState::Ready);
    // A PATCH at the final offset with bytes is refused; an empty one changes nothing.
    expect_code(
        s.http
            .tus_patch(&alice.token, created.id, 0, b"x".to_vec())
            .await,
        409,
        ErrorCode::Conflict,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_downloads_work_over_https() {
    let opts = parlor_testkit::ServerOptions::default().with_tls();
    let server = tokio::task::block_in_place(|| TestServer::start(bin(), opts)).unwrap();
    assert!(server.base_url().starts_with("https://"));
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bytes = noise(3 * 1024 * 1024, 9);
    let created = http
        .tus_create(
            &alice.token,
            "secure.bin",
            "application/octet-stream",
            bytes.len() as u64,
        )
        .await
        .unwrap();
    let half = bytes.len() / 2;
    let offset = http
        .tus_patch(&alice.token, created.id, 0, bytes[..half].to_vec())
        .await
        .unwrap();
    http.tus_patch(&alice.token, created.id, offset, bytes[half..].to_vec())
        .await
        .unwrap();
    assert!(http.download_bytes(&alice.token, created.id).await.unwrap() == bytes);
    let image = upload(&http, &alice, "p.png", "image/png", &png(300, 300, false)).await;
    assert_eq!(image.attachment.unwrap().thumbnails.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_for_an_upload_in_progress_is_refused() {
    let s = setup(&[]);
    if s.server.base_url().starts_with("https") {
        return;
    }
    let alice = user(&s.http, "alice").await;
    let file = noise(2 * 1024 * 1024, 21);
    let created = s
        .http
        .tus_create(
            &alice.token,
            "slow.bin",
            "application/octet-stream",
            file.len() as u64,
        )
        .await
        .unwrap();
    // A slow client: headers and half the body, then a pause.
    let mut tcp = raw_patch(
        s.server.base_url(),
        &alice.token,
        created.id,
        0,
        file.len() as u64,
        &file[..file.len() / 2],
    )
    .await;
    // The same client retries meanwhile (on this node): refused, nothing overwritten.
    // The probe has an empty body, so that one arriving before the first request is
    // under way changes nothing; the first was sent before it and is normally ahead.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let retry = poll("the first request to be under way", || async {
        match s
            .http
            .tus_patch(&alice.token, created.id, 0, Vec::new())
            .await
        {
            Err(e @ ClientError::Api { status: 409, .. }) => Some(e),
            _ => None,
        }
    })
    .await;
    let message = match retry {
        ClientError::Api { body, .. } => body.message,
        _ => String::new(),
    };
    assert!(message.contains("still running"), "{message}");
    // The first request finishes normally.
    tcp.write_all(&file[file.len() / 2..]).await.unwrap();
    tcp.flush().await.unwrap();
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut answer)
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    assert!(
        s.http
            .download_bytes(&alice.token, created.id)
            .await
            .unwrap()
            == file
    );
}
