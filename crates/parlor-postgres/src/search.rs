//! Full-text search with the core's multilingual tokenizer.
//!
//! PostgreSQL's own parsers split words by their rules and its configurations stem or
//! fold by language; neither knows CJK. So the node does all of it with
//! `parlor_core::search` — words, CJK bigrams, case and diacritic folding — and hands
//! PostgreSQL ready lexemes: the `tsvector` is written as a literal (`'tok':1 'tok':2 …`,
//! each lexeme quoted, positions kept for phrases) and cast with `::tsvector`, and the
//! `tsquery` likewise (`::tsquery`, no `to_tsquery` normalization). User text only ever
//! appears inside quoted, escaped lexemes, so no query can break the syntax.
//!
//! Candidates are the newest `search_candidates` matches in the viewer's visible
//! conversations (current ones, and former ones up to `left_seq`) under the filters,
//! found through the GIN index; they are ranked in Rust with the core's relevance and
//! get the core's snippets and highlights, exactly as the embedded store does. The
//! vector is written in the same transaction as the message, so search is consistent
//! with commits; edits rewrite it and deletes clear it.

use crate::codec::*;
use crate::conversations::refusal;
use crate::error::{db_err, DbResult};
use crate::Core;
use parlor_core::error::{Error, Result};
use parlor_core::model::*;
use parlor_core::search::{fold_token, index_text, rank, term_phrase};
use parlor_proto::rest::{MessageView, SearchResults};
use parlor_proto::ErrorCode;
use tokio_postgres::error::SqlState;

/// PostgreSQL refuses lexemes of 2 KiB or more; such "words" are not worth finding.
const MAX_LEXEME_BYTES: usize = 2046;
/// Positions above this are stored as this (PostgreSQL's limit).
const MAX_POSITION: usize = 16_383;

fn quote(lexeme: &str, out: &mut String) {
    out.push('\'');
    for c in lexeme.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

/// The `tsvector` literal of a message text.
pub fn tsvector(text: &str) -> String {
    let mut out = String::new();
    for (i, token) in index_text(text).split(' ').enumerate() {
        if token.is_empty() {
            continue;
        }
        let lexeme = fold_token(token);
        if lexeme.len() > MAX_LEXEME_BYTES {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        quote(&lexeme, &mut out);
        out.push(':');
        out.push_str(&(i + 1).min(MAX_POSITION).to_string());
    }
    out
}

/// The `tsquery` literal of a parsed query: every term (AND), each the phrase of its
/// tokens (`<->`), a prefix term's last token with `:*`.
pub fn tsquery(query: &parlor_core::search::Query) -> Option<String> {
    let parts: Vec<String> = query
        .terms
        .iter()
        .filter_map(|term| term_phrase(term))
        .map(|(tokens, prefix)| {
            let mut phrase = String::new();
            let last = tokens.len().saturating_sub(1);
            for (i, token) in tokens.iter().enumerate() {
                if i > 0 {
                    phrase.push_str(" <-> ");
                }
                quote(&fold_token(token), &mut phrase);
                if prefix && i == last {
                    phrase.push_str(":*");
                }
            }
            if tokens.len() > 1 {
                format!("({phrase})")
            } else {
                phrase
            }
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(" & "))
}

pub async fn search(core: &Core, viewer: UserId, query: SearchQuery) -> Result<SearchResults> {
    let empty = SearchResults {
        results: Vec::new(),
        next_cursor: None,
    };
    let Some(tsquery) = tsquery(&query.query) else {
        return Ok(empty);
    };
    if tsquery.len() > 4 * parlor_core::search::MAX_QUERY_BYTES + 256 {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "search query is too long",
        ));
    }
    let client = core.db.replica().await?;
    // Conversations the viewer may search, with the last seq they may read.
    let stmt = client
        .prepare_cached("SELECT conv_id, left_seq FROM members WHERE user_id = $1")
        .await
        .db()?;
    let mut visible: Vec<(i64, i64)> = client
        .query(&stmt, &[&sql_id(viewer)])
        .await
        .db()?
        .iter()
        .map(|r| (r.get(0), r.get::<_, Option<i64>>(1).unwrap_or(i64::MAX)))
        .collect();
    if let Some(conv) = query.conv {
        visible.retain(|(c, _)| *c == sql_id(conv));
        if visible.is_empty() {
            return Err(refusal(&client, conv).await?);
        }
    }
    if visible.is_empty() {
        return Ok(empty);
    }
    let (convs, bounds): (Vec<i64>, Vec<i64>) = visible.into_iter().unzip();
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {M_MESSAGE_COLUMNS}
             FROM messages m JOIN unnest($1::bigint[], $2::bigint[]) AS v(conv_id, max_seq)
               ON m.conv_id = v.conv_id
             WHERE m.conv_id = ANY($1) AND m.seq <= v.max_seq
               AND m.tsv @@ $3::text::tsquery AND NOT m.deleted
               AND ($4::bigint IS NULL OR m.sender = $4)
               AND ($5::bigint IS NULL OR m.created_at >= $5)
               AND ($6::bigint IS NULL OR m.created_at <= $6)
             ORDER BY m.id DESC LIMIT $7"
        ))
        .await
        .db()?;
    let rows = client
        .query(
            &stmt,
            &[
                &convs,
                &bounds,
                &tsquery,
                &query.sender.map(sql_id),
                &query.from,
                &query.to,
                &i64::from(core.search_candidates.max(1)),
            ],
        )
        .await
        .map_err(|e| {
            // The literal is built so that this cannot happen; if it does, the query
            // was refused, not the store.
            if matches!(e.code(), Some(c) if *c == SqlState::SYNTAX_ERROR || *c == SqlState::INVALID_TEXT_REPRESENTATION)
            {
                tracing::warn!(error = %e, "search query refused by postgres");
                Error::new(ErrorCode::BadRequest, "invalid search query")
            } else {
                db_err(e)
            }
        })?;
    let found: Vec<MessageView> = rows.iter().map(|r| message_view(r, 0)).collect();
    Ok(rank(found, &query))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_fold_and_quote() {
        assert_eq!(tsvector("Café it's"), "'cafe':1 'it':2 's':3");
        assert_eq!(tsvector("北京"), "'北京':1 '京':2");
        assert_eq!(tsvector("  "), "");
    }

    #[test]
    fn queries_quote_every_lexeme() {
        let q = parlor_core::search::parse_query("x' OR 1=1 -- deplo* 東京都 京").unwrap_or_else(
            |_| parlor_core::search::Query {
                terms: vec![],
                fts: String::new(),
            },
        );
        assert_eq!(
            tsquery(&q).as_deref(),
            Some("'x' & 'or' & ('1' <-> '1') & 'deplo':* & ('東京' <-> '京都') & '京':*")
        );
    }
}
