//! Server frames as JSON text. The two frames that every message costs (its `message`
//! event, encoded once for all recipients, and the sender's `ack`) are written here
//! field by field; every other frame goes through serde.
//!
//! Why by hand: serde's derived code writes a `message` event as a map (it has a
//! `#[serde(flatten)]` field) and scans every key and every id for characters to
//! escape. Encoding frames was the largest single cost in the server's runtime threads
//! under load (docs/BENCHMARKS.md, "direct", eleventh session). The output is byte for
//! byte what `serde_json::to_string` gives; the tests compare the two.

use crate::ids::{itoa_buf, Id};
use crate::ws::{Ack, MessageEvent, ServerFrame};

/// Encodes a server frame as the JSON text of one WebSocket message.
pub fn encode(frame: &ServerFrame) -> serde_json::Result<String> {
    match frame {
        ServerFrame::Message(event) if event.message.attachments.is_empty() => Ok(message(event)),
        ServerFrame::Ack(ack) => Ok(ack_frame(ack)),
        other => serde_json::to_string(other),
    }
}

fn message(event: &MessageEvent) -> String {
    let m = &event.message;
    let mut out = String::with_capacity(160 + m.text.len());
    out.push_str(r#"{"type":"message","pos":"#);
    id(&mut out, event.pos);
    message_key(&mut out, m.conv, m.id, m.seq);
    out.push_str(r#","sender":"#);
    id(&mut out, m.sender);
    out.push_str(r#","text":"#);
    string(&mut out, &m.text);
    out.push_str(r#","ts":"#);
    signed(&mut out, m.ts);
    if let Some(cid) = &m.cid {
        out.push_str(r#","cid":"#);
        string(&mut out, cid);
    }
    if let Some(reply_to) = m.reply_to {
        out.push_str(r#","reply_to":"#);
        out.push_str(itoa_buf(reply_to).as_str());
    }
    if !m.mentions.is_empty() {
        out.push_str(r#","mentions":["#);
        for (i, user) in m.mentions.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            id(&mut out, *user);
        }
        out.push(']');
    }
    if m.mention_all {
        out.push_str(r#","mention_all":true"#);
    }
    if let Some(edited_at) = m.edited_at {
        out.push_str(r#","edited_at":"#);
        signed(&mut out, edited_at);
    }
    if m.deleted {
        out.push_str(r#","deleted":true"#);
    }
    out.push('}');
    out
}

fn ack_frame(ack: &Ack) -> String {
    let mut out = String::with_capacity(160 + ack.cid.len());
    out.push_str(r#"{"type":"ack","cid":"#);
    string(&mut out, &ack.cid);
    message_key(&mut out, ack.conv, ack.id, ack.seq);
    out.push_str(r#","pos":"#);
    id(&mut out, ack.pos);
    out.push_str(r#","ts":"#);
    signed(&mut out, ack.ts);
    if ack.duplicate {
        out.push_str(r#","duplicate":true"#);
    }
    out.push('}');
    out
}

/// `"conv"`, `"id"` and `"seq"`, which name a message in both frames.
fn message_key(out: &mut String, conv: Id, message: Id, seq: u64) {
    out.push_str(r#","conv":"#);
    id(out, conv);
    out.push_str(r#","id":"#);
    id(out, message);
    out.push_str(r#","seq":"#);
    out.push_str(itoa_buf(seq).as_str());
}

/// Ids travel as decimal strings (see [`Id`]).
fn id(out: &mut String, id: Id) {
    out.push('"');
    out.push_str(itoa_buf(id.0).as_str());
    out.push('"');
}

fn signed(out: &mut String, v: i64) {
    if v < 0 {
        out.push('-');
    }
    out.push_str(itoa_buf(v.unsigned_abs()).as_str());
}

/// A JSON string, escaped as serde_json escapes: `"`, `\` and the control characters
/// below U+0020 (the usual five by letter, the others as `\u00xx`); everything else as
/// it is. Every escaped character is ASCII, so the runs between them are whole
/// characters and are copied as slices.
fn string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rest::{AttachmentView, MessageView};

    fn texts() -> Vec<String> {
        let mut texts: Vec<String> = [
            "",
            "hello",
            "quote \" backslash \\ slash /",
            "line\nbreak\r\ttab",
            "東京都 🙂 café \u{2028} \u{7f}",
            "\"\\\"",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        texts.push((0u8..0x20).map(char::from).collect());
        texts.push((0u8..0x80).map(char::from).rev().collect());
        texts
    }

    fn message_view(text: &str, variant: u32) -> MessageView {
        MessageView {
            conv: Id(120_065_114_085_785_600),
            id: Id(u64::MAX),
            seq: u64::from(variant) * 1_000_003,
            sender: Id(0),
            text: text.to_string(),
            ts: if variant % 5 == 4 {
                -1
            } else {
                1_795_851_353_997
            },
            cid: (variant & 1 != 0).then(|| format!("c-{text}")),
            reply_to: (variant & 2 != 0).then_some(7),
            mentions: if variant & 4 != 0 {
                vec![Id(1), Id(22)]
            } else {
                Vec::new()
            },
            mention_all: variant & 8 != 0,
            edited_at: (variant & 16 != 0).then_some(i64::MIN + 1),
            deleted: variant & 32 != 0,
            attachments: Vec::new(),
        }
    }

    #[test]
    fn message_events_are_what_serde_writes() {
        for text in texts() {
            for variant in 0..64 {
                let frame = ServerFrame::Message(MessageEvent {
                    pos: Id(u64::from(variant)),
                    message: message_view(&text, variant),
                });
                let expected = serde_json::to_string(&frame).ok();
                assert_eq!(encode(&frame).ok(), expected, "variant {variant}");
            }
        }
    }

    #[test]
    fn acks_are_what_serde_writes() {
        for cid in texts() {
            for duplicate in [false, true] {
                let frame = ServerFrame::Ack(Ack {
                    cid: cid.clone(),
                    conv: Id(3),
                    id: Id(u64::MAX),
                    seq: 0,
                    pos: Id(42),
                    ts: -5,
                    duplicate,
                });
                let expected = serde_json::to_string(&frame).ok();
                assert_eq!(encode(&frame).ok(), expected);
            }
        }
    }

    #[test]
    fn messages_with_attachments_and_other_frames_go_through_serde() {
        let mut view = message_view("see attached", 3);
        view.attachments.push(AttachmentView {
            id: Id(9),
            name: "plan \"v2\".pdf".into(),
            content_type: "application/pdf".into(),
            size: 1234,
            sha256: "ab".repeat(32),
            width: None,
            height: None,
            blurhash: None,
            thumbnails: Vec::new(),
        });
        let frames = [
            ServerFrame::Message(MessageEvent {
                pos: Id(1),
                message: view,
            }),
            ServerFrame::Synced { pos: Id(77) },
        ];
        for frame in frames {
            assert_eq!(encode(&frame).ok(), serde_json::to_string(&frame).ok());
        }
    }
}
