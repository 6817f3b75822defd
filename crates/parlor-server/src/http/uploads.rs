//! Upload endpoints: the tus 1.0 resumable protocol (core, creation,
//! creation-with-upload, termination) and a one-request upload, downloads with
//! `Range` and `ETag`, thumbnails, and the caller's storage use.
//!
//! Downloads are served so that a hostile file cannot act in the web client's origin:
//! only raster images, video and audio are ever labelled as what they are and shown
//! inline; everything else goes out as `application/octet-stream` with
//! `Content-Disposition: attachment`, always with `nosniff` and a sandboxing CSP.

use super::error::{ApiError, ApiResult, Caller, PathParams, QueryParams};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use futures_util::{StreamExt, TryStreamExt};
use parlor_core::error::Error;
use parlor_core::ports::ByteStream;
use parlor_core::uploads::{inline_safe, UploadRecord};
use parlor_proto::rest::{ThumbnailSize, UploadUsage, UploadView};
use parlor_proto::{ErrorCode, Id};
use serde::Deserialize;

const TUS_VERSION: &str = "1.0.0";
const TUS_EXTENSIONS: &str = "creation,creation-with-upload,termination";
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

fn tus_resumable() -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static("tus-resumable"),
        HeaderValue::from_static(TUS_VERSION),
    )
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<Result<u64, ApiError>> {
    headers.get(name).map(|v| {
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| bad(format!("{name} must be a non-negative integer")))
    })
}

fn bad(message: String) -> ApiError {
    ApiError(Error::new(ErrorCode::BadRequest, message))
}

fn is_tus(headers: &HeaderMap) -> Result<bool, ApiError> {
    match headers.get("tus-resumable") {
        None => Ok(false),
        Some(v) if v.as_bytes() == TUS_VERSION.as_bytes() => Ok(true),
        Some(_) => Err(bad(format!("only tus version {TUS_VERSION} is supported"))),
    }
}

/// Errors of tus requests carry `Tus-Resumable` too, as the protocol asks.
fn with_tus(result: ApiResult<Response>) -> Response {
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    let (name, value) = tus_resumable();
    response.headers_mut().insert(name, value);
    response
}

fn body_stream(body: Body) -> ByteStream {
    body.into_data_stream()
        .map_err(std::io::Error::other)
        .boxed()
}

/// `OPTIONS /v1/uploads`: what this server speaks.
pub async fn options(State(state): State<AppState>) -> Response {
    let max = state.uploads.config().max_bytes.to_string();
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    headers.insert("tus-extension", HeaderValue::from_static(TUS_EXTENSIONS));
    if let Ok(v) = HeaderValue::from_str(&max) {
        headers.insert("tus-max-size", v);
    }
    let (name, value) = tus_resumable();
    headers.insert(name, value);
    response
}

#[derive(Debug, Deserialize)]
pub struct SimpleQuery {
    name: Option<String>,
}

/// `POST /v1/uploads`: with `Tus-Resumable`, creates a resumable upload (and takes its
/// first bytes when the body is `application/offset+octet-stream`); without it, the
/// body is the whole file (`?name=`, `Content-Type`, `Content-Length`).
pub async fn create(
    State(state): State<AppState>,
    Caller(me): Caller,
    QueryParams(query): QueryParams<SimpleQuery>,
    request: Request,
) -> Response {
    let tus = match is_tus(request.headers()) {
        Ok(tus) => tus,
        Err(e) => return with_tus(Err(e)),
    };
    let result = async {
        state
            .rate(
                &format!("rest:user:{}", me.user),
                state.config.rate.rest_per_user.into(),
            )
            .await?;
        if tus {
            create_tus(&state, me.user, request).await
        } else {
            create_simple(&state, me.user, query, request).await
        }
    }
    .await;
    if tus {
        with_tus(result)
    } else {
        result.unwrap_or_else(IntoResponse::into_response)
    }
}

async fn create_tus(state: &AppState, owner: Id, request: Request) -> ApiResult<Response> {
    let headers = request.headers();
    if headers.contains_key("upload-defer-length") {
        return Err(bad("Upload-Defer-Length is not supported".into()));
    }
    let length = header_u64(headers, "upload-length")
        .ok_or_else(|| bad("Upload-Length is required".into()))??;
    let metadata = parse_metadata(headers)?;
    let name = metadata
        .iter()
        .find(|(k, _)| k == "filename" || k == "name")
        .map(|(_, v)| v.as_str())
        .unwrap_or("file");
    let declared = metadata
        .iter()
        .find(|(k, _)| k == "filetype" || k == "type")
        .map(|(_, v)| v.as_str());
    let with_body = content_type(headers).as_deref() == Some(OFFSET_OCTET_STREAM);
    let upload = state.uploads.create(owner, name, declared, length).await?;
    let upload = if with_body || length == 0 {
        let received = state
            .uploads
            .receive(owner, upload.id, 0, body_stream(request.into_body()))
            .await?;
        received.upload
    } else {
        upload
    };
    Ok(created(&upload))
}

async fn create_simple(
    state: &AppState,
    owner: Id,
    query: SimpleQuery,
    request: Request,
) -> ApiResult<Response> {
    let headers = request.headers();
    // A request with neither Content-Length nor Transfer-Encoding has no body (RFC 9112),
    // which is an empty file; a chunked body of unknown length cannot be checked
    // against the limit and quota up front.
    let length =
        match header_u64(headers, "content-length") {
            Some(length) => length?,
            None if headers.contains_key(header::TRANSFER_ENCODING) => return Err(bad(
                "Content-Length is required (or use the resumable protocol, with Upload-Length)"
                    .into(),
            )),
            None => 0,
        };
    let declared = content_type(headers);
    let name = query.name.as_deref().unwrap_or("file");
    let upload = state
        .uploads
        .create(owner, name, declared.as_deref(), length)
        .await?;
    let received = state
        .uploads
        .receive(owner, upload.id, 0, body_stream(request.into_body()))
        .await?;
    if received.cut.is_some() || received.upload.offset < received.upload.length {
        return Err(bad(format!(
            "the body ended after {} of {} bytes; resume with PATCH /v1/uploads/{}",
            received.upload.offset, received.upload.length, received.upload.id
        )));
    }
    Ok(created(&received.upload))
}

fn created(upload: &UploadRecord) -> Response {
    let mut response = (StatusCode::CREATED, Json(upload.view())).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/uploads/{}", upload.id)) {
        headers.insert(header::LOCATION, v);
    }
    insert_offset(headers, upload);
    response
}

fn insert_offset(headers: &mut HeaderMap, upload: &UploadRecord) {
    if let Ok(v) = HeaderValue::from_str(&upload.offset.to_string()) {
        headers.insert("upload-offset", v);
    }
    if let Ok(v) = HeaderValue::from_str(&upload.length.to_string()) {
        headers.insert("upload-length", v);
    }
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

/// `Upload-Metadata: key base64,key2 base64`.
fn parse_metadata(headers: &HeaderMap) -> ApiResult<Vec<(String, String)>> {
    let Some(raw) = headers.get("upload-metadata") else {
        return Ok(Vec::new());
    };
    let raw = raw
        .to_str()
        .map_err(|_| bad("Upload-Metadata must be ASCII".into()))?;
    let mut pairs = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = item.split_once(' ').unwrap_or((item, ""));
        let value = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| {
                bad(format!(
                    "Upload-Metadata value of {key} is not base64 UTF-8"
                ))
            })?;
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
}

/// `HEAD /v1/uploads/{id}`: how much has arrived.
pub async fn head(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(id): PathParams<Id>,
) -> Response {
    with_tus(
        async {
            let upload = state.uploads.own(me.user, id).await?;
            let mut response = StatusCode::OK.into_response();
            insert_offset(response.headers_mut(), &upload);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
        .await,
    )
}

/// `PATCH /v1/uploads/{id}`: the bytes from `Upload-Offset` on.
pub async fn patch(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(id): PathParams<Id>,
    request: Request,
) -> Response {
    with_tus(
        async {
            let headers = request.headers();
            if content_type(headers).as_deref() != Some(OFFSET_OCTET_STREAM) {
                return Err(ApiError(Error::new(
                    ErrorCode::UnsupportedType,
                    format!("PATCH bodies must be {OFFSET_OCTET_STREAM}"),
                )));
            }
            let offset = header_u64(headers, "upload-offset")
                .ok_or_else(|| bad("Upload-Offset is required".into()))??;
            let received = state
                .uploads
                .receive(me.user, id, offset, body_stream(request.into_body()))
                .await?;
            let mut response = StatusCode::NO_CONTENT.into_response();
            insert_offset(response.headers_mut(), &received.upload);
            Ok(response)
        }
        .await,
    )
}

/// `DELETE /v1/uploads/{id}`: the owner gives up on an upload no message carries.
pub async fn terminate(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(id): PathParams<Id>,
) -> Response {
    with_tus(
        async {
            state.uploads.delete(me.user, id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

/// `GET /v1/uploads/{id}`: the upload as JSON (its owner, or anyone who may download it).
pub async fn info(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(id): PathParams<Id>,
) -> ApiResult<Json<UploadView>> {
    if let Ok(own) = state.uploads.own(me.user, id).await {
        return Ok(Json(own.view()));
    }
    let (upload, _) = state.uploads.readable(me.user, id).await?;
    Ok(Json(upload.view()))
}

/// `GET /v1/uploads`: the caller's storage use and limits.
pub async fn usage(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> ApiResult<Json<UploadUsage>> {
    let config = state.uploads.config();
    Ok(Json(UploadUsage {
        used_bytes: state.uploads.usage(me.user).await?,
        quota_bytes: config.quota_bytes,
        max_upload_bytes: config.max_bytes,
    }))
}

#[derive(Debug, Deserialize)]
pub struct DownloadQuery {
    #[serde(default)]
    download: bool,
}

/// `GET /v1/uploads/{id}/content`: the file, with `Range` and `If-None-Match`.
pub async fn content(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(id): PathParams<Id>,
    QueryParams(query): QueryParams<DownloadQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (upload, blob) = state.uploads.readable(me.user, id).await?;
    let file = Served {
        key: blob.key.clone(),
        size: Some(blob.size),
        etag: format!("\"{}\"", blob.sha256),
        content_type: blob.content_type.clone(),
        name: upload.name.clone(),
        attachment: query.download,
    };
    serve(&state, &headers, file).await
}

/// `GET /v1/uploads/{id}/thumbnails/{size}`: `small`, `medium` or `poster`.
pub async fn thumbnail(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams((id, size)): PathParams<(Id, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let no_thumbnail = || ApiError(Error::new(ErrorCode::NotFound, "no such thumbnail"));
    let size = ThumbnailSize::parse(&size).ok_or_else(no_thumbnail)?;
    let (upload, blob) = state.uploads.readable(me.user, id).await?;
    let view = blob.thumbnail(size).ok_or_else(no_thumbnail)?;
    let key = crate::uploads::Uploads::thumbnail_key(&blob, size).ok_or_else(no_thumbnail)?;
    let file = Served {
        key,
        size: None,
        etag: format!("\"{}-{}\"", blob.sha256, size.as_str()),
        content_type: view.content_type.clone(),
        name: format!(
            "{}-{}.{}",
            upload.name,
            size.as_str(),
            extension(&view.content_type)
        ),
        attachment: false,
    };
    serve(&state, &headers, file).await
}

fn extension(content_type: &str) -> &'static str {
    match content_type {
        "image/png" => "png",
        _ => "jpg",
    }
}

struct Served {
    key: String,
    /// Known for uploads (ranges are served); thumbnails stream whole.
    size: Option<u64>,
    etag: String,
    content_type: String,
    name: String,
    attachment: bool,
}

async fn serve(state: &AppState, headers: &HeaderMap, file: Served) -> ApiResult<Response> {
    let etag = HeaderValue::from_str(&file.etag).map_err(|_| Error::internal())?;
    if let Some(candidates) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if candidates
            .split(',')
            .map(|c| c.trim().trim_start_matches("W/"))
            .any(|c| c == "*" || c == file.etag)
        {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            response.headers_mut().insert(header::ETAG, etag);
            return Ok(response);
        }
    }
    // A range only applies to the version the client has (If-Range), else all of it.
    let range_applies = headers
        .get(header::IF_RANGE)
        .map(|v| v.as_bytes() == file.etag.as_bytes())
        .unwrap_or(true);
    let range = match (file.size, headers.get(header::RANGE)) {
        (Some(size), Some(raw)) if range_applies => match parse_range(raw.to_str().ok(), size) {
            RangeSpec::Whole => None,
            RangeSpec::Part(start, end) => Some((start, end, size)),
            RangeSpec::Unsatisfiable => {
                let mut response = ApiError(Error::new(
                    ErrorCode::RangeNotSatisfiable,
                    format!("the file has {size} bytes"),
                ))
                .into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(response);
            }
        },
        _ => None,
    };
    let stream = state
        .uploads
        .blobs()
        .get(&file.key, range.map(|(start, end, _)| start..end + 1))
        .await?;
    let counter = state.metrics.download_bytes.clone();
    let stream = stream.inspect_ok(move |chunk| counter.inc_by(chunk.len() as u64));
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    match range {
        Some((start, end, size)) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
        }
        None => {
            if let Some(size) = file.size {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            }
        }
    }
    let h = response.headers_mut();
    let inline = inline_safe(&file.content_type) && !file.attachment;
    let shown_type = if inline_safe(&file.content_type) {
        file.content_type.as_str()
    } else {
        "application/octet-stream"
    };
    if let Ok(v) = HeaderValue::from_str(shown_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&content_disposition(inline, &file.name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::ETAG, etag);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Content behind an id never changes; `private` because it needs the caller's token.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    Ok(response)
}

/// `inline` or `attachment` with the name as an ASCII fallback and in RFC 8187 form.
fn content_disposition(inline: bool, name: &str) -> String {
    let kind = if inline { "inline" } else { "attachment" };
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    Whole,
    /// Inclusive byte positions.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range. Several ranges are answered with the whole file, which RFC 9110
/// allows; a malformed header is ignored the same way.
fn parse_range(raw: Option<&str>, size: u64) -> RangeSpec {
    let Some(spec) = raw.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return RangeSpec::Whole;
    };
    if spec.contains(',') {
        return RangeSpec::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeSpec::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.is_empty(), last.is_empty()) {
        (true, true) => return RangeSpec::Whole,
        (true, false) => match last.parse::<u64>() {
            Ok(0) => return RangeSpec::Unsatisfiable,
            Ok(n) => Some((size.saturating_sub(n), size.saturating_sub(1))),
            Err(_) => None,
        },
        (false, _) => {
            let start = first.parse::<u64>().ok();
            let end = if last.is_empty() {
                Some(size.saturating_sub(1))
            } else {
                last.parse::<u64>()
                    .ok()
                    .map(|e| e.min(size.saturating_sub(1)))
            };
            match (start, end) {
                (Some(s), Some(e)) if s <= e || s >= size => Some((s, e)),
                _ => None,
            }
        }
    };
    match parsed {
        None => RangeSpec::Whole,
        Some((start, _)) if size == 0 || start >= size => RangeSpec::Unsatisfiable,
        Some((start, end)) => RangeSpec::Part(start, end),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(Some("bytes=0-9"), 100), RangeSpec::Part(0, 9));
        assert_eq!(parse_range(Some("bytes=90-"), 100), RangeSpec::Part(90, 99));
        assert_eq!(parse_range(Some("bytes=-10"), 100), RangeSpec::Part(90, 99));
        assert_eq!(
            parse_range(Some("bytes=50-500"), 100),
            RangeSpec::Part(50, 99)
        );
        assert_eq!(
            parse_range(Some("bytes=100-"), 100),
            RangeSpec::Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=-0"), 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), RangeSpec::Whole);
        assert_eq!(parse_range(Some("items=0-1"), 100), RangeSpec::Whole);
        assert_eq!(parse_range(Some("bytes=9-3"), 100), RangeSpec::Whole);
        assert_eq!(parse_range(Some("bytes=-500"), 100), RangeSpec::Part(0, 99));
        assert_eq!(parse_range(Some("bytes=0-0"), 0), RangeSpec::Unsatisfiable);
    }

    #[test]
    fn dispositions_escape_names() {
        assert_eq!(
            content_disposition(true, "a b.png"),
            "inline; filename=\"a b.png\"; filename*=UTF-8''a%20b.png"
        );
        let d = content_disposition(false, "\"évil\".html");
        assert!(d.starts_with("attachment; filename=\"__vil_.html\""));
        assert!(d.contains("%C3%A9vil"));
    }
}
