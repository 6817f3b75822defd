use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A 64-bit id (user, conversation, message, device, sync position).
/// Serialized as a decimal string; accepted as a string or a JSON integer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub u64);

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Id {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Id)
    }
}

impl From<u64> for Id {
    fn from(v: u64) -> Self {
        Id(v)
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(itoa_buf(self.0).as_str())
    }
}

/// Tiny stack formatter so that serializing an id does not allocate.
pub(crate) struct StackStr {
    bytes: [u8; 20],
    start: usize,
}

impl StackStr {
    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits are ever written.
        std::str::from_utf8(&self.bytes[self.start..]).unwrap_or("0")
    }
}

pub(crate) fn itoa_buf(mut v: u64) -> StackStr {
    let mut bytes = [0u8; 20];
    let mut i = 20;
    loop {
        i -= 1;
        bytes[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    StackStr { bytes, start: i }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an id as a decimal string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                v.parse().map_err(|_| E::custom("invalid id"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                u64::try_from(v)
                    .map(Id)
                    .map_err(|_| E::custom("invalid id"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_strings_on_the_wire() {
        let id = Id(u64::MAX);
        let s = serde_json::to_string(&id).unwrap_or_default();
        assert_eq!(s, "\"18446744073709551615\"");
        let back: Id = serde_json::from_str(&s).unwrap_or_default();
        assert_eq!(back, id);
        let from_num: Id = serde_json::from_str("42").unwrap_or_default();
        assert_eq!(from_num, Id(42));
        assert!(serde_json::from_str::<Id>("\"-1\"").is_err());
        assert!(serde_json::from_str::<Id>("\"x\"").is_err());
    }
}
