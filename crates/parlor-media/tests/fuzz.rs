//! Hostile-input smoke test: random bytes and random mutations of valid
//! files must never panic, hang or allocate without bound.

mod common;

use common::{encode, gradient, write_temp, TestResult, XorShift};
use image::ImageFormat;
use parlor_media::{mp4_dimensions, process_image, sniff, Limits};

fn mutate(rng: &mut XorShift, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    match rng.below(4) {
        // Flip a few bytes.
        0 => {
            for _ in 0..=rng.below(8) {
                let at = rng.below(v.len());
                v[at] = rng.next() as u8;
            }
        }
        // Truncate.
        1 => v.truncate(rng.below(v.len())),
        // Overwrite a run, often the header where sizes live.
        2 => {
            let at = rng.below(v.len().min(64));
            let len = rng.below(16).min(v.len() - at);
            let noise = rng.bytes(len);
            v[at..at + len].copy_from_slice(&noise);
        }
        // Splice in a block of random bytes.
        _ => {
            let at = rng.below(v.len());
            let n = rng.below(256);
            let noise = rng.bytes(n);
            v.splice(at..at, noise);
        }
    }
    v
}

#[test]
fn random_and_mutated_inputs_do_not_panic() -> TestResult {
    let img = gradient(48, 32).into();
    let png = encode(&img, ImageFormat::Png)?;
    let jpeg = encode(&img, ImageFormat::Jpeg)?;
    let gif = encode(&img, ImageFormat::Gif)?;
    let webp = encode(&img, ImageFormat::WebP)?;
    let seeds = [
        (&png, "image/png"),
        (&jpeg, "image/jpeg"),
        (&gif, "image/gif"),
        (&webp, "image/webp"),
    ];
    // Keep each decode cheap even if a mutation claims a large (but legal) size.
    let limits = Limits {
        max_pixels: 1_000_000,
        max_dimension: 4096,
        max_alloc_bytes: 16 * 1024 * 1024,
    };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("input");
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (mut decoded, mut refused) = (0, 0);
    for i in 0..2_000 {
        let (bytes, declared) = if i % 5 == 0 {
            let n = rng.below(1024);
            (
                rng.bytes(n),
                ["image/png", "image/jpeg", "image/gif", "image/webp"][i % 4],
            )
        } else {
            let (seed, ty) = seeds[rng.below(seeds.len())];
            (mutate(&mut rng, seed), ty)
        };
        let sniffed = sniff(&bytes);
        std::fs::write(&path, &bytes)?;
        match process_image(&path, sniffed.unwrap_or(declared), &limits) {
            Ok(info) => {
                decoded += 1;
                assert!(info.width > 0 && info.height > 0);
                assert_eq!(info.blurhash.len(), 28);
                for t in &info.thumbnails {
                    assert!(t.width > 0 && t.width <= 800 && t.height > 0 && t.height <= 800);
                }
            }
            Err(_) => refused += 1,
        }
        let _ = mp4_dimensions(&path);
    }
    println!("fuzz: {decoded} decoded, {refused} refused");
    assert!(decoded > 0 && refused > 0);
    Ok(())
}

#[test]
fn sniff_is_total_on_random_prefixes() -> TestResult {
    let mut rng = XorShift(42);
    let dir = tempfile::tempdir()?;
    for len in 0..2_000 {
        let bytes = rng.bytes(len % 600);
        let _ = sniff(&bytes);
        if len % 100 == 0 {
            let path = write_temp(&dir, "x", &bytes)?;
            assert_eq!(mp4_dimensions(&path), None);
        }
    }
    Ok(())
}
