use std::fmt;

use serde::{Deserialize, Serialize};

use crate::StoreError;

macro_rules! hash_newtype {
    ($name:ident, $what:literal) => {
        #[doc = concat!("A ", $what, ": 64 lowercase hex digits of a blake3 hash.")]
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, StoreError> {
                let ok = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                if ok {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(StoreError::InvalidHash { what: $what, value: s.to_owned() })
                }
            }

            pub(crate) fn from_hash(h: blake3::Hash) -> Self {
                Self(h.to_hex().to_string())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The first 12 hex digits, for messages.
            pub fn short(&self) -> &str {
                &self.0[..12]
            }
        }

        impl TryFrom<String> for $name {
            type Error = StoreError;
            fn try_from(s: String) -> Result<Self, StoreError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
    };
}

hash_newtype!(ArtifactId, "artifact id");
hash_newtype!(StageKey, "stage key");
