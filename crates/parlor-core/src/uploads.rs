//! Uploads: what a file is between its first byte and the messages that carry it, where
//! its bytes live in object storage, and the rules that keep hostile files harmless.
//!
//! An upload is one user's file (name, owner, announced length). Its bytes arrive in
//! parts (one object per resumable request, under `staging/`); once complete they are
//! stored once per distinct content as a *blob* (`blobs/<random>`, with
//! thumbnails beside it), so identical files uploaded by many users cost one copy. A
//! blob's key is random so that a blob collected as garbage and the same content
//! uploaded again a moment later never share an object (see [`crate::ports::UploadStore`]).

use crate::error::{Error, Result};
use crate::model::UserId;
use parlor_proto::rest::{AttachmentView, ThumbnailSize, ThumbnailView, UploadState, UploadView};
use parlor_proto::{ErrorCode, Id};

/// At most this many attachments per message.
pub const MAX_ATTACHMENTS: usize = 10;
/// File names are cut to this many bytes (on a character boundary).
pub const MAX_NAME_BYTES: usize = 255;

/// An upload to create, already validated.
#[derive(Debug, Clone)]
pub struct NewUpload {
    pub owner: UserId,
    pub name: String,
    /// The content type the client declared, if any (lower-case, without parameters).
    pub declared_type: Option<String>,
    pub length: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub id: Id,
    pub owner: UserId,
    pub name: String,
    pub declared_type: Option<String>,
    pub length: u64,
    /// Bytes received and stored so far.
    pub offset: u64,
    /// Start offsets of the stored parts, ascending; part `i` holds
    /// `parts[i]..parts[i + 1]` (the last one up to `offset`).
    pub parts: Vec<u64>,
    pub created_at: i64,
    /// Set once the upload is complete and ready.
    pub blob: Option<BlobRecord>,
    /// Whether a message has ever carried it (never-attached uploads expire).
    pub attached: bool,
}

impl UploadRecord {
    pub fn state(&self) -> UploadState {
        if self.blob.is_some() {
            UploadState::Ready
        } else {
            UploadState::Receiving
        }
    }

    /// The object keys of the stored parts, in order, with the range each covers.
    pub fn part_keys(&self) -> Vec<(String, u64, u64)> {
        let mut out = Vec::with_capacity(self.parts.len());
        for (i, &start) in self.parts.iter().enumerate() {
            let end = self.parts.get(i + 1).copied().unwrap_or(self.offset);
            out.push((part_key(self.id, start), start, end));
        }
        out
    }

    pub fn attachment(&self) -> Option<AttachmentView> {
        let blob = self.blob.as_ref()?;
        Some(AttachmentView {
            id: self.id,
            name: self.name.clone(),
            content_type: blob.content_type.clone(),
            size: blob.size,
            sha256: blob.sha256.clone(),
            width: blob.width,
            height: blob.height,
            blurhash: blob.blurhash.clone(),
            thumbnails: blob.thumbnails.clone(),
        })
    }

    pub fn view(&self) -> UploadView {
        UploadView {
            id: self.id,
            owner: self.owner,
            name: self.name.clone(),
            state: self.state(),
            length: self.length,
            offset: self.offset,
            created_at: self.created_at,
            attachment: self.attachment(),
        }
    }
}

/// Stored content, shared by every upload of the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    pub id: Id,
    pub key: String,
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub blurhash: Option<String>,
    pub thumbnails: Vec<ThumbnailView>,
}

impl BlobRecord {
    /// Every object the blob owns: its content and its thumbnails.
    pub fn object_keys(&self) -> Vec<String> {
        let mut keys = vec![self.key.clone()];
        keys.extend(
            self.thumbnails
                .iter()
                .map(|t| thumbnail_key(&self.key, t.size)),
        );
        keys
    }

    pub fn thumbnail(&self, size: ThumbnailSize) -> Option<&ThumbnailView> {
        self.thumbnails.iter().find(|t| t.size == size)
    }
}

/// A blob as the server wrote it, before the store gives it an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBlob {
    pub key: String,
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub blurhash: Option<String>,
    pub thumbnails: Vec<ThumbnailView>,
}

/// What a store removed: the caller deletes these objects from object storage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Garbage {
    pub uploads: u64,
    pub blobs: u64,
    pub objects: Vec<String>,
}

impl Garbage {
    pub fn absorb(&mut self, other: Garbage) {
        self.uploads += other.uploads;
        self.blobs += other.blobs;
        self.objects.extend(other.objects);
    }
}

pub fn part_key(upload: Id, start: u64) -> String {
    format!("staging/{}/{:020}", upload.0, start)
}

/// The object of a blob. A fresh random name (not the hash) for every blob written: the
/// hash is only known once the bytes have gone through, and a re-uploaded blob never
/// shares an object with a collected one that is being deleted.
pub fn blob_key(nonce: u64) -> String {
    format!("blobs/{nonce:016x}")
}

pub fn thumbnail_key(blob_key: &str, size: ThumbnailSize) -> String {
    format!("{blob_key}.{}", size.as_str())
}

/// A file name made safe to store and to hand back in `Content-Disposition`: no path,
/// no control characters, at most [`MAX_NAME_BYTES`]; `file` when nothing is left.
pub fn file_name(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or(raw);
    let mut name = String::with_capacity(base.len().min(MAX_NAME_BYTES));
    for c in base.chars().filter(|c| !c.is_control()) {
        if name.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        name.push(c);
    }
    let trimmed = name.trim().trim_start_matches('.');
    if trimmed.is_empty() {
        "file".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// A declared content type, lower-cased without parameters; `None` when absent or
/// generic (`application/octet-stream` says nothing).
pub fn declared_type(raw: Option<&str>) -> Result<Option<String>> {
    let Some(raw) = raw else { return Ok(None) };
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence.is_empty() || essence == "application/octet-stream" {
        return Ok(None);
    }
    let valid = essence.len() <= 127
        && essence.split_once('/').is_some_and(|(a, b)| {
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            token(a) && token(b)
        });
    if !valid {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "the declared file type is not a valid media type",
        ));
    }
    Ok(Some(essence))
}

/// Decides the stored type from what the bytes are (`sniffed`) and what the client said.
/// The bytes win; a declared image, video or audio type that the bytes contradict is
/// refused, since the client would show it as something it is not.
pub fn effective_type(declared: Option<&str>, sniffed: Option<&str>) -> Result<String> {
    match (declared, sniffed) {
        (_, Some(sniffed)) => {
            if let Some(declared) = declared {
                let family = |t: &str| t.split('/').next().unwrap_or("").to_owned();
                let media = ["image", "video", "audio"];
                if media.contains(&family(declared).as_str()) && family(declared) != family(sniffed)
                {
                    return Err(mismatch(declared, sniffed));
                }
            }
            Ok(sniffed.to_owned())
        }
        (Some(declared), None) => {
            if ["image/", "video/", "audio/"]
                .iter()
                .any(|p| declared.starts_with(p))
            {
                return Err(mismatch(declared, "unrecognised data"));
            }
            // Text and documents carry no reliable signature; they are kept under the
            // declared type but are never served inline (see `inline_safe`).
            Ok(declared.to_owned())
        }
        (None, None) => Ok("application/octet-stream".to_owned()),
    }
}

fn mismatch(declared: &str, found: &str) -> Error {
    Error::new(
        ErrorCode::TypeMismatch,
        format!("declared as {declared} but the content is {found}"),
    )
}

/// Whether `allowed` (patterns like `image/*`, `application/pdf`, `*/*`) accepts a type.
pub fn type_allowed(allowed: &[String], content_type: &str) -> bool {
    allowed.iter().any(|pattern| {
        pattern == "*/*"
            || pattern == content_type
            || pattern
                .strip_suffix("/*")
                .is_some_and(|family| content_type.split('/').next() == Some(family))
    })
}

/// Types a browser may render in the web client's origin without running script:
/// raster images, video and audio. Everything else (HTML, SVG, PDF, text) is served
/// as a download.
pub fn inline_safe(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    ) || content_type.starts_with("video/")
        || content_type.starts_with("audio/")
}

/// The attachment list of a send: at most [`MAX_ATTACHMENTS`], no repeats.
pub fn attachment_list(ids: &[Id]) -> Result<()> {
    if ids.len() > MAX_ATTACHMENTS {
        return Err(Error::new(
            ErrorCode::BadRequest,
            format!("at most {MAX_ATTACHMENTS} attachments per message"),
        ));
    }
    for (i, id) in ids.iter().enumerate() {
        if ids[..i].contains(id) {
            return Err(Error::new(
                ErrorCode::BadRequest,
                format!("upload {id} is attached twice"),
            ));
        }
    }
    Ok(())
}

/// Checks one upload named in a send, under the store's lock: it must exist, belong to
/// the sender and be complete. Unknown and foreign uploads answer alike, so that upload
/// ids cannot be probed.
pub fn may_attach(sender: UserId, id: Id, upload: Option<&UploadRecord>) -> Result<AttachmentView> {
    let Some(upload) = upload.filter(|u| u.owner == sender) else {
        return Err(Error::new(
            ErrorCode::NotFound,
            format!("upload {id} not found"),
        ));
    };
    upload.attachment().ok_or_else(|| {
        Error::new(
            ErrorCode::Conflict,
            format!("upload {id} is not complete yet"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_lose_paths_and_controls() {
        assert_eq!(file_name("../../etc/passwd"), "passwd");
        assert_eq!(file_name("C:\\x\\report.pdf"), "report.pdf");
        assert_eq!(file_name("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(file_name(""), "file");
        assert_eq!(file_name(".."), "file");
        assert!(file_name(&"é".repeat(300)).len() <= MAX_NAME_BYTES);
    }

    #[test]
    fn bytes_decide_the_type() {
        assert_eq!(
            effective_type(Some("image/png"), Some("image/png")).ok(),
            Some("image/png".into())
        );
        assert_eq!(
            effective_type(Some("image/jpeg"), Some("image/png")).ok(),
            Some("image/png".into())
        );
        let err = effective_type(Some("image/png"), Some("application/pdf")).err();
        assert_eq!(err.map(|e| e.code), Some(ErrorCode::TypeMismatch));
        let err = effective_type(Some("video/mp4"), None).err();
        assert_eq!(err.map(|e| e.code), Some(ErrorCode::TypeMismatch));
        assert_eq!(
            effective_type(Some("text/plain"), None).ok(),
            Some("text/plain".into())
        );
        assert_eq!(
            effective_type(None, None).ok(),
            Some("application/octet-stream".into())
        );
    }

    #[test]
    fn declared_types_are_normalised() {
        assert_eq!(
            declared_type(Some("Image/PNG; charset=x")).ok().flatten(),
            Some("image/png".into())
        );
        assert_eq!(
            declared_type(Some("application/octet-stream")).ok(),
            Some(None)
        );
        assert!(declared_type(Some("not a type")).is_err());
    }

    #[test]
    fn allow_lists_match_families() {
        let allowed = vec!["image/*".to_owned(), "application/pdf".to_owned()];
        assert!(type_allowed(&allowed, "image/png"));
        assert!(type_allowed(&allowed, "application/pdf"));
        assert!(!type_allowed(&allowed, "video/mp4"));
        assert!(type_allowed(&["*/*".to_owned()], "x/y"));
    }

    #[test]
    fn only_raster_and_av_are_inline() {
        assert!(inline_safe("image/png"));
        assert!(inline_safe("video/mp4"));
        assert!(!inline_safe("image/svg+xml"));
        assert!(!inline_safe("text/html"));
        assert!(!inline_safe("application/pdf"));
    }

    #[test]
    fn attachment_lists_are_bounded_and_distinct() {
        assert!(attachment_list(&[Id(1), Id(2)]).is_ok());
        assert!(attachment_list(&[Id(1), Id(1)]).is_err());
        let many: Vec<Id> = (0..11).map(Id).collect();
        assert!(attachment_list(&many).is_err());
    }
}
