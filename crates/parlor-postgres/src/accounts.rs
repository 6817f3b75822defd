//! Users and device sessions. None of these carry a position; each is one statement or
//! a short transaction on the primary.

use crate::codec::{id_at, sql_id, user_view};
use crate::error::DbResult;
use crate::{now_ms, Core};
use parlor_core::error::{Error, Result};
use parlor_core::model::*;
use parlor_proto::rest::UserView;
use parlor_proto::{ErrorCode, Id};

pub async fn create_user(core: &Core, username: &str, password_hash: &str) -> Result<UserView> {
    let id = core.ids.next_id()?;
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO users (id, username, password_hash, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (username) DO NOTHING",
        )
        .await
        .db()?;
    let inserted = client
        .execute(&stmt, &[&(id as i64), &username, &password_hash, &now_ms()])
        .await
        .db()?;
    if inserted == 0 {
        return Err(Error::new(
            ErrorCode::UsernameTaken,
            "username is already taken",
        ));
    }
    Ok(UserView {
        id: Id(id),
        username: username.to_owned(),
    })
}

pub async fn credentials(core: &Core, username: &str) -> Result<Option<Credentials>> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached("SELECT id, username, password_hash FROM users WHERE username = $1")
        .await
        .db()?;
    let row = client.query_opt(&stmt, &[&username]).await.db()?;
    Ok(row.map(|r| Credentials {
        user: id_at(&r, 0),
        username: r.get(1),
        password_hash: r.get(2),
    }))
}

pub async fn user_by_name(core: &Core, username: &str) -> Result<Option<UserView>> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached("SELECT id, username FROM users WHERE username = $1")
        .await
        .db()?;
    let row = client.query_opt(&stmt, &[&username]).await.db()?;
    Ok(row.as_ref().map(user_view))
}

pub async fn user(core: &Core, id: UserId) -> Result<Option<UserView>> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached("SELECT id, username FROM users WHERE id = $1")
        .await
        .db()?;
    let row = client.query_opt(&stmt, &[&sql_id(id)]).await.db()?;
    Ok(row.as_ref().map(user_view))
}

pub async fn create_session(
    core: &Core,
    user: UserId,
    device_name: &str,
    refresh_hash: [u8; 32],
    expires_at_ms: i64,
) -> Result<DeviceId> {
    let id = core.ids.next_id()?;
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO sessions (id, user_id, device_name, refresh_hash, expires_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await
        .db()?;
    client
        .execute(
            &stmt,
            &[
                &(id as i64),
                &sql_id(user),
                &device_name,
                &&refresh_hash[..],
                &expires_at_ms,
                &now_ms(),
            ],
        )
        .await
        .db()?;
    Ok(Id(id))
}

/// Single use: the row is locked, so of two concurrent rotations of one token the second
/// no longer finds it as current and counts as a reuse, which revokes the session.
pub async fn rotate_refresh(
    core: &Core,
    presented: [u8; 32],
    next: [u8; 32],
    expires_at_ms: i64,
) -> Result<RefreshOutcome> {
    let mut client = core.db.primary().await?;
    let tx = client.transaction().await.db()?;
    let current = tx
        .query_opt(
            "SELECT id, user_id, expires_at, revoked FROM sessions WHERE refresh_hash = $1 FOR UPDATE",
            &[&&presented[..]],
        )
        .await
        .db()?;
    let outcome = if let Some(row) = current {
        let (id, user, expires, revoked): (i64, i64, i64, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if revoked || expires <= now_ms() {
            RefreshOutcome::Invalid
        } else {
            tx.execute(
                "UPDATE sessions SET previous_hash = refresh_hash, refresh_hash = $2, expires_at = $3 WHERE id = $1",
                &[&id, &&next[..], &expires_at_ms],
            )
            .await
            .db()?;
            RefreshOutcome::Rotated {
                user: Id(user as u64),
                device: Id(id as u64),
            }
        }
    } else {
        let reused = tx
            .query_opt(
                "SELECT id FROM sessions WHERE previous_hash = $1",
                &[&&presented[..]],
            )
            .await
            .db()?;
        match reused {
            Some(row) => {
                let id: i64 = row.get(0);
                tx.execute("UPDATE sessions SET revoked = true WHERE id = $1", &[&id])
                    .await
                    .db()?;
                RefreshOutcome::Reused {
                    device: Id(id as u64),
                }
            }
            None => RefreshOutcome::Invalid,
        }
    };
    tx.commit().await.db()?;
    Ok(outcome)
}

pub async fn revoke_session(core: &Core, device: DeviceId) -> Result<()> {
    let client = core.db.primary().await?;
    client
        .execute(
            "UPDATE sessions SET revoked = true WHERE id = $1",
            &[&sql_id(device)],
        )
        .await
        .db()?;
    Ok(())
}

/// A primary-key lookup on every authenticated request: cheap, and always current
/// across nodes (a revocation on one node takes effect on all at once).
pub async fn session_revoked(core: &Core, device: DeviceId) -> Result<bool> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached("SELECT revoked FROM sessions WHERE id = $1")
        .await
        .db()?;
    let row = client.query_opt(&stmt, &[&sql_id(device)]).await.db()?;
    Ok(row.is_some_and(|r| r.get::<_, bool>(0)))
}

pub async fn set_last_seen(core: &Core, user: UserId, at_ms: i64) -> Result<()> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached("UPDATE users SET last_seen = $2 WHERE id = $1")
        .await
        .db()?;
    client.execute(&stmt, &[&sql_id(user), &at_ms]).await.db()?;
    Ok(())
}

pub async fn last_seen(core: &Core, user: UserId) -> Result<Option<i64>> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached("SELECT last_seen FROM users WHERE id = $1")
        .await
        .db()?;
    let row = client.query_opt(&stmt, &[&sql_id(user)]).await.db()?;
    Ok(row.and_then(|r| r.get::<_, Option<i64>>(0)))
}
