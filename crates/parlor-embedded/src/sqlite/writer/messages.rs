//! Messages: appends (the hot path), edits, deletes, and read and delivery markers.

use super::*;

impl Writer {
    pub(super) fn mark_read(&mut self, user: UserId, conv: ConvId, seq: u64) -> Result<u64> {
        let state = self
            .conv(conv)?
            .ok_or_else(|| Error::not_found("conversation not found"))?;
        if !state.roles.contains_key(&user) {
            return Err(Error::not_member());
        }
        if seq > state.last_seq {
            return Err(Error::new(
                ErrorCode::BadRequest,
                "cannot mark read beyond the last message",
            ));
        }
        self.flush_sender_reads().map_err(db_err)?;
        let current: i64 = self
            .conn
            .prepare_cached("SELECT read_seq FROM members WHERE conv_id = ?1 AND user_id = ?2")
            .and_then(|mut s| s.query_row(params![conv.0 as i64, user.0 as i64], |r| r.get(0)))
            .map_err(db_err)?;
        if seq <= current as u64 {
            return Ok(current as u64);
        }
        let pos = self.next_pos();
        self.conn
            .prepare_cached("UPDATE members SET read_seq = ?3, read_pos = ?4 WHERE conv_id = ?1 AND user_id = ?2")
            .and_then(|mut s| s.execute(params![conv.0 as i64, user.0 as i64, seq as i64, pos as i64]))
            .map_err(db_err)?;
        let recipients = self
            .convs
            .get(&conv)
            .map(|s| Arc::clone(&s.recipients))
            .unwrap_or_else(|| Arc::from(vec![user]));
        self.events.push(Event {
            pos,
            recipients,
            frame: ServerFrame::Read(ReadEvent {
                pos: Id(pos),
                conv,
                user,
                seq,
            }),
        });
        Ok(seq)
    }

    /// The message `sender` already stored under client id `cid`, if any: the newest ids
    /// are in memory, older ones in `message_cids` (see `client_ids.rs`).
    pub(super) fn original(&self, sender: UserId, cid: &str) -> Result<Option<Appended>> {
        if let Some(recent) = self.cids.get(sender, cid) {
            return Ok(Some(Appended {
                duplicate: true,
                ..recent.clone()
            }));
        }
        self.conn
            .prepare_cached(
                "SELECT m.id, m.conv_id, m.seq, m.pos, m.created_at FROM message_cids c
                 JOIN messages m ON m.conv_id = c.conv_id AND m.seq = c.seq
                 WHERE c.sender = ?1 AND c.cid = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![sender.0 as i64, cid], |r| {
                    Ok(Appended {
                        id: Id(r.get::<_, i64>(0)? as u64),
                        conv: Id(r.get::<_, i64>(1)? as u64),
                        seq: r.get::<_, i64>(2)? as u64,
                        pos: r.get::<_, i64>(3)? as u64,
                        ts: r.get(4)?,
                        duplicate: true,
                    })
                })
                .optional()
            })
            .map_err(db_err)
    }

    /// Checks a new message against the conversation; returns its attachments.
    fn admit(
        &mut self,
        conv: ConvId,
        sender: UserId,
        reply_to: Option<u64>,
        mentions: &[UserId],
        mention_all: bool,
        attachment_ids: &[Id],
    ) -> Result<Vec<parlor_proto::rest::AttachmentView>> {
        let is_member =
            matches!(self.conv(conv)?, Some(state) if state.roles.contains_key(&sender));
        if !is_member {
            return Err(match self.convs.contains_key(&conv) {
                true => Error::not_member(),
                false => Error::not_found("conversation not found"),
            });
        }
        let Some(state) = self.convs.get(&conv) else {
            return Err(Error::internal());
        };
        // Everything is checked before the first write, so a refused message leaves
        // nothing behind without needing a savepoint on this hot path.
        if let Some(target) = reply_to {
            if target == 0 || target > state.last_seq {
                return Err(Error::new(
                    ErrorCode::BadRequest,
                    "reply_to names no message of this conversation",
                ));
            }
        }
        if let Some(stranger) = mentions.iter().find(|u| !state.roles.contains_key(u)) {
            return Err(Error::new(
                ErrorCode::BadRequest,
                format!("mentioned user {stranger} is not a member"),
            ));
        }
        if mention_all && state.info.kind != ConversationKind::Group {
            return Err(Error::new(ErrorCode::BadRequest, "@all is only for groups"));
        }
        let mut attachments = Vec::with_capacity(attachment_ids.len());
        for &upload in attachment_ids {
            let record = super::super::uploads::load_upload(&self.conn, upload).map_err(db_err)?;
            attachments.push(parlor_core::uploads::may_attach(
                sender,
                upload,
                record.as_ref(),
            )?);
        }
        Ok(attachments)
    }

    pub(super) fn append(&mut self, message: NewMessage) -> Result<Appended> {
        let NewMessage {
            conv,
            sender,
            cid,
            text,
            reply_to,
            mentions,
            mention_all,
            attachments: attachment_ids,
        } = message;
        // A retry of a stored message gets its original acknowledgement even if the
        // sender has left since or the message would be refused now. The newest ids are
        // in memory; older ones are looked up only when a check fails or by the INSERT's
        // own guard, so a new message costs no separate lookup.
        if let Some(recent) = cid.as_deref().and_then(|c| self.cids.get(sender, c)) {
            return Ok(Appended {
                duplicate: true,
                ..recent.clone()
            });
        }
        let attachments = match self.admit(
            conv,
            sender,
            reply_to,
            &mentions,
            mention_all,
            &attachment_ids,
        ) {
            Ok(attachments) => attachments,
            Err(refused) => {
                if let Some(cid) = &cid {
                    if let Some(original) = self.original(sender, cid)? {
                        return Ok(original);
                    }
                }
                return Err(refused);
            }
        };
        let Some(state) = self.convs.get(&conv) else {
            return Err(Error::internal());
        };
        let seq = state.last_seq + 1;
        let recipients = Arc::clone(&state.recipients);
        let ts = now_ms();
        let id = self.ids.next_id(ts);
        let pos = self.pos + 1;
        let mention_list = (!mentions.is_empty()).then(|| {
            mentions
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        });
        let guarded = match &cid {
            Some(cid) => self
                .cids
                .may_be_indexed(&self.conn, sender, cid)
                .map_err(db_err)?,
            None => false,
        };
        // Appended to the tail, copied into `message_rows` later (see `tail.rs`).
        let insert = if guarded {
            "INSERT INTO message_tail (conv_id, seq, id, pos, sender, cid, body, created_at, reply_to, mentions, mention_all, attachments)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12
             WHERE NOT EXISTS (SELECT 1 FROM message_cids WHERE sender = ?5 AND cid = ?6)"
        } else {
            "INSERT INTO message_tail (conv_id, seq, id, pos, sender, cid, body, created_at, reply_to, mentions, mention_all, attachments)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        };
        let inserted = self
            .conn
            .prepare_cached(insert)
            .and_then(|mut s| {
                s.execute(params![
                    conv.0 as i64,
                    seq as i64,
                    id as i64,
                    pos as i64,
                    sender.0 as i64,
                    cid,
                    text,
                    ts,
                    reply_to.map(|r| r as i64),
                    mention_list,
                    mention_all,
                    super::super::uploads::attachments_to_json(&attachments)
                ])
            })
            .map_err(db_err)?;
        if inserted == 0 {
            let cid = cid.as_deref().unwrap_or_default();
            return self.original(sender, cid)?.ok_or_else(Error::internal);
        }
        for upload in &attachment_ids {
            self.conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO attachment_refs (upload_id, conv_id, seq) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| s.execute(params![upload.0 as i64, conv.0 as i64, seq as i64]))
                .map_err(db_err)?;
            self.conn
                .prepare_cached(
                    "UPDATE uploads SET attached_at = COALESCE(attached_at, ?2), detached_at = NULL
                     WHERE id = ?1",
                )
                .and_then(|mut s| s.execute(params![upload.0 as i64, ts]))
                .map_err(db_err)?;
        }
        if !mentions.is_empty() {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO mentions (user_id, conv_id, seq) VALUES (?1, ?2, ?3)",
                )
                .map_err(db_err)?;
            for user in &mentions {
                stmt.execute(params![user.0 as i64, conv.0 as i64, seq as i64])
                    .map_err(db_err)?;
            }
        }
        self.pos = pos;
        self.tail.appended(conv.0 as i64, pos);
        if let Some(state) = self.convs.get_mut(&conv) {
            state.last_seq = seq;
        }
        self.sender_reads.insert((conv, sender), seq);
        let appended = Appended {
            id: Id(id),
            conv,
            seq,
            pos,
            ts,
            duplicate: false,
        };
        if let Some(cid) = &cid {
            self.cids.insert(sender, cid.clone(), appended.clone());
        }
        if self.search.is_some() {
            self.index_ops.push((
                pos,
                IndexOp::Upsert {
                    id,
                    conv: conv.0,
                    seq,
                    sender: sender.0,
                    ts,
                    text: text.clone(),
                    replace: false,
                },
            ));
        }
        self.events.push(Event {
            pos,
            recipients,
            frame: ServerFrame::Message(MessageEvent {
                pos: Id(pos),
                message: MessageView {
                    conv,
                    id: Id(id),
                    seq,
                    sender,
                    text,
                    ts,
                    cid,
                    reply_to,
                    mentions,
                    mention_all,
                    edited_at: None,
                    deleted: false,
                    attachments,
                },
            }),
        });
        Ok(appended)
    }

    /// The stored message `seq` of `conv`: (id, sender, deleted).
    pub(super) fn message_row(
        &self,
        conv: ConvId,
        seq: u64,
    ) -> Result<Option<(u64, UserId, bool)>> {
        self.conn
            .prepare_cached(
                "SELECT id, sender, deleted FROM messages WHERE conv_id = ?1 AND seq = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![conv.0 as i64, seq as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        Id(r.get::<_, i64>(1)? as u64),
                        r.get::<_, bool>(2)?,
                    ))
                })
                .optional()
            })
            .map_err(db_err)
    }

    pub(super) fn record_change(
        &mut self,
        conv: ConvId,
        seq: u64,
        kind: i64,
        actor: UserId,
        at: i64,
    ) -> Result<u64> {
        let pos = self.next_pos();
        self.conn
            .prepare_cached(
                "INSERT INTO message_changes (pos, conv_id, seq, kind, actor, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| s.execute(params![pos as i64, conv.0 as i64, seq as i64, kind, actor.0 as i64, at]))
            .map_err(db_err)?;
        Ok(pos)
    }

    pub(super) fn member_state(
        &mut self,
        user: UserId,
        conv: ConvId,
    ) -> Result<(Role, Arc<[UserId]>, ConversationKind)> {
        let state = self
            .conv(conv)?
            .ok_or_else(|| Error::not_found("conversation not found"))?;
        let role = *state.roles.get(&user).ok_or_else(Error::not_member)?;
        Ok((role, Arc::clone(&state.recipients), state.info.kind))
    }

    pub(super) fn edit(
        &mut self,
        actor: UserId,
        conv: ConvId,
        seq: u64,
        text: String,
    ) -> Result<MessageView> {
        let (_, recipients, _) = self.member_state(actor, conv)?;
        let (id, sender, deleted) = self
            .message_row(conv, seq)?
            .ok_or_else(|| Error::not_found("message not found"))?;
        parlor_core::rules::may_edit(actor, sender, deleted)?;
        let at = now_ms();
        self.conn
            .prepare_cached(
                "UPDATE message_rows SET body = ?3, edited_at = ?4 WHERE conv_id = ?1 AND seq = ?2",
            )
            .and_then(|mut s| s.execute(params![conv.0 as i64, seq as i64, text, at]))
            .map_err(db_err)?;
        let pos = self.record_change(conv, seq, 0, actor, at)?;
        let view = crate::sqlite::reader::message_by_seq(&self.conn, conv, seq)?
            .ok_or_else(Error::internal)?;
        if self.search.is_some() {
            self.index_ops.push((
                pos,
                IndexOp::Upsert {
                    id,
                    conv: conv.0,
                    seq,
                    sender: sender.0,
                    ts: view.ts,
                    text: text.clone(),
                    replace: true,
                },
            ));
        }
        self.events.push(Event {
            pos,
            recipients,
            frame: ServerFrame::Edited(EditedEvent {
                pos: Id(pos),
                conv,
                seq,
                id: Id(id),
                text,
                edited_at: at,
                by: actor,
            }),
        });
        Ok(view)
    }

    pub(super) fn delete(&mut self, actor: UserId, conv: ConvId, seq: u64) -> Result<()> {
        let (role, recipients, kind) = self.member_state(actor, conv)?;
        let (id, sender, deleted) = self
            .message_row(conv, seq)?
            .ok_or_else(|| Error::not_found("message not found"))?;
        let moderator =
            kind == ConversationKind::Group && matches!(role, Role::Owner | Role::Admin);
        if sender != actor && !moderator {
            return Err(Error::forbidden(
                "only the sender, or a group's owner and admins, can delete a message",
            ));
        }
        if deleted {
            return Ok(());
        }
        let at = now_ms();
        let mentioned: Option<String> = self
            .conn
            .prepare_cached("SELECT mentions FROM messages WHERE conv_id = ?1 AND seq = ?2")
            .and_then(|mut s| s.query_row(params![conv.0 as i64, seq as i64], |r| r.get(0)))
            .map_err(db_err)?;
        for user in mentioned
            .iter()
            .flat_map(|m| m.split(' '))
            .filter_map(|u| u.parse::<i64>().ok())
        {
            self.conn
                .prepare_cached(
                    "DELETE FROM mentions WHERE user_id = ?1 AND conv_id = ?2 AND seq = ?3",
                )
                .and_then(|mut s| s.execute(params![user, conv.0 as i64, seq as i64]))
                .map_err(db_err)?;
        }
        // The text leaves the store: a tombstone keeps only who and when.
        self.conn
            .prepare_cached(
                "UPDATE message_rows SET body = '', mentions = NULL, mention_all = 0, reply_to = NULL, deleted = 1,
                        attachments = NULL
                 WHERE conv_id = ?1 AND seq = ?2",
            )
            .and_then(|mut s| s.execute(params![conv.0 as i64, seq as i64]))
            .map_err(db_err)?;
        // Files the message carried become garbage once no other message carries them;
        // marking them lets garbage collection find them without a scan.
        self.conn
            .prepare_cached(
                "UPDATE uploads SET detached_at = ?3
                 WHERE id IN (SELECT upload_id FROM attachment_refs WHERE conv_id = ?1 AND seq = ?2)",
            )
            .and_then(|mut s| s.execute(params![conv.0 as i64, seq as i64, at]))
            .map_err(db_err)?;
        self.conn
            .prepare_cached("DELETE FROM attachment_refs WHERE conv_id = ?1 AND seq = ?2")
            .and_then(|mut s| s.execute(params![conv.0 as i64, seq as i64]))
            .map_err(db_err)?;

        let pos = self.record_change(conv, seq, 1, actor, at)?;
        if self.search.is_some() {
            self.index_ops.push((pos, IndexOp::Remove { id }));
        }
        self.events.push(Event {
            pos,
            recipients,
            frame: ServerFrame::Deleted(DeletedEvent {
                pos: Id(pos),
                conv,
                seq,
                id: Id(id),
                by: actor,
                ts: at,
            }),
        });
        Ok(())
    }

    pub(super) fn delivered(&mut self, user: UserId, conv: ConvId, seq: u64) -> Result<u64> {
        let (_, recipients, _) = self.member_state(user, conv)?;
        let last_seq = self.convs.get(&conv).map_or(0, |s| s.last_seq);
        if seq > last_seq {
            return Err(Error::new(
                ErrorCode::BadRequest,
                "cannot mark delivered beyond the last message",
            ));
        }
        let current: i64 = self
            .conn
            .prepare_cached("SELECT delivered_seq FROM members WHERE conv_id = ?1 AND user_id = ?2")
            .and_then(|mut s| s.query_row(params![conv.0 as i64, user.0 as i64], |r| r.get(0)))
            .map_err(db_err)?;
        if seq <= current as u64 {
            return Ok(current as u64);
        }
        self.conn
            .prepare_cached(
                "UPDATE members SET delivered_seq = ?3 WHERE conv_id = ?1 AND user_id = ?2",
            )
            .and_then(|mut s| s.execute(params![conv.0 as i64, user.0 as i64, seq as i64]))
            .map_err(db_err)?;
        // Delivery markers are live-only: the current values are in `receipts`.
        self.events.push(Event {
            pos: 0,
            recipients,
            frame: ServerFrame::Delivered(DeliveredEvent { conv, user, seq }),
        });
        Ok(seq)
    }

    /// Sending implies having read the conversation up to one's own message; written once
    /// per batch and (conversation, sender), not once per message.
    pub(super) fn flush_sender_reads(&mut self) -> rusqlite::Result<()> {
        if self.sender_reads.is_empty() {
            return Ok(());
        }
        let mut stmt = self.conn.prepare_cached(
            "UPDATE members SET read_seq = MAX(read_seq, ?3) WHERE conv_id = ?1 AND user_id = ?2",
        )?;
        for ((conv, user), seq) in self.sender_reads.drain() {
            stmt.execute(params![conv.0 as i64, user.0 as i64, seq as i64])?;
        }
        Ok(())
    }
}
