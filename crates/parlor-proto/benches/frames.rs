//! Frame decode and encode: the per-message JSON work on the hot path.

use parlor_proto::frame_json;
use parlor_proto::rest::MessageView;
use parlor_proto::ws::{Ack, ClientFrame, MessageEvent, ServerFrame};
use parlor_proto::Id;

fn main() {
    divan::main();
}

const SEND: &str = r#"{"type":"send","cid":"c-01HF8Z3K2Q9","conv":"120065114085785600","text":"Are we still on for the design review at 3pm? I moved it to the big room."}"#;

#[divan::bench]
fn decode_send() -> Option<ClientFrame> {
    serde_json::from_str::<ClientFrame>(divan::black_box(SEND)).ok()
}

fn message_event() -> ServerFrame {
    ServerFrame::Message(MessageEvent {
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
    })
}

fn ack() -> ServerFrame {
    ServerFrame::Ack(Ack {
        cid: "c-01HF8Z3K2Q9".into(),
        conv: Id(120_065_114_085_785_600),
        id: Id(120_065_114_492_633_088),
        seq: 4_211,
        pos: Id(912_345),
        ts: 1_795_851_353_997,
        duplicate: false,
    })
}

/// serde's derived encoding, for comparison with what the server uses.
#[divan::bench]
fn encode_message_serde(bencher: divan::Bencher) {
    let frame = message_event();
    bencher.bench_local(|| serde_json::to_string(divan::black_box(&frame)).map(|s| s.len()));
}

/// What the server writes for every message (`frame_json::encode`).
#[divan::bench]
fn encode_message(bencher: divan::Bencher) {
    let frame = message_event();
    bencher.bench_local(|| frame_json::encode(divan::black_box(&frame)).map(|s| s.len()));
}

#[divan::bench]
fn encode_ack_serde(bencher: divan::Bencher) {
    let frame = ack();
    bencher.bench_local(|| serde_json::to_string(divan::black_box(&frame)).map(|s| s.len()));
}

#[divan::bench]
fn encode_ack(bencher: divan::Bencher) {
    let frame = ack();
    bencher.bench_local(|| frame_json::encode(divan::black_box(&frame)).map(|s| s.len()));
}
