//! Helpers shared by the integration tests: every input is generated here at
//! run time, so no binary fixtures live in the repository.

#![allow(dead_code)]

use std::io::Cursor;
use std::path::PathBuf;

use image::codecs::gif::GifEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, Frame, ImageEncoder, ImageFormat, RgbImage, RgbaImage};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A picture with structure in both directions, so thumbnails and hashes
/// have something to average.
pub fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w.max(1)) as u8,
            (y * 255 / h.max(1)) as u8,
            ((x + y) % 256) as u8,
        ])
    })
}

pub fn encode(img: &DynamicImage, format: ImageFormat) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Cursor::new(Vec::new());
    match format {
        // Lossless is the only WebP mode the image crate encodes.
        ImageFormat::WebP => {
            let rgba = img.to_rgba8();
            WebPEncoder::new_lossless(&mut out).write_image(
                rgba.as_raw(),
                rgba.width(),
                rgba.height(),
                image::ExtendedColorType::Rgba8,
            )?;
        }
        ImageFormat::Jpeg => {
            DynamicImage::ImageRgb8(img.to_rgb8())
                .write_with_encoder(JpegEncoder::new_with_quality(&mut out, 90))?;
        }
        ImageFormat::Png => img.write_with_encoder(PngEncoder::new(&mut out))?,
        other => img.write_to(&mut out, other)?,
    }
    Ok(out.into_inner())
}

pub fn jpeg_with_exif(img: &RgbImage, exif: Vec<u8>) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    let mut enc = JpegEncoder::new_with_quality(&mut out, 90);
    enc.set_exif_metadata(exif)
        .map_err(image::ImageError::Unsupported)?;
    enc.write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(out)
}

/// A little-endian TIFF block holding only the Orientation tag.
pub fn exif_orientation(value: u16) -> Vec<u8> {
    let mut v = b"II*\x00".to_vec();
    v.extend_from_slice(&8u32.to_le_bytes()); // first IFD
    v.extend_from_slice(&1u16.to_le_bytes()); // one entry
    v.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    v.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    v.extend_from_slice(&1u32.to_le_bytes()); // count
    v.extend_from_slice(&value.to_le_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    v
}

pub fn animated_gif(w: u32, h: u32, colours: &[[u8; 4]]) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut out, 30);
        for c in colours {
            enc.encode_frame(Frame::new(RgbaImage::from_pixel(w, h, image::Rgba(*c))))?;
        }
    }
    Ok(out)
}

pub fn crc32(data: &[u8]) -> u32 {
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

/// Rewrites the IHDR of a PNG to claim another size, with a valid CRC so the
/// decoder has no cheap reason to reject it.
pub fn patch_png_size(png: &mut [u8], width: u32, height: u32) {
    // Signature (8) + chunk length (4) + "IHDR" (4), then width and height.
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
}

pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

pub fn write_temp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes)?;
    Ok(path)
}
