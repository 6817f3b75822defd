//! Search reads: which conversations a caller may search, the newest visible matches in
//! the index (`search_index.rs`), and their ranking on the store's current rows.

use super::reader::{conversation_info, db_err, messages_at};
use parlor_core::error::{Error, Result};
use parlor_core::model::*;
use parlor_proto::rest::{MessageView, SearchResults};
use rusqlite::{params, Connection};

/// Conversations the viewer may search, with the last `seq` they may read (`None`: all).
pub fn searchable(
    conn: &Connection,
    viewer: UserId,
    only: Option<ConvId>,
) -> Result<Vec<(i64, Option<u64>)>> {
    let mut stmt = conn
        .prepare_cached("SELECT conv_id, left_seq FROM members WHERE user_id = ?1")
        .map_err(db_err)?;
    let all = stmt
        .query_map([viewer.0 as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<i64>>(1)?.map(|s| s as u64),
            ))
        })
        .map_err(db_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_err)?;
    match only {
        None => Ok(all),
        Some(conv) => {
            let visible: Vec<_> = all
                .into_iter()
                .filter(|(c, _)| *c == conv.0 as i64)
                .collect();
            if visible.is_empty() {
                return Err(match conversation_info(conn, conv)? {
                    Some(_) => Error::not_member(),
                    None => Error::not_found("conversation not found"),
                });
            }
            Ok(visible)
        }
    }
}

/// Conversations a search restricts itself to inside the index; beyond, it filters.
const MAX_SCOPE_TERMS: usize = 256;

/// How many matches, per candidate wanted, a search walks in the index's newest-first
/// order (checking each one's conversation) before it restricts the rest of the walk to
/// the caller's conversations' `scope` tokens instead.
const WALK_PER_CANDIDATE: usize = 8;

/// The newest `candidates` matches of `query` the viewer may read, as (conversation,
/// seq), newest first.
///
/// Two ways to find them: walk every match newest first and skip other conversations'
/// (cheap while most matches are visible), or let FTS5 intersect the match with the OR of
/// the caller's conversation tokens (its cost grows with the number of conversations and
/// their sizes, not with what the caller cannot see). On a million messages with the
/// caller in a quarter of them the walk cost 1.4 ms and the intersection 4.1; with the
/// caller in 1% it was the other way round, 8.0 against 0.7 ms. So a search walks first,
/// and when the matches it has seen are mostly invisible (or it has walked
/// [`WALK_PER_CANDIDATE`] per candidate) it finishes with the intersection, from the
/// row key where the walk stopped: the same matches either way.
fn newest_visible(
    index: &Connection,
    visible: &[(i64, Option<u64>)],
    query: &SearchQuery,
    candidates: usize,
) -> Result<Vec<(i64, u64)>> {
    let bounds: std::collections::HashMap<i64, Option<u64>> = visible.iter().copied().collect();
    let readable = |conv: i64, seq: u64| match bounds.get(&conv) {
        Some(Some(left_seq)) => seq <= *left_seq,
        Some(None) => true,
        None => false,
    };
    let scoped = visible.len() <= MAX_SCOPE_TERMS;
    let filters =
        "AND (?2 IS NULL OR sender = ?2) AND (?3 IS NULL OR ts >= ?3) AND (?4 IS NULL OR ts <= ?4)";
    let (sender, from, to) = (query.sender.map(|u| u.0 as i64), query.from, query.to);
    let mut wanted = Vec::new();
    let mut walk = index
        .prepare_cached(&format!(
            "SELECT rowid, conv_id, seq FROM message_fts WHERE message_fts MATCH ?1 {filters} ORDER BY rowid"
        ))
        .map_err(db_err)?;
    let mut rows = walk
        .query(params![
            format!("body : ({})", query.query.fts),
            sender,
            from,
            to
        ])
        .map_err(db_err)?;
    let budget = candidates * WALK_PER_CANDIDATE;
    let mut walked = 0usize;
    let mut last_key = None;
    while wanted.len() < candidates {
        // A quarter of the budget in, fewer than one visible match in eight means the
        // rest of the walk would cost more than the intersection.
        if scoped
            && (walked >= budget
                || (walked >= budget / 4 && wanted.len() * WALK_PER_CANDIDATE < walked))
        {
            break;
        }
        let Some(row) = rows.next().map_err(db_err)? else {
            return Ok(wanted);
        };
        let (key, conv, seq): (i64, i64, i64) = (
            row.get(0).map_err(db_err)?,
            row.get(1).map_err(db_err)?,
            row.get(2).map_err(db_err)?,
        );
        walked += 1;
        last_key = Some(key);
        if readable(conv, seq as u64) {
            wanted.push((conv, seq as u64));
        }
    }
    drop(rows);
    if wanted.len() >= candidates {
        return Ok(wanted);
    }
    let scopes = visible
        .iter()
        .map(|(c, _)| format!("\"{}\"", super::search_index::conversation_token(*c as u64)))
        .collect::<Vec<_>>()
        .join(" OR ");
    let mut rest = index
        .prepare_cached(&format!(
            "SELECT conv_id, seq FROM message_fts WHERE message_fts MATCH ?1 {filters}
               AND rowid > ?5 ORDER BY rowid LIMIT ?6"
        ))
        .map_err(db_err)?;
    let rows = rest
        .query_map(
            params![
                format!("body : ({}) AND scope : ({scopes})", query.query.fts),
                sender,
                from,
                to,
                last_key.unwrap_or(i64::MIN),
                (candidates - wanted.len()) as i64
            ],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64)),
        )
        .map_err(db_err)?;
    for row in rows {
        let (conv, seq) = row.map_err(db_err)?;
        if readable(conv, seq) {
            wanted.push((conv, seq));
        }
    }
    Ok(wanted)
}

/// Runs the ranked query on the index, then reads the hits' current rows from the store.
pub fn search(
    main: &Connection,
    index: &Connection,
    visible: &[(i64, Option<u64>)],
    query: &SearchQuery,
    candidates: u32,
) -> Result<SearchResults> {
    // The newest `candidates` visible matches (the index's row keys are negated ids,
    // `search_index::index_rowid`); ranking every match of a common word over
    // millions of messages would be unbounded work. (FTS5's own bm25() is not used: it
    // computes each phrase's document frequency over the whole index on every query,
    // conversation tokens included, which cost more than the rest of the search.)
    let wanted = newest_visible(index, visible, query, candidates as usize)?;
    let found: Vec<MessageView> = messages_at(main, &wanted)?
        .into_iter()
        .flatten()
        .filter(|m| !m.deleted)
        .collect();
    Ok(parlor_core::search::rank(found, query))
}
