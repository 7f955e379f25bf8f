//! Text → generic value → model.
//!
//! The text is read into `serde_json::Value`s, one object at a time where it
//! matters. JSON is streamed: each element of `tasks` is read into a value,
//! turned into a [`TaskSpec`] and dropped before the next one is read, so a
//! document of 100,000 tasks never exists as one generic tree, and elements
//! past `max_tasks` are skipped without being stored. YAML is read whole
//! through `serde_yaml_ng`'s own value, so that merge keys (`<<`) apply, then
//! converted, refusing tags, non-string keys and non-finite numbers with
//! their path. Duplicate keys are an error in both formats.
//!
//! Each object (the root, `default_args`, each task) is checked for unknown
//! fields against the field list of its model struct and deserialized on
//! its own; when that fails, every field is deserialized alone so that each
//! type error is reported with its path, and the fields that could not be
//! read are handed to `validate` as [`Unreadable`].

use std::collections::BTreeMap;
use std::fmt;

use serde::de::value::MapDeserializer;
use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_aux::serde_introspection::serde_introspect;
use serde_json::{Map, Number, Value};

use super::model::{DagSpec, SensorSpec, TaskDefaults, TaskSpec};
use super::validate::{self, Parsed, Place, Report, Unreadable, did_you_mean};
use super::{SpecErrors, SpecFormat, SpecLimits, ValidatedDag};
use crate::error::FieldViolation;

/// Parses and validates a DAG document.
///
/// Every problem found is reported, each with the path of its field
/// (`tasks[2].depends_on[0]`) relative to the document root; an empty path
/// means the whole document. See `docs/dag-reference.md` for the rules.
pub fn parse_dag(
    text: &str,
    format: SpecFormat,
    limits: &SpecLimits,
) -> Result<ValidatedDag, SpecErrors> {
    if text.len() > limits.max_spec_bytes {
        return Err(SpecErrors(vec![FieldViolation::new(
            "",
            format!(
                "the document is {} bytes; the limit is {} bytes",
                text.len(),
                limits.max_spec_bytes
            ),
        )]));
    }
    let mut report = Report::default();
    let Some(document) = read_document(text, format, limits, &mut report) else {
        return Err(report.into_errors());
    };
    let parsed = read_spec(document, &mut report);
    validate::validate(parsed, limits, report)
}

/// A document read as far as the root: its fields other than `tasks` as
/// generic values, and its tasks already read into the model.
enum Document {
    Object {
        root: Map<String, Value>,
        tasks: Tasks,
    },
    /// Not a mapping: what it was, for the message.
    Other(String),
}

/// The `tasks` field of a document.
#[derive(Default)]
enum Tasks {
    /// Absent or null.
    #[default]
    Missing,
    Read(TaskCollector),
    /// More than `max_tasks`.
    TooMany {
        count: usize,
        limit: usize,
    },
    /// Not a list: what it was.
    NotAList(String),
}

/// Reads tasks one by one into the model; keeps their problems apart so
/// that they can be listed after those of the root.
#[derive(Default)]
struct TaskCollector {
    tasks: Vec<TaskSpec>,
    unreadable: BTreeMap<usize, Unreadable>,
    report: Report,
}

impl TaskCollector {
    fn push(&mut self, item: Value) {
        let position = self.tasks.len();
        let (task, unreadable) = read_task(item, position, &mut self.report);
        self.tasks.push(task);
        if !unreadable.is_empty() {
            self.unreadable.insert(position, unreadable);
        }
    }
}

/// Reads the text; `None` (with the problems reported) when it is not
/// well-formed.
fn read_document(
    text: &str,
    format: SpecFormat,
    limits: &SpecLimits,
    report: &mut Report,
) -> Option<Document> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let format = match format {
        SpecFormat::Detect if text.trim_start().starts_with('{') => SpecFormat::Json,
        SpecFormat::Detect => SpecFormat::Yaml,
        other => other,
    };
    match format {
        SpecFormat::Json => {
            let mut deserializer = serde_json::Deserializer::from_str(text);
            let document = JsonDocument { limits }
                .deserialize(&mut deserializer)
                .and_then(|document| {
                    deserializer.end()?;
                    Ok(document)
                });
            match document {
                Ok(document) => Some(document),
                Err(error) => {
                    report.push("", format!("invalid JSON: {error}"));
                    None
                }
            }
        }
        _ => {
            let mut yaml: serde_yaml_ng::Value = match serde_yaml_ng::from_str(text) {
                Ok(yaml) => yaml,
                Err(error) => {
                    report.push("", format!("invalid YAML: {error}"));
                    return None;
                }
            };
            if let Err(error) = yaml.apply_merge() {
                report.push("", format!("invalid YAML merge key (`<<`): {error}"));
                return None;
            }
            let mut path = String::new();
            let mut problems = Vec::new();
            let value = yaml_to_json(yaml, &mut path, &mut problems);
            if !problems.is_empty() {
                for problem in problems {
                    report.push(problem.field, problem.reason);
                }
                return None;
            }
            Some(document_of_value(value, limits))
        }
    }
}

/// Splits a whole generic value into a [`Document`] (the YAML path).
fn document_of_value(value: Value, limits: &SpecLimits) -> Document {
    let Value::Object(mut root) = value else {
        return Document::Other(describe(&value));
    };
    let tasks = match root.remove("tasks") {
        None | Some(Value::Null) => Tasks::Missing,
        Some(Value::Array(items)) if items.len() > limits.max_tasks => Tasks::TooMany {
            count: items.len(),
            limit: limits.max_tasks,
        },
        Some(Value::Array(items)) => {
            let mut collector = TaskCollector::default();
            collector.tasks.reserve_exact(items.len());
            for item in items {
                collector.push(item);
            }
            Tasks::Read(collector)
        }
        Some(other) => Tasks::NotAList(describe(&other)),
    };
    Document::Object { root, tasks }
}

/// The visits of a scalar where a container was expected: each describes
/// what was found instead, for the error message.
macro_rules! visit_scalars_as {
    ($value:ty, $found:expr) => {
        fn visit_bool<E>(self, value: bool) -> Result<$value, E> {
            Ok($found(describe(&Value::Bool(value))))
        }

        fn visit_i64<E>(self, value: i64) -> Result<$value, E> {
            Ok($found(describe(&Value::Number(value.into()))))
        }

        fn visit_u64<E>(self, value: u64) -> Result<$value, E> {
            Ok($found(describe(&Value::Number(value.into()))))
        }

        fn visit_f64<E>(self, value: f64) -> Result<$value, E> {
            Ok($found(format!("the number `{value}`")))
        }

        fn visit_str<E>(self, value: &str) -> Result<$value, E> {
            Ok($found(format!("the string `{value}`")))
        }
    };
}

/// Streams a JSON document: the root's fields become generic values, except
/// `tasks`, which [`JsonTasks`] reads element by element.
struct JsonDocument<'a> {
    limits: &'a SpecLimits,
}

impl<'de> DeserializeSeed<'de> for JsonDocument<'_> {
    type Value = Document;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Document, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonDocument<'_> {
    type Value = Document;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a DAG document")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Document, A::Error> {
        let mut root = Map::new();
        let mut tasks = None;
        while let Some(key) = access.next_key::<String>()? {
            if root.contains_key(&key) || (key == "tasks" && tasks.is_some()) {
                return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
            }
            if key == "tasks" {
                tasks = Some(access.next_value_seed(JsonTasks {
                    limits: self.limits,
                })?);
            } else {
                let StrictJson(value) = access.next_value()?;
                root.insert(key, value);
            }
        }
        Ok(Document::Object {
            root,
            tasks: tasks.unwrap_or_default(),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Document, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Document::Other("a list".to_string()))
    }

    visit_scalars_as!(Document, Document::Other);

    fn visit_unit<E>(self) -> Result<Document, E> {
        Ok(Document::Other("null".to_string()))
    }
}

/// Reads the `tasks` list of a JSON document one element at a time.
struct JsonTasks<'a> {
    limits: &'a SpecLimits,
}

impl<'de> DeserializeSeed<'de> for JsonTasks<'_> {
    type Value = Tasks;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Tasks, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonTasks<'_> {
    type Value = Tasks;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a list of tasks")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tasks, A::Error> {
        let mut collector = TaskCollector::default();
        while collector.tasks.len() < self.limits.max_tasks {
            match seq.next_element::<StrictJson>()? {
                Some(StrictJson(item)) => collector.push(item),
                None => return Ok(Tasks::Read(collector)),
            }
        }
        // At the limit: anything more is counted, not kept.
        if seq.next_element::<IgnoredAny>()?.is_none() {
            return Ok(Tasks::Read(collector));
        }
        let mut count = collector.tasks.len() + 1;
        drop(collector);
        while seq.next_element::<IgnoredAny>()?.is_some() {
            count += 1;
        }
        Ok(Tasks::TooMany {
            count,
            limit: self.limits.max_tasks,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Tasks, A::Error> {
        while access.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Tasks::NotAList("a mapping".to_string()))
    }

    visit_scalars_as!(Tasks, Tasks::NotAList);

    fn visit_unit<E>(self) -> Result<Tasks, E> {
        Ok(Tasks::Missing)
    }
}

/// A JSON value read with duplicate keys refused (serde_json's own `Value`
/// keeps the last one silently).
struct StrictJson(Value);

impl<'de> Deserialize<'de> for StrictJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(StrictJsonVisitor)
            .map(StrictJson)
    }
}

struct StrictJsonVisitor;

impl<'de> Visitor<'de> for StrictJsonVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Value, E> {
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{value} is not a finite number")))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_string()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(StrictJson(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
            }
            let StrictJson(value) = access.next_value()?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// Converts a YAML value, consuming it. `path` is the path of `yaml`, kept
/// as one buffer that grows and shrinks. The parser bounds nesting depth,
/// so the recursion is bounded too.
fn yaml_to_json(
    yaml: serde_yaml_ng::Value,
    path: &mut String,
    problems: &mut Vec<FieldViolation>,
) -> Value {
    use serde_yaml_ng::Value as Yaml;
    match yaml {
        Yaml::Null => Value::Null,
        Yaml::Bool(value) => Value::Bool(value),
        Yaml::String(value) => Value::String(value),
        Yaml::Number(number) => {
            if let Some(value) = number.as_u64() {
                Value::Number(value.into())
            } else if let Some(value) = number.as_i64() {
                Value::Number(value.into())
            } else if let Some(value) = number.as_f64().and_then(Number::from_f64) {
                Value::Number(value)
            } else {
                problems.push(FieldViolation::new(
                    path.clone(),
                    format!("`{number}` is not a finite number"),
                ));
                Value::Null
            }
        }
        Yaml::Sequence(items) => {
            let mut array = Vec::with_capacity(items.len());
            for (position, item) in items.into_iter().enumerate() {
                let length = path.len();
                path.push_str(&format!("[{position}]"));
                array.push(yaml_to_json(item, path, problems));
                path.truncate(length);
            }
            Value::Array(array)
        }
        Yaml::Mapping(mapping) => {
            let mut map = Map::with_capacity(mapping.len());
            for (key, item) in mapping {
                let Yaml::String(key) = key else {
                    problems.push(FieldViolation::new(
                        path.clone(),
                        format!(
                            "mapping keys must be strings; {} is not (quote it)",
                            describe_yaml(&key)
                        ),
                    ));
                    continue;
                };
                let length = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key);
                let value = yaml_to_json(item, path, problems);
                path.truncate(length);
                map.insert(key, value);
            }
            Value::Object(map)
        }
        Yaml::Tagged(tagged) => {
            problems.push(FieldViolation::new(
                path.clone(),
                format!("YAML tags such as `{}` are not supported", tagged.tag),
            ));
            Value::Null
        }
    }
}

fn describe_yaml(value: &serde_yaml_ng::Value) -> String {
    use serde_yaml_ng::Value as Yaml;
    match value {
        Yaml::Null => "the null key".to_string(),
        Yaml::Bool(value) => format!("the boolean key `{value}`"),
        Yaml::Number(value) => format!("the number key `{value}`"),
        Yaml::String(value) => format!("the key `{value}`"),
        Yaml::Sequence(_) => "a list used as a key".to_string(),
        Yaml::Mapping(_) => "a mapping used as a key".to_string(),
        Yaml::Tagged(tagged) => format!("a `{}` tagged key", tagged.tag),
    }
}

/// "a string `x`", "the number 5", … for messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(value) => format!("the boolean `{value}`"),
        Value::Number(value) => format!("the number `{value}`"),
        Value::String(value) => format!("the string `{value}`"),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "a mapping".to_string(),
    }
}

/// Which object a field list belongs to, for unknown-field hints.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Root,
    Defaults,
    Task,
    /// A mapping inside one of those (`schedule`, a param, `sensor`).
    Nested,
}

/// Reads the model out of a document, consuming it.
fn read_spec(document: Document, report: &mut Report) -> Parsed {
    let mut parsed = Parsed::default();
    let (root, tasks) = match document {
        Document::Object { root, tasks } => (root, tasks),
        Document::Other(what) => {
            report.push(
                "",
                format!("a DAG document must be a mapping with `id` and `tasks`; found {what}"),
            );
            parsed.root = Unreadable::whole();
            return parsed;
        }
    };

    let (spec, root_unreadable) = read_object::<DagSpec>(
        &root,
        Place::Root,
        Level::Root,
        &["default_args", "tasks"],
        report,
    );
    parsed.spec = spec;
    parsed.root = root_unreadable;
    if is_missing(&root, "id") {
        report.push("id", "missing; a DAG needs an `id`");
        parsed.root.insert("id");
    }

    match root.get("default_args") {
        None | Some(Value::Null) => {}
        Some(Value::Object(defaults)) => {
            let (defaults, unreadable) = read_object::<TaskDefaults>(
                defaults,
                Place::Defaults,
                Level::Defaults,
                &[],
                report,
            );
            parsed.spec.default_args = defaults;
            parsed.defaults = unreadable;
        }
        Some(other) => {
            report.push(
                "default_args",
                format!(
                    "expected a mapping of task settings, found {}",
                    describe(other)
                ),
            );
            parsed.defaults = Unreadable::whole();
        }
    }
    drop(root);

    match tasks {
        Tasks::Missing => {}
        Tasks::Read(collector) => {
            parsed.spec.tasks = collector.tasks;
            parsed.tasks = collector.unreadable;
            report.append(collector.report);
        }
        Tasks::TooMany { count, limit } => {
            report.push(
                "tasks",
                format!("the DAG has {count} tasks; the limit is {limit}"),
            );
            parsed.root.insert("tasks");
        }
        Tasks::NotAList(what) => {
            report.push("tasks", format!("expected a list of tasks, found {what}"));
            parsed.root.insert("tasks");
        }
    }
    parsed
}

fn read_task(item: Value, position: usize, report: &mut Report) -> (TaskSpec, Unreadable) {
    let place = Place::Task(position);
    let Value::Object(map) = item else {
        report.push(
            place.path(),
            format!(
                "expected a task (a mapping with at least `id`), found {}",
                describe(&item)
            ),
        );
        return (TaskSpec::default(), Unreadable::whole());
    };
    let (task, mut unreadable) = read_object::<TaskSpec>(&map, place, Level::Task, &[], report);
    if is_missing(&map, "id") {
        report.push(place.field("id"), "missing; every task needs an `id`");
        unreadable.insert("id");
    }
    (task, unreadable)
}

/// Absent and `null` are the same: not written.
fn is_missing(map: &Map<String, Value>, field: &str) -> bool {
    map.get(field).is_none_or(Value::is_null)
}

/// Deserializes one object of the model from `map`: reports unknown fields,
/// then type errors with their paths. Fields listed in `elsewhere` are known
/// but read by the caller. Returns the model built from the readable fields
/// and the fields that were not.
fn read_object<T: DeserializeOwned + Default>(
    map: &Map<String, Value>,
    place: Place,
    level: Level,
    elsewhere: &[&str],
    report: &mut Report,
) -> (T, Unreadable) {
    let known = serde_introspect::<T>();
    let find_known = |key: &str| known.iter().copied().find(|name| *name == key);
    for key in map.keys() {
        if find_known(key).is_none() {
            report.push(place.field(key), unknown_field_reason(key, level, known));
        }
    }
    let entries = || {
        map.iter()
            .filter(|(key, value)| !value.is_null() && !elsewhere.contains(&key.as_str()))
            .filter_map(|(key, value)| find_known(key).map(|name| (name, value)))
    };
    if let Ok(object) = T::deserialize(MapDeserializer::<_, serde_json::Error>::new(entries())) {
        return (object, Unreadable::default());
    }

    // Some field has the wrong type: find each one.
    let mut unreadable = Unreadable::default();
    for (name, value) in entries() {
        let single = MapDeserializer::<_, serde_json::Error>::new(std::iter::once((name, value)));
        if let Err(error) = serde_path_to_error::deserialize::<_, T>(single) {
            let mut field = place.path();
            for segment in error.path().iter() {
                match segment {
                    serde_path_to_error::Segment::Seq { index } => {
                        field.push_str(&format!("[{index}]"))
                    }
                    serde_path_to_error::Segment::Map { key }
                    | serde_path_to_error::Segment::Enum { variant: key } => {
                        if !field.is_empty() {
                            field.push('.');
                        }
                        field.push_str(key);
                    }
                    serde_path_to_error::Segment::Unknown => {}
                }
            }
            report.push(field, plain_type_names(error.into_inner().to_string()));
            unreadable.insert(name);
        }
    }
    let readable = entries().filter(|(name, _)| !unreadable.has(name));
    match T::deserialize(MapDeserializer::<_, serde_json::Error>::new(readable)) {
        Ok(object) => (object, unreadable),
        Err(error) => {
            // Every field read alone, yet not together: should not happen.
            report.push(place.path(), error.to_string());
            (T::default(), Unreadable::whole())
        }
    }
}

/// serde names Rust types in its messages (`expected u32`); users read
/// documents, not Rust. An unknown field of a nested mapping (`schedule`,
/// a param, `sensor`) reads like one of a task: with a suggestion.
fn plain_type_names(message: String) -> String {
    if let Some(reason) = nested_unknown_field(&message) {
        return reason;
    }
    const NAMES: &[(&str, &str)] = &[
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        (
            "expected i32",
            "expected a whole number from -2147483648 to 2147483647",
        ),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected `true` or `false`"),
        ("expected a map", "expected a mapping"),
        ("expected a sequence", "expected a list"),
    ];
    for (rust, plain) in NAMES {
        if let Some(start) = message.find(rust) {
            let end = start + rust.len();
            if !message[end..].starts_with(|c: char| c.is_alphanumeric()) {
                return format!("{}{plain}{}", &message[..start], &message[end..]);
            }
        }
    }
    message
}

/// "unknown field `crn`, expected one of `cron`, `every`" (serde's
/// message for `deny_unknown_fields`) as "unknown field; did you mean
/// `cron`?". The path already ends with the field.
fn nested_unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, expected) = rest.split_once("`, ")?;
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    Some(unknown_field_reason(key, Level::Nested, &known))
}

/// Words users reach for that strsim would not map to the right field.
const SYNONYMS: &[(&str, &str)] = &[
    ("cmd", "command"),
    ("args", "command"),
    ("argv", "command"),
    ("run", "command"),
    ("script", "command"),
    ("deps", "depends_on"),
    ("dependencies", "depends_on"),
    ("upstream", "depends_on"),
    ("after", "depends_on"),
    ("needs", "depends_on"),
    ("environment", "env"),
    ("workdir", "cwd"),
    ("working_dir", "cwd"),
    ("name", "id"),
    ("dag_id", "id"),
    ("task_id", "id"),
    ("type", "kind"),
    ("retry", "retries"),
    ("execution_timeout", "timeout"),
    ("priority_weight", "priority"),
    ("defaults", "default_args"),
    ("schedule_interval", "schedule"),
    ("tz", "timezone"),
    ("time_zone", "timezone"),
    ("parameters", "params"),
    ("outlets", "outputs"),
    ("produces", "outputs"),
    ("interval", "every"),
    ("trigger", "trigger_rule"),
    ("when", "run_if"),
    ("if", "run_if"),
    ("condition", "run_if"),
    ("expand", "map_over"),
    ("for_each", "map_over"),
    ("foreach", "map_over"),
    ("with_items", "map_over"),
    ("withItems", "map_over"),
    ("withParam", "map_over"),
    ("url_template", "url"),
];

fn unknown_field_reason(key: &str, level: Level, known: &[&str]) -> String {
    let task_fields = serde_introspect::<TaskSpec>();
    let shared_fields = serde_introspect::<TaskDefaults>();
    match level {
        Level::Root if shared_fields.contains(&key) => {
            return format!(
                "unknown field; put `{key}` under `default_args` to apply it to every task, or on a task"
            );
        }
        Level::Root if task_fields.contains(&key) => {
            return format!("unknown field; `{key}` is set on each task under `tasks`");
        }
        Level::Defaults if task_fields.contains(&key) => {
            return format!(
                "unknown field; `{key}` cannot be shared through `default_args`: set it on each task"
            );
        }
        Level::Task | Level::Defaults if serde_introspect::<DagSpec>().contains(&key) => {
            return format!(
                "unknown field; `{key}` is set at the top of the document, for the whole DAG"
            );
        }
        Level::Task if serde_introspect::<SensorSpec>().contains(&key) => {
            return format!("unknown field; `{key}` is set under `sensor`");
        }
        _ => {}
    }
    let synonym = SYNONYMS
        .iter()
        .find(|(word, field)| word.eq_ignore_ascii_case(key) && known.contains(field))
        .map(|(_, field)| *field);
    match synonym.or_else(|| did_you_mean(key, known.iter().copied())) {
        Some(field) => format!("unknown field; did you mean `{field}`?"),
        None => {
            let names: Vec<String> = known.iter().map(|name| format!("`{name}`")).collect();
            format!("unknown field; the fields here are {}", names.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    use std::time::Duration;

    use super::*;
    use crate::spec::{
        CommandTask, DEFAULT_QUEUE, MAX_REPORTED_VIOLATIONS, ResolvedTask, RetryPolicy, TaskKind,
    };

    fn parse(text: &str) -> Result<ValidatedDag, SpecErrors> {
        parse_dag(text, SpecFormat::Detect, &SpecLimits::default())
    }

    fn valid(text: &str) -> ValidatedDag {
        match parse(text) {
            Ok(dag) => dag,
            Err(errors) => panic!("expected a valid document, got:\n{errors}"),
        }
    }

    fn violations(text: &str) -> Vec<FieldViolation> {
        violations_with(text, &SpecLimits::default())
    }

    fn violations_with(text: &str, limits: &SpecLimits) -> Vec<FieldViolation> {
        match parse_dag(text, SpecFormat::Detect, limits) {
            Ok(dag) => panic!(
                "expected violations, got a valid DAG: {}",
                dag.canonical_json
            ),
            Err(errors) => errors.0,
        }
    }

    /// The reason reported for `field`; fails listing everything otherwise.
    fn reason<'a>(violations: &'a [FieldViolation], field: &str) -> &'a str {
        match violations.iter().find(|violation| violation.field == field) {
            Some(violation) => &violation.reason,
            None => panic!(
                "no violation for `{field}` in:\n{}",
                SpecErrors(violations.to_vec())
            ),
        }
    }

    fn assert_reason(violations: &[FieldViolation], field: &str, expected: &str) {
        let reason = reason(violations, field);
        assert!(
            reason.contains(expected),
            "`{field}`: expected `{expected}` in `{reason}`"
        );
    }

    fn command(task: &ResolvedTask) -> &CommandTask {
        match &task.kind {
            TaskKind::Command(command) => command,
            other => panic!("task {} is a {} task", task.id, other.name()),
        }
    }

    const ETL_YAML: &str = r#"
# Nightly ETL.
id: etl
description: Nightly ETL
schedule: "@daily"
default_args:
  retries: 1
  retry_delay: 30s
  retry_exponential_backoff: true
  max_retry_delay: 10m
  retry_jitter: 0.1
  timeout: 1h
  queue: etl-queue
  priority: 5
  env: {SHARED: "1", REGION: eu}
  cwd: /data
tasks:
  - id: extract
    command: ["python", "extract.py"]
    env: {REGION: us}
  - id: transform
    command: python transform.py --date "$BATON_LOGICAL_DATE"
    depends_on: extract
    retries: 3
    retry_delay: 60
    cwd: /tmp
    queue: cpu
    priority: -1
  - id: load
    kind: command
    command: [python, load.py]
    depends_on: [transform, extract, transform]
    timeout: 90s
  - id: done
    kind: noop
    depends_on: [load]
"#;

    const ETL_JSON: &str = r#"{
      "tasks": [
        {"env": {"REGION": "us"}, "command": ["python", "extract.py"], "id": "extract"},
        {"id": "transform", "command": "python transform.py --date \"$BATON_LOGICAL_DATE\"",
         "depends_on": ["extract"], "retries": 3, "retry_delay": "1m", "cwd": "/tmp",
         "queue": "cpu", "priority": -1},
        {"id": "load", "kind": "command", "command": ["python", "load.py"],
         "depends_on": ["transform", "extract", "transform"], "timeout": "1m 30s"},
        {"id": "done", "kind": "noop", "depends_on": "load"}
      ],
      "default_args": {"cwd": "/data", "env": {"REGION": "eu", "SHARED": "1"}, "priority": 5,
        "queue": "etl-queue", "timeout": 3600, "retry_jitter": 0.1, "max_retry_delay": 600,
        "retry_exponential_backoff": true, "retry_delay": 30, "retries": 1},
      "schedule": "@daily",
      "description": "Nightly ETL",
      "id": "etl"
    }"#;

    #[test]
    fn defaults_apply_and_tasks_override_them() {
        let dag = valid(ETL_YAML);
        assert_eq!(dag.dag_id.as_str(), "etl");
        assert_eq!(dag.description, "Nightly ETL");
        assert_eq!(dag.schedule.as_deref(), Some("@daily"));
        let ids: Vec<&str> = dag.tasks.iter().map(|task| task.id.as_str()).collect();
        assert_eq!(ids, ["extract", "transform", "load", "done"]);

        let extract = &dag.tasks[0];
        assert_eq!(extract.retries, 1);
        assert_eq!(
            extract.retry,
            RetryPolicy {
                delay: Duration::from_secs(30),
                exponential_backoff: true,
                max_delay: Duration::from_secs(600),
                jitter: 0.1,
            }
        );
        assert_eq!(extract.timeout, Some(Duration::from_secs(3_600)));
        assert_eq!(extract.queue.as_str(), "etl-queue");
        assert_eq!(extract.priority, 5);
        let extract_command = command(extract);
        assert_eq!(extract_command.argv, ["python", "extract.py"]);
        let expected_env: BTreeMap<String, String> = [("REGION", "us"), ("SHARED", "1")]
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .into();
        assert_eq!(
            extract_command.env, expected_env,
            "the task's env wins over default_args.env"
        );
        assert_eq!(extract_command.cwd.as_deref(), Some("/data"));

        let transform = &dag.tasks[1];
        assert_eq!(transform.depends_on, [0]);
        assert_eq!(transform.retries, 3);
        assert_eq!(transform.retry.delay, Duration::from_secs(60));
        assert_eq!(transform.queue.as_str(), "cpu");
        assert_eq!(transform.priority, -1);
        let transform_command = command(transform);
        assert_eq!(
            transform_command.argv,
            [
                "sh",
                "-c",
                "python transform.py --date \"$BATON_LOGICAL_DATE\""
            ]
        );
        assert_eq!(transform_command.cwd.as_deref(), Some("/tmp"));
        assert_eq!(
            transform_command.env.get("REGION").map(String::as_str),
            Some("eu")
        );

        let load = &dag.tasks[2];
        assert_eq!(
            load.depends_on,
            [1, 0],
            "duplicates removed, first-written order kept"
        );
        assert_eq!(load.timeout, Some(Duration::from_secs(90)));

        let done = &dag.tasks[3];
        assert_eq!(done.kind, TaskKind::Noop);
        assert_eq!(done.depends_on, [2]);
    }

    #[test]
    fn unset_settings_take_the_builtin_defaults() {
        let dag = valid("id: tiny\ntasks:\n  - id: only\n    command: [\"true\"]\n");
        let task = &dag.tasks[0];
        assert_eq!(task.retries, 0);
        assert_eq!(task.retry, RetryPolicy::default());
        assert_eq!(task.retry.delay, Duration::from_secs(10));
        assert_eq!(task.retry.max_delay, Duration::from_secs(3_600));
        assert_eq!(task.timeout, None);
        assert_eq!(task.queue.as_str(), DEFAULT_QUEUE);
        assert_eq!(task.priority, 0);
        assert!(task.depends_on.is_empty());
        assert_eq!(
            task.kind,
            TaskKind::Command(Box::new(CommandTask {
                argv: vec!["true".into()],
                env: BTreeMap::new(),
                cwd: None
            }))
        );
        assert_eq!(dag.description, "");
        assert_eq!(dag.schedule, None);
    }

    #[test]
    fn yaml_and_json_of_the_same_dag_have_the_same_digest() {
        let from_yaml = valid(ETL_YAML);
        let from_json = valid(ETL_JSON);
        assert_eq!(from_yaml.canonical_json, from_json.canonical_json);
        assert_eq!(from_yaml.digest, from_json.digest);
        assert_eq!(from_yaml, from_json);
        assert_eq!(
            from_yaml.digest, "7ef081309cc3b22028730e66064c31da3d1f3c648536483b75c19d7d878c0248",
            "pinned before schedules were interpreted: old documents keep their digest"
        );
        assert_eq!(from_yaml.digest.len(), 64);
        assert!(
            from_yaml
                .digest
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );

        let changed = valid(&ETL_YAML.replace("retries: 3", "retries: 4"));
        assert_ne!(
            changed.digest, from_yaml.digest,
            "a changed spec is a new version"
        );
    }

    #[test]
    fn canonical_json_has_a_fixed_shape() {
        let dag =
            valid("tasks: [{command: echo hi, id: a, depends_on: []}]\nid: x\ndefault_args: {}\n");
        assert_eq!(
            dag.canonical_json,
            r#"{"id":"x","tasks":[{"id":"a","command":"echo hi"}]}"#
        );
        let dag = valid(
            "id: x\ntasks:\n  - {id: a, command: [\"true\"], retry_delay: 90, env: {B: b, A: a}}\n  - {id: b, kind: noop, depends_on: a}\n",
        );
        assert_eq!(
            dag.canonical_json,
            r#"{"id":"x","tasks":[{"id":"a","command":["true"],"env":{"A":"a","B":"b"},"retry_delay":"1m 30s"},{"id":"b","kind":"noop","depends_on":["a"]}]}"#
        );
    }

    #[test]
    fn canonical_json_parses_back_to_the_same_dag() {
        for text in [ETL_YAML, ETL_JSON] {
            let dag = valid(text);
            let again = parse_dag(
                &dag.canonical_json,
                SpecFormat::Json,
                &SpecLimits::default(),
            )
            .expect("canonical parses");
            assert_eq!(again, dag);
        }
    }

    #[test]
    fn format_detection_and_explicit_formats() {
        let json = r#"{"id": "x", "tasks": [{"id": "a", "command": "true"}]}"#;
        assert!(parse_dag(json, SpecFormat::Json, &SpecLimits::default()).is_ok());
        assert!(
            parse_dag(json, SpecFormat::Yaml, &SpecLimits::default()).is_ok(),
            "JSON is YAML too"
        );
        let yaml = "id: x\ntasks: [{id: a, command: \"true\"}]\n";
        let errors = parse_dag(yaml, SpecFormat::Json, &SpecLimits::default())
            .unwrap_err()
            .0;
        assert!(
            errors[0].reason.starts_with("invalid JSON:"),
            "{:?}",
            errors
        );
        assert!(
            parse_dag(
                &format!("\u{feff}{json}"),
                SpecFormat::Detect,
                &SpecLimits::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn documents_over_the_size_limit_are_refused_before_parsing() {
        let limits = SpecLimits {
            max_spec_bytes: 10,
            ..SpecLimits::default()
        };
        let errors = violations_with("id: x\ntasks: [ this is not even valid", &limits);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "");
        assert_eq!(
            errors[0].reason,
            "the document is 37 bytes; the limit is 10 bytes"
        );
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let errors = violations("id: x\ntasks:\n  - id: a\n    command: [echo\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "");
        assert!(
            errors[0].reason.starts_with("invalid YAML:"),
            "{}",
            errors[0].reason
        );
        assert!(
            errors[0].reason.contains("line 5 column 1"),
            "{}",
            errors[0].reason
        );

        let errors = violations("{\"id\": \"x\",\n \"tasks\": [}\n");
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].reason.starts_with("invalid JSON:"),
            "{}",
            errors[0].reason
        );
        assert!(
            errors[0].reason.contains("line 2 column 12"),
            "{}",
            errors[0].reason
        );
    }

    #[test]
    fn duplicate_keys_are_errors_in_both_formats() {
        let errors = violations(
            "{\"id\": \"x\", \"tasks\": [{\"id\": \"a\", \"retries\": 1, \"retries\": 2}]}",
        );
        assert!(
            errors[0]
                .reason
                .contains("duplicate key `retries` at line 1"),
            "{:?}",
            errors
        );
        let errors = violations("id: x\ntasks:\n  - id: a\n    retries: 1\n    retries: 2\n");
        assert!(
            errors[0]
                .reason
                .contains("duplicate entry with key \"retries\""),
            "{:?}",
            errors
        );
    }

    #[test]
    fn unknown_fields_get_a_suggestion_when_one_is_close() {
        let errors = violations(
            "id: x\ndescripton: typo\ndefault_args: {retry_dealy: 5s}\ntasks:\n  - {id: a, command: \"true\"}\n  - {id: b, command: \"true\", retires: 2, zzzz: 1}\n",
        );
        assert_eq!(
            reason(&errors, "tasks[1].retires"),
            "unknown field; did you mean `retries`?"
        );
        assert_eq!(
            reason(&errors, "descripton"),
            "unknown field; did you mean `description`?"
        );
        assert_eq!(
            reason(&errors, "default_args.retry_dealy"),
            "unknown field; did you mean `retry_delay`?"
        );
        let listed = reason(&errors, "tasks[1].zzzz");
        assert!(
            listed.starts_with(
                "unknown field; the fields here are `id`, `description`, `kind`, `command`"
            ),
            "{listed}"
        );
        assert!(
            listed.contains("`depends_on`") && listed.contains("`priority`"),
            "{listed}"
        );
        assert_eq!(errors.len(), 4, "{errors:?}");
    }

    #[test]
    fn misplaced_fields_say_where_they_belong() {
        let errors = violations(
            "id: x\nretries: 3\ncommand: [\"true\"]\ndefault_args: {depends_on: [a]}\ntasks:\n  - {id: a, cmd: [\"true\"]}\n",
        );
        assert_reason(&errors, "retries", "put `retries` under `default_args`");
        assert_reason(&errors, "command", "`command` is set on each task");
        assert_reason(
            &errors,
            "default_args.depends_on",
            "cannot be shared through `default_args`",
        );
        assert_eq!(
            reason(&errors, "tasks[0].cmd"),
            "unknown field; did you mean `command`?"
        );
    }

    #[test]
    fn fleet_fields_are_resolved_and_checked() {
        let dag = valid(
            r#"
id: fleet
max_active_tasks: 4
default_args: {pool: db, labels: {zone: eu}, resources: {cpu: "500m", memory: 1Gi}}
tasks:
  - id: load
    command: "true"
    pool_slots: 2
    labels: {gpu: a100}
    max_active: 1
  - id: score
    kind: custom
    handler: ml.score
    payload: {model: v3, threshold: 0.5}
    resources: {cpu: 2}
"#,
        );
        assert_eq!(dag.max_active_tasks, Some(4));
        let load = &dag.tasks[0];
        assert_eq!(load.pool.as_ref().map(|pool| pool.as_str()), Some("db"));
        assert_eq!(load.pool_slots, 2);
        assert_eq!(load.labels.len(), 2, "defaults merged under the task's own");
        assert_eq!(load.resources.cpu_millis, 500);
        assert_eq!(load.resources.memory_bytes, 1 << 30);
        assert_eq!(load.max_active, Some(1));
        let score = &dag.tasks[1];
        match &score.kind {
            TaskKind::Custom(custom) => {
                assert_eq!(custom.handler.as_str(), "ml.score");
                assert_eq!(custom.payload_json, r#"{"model":"v3","threshold":0.5}"#);
            }
            other => panic!("expected a custom task, got {}", other.name()),
        }
        assert_eq!(
            score.resources.cpu_millis, 2000,
            "the task's resources replace the defaults'"
        );
        assert_eq!(score.resources.memory_bytes, 0);

        let errors = violations(
            r#"
id: bad
max_active_tasks: 0
tasks:
  - id: a
    kind: custom
  - id: b
    command: "true"
    handler: x
    pool_slots: 2
    resources: {cpu: -1, memory: 12Qi}
    labels: {"has space": v}
    max_active: 0
  - id: c
    kind: custom
    handler: "no spaces"
    command: "true"
"#,
        );
        assert_reason(&errors, "max_active_tasks", "must be from 1");
        assert_reason(&errors, "tasks[0].handler", "missing");
        assert_reason(
            &errors,
            "tasks[1].handler",
            "only custom tasks take `handler`",
        );
        assert_reason(&errors, "tasks[1].pool_slots", "needs a `pool`");
        assert_reason(&errors, "tasks[1].resources.cpu", "CPU must be");
        assert_reason(&errors, "tasks[1].resources.memory", "unknown memory unit");
        assert_reason(&errors, "tasks[1].labels.has space", "label keys");
        assert_reason(&errors, "tasks[1].max_active", "must be from 1");
        assert_reason(&errors, "tasks[2].handler", "only letters");
        assert_reason(&errors, "tasks[2].command", "custom task runs its handler");
    }

    #[test]
    fn known_field_lists_come_from_the_model() {
        let task_fields = serde_introspect::<TaskSpec>();
        for field in serde_introspect::<TaskDefaults>() {
            if !matches!(*field, "env" | "cwd") {
                assert!(task_fields.contains(field), "a task can override `{field}`");
            }
        }
        assert_eq!(
            serde_introspect::<DagSpec>(),
            [
                "id",
                "description",
                "schedule",
                "timezone",
                "start_date",
                "end_date",
                "catchup",
                "max_active_runs",
                "params",
                "sla",
                "default_args",
                "max_active_tasks",
                "notify",
                "tasks"
            ]
        );
    }

    #[test]
    fn every_type_error_is_reported_with_its_path() {
        let errors = violations(
            r#"
id: x
default_args: {retry_exponential_backoff: yes, env: {PORT: 8080}}
tasks:
  - id: a
    retries: "three"
    priority: 1.5
    command: [echo, 1]
  - id: b
    depends_on: [a, 7]
    timeout: soon
    kind: http
  - 5
  - id: c
    command: "true"
    env: [A]
"#,
        );
        assert_reason(
            &errors,
            "default_args.retry_exponential_backoff",
            "invalid type: string \"yes\", expected `true` or `false`",
        );
        assert_reason(
            &errors,
            "default_args.env.PORT",
            "invalid type: integer `8080`, expected a string",
        );
        assert_reason(
            &errors,
            "tasks[0].retries",
            "invalid type: string \"three\", expected a whole number from 0 to 4294967295",
        );
        assert_reason(
            &errors,
            "tasks[0].priority",
            "floating point `1.5`, expected a whole number from -2147483648",
        );
        assert_reason(
            &errors,
            "tasks[0].command[1]",
            "invalid type: integer `1`, expected a string",
        );
        assert_reason(&errors, "tasks[1].depends_on[1]", "expected a string");
        assert_reason(&errors, "tasks[1].timeout", "`soon` is not a duration");
        assert_reason(
            &errors,
            "tasks[1].kind",
            "unknown variant `http`, expected one of `command`, `noop`, `custom`",
        );
        assert_reason(
            &errors,
            "tasks[2]",
            "expected a task (a mapping with at least `id`), found the number `5`",
        );
        assert_reason(
            &errors,
            "tasks[3].env",
            "invalid type: sequence, expected a mapping",
        );
        assert_eq!(
            errors.len(),
            10,
            "no knock-on errors from fields that could not be read: {errors:?}"
        );
    }

    #[test]
    fn yaml_one_point_one_booleans_stay_strings() {
        let dag = valid("id: x\ntasks:\n  - {id: a, command: [echo, on, yes, no], queue: on}\n");
        assert_eq!(command(&dag.tasks[0]).argv, ["echo", "on", "yes", "no"]);
        assert_eq!(dag.tasks[0].queue.as_str(), "on");
    }

    #[test]
    fn non_string_keys_tags_and_non_finite_numbers_are_refused() {
        let errors =
            violations("id: x\ntasks:\n  - id: a\n    command: \"true\"\n    env: {1: one}\n");
        assert_reason(
            &errors,
            "tasks[0].env",
            "mapping keys must be strings; the number key `1` is not",
        );
        let errors = violations("id: x\ntasks:\n  - {id: a, command: !shell \"true\"}\n");
        assert_reason(
            &errors,
            "tasks[0].command",
            "YAML tags such as `!shell` are not supported",
        );
        let errors =
            violations("id: x\ntasks:\n  - {id: a, command: \"true\", retry_jitter: .nan}\n");
        assert_reason(&errors, "tasks[0].retry_jitter", "is not a finite number");
    }

    #[test]
    fn yaml_merge_keys_and_nulls() {
        let dag = valid(
            "id: x\ntasks:\n  - &a {id: a, retries: 2, command: [\"true\"], description: ~}\n  - {<<: *a, id: b, depends_on: ~}\n",
        );
        assert_eq!(dag.tasks[1].retries, 2);
        assert_eq!(command(&dag.tasks[1]).argv, ["true"]);
        assert!(dag.tasks[1].depends_on.is_empty(), "null means not written");
        assert!(
            !dag.canonical_json.contains("null"),
            "{}",
            dag.canonical_json
        );
    }

    #[test]
    fn document_must_be_a_mapping() {
        let errors = violations("[1, 2]");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "");
        assert_eq!(
            errors[0].reason,
            "a DAG document must be a mapping with `id` and `tasks`; found a list"
        );
        let errors = violations("");
        assert_eq!(
            errors[0].reason,
            "a DAG document must be a mapping with `id` and `tasks`; found null"
        );
    }

    #[test]
    fn ids_follow_the_naming_rule() {
        let errors = violations(
            "id: \"my dag\"\ntasks:\n  - {id: -a, command: \"true\", queue: \"q/1\"}\n  - {id: b, command: \"true\", depends_on: [\"x y\"]}\n  - {command: \"true\"}\n",
        );
        assert_eq!(
            reason(&errors, "id"),
            "dag id `my dag` contains ' '; only letters, digits, `_`, `.` and `-` are allowed"
        );
        assert_eq!(
            reason(&errors, "tasks[0].id"),
            "task id `-a` must start with a letter or digit"
        );
        assert_reason(&errors, "tasks[0].queue", "queue `q/1` contains '/'");
        assert_reason(
            &errors,
            "tasks[1].depends_on[0]",
            "task id `x y` contains ' '",
        );
        assert_eq!(
            reason(&errors, "tasks[2].id"),
            "missing; every task needs an `id`"
        );
        let errors = violations("tasks: [{id: a, command: \"true\"}]\n");
        assert_eq!(reason(&errors, "id"), "missing; a DAG needs an `id`");
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn a_dag_needs_tasks() {
        for text in ["id: x\n", "id: x\ntasks: []\n", "id: x\ntasks:\n"] {
            let errors = violations(text);
            assert_eq!(
                errors,
                [FieldViolation::new(
                    "tasks",
                    "a DAG needs at least one task"
                )],
                "{text}"
            );
        }
        let errors = violations("id: x\ntasks: {a: 1}\n");
        assert_eq!(
            errors,
            [FieldViolation::new(
                "tasks",
                "expected a list of tasks, found a mapping"
            )]
        );
    }

    #[test]
    fn duplicate_task_ids_name_the_first_definition() {
        let errors = violations(
            "id: x\ntasks:\n  - {id: x, command: \"true\"}\n  - {id: y, command: \"true\"}\n  - {id: z, command: \"true\"}\n  - {id: x, command: \"true\"}\n",
        );
        assert_eq!(
            errors,
            [FieldViolation::new(
                "tasks[3].id",
                "duplicate task id `x` (first defined at tasks[0])"
            )]
        );
    }

    #[test]
    fn unknown_dependencies_get_a_suggestion() {
        let errors = violations(
            "id: x\ntasks:\n  - {id: extract, command: \"true\"}\n  - {id: other, command: \"true\"}\n  - {id: load, command: \"true\", depends_on: [extrct, qqqqqq]}\n",
        );
        assert_eq!(
            errors,
            [
                FieldViolation::new(
                    "tasks[2].depends_on[0]",
                    "unknown task `extrct`; did you mean `extract`?"
                ),
                FieldViolation::new(
                    "tasks[2].depends_on[1]",
                    "unknown task `qqqqqq`; no task in this DAG has that id"
                ),
            ]
        );
    }

    #[test]
    fn a_task_depending_on_itself_is_a_cycle() {
        let errors = violations(
            "id: x\ntasks:\n  - {id: a, command: \"true\"}\n  - {id: b, command: \"true\", depends_on: [a, b]}\n",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "tasks[1].depends_on[1]");
        assert!(
            errors[0].reason.starts_with("dependency cycle: b → b"),
            "{}",
            errors[0].reason
        );
    }

    #[test]
    fn cycles_are_printed_with_arrows() {
        let errors = violations(
            "id: x\ntasks:\n  - {id: a, command: \"true\", depends_on: [b]}\n  - {id: b, command: \"true\", depends_on: c}\n  - {id: c, command: \"true\", depends_on: [a]}\n",
        );
        assert_eq!(
            errors,
            [FieldViolation::new(
                "tasks[0].depends_on[0]",
                "dependency cycle: a → b → c → a"
            )]
        );

        // Two separate cycles, one of them entered from outside: each reported once.
        let errors = violations(
            "id: x\ntasks:\n  - {id: root, command: \"true\"}\n  - {id: p, command: \"true\", depends_on: [root, q]}\n  - {id: q, command: \"true\", depends_on: [p]}\n  - {id: r, command: \"true\", depends_on: [p, s]}\n  - {id: s, command: \"true\", depends_on: [t, r]}\n  - {id: t, command: \"true\", depends_on: [s]}\n",
        );
        assert_eq!(
            errors,
            [
                FieldViolation::new("tasks[1].depends_on[1]", "dependency cycle: p → q → p"),
                FieldViolation::new("tasks[3].depends_on[1]", "dependency cycle: r → s → r"),
            ]
        );
    }

    #[test]
    fn a_long_cycle_is_found_without_recursion_and_shortened() {
        const LENGTH: usize = 100_000;
        let mut text = String::from("{\"id\": \"ring\", \"tasks\": [");
        for position in 0..LENGTH {
            let upstream = (position + 1) % LENGTH;
            if position > 0 {
                text.push(',');
            }
            write!(
                text,
                r#"{{"id": "t{position}", "command": "true", "depends_on": "t{upstream}"}}"#
            )
            .unwrap();
        }
        text.push_str("]}");
        let errors = violations(&text);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "tasks[0].depends_on[0]");
        assert_eq!(
            errors[0].reason,
            "dependency cycle: t0 → t1 → t2 → t3 → t4 → t5 → t6 → t7 → … 99989 more … → t99997 → t99998 → t99999 → t0"
        );
    }

    #[test]
    fn task_and_dependency_limits() {
        let text = "id: x\ntasks:\n  - {id: a, command: \"true\"}\n  - {id: b, command: \"true\", depends_on: [a]}\n  - {id: c, command: \"true\", depends_on: [a, b, a]}\n";
        assert!(parse(text).is_ok());
        let limits = SpecLimits {
            max_tasks: 2,
            ..SpecLimits::default()
        };
        let errors = violations_with(text, &limits);
        assert_eq!(
            errors,
            [FieldViolation::new(
                "tasks",
                "the DAG has 3 tasks; the limit is 2"
            )]
        );
        let limits = SpecLimits {
            max_dependencies: 2,
            ..SpecLimits::default()
        };
        let errors = violations_with(text, &limits);
        assert_eq!(
            errors,
            [FieldViolation::new(
                "tasks",
                "the DAG has 3 dependencies; the limit is 2"
            )]
        );
    }

    #[test]
    fn json_tasks_are_streamed_within_the_limits() {
        let text = r#"{"tasks": [{"id": "a", "command": "true"}, {"id": "b", "command": "true"}, {"id": "c", "command": "true"}], "id": "x"}"#;
        let at_limit = SpecLimits {
            max_tasks: 3,
            ..SpecLimits::default()
        };
        assert_eq!(
            parse_dag(text, SpecFormat::Json, &at_limit)
                .expect("3 tasks fit a limit of 3")
                .tasks
                .len(),
            3
        );
        let below = SpecLimits {
            max_tasks: 2,
            ..SpecLimits::default()
        };
        let errors = parse_dag(text, SpecFormat::Json, &below).unwrap_err().0;
        assert_eq!(
            errors,
            [FieldViolation::new(
                "tasks",
                "the DAG has 3 tasks; the limit is 2"
            )]
        );

        let errors = violations(r#"{"id": "x", "tasks": {"a": 1}}"#);
        assert_eq!(
            errors,
            [FieldViolation::new(
                "tasks",
                "expected a list of tasks, found a mapping"
            )]
        );
        let errors = violations(r#"{"id": "x", "tasks": null}"#);
        assert_eq!(
            errors,
            [FieldViolation::new(
                "tasks",
                "a DAG needs at least one task"
            )]
        );
        let errors = violations(r#"{"id": "x", "tasks": [], "tasks": []}"#);
        assert!(
            errors[0].reason.contains("duplicate key `tasks`"),
            "{errors:?}"
        );
        let errors =
            violations(r#"{"tasks": [{"id": "a", "command": "true", "retires": 1}], "idd": "x"}"#);
        let fields: Vec<&str> = errors
            .iter()
            .map(|violation| violation.field.as_str())
            .collect();
        assert_eq!(
            fields,
            ["idd", "id", "tasks[0].retires"],
            "the root's problems come first"
        );
        for (text, found) in [
            ("[1]", "a list"),
            ("\"x\"", "the string `x`"),
            ("null", "null"),
        ] {
            let errors = parse_dag(text, SpecFormat::Json, &SpecLimits::default())
                .unwrap_err()
                .0;
            assert_eq!(
                errors[0].reason,
                format!("a DAG document must be a mapping with `id` and `tasks`; found {found}")
            );
        }
    }

    #[test]
    fn ranges_of_retry_settings() {
        let errors = violations(
            r#"
id: x
default_args: {retries: 101, retry_jitter: 1.5}
tasks:
  - {id: a, command: "true", timeout: 0s, retry_jitter: -0.1}
  - {id: b, command: "true", retry_delay: "-5s", max_retry_delay: -1}
  - {id: c, command: "true", retry_delay: 5m, max_retry_delay: 1m}
"#,
        );
        assert_eq!(
            reason(&errors, "default_args.retries"),
            "retries is 101; the limit is 100"
        );
        assert_eq!(
            reason(&errors, "default_args.retry_jitter"),
            "retry_jitter is 1.5; it must be between 0 and 1"
        );
        assert_eq!(
            reason(&errors, "tasks[0].retry_jitter"),
            "retry_jitter is -0.1; it must be between 0 and 1"
        );
        assert_eq!(
            reason(&errors, "tasks[0].timeout"),
            "timeout must be longer than zero; leave it out for no timeout"
        );
        assert_reason(
            &errors,
            "tasks[1].retry_delay",
            "duration `-5s` is negative",
        );
        assert_reason(
            &errors,
            "tasks[1].max_retry_delay",
            "duration `-1` is negative",
        );
        assert_eq!(
            reason(&errors, "tasks[2].retry_delay"),
            "retry_delay 5m is longer than max_retry_delay 1m; raise max_retry_delay or shorten retry_delay"
        );
        assert_eq!(errors.len(), 7, "{errors:?}");
    }

    #[test]
    fn retry_cap_conflicts_name_where_each_value_comes_from() {
        let errors = violations(
            "id: x\ndefault_args: {max_retry_delay: 20s}\ntasks:\n  - {id: a, command: \"true\", retry_delay: 30s}\n  - {id: b, command: \"true\", retry_delay: 1s}\n",
        );
        assert_eq!(
            errors,
            [FieldViolation::new(
                "tasks[0].retry_delay",
                "retry_delay 30s is longer than max_retry_delay 20s (from default_args); raise max_retry_delay or shorten retry_delay"
            )]
        );
        // A conflict of default_args with the built-in cap is reported once.
        let errors = violations(
            "id: x\ndefault_args: {retry_delay: 2h}\ntasks:\n  - {id: a, command: \"true\"}\n  - {id: b, command: \"true\"}\n  - {id: c, command: \"true\", max_retry_delay: 3h}\n",
        );
        assert_eq!(
            errors,
            [FieldViolation::new(
                "default_args.retry_delay",
                "retry_delay 2h is longer than max_retry_delay 1h (the default); raise max_retry_delay or shorten retry_delay"
            )]
        );
    }

    #[test]
    fn commands_and_kinds() {
        let errors = violations(
            r#"
id: x
tasks:
  - {id: a}
  - {id: b, command: []}
  - {id: c, command: ["", x]}
  - {id: d, command: "  "}
  - {id: e, kind: noop, command: "true", env: {A: b}, cwd: /tmp}
  - {id: f, command: [echo], env: {"A=B": x, "": y}, cwd: ""}
"#,
        );
        assert_reason(
            &errors,
            "tasks[0].command",
            "missing; a command task needs a `command`",
        );
        assert_eq!(
            reason(&errors, "tasks[1].command"),
            "the argument list must not be empty"
        );
        assert_eq!(
            reason(&errors, "tasks[2].command[0]"),
            "the program name must not be empty"
        );
        assert_eq!(
            reason(&errors, "tasks[3].command"),
            "the shell command must not be empty"
        );
        assert_reason(&errors, "tasks[4].command", "a noop task runs nothing");
        assert_eq!(
            reason(&errors, "tasks[4].env"),
            "only command tasks take `env`"
        );
        assert_eq!(
            reason(&errors, "tasks[4].cwd"),
            "only command tasks take `cwd`"
        );
        assert_eq!(
            reason(&errors, "tasks[5].env.A=B"),
            "environment variable name `A=B` must not contain `=`"
        );
        assert_eq!(
            reason(&errors, "tasks[5].env"),
            "environment variable names must not be empty"
        );
        assert_reason(&errors, "tasks[5].cwd", "cwd must not be empty");
        assert_eq!(errors.len(), 10, "{errors:?}");
    }

    #[test]
    fn nul_characters_are_refused() {
        let errors = violations(
            r#"{"id": "x", "tasks": [{"id": "a", "command": ["echo", "a\u0000b"], "env": {"K": "v\u0000", "N\u0000": "v"}}]}"#,
        );
        assert_reason(
            &errors,
            "tasks[0].command[1]",
            "must not contain a NUL character",
        );
        assert_reason(
            &errors,
            "tasks[0].env.K",
            "the value of `K` must not contain a NUL character",
        );
        assert_reason(
            &errors,
            "tasks[0].env.N\0",
            "must not contain a NUL character",
        );
    }

    #[test]
    fn all_kinds_of_problems_are_reported_together() {
        let errors = violations(
            r#"
id: x
tasks:
  - {id: a, command: "true", depends_on: [c], retires: 1}
  - {id: b, command: "true", depends_on: [nope], retries: many}
  - {id: c, command: "true", depends_on: [a]}
"#,
        );
        let fields: Vec<&str> = errors
            .iter()
            .map(|violation| violation.field.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "tasks[0].retires",
                "tasks[1].retries",
                "tasks[1].depends_on[0]",
                "tasks[0].depends_on[0]"
            ],
            "{errors:?}"
        );
        assert_eq!(errors[3].reason, "dependency cycle: a → c → a");
    }

    #[test]
    fn the_number_of_listed_problems_is_capped() {
        let mut text = String::from("id: x\ntasks:\n");
        for position in 0..150 {
            writeln!(
                text,
                "  - {{id: t{position}, command: \"true\", retries: 500}}"
            )
            .unwrap();
        }
        let errors = violations(&text);
        assert_eq!(errors.len(), MAX_REPORTED_VIOLATIONS + 1);
        let last = errors.last().unwrap();
        assert_eq!(last.field, "");
        assert_eq!(
            last.reason,
            "50 more problems not listed; fix the ones above and validate again"
        );
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = "x".repeat(10_000);
        let errors = violations(&format!(
            "id: x\ntasks:\n  - {{id: a, command: \"true\", retries: \"{long}\"}}\n"
        ));
        let reason = reason(&errors, "tasks[0].retries");
        assert!(reason.starts_with("invalid type: string \"xxx"), "{reason}");
        assert!(
            reason.len() < 700 && reason.ends_with('…'),
            "{} bytes",
            reason.len()
        );
    }

    #[test]
    fn errors_convert_to_an_invalid_argument_with_spec_prefix() {
        let errors = parse("id: x\ntasks: []\n").unwrap_err();
        let api = crate::error::ApiError::from(errors);
        assert_eq!(api.to_string(), "spec.tasks: a DAG needs at least one task");
    }

    const REFERENCE: &str = include_str!("../../../docs/dag-reference.md");

    /// The fenced block that follows `<!-- example: NAME -->` in the reference.
    fn reference_example(name: &str) -> &'static str {
        let marker = format!("<!-- example: {name} -->\n");
        let start = REFERENCE
            .find(&marker)
            .expect("marker in docs/dag-reference.md")
            + marker.len();
        let fenced = &REFERENCE[start..];
        let body = &fenced[fenced.find('\n').expect("fence line") + 1..];
        &body[..body.find("```").expect("closing fence")]
    }

    #[test]
    fn the_reference_examples_are_accurate() {
        let complete = valid(reference_example("complete"));
        assert_eq!(complete.tasks.len(), 7);
        assert_eq!(complete.schedule.as_deref(), Some("0 3 * * *"));
        assert_eq!(complete.timezone, chrono_tz::Europe::Berlin);
        assert!(complete.catchup);
        assert_eq!(complete.max_active_runs, 2);
        assert_eq!(complete.sla, Some(Duration::from_secs(6 * 3_600)));
        let crate::spec::DagTrigger::Timetable(timetable) = &complete.trigger else {
            panic!("a cron schedule: {:?}", complete.trigger);
        };
        let first = |date: &str| {
            chrono::DateTime::parse_from_rfc3339(date)
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        assert_eq!(
            timetable.first_interval_from(first("2024-05-01T00:00:00Z")),
            Some(crate::timetable::Interval {
                start: first("2024-05-01T03:00:00+02:00"),
                end: first("2024-05-02T03:00:00+02:00"),
            }),
            "the run for 1 May the reference describes"
        );
        let defaults = complete
            .params
            .resolve(&serde_json::Map::new())
            .expect("every param has a default");
        assert_eq!(defaults["limit"], 10_000);
        let wait = &complete.tasks[0];
        assert!(
            matches!(&wait.kind, TaskKind::Sensor(sensor) if sensor.mode == crate::spec::SensorMode::Reschedule)
        );
        assert!(wait.templated);
        let templated: Vec<bool> = complete.tasks.iter().map(|task| task.templated).collect();
        assert_eq!(templated, [true, true, true, false, true, false, true]);
        let alert = &complete.tasks[6];
        assert_eq!(alert.trigger_rule, crate::spec::TriggerRule::OneFailed);
        assert_eq!(alert.depends_on, [1, 2, 3, 4]);
        assert_eq!(alert.retries, 0);
        assert!(
            complete.tasks[..6]
                .iter()
                .all(|task| task.trigger_rule == crate::spec::TriggerRule::AllSuccess)
        );
        let join = &complete.tasks[3];
        assert_eq!(join.queue.as_str(), "etl-large");
        assert_eq!(join.timeout, Some(Duration::from_secs(7_200)));
        assert_eq!(
            command(join).env.get("LOG_LEVEL").map(String::as_str),
            Some("debug")
        );
        assert_eq!(command(join).cwd.as_deref(), Some("/srv/etl"));
        let load = &complete.tasks[4];
        assert_eq!(load.outputs[0].as_str(), "warehouse.sales");
        let waits: Vec<u64> = (1..=load.retries)
            .map(|attempt| load.retry.delay_for(attempt, 0.0).as_secs())
            .collect();
        assert_eq!(
            waits,
            [60, 120, 240, 480, 600],
            "the waits the reference describes"
        );

        let anchors = valid(reference_example("anchors"));
        assert_eq!(anchors.tasks[1].retries, 3);
        assert_eq!(anchors.tasks[1].queue.as_str(), "io");

        let errors = parse(reference_example("invalid")).unwrap_err();
        assert_eq!(format!("{errors}\n"), reference_example("invalid errors"));
    }

    /// 100,000 tasks fanning out of one root: the size the default limits allow.
    #[test]
    fn a_hundred_thousand_tasks_validate() {
        const TASKS: usize = 100_000;
        let mut text = String::with_capacity(TASKS * 80);
        text.push_str(r#"{"id": "wide", "default_args": {"retries": 2}, "tasks": [{"id": "root", "command": ["true"]}"#);
        for position in 1..TASKS {
            write!(text, r#",{{"id": "task-{position}", "command": ["echo", "{position}"], "depends_on": ["root"]}}"#).unwrap();
        }
        text.push_str("]}");
        let started = std::time::Instant::now();
        let dag = parse_dag(&text, SpecFormat::Json, &SpecLimits::default()).expect("valid");
        let elapsed = started.elapsed();
        eprintln!(
            "validated {TASKS} tasks ({} bytes) in {elapsed:?}",
            text.len()
        );
        assert_eq!(dag.tasks.len(), TASKS);
        assert_eq!(dag.tasks[TASKS - 1].depends_on, [0]);
        assert_eq!(dag.tasks[TASKS - 1].retries, 2);
        assert!(dag.tasks[0].depends_on.is_empty());
    }
}
