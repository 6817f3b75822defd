//! Media handling for Parlor uploads: what a file really is, how big it is
//! and what it looks like in small.
//!
//! The server calls into this crate once an upload has completed, from a
//! blocking thread (decoding and encoding are CPU-bound and can take a good
//! fraction of a second, so they must never run on the async runtime).
//! Every input is treated as hostile: sizes are checked from headers before
//! anything is allocated, decoders run under allocation limits, box walkers
//! are bounded, and the one external program (ffmpeg) is fenced in by a
//! timeout, an output cap and demuxer/protocol whitelists.
//!
//! # Layout
//!
//! - [`sniff`](crate::sniff()) (`sniff.rs`): content type from magic bytes; the
//!   declared type of an upload is never trusted.
//! - [`process_image`] (`thumbnail.rs`): header-first size checks, decoding
//!   under [`Limits`], EXIF orientation, `Small`/`Medium` thumbnails.
//! - `blurhash.rs`: the placeholder hash shown while thumbnails load.
//! - [`mp4_dimensions`], [`video_poster`], [`find_ffmpeg`] (`video.rs`):
//!   video size from ISO BMFF headers and a poster frame through ffmpeg.

mod blurhash;
mod sniff;
mod thumbnail;
mod video;

pub use sniff::sniff;
pub use thumbnail::{decodable_image, process_image, ImageInfo, Limits, Thumbnail};
pub use video::{find_ffmpeg, mp4_dimensions, video_poster};

/// Why a file could not be processed. Messages are short and lowercase so the
/// server can show them to the uploader as they are.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("image is {width}×{height}, larger than this server decodes")]
    TooLarge { width: u32, height: u32 },
    /// Truncated or malformed data.
    #[error("{0}")]
    Corrupt(String),
    /// A type this crate does not decode.
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
}
