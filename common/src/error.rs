//! [`ApiError`]: what the API reports when a request cannot be served, and
//! the one mapping from it to `tonic::Status`.
//!
//! Every service handler returns its errors through this type, so a given
//! failure always reaches clients with the same gRPC code. Invalid input
//! carries one field violation per problem (field path and reason), both in
//! the status message and as a `google.rpc.BadRequest` detail.
//!
//! Both travel in HTTP/2 headers, which clients cap (16 KiB by default in
//! hyper), so a document with hundreds of problems would otherwise reach
//! the client as a protocol error instead of the list: the status lists
//! the problems that fit in [`MAX_LISTED_BYTES`] and says how many more
//! there are.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, for example `spec.tasks[2].depends_on[0]`.
    pub field: String,
    pub reason: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            // A problem with the whole input (its size, its syntax).
            return f.write_str(&self.reason);
        }
        write!(f, "{}: {}", self.field, self.reason)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; nothing was changed.
    #[error("{}", join_violations(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The named object does not exist (`scope` says where it was looked
    /// for, like " in run …", or is empty).
    #[error("{what} `{id}` not found{scope}")]
    NotFound {
        what: &'static str,
        id: String,
        scope: String,
    },
    /// The request is valid but the system is not in a state to serve it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// What the request would create exists already; nothing was changed.
    #[error("{0}")]
    AlreadyExists(String),
    /// A limit was reached; retrying later or with less may succeed.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The service cannot serve now (shutting down, store unreachable).
    #[error("{0}")]
    Unavailable(String),
    /// This controller is not the leader; `leader` is the leader's address
    /// when one is known. Clients and workers retry there.
    #[error("not the leader; {}", match .leader { Some(address) => format!("the leader is at {address}"), None => "no leader is elected yet; retry shortly".to_string() })]
    NotLeader { leader: Option<String> },
    /// A bug or an unexpected store failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A single invalid field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, reason)])
    }

    pub fn not_found(what: &'static str, id: impl std::fmt::Display) -> Self {
        Self::NotFound {
            what,
            id: id.to_string(),
            scope: String::new(),
        }
    }

    /// Not found within a container: ``task `load` not found in run …``.
    pub fn not_found_in(
        what: &'static str,
        id: impl std::fmt::Display,
        container: impl std::fmt::Display,
    ) -> Self {
        Self::NotFound {
            what,
            id: id.to_string(),
            scope: format!(" in {container}"),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unavailable(_) | Self::NotLeader { .. } => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }
}

fn join_violations(violations: &[FieldViolation]) -> String {
    let lines: Vec<String> = violations.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Most bytes of problems listed in the status message. The details carry
/// the message again with the violations, so the headers hold about three
/// times this, base64 included: well under the 16 KiB a client accepts.
pub const MAX_LISTED_BYTES: usize = 2 * 1024;

/// Most bytes of one violation's field path and of its reason; longer ones
/// (quoting a huge input) are cut with `…`.
const MAX_FIELD_BYTES: usize = 256;
const MAX_REASON_BYTES: usize = 1024;

/// The violations that fit in [`MAX_LISTED_BYTES`] (at least one) and the
/// last one, with a violation without a field between them saying how many
/// are not listed. The last is kept because a validator that lists only so
/// many problems ends with its count of the others.
fn listed_violations(mut violations: Vec<FieldViolation>) -> Vec<FieldViolation> {
    let Some(last) = violations.last() else {
        return violations;
    };
    let total = violations.len();
    let mut bytes = entry_bytes(last);
    let fitting = violations
        .iter()
        .position(|violation| {
            bytes += entry_bytes(violation);
            bytes > MAX_LISTED_BYTES
        })
        .unwrap_or(total)
        .max(1);
    if fitting + 1 < total {
        let last = violations.pop();
        violations.truncate(fitting);
        violations.push(FieldViolation::new(
            "",
            format!("… and {} more problems not listed", total - fitting - 1),
        ));
        violations.extend(last);
    }
    for violation in &mut violations {
        cut(&mut violation.field, MAX_FIELD_BYTES);
        cut(&mut violation.reason, MAX_REASON_BYTES);
    }
    violations
}

/// The bytes a violation takes in the message and in a BadRequest entry.
fn entry_bytes(violation: &FieldViolation) -> usize {
    violation.field.len().min(MAX_FIELD_BYTES) + violation.reason.len().min(MAX_REASON_BYTES) + 8
}

/// `text`, cut at a character boundary with `…` when over `limit` bytes.
pub fn shorten(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        text.truncate(text.floor_char_boundary(limit));
        text.push('…');
    }
    text
}

fn cut(text: &mut String, max_bytes: usize) {
    if text.len() > max_bytes {
        let end = text.floor_char_boundary(max_bytes - '…'.len_utf8());
        text.truncate(end);
        text.push('…');
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        let error = match error {
            ApiError::InvalidArgument(violations) => {
                ApiError::InvalidArgument(listed_violations(violations))
            }
            other => other,
        };
        let message = error.to_string();
        match error {
            ApiError::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for violation in violations {
                    details.add_bad_request_violation(violation.field, violation.reason);
                }
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ApiError::NotLeader { leader } => {
                let mut status = Status::unavailable(message);
                if let Some(leader) = leader
                    && let Ok(value) = leader.parse()
                {
                    status
                        .metadata_mut()
                        .insert(crate::client::LEADER_METADATA_KEY, value);
                }
                status
            }
            other => Status::new(other.code(), message),
        }
    }
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;

/// An error and its sources, `: `-separated, without repeating a source
/// the text already holds (HTTP client errors often do).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hundreds_of_violations_are_listed_within_the_header_budget() {
        let violations: Vec<FieldViolation> = (0..1000)
            .map(|n| {
                FieldViolation::new(
                    format!("spec.tasks[{n}].depends_on[0]"),
                    format!("unknown task `missing-{n}`"),
                )
            })
            .collect();
        let status = Status::from(ApiError::InvalidArgument(violations));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().len() <= MAX_LISTED_BYTES + 200);
        assert!(
            status.message().starts_with(
                "spec.tasks[0].depends_on[0]: unknown task `missing-0`\nspec.tasks[1]"
            ),
            "{}",
            status.message()
        );
        // The first that fit, a count of the others, and the last.
        let lines: Vec<&str> = status.message().lines().collect();
        let listed = lines.len() - 2;
        assert_eq!(
            lines[listed],
            format!("… and {} more problems not listed", 1000 - listed - 1)
        );
        assert_eq!(
            lines[listed + 1],
            "spec.tasks[999].depends_on[0]: unknown task `missing-999`"
        );
        let details = status
            .get_details_bad_request()
            .expect("bad request details");
        let listed = details.field_violations.len();
        assert!((20..1000).contains(&listed), "{listed} listed");
        assert_eq!(details.field_violations[listed - 2].field, "");
        assert!(
            status.details().len() <= 2 * MAX_LISTED_BYTES + 512,
            "{}",
            status.details().len()
        );
    }

    #[test]
    fn one_huge_violation_is_still_listed() {
        let status = Status::from(ApiError::invalid("spec", "x".repeat(10_000)));
        assert_eq!(
            status.message(),
            format!("spec: {}…", "x".repeat(MAX_REASON_BYTES - 3))
        );
        let details = status
            .get_details_bad_request()
            .expect("bad request details");
        assert_eq!(details.field_violations.len(), 1);
    }

    #[test]
    fn invalid_argument_keeps_every_violation() {
        let error = ApiError::InvalidArgument(vec![
            FieldViolation::new("spec.tasks[0].id", "must not be empty"),
            FieldViolation::new("spec.tasks[1].depends_on[0]", "unknown task `x`"),
        ]);
        let status = Status::from(error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .contains("spec.tasks[0].id: must not be empty")
        );
        assert!(status.message().contains("unknown task `x`"));
        let details = status
            .get_details_bad_request()
            .expect("bad request details");
        assert_eq!(details.field_violations.len(), 2);
        assert_eq!(
            details.field_violations[1].field,
            "spec.tasks[1].depends_on[0]"
        );
    }

    #[test]
    fn not_leader_carries_the_leaders_address_in_metadata() {
        let status = Status::from(ApiError::NotLeader {
            leader: Some("http://127.0.0.1:7071".into()),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "not the leader; the leader is at http://127.0.0.1:7071"
        );
        let leader = status
            .metadata()
            .get(crate::client::LEADER_METADATA_KEY)
            .unwrap();
        assert_eq!(leader.to_str().unwrap(), "http://127.0.0.1:7071");
        let status = Status::from(ApiError::NotLeader { leader: None });
        assert!(
            status
                .metadata()
                .get(crate::client::LEADER_METADATA_KEY)
                .is_none()
        );
        assert!(status.message().contains("no leader is elected yet"));
    }

    #[test]
    fn an_error_chain_names_each_source_once() {
        let inner = std::io::Error::other("connection refused");
        let outer = std::io::Error::other(Chained(inner));
        assert_eq!(error_chain(&outer), "request failed: connection refused");

        #[derive(Debug)]
        struct Chained(std::io::Error);
        impl std::fmt::Display for Chained {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("request failed")
            }
        }
        impl std::error::Error for Chained {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
    }

    #[test]
    fn codes_follow_the_variant() {
        assert_eq!(
            Status::from(ApiError::not_found("run", "r1")).code(),
            Code::NotFound
        );
        assert_eq!(
            Status::from(ApiError::FailedPrecondition("x".into())).code(),
            Code::FailedPrecondition
        );
    }
}
