//! Conversations and membership: the cached state of each conversation, and changes
//! to who is in it, checked with the core's membership rules inside the transaction.

use super::*;

impl Writer {
    /// Loads (or returns the cached) state of a conversation; `None` if it does not exist.
    pub(super) fn conv(&mut self, conv: ConvId) -> Result<Option<&mut ConvState>> {
        if !self.convs.contains_key(&conv) {
            let row: Option<(i64, Option<String>, i64)> = self
                .conn
                .prepare_cached("SELECT kind, name, created_at FROM conversations WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([conv.0 as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(db_err)?;
            let Some((kind, name, created_at)) = row else {
                return Ok(None);
            };
            let mut roles = HashMap::new();
            {
                let mut stmt = self
                    .conn
                    .prepare_cached(
                        "SELECT user_id, role FROM members WHERE conv_id = ?1 AND left_pos IS NULL",
                    )
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map([conv.0 as i64], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })
                    .map_err(db_err)?;
                for row in rows {
                    let (user, role) = row.map_err(db_err)?;
                    roles.insert(Id(user as u64), role_from_code(role));
                }
            }
            let last_seq: i64 = self
                .conn
                .prepare_cached("SELECT COALESCE((SELECT seq FROM messages WHERE conv_id = ?1 ORDER BY seq DESC LIMIT 1), 0)")
                .and_then(|mut s| s.query_row([conv.0 as i64], |r| r.get(0)))
                .map_err(db_err)?;
            let mut state = ConvState {
                info: ConversationInfo {
                    id: conv,
                    kind: if kind == 0 {
                        ConversationKind::Direct
                    } else {
                        ConversationKind::Group
                    },
                    name,
                    created_at,
                },
                last_seq: last_seq as u64,
                roles,
                recipients: Arc::from(Vec::new()),
            };
            state.refresh_recipients();
            self.shared
                .members
                .write()
                .insert(conv, Arc::clone(&state.recipients));
            self.convs.insert(conv, state);
        }
        Ok(self.convs.get_mut(&conv))
    }

    pub(super) fn member_event(
        &mut self,
        conv: &ConversationInfo,
        user: UserId,
        change: MemberChange,
        actor: UserId,
        role: Option<Role>,
        recipients: Arc<[UserId]>,
    ) -> Result<u64> {
        let pos = self.next_pos();
        let ts = now_ms();
        self.conn
            .prepare_cached(
                "INSERT INTO member_events (pos, conv_id, user_id, change, actor, role, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    pos as i64,
                    conv.id.0 as i64,
                    user.0 as i64,
                    change_code(change),
                    actor.0 as i64,
                    role.map(role_code),
                    ts
                ])
            })
            .map_err(db_err)?;
        self.events.push(Event {
            pos,
            recipients,
            frame: ServerFrame::Member(MemberEvent {
                pos: Id(pos),
                conv: conv.id,
                user,
                change,
                by: actor,
                ts,
                role,
                conversation: conv.clone(),
            }),
        });
        Ok(pos)
    }

    pub(super) fn insert_member(
        &mut self,
        conv: ConvId,
        user: UserId,
        role: Role,
        joined_pos: u64,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO members (conv_id, user_id, role, joined_pos) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(conv_id, user_id) DO UPDATE SET
                    role = excluded.role, joined_pos = excluded.joined_pos, left_pos = NULL, left_seq = NULL",
            )
            .and_then(|mut s| s.execute(params![conv.0 as i64, user.0 as i64, role_code(role), joined_pos as i64]))
            .map_err(db_err)?;
        Ok(())
    }

    pub(super) fn create_conversation(
        &mut self,
        kind: ConversationKind,
        name: Option<String>,
        direct_key: Option<String>,
        members: &[(UserId, Role)],
        actor: UserId,
    ) -> Result<ConversationInfo> {
        let now = now_ms();
        let id = Id(self.ids.next_id(now));
        let info = ConversationInfo {
            id,
            kind,
            name,
            created_at: now,
        };
        self.conn
            .execute(
                "INSERT INTO conversations (id, kind, name, direct_key, member_count, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    id.0 as i64,
                    i64::from(kind == ConversationKind::Group),
                    info.name,
                    direct_key,
                    members.len() as i64,
                    now
                ],
            )
            .map_err(db_err)?;
        for &(user, role) in members {
            // Each new member learns about the conversation through their own event; the
            // others see the member list in the conversation itself.
            let pos = self.member_event(
                &info,
                user,
                MemberChange::Added,
                actor,
                Some(role),
                Arc::from(vec![user]),
            )?;
            self.insert_member(id, user, role, pos)?;
        }
        self.contacts_changed
            .extend(members.iter().map(|&(user, _)| user));
        let mut state = ConvState {
            info: info.clone(),
            last_seq: 0,
            roles: members.iter().copied().collect(),
            recipients: Arc::from(Vec::new()),
        };
        state.refresh_recipients();
        self.shared
            .members
            .write()
            .insert(id, Arc::clone(&state.recipients));
        self.convs.insert(id, state);
        Ok(info)
    }

    pub(super) fn open_direct(&mut self, a: UserId, b: UserId) -> Result<(ConversationInfo, bool)> {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let key = format!("{lo}:{hi}");
        let existing: Option<i64> = self
            .conn
            .prepare_cached("SELECT id FROM conversations WHERE direct_key = ?1")
            .and_then(|mut s| s.query_row([&key], |r| r.get(0)).optional())
            .map_err(db_err)?;
        if let Some(id) = existing {
            let info = self
                .conv(Id(id as u64))?
                .map(|s| s.info.clone())
                .ok_or_else(|| Error::not_found("conversation not found"))?;
            return Ok((info, false));
        }
        if !self.user_exists(b)? || !self.user_exists(a)? {
            return Err(Error::not_found("user not found"));
        }
        let info = self.create_conversation(
            ConversationKind::Direct,
            None,
            Some(key),
            &[(lo, Role::Member), (hi, Role::Member)],
            a,
        )?;
        Ok((info, true))
    }

    pub(super) fn create_group(
        &mut self,
        owner: UserId,
        name: String,
        members: &[UserId],
        limit: u32,
    ) -> Result<ConversationInfo> {
        membership::within_limit(1, members.len() as u32, limit)?;
        let mut all = Vec::with_capacity(members.len() + 1);
        all.push((owner, Role::Owner));
        for &user in members {
            if !self.user_exists(user)? {
                return Err(Error::not_found("user not found"));
            }
            all.push((user, Role::Member));
        }
        self.create_conversation(ConversationKind::Group, Some(name), None, &all, owner)
    }

    pub(super) fn set_member_count(&mut self, conv: ConvId, count: usize) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE conversations SET member_count = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![conv.0 as i64, count as i64]))
            .map_err(db_err)?;
        Ok(())
    }

    pub(super) fn membership(&mut self, command: MembershipCommand, limit: u32) -> Result<()> {
        let conv_id = match &command {
            MembershipCommand::Add { conv, .. }
            | MembershipCommand::Remove { conv, .. }
            | MembershipCommand::Leave { conv, .. }
            | MembershipCommand::SetRole { conv, .. } => *conv,
        };
        let state = self
            .conv(conv_id)?
            .ok_or_else(|| Error::not_found("conversation not found"))?;
        if state.info.kind == ConversationKind::Direct {
            return Err(Error::forbidden("direct conversations have fixed members"));
        }
        let info = state.info.clone();
        let roles = state.roles.clone();
        let last_seq = state.last_seq;
        let role_of = |user: UserId| roles.get(&user).copied();
        match command {
            MembershipCommand::Add { actor, user, .. } => {
                let actor_role = role_of(actor).ok_or_else(Error::not_member)?;
                membership::can_add(actor_role)?;
                if role_of(user).is_some() {
                    return Ok(());
                }
                if !self.user_exists(user)? {
                    return Err(Error::not_found("user not found"));
                }
                membership::within_limit(roles.len() as u32, 1, limit)?;
                let mut after = roles;
                after.insert(user, Role::Member);
                let recipients = sorted(after.keys());
                let pos = self.member_event(
                    &info,
                    user,
                    MemberChange::Added,
                    actor,
                    Some(Role::Member),
                    recipients,
                )?;
                self.insert_member(conv_id, user, Role::Member, pos)?;
                self.set_member_count(conv_id, after.len())?;
                self.store_roles(conv_id, after);
            }
            MembershipCommand::Remove { actor, user, .. } => {
                let actor_role = role_of(actor).ok_or_else(Error::not_member)?;
                let target = role_of(user).ok_or_else(|| Error::not_found("not a member"))?;
                membership::can_remove(actor_role, target)?;
                self.depart(&info, roles, user, actor, MemberChange::Removed, last_seq)?;
            }
            MembershipCommand::Leave { user, .. } => {
                let role = role_of(user).ok_or_else(Error::not_member)?;
                let mut remaining = roles.clone();
                remaining.remove(&user);
                self.depart(&info, roles, user, user, MemberChange::Left, last_seq)?;
                if role == Role::Owner {
                    self.hand_over_ownership(&info, remaining, user)?;
                }
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
                self.change_role(&info, roles, user, role, actor)?;
            }
        }
        Ok(())
    }

    pub(super) fn store_roles(&mut self, conv: ConvId, roles: HashMap<UserId, Role>) {
        if let Some(state) = self.convs.get_mut(&conv) {
            self.contacts_changed.extend(state.roles.keys());
            self.contacts_changed.extend(roles.keys());
            state.roles = roles;
            state.refresh_recipients();
            self.shared
                .members
                .write()
                .insert(conv, Arc::clone(&state.recipients));
        }
    }

    pub(super) fn depart(
        &mut self,
        info: &ConversationInfo,
        roles: HashMap<UserId, Role>,
        user: UserId,
        actor: UserId,
        change: MemberChange,
        last_seq: u64,
    ) -> Result<()> {
        // The departing member is among the recipients: they must learn they are out.
        let recipients = sorted(roles.keys());
        let pos = self.member_event(info, user, change, actor, None, recipients)?;
        self.conn
            .prepare_cached("UPDATE members SET left_pos = ?3, left_seq = ?4 WHERE conv_id = ?1 AND user_id = ?2")
            .and_then(|mut s| s.execute(params![info.id.0 as i64, user.0 as i64, pos as i64, last_seq as i64]))
            .map_err(db_err)?;
        let mut after = roles;
        after.remove(&user);
        self.set_member_count(info.id, after.len())?;
        self.store_roles(info.id, after);
        Ok(())
    }

    pub(super) fn change_role(
        &mut self,
        info: &ConversationInfo,
        roles: HashMap<UserId, Role>,
        user: UserId,
        role: Role,
        actor: UserId,
    ) -> Result<()> {
        let recipients = sorted(roles.keys());
        self.member_event(
            info,
            user,
            MemberChange::Role,
            actor,
            Some(role),
            recipients,
        )?;
        self.conn
            .prepare_cached("UPDATE members SET role = ?3 WHERE conv_id = ?1 AND user_id = ?2")
            .and_then(|mut s| s.execute(params![info.id.0 as i64, user.0 as i64, role_code(role)]))
            .map_err(db_err)?;
        let mut after = roles;
        after.insert(user, role);
        self.store_roles(info.id, after);
        Ok(())
    }

    /// A group never stays without an owner while it has members: the longest-standing
    /// admin takes over, or else the longest-standing member.
    pub(super) fn hand_over_ownership(
        &mut self,
        info: &ConversationInfo,
        remaining: HashMap<UserId, Role>,
        former: UserId,
    ) -> Result<()> {
        if remaining.is_empty() {
            return Ok(());
        }
        let next: Option<i64> = self
            .conn
            .query_row(
                "SELECT user_id FROM members WHERE conv_id = ?1 AND left_pos IS NULL ORDER BY role, joined_pos LIMIT 1",
                [info.id.0 as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        if let Some(next) = next {
            self.change_role(info, remaining, Id(next as u64), Role::Owner, former)?;
        }
        Ok(())
    }
}
