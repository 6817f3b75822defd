//! Pure rules: input validation and who may do what. Adapters call the membership rules
//! inside their transactions so that a decision and its write are atomic.

use crate::error::{Error, Result};
use parlor_proto::rest::Role;
use parlor_proto::ErrorCode;

/// Usernames: 3 to 32 characters from `a-z`, `0-9`, `_`, `.` and `-`, starting with a
/// letter or digit. Stored lower-cased; unique case-insensitively.
pub fn username(raw: &str) -> Result<String> {
    let name = raw.trim().to_ascii_lowercase();
    let ok_len = (3..=32).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    let ok_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok_len && ok_chars && ok_start {
        Ok(name)
    } else {
        Err(Error::new(
            ErrorCode::InvalidUsername,
            "username must be 3-32 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit",
        ))
    }
}

/// Passwords: at least 8 characters, at most 1,024 bytes (argon2 input stays bounded).
pub fn password(raw: &str) -> Result<()> {
    if raw.chars().count() < 8 {
        return Err(Error::new(
            ErrorCode::WeakPassword,
            "password must have at least 8 characters",
        ));
    }
    if raw.len() > 1024 {
        return Err(Error::new(
            ErrorCode::WeakPassword,
            "password must be at most 1024 bytes",
        ));
    }
    Ok(())
}

/// Message text: not empty or blank, at most `max_bytes` of UTF-8.
pub fn message_text(text: &str, max_bytes: usize) -> Result<()> {
    if text.len() > max_bytes {
        return Err(Error::new(
            ErrorCode::MessageTooLarge,
            format!("message text is larger than {max_bytes} bytes"),
        ));
    }
    if text.trim().is_empty() {
        return Err(Error::new(ErrorCode::EmptyMessage, "message text is empty"));
    }
    Ok(())
}

/// Only a message's sender may edit it, and not once it is deleted. Every store applies
/// this under its own lock, with the row it just read.
pub fn may_edit(
    actor: crate::model::UserId,
    sender: crate::model::UserId,
    deleted: bool,
) -> Result<()> {
    if sender != actor {
        return Err(Error::forbidden("only the sender can edit a message"));
    }
    if deleted {
        return Err(Error::new(
            ErrorCode::Conflict,
            "a deleted message cannot be edited",
        ));
    }
    Ok(())
}

/// Mentions per message.
pub const MAX_MENTIONS: usize = 100;

/// Client message ids: 1 to 64 printable ASCII characters.
pub fn client_id(cid: &str) -> Result<()> {
    if (1..=64).contains(&cid.len()) && cid.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidClientId,
            "client message id must be 1-64 printable ASCII characters",
        ))
    }
}

/// Group names: 1 to 100 characters after trimming, no control characters.
pub fn group_name(raw: &str) -> Result<String> {
    let name = raw.trim();
    let count = name.chars().count();
    if count == 0 || count > 100 || name.chars().any(char::is_control) {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "group name must be 1-100 characters",
        ));
    }
    Ok(name.to_string())
}

/// Device names: at most 64 characters, control characters removed.
pub fn device_name(raw: Option<&str>) -> String {
    raw.unwrap_or("unnamed device")
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect()
}

pub mod membership {
    use super::*;

    /// Owners and admins add members.
    pub fn can_add(actor: Role) -> Result<()> {
        match actor {
            Role::Owner | Role::Admin => Ok(()),
            Role::Member => Err(Error::forbidden(
                "only the owner and admins can add members",
            )),
        }
    }

    /// Owners remove anyone but themselves; admins remove plain members.
    pub fn can_remove(actor: Role, target: Role) -> Result<()> {
        match (actor, target) {
            (_, Role::Owner) => Err(Error::forbidden("the owner cannot be removed")),
            (Role::Owner, _) | (Role::Admin, Role::Member) => Ok(()),
            _ => Err(Error::forbidden("not allowed to remove this member")),
        }
    }

    /// Only the owner changes roles, and not their own.
    pub fn can_set_role(actor: Role, target: Role, new_role: Role) -> Result<()> {
        if actor != Role::Owner {
            return Err(Error::forbidden("only the owner can change roles"));
        }
        if target == Role::Owner || new_role == Role::Owner {
            return Err(Error::forbidden("ownership cannot be changed this way"));
        }
        Ok(())
    }

    /// Groups hold at most `limit` members.
    pub fn within_limit(current: u32, adding: u32, limit: u32) -> Result<()> {
        if current.saturating_add(adding) > limit {
            return Err(Error::new(
                ErrorCode::MemberLimit,
                format!("a group holds at most {limit} members"),
            ));
        }
        Ok(())
    }
}

/// History page sizes: 1 to `max`, default 50.
pub fn page_limit(limit: Option<u32>, max: u32) -> Result<u32> {
    match limit {
        None => Ok(50.min(max)),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(Error::new(
            ErrorCode::InvalidPagination,
            format!("limit must be between 1 and {max}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(username(" Alice_1 ").ok().as_deref(), Some("alice_1"));
        for bad in [
            "ab",
            "-abc",
            "a b c",
            "élodie",
            "x'; DROP TABLE users;--",
            &"a".repeat(33),
        ] {
            assert_eq!(
                username(bad).map_err(|e| e.code),
                Err(ErrorCode::InvalidUsername),
                "{bad}"
            );
        }
    }

    #[test]
    fn texts() {
        assert!(message_text("hi", 10).is_ok());
        assert_eq!(
            message_text("  \n", 10).map_err(|e| e.code),
            Err(ErrorCode::EmptyMessage)
        );
        assert_eq!(
            message_text("hello world", 5).map_err(|e| e.code),
            Err(ErrorCode::MessageTooLarge)
        );
    }

    #[test]
    fn roles() {
        use membership::*;
        assert!(can_add(Role::Admin).is_ok());
        assert!(can_add(Role::Member).is_err());
        assert!(can_remove(Role::Admin, Role::Admin).is_err());
        assert!(can_remove(Role::Owner, Role::Admin).is_ok());
        assert!(can_remove(Role::Owner, Role::Owner).is_err());
        assert!(can_set_role(Role::Owner, Role::Member, Role::Admin).is_ok());
        assert!(can_set_role(Role::Admin, Role::Member, Role::Admin).is_err());
        assert!(within_limit(999, 1, 1000).is_ok());
        assert!(within_limit(1000, 1, 1000).is_err());
    }
}
