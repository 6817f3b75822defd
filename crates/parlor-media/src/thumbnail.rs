//! Image decoding under limits, thumbnails and the placeholder hash.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, ErrorKind, Read, Seek};
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::error::LimitErrorKind;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};
use parlor_proto::rest::ThumbnailSize;

use crate::{blurhash, MediaError};

const SMALL_BOX: u32 = 160;
const MEDIUM_BOX: u32 = 800;
const BLURHASH_BOX: u32 = 32;
const JPEG_QUALITY: u8 = 80;

/// What the server is willing to decode. Checked against the image header
/// before any pixel buffer exists.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Width × height.
    pub max_pixels: u64,
    /// Per side.
    pub max_dimension: u32,
    /// Everything the decoder may hold at once, output buffer included.
    pub max_alloc_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: 50_000_000,
            max_dimension: 16_384,
            max_alloc_bytes: 512 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Thumbnail {
    pub size: ThumbnailSize,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// As displayed, i.e. after EXIF orientation.
    pub width: u32,
    pub height: u32,
    pub blurhash: String,
    /// `Small` then `Medium`.
    pub thumbnails: Vec<Thumbnail>,
}

fn format_of(content_type: &str) -> Option<ImageFormat> {
    match content_type {
        "image/png" => Some(ImageFormat::Png),
        "image/jpeg" => Some(ImageFormat::Jpeg),
        "image/gif" => Some(ImageFormat::Gif),
        "image/webp" => Some(ImageFormat::WebP),
        _ => None,
    }
}

/// Whether [`process_image`] can decode this content type (png, jpeg, gif, webp).
pub fn decodable_image(content_type: &str) -> bool {
    format_of(content_type).is_some()
}

/// Decodes the image at `path` (already sniffed as `content_type`) and makes
/// its thumbnails and blurhash. Sizes over `limits` are refused from the
/// header alone with [`MediaError::TooLarge`]. Animated images contribute
/// their first frame. CPU-bound: call from a blocking thread.
pub fn process_image(
    path: &Path,
    content_type: &str,
    limits: &Limits,
) -> Result<ImageInfo, MediaError> {
    let format = format_of(content_type)
        .ok_or_else(|| MediaError::Unsupported(format!("{content_type} is not decoded")))?;
    let file = File::open(path)?;
    if file.metadata()?.len() > limits.max_alloc_bytes {
        return Err(MediaError::Unsupported(
            "image file is larger than this server decodes".into(),
        ));
    }
    let (image, orientation) = if format == ImageFormat::Jpeg {
        // The JPEG decoder reads the whole file into memory anyway, so
        // reading it first costs nothing extra and allows the end check.
        let mut data = Vec::new();
        BufReader::new(file).read_to_end(&mut data)?;
        if !jpeg_is_complete(&data) {
            return Err(MediaError::Corrupt("image is truncated".into()));
        }
        decode(Cursor::new(data), format, limits)?
    } else {
        decode(BufReader::new(file), format, limits)?
    };

    let (width, height) = (image.width(), image.height());
    let alpha = alpha_in_use(&image);

    let (mw, mh) = fit(width, height, MEDIUM_BOX);
    let medium = resized(&image, mw, mh);
    let (sw, sh) = fit(width, height, SMALL_BOX);
    // From the medium copy rather than the original: same result to the eye,
    // a fraction of the work on big pictures.
    let small = resized(&medium, sw, sh).into_owned();
    let medium = medium.into_owned();
    drop(image);

    let small = oriented(small, orientation);
    let medium = oriented(medium, orientation);
    let blurhash = placeholder(&small, alpha)?;
    let thumbnails = vec![
        encode(ThumbnailSize::Small, &small, alpha)?,
        encode(ThumbnailSize::Medium, &medium, alpha)?,
    ];
    let (width, height) = if swaps_axes(orientation) {
        (height, width)
    } else {
        (width, height)
    };
    Ok(ImageInfo {
        width,
        height,
        blurhash,
        thumbnails,
    })
}

fn decode<R: BufRead + Seek>(
    reader: R,
    format: ImageFormat,
    limits: &Limits,
) -> Result<(DynamicImage, Orientation), MediaError> {
    let mut reader = ImageReader::with_format(reader, format);
    // Only the allocation cap while the header is read: with the dimension
    // caps set too, the PNG decoder refuses a bomb without saying how big it
    // claims to be, and the size is what the uploader needs to hear.
    let mut header_limits = image::Limits::default();
    header_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(header_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| from_image_error(e, None))?;

    let (width, height) = decoder.dimensions();
    let too_large = MediaError::TooLarge { width, height };
    if width == 0 || height == 0 {
        return Err(MediaError::Corrupt("image has no pixels".into()));
    }
    if width > limits.max_dimension
        || height > limits.max_dimension
        || u64::from(width) * u64::from(height) > limits.max_pixels
    {
        return Err(too_large);
    }
    let output = decoder.total_bytes();
    let Some(remaining) = limits.max_alloc_bytes.checked_sub(output) else {
        return Err(too_large);
    };
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(limits.max_dimension);
    decode_limits.max_image_height = Some(limits.max_dimension);
    // The output buffer is ours, so the decoder's own working memory gets
    // what is left of the budget.
    decode_limits.max_alloc = Some(remaining);
    decoder
        .set_limits(decode_limits)
        .map_err(|e| from_image_error(e, Some((width, height))))?;

    // A broken EXIF block is no reason to reject an otherwise good picture.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder)
        .map_err(|e| from_image_error(e, Some((width, height))))?;
    Ok((image, orientation))
}

fn from_image_error(e: ImageError, size: Option<(u32, u32)>) -> MediaError {
    tracing::debug!(error = %e, "image decode failed");
    match e {
        ImageError::Limits(l) => match (size, l.kind()) {
            (Some((width, height)), _) => MediaError::TooLarge { width, height },
            (None, LimitErrorKind::DimensionError) => {
                MediaError::Unsupported("image dimensions are not supported".into())
            }
            (None, _) => MediaError::Unsupported(
                "image needs more memory to decode than this server allows".into(),
            ),
        },
        ImageError::IoError(io) => match io.kind() {
            ErrorKind::UnexpectedEof => MediaError::Corrupt("image is truncated".into()),
            ErrorKind::InvalidData | ErrorKind::InvalidInput => {
                MediaError::Corrupt("image data is corrupt".into())
            }
            _ => MediaError::Io(io),
        },
        ImageError::Unsupported(_) => {
            MediaError::Unsupported("this kind of image is not supported".into())
        }
        ImageError::Decoding(_) | ImageError::Parameter(_) => {
            MediaError::Corrupt("image data is corrupt".into())
        }
        ImageError::Encoding(_) => MediaError::Corrupt("could not encode thumbnail".into()),
    }
}

/// Whether the entropy-coded data after the first scan header reaches an
/// end-of-image marker. The JPEG decoder pads a cut-off file with grey and
/// reports success, which would publish half a picture as if it were whole.
/// Data after the marker (motion photos append a video there) is allowed.
fn jpeg_is_complete(data: &[u8]) -> bool {
    if !data.starts_with(&[0xff, 0xd8]) {
        return false;
    }
    let mut i = 2;
    // Marker segments up to the first start-of-scan: their lengths must be
    // followed, since metadata (an EXIF thumbnail) can hold its own end marker.
    loop {
        if data.get(i) != Some(&0xff) {
            return false;
        }
        while data.get(i) == Some(&0xff) {
            i += 1;
        }
        let Some(&marker) = data.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xd9 => return true,
            0x01 | 0xd0..=0xd7 => continue,
            _ => {}
        }
        let Some(len) = data
            .get(i..i + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return false;
        };
        i += len;
        if marker == 0xda {
            break;
        }
    }
    // Inside scan data 0xff is always followed by 0x00 or a restart/scan
    // marker, so the first 0xff 0xd9 is the real end.
    data.get(i..)
        .is_some_and(|rest| rest.windows(2).any(|w| w == [0xff, 0xd9]))
}

/// The largest size within `bound`×`bound` with the same aspect ratio; never
/// larger than the original and never zero.
fn fit(width: u32, height: u32, bound: u32) -> (u32, u32) {
    if width <= bound && height <= bound {
        return (width, height);
    }
    let scale = |side: u32, long: u32| {
        let scaled = (u64::from(side) * u64::from(bound) + u64::from(long) / 2) / u64::from(long);
        u32::try_from(scaled).unwrap_or(bound).clamp(1, bound)
    };
    if width >= height {
        (bound, scale(height, width))
    } else {
        (scale(width, height), bound)
    }
}

fn resized(image: &DynamicImage, width: u32, height: u32) -> Cow<'_, DynamicImage> {
    if (image.width(), image.height()) == (width, height) {
        Cow::Borrowed(image)
    } else {
        Cow::Owned(image.thumbnail_exact(width, height))
    }
}

fn swaps_axes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

fn oriented(mut image: DynamicImage, o: Orientation) -> DynamicImage {
    image.apply_orientation(o);
    image
}

/// An alpha channel that is fully opaque everywhere (common in PNG exports)
/// should not cost the thumbnail JPEG's compression.
fn alpha_in_use(image: &DynamicImage) -> bool {
    match image {
        DynamicImage::ImageRgba8(b) => b.pixels().any(|p| p.0[3] != u8::MAX),
        DynamicImage::ImageLumaA8(b) => b.pixels().any(|p| p.0[1] != u8::MAX),
        DynamicImage::ImageRgba16(b) => b.pixels().any(|p| p.0[3] != u16::MAX),
        DynamicImage::ImageLumaA16(b) => b.pixels().any(|p| p.0[1] != u16::MAX),
        DynamicImage::ImageRgba32F(b) => b.pixels().any(|p| p.0[3] < 1.0),
        other => other.color().has_alpha(),
    }
}

fn encode(size: ThumbnailSize, image: &DynamicImage, alpha: bool) -> Result<Thumbnail, MediaError> {
    let mut bytes = Vec::new();
    let result = if alpha {
        DynamicImage::ImageRgba8(image.to_rgba8()).write_with_encoder(PngEncoder::new(&mut bytes))
    } else {
        DynamicImage::ImageRgb8(image.to_rgb8())
            .write_with_encoder(JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY))
    };
    result.map_err(|e| from_image_error(e, None))?;
    Ok(Thumbnail {
        size,
        content_type: if alpha { "image/png" } else { "image/jpeg" },
        width: image.width(),
        height: image.height(),
        bytes,
    })
}

fn placeholder(image: &DynamicImage, alpha: bool) -> Result<String, MediaError> {
    let (w, h) = fit(image.width(), image.height(), BLURHASH_BOX);
    let tiny = resized(image, w, h);
    let rgb = if alpha {
        // Transparent pixels often hold black; blend over white so a logo on
        // a clear background does not blur into a dark smudge.
        let rgba = tiny.to_rgba8();
        RgbImage::from_fn(w, h, |x, y| {
            let [r, g, b, a] = rgba.get_pixel(x, y).0;
            let over_white = |c: u8| {
                let c = u32::from(c) * u32::from(a) + 255 * (255 - u32::from(a));
                ((c + 127) / 255) as u8
            };
            image::Rgb([over_white(r), over_white(g), over_white(b)])
        })
    } else {
        tiny.to_rgb8()
    };
    blurhash::encode(&rgb, blurhash::COMPONENTS_X, blurhash::COMPONENTS_Y)
        .ok_or_else(|| MediaError::Corrupt("image has no pixels".into()))
}

#[cfg(test)]
mod tests {
    use super::{fit, jpeg_is_complete};

    #[test]
    fn jpeg_end_check() {
        // SOI, APP1 holding a stray end marker, SOS, scan data, EOI.
        let mut jpeg = vec![0xff, 0xd8, 0xff, 0xe1, 0x00, 0x06, 0xff, 0xd9, 0x00, 0x00];
        jpeg.extend_from_slice(&[0xff, 0xda, 0x00, 0x04, 0x01, 0x02, 0x12, 0xff, 0x00, 0x34]);
        assert!(!jpeg_is_complete(&jpeg));
        jpeg.extend_from_slice(&[0xff, 0xd9]);
        assert!(jpeg_is_complete(&jpeg));
        jpeg.extend_from_slice(b"trailing video");
        assert!(jpeg_is_complete(&jpeg));
        assert!(!jpeg_is_complete(&jpeg[..9]));
        assert!(!jpeg_is_complete(b""));
        assert!(!jpeg_is_complete(b"\xff\xd8garbage"));
    }

    #[test]
    fn fit_keeps_aspect_and_never_upscales() {
        assert_eq!(fit(2000, 1000, 800), (800, 400));
        assert_eq!(fit(2000, 1000, 160), (160, 80));
        assert_eq!(fit(1000, 2000, 160), (80, 160));
        assert_eq!(fit(100, 50, 160), (100, 50));
        assert_eq!(fit(160, 160, 160), (160, 160));
        assert_eq!(fit(16_384, 1, 160), (160, 1));
        assert_eq!(fit(4000, 3000, 800), (800, 600));
    }
}
