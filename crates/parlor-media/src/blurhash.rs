//! BlurHash encoder, written from the public description of the format.
//!
//! The image is projected onto a few 2-D cosine basis functions in linear
//! light; the average colour (DC) is stored as sRGB, the other components
//! (AC) relative to their largest magnitude, all packed as base-83 digits.

use image::RgbImage;

const ALPHABET: &[u8; 83] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";

/// Components used by Parlor: more across than down suits mostly-landscape
/// pictures, and 4×3 keeps the string at 28 characters.
pub(crate) const COMPONENTS_X: u32 = 4;
pub(crate) const COMPONENTS_Y: u32 = 3;

/// Encodes `img` (meant to be small: the cost is pixels × components).
/// Returns `None` for an empty image, which has no average colour.
pub(crate) fn encode(img: &RgbImage, cx: u32, cy: u32) -> Option<String> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 || !(1..=9).contains(&cx) || !(1..=9).contains(&cy) {
        return None;
    }
    let lut: Vec<f64> = (0..=255u8).map(srgb_to_linear).collect();
    let pi = std::f64::consts::PI;
    // Cosine rows are shared by every pixel in a column/row, so compute them
    // once instead of per pixel and component. Sampling at pixel centres
    // (x + 0.5) rather than at x makes each AC basis sum to exactly zero, so
    // a flat image really has no AC energy; sampling at x leaves a bias of
    // 2/width on odd components, visible as a fake gradient on small images.
    let cos_x: Vec<Vec<f64>> = (0..cx)
        .map(|i| {
            (0..w)
                .map(|x| (pi * f64::from(i) * (f64::from(x) + 0.5) / f64::from(w)).cos())
                .collect()
        })
        .collect();
    let cos_y: Vec<Vec<f64>> = (0..cy)
        .map(|j| {
            (0..h)
                .map(|y| (pi * f64::from(j) * (f64::from(y) + 0.5) / f64::from(h)).cos())
                .collect()
        })
        .collect();

    let mut factors = Vec::with_capacity((cx * cy) as usize);
    for j in 0..cy {
        for i in 0..cx {
            let mut sum = [0.0f64; 3];
            for (x, y, px) in img.enumerate_pixels() {
                let basis = cos_x[i as usize][x as usize] * cos_y[j as usize][y as usize];
                for (acc, &c) in sum.iter_mut().zip(px.0.iter()) {
                    *acc += basis * lut[usize::from(c)];
                }
            }
            let norm = if i == 0 && j == 0 { 1.0 } else { 2.0 };
            let scale = norm / (f64::from(w) * f64::from(h));
            factors.push(sum.map(|s| s * scale));
        }
    }

    let (dc, ac) = factors.split_first()?;
    let mut out = String::with_capacity(6 + 2 * ac.len());
    push_base83(&mut out, (cx - 1) + (cy - 1) * 9, 1);

    let max_ac = if ac.is_empty() {
        push_base83(&mut out, 0, 1);
        1.0
    } else {
        let actual = ac
            .iter()
            .flat_map(|f| f.iter())
            .fold(0.0f64, |m, v| m.max(v.abs()));
        let quantised = (actual * 166.0 - 0.5).floor().clamp(0.0, 82.0);
        push_base83(&mut out, quantised as u32, 1);
        (quantised + 1.0) / 166.0
    };

    let dc_value = (u32::from(linear_to_srgb(dc[0])) << 16)
        | (u32::from(linear_to_srgb(dc[1])) << 8)
        | u32::from(linear_to_srgb(dc[2]));
    push_base83(&mut out, dc_value, 4);

    for f in ac {
        let q = f.map(|v| {
            let scaled = sign_sqrt(v / max_ac) * 9.0 + 9.5;
            scaled.floor().clamp(0.0, 18.0) as u32
        });
        push_base83(&mut out, q[0] * 19 * 19 + q[1] * 19 + q[2], 2);
    }
    Some(out)
}

fn push_base83(out: &mut String, value: u32, digits: u32) {
    for d in (0..digits).rev() {
        let digit = (value / 83u32.pow(d)) % 83;
        out.push(char::from(ALPHABET[digit as usize]));
    }
}

fn sign_sqrt(v: f64) -> f64 {
    v.abs().sqrt().copysign(v)
}

fn srgb_to_linear(c: u8) -> f64 {
    let v = f64::from(c) / 255.0;
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

fn linear_to_srgb(v: f64) -> u8 {
    let v = v.clamp(0.0, 1.0);
    let s = if v <= 0.003_130_8 {
        v * 12.92
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    };
    (s * 255.0 + 0.5).clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn solid(w: u32, h: u32, c: [u8; 3]) -> RgbImage {
        RgbImage::from_pixel(w, h, Rgb(c))
    }

    #[test]
    fn shape_and_alphabet() {
        let img = RgbImage::from_fn(32, 24, |x, y| Rgb([(x * 8) as u8, (y * 10) as u8, 90]));
        let hash = encode(&img, 4, 3);
        assert!(matches!(&hash, Some(h) if h.len() == 28));
        let hash = hash.unwrap_or_default();
        assert!(hash.bytes().all(|b| ALPHABET.contains(&b)), "{hash}");
        // Size flag: (4-1) + (3-1)*9 = 21 → 'L'.
        assert!(hash.starts_with('L'), "{hash}");
        assert_eq!(encode(&img, 4, 3), Some(hash));
    }

    #[test]
    fn uniform_colour_has_no_ac_energy() {
        let hash = encode(&solid(16, 16, [200, 40, 10]), 4, 3).unwrap_or_default();
        assert_eq!(hash.len(), 28);
        // Quantised maximum 0, then every AC component at the midpoint 9,9,9
        // (9*361 + 9*19 + 9 = 3429 = 41*83 + 26 → "fQ").
        assert_eq!(&hash[1..2], "0");
        assert_eq!(&hash[6..], "fQ".repeat(11));
        // The DC part round-trips the colour exactly.
        let dc = hash[2..6].bytes().fold(0u32, |acc, b| {
            let d = ALPHABET.iter().position(|&a| a == b).unwrap_or(0) as u32;
            acc * 83 + d
        });
        assert_eq!(dc, (200 << 16) | (40 << 8) | 10);
    }

    #[test]
    fn colours_change_the_dc_part() {
        let a = encode(&solid(8, 8, [255, 0, 0]), 4, 3).unwrap_or_default();
        let b = encode(&solid(8, 8, [0, 0, 255]), 4, 3).unwrap_or_default();
        assert_ne!(a[2..6], b[2..6]);
        assert_eq!(a[6..], b[6..]);
    }

    #[test]
    fn empty_image_and_bad_components() {
        assert_eq!(encode(&RgbImage::new(0, 4), 4, 3), None);
        assert_eq!(encode(&solid(2, 2, [0, 0, 0]), 0, 3), None);
        assert_eq!(encode(&solid(2, 2, [0, 0, 0]), 4, 10), None);
        // 1×1 components: no AC, so just flag, max and DC.
        assert_eq!(
            encode(&solid(2, 2, [0, 0, 0]), 1, 1).map(|h| h.len()),
            Some(6)
        );
    }
}
