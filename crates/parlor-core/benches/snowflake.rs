//! Id generation: one per message, on the writer thread.

use parlor_core::snowflake::{Snowflake, EPOCH_MS};

fn main() {
    divan::main();
}

#[divan::bench]
fn next_id(bencher: divan::Bencher) {
    let mut ids = Snowflake::new(7);
    let mut now = EPOCH_MS + 1_000;
    bencher.bench_local(|| {
        now += 1;
        ids.next_id(divan::black_box(now / 64))
    });
}
