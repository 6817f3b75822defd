//! Frame decode and encode: the per-message JSON work on the hot path.

use parlor_proto::rest::MessageView;
use parlor_proto::ws::{ClientFrame, MessageEvent, ServerFrame};
use parlor_proto::Id;

fn main() {
    divan::main();
}

const SEND: &str = r#"{"type":"send","cid":"c-01HF8Z3K2Q9","conv":"120065114085785600","text":"Are we still on for the design review at 3pm? I moved it to the big room."}"#;

#[divan::bench]
fn decode_send() -> Option<ClientFrame> {
    serde_json::from_str::<ClientFrame>(divan::black_box(SEND)).ok()
}

#[divan::bench]
fn encode_message() -> usize {
    let frame = ServerFrame::Message(MessageEvent {
        pos: Id(912_345),
        message: MessageView {
            conv: Id(120_065_114_085_785_600),
            id: Id(120_065_114_492_633_088),
            seq: 4_211,
            sender: Id(120_065_110_621_290_496),
            text: "Are we still on for the design review at 3pm? I moved it to the big room."
                .into(),
            ts: 1_795_851_353_997,
            cid: Some("c-01HF8Z3K2Q9".into()),
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
            edited_at: None,
            deleted: false,
            attachments: Vec::new(),
        },
    });
    serde_json::to_string(divan::black_box(&frame))
        .map(|s| s.len())
        .unwrap_or(0)
}
