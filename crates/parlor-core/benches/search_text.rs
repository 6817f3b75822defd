//! Search text handling: `index_text` runs on the search indexer's thread for every
//! message, and tokenizing runs again for each candidate a search ranks.

use parlor_core::search;

fn main() {
    divan::main();
}

/// About what the load generator sends: 64 bytes of Latin words.
const LATIN: &str = "deploy the release branch after lunch, then check 12 dashboards ok";
const MIXED: &str = "会議は東京都で14時から。Agenda: café review, déploiement, 서울 팀";

#[divan::bench(args = [LATIN, MIXED])]
fn index_text(text: &str) -> String {
    search::index_text(divan::black_box(text))
}

#[divan::bench(args = [LATIN, MIXED])]
fn relevance(text: &str) -> f64 {
    let terms = ["deploy".to_string(), "caf*".to_string()];
    search::relevance(divan::black_box(text), &terms)
}
