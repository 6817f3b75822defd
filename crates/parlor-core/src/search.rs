//! Text handling for full-text search, shared by every store adapter so that all of them
//! find the same messages.
//!
//! Word-based tokenizers split Latin text on spaces, which fails for Chinese and Japanese
//! (no spaces) and poorly for Korean. Runs of CJK characters are therefore indexed as
//! overlapping bigrams ("東京都" → "東京 京都"), the approach of Lucene's CJK analyzer: a
//! query of two or more CJK characters becomes the phrase of its bigrams, so it matches
//! exactly where those characters are adjacent. Everything else is left to the engine's
//! Unicode word tokenizer with case and diacritic folding ("Café" finds "cafe").

use crate::error::{Error, Result};
use parlor_proto::ErrorCode;
use unicode_normalization::char::decompose_canonical;

/// Longest accepted query, in bytes.
pub const MAX_QUERY_BYTES: usize = 256;
/// Terms per query; more are refused rather than silently dropped.
pub const MAX_QUERY_TERMS: usize = 16;

pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x31F0..=0x31FF    // Katakana phonetic extensions
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0x1100..=0x11FF    // Hangul jamo
        | 0x3130..=0x318F    // Hangul compatibility jamo
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0x20000..=0x2A6DF) // CJK extension B
}

/// Splits text into tokens the way search sees it: words of non-CJK text, and for each
/// CJK run its bigrams followed by its last character alone (a run of one character is
/// just that character). The lone last character lets a one-character query find a
/// character that ends a run ("京" in "北京"), which no bigram starts with.
///
/// For a query term (`query`), a run that ends the term gets no lone last character: in
/// the text the run may go on ("東京" must find "東京都", indexed "東京 京都 都").
///
/// Every token is a slice of `text` (a word, or a bigram of two adjacent characters), so
/// nothing is allocated here: this runs for every message indexed and for every
/// candidate a search ranks, and building each token as its own `String` made it the
/// search indexer's largest cost after FTS5 itself.
fn for_each_token<'a>(text: &'a str, query: bool, mut emit: impl FnMut(&'a str)) {
    let mut word: Option<usize> = None;
    // The CJK run being read: how many characters, and where its last one lies.
    let mut run = 0usize;
    let mut last = (0usize, 0usize);
    for (at, c) in text.char_indices() {
        let end = at + c.len_utf8();
        if is_cjk(c) {
            if let Some(start) = word.take() {
                emit(&text[start..at]);
            }
            if run > 0 {
                emit(&text[last.0..end]);
            }
            run += 1;
            last = (at, end);
        } else {
            end_run(text, &mut run, last, true, &mut emit);
            if c.is_alphanumeric() {
                word.get_or_insert(at);
            } else if let Some(start) = word.take() {
                emit(&text[start..at]);
            }
        }
    }
    end_run(text, &mut run, last, !query, &mut emit);
    if let Some(start) = word {
        emit(&text[start..]);
    }
}

/// Ends a CJK run of `run` characters whose last one is `text[last.0..last.1]`: a run
/// of one is that character; a longer one (its bigrams already out) adds its last
/// character alone if `alone`.
fn end_run<'a>(
    text: &'a str,
    run: &mut usize,
    last: (usize, usize),
    alone: bool,
    emit: &mut impl FnMut(&'a str),
) {
    if *run == 1 || (*run > 1 && alone) {
        emit(&text[last.0..last.1]);
    }
    *run = 0;
}

fn tokens(text: &str, query: bool) -> Vec<&str> {
    let mut out = Vec::new();
    for_each_token(text, query, |t| out.push(t));
    out
}

/// The text to put in the index for a message.
pub fn index_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 2);
    for_each_token(text, false, |t| {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(t);
    });
    out
}

/// A parsed search query: the original terms (for highlighting) and an FTS5 MATCH
/// expression (for the engine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub terms: Vec<String>,
    pub fts: String,
}

/// Every whitespace-separated term must match (AND). A term ending in `*` matches as a
/// prefix (`deplo*` finds "deploy" and "deployment"); others match whole words only,
/// because expanding a short prefix means merging the postings of every word that starts
/// with it, which made common searches tens of times slower. CJK terms become phrases of
/// their bigrams; a single CJK character always matches as a prefix of its bigrams.
pub fn parse_query(raw: &str) -> Result<Query> {
    let raw = raw.trim();
    if raw.len() > MAX_QUERY_BYTES {
        return Err(Error::new(
            ErrorCode::BadRequest,
            format!("search query is longer than {MAX_QUERY_BYTES} bytes"),
        ));
    }
    let terms: Vec<String> = raw
        .split_whitespace()
        .filter(|t| t.chars().any(char::is_alphanumeric))
        .map(str::to_string)
        .collect();
    if terms.is_empty() {
        return Err(Error::new(ErrorCode::BadRequest, "search query is empty"));
    }
    if terms.len() > MAX_QUERY_TERMS {
        return Err(Error::new(
            ErrorCode::BadRequest,
            format!("search query has more than {MAX_QUERY_TERMS} terms"),
        ));
    }
    let parts: Vec<String> = terms
        .iter()
        .filter_map(|term| {
            let toks = tokens(term, true);
            if toks.is_empty() {
                return None;
            }
            let phrase = toks
                .iter()
                .map(|t| t.replace('"', "\"\""))
                .collect::<Vec<_>>()
                .join(" ");
            let single_cjk =
                toks.len() == 1 && toks[0].chars().count() == 1 && toks[0].chars().all(is_cjk);
            let prefix = term.ends_with('*') || single_cjk;
            Some(if prefix {
                format!("\"{phrase}\"*")
            } else {
                format!("\"{phrase}\"")
            })
        })
        .collect();
    Ok(Query {
        terms,
        fts: parts.join(" AND "),
    })
}

/// Base character for matching: lower-cased, diacritics removed.
fn fold(c: char) -> char {
    let mut base = c;
    let mut first = true;
    decompose_canonical(c, |d| {
        if first {
            base = d;
            first = false;
        }
    });
    base.to_lowercase().next().unwrap_or(base)
}

/// How well `text` matches `terms`, for ranking results that all contain every term: the
/// term-frequency and length parts of BM25 (its IDF part is the same for every such
/// result). A term ending in `*` counts words that start with it.
pub fn relevance(text: &str, terms: &[String]) -> f64 {
    const K1: f64 = 1.2;
    const B: f64 = 0.75;
    /// Typical words per chat message.
    const AVERAGE_LEN: f64 = 12.0;
    let folded = |s: &str| s.chars().map(fold).collect::<String>();
    let words: Vec<String> = tokens(text, false).iter().map(|t| folded(t)).collect();
    let norm = K1 * (1.0 - B + B * words.len() as f64 / AVERAGE_LEN);
    terms
        .iter()
        .filter_map(|term| {
            let prefix = term.ends_with('*');
            let first = folded(tokens(term, true).first()?);
            let tf = words
                .iter()
                .filter(|w| {
                    if prefix {
                        w.starts_with(&first)
                    } else {
                        **w == first
                    }
                })
                .count() as f64;
            Some(tf * (K1 + 1.0) / (tf + norm))
        })
        .sum()
}

/// A short excerpt of `text` around the first match, with the matched ranges as
/// character offsets into the excerpt (so clients highlight without parsing markup).
pub fn snippet(text: &str, terms: &[String], max_chars: usize) -> (String, Vec<(usize, usize)>) {
    let chars: Vec<char> = text.chars().collect();
    let folded: Vec<char> = chars.iter().map(|&c| fold(c)).collect();
    let mut ranges = Vec::new();
    for term in terms {
        let needle: Vec<char> = term
            .chars()
            .filter(|c| c.is_alphanumeric())
            .map(fold)
            .collect();
        if needle.is_empty() || needle.len() > folded.len() {
            continue;
        }
        let mut i = 0;
        while i + needle.len() <= folded.len() {
            if folded[i..i + needle.len()] == needle[..] {
                ranges.push((i, i + needle.len()));
                i += needle.len();
            } else {
                i += 1;
            }
        }
    }
    ranges.sort_unstable();
    let first = ranges.first().map_or(0, |r| r.0);
    let start = if chars.len() <= max_chars {
        0
    } else {
        first
            .saturating_sub(max_chars / 3)
            .min(chars.len() - max_chars)
    };
    let end = (start + max_chars).min(chars.len());
    let excerpt: String = chars[start..end].iter().collect();
    let inside = ranges
        .into_iter()
        .filter(|&(s, e)| s >= start && e <= end)
        .map(|(s, e)| (s - start, e - start))
        .collect();
    (excerpt, inside)
}

/// Lower-cases `token` and removes its diacritics, as matching does ("Café" → "cafe").
/// For adapters whose engine does no folding of its own.
pub fn fold_token(token: &str) -> String {
    token.chars().map(fold).collect()
}

/// One term of a parsed [`Query`] as [`parse_query`] matches it: the tokens that must
/// appear next to each other (a phrase), and whether the last one matches as a prefix.
/// `None` for a term with no token. For adapters that build their engine's own query.
pub fn term_phrase(term: &str) -> Option<(Vec<String>, bool)> {
    let toks = tokens(term, true);
    if toks.is_empty() {
        return None;
    }
    let single_cjk = toks.len() == 1 && toks[0].chars().count() == 1 && toks[0].chars().all(is_cjk);
    let prefix = term.ends_with('*') || single_cjk;
    Some((toks.into_iter().map(str::to_string).collect(), prefix))
}

/// One page of ranked results from the newest visible matches, `found` newest first: most
/// relevant first, and since the sort is stable, ties keep the newest on top. Every store
/// adapter ranks through this, so all of them order the same matches the same way.
pub fn rank(
    found: Vec<parlor_proto::rest::MessageView>,
    query: &crate::model::SearchQuery,
) -> parlor_proto::rest::SearchResults {
    let scores: Vec<f64> = found
        .iter()
        .map(|m| relevance(&m.text, &query.query.terms))
        .collect();
    let mut order: Vec<usize> = (0..found.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let more = order.len() > query.offset as usize + query.limit as usize;
    let mut slots: Vec<Option<_>> = found.into_iter().map(Some).collect();
    let results = order
        .into_iter()
        .skip(query.offset as usize)
        .take(query.limit as usize)
        .filter_map(|i| slots[i].take())
        .map(|message| {
            let (snippet, highlights) = snippet(&message.text, &query.query.terms, 160);
            parlor_proto::rest::SearchHit {
                message,
                snippet,
                highlights,
            }
        })
        .collect();
    parlor_proto::rest::SearchResults {
        next_cursor: more.then(|| (query.offset + query.limit).to_string()),
        results,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cjk_runs_become_bigrams() {
        assert_eq!(
            index_text("我在東京都。Hello wörld"),
            "我在 在東 東京 京都 都 Hello wörld"
        );
        assert_eq!(index_text("서울 날씨"), "서울 울 날씨 씨");
        assert_eq!(index_text("北京"), "北京 京");
        assert_eq!(index_text("a東b"), "a 東 b");
        // A query term keeps the lone last character only where its run ends inside it.
        let q = parse_query("東京 北京abc 京").unwrap_or_else(|_| Query {
            terms: vec![],
            fts: String::new(),
        });
        assert_eq!(q.fts, "\"東京\" AND \"北京 京 abc\" AND \"京\"*");
    }

    /// The rules of `for_each_token` spelled out one character at a time, with a string
    /// per token: what the slicing version must agree with.
    fn reference_tokens(text: &str, query: bool) -> Vec<String> {
        let mut out = Vec::new();
        let mut word = String::new();
        let mut run: Vec<char> = Vec::new();
        let end_run = |run: &mut Vec<char>, out: &mut Vec<String>, alone: bool| {
            if run.len() == 1 {
                out.push(run[0].to_string());
            } else if run.len() > 1 {
                out.extend(run.windows(2).map(|w| w.iter().collect::<String>()));
                if alone {
                    out.push(run[run.len() - 1].to_string());
                }
            }
            run.clear();
        };
        for c in text.chars() {
            if is_cjk(c) {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                run.push(c);
            } else {
                end_run(&mut run, &mut out, true);
                if c.is_alphanumeric() {
                    word.push(c);
                } else if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
        }
        end_run(&mut run, &mut out, !query);
        if !word.is_empty() {
            out.push(word);
        }
        out
    }

    #[test]
    fn tokens_agree_with_the_rules_on_mixed_scripts() {
        let pieces = [
            "Hello", "wörld", "東京", "都", "서울", "。", " ", ",", "a", "1", "Café", "e\u{301}",
            "-", "北", "ß", "Ⅻ", "٣", "\u{200b}", "の", "ｶ", "𠀀", "  ", "x_y", "🙂",
        ];
        let mut seed = 0x2545_f491_u64;
        for _ in 0..5000 {
            let mut text = String::new();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            for _ in 0..(seed >> 60) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            for query in [false, true] {
                let expected = reference_tokens(&text, query);
                assert_eq!(tokens(&text, query), expected, "{text:?} (query: {query})");
            }
            assert_eq!(index_text(&text), reference_tokens(&text, false).join(" "));
        }
    }

    #[test]
    fn queries_are_quoted_and_prefixed() {
        let q = parse_query("  東京  café ").unwrap_or_else(|_| Query {
            terms: vec![],
            fts: String::new(),
        });
        assert_eq!(q.fts, "\"東京\" AND \"café\"");
        let prefix = parse_query("deplo* 京").unwrap_or_else(|_| Query {
            terms: vec![],
            fts: String::new(),
        });
        assert_eq!(prefix.fts, "\"deplo\"* AND \"京\"*");
        let injection = parse_query("x\" OR 1=1 --").unwrap_or_else(|_| Query {
            terms: vec![],
            fts: String::new(),
        });
        assert_eq!(injection.fts, "\"x\" AND \"OR\" AND \"1 1\"");
        assert!(parse_query("   ").is_err());
        assert!(parse_query("!!! ???").is_err());
        assert!(parse_query(&"a".repeat(300)).is_err());
    }

    #[test]
    fn relevance_prefers_more_and_denser_matches() {
        let terms = vec!["deploy".to_string()];
        let once = relevance("we deploy on friday after the review of the branch", &terms);
        let twice = relevance("deploy deploy", &terms);
        let short = relevance("Deploy now", &terms);
        assert!(twice > short && short > once && once > 0.0);
        assert_eq!(relevance("nothing here", &terms), 0.0);
        assert!(relevance("déployer", &["deploy*".to_string()]) > 0.0);
    }

    #[test]
    fn snippets_highlight_without_diacritics() {
        let (text, ranges) = snippet("Rendez-vous au Café de Flore", &["cafe".to_string()], 100);
        assert_eq!(text, "Rendez-vous au Café de Flore");
        assert_eq!(ranges, vec![(15, 19)]);
        let (text, ranges) = snippet("明日は東京都に行きます", &["東京".to_string()], 5);
        assert_eq!(ranges.len(), 1);
        assert!(text.contains("東京"));
    }
}
