//! Identities shared by every component.
//!
//! Invariants:
//! - String ids ([`AppId`], [`WorkerId`]) are non-empty, at most [`MAX_ID_LEN`] bytes, and use
//!   only `[A-Za-z0-9._:-]`, so they are safe inside object keys, RocksDB keys and log lines.
//! - A [`ShuffleKey`] names one generation of one Spark shuffle: when a map stage is re-run after
//!   data loss the generation is bumped, so stale and fresh outputs never mix.
//! - [`Epoch`] grows every time the master moves a partition; workers refuse pushes that carry
//!   an older epoch than the one they were assigned.

use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::ProtoError;

/// Longest accepted string id, in bytes.
pub const MAX_ID_LEN: usize = 128;

fn check_id(kind: &'static str, s: &str) -> Result<(), ProtoError> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(ProtoError::InvalidId { kind, reason: "length must be 1..=128 bytes" });
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')) {
        return Err(ProtoError::InvalidId { kind, reason: "only [A-Za-z0-9._:-] allowed" });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Archive, Serialize, Deserialize, serde::Serialize, serde::Deserialize)]
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
        #[rkyv(derive(Debug, PartialEq, Eq, Hash))]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an id.
            pub fn new(s: impl Into<String>) -> Result<Self, ProtoError> {
                let s = s.into();
                check_id($kind, &s)?;
                Ok(Self(s))
            }
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// Checks an id that arrived over the wire or from disk.
            pub fn validate(&self) -> Result<(), ProtoError> {
                check_id($kind, &self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ProtoError;
            fn try_from(s: String) -> Result<Self, ProtoError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = ProtoError;
            fn from_str(s: &str) -> Result<Self, ProtoError> {
                Self::new(s)
            }
        }

        impl $name {
            /// The archived id as text, without deserializing.
            pub fn archived_str(a: &<$name as Archive>::Archived) -> &str {
                a.0.as_str()
            }
        }
    };
}

string_id!(
    /// A Spark application id, with the attempt appended when there is one
    /// (`app-20261122-0001` or `app-20261122-0001:2`).
    AppId,
    "AppId"
);
string_id!(
    /// A worker's stable name: the StatefulSet pod name, never an IP address, so a restarted
    /// pod is the same worker.
    WorkerId,
    "WorkerId"
);

macro_rules! int_id {
    ($(#[$doc:meta])* $name:ident, $ty:ty) => {
        $(#[$doc])*
        #[derive(Archive, Serialize, Deserialize, serde::Serialize, serde::Deserialize)]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        #[rkyv(derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord))]
        #[serde(transparent)]
        pub struct $name(pub $ty);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<$ty> for $name {
            fn from(v: $ty) -> Self {
                Self(v)
            }
        }
    };
}

int_id!(
    /// A reduce partition of a shuffle.
    PartitionId,
    u32
);
int_id!(
    /// A map task's index within its stage.
    MapId,
    u32
);
int_id!(
    /// Spark's task attempt id: unique within an application.
    AttemptId,
    u64
);
int_id!(
    /// Version of a partition's location; bumped whenever the master moves the partition.
    Epoch,
    u64
);

/// One generation of one Spark shuffle of one application.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[rkyv(derive(Debug))]
pub struct ShuffleKey {
    pub app: AppId,
    /// Spark's shuffle id.
    pub shuffle_id: u32,
    /// Bumped when a map stage is re-run after data loss.
    pub generation: u32,
}

impl ShuffleKey {
    pub fn new(app: AppId, shuffle_id: u32, generation: u32) -> Self {
        Self { app, shuffle_id, generation }
    }

    pub fn validate(&self) -> Result<(), ProtoError> {
        self.app.validate()
    }

    /// Deserializes an archived key (one small allocation for the app id).
    pub fn from_archived(a: &ArchivedShuffleKey) -> Self {
        Self {
            app: AppId(a.app.0.as_str().to_owned()),
            shuffle_id: a.shuffle_id.to_native(),
            generation: a.generation.to_native(),
        }
    }
}

impl fmt::Display for ShuffleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}.{}", self.app, self.shuffle_id, self.generation)
    }
}

#[cfg(test)]
mod arb {
    use super::*;
    use proptest::prelude::*;

    impl Arbitrary for AppId {
        type Parameters = ();
        type Strategy = BoxedStrategy<AppId>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            "[A-Za-z0-9._:-]{1,40}".prop_map(AppId).boxed()
        }
    }

    impl Arbitrary for WorkerId {
        type Parameters = ();
        type Strategy = BoxedStrategy<WorkerId>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            "[a-z0-9-]{1,30}".prop_map(WorkerId).boxed()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(AppId::new("app-1:2").is_ok());
        assert!(AppId::new("").is_err());
        assert!(AppId::new("a/b").is_err());
        assert!(WorkerId::new("x".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(WorkerId::new("x".repeat(MAX_ID_LEN)).is_ok());
        // The serde path goes through the same check.
        assert!(AppId::try_from("bad id".to_owned()).is_err());
    }
}
