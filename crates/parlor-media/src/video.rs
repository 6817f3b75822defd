//! Video dimensions from ISO BMFF headers, and poster frames through ffmpeg.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use image::{ImageFormat, ImageReader};
use parlor_proto::rest::ThumbnailSize;

use crate::{sniff, MediaError, Thumbnail};

/// Boxes looked at in one file, all levels together. Each costs one read of
/// at most 16 bytes, so this bounds both time and bytes read on a file made
/// of millions of empty boxes.
const MAX_BOXES: u32 = 10_000;
/// The poster is at most 1280×1280 at `-q:v 4`; anything bigger means ffmpeg
/// is not doing what we asked.
const MAX_POSTER_BYTES: u64 = 8 * 1024 * 1024;
const MAX_STDERR_BYTES: u64 = 4 * 1024;

/// The only demuxers ffmpeg may use. Without this an "mp4" that is really an
/// HLS or concat playlist would make ffmpeg open other files on the server.
const DEMUXERS: &str = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm";
const VIDEO_TYPES: &[&str] = &[
    "video/mp4",
    "video/quicktime",
    "video/webm",
    "video/x-matroska",
];

#[derive(Debug, Clone, Copy)]
struct BoxHeader {
    kind: [u8; 4],
    body: u64,
    end: u64,
}

struct BoxReader {
    file: File,
    visited: u32,
}

impl BoxReader {
    /// The boxes laid end to end in `start..end`. Stops quietly at the first
    /// header that does not add up (a truncated file still yields the boxes
    /// before the damage).
    fn children(&mut self, start: u64, end: u64) -> Vec<BoxHeader> {
        let mut out = Vec::new();
        let mut pos = start;
        while pos.saturating_add(8) <= end && self.visited < MAX_BOXES {
            self.visited += 1;
            match self.header(pos, end) {
                Some(h) => {
                    out.push(h);
                    pos = h.end;
                }
                None => break,
            }
        }
        out
    }

    fn header(&mut self, pos: u64, parent_end: u64) -> Option<BoxHeader> {
        let mut head = [0u8; 8];
        self.file.seek(SeekFrom::Start(pos)).ok()?;
        self.file.read_exact(&mut head).ok()?;
        let size32 = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let kind = [head[4], head[5], head[6], head[7]];
        let (size, header_len) = match size32 {
            // Extends to the end of the enclosing box (or file).
            0 => (parent_end - pos, 8),
            1 => {
                let mut large = [0u8; 8];
                self.file.read_exact(&mut large).ok()?;
                (u64::from_be_bytes(large), 16)
            }
            n => (u64::from(n), 8),
        };
        let end = pos.checked_add(size)?;
        if size < header_len || end > parent_end {
            return None;
        }
        Some(BoxHeader {
            kind,
            body: pos + header_len,
            end,
        })
    }

    fn read_body(&mut self, h: &BoxHeader, max: u64) -> Option<Vec<u8>> {
        let len = (h.end - h.body).min(max);
        self.file.seek(SeekFrom::Start(h.body)).ok()?;
        let mut body = Vec::new();
        (&mut self.file).take(len).read_to_end(&mut body).ok()?;
        Some(body)
    }
}

/// Width and height of an MP4/QuickTime video from its first video track's
/// `tkhd` box, as displayed (a 90° or 270° track matrix swaps them, as
/// phones record portrait video). Reads only box headers and that one box;
/// `None` on anything unexpected.
pub fn mp4_dimensions(path: &Path) -> Option<(u32, u32)> {
    let file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut r = BoxReader { file, visited: 0 };
    let top = r.children(0, len);
    // Garbage rarely starts with one of these, so this turns random input
    // away before any seeking around.
    let first = top.first()?;
    if !matches!(
        &first.kind,
        b"ftyp" | b"moov" | b"mdat" | b"wide" | b"free" | b"skip"
    ) {
        return None;
    }
    let moov = top.iter().find(|h| &h.kind == b"moov")?;
    // moov → trak → tkhd is a fixed depth, so no general recursion is needed.
    for trak in r
        .children(moov.body, moov.end)
        .into_iter()
        .filter(|h| &h.kind == b"trak")
    {
        let children = r.children(trak.body, trak.end);
        let Some(tkhd) = children.iter().find(|h| &h.kind == b"tkhd") else {
            continue;
        };
        let Some(body) = r.read_body(tkhd, 96) else {
            continue;
        };
        if let Some(size) = tkhd_size(&body) {
            return Some(size);
        }
    }
    None
}

/// Display size from a `tkhd` body, `None` for sizeless (audio) tracks.
fn tkhd_size(body: &[u8]) -> Option<(u32, u32)> {
    // Version 1 widens the three time fields to 64 bits.
    let matrix_at = match body.first()? {
        0 => 40,
        1 => 52,
        _ => return None,
    };
    let word = |at: usize| -> Option<u32> {
        let b = body.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let [a, b, c, d] = [
        word(matrix_at)?,
        word(matrix_at + 4)?,
        word(matrix_at + 12)?,
        word(matrix_at + 16)?,
    ];
    // 16.16 fixed point, rounded to whole pixels.
    let width = word(matrix_at + 36)?.saturating_add(0x8000) >> 16;
    let height = word(matrix_at + 40)?.saturating_add(0x8000) >> 16;
    if width == 0 || height == 0 {
        return None;
    }
    let quarter_turn = a == 0 && d == 0 && b != 0 && c != 0;
    Some(if quarter_turn {
        (height, width)
    } else {
        (width, height)
    })
}

/// Kills ffmpeg on every way out of [`video_poster`] that has not already
/// reaped it, so an early error cannot leave a decoder running.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Reads up to `cap` bytes; reports whether there was more. With `drain`
/// the rest is read and thrown away so the writer never blocks on a full
/// pipe; without it the pipe is closed, which stops the writer.
fn read_capped(source: Option<impl Read>, cap: u64, drain: bool) -> (Vec<u8>, bool) {
    let Some(mut source) = source else {
        return (Vec::new(), false);
    };
    let mut buf = Vec::new();
    let _ = (&mut source).take(cap + 1).read_to_end(&mut buf);
    let over = buf.len() as u64 > cap;
    buf.truncate(cap as usize);
    if drain {
        let _ = std::io::copy(&mut source, &mut std::io::sink());
    }
    (buf, over)
}

/// A poster frame of the video at `path` through `ffmpeg`, at most
/// 1280×1280, as JPEG. `Ok(None)` when the file is not a video type we pass
/// to ffmpeg or ffmpeg produced nothing; [`MediaError::Timeout`] when it ran
/// longer than `timeout` (it is killed); [`MediaError::Io`] when it cannot be
/// started at all.
pub fn video_poster(
    ffmpeg: &Path,
    path: &Path,
    timeout: Duration,
) -> Result<Option<Thumbnail>, MediaError> {
    let mut head = Vec::with_capacity(512);
    File::open(path)?.take(512).read_to_end(&mut head)?;
    if !sniff(&head).is_some_and(|t| VIDEO_TYPES.contains(&t)) {
        return Ok(None);
    }

    // "file:" keeps a path from being read as another protocol or an option.
    let mut input = OsString::from("file:");
    input.push(path);
    let child = Command::new(ffmpeg)
        .args(["-nostdin", "-v", "error", "-protocol_whitelist", "file"])
        .args(["-format_whitelist", DEMUXERS, "-i"])
        .arg(input)
        .args(["-map", "0:v:0", "-frames:v", "1", "-vf"])
        .arg("scale='min(1280,iw)':'min(1280,ih)':force_original_aspect_ratio=decrease")
        .args(["-f", "image2pipe", "-c:v", "mjpeg", "-q:v", "4", "pipe:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut child = Reaper(child);
    let stdout = child.0.stdout.take();
    let stderr = child.0.stderr.take();
    let out_reader = thread::spawn(move || read_capped(stdout, MAX_POSTER_BYTES, false));
    let err_reader = thread::spawn(move || read_capped(stderr, MAX_STDERR_BYTES, true));

    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    let status = loop {
        if let Some(status) = child.0.try_wait()? {
            break status;
        }
        let now = Instant::now();
        if now >= deadline {
            drop(child);
            let _ = out_reader.join();
            let _ = err_reader.join();
            tracing::warn!(path = %path.display(), "ffmpeg timed out making a poster");
            return Err(MediaError::Timeout);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    let joined = |r: thread::Result<(Vec<u8>, bool)>| {
        r.map_err(|_| MediaError::Io(std::io::Error::other("pipe reader panicked")))
    };
    let (jpeg, too_big) = joined(out_reader.join())?;
    let (stderr, _) = joined(err_reader.join())?;

    if too_big {
        tracing::warn!(path = %path.display(), "ffmpeg poster exceeded the size cap");
        return Ok(None);
    }
    if !status.success() || jpeg.is_empty() {
        tracing::debug!(
            path = %path.display(),
            %status,
            stderr = %String::from_utf8_lossy(&stderr).trim(),
            "ffmpeg made no poster"
        );
        return Ok(None);
    }
    let (width, height) = ImageReader::with_format(Cursor::new(&jpeg), ImageFormat::Jpeg)
        .into_dimensions()
        .map_err(|_| MediaError::Corrupt("ffmpeg produced an unreadable poster".into()))?;
    Ok(Some(Thumbnail {
        size: ThumbnailSize::Poster,
        content_type: "image/jpeg",
        width,
        height,
        bytes: jpeg,
    }))
}

/// Finds ffmpeg on `PATH` (or at /usr/bin/ffmpeg), `None` if absent.
pub fn find_ffmpeg() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("ffmpeg"));
    on_path
        .chain(std::iter::once(PathBuf::from("/usr/bin/ffmpeg")))
        .find(|p| is_executable(p))
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

#[cfg(test)]
mod tests {
    use super::tkhd_size;

    fn tkhd(version: u8, matrix: [u32; 9], width: u32, height: u32) -> Vec<u8> {
        let mut v = vec![version, 0, 0, 3];
        v.extend(std::iter::repeat_n(0, if version == 1 { 48 } else { 36 }));
        for m in matrix {
            v.extend_from_slice(&m.to_be_bytes());
        }
        v.extend_from_slice(&width.to_be_bytes());
        v.extend_from_slice(&height.to_be_bytes());
        v
    }

    const IDENTITY: [u32; 9] = [0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x4000_0000];
    const ROTATE_90: [u32; 9] = [0, 0x10000, 0, 0xffff_0000, 0, 0, 0, 0, 0x4000_0000];

    #[test]
    fn tkhd_versions_and_rotation() {
        assert_eq!(
            tkhd_size(&tkhd(0, IDENTITY, 640 << 16, 360 << 16)),
            Some((640, 360))
        );
        assert_eq!(
            tkhd_size(&tkhd(1, IDENTITY, 1920 << 16, 1080 << 16)),
            Some((1920, 1080))
        );
        assert_eq!(
            tkhd_size(&tkhd(0, ROTATE_90, 1920 << 16, 1080 << 16)),
            Some((1080, 1920))
        );
        assert_eq!(tkhd_size(&tkhd(0, IDENTITY, 0, 0)), None);
        assert_eq!(tkhd_size(&tkhd(2, IDENTITY, 640 << 16, 360 << 16)), None);
        let short = tkhd(0, IDENTITY, 640 << 16, 360 << 16);
        assert_eq!(tkhd_size(&short[..80]), None);
        assert_eq!(tkhd_size(&[]), None);
    }
}
