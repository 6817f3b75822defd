//! The `BlobStore` guarantees, checked the same way on both adapters: the local
//! filesystem, and S3 against a real S3-compatible server (`s3s-fs`, started by the
//! test kit).

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use parlor_core::ports::{BlobStore, ByteStream};
use parlor_objects::{ObjectBlobStore, S3Config, PART_SIZE};
use parlor_proto::ErrorCode;
use parlor_testkit::S3Server;
use std::ops::Range;
use std::sync::Arc;

const MIB: usize = 1024 * 1024;
const CHUNK: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn local_store_keeps_its_guarantees() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = ObjectBlobStore::local(dir.path().join("objects"))?;
    suite(Arc::new(store)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_store_keeps_its_guarantees() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = S3Server::start()?;
    let store = ObjectBlobStore::s3(s3_config(&server, &server.bucket))?;
    suite(Arc::new(store)).await?;
    // Path-style requests reached the bucket: its objects are files in its directory.
    ensure!(server.bucket_dir().join("suite/small").is_file());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn local_storage_failures_are_unavailable() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("objects");
    let store = ObjectBlobStore::local(root.clone())?;
    store.put("file", body(b"x", CHUNK)).await?;
    // A key below an existing object cannot be a file on disk.
    expect_code(
        store.put("file/below", body(b"y", CHUNK)).await,
        ErrorCode::Unavailable,
    )?;
    std::fs::remove_dir_all(&root)?;
    expect_code(store.ping().await, ErrorCode::Unavailable)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_storage_failures_are_unavailable() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = S3Server::start()?;
    let missing = ObjectBlobStore::s3(s3_config(&server, "no-such-bucket"))?;
    expect_code(missing.ping().await, ErrorCode::Unavailable)?;

    let mut wrong = s3_config(&server, &server.bucket);
    wrong.secret_access_key.push('x');
    let wrong = ObjectBlobStore::s3(wrong)?;
    expect_code(wrong.ping().await, ErrorCode::Unavailable)?;
    expect_code(
        wrong.put("k", body(b"bytes", CHUNK)).await,
        ErrorCode::Unavailable,
    )?;

    // The service goes away in the middle of a multipart upload.
    let store = ObjectBlobStore::s3(s3_config(&server, &server.bucket))?;
    store.ping().await?;
    let data = pattern(3 * PART_SIZE, 5);
    let stop_at = PART_SIZE + MIB;
    let mut server = Some(server);
    let chunks: Vec<Bytes> = data.chunks(CHUNK).map(Bytes::copy_from_slice).collect();
    let dying = stream::iter(chunks.into_iter().enumerate())
        .map(move |(i, chunk)| {
            if i * CHUNK >= stop_at {
                server.take();
            }
            Ok(chunk)
        })
        .boxed();
    expect_code(store.put("k", dying).await, ErrorCode::Unavailable)?;
    expect_code(store.ping().await, ErrorCode::Unavailable)?;
    expect_code(
        store.put("k", body(b"bytes", CHUNK)).await,
        ErrorCode::Unavailable,
    )?;
    Ok(())
}

fn s3_config(server: &S3Server, bucket: &str) -> S3Config {
    S3Config {
        endpoint: Some(server.endpoint.clone()),
        region: server.region.clone(),
        bucket: bucket.to_owned(),
        access_key_id: server.access_key.clone(),
        secret_access_key: server.secret_key.clone(),
        allow_http: true,
    }
}

/// Every guarantee of [`BlobStore`], on a store that starts empty.
async fn suite(store: Arc<dyn BlobStore>) -> anyhow::Result<()> {
    store.ping().await.context("ping on an empty store")?;

    // Small and empty objects: one request each.
    let small = b"hello, parlor".to_vec();
    put_all(&*store, "suite/small", &small).await?;
    ensure!(read(&*store, "suite/small", None).await? == small);
    put_all(&*store, "suite/empty", b"").await?;
    ensure!(read(&*store, "suite/empty", None).await?.is_empty());

    // Larger than a part: a multipart upload, which must come back byte for byte.
    let big = pattern(12 * MIB, 1);
    ensure!(
        big.len() > PART_SIZE,
        "the big object must need several parts"
    );
    put_all(&*store, "suite/big", &big).await?;
    ensure!(read(&*store, "suite/big", None).await? == big, "big object");
    let len = big.len() as u64;
    let boundary = PART_SIZE as u64;
    for range in [
        0..1,
        0..1000,
        boundary - 10..boundary + 10,
        5 * MIB as u64..11 * MIB as u64,
        len - 1..len,
        0..len,
    ] {
        let got = read(&*store, "suite/big", Some(range.clone())).await?;
        ensure!(got == slice(&big, &range), "range {range:?}");
    }
    ensure!(read(&*store, "suite/small", Some(3..3)).await?.is_empty());
    expect_code(
        store.get("suite/big", Some(len..len + 10)).await,
        ErrorCode::RangeNotSatisfiable,
    )?;
    expect_code(
        store.get("suite/small", Some(100..200)).await,
        ErrorCode::RangeNotSatisfiable,
    )?;
    expect_code(
        store.get("suite/empty", Some(0..1)).await,
        ErrorCode::RangeNotSatisfiable,
    )?;

    // Missing objects.
    expect_code(store.get("suite/missing", None).await, ErrorCode::NotFound)?;
    expect_code(
        store.get("suite/missing", Some(0..10)).await,
        ErrorCode::NotFound,
    )?;
    expect_code(
        store.copy("suite/missing", "suite/copy").await,
        ErrorCode::NotFound,
    )?;

    // Copy, then delete: the copy stands on its own.
    store.copy("suite/big", "suite/copy").await?;
    ensure!(read(&*store, "suite/copy", None).await? == big, "copy");
    store.delete("suite/big").await?;
    expect_code(store.get("suite/big", None).await, ErrorCode::NotFound)?;
    ensure!(read(&*store, "suite/copy", Some(len - 1..len)).await? == big[big.len() - 1..]);
    store.delete("suite/copy").await?;
    expect_code(store.get("suite/copy", None).await, ErrorCode::NotFound)?;
    store.delete("suite/copy").await.context("delete twice")?;
    store
        .delete("suite/never-written")
        .await
        .context("delete of a missing key")?;

    // A body cut part-way keeps what arrived: below a part, across parts, and nothing.
    for (key, arrived) in [
        ("staging/cut/small", 3 * MIB),
        ("staging/cut/parts", PART_SIZE + 2 * MIB),
        ("staging/cut/nothing", 0),
    ] {
        let data = pattern(arrived, 2);
        let written = store.put(key, cut_body(&data)).await?;
        ensure!(written.bytes == arrived as u64, "{key}: {written:?}");
        ensure!(written.cut.is_some(), "{key}: cut not reported");
        ensure!(read(&*store, key, None).await? == data, "{key}: content");
    }

    // Overwrite replaces, whichever way each version went up.
    put_all(&*store, "suite/over", b"first version").await?;
    put_all(&*store, "suite/over", b"second").await?;
    ensure!(read(&*store, "suite/over", None).await? == b"second");
    let large = pattern(PART_SIZE + MIB, 3);
    put_all(&*store, "suite/over", &large).await?;
    ensure!(read(&*store, "suite/over", None).await? == large);
    put_all(&*store, "suite/over", b"small again").await?;
    ensure!(read(&*store, "suite/over", None).await? == b"small again");

    // Uneven chunks, one larger than a part: parts are cut by size, not by chunk.
    let uneven = pattern(PART_SIZE * 2 + 12_345, 4);
    let mut pieces: Vec<std::io::Result<Bytes>> = Vec::new();
    let mut at = 0usize;
    for n in [7, PART_SIZE + 3, 1, PART_SIZE / 2, usize::MAX] {
        let end = at.saturating_add(n).min(uneven.len());
        pieces.push(Ok(Bytes::copy_from_slice(&uneven[at..end])));
        at = end;
    }
    let written = store
        .put("suite/uneven", stream::iter(pieces).boxed())
        .await?;
    ensure!(written.cut.is_none() && written.bytes == uneven.len() as u64);
    ensure!(
        read(&*store, "suite/uneven", None).await? == uneven,
        "uneven"
    );

    store.ping().await.context("ping on a store with objects")?;
    Ok(())
}

async fn put_all(store: &dyn BlobStore, key: &str, data: &[u8]) -> anyhow::Result<()> {
    let written = store.put(key, body(data, CHUNK)).await?;
    if let Some(cut) = written.cut {
        bail!("{key}: body reported cut: {cut}");
    }
    ensure!(
        written.bytes == data.len() as u64,
        "{key}: wrote {} of {}",
        written.bytes,
        data.len()
    );
    Ok(())
}

async fn read(
    store: &dyn BlobStore,
    key: &str,
    range: Option<Range<u64>>,
) -> anyhow::Result<Vec<u8>> {
    let mut stream = store
        .get(key, range.clone())
        .await
        .with_context(|| format!("get {key} {range:?}"))?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.with_context(|| format!("read {key} {range:?}"))?);
    }
    Ok(out)
}

fn body(data: &[u8], chunk: usize) -> ByteStream {
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(chunks).boxed()
}

/// `data` in 64 KiB chunks, then a failure like a client cutting the connection, then
/// bytes that must not be read.
fn cut_body(data: &[u8]) -> ByteStream {
    let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "client went away");
    let after = Bytes::from_static(b"never stored");
    body(data, CHUNK)
        .chain(stream::iter([Err(cut), Ok(after)]))
        .boxed()
}

fn expect_code<T>(result: parlor_core::Result<T>, code: ErrorCode) -> anyhow::Result<()> {
    match result {
        Ok(_) => bail!("expected {code}, got Ok"),
        Err(e) if e.code == code => Ok(()),
        Err(e) => bail!("expected {code}, got {e}"),
    }
}

fn slice(data: &[u8], range: &Range<u64>) -> Vec<u8> {
    let clamp = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).min(data.len());
    data[clamp(range.start)..clamp(range.end)].to_vec()
}

/// Bytes that differ from one position to the next and between seeds, so that a part
/// stored twice, out of order or shifted does not compare equal.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
