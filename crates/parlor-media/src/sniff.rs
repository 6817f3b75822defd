//! Content sniffing by signature.
//!
//! Binary signatures are checked before the text heuristics so that a binary
//! file whose first bytes happen to look like markup is still named by its
//! real format.

/// Content type from the first bytes of a file (pass at least the first 512
/// bytes, or the whole file if shorter). `None` when nothing matches.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    sniff_binary(head).or_else(|| sniff_text(head))
}

fn sniff_binary(b: &[u8]) -> Option<&'static str> {
    const PREFIXES: &[(&[u8], &str)] = &[
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"II*\x00", "image/tiff"),
        (b"MM\x00*", "image/tiff"),
        (b"OggS", "audio/ogg"),
        (b"fLaC", "audio/flac"),
        (b"ID3", "audio/mpeg"),
        (b"%PDF-", "application/pdf"),
        (b"PK\x03\x04", "application/zip"),
        // An empty archive is only an end-of-central-directory record.
        (b"PK\x05\x06", "application/zip"),
        (b"\x1f\x8b\x08", "application/gzip"),
    ];
    if let Some((_, ty)) = PREFIXES.iter().find(|(sig, _)| b.starts_with(sig)) {
        return Some(ty);
    }
    if b.len() >= 12 && b.starts_with(b"RIFF") {
        match &b[8..12] {
            b"WEBP" => return Some("image/webp"),
            b"WAVE" => return Some("audio/wav"),
            _ => {}
        }
    }
    if is_bmp(b) {
        return Some("image/bmp");
    }
    if b.len() >= 12 && &b[4..8] == b"ftyp" {
        return ftyp(b);
    }
    if b.starts_with(b"\x1a\x45\xdf\xa3") {
        return Some(ebml_doc_type(b));
    }
    if is_mpeg_audio_frame(b) {
        return Some("audio/mpeg");
    }
    None
}

/// "BM" alone is too common a pair of bytes; the DIB header size that follows
/// the 14-byte file header has only a handful of legal values.
fn is_bmp(b: &[u8]) -> bool {
    if b.len() < 18 || !b.starts_with(b"BM") {
        return false;
    }
    let dib = u32::from_le_bytes([b[14], b[15], b[16], b[17]]);
    matches!(dib, 12 | 40 | 52 | 56 | 64 | 108 | 124)
}

/// ISO BMFF: the major brand decides when it is one we know; otherwise the
/// compatible brands are consulted, most specific family first, because HEIF
/// files list generic brands such as `mif1` alongside MP4 ones.
fn ftyp(b: &[u8]) -> Option<&'static str> {
    let declared = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let end = declared.clamp(12, b.len());
    let major = &b[8..12];
    if let Some(ty) = brand(major) {
        return Some(ty);
    }
    // Compatible brands start after the 4-byte minor version.
    let compatible: Vec<&[u8]> = b.get(16..end).unwrap_or(&[]).chunks_exact(4).collect();
    const FAMILIES: [&str; 5] = [
        "image/avif",
        "image/heic",
        "video/quicktime",
        "video/mp4",
        "audio/mp4",
    ];
    FAMILIES
        .into_iter()
        .find(|&family| compatible.iter().any(|c| brand(c) == Some(family)))
}

fn brand(code: &[u8]) -> Option<&'static str> {
    Some(match code {
        b"avif" | b"avis" => "image/avif",
        b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"hevx" | b"mif1" | b"msf1" => {
            "image/heic"
        }
        b"qt  " => "video/quicktime",
        b"M4A " | b"M4B " => "audio/mp4",
        b"isom" | b"iso2" | b"iso3" | b"iso4" | b"iso5" | b"iso6" | b"iso7" | b"iso8" | b"iso9"
        | b"mp41" | b"mp42" | b"mp71" | b"avc1" | b"dash" | b"M4V " | b"M4VH" | b"M4VP"
        | b"MSNV" | b"f4v " | b"3gp4" | b"3gp5" | b"3gp6" | b"3g2a" => "video/mp4",
        _ => return None,
    })
}

/// Matroska and WebM share the EBML header and differ only in its DocType
/// element (ID 0x4282). The spec's default DocType is "matroska".
fn ebml_doc_type(b: &[u8]) -> &'static str {
    let Some(at) = b.windows(2).position(|w| w == [0x42, 0x82]) else {
        return "video/x-matroska";
    };
    let rest = &b[at + 2..];
    let Some((len, vint_len)) = ebml_vint(rest) else {
        return "video/x-matroska";
    };
    let value = rest
        .get(vint_len..)
        .and_then(|r| r.get(..len.min(r.len())))
        .unwrap_or(&[]);
    if value.starts_with(b"webm") {
        "video/webm"
    } else {
        "video/x-matroska"
    }
}

/// An EBML variable-length size: the count of leading zero bits gives the
/// extra bytes, the marker bit itself is not part of the value.
fn ebml_vint(b: &[u8]) -> Option<(usize, usize)> {
    let first = *b.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 || b.len() < len {
        return None;
    }
    let mut value = u64::from(first) & (0xff >> len);
    for &byte in &b[1..len] {
        value = (value << 8) | u64::from(byte);
    }
    Some((usize::try_from(value).ok()?, len))
}

/// An MPEG audio frame header without an ID3 tag. Eleven sync bits alone
/// match far too much, so the reserved values of the version, layer, bitrate
/// and sample-rate fields are rejected too (this also keeps AAC ADTS, whose
/// layer field is 0, out).
fn is_mpeg_audio_frame(b: &[u8]) -> bool {
    if b.len() < 4 || b[0] != 0xff || b[1] & 0xe0 != 0xe0 {
        return false;
    }
    let version = (b[1] >> 3) & 0b11;
    let layer = (b[1] >> 1) & 0b11;
    let bitrate = b[2] >> 4;
    let sample_rate = (b[2] >> 2) & 0b11;
    version != 0b01 && layer != 0 && bitrate != 0b1111 && bitrate != 0 && sample_rate != 0b11
}

fn sniff_text(b: &[u8]) -> Option<&'static str> {
    let start = skip_ws(b.strip_prefix(b"\xef\xbb\xbf").unwrap_or(b));
    if is_html(start) {
        return Some("text/html");
    }
    let body = skip_prolog(start);
    if starts_with_tag(body, b"<svg") {
        return Some("image/svg+xml");
    }
    if is_html(body) {
        return Some("text/html");
    }
    None
}

/// Skips the XML declaration, processing instructions, comments and a
/// doctype (whose internal subset may itself contain `>`), with whitespace
/// between them. Stops at the first thing that is none of those.
fn skip_prolog(mut b: &[u8]) -> &[u8] {
    loop {
        b = skip_ws(b);
        let next = if b.starts_with(b"<?") {
            after(b, b"?>")
        } else if b.starts_with(b"<!--") {
            after(b, b"-->")
        } else if starts_with_ci(b, b"<!doctype") && !is_html(b) {
            skip_doctype(b)
        } else {
            return b;
        };
        match next {
            Some(rest) => b = rest,
            // Unterminated: the head was cut inside the prolog.
            None => return &[],
        }
    }
}

fn skip_doctype(b: &[u8]) -> Option<&[u8]> {
    let mut in_subset = false;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'[' => in_subset = true,
            b']' => in_subset = false,
            b'>' if !in_subset => return Some(&b[i + 1..]),
            _ => {}
        }
    }
    None
}

fn after<'a>(b: &'a [u8], end: &[u8]) -> Option<&'a [u8]> {
    b.windows(end.len())
        .position(|w| w == end)
        .map(|at| &b[at + end.len()..])
}

fn is_html(b: &[u8]) -> bool {
    // Beyond the obvious tags, anything a browser would render as HTML if it
    // sniffed the body, so such uploads are never served inline by mistake.
    const TAGS: &[&[u8]] = &[
        b"<!doctype html",
        b"<html",
        b"<script",
        b"<head",
        b"<body",
        b"<iframe",
        b"<style",
        b"<title",
        b"<table",
        b"<div",
        b"<font",
        b"<h1",
        b"<br",
        b"<p",
        b"<a",
        b"<b",
    ];
    TAGS.iter().any(|tag| starts_with_tag(b, tag))
}

/// Case-insensitive prefix that must end the tag name, so `<a` does not
/// claim `<abbr` or `<svg` claim `<svgfoo`.
fn starts_with_tag(b: &[u8], tag: &[u8]) -> bool {
    if !starts_with_ci(b, tag) {
        return false;
    }
    match b.get(tag.len()) {
        Some(c) => c.is_ascii_whitespace() || *c == b'>' || *c == b'/',
        // Cut right after the name: still most likely that tag.
        None => true,
    }
}

fn starts_with_ci(b: &[u8], prefix: &[u8]) -> bool {
    b.len() >= prefix.len() && b[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn skip_ws(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

#[cfg(test)]
mod tests {
    use super::sniff;

    fn riff(kind: &[u8]) -> Vec<u8> {
        let mut v = b"RIFF\x24\x00\x00\x00".to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(&[0; 20]);
        v
    }

    fn ftyp(major: &[u8], compatible: &[&[u8]]) -> Vec<u8> {
        let size = 16 + 4 * compatible.len() as u32;
        let mut v = size.to_be_bytes().to_vec();
        v.extend_from_slice(b"ftyp");
        v.extend_from_slice(major);
        v.extend_from_slice(&[0, 0, 2, 0]);
        for c in compatible {
            v.extend_from_slice(c);
        }
        v.extend_from_slice(b"\x00\x00\x00\x08free");
        v
    }

    fn ebml(doc_type: &[u8]) -> Vec<u8> {
        let mut v = vec![0x1a, 0x45, 0xdf, 0xa3, 0xa3];
        v.extend_from_slice(&[0x42, 0x86, 0x81, 0x01]); // EBMLVersion 1
        v.extend_from_slice(&[0x42, 0x82, 0x80 | doc_type.len() as u8]);
        v.extend_from_slice(doc_type);
        v.extend_from_slice(&[0x42, 0x87, 0x81, 0x04]);
        v
    }

    fn bmp() -> Vec<u8> {
        let mut v = b"BM".to_vec();
        v.extend_from_slice(&[0x46, 0, 0, 0, 0, 0, 0, 0, 0x36, 0, 0, 0]);
        v.extend_from_slice(&40u32.to_le_bytes());
        v.extend_from_slice(&[0; 16]);
        v
    }

    #[test]
    fn binary_signatures() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec(),
                "image/png",
            ),
            (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00".to_vec(), "image/jpeg"),
            (b"GIF89a\x01\x00\x01\x00".to_vec(), "image/gif"),
            (b"GIF87a\x01\x00\x01\x00".to_vec(), "image/gif"),
            (riff(b"WEBPVP8L"), "image/webp"),
            (bmp(), "image/bmp"),
            (b"II*\x00\x08\x00\x00\x00".to_vec(), "image/tiff"),
            (b"MM\x00*\x00\x00\x00\x08".to_vec(), "image/tiff"),
            (ftyp(b"avif", &[b"avif", b"mif1", b"miaf"]), "image/avif"),
            (ftyp(b"heic", &[b"mif1", b"heic"]), "image/heic"),
            (ftyp(b"mif1", &[b"mif1", b"heic"]), "image/heic"),
            (ftyp(b"heix", &[b"mif1"]), "image/heic"),
            (
                ftyp(b"isom", &[b"isom", b"iso2", b"avc1", b"mp41"]),
                "video/mp4",
            ),
            (ftyp(b"mp42", &[b"mp42", b"isom"]), "video/mp4"),
            (ftyp(b"M4V ", &[b"M4V ", b"mp42"]), "video/mp4"),
            (ftyp(b"dash", &[b"iso6"]), "video/mp4"),
            (ftyp(b"qt  ", &[b"qt  "]), "video/quicktime"),
            // Unknown major brand: the compatible list decides.
            (ftyp(b"xxxx", &[b"mif1", b"avif"]), "image/avif"),
            (ftyp(b"xxxx", &[b"isom"]), "video/mp4"),
            (ebml(b"webm"), "video/webm"),
            (ebml(b"matroska"), "video/x-matroska"),
            (b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec(), "audio/mpeg"),
            // MPEG-1 layer III, 128 kbit/s, 44.1 kHz.
            (b"\xff\xfb\x90\x64\x00\x00".to_vec(), "audio/mpeg"),
            (b"OggS\x00\x02\x00\x00".to_vec(), "audio/ogg"),
            (riff(b"WAVEfmt "), "audio/wav"),
            (b"fLaC\x00\x00\x00\x22".to_vec(), "audio/flac"),
            (b"%PDF-1.7\n".to_vec(), "application/pdf"),
            (b"PK\x03\x04\x14\x00".to_vec(), "application/zip"),
            (
                b"\x1f\x8b\x08\x00\x00\x00\x00\x00".to_vec(),
                "application/gzip",
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(sniff(&bytes), Some(want), "{bytes:02x?}");
        }
    }

    #[test]
    fn text_signatures() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (
                b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
                Some("image/svg+xml"),
            ),
            (
                b"\xef\xbb\xbf  \n<?xml version=\"1.0\"?>\n<!-- made by hand -->\n\
                  <!DOCTYPE svg PUBLIC \"-//W3C//DTD SVG 1.1//EN\" \
                  \"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd\" [ <!ENTITY a \">\"> ]>\n\
                  <svg width=\"1\">",
                Some("image/svg+xml"),
            ),
            (b"<SVG>", Some("image/svg+xml")),
            (b"<!doctype html><p>hi", Some("text/html")),
            (b"\n\t <!DOCTYPE HTML>", Some("text/html")),
            (b"<html lang=en>", Some("text/html")),
            (b"<HTML>", Some("text/html")),
            (b"<script>alert(1)</script>", Some("text/html")),
            (b"<head>", Some("text/html")),
            (b"  <BODY onload=x>", Some("text/html")),
            (b"<?xml version=\"1.0\"?><html>", Some("text/html")),
            (b"<svgx>", None),
            (b"<abbr>", None),
            (b"hello world", None),
            (b"<?xml version=\"1.0\"?><feed/>", None),
            (b"", None),
            (b"BM", None),
            (b"\xff\xf1\x50\x80", None), // AAC ADTS, not MPEG audio
        ];
        for (bytes, want) in cases {
            assert_eq!(sniff(bytes), *want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }
}
