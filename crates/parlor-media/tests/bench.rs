//! Rough timings for the server's capacity planning. Ignored by default; run
//! with `cargo test --release -p parlor-media --test bench -- --ignored --nocapture`.

mod common;

use std::time::Instant;

use common::{encode, gradient, write_temp, TestResult};
use image::ImageFormat;
use parlor_media::{process_image, Limits};

#[test]
#[ignore = "timing only"]
fn process_image_timings() -> TestResult {
    let dir = tempfile::tempdir()?;
    for (format, ty, w, h) in [
        (ImageFormat::Jpeg, "image/jpeg", 4000, 3000),
        (ImageFormat::Png, "image/png", 4000, 3000),
        (ImageFormat::Jpeg, "image/jpeg", 1600, 1200),
    ] {
        let path = write_temp(&dir, "bench", &encode(&gradient(w, h).into(), format)?)?;
        let runs = 3;
        let start = Instant::now();
        for _ in 0..runs {
            process_image(&path, ty, &Limits::default())?;
        }
        let each = start.elapsed() / runs;
        println!("process_image {ty} {w}×{h}: {each:?} per image");
    }
    Ok(())
}
