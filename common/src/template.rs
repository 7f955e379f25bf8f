//! Templates in task fields: `{{ ds }}`, `{{ params.limit }}`,
//! `{{ tasks.extract.output.rows }}`, rendered with minijinja when a task
//! is dispatched, and checked when a DAG is registered.
//!
//! Undefined names are errors, never empty strings: a command that silently
//! lost an argument would run and do the wrong thing. minijinja's strict
//! mode fails on them and names the full path it could not resolve
//! (`params.limit`, `tasks['extract-orders'].output.rows`), which the error
//! repeats.
//!
//! Rendering is cheap enough for a fan-out of thousands of tasks: compiled
//! templates are cached by their source (the environment's loader treats
//! the source as the template's name), and only the outputs of the tasks a
//! template names are parsed into its context.
//!
//! A template runs in the controller, so it is bounded: a render may run at
//! most [`MAX_RENDER_STEPS`] instructions (minijinja's fuel) and produce at
//! most [`MAX_RENDERED_BYTES`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use chrono::{DateTime, SecondsFormat, Utc};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};

/// The variables a template may read.
pub const VARIABLES: &[&str] = &[
    "ds",
    "ds_nodash",
    "ts",
    "ts_nodash",
    "logical_date",
    "data_interval_start",
    "data_interval_end",
    "run_id",
    "dag_id",
    "task_id",
    "attempt",
    "params",
    "tasks",
];

/// Longest result of one field, in bytes.
pub const MAX_RENDERED_BYTES: usize = 1 << 20;

/// Most instructions one render may execute (minijinja's fuel): far more
/// than any sensible template needs, far less than a runaway loop would.
pub const MAX_RENDER_STEPS: u64 = 1_000_000;

/// Distinct templates compiled before the cache starts over, so that a
/// long-lived controller's memory does not grow with every DAG version.
const MAX_CACHED_TEMPLATES: usize = 10_000;

/// Values a template may read.
#[derive(Debug, Clone, Copy)]
pub struct TemplateContext<'a> {
    pub dag_id: &'a str,
    pub run_id: &'a str,
    pub task_id: &'a str,
    pub attempt: u32,
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    /// The DAG's time zone: `ds` is the logical date's calendar date there.
    pub timezone: chrono_tz::Tz,
    pub params: &'a serde_json::Map<String, serde_json::Value>,
    /// Output JSON text of tasks of the run, by task id (only succeeded
    /// tasks with an output; others absent).
    pub task_outputs: &'a BTreeMap<String, String>,
}

/// Why a field could not be rendered; the message starts with the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    pub message: String,
}

/// True when `text` holds a template (`{{` or `{%`); other text is used as
/// written.
pub fn is_templated(text: &str) -> bool {
    text.contains("{{") || text.contains("{%")
}

/// What a template reads, found without rendering it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateRefs {
    /// Top-level names it reads that are neither assigned in the template
    /// nor minijinja's own functions (`range`, `dict`, …): each should be
    /// one of [`VARIABLES`].
    pub variables: BTreeSet<String>,
    /// Tasks whose output it reads by name: `tasks.load.output`,
    /// `tasks["extract-orders"].output`.
    pub task_outputs: BTreeSet<String>,
    /// True when it reads `tasks` without naming a task (`tasks[name]`, a
    /// loop over `tasks`), so any task's output may be read.
    pub reads_any_task: bool,
    /// Params it reads by name: `params.limit`, `params["limit"]`.
    pub params: BTreeSet<String>,
}

/// Syntax check and the variables a template reads, for validation at
/// registration. The error is `invalid template: <what> (line N)`.
pub fn check(source: &str) -> Result<TemplateRefs, String> {
    let mut environment = Environment::empty();
    environment.set_syntax(syntax());
    let template = environment
        .template_from_str(source)
        .map_err(|error| describe_error(&error))?;
    let variables: BTreeSet<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| !GLOBALS.contains(name.as_str()))
        .collect();
    let mut refs = TemplateRefs::default();
    // A template that assigns `tasks` or `params` itself reads its own.
    let scan = scan_references(source);
    if variables.contains("tasks") {
        for key in scan.tasks {
            match key {
                Some(task) => {
                    refs.task_outputs.insert(task);
                }
                None => refs.reads_any_task = true,
            }
        }
    }
    if variables.contains("params") {
        refs.params = scan.params.into_iter().flatten().collect();
    }
    refs.variables = variables;
    Ok(refs)
}

/// Names minijinja defines itself (`range`, `dict`, `namespace`, …): a
/// template may call them; they are not run variables.
static GLOBALS: LazyLock<BTreeSet<String>> = LazyLock::new(|| {
    Environment::new()
        .globals()
        .map(|(name, _)| name.to_string())
        .collect()
});

fn syntax() -> SyntaxConfig {
    // A trailing newline in an argument is part of it.
    SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
        .unwrap_or_default()
}

/// `invalid template: unexpected end of input (line 1)`.
fn describe_error(error: &minijinja::Error) -> String {
    let what = error
        .detail()
        .map_or_else(|| error.kind().to_string(), ToString::to_string);
    match error.line() {
        Some(line) => format!("invalid template: {what} (line {line})"),
        None => format!("invalid template: {what}"),
    }
}

/// Renders templated fields, reusing compiled templates.
pub struct Renderer {
    environment: Mutex<Arc<Environment<'static>>>,
    /// Templates compiled by the current environment.
    compiled: Arc<AtomicUsize>,
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renderer")
            .field("compiled", &self.compiled.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

impl Renderer {
    pub fn new() -> Renderer {
        let compiled = Arc::new(AtomicUsize::new(0));
        Renderer {
            environment: Mutex::new(Arc::new(render_environment(compiled.clone()))),
            compiled,
        }
    }

    /// Renders one field. `field` is its path for messages (e.g.
    /// "command[1]", "env.ROWS", "sensor.file"). An undefined name is an
    /// error naming it: "command[1]: undefined variable `params.limit`".
    /// Text without a template is returned as is.
    pub fn render(
        &self,
        field: &str,
        source: &str,
        context: &TemplateContext<'_>,
    ) -> Result<String, TemplateError> {
        if !is_templated(source) {
            return Ok(source.to_string());
        }
        let error = |message: String| TemplateError {
            message: format!("{field}: {message}"),
        };
        let environment = self.environment();
        let template = environment
            .get_template(source)
            .map_err(|failure| error(describe_error(&failure)))?;
        let root = Value::from_object(RunContext::new(context, source));
        let rendered = template.render(root).map_err(|failure| {
            error(match failure.kind() {
                ErrorKind::UndefinedError => describe_undefined(failure.detail()),
                ErrorKind::OutOfFuel => {
                    format!("the template ran for more than {MAX_RENDER_STEPS} steps; simplify it")
                }
                _ => describe_error(&failure).replacen("invalid template", "cannot render", 1),
            })
        })?;
        if rendered.len() > MAX_RENDERED_BYTES {
            return Err(error(format!(
                "the rendered value is {} bytes; the limit is {MAX_RENDERED_BYTES}",
                rendered.len()
            )));
        }
        Ok(rendered)
    }

    /// The current environment, started over when it has cached too many
    /// templates.
    fn environment(&self) -> Arc<Environment<'static>> {
        let mut current = self
            .environment
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.compiled.load(Ordering::Relaxed) > MAX_CACHED_TEMPLATES {
            self.compiled.store(0, Ordering::Relaxed);
            *current = Arc::new(render_environment(self.compiled.clone()));
        }
        current.clone()
    }
}

/// `undefined variable `params.limit``, from minijinja's "`params.limit` is
/// undefined"; a task without output gets a hint.
fn describe_undefined(detail: Option<&str>) -> String {
    let path = detail
        .and_then(|detail| detail.strip_suffix("` is undefined"))
        .and_then(|detail| detail.strip_prefix('`'));
    match path {
        Some(path) => {
            let after_tasks = path.strip_prefix("tasks");
            let one_step = after_tasks.is_some_and(|rest| {
                (rest.starts_with('.') && !rest[1..].contains(['.', '[']))
                    || (rest.starts_with('[')
                        && rest.ends_with(']')
                        && rest.matches('[').count() == 1)
            });
            if one_step {
                format!(
                    "undefined variable `{path}`: that task has no output in this run (it has not succeeded, or wrote none)"
                )
            } else {
                format!("undefined variable `{path}`")
            }
        }
        None => format!(
            "undefined value ({})",
            detail.unwrap_or("a name the template reads is not defined")
        ),
    }
}

fn render_environment(compiled: Arc<AtomicUsize>) -> Environment<'static> {
    let mut environment = Environment::new();
    environment.set_syntax(syntax());
    environment.set_undefined_behavior(UndefinedBehavior::Strict);
    environment.set_fuel(Some(MAX_RENDER_STEPS));
    // Names are template sources, which must not choose an HTML escaping
    // by ending in `.html`.
    environment.set_auto_escape_callback(|_| AutoEscape::None);
    environment.set_loader(move |source| {
        compiled.fetch_add(1, Ordering::Relaxed);
        Ok(Some(source.to_string()))
    });
    environment
}

/// The root of a render's context: the run's variables.
#[derive(Debug)]
struct RunContext {
    ds: Value,
    ds_nodash: Value,
    ts: Value,
    ts_nodash: Value,
    logical_date: Value,
    data_interval_start: Value,
    data_interval_end: Value,
    run_id: Value,
    dag_id: Value,
    task_id: Value,
    attempt: Value,
    params: Value,
    tasks: Value,
}

/// Airflow's `ts` format: RFC 3339 in UTC with `+00:00`, a fraction only
/// when there is one.
fn airflow_timestamp(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

impl RunContext {
    fn new(context: &TemplateContext<'_>, source: &str) -> RunContext {
        let local_date = context
            .logical_date
            .with_timezone(&context.timezone)
            .date_naive();
        let params = JsonNode::root(serde_json::Value::Object(context.params.clone()));
        // Only the outputs the template names are parsed, unless it reads
        // `tasks` by a computed name.
        let refs = scan_references(source);
        let mut outputs = BTreeMap::new();
        let mut add = |task: &str, text: &String| {
            let value = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
            outputs.insert(task.to_string(), value);
        };
        if refs.tasks.iter().any(Option::is_none) {
            for (task, text) in context.task_outputs {
                add(task, text);
            }
        } else {
            for task in refs.tasks.iter().flatten() {
                if let Some(text) = context.task_outputs.get(task) {
                    add(task, text);
                }
            }
        }
        RunContext {
            ds: Value::from(local_date.format("%Y-%m-%d").to_string()),
            ds_nodash: Value::from(local_date.format("%Y%m%d").to_string()),
            ts: Value::from(airflow_timestamp(context.logical_date)),
            ts_nodash: Value::from(context.logical_date.format("%Y%m%dT%H%M%S").to_string()),
            logical_date: Value::from(airflow_timestamp(context.logical_date)),
            data_interval_start: Value::from(airflow_timestamp(context.data_interval_start)),
            data_interval_end: Value::from(airflow_timestamp(context.data_interval_end)),
            run_id: Value::from(context.run_id),
            dag_id: Value::from(context.dag_id),
            task_id: Value::from(context.task_id),
            attempt: Value::from(context.attempt),
            params,
            tasks: Value::from_object(TaskOutputs {
                outputs: outputs
                    .into_iter()
                    .map(|(task, value)| (task, Arc::new(value)))
                    .collect(),
            }),
        }
    }
}

impl Object for RunContext {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let name = key.as_str()?;
        let value = match name {
            "ds" => &self.ds,
            "ds_nodash" => &self.ds_nodash,
            "ts" => &self.ts,
            "ts_nodash" => &self.ts_nodash,
            "logical_date" => &self.logical_date,
            "data_interval_start" => &self.data_interval_start,
            "data_interval_end" => &self.data_interval_end,
            "run_id" => &self.run_id,
            "dag_id" => &self.dag_id,
            "task_id" => &self.task_id,
            "attempt" => &self.attempt,
            "params" => &self.params,
            "tasks" => &self.tasks,
            _ => return None,
        };
        Some(value.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(VARIABLES)
    }
}

/// `tasks`: task id → `{output: …}`.
#[derive(Debug)]
struct TaskOutputs {
    outputs: BTreeMap<String, Arc<serde_json::Value>>,
}

impl Object for TaskOutputs {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let output = self.outputs.get(key.as_str()?)?;
        Some(Value::from_object(TaskEntry {
            output: output.clone(),
        }))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(
            self.outputs
                .keys()
                .map(|task| Value::from(task.as_str()))
                .collect(),
        )
    }
}

/// `tasks.<id>`: holds `output`.
#[derive(Debug)]
struct TaskEntry {
    output: Arc<serde_json::Value>,
}

impl Object for TaskEntry {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        (key.as_str()? == "output").then(|| json_value(&self.output, &self.output, String::new()))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["output"])
    }
}

/// A JSON object or array inside a document (params, an output), shared
/// rather than copied into template values; it prints as compact JSON.
#[derive(Debug)]
struct JsonNode {
    document: Arc<serde_json::Value>,
    /// JSON pointer (RFC 6901) of the node in `document`.
    pointer: String,
}

impl JsonNode {
    fn root(value: serde_json::Value) -> Value {
        Value::from_object(JsonNode {
            document: Arc::new(value),
            pointer: String::new(),
        })
    }

    fn node(&self) -> &serde_json::Value {
        self.document
            .pointer(&self.pointer)
            .unwrap_or(&serde_json::Value::Null)
    }
}

/// A JSON value as a template value: scalars directly, objects and arrays
/// as [`JsonNode`]s.
fn json_value(
    document: &Arc<serde_json::Value>,
    value: &serde_json::Value,
    pointer: String,
) -> Value {
    match value {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(flag) => Value::from(*flag),
        serde_json::Value::Number(number) => {
            if let Some(integer) = number.as_i64() {
                Value::from(integer)
            } else if let Some(integer) = number.as_u64() {
                Value::from(integer)
            } else {
                Value::from(number.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(text) => Value::from(text.as_str()),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
            Value::from_object(JsonNode {
                document: document.clone(),
                pointer,
            })
        }
    }
}

impl Object for JsonNode {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.node() {
            serde_json::Value::Array(_) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let (child, segment) = match self.node() {
            serde_json::Value::Object(map) => {
                let name = key.as_str()?;
                (map.get(name)?, name.replace('~', "~0").replace('/', "~1"))
            }
            serde_json::Value::Array(items) => {
                let index = key.as_i64()?;
                // Negative indices count from the end, as in Python.
                let position = if index < 0 {
                    usize::try_from(index + i64::try_from(items.len()).ok()?).ok()?
                } else {
                    usize::try_from(index).ok()?
                };
                (items.get(position)?, position.to_string())
            }
            _ => return None,
        };
        Some(json_value(
            &self.document,
            child,
            format!("{}/{segment}", self.pointer),
        ))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.node() {
            serde_json::Value::Array(items) => Enumerator::Seq(items.len()),
            serde_json::Value::Object(map) => {
                Enumerator::Values(map.keys().map(|key| Value::from(key.as_str())).collect())
            }
            _ => Enumerator::Empty,
        }
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.node(), f)
    }
}

/// How a template reads `tasks` and `params`: each use with the key it
/// names (`tasks.load`, `tasks["load"]`), or `None` for a use that names
/// none (`tasks[name]`, `params | length`).
#[derive(Debug, Default)]
struct ScannedReferences {
    tasks: Vec<Option<String>>,
    params: Vec<Option<String>>,
}

/// Finds the uses of `tasks` and `params` in the expressions and
/// statements of a template (not in its text, comments or raw blocks).
///
/// minijinja's own analysis names attribute chains (`tasks.load.output`)
/// but not subscripts (`tasks["extract-orders"]`), which ids with dashes
/// need; this scan sees both. It works on tokens, skipping string
/// literals, and runs after minijinja accepted the syntax.
fn scan_references(source: &str) -> ScannedReferences {
    let mut found = ScannedReferences::default();
    let bytes = source.as_bytes();
    let mut position = 0;
    while let Some(offset) = source[position..].find('{') {
        let start = position + offset;
        match bytes.get(start + 1) {
            Some(b'#') => {
                position = source[start..]
                    .find("#}")
                    .map_or(source.len(), |end| start + end + 2);
            }
            Some(b'{') | Some(b'%') => {
                let closing = if bytes[start + 1] == b'{' { "}}" } else { "%}" };
                let end = scan_expression(source, start + 2, closing, &mut found);
                if bytes[start + 1] == b'%' && is_raw_block(&source[start + 2..end]) {
                    position = find_endraw(source, end);
                } else {
                    position = end;
                }
            }
            _ => position = start + 1,
        }
    }
    found
}

/// `{% raw %}` (with optional whitespace control).
fn is_raw_block(inside: &str) -> bool {
    inside.trim_matches(|c: char| c == '-' || c == '+' || c == '%' || c == '}' || c.is_whitespace())
        == "raw"
}

/// Where scanning resumes after the `{% endraw %}` that closes a raw block
/// ending before `from`.
fn find_endraw(source: &str, from: usize) -> usize {
    let mut position = from;
    while let Some(offset) = source[position..].find("{%") {
        let start = position + offset;
        let Some(close) = source[start..].find("%}") else {
            return source.len();
        };
        let inside = &source[start + 2..start + close];
        if inside.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace()) == "endraw" {
            return start + close + 2;
        }
        position = start + 2;
    }
    source.len()
}

/// Scans one `{{ … }}` or `{% … %}` from `from` (just past its opening),
/// noting uses of `tasks` and `params`; returns the position past its
/// closing.
fn scan_expression(
    source: &str,
    from: usize,
    closing: &str,
    found: &mut ScannedReferences,
) -> usize {
    let bytes = source.as_bytes();
    let mut position = from;
    // The previous token was `.`: a name after it is an attribute, not a variable.
    let mut after_dot = false;
    while position < bytes.len() {
        if source[position..].starts_with(closing) {
            return position + closing.len();
        }
        let byte = bytes[position];
        if byte == b'"' || byte == b'\'' {
            position = skip_string(bytes, position);
            after_dot = false;
        } else if byte.is_ascii_alphabetic() || byte == b'_' {
            let end = name_end(bytes, position);
            let name = &source[position..end];
            if !after_dot && (name == "tasks" || name == "params") {
                let key = key_after(source, end);
                if name == "tasks" {
                    found.tasks.push(key);
                } else {
                    found.params.push(key);
                }
            }
            position = end;
            after_dot = false;
        } else {
            if !byte.is_ascii_whitespace() {
                after_dot = byte == b'.';
            }
            position += 1;
        }
    }
    source.len()
}

fn name_end(bytes: &[u8], from: usize) -> usize {
    let mut end = from;
    while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
        end += 1;
    }
    end
}

/// Position past the string literal starting at `from` (its quote).
fn skip_string(bytes: &[u8], from: usize) -> usize {
    let quote = bytes[from];
    let mut position = from + 1;
    while position < bytes.len() {
        match bytes[position] {
            b'\\' => position += 2,
            byte if byte == quote => return position + 1,
            _ => position += 1,
        }
    }
    bytes.len()
}

/// The key read right after a variable ending at `from`: `.name` or
/// `["literal"]`; `None` otherwise.
fn key_after(source: &str, from: usize) -> Option<String> {
    let bytes = source.as_bytes();
    let skip_spaces = |mut position: usize| {
        while position < bytes.len() && bytes[position].is_ascii_whitespace() {
            position += 1;
        }
        position
    };
    let position = skip_spaces(from);
    match bytes.get(position) {
        Some(b'.') => {
            let start = skip_spaces(position + 1);
            let end = name_end(bytes, start);
            (end > start).then(|| source[start..end].to_string())
        }
        Some(b'[') => {
            let start = skip_spaces(position + 1);
            let quote = *bytes.get(start)?;
            if quote != b'"' && quote != b'\'' {
                return None;
            }
            let end = skip_string(bytes, start);
            if bytes.get(skip_spaces(end)) != Some(&b']') {
                return None;
            }
            unescape_literal(&source[start + 1..end.saturating_sub(1)])
        }
        _ => None,
    }
}

/// The text of a string literal's inside; `None` for escapes other than
/// `\\`, `\"` and `\'` (ids never need them).
fn unescape_literal(inside: &str) -> Option<String> {
    let mut text = String::with_capacity(inside.len());
    let mut characters = inside.chars();
    while let Some(character) = characters.next() {
        if character == '\\' {
            match characters.next()? {
                escaped @ ('\\' | '"' | '\'') => text.push(escaped),
                _ => return None,
            }
        } else {
            text.push(character);
        }
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instant(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    struct Fixture {
        params: serde_json::Map<String, serde_json::Value>,
        outputs: BTreeMap<String, String>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let params = serde_json::json!({"limit": 100, "mode": "full", "tags": ["a", "b"], "nested": {"deep": true}});
            let mut outputs = BTreeMap::new();
            outputs.insert(
                "extract-orders".to_string(),
                r#"{"rows": 42, "files": ["a.csv", "b.csv"], "meta": {"source": "db"}}"#
                    .to_string(),
            );
            outputs.insert("count".to_string(), "7".to_string());
            Fixture {
                params: params.as_object().unwrap().clone(),
                outputs,
            }
        }

        /// A Berlin DAG whose run's logical date is 23:30 UTC on 31
        /// December: already 1 January in Berlin.
        fn context(&self) -> TemplateContext<'_> {
            TemplateContext {
                dag_id: "nightly",
                run_id: "0190f1a2-7c3b-7d4e-8f00-0123456789ab",
                task_id: "load",
                attempt: 2,
                logical_date: instant("2025-12-31T23:30:00Z"),
                data_interval_start: instant("2025-12-31T23:30:00Z"),
                data_interval_end: instant("2026-01-01T23:30:00Z"),
                timezone: chrono_tz::Europe::Berlin,
                params: &self.params,
                task_outputs: &self.outputs,
            }
        }
    }

    fn render(source: &str) -> Result<String, TemplateError> {
        let fixture = Fixture::new();
        Renderer::new().render("command[1]", source, &fixture.context())
    }

    #[test]
    fn every_variable_renders() {
        let cases = [
            ("{{ ds }}", "2026-01-01"),
            ("{{ ds_nodash }}", "20260101"),
            ("{{ ts }}", "2025-12-31T23:30:00+00:00"),
            ("{{ ts_nodash }}", "20251231T233000"),
            ("{{ logical_date }}", "2025-12-31T23:30:00+00:00"),
            ("{{ data_interval_start }}", "2025-12-31T23:30:00+00:00"),
            ("{{ data_interval_end }}", "2026-01-01T23:30:00+00:00"),
            ("{{ run_id }}", "0190f1a2-7c3b-7d4e-8f00-0123456789ab"),
            ("{{ dag_id }}", "nightly"),
            ("{{ task_id }}", "load"),
            ("{{ attempt }}", "2"),
            ("{{ attempt + 1 }}", "3"),
            ("{{ params.limit }}", "100"),
            ("{{ params['mode'] }}", "full"),
            ("{{ params.tags[1] }}", "b"),
            ("{{ params.tags | join(',') }}", "a,b"),
            // Booleans print as in Jinja; `tojson` gives JSON.
            ("{{ params.nested.deep }}", "True"),
            ("{{ params.nested.deep | tojson }}", "true"),
            ("{{ params.nested | tojson }}", r#"{"deep": true}"#),
            ("{{ params.tags }}", r#"["a","b"]"#),
            ("/data/{{ ds }}/_SUCCESS", "/data/2026-01-01/_SUCCESS"),
            ("{% if attempt > 1 %}retry{% endif %}", "retry"),
            ("{{ params.missing | default('none') }}", "none"),
            (
                "{% if params.missing is defined %}x{% else %}y{% endif %}",
                "y",
            ),
            ("{% for n in range(3) %}{{ n }}{% endfor %}", "012"),
            ("line\n{{ dag_id }}\n", "line\nnightly\n"),
            ("{{ '<b>' }}.html", "<b>.html"),
        ];
        for (source, expected) in cases {
            assert_eq!(render(source).as_deref(), Ok(expected), "{source}");
        }
        assert_eq!(
            render("no template here").as_deref(),
            Ok("no template here")
        );
    }

    #[test]
    fn outputs_are_read_with_attribute_and_item_syntax() {
        let cases = [
            (r#"{{ tasks["extract-orders"].output.rows }}"#, "42"),
            ("{{ tasks['extract-orders'].output['rows'] * 2 }}", "84"),
            (r#"{{ tasks["extract-orders"].output.files[0] }}"#, "a.csv"),
            (r#"{{ tasks["extract-orders"].output.files[-1] }}"#, "b.csv"),
            (r#"{{ tasks["extract-orders"].output.meta.source }}"#, "db"),
            (
                r#"{{ tasks["extract-orders"].output.files | length }}"#,
                "2",
            ),
            (
                r#"{{ tasks["extract-orders"].output.meta }}"#,
                r#"{"source":"db"}"#,
            ),
            ("{{ tasks.count.output }}", "7"),
            (
                "{% for f in tasks['extract-orders'].output.files %}[{{ f }}]{% endfor %}",
                "[a.csv][b.csv]",
            ),
            ("{% set name = 'count' %}{{ tasks[name].output }}", "7"),
        ];
        for (source, expected) in cases {
            assert_eq!(render(source).as_deref(), Ok(expected), "{source}");
        }
    }

    #[test]
    fn undefined_names_fail_naming_them() {
        let cases = [
            (
                "{{ params.limt }}",
                "command[1]: undefined variable `params.limt`",
            ),
            ("{{ foo }}", "command[1]: undefined variable `foo`"),
            (
                "x {{ range(2) | join }} {{ fo }}",
                "command[1]: undefined variable `fo`",
            ),
            (
                "{{ tasks.count.outptu }}",
                "command[1]: undefined variable `tasks.count.outptu`",
            ),
            (
                r#"{{ tasks["extract-orders"].output.b }}"#,
                "command[1]: undefined variable `tasks['extract-orders'].output.b`",
            ),
            (
                r#"{{ tasks["extract-orders"].output.files[5] }}"#,
                "command[1]: undefined variable `tasks['extract-orders'].output.files[5]`",
            ),
            (
                "{{ params.nested.deep.er }}",
                "command[1]: undefined variable `params.nested.deep.er`",
            ),
            (
                "{{ tasks.a.output.b }}",
                "command[1]: undefined variable `tasks.a`: that task has no output in this run (it has not succeeded, or wrote none)",
            ),
            (
                "{{ params.limit }}{{ params.other }}",
                "command[1]: undefined variable `params.other`",
            ),
            (
                r#"{{ tasks["nope"] }}"#,
                "command[1]: undefined variable `tasks['nope']`: that task has no output in this run (it has not succeeded, or wrote none)",
            ),
            ("{{ foo | upper }}", "command[1]: undefined variable `foo`"),
            (
                "{% for x in foo %}{% endfor %}",
                "command[1]: undefined variable `foo`",
            ),
            (
                "{% if foo %}x{% endif %}",
                "command[1]: undefined variable `foo`",
            ),
        ];
        for (source, expected) in cases {
            let error = render(source).unwrap_err();
            assert_eq!(error.message, expected, "{source}");
        }
    }

    #[test]
    fn syntax_and_runtime_errors_are_reported() {
        let error = render("{{ ds ").unwrap_err();
        assert!(
            error.message.starts_with("command[1]: invalid template: "),
            "{}",
            error.message
        );
        assert!(error.message.ends_with("(line 1)"), "{}", error.message);
        let error = render("{{ 1 / 0 }}").unwrap_err();
        assert!(
            error.message.starts_with("command[1]: cannot render: "),
            "{}",
            error.message
        );
        let error = render(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        )
        .unwrap_err();
        assert_eq!(
            error.message,
            "command[1]: the template ran for more than 1000000 steps; simplify it"
        );
    }

    #[test]
    fn check_reports_syntax_variables_and_task_references() {
        let refs = check(
            r#"{{ ds }} {{ tasks.load.output.rows }} {{ tasks["extract-orders"].output }} {{ params.limit }} {{ params["mode"] }} {{ range(2) | join }} {% set x = 1 %}{{ x }} {{ foo.bar }}"#,
        )
        .unwrap();
        assert_eq!(
            refs.variables,
            ["ds", "foo", "params", "tasks"].map(String::from).into()
        );
        assert_eq!(
            refs.task_outputs,
            ["extract-orders", "load"].map(String::from).into()
        );
        assert!(!refs.reads_any_task);
        assert_eq!(refs.params, ["limit", "mode"].map(String::from).into());

        let dynamic = check("{% for t in tasks %}{{ t }}{% endfor %}").unwrap();
        assert!(dynamic.reads_any_task);
        let computed = check("{{ tasks[params.which].output }}").unwrap();
        assert!(computed.reads_any_task);
        assert_eq!(computed.params, ["which"].map(String::from).into());

        // Names in text, comments, strings and raw blocks are not reads.
        let quiet = check(
            r#"tasks.a {# tasks.b #} {{ "tasks.c" }} {% raw %}{{ tasks.d }}{% endraw %} {{ x.tasks.e }}"#,
        )
        .unwrap();
        assert!(quiet.task_outputs.is_empty(), "{quiet:?}");
        assert_eq!(quiet.variables, ["x"].map(String::from).into());

        // A template that assigns `tasks` reads its own.
        let shadowed = check("{% set tasks = {'a': 1} %}{{ tasks.a }}").unwrap();
        assert!(shadowed.task_outputs.is_empty());

        let error = check("{{ tasks.load.output ").unwrap_err();
        assert!(error.starts_with("invalid template: "), "{error}");
        let error = check("{% if x %}").unwrap_err();
        assert!(error.starts_with("invalid template: "), "{error}");
    }

    #[test]
    fn a_renderer_is_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Renderer>();
        shared::<crate::timetable::Timetable>();
    }

    #[test]
    fn is_templated_looks_for_expressions_and_statements() {
        assert!(is_templated("{{ ds }}"));
        assert!(is_templated("{% if x %}{% endif %}"));
        assert!(!is_templated("echo {not a template} $HOME"));
        assert!(!is_templated("{# only a comment #}"));
    }

    #[test]
    fn a_large_fan_out_renders_fast() {
        let fixture = Fixture::new();
        let renderer = Renderer::new();
        let mut many_outputs = fixture.outputs.clone();
        for task in 0..10_000 {
            many_outputs.insert(format!("task-{task}"), format!("{{\"n\": {task}}}"));
        }
        let context = TemplateContext {
            task_outputs: &many_outputs,
            ..fixture.context()
        };
        let started = std::time::Instant::now();
        for task in 0..10_000 {
            let rendered = renderer
                .render(
                    "command[1]",
                    r#"--date={{ ds }} --rows={{ tasks["extract-orders"].output.rows }} --limit={{ params.limit }}"#,
                    &TemplateContext {
                        task_id: &format!("fan-{task}"),
                        ..context
                    },
                )
                .unwrap();
            assert_eq!(rendered, "--date=2026-01-01 --rows=42 --limit=100");
        }
        let elapsed = started.elapsed();
        eprintln!("10000 renders in {elapsed:?}");
        assert!(elapsed < std::time::Duration::from_secs(1), "{elapsed:?}");
    }
}
