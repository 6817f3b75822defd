//! Snowflake ids: 41 bits of milliseconds since [`EPOCH_MS`], 10 bits of machine id,
//! 12 bits of per-millisecond sequence. Ids from one generator strictly increase; ids from
//! different machines never collide as long as machine ids are unique.

/// 2026-01-01T00:00:00Z in milliseconds since the Unix epoch.
pub const EPOCH_MS: i64 = 1_767_225_600_000;
pub const MACHINE_BITS: u32 = 10;
pub const SEQUENCE_BITS: u32 = 12;
pub const MAX_MACHINE_ID: u16 = (1 << MACHINE_BITS) - 1;
const SEQUENCE_MASK: u64 = (1 << SEQUENCE_BITS) - 1;

/// Not thread-safe by design: each writer owns one, so the hot path takes no lock.
#[derive(Debug)]
pub struct Snowflake {
    machine: u64,
    last_ms: i64,
    sequence: u64,
}

impl Snowflake {
    /// `machine` is masked to 10 bits; callers validate it at configuration time.
    pub fn new(machine: u16) -> Self {
        Snowflake {
            machine: u64::from(machine & MAX_MACHINE_ID),
            last_ms: 0,
            sequence: 0,
        }
    }

    /// Next id for wall-clock time `now_ms`. If the clock steps backwards, or the
    /// 4,096 ids of one millisecond are used up, the generator borrows from the next
    /// millisecond instead of waiting, so ids keep increasing.
    pub fn next_id(&mut self, now_ms: i64) -> u64 {
        let now = now_ms.max(self.last_ms);
        if now == self.last_ms {
            self.sequence = (self.sequence + 1) & SEQUENCE_MASK;
            if self.sequence == 0 {
                self.last_ms += 1;
            }
        } else {
            self.last_ms = now;
            self.sequence = 0;
        }
        let elapsed = (self.last_ms - EPOCH_MS).max(0) as u64;
        (elapsed << (MACHINE_BITS + SEQUENCE_BITS))
            | (self.machine << SEQUENCE_BITS)
            | self.sequence
    }

    /// Makes sure future ids are greater than `id` (e.g. the largest id found on disk
    /// after a restart with a clock that went backwards).
    pub fn observe(&mut self, id: u64) {
        let ms = (id >> (MACHINE_BITS + SEQUENCE_BITS)) as i64 + EPOCH_MS;
        if ms > self.last_ms {
            self.last_ms = ms;
            self.sequence = SEQUENCE_MASK - 1;
        }
    }
}

/// Splits an id into (milliseconds since the Unix epoch, machine, sequence).
pub fn decode(id: u64) -> (i64, u16, u16) {
    let ms = (id >> (MACHINE_BITS + SEQUENCE_BITS)) as i64 + EPOCH_MS;
    let machine = ((id >> SEQUENCE_BITS) & u64::from(MAX_MACHINE_ID)) as u16;
    let seq = (id & SEQUENCE_MASK) as u16;
    (ms, machine, seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_decode() {
        let mut g = Snowflake::new(5);
        let t = EPOCH_MS + 1_000;
        let a = g.next_id(t);
        let b = g.next_id(t);
        let c = g.next_id(t - 50); // clock went backwards
        assert!(a < b && b < c);
        assert_eq!(decode(a), (t, 5, 0));
        assert_eq!(decode(b), (t, 5, 1));
    }

    #[test]
    fn sequence_overflow_borrows_next_millisecond() {
        let mut g = Snowflake::new(1);
        let t = EPOCH_MS + 10;
        let mut last = 0;
        for _ in 0..10_000 {
            let id = g.next_id(t);
            assert!(id > last);
            last = id;
        }
    }

    #[test]
    fn observe_moves_past_stored_ids() {
        let mut g = Snowflake::new(1);
        let stored = Snowflake::new(1).next_id(EPOCH_MS + 5_000);
        g.observe(stored);
        assert!(g.next_id(EPOCH_MS + 10) > stored);
    }
}
