//! Notifiers: the webhooks a DAG's `notify` list (or the controller's
//! default, `[[notify.default]]` in its config file) asks to be told of run
//! and task events, checked and resolved into [`Notifier`]s.
//!
//! One function, [`resolve_notifiers`], checks both places, so a DAG file
//! and a config file get the same rules and messages; they differ only in
//! whether a literal secret is allowed (in a config file, which only the
//! operator reads, yes; in a DAG file, which is stored and shown, never).

use std::fmt;

use super::model::{NotifierSpec, SecretHeaderSpec};
use super::validate::did_you_mean;
use crate::error::FieldViolation;

/// Most notifiers one list may hold.
pub const MAX_NOTIFIERS: usize = 16;
/// Longest notifier URL, in bytes.
pub const MAX_NOTIFY_URL_BYTES: usize = 2_048;
/// Longest header name and environment variable name, in bytes.
const MAX_NAME_BYTES: usize = 256;
/// Longest literal secret, in bytes.
const MAX_SECRET_BYTES: usize = 4_096;

/// Headers the controller sets itself; a secret header may not replace them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "user-agent",
];

/// What a notifier can be told of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NotifyEvent {
    /// A run ended failed.
    RunFailed,
    /// A run ended successfully.
    RunSucceeded,
    /// A task's last allowed attempt failed: it will not be retried.
    RetryExhausted,
    /// A run or task had not finished by its SLA deadline.
    SlaMissed,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 4] = [
        NotifyEvent::RunFailed,
        NotifyEvent::RunSucceeded,
        NotifyEvent::RetryExhausted,
        NotifyEvent::SlaMissed,
    ];

    /// What a notifier that does not list its events is told of: every
    /// event that needs someone's attention, not successes.
    pub const DEFAULT: [NotifyEvent; 3] = [
        NotifyEvent::RunFailed,
        NotifyEvent::RetryExhausted,
        NotifyEvent::SlaMissed,
    ];

    /// The name in files and in the JSON body (`run_failed`, ...).
    pub fn name(self) -> &'static str {
        match self {
            NotifyEvent::RunFailed => "run_failed",
            NotifyEvent::RunSucceeded => "run_succeeded",
            NotifyEvent::RetryExhausted => "retry_exhausted",
            NotifyEvent::SlaMissed => "sla_missed",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|event| event.name() == name)
    }
}

impl fmt::Display for NotifyEvent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// As its name, in the JSON body a notifier posts.
impl serde::Serialize for NotifyEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// The body a notifier posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyFormat {
    /// Baton's own JSON document (`docs/dag-reference.md`, "Notifications").
    #[default]
    Json,
    /// A Slack incoming-webhook body: `{"text": "..."}`.
    Slack,
}

/// A notifier that passed its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifier {
    /// Events it is told of, without duplicates, in the order written.
    pub on: Vec<NotifyEvent>,
    /// An `http` or `https` URL.
    pub url: url::Url,
    pub format: NotifyFormat,
    pub secret_header: Option<SecretHeader>,
}

impl Notifier {
    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.on.contains(&event)
    }
}

/// A header sent with every POST of a notifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretHeader {
    pub name: String,
    pub value: SecretValue,
}

/// Where a secret header's value comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretValue {
    /// An environment variable of the controller, read at each delivery.
    Env(String),
    /// Written in the controller's config file.
    Literal(String),
}

impl fmt::Debug for SecretValue {
    // A literal is a secret: never printed, even in debug logs.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretValue::Env(name) => formatter.debug_tuple("Env").field(name).finish(),
            SecretValue::Literal(_) => formatter.write_str("Literal(<redacted>)"),
        }
    }
}

/// Where a list of notifiers is written, which decides whether a literal
/// secret is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifierSource {
    /// A DAG file: stored and shown, so no literal secrets.
    DagFile,
    /// The controller's config file.
    ConfigFile,
}

/// Checks a list of notifiers written at `path` (`notify`,
/// `notify.default`) and resolves it; every problem is returned, each with
/// the path of its field (`notify[0].url`).
pub fn resolve_notifiers(
    specs: &[NotifierSpec],
    path: &str,
    source: NotifierSource,
) -> Result<Vec<Notifier>, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    if specs.len() > MAX_NOTIFIERS {
        violations.push(FieldViolation::new(
            path,
            format!(
                "{} notifiers; at most {MAX_NOTIFIERS} are allowed",
                specs.len()
            ),
        ));
        return Err(violations);
    }
    let mut notifiers = Vec::with_capacity(specs.len());
    for (position, spec) in specs.iter().enumerate() {
        let place = format!("{path}[{position}]");
        if let Some(notifier) = resolve_one(spec, &place, source, &mut violations) {
            notifiers.push(notifier);
        }
    }
    if violations.is_empty() {
        Ok(notifiers)
    } else {
        Err(violations)
    }
}

fn resolve_one(
    spec: &NotifierSpec,
    place: &str,
    source: NotifierSource,
    violations: &mut Vec<FieldViolation>,
) -> Option<Notifier> {
    let field = |name: &str| format!("{place}.{name}");
    let before = violations.len();

    let on = match &spec.on {
        None => NotifyEvent::DEFAULT.to_vec(),
        Some(names) if names.is_empty() => {
            violations.push(FieldViolation::new(
                field("on"),
                format!(
                    "lists no event; leave it out for {}, or list some of {}",
                    names_of(&NotifyEvent::DEFAULT),
                    names_of(&NotifyEvent::ALL)
                ),
            ));
            Vec::new()
        }
        Some(names) => {
            let mut events = Vec::with_capacity(names.len());
            for (entry, name) in names.iter().enumerate() {
                let entry_field = format!("{}[{entry}]", field("on"));
                match NotifyEvent::parse(name) {
                    Some(event) if events.contains(&event) => violations.push(FieldViolation::new(
                        entry_field,
                        format!("`{name}` is listed twice"),
                    )),
                    Some(event) => events.push(event),
                    None => {
                        let known = NotifyEvent::ALL.map(NotifyEvent::name);
                        let reason = match did_you_mean(name, known) {
                            Some(close) => {
                                format!("unknown event `{name}`; did you mean `{close}`?")
                            }
                            None => format!(
                                "unknown event `{name}`; the events are {}",
                                names_of(&NotifyEvent::ALL)
                            ),
                        };
                        violations.push(FieldViolation::new(entry_field, reason));
                    }
                }
            }
            events
        }
    };

    let url = check_url(&spec.url)
        .map_err(|reason| violations.push(FieldViolation::new(field("url"), reason)))
        .ok();

    let format = match spec.format.as_deref() {
        None | Some("json") => NotifyFormat::Json,
        Some("slack") => NotifyFormat::Slack,
        Some(other) => {
            violations.push(FieldViolation::new(
                field("format"),
                format!("unknown format `{other}`; the formats are `json` and `slack`"),
            ));
            NotifyFormat::Json
        }
    };

    let secret_header = spec.secret_header.as_ref().and_then(|header| {
        check_secret_header(header, &field("secret_header"), source, violations)
    });

    if violations.len() > before {
        return None;
    }
    Some(Notifier {
        on,
        url: url?,
        format,
        secret_header,
    })
}

fn names_of(events: &[NotifyEvent]) -> String {
    let names: Vec<String> = events
        .iter()
        .map(|event| format!("`{}`", event.name()))
        .collect();
    names.join(", ")
}

fn check_url(text: &str) -> Result<url::Url, String> {
    if text.trim().is_empty() {
        return Err("missing; a notifier needs the `url` it posts to".into());
    }
    if text.len() > MAX_NOTIFY_URL_BYTES {
        return Err(format!(
            "is {} bytes; the limit is {MAX_NOTIFY_URL_BYTES}",
            text.len()
        ));
    }
    let url = url::Url::parse(text).map_err(|error| format!("not a valid URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme is `{}`; a notifier posts to an `http` or `https` URL",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if url.fragment().is_some() {
        return Err("has a `#` fragment, which is never sent; leave it out".into());
    }
    Ok(url)
}

fn check_secret_header(
    header: &SecretHeaderSpec,
    place: &str,
    source: NotifierSource,
    violations: &mut Vec<FieldViolation>,
) -> Option<SecretHeader> {
    let field = |name: &str| format!("{place}.{name}");
    let before = violations.len();
    let name = header.name.as_str();
    if name.is_empty() {
        violations.push(FieldViolation::new(
            field("name"),
            "missing; the header's name, for example `X-Baton-Secret`",
        ));
    } else if name.len() > MAX_NAME_BYTES || !name.bytes().all(is_header_name_byte) {
        violations.push(FieldViolation::new(
            field("name"),
            format!(
                "`{name}` is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~, at most {MAX_NAME_BYTES} bytes)"
            ),
        ));
    } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        violations.push(FieldViolation::new(
            field("name"),
            format!("`{name}` is set by the controller itself; choose another name"),
        ));
    }
    let value = match (&header.value_env, &header.value, source) {
        (Some(_), Some(_), _) => {
            violations.push(FieldViolation::new(
                place,
                "give either `value_env` or `value`, not both",
            ));
            None
        }
        (None, Some(_), NotifierSource::DagFile) => {
            violations.push(FieldViolation::new(
                field("value"),
                "secrets are not written in DAG files (they are stored and shown); put it in an environment variable of the controller and name that with `value_env`",
            ));
            None
        }
        (None, Some(value), NotifierSource::ConfigFile) => {
            if value.is_empty() {
                violations.push(FieldViolation::new(field("value"), "is empty"));
                None
            } else if value.len() > MAX_SECRET_BYTES
                || !value
                    .bytes()
                    .all(|byte| byte == b'\t' || (0x20..0x7f).contains(&byte))
            {
                violations.push(FieldViolation::new(
                    field("value"),
                    format!(
                        "must be printable ASCII of at most {MAX_SECRET_BYTES} bytes to travel in a header"
                    ),
                ));
                None
            } else {
                Some(SecretValue::Literal(value.clone()))
            }
        }
        (Some(variable), None, _) => {
            if is_env_name(variable) {
                Some(SecretValue::Env(variable.clone()))
            } else {
                violations.push(FieldViolation::new(
                    field("value_env"),
                    format!(
                        "`{variable}` is not an environment variable name (letters, digits and `_`, not starting with a digit)"
                    ),
                ));
                None
            }
        }
        (None, None, NotifierSource::DagFile) => {
            violations.push(FieldViolation::new(
                field("value_env"),
                "missing; name the controller's environment variable that holds the header's value",
            ));
            None
        }
        (None, None, NotifierSource::ConfigFile) => {
            violations.push(FieldViolation::new(
                field("value_env"),
                "missing; name the environment variable that holds the header's value (or give it as `value`)",
            ));
            None
        }
    };
    if violations.len() > before {
        return None;
    }
    Some(SecretHeader {
        name: name.to_string(),
        value: value?,
    })
}

/// RFC 9110 `tchar`.
fn is_header_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> NotifierSpec {
        NotifierSpec {
            url: url.into(),
            ..NotifierSpec::default()
        }
    }

    fn reasons(specs: &[NotifierSpec], source: NotifierSource) -> Vec<(String, String)> {
        resolve_notifiers(specs, "notify", source)
            .unwrap_err()
            .into_iter()
            .map(|violation| (violation.field, violation.reason))
            .collect()
    }

    #[test]
    fn a_bare_url_gets_the_failure_events_and_json() {
        let notifiers = resolve_notifiers(
            &[spec("https://hooks.example.com/x")],
            "notify",
            NotifierSource::DagFile,
        )
        .unwrap();
        assert_eq!(notifiers[0].on, NotifyEvent::DEFAULT.to_vec());
        assert_eq!(notifiers[0].format, NotifyFormat::Json);
        assert!(notifiers[0].secret_header.is_none());
        assert!(!notifiers[0].wants(NotifyEvent::RunSucceeded));
    }

    #[test]
    fn every_field_is_checked_and_named() {
        let bad = NotifierSpec {
            on: Some(vec![
                "run_faild".into(),
                "run_failed".into(),
                "run_failed".into(),
            ]),
            url: "ftp://example.com/x".into(),
            format: Some("teams".into()),
            secret_header: Some(SecretHeaderSpec {
                name: "Bad Header".into(),
                value_env: Some("1SECRET".into()),
                value: None,
            }),
        };
        let found = reasons(&[bad], NotifierSource::DagFile);
        let fields: Vec<&str> = found.iter().map(|(field, _)| field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "notify[0].on[0]",
                "notify[0].on[2]",
                "notify[0].url",
                "notify[0].format",
                "notify[0].secret_header.name",
                "notify[0].secret_header.value_env",
            ]
        );
        assert!(
            found[0].1.contains("did you mean `run_failed`"),
            "{found:?}"
        );
        assert!(found[2].1.contains("`http` or `https`"), "{found:?}");
    }

    #[test]
    fn literal_secrets_only_in_the_config_file() {
        let with_literal = NotifierSpec {
            secret_header: Some(SecretHeaderSpec {
                name: "X-Baton-Secret".into(),
                value_env: None,
                value: Some("s3cret".into()),
            }),
            ..spec("http://127.0.0.1:9/hook")
        };
        let found = reasons(std::slice::from_ref(&with_literal), NotifierSource::DagFile);
        assert_eq!(found[0].0, "notify[0].secret_header.value");
        let notifiers = resolve_notifiers(
            &[with_literal],
            "notify.default",
            NotifierSource::ConfigFile,
        )
        .unwrap();
        let header = notifiers[0].secret_header.as_ref().unwrap();
        assert_eq!(header.value, SecretValue::Literal("s3cret".into()));
        assert!(!format!("{header:?}").contains("s3cret"));
    }

    #[test]
    fn missing_url_empty_events_and_too_many() {
        let found = reasons(
            &[NotifierSpec {
                on: Some(Vec::new()),
                ..NotifierSpec::default()
            }],
            NotifierSource::DagFile,
        );
        assert_eq!(found[0].0, "notify[0].on");
        assert_eq!(found[1].0, "notify[0].url");
        assert!(found[1].1.starts_with("missing"), "{found:?}");
        let many = vec![spec("https://example.com"); MAX_NOTIFIERS + 1];
        assert_eq!(reasons(&many, NotifierSource::DagFile)[0].0, "notify");
    }

    #[test]
    fn dag_files_report_notifier_problems_with_their_paths() {
        use crate::spec::{SpecFormat, SpecLimits, parse_dag};
        let parse = |text: &str| {
            parse_dag(text, SpecFormat::Yaml, &SpecLimits::default())
                .unwrap_err()
                .0
                .into_iter()
                .map(|violation| (violation.field, violation.reason))
                .collect::<Vec<_>>()
        };
        // A field serde cannot read makes the whole `notify` list unread,
        // so each document here has one kind of problem.
        let found = parse(
            "id: x\nnotify:\n  - {urll: \"https://a.example\"}\ntasks:\n  - {id: a, command: \"true\"}\n",
        );
        assert_eq!(found[0].0, "notify[0].urll", "{found:?}");
        assert!(found[0].1.contains("did you mean `url`"), "{found:?}");
        let found = parse(
            "id: x\nnotify:\n  - url: https://b.example\n  - url: https://b.example\n    secret_header: {name: X-Secret, value: abc}\ntasks:\n  - {id: a, command: \"true\"}\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "notify[1].secret_header.value", "{found:?}");

        let good = "id: x\nnotify:\n  - {url: \"https://a.example/h\", on: [run_succeeded], format: slack}\ntasks:\n  - {id: a, command: \"true\"}\n";
        let dag = parse_dag(good, SpecFormat::Yaml, &SpecLimits::default()).unwrap();
        assert_eq!(dag.notify[0].on, [NotifyEvent::RunSucceeded]);
        assert_eq!(dag.notify[0].format, NotifyFormat::Slack);
        assert!(
            dag.canonical_json.contains("\"notify\":[{"),
            "{}",
            dag.canonical_json
        );
        let without = "id: x\ntasks:\n  - {id: a, command: \"true\"}\n";
        let dag = parse_dag(without, SpecFormat::Yaml, &SpecLimits::default()).unwrap();
        assert!(!dag.canonical_json.contains("notify"));
    }
}
