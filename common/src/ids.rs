//! Identifier newtypes and the rules a valid identifier follows.
//!
//! Names chosen by users (DAG, task, worker and queue ids) match
//! `[A-Za-z0-9][A-Za-z0-9_.-]*` and are at most [`MAX_NAME_LEN`] bytes: they
//! appear in store keys, file paths and URLs, so `/`, spaces and control
//! characters are excluded. Run and attempt ids are UUIDs chosen by the
//! controller (version 7, so they sort by creation time).
//!
//! Event names and asset URIs name things outside Baton (an upstream
//! system's signal, a table, an object-store prefix), so they follow looser
//! rules: events may also contain `:`, assets are any text without
//! whitespace or control characters, up to [`MAX_ASSET_URI_LEN`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest user-chosen name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// Longest event name, in characters.
pub const MAX_EVENT_NAME_LEN: usize = 200;

/// Longest asset URI, in characters.
pub const MAX_ASSET_URI_LEN: usize = 1000;

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

/// A string newtype whose values pass `$validate` (a function or closure
/// from `&str` to `Result<(), IdError>`).
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $what:literal, $validate:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// What this name is called in error messages.
            pub const WHAT: &'static str = $what;

            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                ($validate)(&value)?;
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
            fn from(name: $name) -> String {
                name.0
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

/// An id that follows the id rules ([`validate_name`]).
macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        checked_string!(
            $(#[$doc])*
            $name,
            $what,
            |value: &str| validate_name($what, value)
        );
    };
}

name_id!(
    /// Identifies a DAG across its versions.
    DagId,
    "dag id"
);
checked_string!(
    /// Identifies a task within a DAG, or one mapped instance of a task
    /// expanded at run time (`map_over`): `task[3]`. DAG files name tasks
    /// with the plain id rules ([`validate_name`]); the instance form
    /// appears in runs, the API and the worker protocol.
    TaskId,
    "task id",
    validate_task_id
);

impl TaskId {
    /// The id of instance `index` of this (mapped) task: `task[index]`.
    pub fn instance(&self, index: u32) -> TaskId {
        TaskId(format!("{}[{index}]", self.0))
    }

    /// The task an id names and, for a mapped instance, its index.
    pub fn split_instance(&self) -> (&str, Option<u32>) {
        match split_instance(&self.0) {
            Some((task, index)) => (task, Some(index)),
            None => (&self.0, None),
        }
    }
}

/// `task[3]` → (`task`, 3); `None` for anything else.
fn split_instance(value: &str) -> Option<(&str, u32)> {
    let inner = value.strip_suffix(']')?;
    let (task, index) = inner.rsplit_once('[')?;
    let canonical = !index.is_empty()
        && index.bytes().all(|byte| byte.is_ascii_digit())
        && (index == "0" || !index.starts_with('0'));
    if !canonical {
        return None;
    }
    Some((task, index.parse().ok()?))
}

/// A task id, or a mapped instance `task[i]` of one.
pub fn validate_task_id(value: &str) -> Result<(), IdError> {
    match split_instance(value) {
        Some((task, _)) => validate_name(TaskId::WHAT, task),
        None if value.contains('[') => Err(IdError {
            reason: format!(
                "`{value}` is not a task or a mapped instance; write `task` or `task[3]`"
            ),
        }),
        None => validate_name(TaskId::WHAT, value),
    }
}
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

/// Checks an event name: 1 to [`MAX_EVENT_NAME_LEN`] characters of
/// `[A-Za-z0-9_.:-]`, starting with a letter or digit.
pub fn validate_event_name(value: &str) -> Result<(), IdError> {
    let what = EventName::WHAT;
    if value.is_empty() {
        return Err(IdError {
            reason: format!("{what} must not be empty"),
        });
    }
    let length = value.chars().count();
    if length > MAX_EVENT_NAME_LEN {
        return Err(IdError {
            reason: format!(
                "{what} `{}…` is {length} characters long; the limit is {MAX_EVENT_NAME_LEN}",
                &value[..value.floor_char_boundary(20)],
            ),
        });
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(IdError {
            reason: format!("{what} `{value}` must start with a letter or digit"),
        });
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(IdError {
            reason: format!(
                "{what} `{value}` contains {bad:?}; only letters, digits, `_`, `.`, `:` and `-` are allowed"
            ),
        });
    }
    Ok(())
}

/// Checks an asset URI: 1 to [`MAX_ASSET_URI_LEN`] characters, none of them
/// whitespace or a control character. Any scheme (or none) is accepted: an
/// asset is a name that producers and consumers agree on, which Baton never
/// dereferences.
pub fn validate_asset_uri(value: &str) -> Result<(), IdError> {
    let what = AssetUri::WHAT;
    if value.is_empty() {
        return Err(IdError {
            reason: format!("{what} must not be empty"),
        });
    }
    let length = value.chars().count();
    if length > MAX_ASSET_URI_LEN {
        return Err(IdError {
            reason: format!(
                "{what} `{}…` is {length} characters long; the limit is {MAX_ASSET_URI_LEN}",
                &value[..value.floor_char_boundary(40)],
            ),
        });
    }
    if let Some(bad) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(IdError {
            reason: format!(
                "{what} `{}` contains {bad:?}; whitespace and control characters are not allowed",
                value.escape_debug()
            ),
        });
    }
    Ok(())
}

checked_string!(
    /// Names an event that triggers the DAGs scheduled on it
    /// (`schedule: {events: [orders.loaded]}`).
    EventName,
    "event name",
    validate_event_name
);
checked_string!(
    /// Names an asset (a table, a file, an object-store prefix) that tasks
    /// update (`outputs`) and DAGs are scheduled on (`schedule: {assets}`).
    AssetUri,
    "asset URI",
    validate_asset_uri
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
        let instance = TaskId::new("load").unwrap().instance(12);
        assert_eq!(instance.as_str(), "load[12]");
        assert_eq!(instance.split_instance(), ("load", Some(12)));
        assert_eq!(TaskId::new("load[12]").unwrap(), instance);
        assert_eq!(
            TaskId::new("load").unwrap().split_instance(),
            ("load", None)
        );
        for refused in [
            "load[]",
            "load[01]",
            "load[x]",
            "[3]",
            "a[1][2]",
            "load[99999999999]",
        ] {
            assert!(TaskId::new(refused).is_err(), "{refused}");
        }
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
    fn event_names_follow_their_rule() {
        assert!(EventName::new("orders.loaded").is_ok());
        assert!(EventName::new("s3:put:orders-2024_01").is_ok());
        assert_eq!(
            EventName::new("orders loaded").unwrap_err().reason,
            "event name `orders loaded` contains ' '; only letters, digits, `_`, `.`, `:` and `-` are allowed"
        );
        assert_eq!(
            EventName::new(":x").unwrap_err().reason,
            "event name `:x` must start with a letter or digit"
        );
        assert_eq!(
            EventName::new("").unwrap_err().reason,
            "event name must not be empty"
        );
        assert!(EventName::new("e".repeat(MAX_EVENT_NAME_LEN)).is_ok());
        assert!(
            EventName::new("e".repeat(MAX_EVENT_NAME_LEN + 1))
                .unwrap_err()
                .reason
                .ends_with("is 201 characters long; the limit is 200")
        );
    }

    #[test]
    fn asset_uris_follow_their_rule() {
        for uri in [
            "s3://bucket/orders",
            "warehouse.sales",
            "file:///data/x?y=1#z",
            "é",
        ] {
            let asset = AssetUri::new(uri).unwrap();
            assert_eq!(asset.as_str(), uri);
            assert_eq!(asset.to_string(), uri);
        }
        assert_eq!(
            AssetUri::new("s3://a b").unwrap_err().reason,
            "asset URI `s3://a b` contains ' '; whitespace and control characters are not allowed"
        );
        assert!(
            AssetUri::new("x\u{7}")
                .unwrap_err()
                .reason
                .contains("control characters")
        );
        assert!(AssetUri::new("").is_err());
        assert!(AssetUri::new("a".repeat(MAX_ASSET_URI_LEN)).is_ok());
        assert!(AssetUri::new("a".repeat(MAX_ASSET_URI_LEN + 1)).is_err());
        let json = serde_json::to_string(&AssetUri::new("s3://x").unwrap()).unwrap();
        assert_eq!(json, "\"s3://x\"");
        assert!(serde_json::from_str::<AssetUri>("\"a b\"").is_err());
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
