mod common;

use std::time::{Duration, Instant};

use common::{
    animated_gif, encode, exif_orientation, gradient, jpeg_with_exif, patch_png_size, write_temp,
    TestResult, XorShift,
};
use image::{DynamicImage, ImageFormat, RgbImage, RgbaImage};
use parlor_media::{decodable_image, process_image, sniff, ImageInfo, Limits, MediaError};
use parlor_proto::rest::ThumbnailSize;

fn process_bytes(bytes: &[u8], content_type: &str) -> Result<ImageInfo, MediaError> {
    process_with(bytes, content_type, &Limits::default())
}

fn process_with(
    bytes: &[u8],
    content_type: &str,
    limits: &Limits,
) -> Result<ImageInfo, MediaError> {
    let dir = tempfile::tempdir()?;
    let path = write_temp(&dir, "upload", bytes)?;
    process_image(&path, content_type, limits)
}

/// Results print without thumbnail bytes, which would flood the output.
fn outcome(result: &Result<ImageInfo, MediaError>) -> String {
    match result {
        Ok(info) => format!("Ok({}×{})", info.width, info.height),
        Err(e) => format!("Err({e:?})"),
    }
}

/// Checks the thumbnails are what they claim: their bytes sniff and decode
/// as the stated type at the stated size.
fn check_thumbnails(
    info: &ImageInfo,
    small: (u32, u32),
    medium: (u32, u32),
    ty: &str,
) -> TestResult {
    assert_eq!(info.thumbnails.len(), 2);
    let want = [
        (ThumbnailSize::Small, small),
        (ThumbnailSize::Medium, medium),
    ];
    for (thumb, (size, (w, h))) in info.thumbnails.iter().zip(want) {
        assert_eq!(thumb.size, size);
        assert_eq!((thumb.width, thumb.height), (w, h), "{size:?}");
        assert_eq!(thumb.content_type, ty);
        assert_eq!(sniff(&thumb.bytes), Some(ty));
        let decoded = image::load_from_memory(&thumb.bytes)?;
        assert_eq!((decoded.width(), decoded.height()), (w, h));
    }
    assert_eq!(info.blurhash.len(), 28);
    Ok(())
}

#[test]
fn png_round_trip() -> TestResult {
    let bytes = encode(&gradient(2000, 1000).into(), ImageFormat::Png)?;
    assert_eq!(sniff(&bytes), Some("image/png"));
    let info = process_bytes(&bytes, "image/png")?;
    assert_eq!((info.width, info.height), (2000, 1000));
    check_thumbnails(&info, (160, 80), (800, 400), "image/jpeg")
}

#[test]
fn jpeg_round_trip() -> TestResult {
    let bytes = encode(&gradient(2000, 1000).into(), ImageFormat::Jpeg)?;
    assert_eq!(sniff(&bytes), Some("image/jpeg"));
    let info = process_bytes(&bytes, "image/jpeg")?;
    assert_eq!((info.width, info.height), (2000, 1000));
    check_thumbnails(&info, (160, 80), (800, 400), "image/jpeg")
}

#[test]
fn portrait_jpeg_round_trip() -> TestResult {
    let bytes = encode(&gradient(600, 1200).into(), ImageFormat::Jpeg)?;
    let info = process_bytes(&bytes, "image/jpeg")?;
    assert_eq!((info.width, info.height), (600, 1200));
    check_thumbnails(&info, (80, 160), (400, 800), "image/jpeg")
}

#[test]
fn gif_round_trip() -> TestResult {
    let bytes = encode(&gradient(400, 200).into(), ImageFormat::Gif)?;
    assert_eq!(sniff(&bytes), Some("image/gif"));
    let info = process_bytes(&bytes, "image/gif")?;
    assert_eq!((info.width, info.height), (400, 200));
    check_thumbnails(&info, (160, 80), (400, 200), "image/jpeg")
}

#[test]
fn webp_round_trip() -> TestResult {
    let bytes = encode(&gradient(1000, 500).into(), ImageFormat::WebP)?;
    assert_eq!(sniff(&bytes), Some("image/webp"));
    let info = process_bytes(&bytes, "image/webp")?;
    assert_eq!((info.width, info.height), (1000, 500));
    check_thumbnails(&info, (160, 80), (800, 400), "image/jpeg")
}

#[test]
fn small_images_are_not_upscaled() -> TestResult {
    for format in [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::Gif,
        ImageFormat::WebP,
    ] {
        let bytes = encode(&gradient(100, 50).into(), format)?;
        let ty = sniff(&bytes).ok_or("unsniffable")?;
        let info = process_bytes(&bytes, ty)?;
        assert_eq!((info.width, info.height), (100, 50));
        check_thumbnails(&info, (100, 50), (100, 50), "image/jpeg")?;
    }
    Ok(())
}

#[test]
fn transparency_gives_png_thumbnails() -> TestResult {
    let img = RgbaImage::from_fn(300, 300, |x, _| image::Rgba([255, 0, 0, (x % 256) as u8]));
    for format in [ImageFormat::Png, ImageFormat::WebP] {
        let bytes = encode(&DynamicImage::ImageRgba8(img.clone()), format)?;
        let info = process_bytes(&bytes, sniff(&bytes).ok_or("unsniffable")?)?;
        check_thumbnails(&info, (160, 160), (300, 300), "image/png")?;
        let medium = image::load_from_memory(&info.thumbnails[1].bytes)?.to_rgba8();
        assert_eq!(medium.get_pixel(0, 10).0[3], 0, "alpha kept");
    }
    Ok(())
}

#[test]
fn opaque_alpha_channel_gives_jpeg_thumbnails() -> TestResult {
    let img = RgbaImage::from_pixel(50, 50, image::Rgba([10, 200, 30, 255]));
    let bytes = encode(&DynamicImage::ImageRgba8(img), ImageFormat::Png)?;
    let info = process_bytes(&bytes, "image/png")?;
    check_thumbnails(&info, (50, 50), (50, 50), "image/jpeg")
}

#[test]
fn animated_gif_uses_first_frame() -> TestResult {
    let bytes = animated_gif(200, 100, &[[255, 0, 0, 255], [0, 0, 255, 255]])?;
    let info = process_bytes(&bytes, "image/gif")?;
    assert_eq!((info.width, info.height), (200, 100));
    check_thumbnails(&info, (160, 80), (200, 100), "image/jpeg")?;
    let small = image::load_from_memory(&info.thumbnails[0].bytes)?.to_rgb8();
    let [r, g, b] = small.get_pixel(80, 40).0;
    assert!(
        r > 200 && g < 60 && b < 60,
        "first frame is red, got {r},{g},{b}"
    );
    Ok(())
}

#[test]
fn exif_orientation_is_applied() -> TestResult {
    // Stored 400×200 with the left half black; orientation 6 means "rotate
    // 90° clockwise to display", so it shows 200×400 with the black half on top.
    let img = RgbImage::from_fn(400, 200, |x, _| {
        if x < 200 {
            image::Rgb([0, 0, 0])
        } else {
            image::Rgb([255, 255, 255])
        }
    });
    let bytes = jpeg_with_exif(&img, exif_orientation(6))?;
    let info = process_bytes(&bytes, "image/jpeg")?;
    assert_eq!((info.width, info.height), (200, 400));
    check_thumbnails(&info, (80, 160), (200, 400), "image/jpeg")?;
    let medium = image::load_from_memory(&info.thumbnails[1].bytes)?.to_luma8();
    assert!(medium.get_pixel(100, 20).0[0] < 40);
    assert!(medium.get_pixel(100, 380).0[0] > 215);

    // Orientation 3 (upside down) keeps the size.
    let info = process_bytes(&jpeg_with_exif(&img, exif_orientation(3))?, "image/jpeg")?;
    assert_eq!((info.width, info.height), (400, 200));
    Ok(())
}

#[test]
fn image_bomb_is_refused_from_the_header() -> TestResult {
    let mut bytes = encode(&gradient(8, 8).into(), ImageFormat::Png)?;
    patch_png_size(&mut bytes, 100_000, 100_000);
    let start = Instant::now();
    let result = process_bytes(&bytes, "image/png");
    assert!(
        matches!(
            result,
            Err(MediaError::TooLarge {
                width: 100_000,
                height: 100_000
            })
        ),
        "{:?}",
        outcome(&result)
    );
    assert!(start.elapsed() < Duration::from_secs(1));
    if let Err(e) = result {
        assert_eq!(
            e.to_string(),
            "image is 100000×100000, larger than this server decodes"
        );
    }
    Ok(())
}

#[test]
fn too_many_pixels_within_dimension_limit() -> TestResult {
    let mut bytes = encode(&gradient(8, 8).into(), ImageFormat::Png)?;
    patch_png_size(&mut bytes, 10_000, 10_000);
    let result = process_bytes(&bytes, "image/png");
    assert!(
        matches!(
            result,
            Err(MediaError::TooLarge {
                width: 10_000,
                height: 10_000
            })
        ),
        "{}",
        outcome(&result)
    );
    Ok(())
}

#[test]
fn custom_limits_are_honoured() -> TestResult {
    let bytes = encode(&gradient(100, 50).into(), ImageFormat::Jpeg)?;
    let pixels = Limits {
        max_pixels: 4_999,
        ..Limits::default()
    };
    let side = Limits {
        max_dimension: 99,
        ..Limits::default()
    };
    let memory = Limits {
        max_alloc_bytes: 10_000,
        ..Limits::default()
    };
    for limits in [pixels, side, memory] {
        let result = process_with(&bytes, "image/jpeg", &limits);
        assert!(
            matches!(
                result,
                Err(MediaError::TooLarge {
                    width: 100,
                    height: 50
                })
            ),
            "{limits:?}: {:?}",
            outcome(&result)
        );
    }
    let exact = Limits {
        max_pixels: 5_000,
        max_dimension: 100,
        ..Limits::default()
    };
    process_with(&bytes, "image/jpeg", &exact)?;
    Ok(())
}

#[test]
fn truncated_files_are_corrupt() -> TestResult {
    let img: DynamicImage = gradient(300, 200).into();
    for (format, ty) in [
        (ImageFormat::Png, "image/png"),
        (ImageFormat::Jpeg, "image/jpeg"),
        (ImageFormat::Gif, "image/gif"),
        (ImageFormat::WebP, "image/webp"),
    ] {
        let bytes = encode(&img, format)?;
        for cut in [bytes.len() / 2, 40, 10, 0] {
            let result = process_bytes(&bytes[..cut], ty);
            assert!(
                matches!(result, Err(MediaError::Corrupt(_))),
                "{ty} cut at {cut}: {}",
                outcome(&result)
            );
        }
    }
    Ok(())
}

#[test]
fn garbage_is_corrupt() -> TestResult {
    let mut rng = XorShift(0x5eed);
    for ty in ["image/png", "image/jpeg", "image/gif", "image/webp"] {
        let result = process_bytes(&rng.bytes(4096), ty);
        match result {
            Err(MediaError::Corrupt(msg)) => {
                assert!(!msg.is_empty() && msg.len() < 60, "{msg}");
                assert_eq!(msg, msg.to_lowercase());
            }
            other => panic!("{ty}: {}", outcome(&other)),
        }
    }
    Ok(())
}

#[test]
fn other_types_are_unsupported() -> TestResult {
    for ty in ["image/png", "image/jpeg", "image/gif", "image/webp"] {
        assert!(decodable_image(ty));
    }
    for ty in ["image/bmp", "image/svg+xml", "image/heic", "video/mp4", ""] {
        assert!(!decodable_image(ty));
        let result = process_bytes(b"BM", ty);
        assert!(
            matches!(result, Err(MediaError::Unsupported(_))),
            "{ty}: {}",
            outcome(&result)
        );
    }
    Ok(())
}

#[test]
fn missing_file_is_io() {
    let result = process_image(
        std::path::Path::new("/nonexistent/parlor-media-test"),
        "image/png",
        &Limits::default(),
    );
    assert!(matches!(result, Err(MediaError::Io(_))));
}

#[test]
fn blurhash_properties() -> TestResult {
    const BASE83: &str =
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";
    let picture = encode(&gradient(320, 240).into(), ImageFormat::Png)?;
    let first = process_bytes(&picture, "image/png")?.blurhash;
    let second = process_bytes(&picture, "image/png")?.blurhash;
    assert_eq!(first, second);
    assert_eq!(first.len(), 1 + 1 + 4 + 2 * (4 * 3 - 1));
    assert!(first.chars().all(|c| BASE83.contains(c)), "{first}");
    // A gradient has real AC energy, so its quantised maximum is not zero.
    assert_ne!(&first[1..2], "0");

    let solid = |c: [u8; 3]| -> Result<String, Box<dyn std::error::Error>> {
        let img = RgbImage::from_pixel(64, 48, image::Rgb(c));
        Ok(process_bytes(&encode(&img.into(), ImageFormat::Png)?, "image/png")?.blurhash)
    };
    let red = solid([220, 20, 20])?;
    let blue = solid([20, 20, 220])?;
    for hash in [&red, &blue] {
        assert_eq!(hash.len(), 28);
        assert_eq!(&hash[1..2], "0", "{hash}: no AC amplitude");
        assert_eq!(
            &hash[6..],
            "fQ".repeat(11),
            "{hash}: every AC component at zero"
        );
    }
    assert_ne!(red[2..6], blue[2..6]);
    Ok(())
}

#[test]
fn bombs_in_every_format_are_refused_from_the_header() -> TestResult {
    let img: DynamicImage = gradient(16, 16).into();

    let mut gif = encode(&img, ImageFormat::Gif)?;
    // Logical screen size, little-endian, right after "GIF89a".
    gif[6..8].copy_from_slice(&60_000u16.to_le_bytes());
    gif[8..10].copy_from_slice(&60_000u16.to_le_bytes());

    let mut jpeg = encode(&img, ImageFormat::Jpeg)?;
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xff, 0xc0])
        .ok_or("no SOF0 marker")?;
    // Marker, length (2), precision (1), then height and width.
    jpeg[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());

    let mut webp = encode(&img, ImageFormat::WebP)?;
    assert_eq!(&webp[12..16], b"VP8L");
    // After the 0x2f signature: 14 bits width-1, 14 bits height-1, then
    // alpha and version bits, which are kept.
    let packed = u32::from_le_bytes([webp[21], webp[22], webp[23], webp[24]]);
    let packed = (packed & 0xf000_0000) | 11_999 | (11_999 << 14);
    webp[21..25].copy_from_slice(&packed.to_le_bytes());

    for (bytes, ty, side) in [
        (gif, "image/gif", 60_000),
        (jpeg, "image/jpeg", 60_000),
        (webp, "image/webp", 12_000),
    ] {
        let start = Instant::now();
        let result = process_bytes(&bytes, ty);
        assert!(
            matches!(result, Err(MediaError::TooLarge { width, height }) if width == side && height == side),
            "{ty}: {}",
            outcome(&result)
        );
        assert!(start.elapsed() < Duration::from_secs(1), "{ty}");
    }
    Ok(())
}
