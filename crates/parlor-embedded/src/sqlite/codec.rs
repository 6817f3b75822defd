//! Integer codes of enums in the schema. Stable: they are on disk.

use parlor_proto::rest::Role;
use parlor_proto::ws::MemberChange;

pub fn role_code(role: Role) -> i64 {
    match role {
        Role::Owner => 0,
        Role::Admin => 1,
        Role::Member => 2,
    }
}

pub fn role_from_code(code: i64) -> Role {
    match code {
        0 => Role::Owner,
        1 => Role::Admin,
        _ => Role::Member,
    }
}

pub fn change_code(change: MemberChange) -> i64 {
    match change {
        MemberChange::Added => 0,
        MemberChange::Removed => 1,
        MemberChange::Left => 2,
        MemberChange::Role => 3,
    }
}

pub fn change_from_code(code: i64) -> MemberChange {
    match code {
        0 => MemberChange::Added,
        1 => MemberChange::Removed,
        2 => MemberChange::Left,
        _ => MemberChange::Role,
    }
}
