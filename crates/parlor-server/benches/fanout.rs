//! Fan-out: one committed event queued to every connection of its recipients
//! (encode once, reference-counted bytes per device).

use axum::extract::ws::Utf8Bytes;
use parlor_core::model::Event;
use parlor_proto::ws::ServerFrame;
use parlor_proto::Id;
use parlor_server::hub::Hub;
use parlor_server::metrics::Metrics;
use std::sync::Arc;

fn main() {
    divan::main();
}

#[divan::bench(args = [10, 100, 1000])]
fn deliver_to_group(bencher: divan::Bencher, members: u64) {
    let Ok(metrics) = Metrics::new() else { return };
    let hub = Hub::new(1024);
    let recipients: Vec<Id> = (1..=members).map(Id).collect();
    let mut registrations: Vec<_> = recipients.iter().map(|&u| hub.register(u)).collect();
    let event = Event {
        pos: 1,
        recipients: Arc::from(recipients),
        frame: ServerFrame::Synced { pos: Id(1) },
    };
    let text = Utf8Bytes::from(
        r#"{"type":"message","pos":"1","conv":"7","id":"9","seq":1,"sender":"3","text":"hello","ts":0}"#,
    );
    bencher
        .counter(divan::counter::ItemsCount::new(members))
        .bench_local(|| {
            let delivered = hub.deliver(&event, &text, true, &metrics);
            for registration in &mut registrations {
                while registration.outbox.pop().is_some() {}
            }
            delivered
        });
}
