//! Identifier newtypes and the rules a valid identifier follows.
//!
//! Names chosen by users (DAG, task, worker and queue ids) match
//! `[A-Za-z0-9][A-Za-z0-9_.-]*` and are at most [`MAX_NAME_LEN`] bytes: they
//! appear in store keys, file paths and URLs, so `/`, spaces and control
//! characters are excluded. Run and attempt ids are UUIDs chosen by the
//! controller (version 7, so they sort by creation time).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest user-chosen name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct IdError {
    pub reason: String,
}

/// Checks the rule every user-chosen name follows; `what` names the kind of
/// id in the error ("task id", "queue").
pub fn validate_name(what: &str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError {
            reason: format!("{what} must not be empty"),
        });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(IdError {
            reason: format!(
                "{what} `{}…` is {} bytes long; the limit is {MAX_NAME_LEN}",
                &value[..value.floor_char_boundary(20)],
                value.len()
            ),
        });
    }
    let mut chars = value.chars();
    let first = chars.next().unwrap_or('_');
    if !first.is_ascii_alphanumeric() {
        return Err(IdError {
            reason: format!("{what} `{value}` must start with a letter or digit"),
        });
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(IdError {
            reason: format!(
                "{what} `{value}` contains {bad:?}; only letters, digits, `_`, `.` and `-` are allowed"
            ),
        });
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// What this id is called in error messages.
            pub const WHAT: &'static str = $what;

            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate_name($what, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_id!(
    /// Identifies a DAG across its versions.
    DagId,
    "dag id"
);
name_id!(
    /// Identifies a task within a DAG.
    TaskId,
    "task id"
);
name_id!(
    /// Identifies a worker across its reconnects.
    WorkerId,
    "worker id"
);
name_id!(
    /// Names a queue that tasks are routed to and workers serve.
    QueueName,
    "queue"
);
name_id!(
    /// Names a pool: a global limit on how many of its tasks run at once.
    PoolName,
    "pool"
);
name_id!(
    /// Names a custom task kind that SDK workers serve.
    HandlerName,
    "handler"
);

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(Uuid);

        impl $name {
            pub const WHAT: &'static str = $what;

            /// A new, time-ordered id.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Uuid::try_parse(value).map(Self).map_err(|_| IdError {
                    reason: format!("{} `{}` is not a UUID", $what, value.escape_debug()),
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }
    };
}

uuid_id!(
    /// Identifies a run.
    RunId,
    "run id"
);
uuid_id!(
    /// Identifies one attempt of one task in one run.
    AttemptId,
    "attempt id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        assert!(DagId::new("etl_daily-v2.1").is_ok());
        assert!(TaskId::new("0start").is_ok());
        let err = TaskId::new("-x").unwrap_err();
        assert!(
            err.reason.contains("must start with a letter or digit"),
            "{err}"
        );
        let err = TaskId::new("a/b").unwrap_err();
        assert!(err.reason.contains("'/'"), "{err}");
        assert!(
            DagId::new("")
                .unwrap_err()
                .reason
                .contains("must not be empty")
        );
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(
            DagId::new(long)
                .unwrap_err()
                .reason
                .contains("limit is 200")
        );
        assert!(DagId::new("a".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn uuid_ids_round_trip_and_sort_by_time() {
        let first = RunId::generate();
        let second = RunId::generate();
        assert!(first.to_string() < second.to_string());
        assert_eq!(first.to_string().parse::<RunId>().unwrap(), first);
        assert!(
            "nope"
                .parse::<RunId>()
                .unwrap_err()
                .reason
                .contains("not a UUID")
        );
    }
}
