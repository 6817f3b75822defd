//! Conversations and membership: creation, changes checked with the core's membership
//! rules under the conversation's row lock, and the reads that list them.
//!
//! Every change that carries a position follows the store's commit protocol (crate
//! docs): lock the conversation row, check, take positions last, write, commit, publish.

use crate::codec::*;
use crate::error::DbResult;
use crate::{event_log, now_ms, Core};
use deadpool_postgres::Transaction;
use parlor_core::error::{Error, Result};
use parlor_core::model::*;
use parlor_core::rules::membership;
use parlor_proto::rest::{
    ConversationDetail, ConversationInfo, ConversationKind, ConversationSummary, MemberView, Role,
};
use parlor_proto::ws::{MemberChange, MemberEvent, ServerFrame};
use parlor_proto::Id;
use std::collections::HashMap;
use std::sync::Arc;

/// A conversation row, locked for the rest of the transaction.
pub struct Locked {
    pub info: ConversationInfo,
    pub last_seq: u64,
}

pub async fn lock(tx: &Transaction<'_>, conv: ConvId) -> Result<Option<Locked>> {
    let stmt = tx
        .prepare_cached(
            "SELECT kind, name, created_at, last_seq FROM conversations WHERE id = $1 FOR UPDATE",
        )
        .await
        .db()?;
    let row = tx.query_opt(&stmt, &[&sql_id(conv)]).await.db()?;
    Ok(row.map(|r| Locked {
        info: conversation_info(conv, &r, 0),
        last_seq: r.get::<_, i64>(3) as u64,
    }))
}

/// A current member as a membership change needs it.
#[derive(Clone, Copy)]
pub struct Member {
    pub user: UserId,
    pub role: Role,
}

/// Current members, in the order of who takes over ownership: owner, admins, members,
/// each by seniority.
pub async fn current_members(tx: &Transaction<'_>, conv: ConvId) -> Result<Vec<Member>> {
    let stmt = tx
        .prepare_cached(
            "SELECT user_id, role FROM members
             WHERE conv_id = $1 AND left_pos IS NULL ORDER BY role, joined_pos",
        )
        .await
        .db()?;
    let rows = tx.query(&stmt, &[&sql_id(conv)]).await.db()?;
    Ok(rows
        .iter()
        .map(|r| Member {
            user: id_at(r, 0),
            role: role_from_code(r.get(1)),
        })
        .collect())
}

fn sorted(users: impl Iterator<Item = UserId>) -> Arc<[UserId]> {
    let mut v: Vec<UserId> = users.collect();
    v.sort_unstable();
    v.dedup();
    v.into()
}

/// Membership events of one transaction in one conversation, written together once
/// positions are known.
struct Changes {
    info: ConversationInfo,
    ts: i64,
    events: Vec<Event>,
}

impl Changes {
    fn new(info: &ConversationInfo, ts: i64) -> Self {
        Changes {
            info: info.clone(),
            ts,
            events: Vec::new(),
        }
    }

    fn push(
        &mut self,
        pos: u64,
        user: UserId,
        change: MemberChange,
        actor: UserId,
        role: Option<Role>,
        recipients: Arc<[UserId]>,
    ) {
        let (info, ts) = (&self.info, self.ts);
        self.events.push(Event {
            pos,
            recipients,
            frame: ServerFrame::Member(MemberEvent {
                pos: Id(pos),
                conv: info.id,
                user,
                change,
                by: actor,
                ts,
                role,
                conversation: info.clone(),
            }),
        });
    }

    async fn write(&self, tx: &Transaction<'_>) -> Result<()> {
        let (mut pos, mut conv, mut user, mut change, mut actor, mut role, mut at) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for event in &self.events {
            if let ServerFrame::Member(e) = &event.frame {
                pos.push(clamp(event.pos));
                conv.push(sql_id(e.conv));
                user.push(sql_id(e.user));
                change.push(change_code(e.change));
                actor.push(sql_id(e.by));
                role.push(e.role.map(role_code));
                at.push(e.ts);
            }
        }
        let stmt = tx
            .prepare_cached(
                "INSERT INTO member_events (pos, conv_id, user_id, change, actor, role, created_at)
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::smallint[],
                                      $5::bigint[], $6::smallint[], $7::bigint[])",
            )
            .await
            .db()?;
        tx.execute(&stmt, &[&pos, &conv, &user, &change, &actor, &role, &at])
            .await
            .db()?;
        event_log::append(tx, &self.events).await
    }
}

async fn users_exist(core: &Core, users: &[UserId]) -> Result<bool> {
    let ids: Vec<i64> = users.iter().map(|u| sql_id(*u)).collect();
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached("SELECT COUNT(*) FROM users WHERE id = ANY($1)")
        .await
        .db()?;
    let count: i64 = client.query_one(&stmt, &[&ids]).await.db()?.get(0);
    let mut distinct = ids;
    distinct.sort_unstable();
    distinct.dedup();
    Ok(count as usize == distinct.len())
}

/// Creates a conversation with its members, one `added` event each (addressed to that
/// member: the others see the member list in the conversation itself). `None` if a
/// direct conversation with `direct_key` was created concurrently.
async fn create(
    core: &Core,
    kind: ConversationKind,
    name: Option<String>,
    direct_key: Option<String>,
    members: &[(UserId, Role)],
    actor: UserId,
) -> Result<Option<ConversationInfo>> {
    let now = now_ms();
    let id = Id(core.ids.next_id()?);
    let info = ConversationInfo {
        id,
        kind,
        name,
        created_at: now,
    };
    let mut client = core.db.primary().await?;
    let tx = client.transaction().await.db()?;
    // The row (and its direct key) first: a concurrent creation of the same direct
    // conversation waits here, before either takes positions.
    let inserted = tx
        .execute(
            "INSERT INTO conversations (id, kind, name, direct_key, member_count, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (direct_key) DO NOTHING",
            &[
                &sql_id(id),
                &kind_code(kind),
                &info.name,
                &direct_key,
                &(members.len() as i32),
                &now,
            ],
        )
        .await
        .db()?;
    if inserted == 0 {
        return Ok(None);
    }
    let positions = core.take_positions(&tx, members.len() as u64).await?;
    let mut changes = Changes::new(&info, now);
    let (mut users, mut roles, mut joined) = (Vec::new(), Vec::new(), Vec::new());
    for (i, &(user, role)) in members.iter().enumerate() {
        let pos = positions.first + i as u64;
        changes.push(
            pos,
            user,
            MemberChange::Added,
            actor,
            Some(role),
            Arc::from(vec![user]),
        );
        users.push(sql_id(user));
        roles.push(role_code(role));
        joined.push(clamp(pos));
    }
    tx.execute(
        "INSERT INTO members (conv_id, user_id, role, joined_pos)
         SELECT $1, u, r, p FROM unnest($2::bigint[], $3::smallint[], $4::bigint[]) AS v(u, r, p)",
        &[&sql_id(id), &users, &roles, &joined],
    )
    .await
    .db()?;
    tx.execute(
        "UPDATE conversations SET roster_pos = $2 WHERE id = $1",
        &[&sql_id(id), &clamp(positions.last())],
    )
    .await
    .db()?;
    changes.write(&tx).await?;
    core.commit(tx, positions, changes.events).await?;
    Ok(Some(info))
}

async fn direct_by_key(core: &Core, key: &str) -> Result<Option<ConversationInfo>> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(
            "SELECT id, kind, name, created_at FROM conversations WHERE direct_key = $1",
        )
        .await
        .db()?;
    let row = client.query_opt(&stmt, &[&key]).await.db()?;
    Ok(row.map(|r| conversation_info(id_at(&r, 0), &r, 1)))
}

pub async fn open_direct(core: &Core, a: UserId, b: UserId) -> Result<(ConversationInfo, bool)> {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let key = format!("{lo}:{hi}");
    if let Some(info) = direct_by_key(core, &key).await? {
        return Ok((info, false));
    }
    if !users_exist(core, &[a, b]).await? {
        return Err(Error::not_found("user not found"));
    }
    let created = create(
        core,
        ConversationKind::Direct,
        None,
        Some(key.clone()),
        &[(lo, Role::Member), (hi, Role::Member)],
        a,
    )
    .await?;
    match created {
        Some(info) => Ok((info, true)),
        // Another node created it a moment ago.
        None => direct_by_key(core, &key)
            .await?
            .map(|info| (info, false))
            .ok_or_else(Error::internal),
    }
}

pub async fn create_group(
    core: &Core,
    owner: UserId,
    name: &str,
    members: &[UserId],
    limit: u32,
) -> Result<ConversationInfo> {
    membership::within_limit(1, members.len() as u32, limit)?;
    let mut all = Vec::with_capacity(members.len() + 1);
    all.push((owner, Role::Owner));
    all.extend(members.iter().map(|&u| (u, Role::Member)));
    let users: Vec<UserId> = all.iter().map(|(u, _)| *u).collect();
    if !users_exist(core, &users).await? {
        return Err(Error::not_found("user not found"));
    }
    create(
        core,
        ConversationKind::Group,
        Some(name.to_owned()),
        None,
        &all,
        owner,
    )
    .await?
    .ok_or_else(Error::internal)
}

pub async fn change_membership(core: &Core, command: MembershipCommand, limit: u32) -> Result<()> {
    let conv = match &command {
        MembershipCommand::Add { conv, .. }
        | MembershipCommand::Remove { conv, .. }
        | MembershipCommand::Leave { conv, .. }
        | MembershipCommand::SetRole { conv, .. } => *conv,
    };
    if let MembershipCommand::Add { user, .. } = &command {
        // Checked before the lock: users are never deleted.
        if !users_exist(core, &[*user]).await? {
            // Reported after the actor's own checks below, like the embedded store,
            // unless the conversation check fails first.
            return change(core, conv, command, limit, false).await;
        }
    }
    change(core, conv, command, limit, true).await
}

async fn change(
    core: &Core,
    conv: ConvId,
    command: MembershipCommand,
    limit: u32,
    target_exists: bool,
) -> Result<()> {
    let mut client = core.db.primary().await?;
    let tx = client.transaction().await.db()?;
    let locked = lock(&tx, conv)
        .await?
        .ok_or_else(|| Error::not_found("conversation not found"))?;
    if locked.info.kind == ConversationKind::Direct {
        return Err(Error::forbidden("direct conversations have fixed members"));
    }
    let members = current_members(&tx, conv).await?;
    let roles: HashMap<UserId, Role> = members.iter().map(|m| (m.user, m.role)).collect();
    let role_of = |user: UserId| roles.get(&user).copied();
    let info = &locked.info;
    let now = now_ms();
    let mut changes = Changes::new(info, now);
    match command {
        MembershipCommand::Add { actor, user, .. } => {
            let actor_role = role_of(actor).ok_or_else(Error::not_member)?;
            membership::can_add(actor_role)?;
            if role_of(user).is_some() {
                return Ok(());
            }
            if !target_exists {
                return Err(Error::not_found("user not found"));
            }
            membership::within_limit(roles.len() as u32, 1, limit)?;
            let positions = core.take_positions(&tx, 1).await?;
            let pos = positions.first;
            let recipients = sorted(roles.keys().copied().chain([user]));
            changes.push(
                pos,
                user,
                MemberChange::Added,
                actor,
                Some(Role::Member),
                recipients,
            );
            tx.execute(
                "INSERT INTO members (conv_id, user_id, role, joined_pos) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (conv_id, user_id) DO UPDATE SET
                    role = excluded.role, joined_pos = excluded.joined_pos, left_pos = NULL, left_seq = NULL",
                &[&sql_id(conv), &sql_id(user), &role_code(Role::Member), &clamp(pos)],
            )
            .await
            .db()?;
            finish(core, &tx, conv, roles.len() + 1, pos, &changes).await?;
            return core.commit(tx, positions, changes.events).await;
        }
        MembershipCommand::Remove { actor, user, .. } => {
            let actor_role = role_of(actor).ok_or_else(Error::not_member)?;
            let target = role_of(user).ok_or_else(|| Error::not_found("not a member"))?;
            membership::can_remove(actor_role, target)?;
            let positions = core.take_positions(&tx, 1).await?;
            let pos = positions.first;
            changes.push(
                pos,
                user,
                MemberChange::Removed,
                actor,
                None,
                sorted(roles.keys().copied()),
            );
            depart(&tx, conv, user, pos, locked.last_seq).await?;
            finish(core, &tx, conv, roles.len() - 1, pos, &changes).await?;
            core.commit(tx, positions, changes.events).await
        }
        MembershipCommand::Leave { user, .. } => {
            let role = role_of(user).ok_or_else(Error::not_member)?;
            let remaining: Vec<Member> =
                members.iter().copied().filter(|m| m.user != user).collect();
            // A group never stays without an owner while it has members: the
            // longest-standing admin takes over, or else the longest-standing member.
            let heir = (role == Role::Owner)
                .then(|| remaining.first().copied())
                .flatten();
            let count = 1 + u64::from(heir.is_some());
            let positions = core.take_positions(&tx, count).await?;
            let pos = positions.first;
            changes.push(
                pos,
                user,
                MemberChange::Left,
                user,
                None,
                sorted(roles.keys().copied()),
            );
            depart(&tx, conv, user, pos, locked.last_seq).await?;
            let mut last = pos;
            if let Some(heir) = heir {
                last = pos + 1;
                changes.push(
                    last,
                    heir.user,
                    MemberChange::Role,
                    user,
                    Some(Role::Owner),
                    sorted(remaining.iter().map(|m| m.user)),
                );
                set_role(&tx, conv, heir.user, Role::Owner).await?;
            }
            finish(core, &tx, conv, remaining.len(), last, &changes).await?;
            core.commit(tx, positions, changes.events).await
        }
        MembershipCommand::SetRole {
            actor, user, role, ..
        } => {
            let actor_role = role_of(actor).ok_or_else(Error::not_member)?;
            let target = role_of(user).ok_or_else(|| Error::not_found("not a member"))?;
            membership::can_set_role(actor_role, target, role)?;
            if target == role {
                return Ok(());
            }
            let positions = core.take_positions(&tx, 1).await?;
            let pos = positions.first;
            changes.push(
                pos,
                user,
                MemberChange::Role,
                actor,
                Some(role),
                sorted(roles.keys().copied()),
            );
            set_role(&tx, conv, user, role).await?;
            finish(core, &tx, conv, roles.len(), pos, &changes).await?;
            core.commit(tx, positions, changes.events).await
        }
    }
}

async fn depart(
    tx: &Transaction<'_>,
    conv: ConvId,
    user: UserId,
    pos: u64,
    last_seq: u64,
) -> Result<()> {
    tx.execute(
        "UPDATE members SET left_pos = $3, left_seq = $4 WHERE conv_id = $1 AND user_id = $2",
        &[&sql_id(conv), &sql_id(user), &clamp(pos), &clamp(last_seq)],
    )
    .await
    .db()?;
    Ok(())
}

async fn set_role(tx: &Transaction<'_>, conv: ConvId, user: UserId, role: Role) -> Result<()> {
    tx.execute(
        "UPDATE members SET role = $3 WHERE conv_id = $1 AND user_id = $2",
        &[&sql_id(conv), &sql_id(user), &role_code(role)],
    )
    .await
    .db()?;
    Ok(())
}

/// Member count, the roster position (invalidates the writers' cached member lists)
/// and the events.
async fn finish(
    core: &Core,
    tx: &Transaction<'_>,
    conv: ConvId,
    count: usize,
    last_pos: u64,
    changes: &Changes,
) -> Result<()> {
    tx.execute(
        "UPDATE conversations SET member_count = $2, roster_pos = $3 WHERE id = $1",
        &[&sql_id(conv), &(count as i32), &clamp(last_pos)],
    )
    .await
    .db()?;
    core.forget_roster(conv);
    changes.write(tx).await
}

async fn info(
    client: &deadpool_postgres::Object,
    conv: ConvId,
) -> Result<Option<ConversationInfo>> {
    let stmt = client
        .prepare_cached("SELECT kind, name, created_at FROM conversations WHERE id = $1")
        .await
        .db()?;
    let row = client.query_opt(&stmt, &[&sql_id(conv)]).await.db()?;
    Ok(row.map(|r| conversation_info(conv, &r, 0)))
}

/// `not_member` if the conversation exists, else `not_found`.
pub async fn refusal(client: &deadpool_postgres::Object, conv: ConvId) -> Result<Error> {
    Ok(match info(client, conv).await? {
        Some(_) => Error::not_member(),
        None => Error::not_found("conversation not found"),
    })
}

pub async fn conversation(core: &Core, viewer: UserId, conv: ConvId) -> Result<ConversationDetail> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached("SELECT kind, name, created_at, last_seq FROM conversations WHERE id = $1")
        .await
        .db()?;
    let row = client
        .query_opt(&stmt, &[&sql_id(conv)])
        .await
        .db()?
        .ok_or_else(|| Error::not_found("conversation not found"))?;
    let info = conversation_info(conv, &row, 0);
    let last_seq = row.get::<_, i64>(3) as u64;
    let stmt = client
        .prepare_cached(
            "SELECT m.user_id, u.username, m.role FROM members m JOIN users u ON u.id = m.user_id
             WHERE m.conv_id = $1 AND m.left_pos IS NULL ORDER BY m.role, m.joined_pos",
        )
        .await
        .db()?;
    let rows = client.query(&stmt, &[&sql_id(conv)]).await.db()?;
    let members: Vec<MemberView> = rows
        .iter()
        .map(|r| MemberView {
            user: user_view(r),
            role: role_from_code(r.get(2)),
        })
        .collect();
    if !members.iter().any(|m| m.user.id == viewer) {
        return Err(Error::not_member());
    }
    Ok(ConversationDetail {
        info,
        members,
        last_seq,
    })
}

pub async fn conversations(core: &Core, viewer: UserId) -> Result<Vec<ConversationSummary>> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(
            "SELECT c.id, c.kind, c.name, c.created_at, c.member_count, m.read_seq, c.last_seq
             FROM members m JOIN conversations c ON c.id = m.conv_id
             WHERE m.user_id = $1 AND m.left_pos IS NULL",
        )
        .await
        .db()?;
    let rows = client.query(&stmt, &[&sql_id(viewer)]).await.db()?;
    let (mut last_convs, mut last_seqs, mut directs) = (Vec::new(), Vec::new(), Vec::new());
    for r in &rows {
        let last_seq: i64 = r.get(6);
        if last_seq > 0 {
            last_convs.push(r.get::<_, i64>(0));
            last_seqs.push(last_seq);
        }
        if r.get::<_, i16>(1) == 0 {
            directs.push(r.get::<_, i64>(0));
        }
    }
    let mut last_messages = HashMap::new();
    if !last_convs.is_empty() {
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {M_MESSAGE_COLUMNS} FROM unnest($1::bigint[], $2::bigint[]) AS v(conv_id, seq)
                 JOIN messages m ON m.conv_id = v.conv_id AND m.seq = v.seq"
            ))
            .await
            .db()?;
        for r in client.query(&stmt, &[&last_convs, &last_seqs]).await.db()? {
            let view = message_view(&r, 0);
            last_messages.insert(view.conv, view);
        }
    }
    let mut peers = HashMap::new();
    if !directs.is_empty() {
        let stmt = client
            .prepare_cached(
                "SELECT DISTINCT ON (m.conv_id) m.conv_id, u.id, u.username
                 FROM members m JOIN users u ON u.id = m.user_id
                 WHERE m.conv_id = ANY($1) AND m.user_id <> $2 ORDER BY m.conv_id",
            )
            .await
            .db()?;
        for r in client
            .query(&stmt, &[&directs, &sql_id(viewer)])
            .await
            .db()?
        {
            peers.insert(
                id_at(&r, 0),
                parlor_proto::rest::UserView {
                    id: id_at(&r, 1),
                    username: r.get(2),
                },
            );
        }
    }
    let mut out: Vec<ConversationSummary> = rows
        .iter()
        .map(|r| {
            let info = conversation_info(id_at(r, 0), r, 1);
            let last_seq = r.get::<_, i64>(6) as u64;
            let read_seq = (r.get::<_, i64>(5) as u64).min(last_seq);
            ConversationSummary {
                peer: peers.remove(&info.id),
                member_count: r.get::<_, i32>(4) as u32,
                last_message: last_messages.remove(&info.id),
                last_seq,
                read_seq,
                unread: last_seq - read_seq,
                info,
            }
        })
        .collect();
    let activity =
        |c: &ConversationSummary| c.last_message.as_ref().map_or(c.info.created_at, |m| m.ts);
    out.sort_by(|a, b| {
        activity(b)
            .cmp(&activity(a))
            .then(b.info.id.cmp(&a.info.id))
    });
    Ok(out)
}

pub async fn members(core: &Core, conv: ConvId) -> Result<Arc<[UserId]>> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(
            "SELECT user_id FROM members WHERE conv_id = $1 AND left_pos IS NULL ORDER BY user_id",
        )
        .await
        .db()?;
    let rows = client.query(&stmt, &[&sql_id(conv)]).await.db()?;
    if rows.is_empty() && info(&client, conv).await?.is_none() {
        return Err(Error::not_found("conversation not found"));
    }
    Ok(rows.iter().map(|r| id_at(r, 0)).collect())
}

pub async fn contacts(core: &Core, user: UserId) -> Result<Vec<UserId>> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(
            "SELECT DISTINCT other.user_id FROM members mine
             JOIN members other ON other.conv_id = mine.conv_id
             WHERE mine.user_id = $1 AND mine.left_pos IS NULL AND other.left_pos IS NULL
               AND other.user_id <> $1",
        )
        .await
        .db()?;
    let rows = client.query(&stmt, &[&sql_id(user)]).await.db()?;
    Ok(rows.iter().map(|r| id_at(r, 0)).collect())
}
