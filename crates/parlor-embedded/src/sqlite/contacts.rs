//! Who shares a conversation with a user, cached so that a connect (which tells the
//! user's contacts they came online) needs no trip to the blocking pool.
//!
//! Readers fill the cache, the writer invalidates it. A reader's query can overlap a
//! membership commit and return the old list; the generation counter keeps such a list
//! out: a reader notes the generation before its read transaction begins and stores
//! the result only if no membership commit happened since. Both the check-and-insert
//! and the writer's bump-and-remove take the one lock, so either the insert comes first
//! (and the removal drops it) or the bump does (and the insert is refused).

use parking_lot::Mutex;
use parlor_core::model::UserId;
use std::collections::HashMap;
use std::sync::Arc;

/// Entries beyond this many user ids in all empty the cache (about 8 MiB of ids): it is
/// rebuilt from reads, so a blunt bound is enough.
const MAX_IDS: usize = 1 << 20;

#[derive(Default)]
pub struct ContactsCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    generation: u64,
    ids: usize,
    lists: HashMap<UserId, Arc<[UserId]>>,
}

impl ContactsCache {
    pub fn get(&self, user: UserId) -> Option<Arc<[UserId]>> {
        self.inner.lock().lists.get(&user).cloned()
    }

    /// Read before the query that produces the list handed to [`ContactsCache::insert`].
    pub fn generation(&self) -> u64 {
        self.inner.lock().generation
    }

    /// Keeps `contacts` unless membership changed after `generation` was read.
    pub fn insert(&self, user: UserId, generation: u64, contacts: Arc<[UserId]>) {
        let mut inner = self.inner.lock();
        if inner.generation != generation {
            return;
        }
        if inner.ids + contacts.len() > MAX_IDS {
            inner.lists.clear();
            inner.ids = 0;
        }
        inner.ids += contacts.len();
        if let Some(old) = inner.lists.insert(user, contacts) {
            inner.ids -= old.len();
        }
    }

    /// Called by the writer after a commit that changed the membership of conversations
    /// these users are or were in.
    pub fn invalidate(&self, users: impl IntoIterator<Item = UserId>) {
        let mut inner = self.inner.lock();
        inner.generation += 1;
        for user in users {
            if let Some(old) = inner.lists.remove(&user) {
                inner.ids -= old.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parlor_proto::Id;

    fn list(ids: &[u64]) -> Arc<[UserId]> {
        ids.iter().map(|&i| Id(i)).collect()
    }

    #[test]
    fn a_list_read_across_a_membership_commit_is_not_kept() {
        let cache = ContactsCache::default();
        let before = cache.generation();
        cache.invalidate([Id(1)]);
        cache.insert(Id(1), before, list(&[2]));
        assert!(cache.get(Id(1)).is_none());
        let now = cache.generation();
        cache.insert(Id(1), now, list(&[2, 3]));
        assert_eq!(cache.get(Id(1)).as_deref(), Some(&[Id(2), Id(3)][..]));
    }

    #[test]
    fn invalidation_drops_only_the_named_users() {
        let cache = ContactsCache::default();
        let generation = cache.generation();
        cache.insert(Id(1), generation, list(&[2]));
        cache.insert(Id(5), generation, list(&[6]));
        cache.invalidate([Id(1), Id(2)]);
        assert!(cache.get(Id(1)).is_none());
        assert!(cache.get(Id(5)).is_some());
    }
}
