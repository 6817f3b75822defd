mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{encode, gradient, write_temp, TestResult, XorShift};
use image::ImageFormat;
use parlor_media::{find_ffmpeg, mp4_dimensions, sniff, video_poster, MediaError};
use parlor_proto::rest::ThumbnailSize;

fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(kind);
    v.extend_from_slice(body);
    v
}

/// A box with the 64-bit size form, as large `mdat`s use.
fn large_bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut v = 1u32.to_be_bytes().to_vec();
    v.extend_from_slice(kind);
    v.extend_from_slice(&((body.len() + 16) as u64).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn tkhd(version: u8, width: u32, height: u32) -> Vec<u8> {
    let mut body = vec![version, 0, 0, 3];
    // Times, track id, duration and reserved fields, then layer/volume.
    body.extend(std::iter::repeat_n(0, if version == 1 { 48 } else { 36 }));
    for m in [0x10000u32, 0, 0, 0, 0x10000, 0, 0, 0, 0x4000_0000] {
        body.extend_from_slice(&m.to_be_bytes());
    }
    body.extend_from_slice(&width.to_be_bytes());
    body.extend_from_slice(&height.to_be_bytes());
    bx(b"tkhd", &body)
}

fn ftyp() -> Vec<u8> {
    bx(b"ftyp", b"isom\x00\x00\x02\x00isomiso2avc1mp41")
}

/// ftyp, a large mdat before the moov (as non-"faststart" files have), and
/// an audio track (0×0) ahead of the video track.
fn minimal_mp4(version: u8) -> Vec<u8> {
    let audio = bx(b"trak", &tkhd(version, 0, 0));
    let mut video_body = tkhd(version, 640 << 16, 360 << 16);
    video_body.extend(bx(
        b"mdia",
        &bx(b"hdlr", b"\x00\x00\x00\x00\x00\x00\x00\x00vide"),
    ));
    let video = bx(b"trak", &video_body);
    let mut moov_body = bx(b"mvhd", &[0; 100]);
    moov_body.extend(audio);
    moov_body.extend(video);
    let mut file = ftyp();
    file.extend(large_bx(b"mdat", &[0x55; 4096]));
    file.extend(bx(b"moov", &moov_body));
    file
}

fn dims_of(bytes: &[u8]) -> Result<Option<(u32, u32)>, std::io::Error> {
    let dir = tempfile::tempdir()?;
    let path = write_temp(&dir, "video.mp4", bytes)?;
    Ok(mp4_dimensions(&path))
}

#[test]
fn mp4_dimensions_from_handcrafted_file() -> TestResult {
    let v0 = minimal_mp4(0);
    assert_eq!(sniff(&v0), Some("video/mp4"));
    assert_eq!(dims_of(&v0)?, Some((640, 360)));
    assert_eq!(dims_of(&minimal_mp4(1))?, Some((640, 360)));

    // The same with the moov first, as "faststart" files have.
    let mut fast = ftyp();
    fast.extend(bx(b"moov", &bx(b"trak", &tkhd(0, 1280 << 16, 720 << 16))));
    fast.extend(bx(b"mdat", &[0; 64]));
    assert_eq!(dims_of(&fast)?, Some((1280, 720)));
    Ok(())
}

#[test]
fn mp4_dimensions_rejects_bad_input() -> TestResult {
    let mut rng = XorShift(0xdead_beef);
    for len in [0, 7, 8, 100, 4096] {
        assert_eq!(dims_of(&rng.bytes(len))?, None, "random {len} bytes");
    }
    let good = minimal_mp4(0);
    // Cut inside the moov: the tkhd is gone.
    assert_eq!(dims_of(&good[..good.len() - 40])?, None);
    // Audio only.
    let mut audio = ftyp();
    audio.extend(bx(b"moov", &bx(b"trak", &tkhd(0, 0, 0))));
    assert_eq!(dims_of(&audio)?, None);
    // A box claiming more than the file holds.
    let mut lying = ftyp();
    lying.extend(&u32::MAX.to_be_bytes());
    lying.extend(b"moov");
    lying.extend(tkhd(0, 640 << 16, 360 << 16));
    assert_eq!(dims_of(&lying)?, None);
    // Boxes smaller than their own header.
    let mut tiny = ftyp();
    tiny.extend(b"\x00\x00\x00\x04moov");
    assert_eq!(dims_of(&tiny)?, None);
    // Not an ISO file at all, even if "moov" appears in it.
    assert_eq!(
        dims_of(&bx(b"junk", &bx(b"moov", &tkhd(0, 1 << 16, 1 << 16))))?,
        None
    );
    assert_eq!(mp4_dimensions(Path::new("/nonexistent/parlor.mp4")), None);
    Ok(())
}

#[test]
fn mp4_dimensions_is_bounded_on_endless_boxes() -> TestResult {
    // 2 MB of empty "free" boxes with the moov after them: the walker gives
    // up rather than reading a quarter million headers.
    let mut file = ftyp();
    for _ in 0..250_000 {
        file.extend(b"\x00\x00\x00\x08free");
    }
    file.extend(bx(b"moov", &bx(b"trak", &tkhd(0, 640 << 16, 360 << 16))));
    let start = Instant::now();
    assert_eq!(dims_of(&file)?, None);
    assert!(start.elapsed() < Duration::from_secs(5));
    Ok(())
}

fn make_test_video(ffmpeg: &Path, out: &Path) -> TestResult {
    let status = Command::new(ffmpeg)
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi"])
        .args(["-i", "testsrc=size=320x240:rate=10", "-t", "1"])
        .args(["-pix_fmt", "yuv420p"])
        .arg(out)
        .stdin(Stdio::null())
        .status()?;
    assert!(status.success(), "ffmpeg could not make the test video");
    Ok(())
}

#[test]
fn video_poster_through_ffmpeg() -> TestResult {
    let Some(ffmpeg) = find_ffmpeg() else {
        println!("video_poster_through_ffmpeg skipped: ffmpeg not found");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let video = dir.path().join("out.mp4");
    make_test_video(&ffmpeg, &video)?;

    assert_eq!(mp4_dimensions(&video), Some((320, 240)));
    let poster = video_poster(&ffmpeg, &video, Duration::from_secs(30))?.ok_or("no poster")?;
    assert_eq!(poster.size, ThumbnailSize::Poster);
    assert_eq!(poster.content_type, "image/jpeg");
    assert_eq!((poster.width, poster.height), (320, 240));
    assert_eq!(sniff(&poster.bytes), Some("image/jpeg"));
    let decoded = image::load_from_memory(&poster.bytes)?;
    assert_eq!((decoded.width(), decoded.height()), (320, 240));
    Ok(())
}

#[test]
fn webm_poster_through_ffmpeg() -> TestResult {
    let Some(ffmpeg) = find_ffmpeg() else {
        println!("webm_poster_through_ffmpeg skipped: ffmpeg not found");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let video = dir.path().join("out.webm");
    let status = Command::new(&ffmpeg)
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi"])
        .args(["-i", "testsrc=size=480x270:rate=10", "-t", "1"])
        .args(["-c:v", "libvpx", "-b:v", "200k"])
        .arg(&video)
        .stdin(Stdio::null())
        .status()?;
    if !status.success() {
        println!("webm_poster_through_ffmpeg skipped: this ffmpeg cannot encode VP8");
        return Ok(());
    }
    let head = std::fs::read(&video)?;
    assert_eq!(sniff(&head[..head.len().min(512)]), Some("video/webm"));
    assert_eq!(mp4_dimensions(&video), None);
    let poster = video_poster(&ffmpeg, &video, Duration::from_secs(30))?.ok_or("no poster")?;
    assert_eq!((poster.width, poster.height), (480, 270));
    Ok(())
}

#[test]
fn video_poster_times_out() -> TestResult {
    let Some(ffmpeg) = find_ffmpeg() else {
        println!("video_poster_times_out skipped: ffmpeg not found");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let video = dir.path().join("out.mp4");
    make_test_video(&ffmpeg, &video)?;
    let result = video_poster(&ffmpeg, &video, Duration::from_millis(1));
    assert!(
        matches!(result, Err(MediaError::Timeout)),
        "{:?}",
        result.map(|p| p.is_some())
    );
    Ok(())
}

#[test]
fn video_poster_declines_what_is_not_a_video() -> TestResult {
    let Some(ffmpeg) = find_ffmpeg() else {
        println!("video_poster_declines_what_is_not_a_video skipped: ffmpeg not found");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let png = write_temp(
        &dir,
        "a.mp4",
        &encode(&gradient(64, 64).into(), ImageFormat::Png)?,
    )?;
    // A playlist that would make ffmpeg read another file on the server.
    let playlist = write_temp(
        &dir,
        "b.mp4",
        b"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:10.0,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
    )?;
    // Looks like MP4 from the outside, has nothing inside.
    let hollow = write_temp(&dir, "c.mp4", &minimal_mp4(0))?;
    for path in [png, playlist, hollow] {
        let result = video_poster(&ffmpeg, &path, Duration::from_secs(30));
        assert!(
            matches!(result, Ok(None)),
            "{}: {:?}",
            path.display(),
            result.map(|p| p.is_some())
        );
    }
    Ok(())
}

#[test]
fn video_poster_without_ffmpeg_is_io() -> TestResult {
    let dir = tempfile::tempdir()?;
    let video = write_temp(&dir, "v.mp4", &minimal_mp4(0))?;
    let result = video_poster(
        Path::new("/nonexistent/ffmpeg"),
        &video,
        Duration::from_secs(5),
    );
    assert!(
        matches!(result, Err(MediaError::Io(_))),
        "{:?}",
        result.map(|p| p.is_some())
    );
    Ok(())
}
