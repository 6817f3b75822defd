//! Users and device sessions.

use super::*;

impl Writer {
    pub(super) fn create_user(
        &mut self,
        username: String,
        password_hash: &str,
    ) -> Result<UserView> {
        let id = self.ids.next_id(now_ms());
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO users (id, username, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(username) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![id as i64, username, password_hash, now_ms()]))
            .map_err(db_err)?;
        if inserted == 0 {
            return Err(Error::new(
                ErrorCode::UsernameTaken,
                "username is already taken",
            ));
        }
        Ok(UserView {
            id: Id(id),
            username,
        })
    }

    pub(super) fn create_session(
        &mut self,
        user: UserId,
        device_name: &str,
        hash: [u8; 32],
        expires_at: i64,
    ) -> Result<DeviceId> {
        let id = self.ids.next_id(now_ms());
        self.conn
            .prepare_cached(
                "INSERT INTO sessions (id, user_id, device_name, refresh_hash, expires_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| s.execute(params![id as i64, user.0 as i64, device_name, &hash[..], expires_at, now_ms()]))
            .map_err(db_err)?;
        Ok(Id(id))
    }

    pub(super) fn rotate_refresh(
        &mut self,
        presented: [u8; 32],
        next: [u8; 32],
        expires_at: i64,
    ) -> Result<RefreshOutcome> {
        let current: Option<(i64, i64, i64, bool)> = self
            .conn
            .query_row(
                "SELECT id, user_id, expires_at, revoked FROM sessions WHERE refresh_hash = ?1",
                [&presented[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db_err)?;
        if let Some((id, user, expires, revoked)) = current {
            if revoked || expires <= now_ms() {
                return Ok(RefreshOutcome::Invalid);
            }
            self.conn
                .execute(
                    "UPDATE sessions SET previous_hash = refresh_hash, refresh_hash = ?2, expires_at = ?3 WHERE id = ?1",
                    params![id, &next[..], expires_at],
                )
                .map_err(db_err)?;
            return Ok(RefreshOutcome::Rotated {
                user: Id(user as u64),
                device: Id(id as u64),
            });
        }
        let reused: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM sessions WHERE previous_hash = ?1",
                [&presented[..]],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        match reused {
            Some(id) => {
                self.revoke(Id(id as u64))?;
                Ok(RefreshOutcome::Reused {
                    device: Id(id as u64),
                })
            }
            None => Ok(RefreshOutcome::Invalid),
        }
    }

    pub(super) fn revoke(&mut self, device: DeviceId) -> Result<()> {
        self.conn
            .execute(
                "UPDATE sessions SET revoked = 1 WHERE id = ?1",
                [device.0 as i64],
            )
            .map_err(db_err)?;
        // Visible to readers before the commit: revocation errs on the safe side.
        self.shared.revoked.write().insert(device.0);
        Ok(())
    }

    pub(super) fn user_exists(&self, user: UserId) -> Result<bool> {
        self.conn
            .prepare_cached("SELECT 1 FROM users WHERE id = ?1")
            .and_then(|mut s| s.exists([user.0 as i64]))
            .map_err(db_err)
    }
}
