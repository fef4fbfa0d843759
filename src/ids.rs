//! String identifiers: [`ExecutionId`], [`TenantId`], [`StepId`].
//!
//! Each is a newtype that serializes as a plain string. Execution and tenant ids hold an
//! `Arc<str>`: every event a read returns carries both, and sharing them makes that a
//! reference-count increment instead of two allocations per event (a sixth of a read's
//! instructions, measured with callgrind). Step ids, decoded once per event anyway,
//! hold a `String`. The engine
//! validates ids where they enter a store (non-empty, at most [`MAX_ID_BYTES`]); the
//! types themselves accept any string so that ids read back from JSON never fail to
//! construct. `ExecutionId::new()` and `StepId::new()` return fresh ids in the
//! canonical 8-4-4-4-12 hex form of a time-ordered (version 7) UUID.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest execution or tenant id a store accepts, in UTF-8 bytes.
pub const MAX_ID_BYTES: usize = 1024;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident($storage:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name($storage);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.into())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s.into())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// Identifies one execution (one run of an agent). Its events form one ordered log.
    ExecutionId(Arc<str>)
);
string_id!(
    /// Identifies the tenant that owns an execution.
    TenantId(Arc<str>)
);
string_id!(
    /// Identifies one step inside an execution.
    StepId(String)
);

impl ExecutionId {
    /// A fresh random id, unique with overwhelming probability.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(random_uuid().into())
    }
}

impl StepId {
    /// A fresh random id, unique with overwhelming probability.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(random_uuid())
    }
}

/// Checks an execution or tenant id at the store boundary.
pub(crate) fn validate_id(kind: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidArgument(format!("{kind} id is empty")));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Error::InvalidArgument(format!(
            "{kind} id is {} bytes long; the limit is {MAX_ID_BYTES}",
            id.len()
        )));
    }
    Ok(())
}

/// A UUID version 7: 48 bits of Unix milliseconds, then random bits, so ids made later
/// sort after earlier ones (as text, too), which suits execution ids and listings; the
/// `uuid` crate keeps them increasing within a process even inside one millisecond.
fn random_uuid() -> String {
    uuid::Uuid::now_v7().hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_unique_and_uuid_shaped() {
        let a = ExecutionId::new();
        let b = ExecutionId::new();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 36);
        assert_eq!(a.as_str().as_bytes()[14], b'7');
        // Time-ordered: a later id sorts after an earlier one.
        let ids: Vec<ExecutionId> = (0..1000).map(|_| ExecutionId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
    }

    #[test]
    fn ids_serialize_as_plain_strings() {
        let id = TenantId::from("acme");
        assert_eq!(serde_json::to_string(&id).ok().as_deref(), Some("\"acme\""));
    }

    #[test]
    fn id_bounds_are_checked() {
        assert!(validate_id("execution", "").is_err());
        assert!(validate_id("execution", &"x".repeat(MAX_ID_BYTES)).is_ok());
        assert!(validate_id("execution", &"x".repeat(MAX_ID_BYTES + 1)).is_err());
        assert!(validate_id("execution", "a/\0ü").is_ok());
    }
}
