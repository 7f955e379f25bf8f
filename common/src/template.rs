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
//!
//! Expressions (a task's `run_if` and `map_over`) are the same language
//! without the braces: [`check_expression`] checks one at registration and
//! [`Renderer::evaluate`] evaluates one to a JSON value, with the same
//! variables (but `attempt`, `item` and `map_index`), the same strictness
//! about undefined names and the same bound on steps. [`is_truthy`] says
//! whether a result holds, by minijinja's rules.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use chrono::{DateTime, SecondsFormat, Utc};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Enumerator, Object, ObjectRepr, Value, ValueKind};
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

/// The variables only the instances of a task with `map_over` have: the
/// element of the list (`item`) and its position (`map_index`).
pub const MAPPED_VARIABLES: &[&str] = &["item", "map_index"];

/// The variables an expression (`run_if`, `map_over`) may read: those of
/// templates but `attempt`, since it is evaluated before any attempt.
pub const EXPRESSION_VARIABLES: &[&str] = &[
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
    /// tasks with an output; others absent). A mapped task's output is the
    /// JSON array of its instances' outputs.
    pub task_outputs: &'a BTreeMap<String, String>,
    /// A mapped instance: the element of the list it was expanded from.
    /// `None` leaves `item` undefined.
    pub item: Option<&'a serde_json::Value>,
    /// A mapped instance: its position in that list. `None` leaves
    /// `map_index` undefined.
    pub map_index: Option<u32>,
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
        .map_err(|error| describe_error(&error, "invalid template"))?;
    let variables: BTreeSet<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| !GLOBALS.contains(name.as_str()))
        .collect();
    // A template that assigns `tasks` or `params` itself reads its own.
    Ok(TemplateRefs::read(variables, scan_references(source)))
}

/// Syntax check and what an expression (`run_if`, `map_over`) reads, for
/// validation at registration. The error is `invalid expression: <what>`.
pub fn check_expression(source: &str) -> Result<TemplateRefs, String> {
    let mut environment = Environment::empty();
    environment.set_syntax(syntax());
    let expression = environment
        .compile_expression(source)
        .map_err(|error| describe_error(&error, "invalid expression"))?;
    let variables: BTreeSet<String> = expression
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| !GLOBALS.contains(name.as_str()))
        .collect();
    let mut scan = ScannedReferences::default();
    scan_expression(source, 0, None, &mut scan);
    Ok(TemplateRefs::read(variables, scan))
}

impl TemplateRefs {
    /// What a template or expression reads, from its undeclared variables
    /// and the `tasks.<id>` and `params.<name>` keys found in its source:
    /// the keys count only where the name is not assigned in the source.
    fn read(variables: BTreeSet<String>, scan: ScannedReferences) -> Self {
        let mut refs = TemplateRefs::default();
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
        refs
    }
}

/// Whether a value holds, by minijinja's rules (what `{% if %}` and `and`
/// use): `false`, `null`, zero, `""`, `[]` and `{}` do not; anything else
/// does.
pub fn is_truthy(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(flag) => *flag,
        serde_json::Value::Number(number) => number.as_f64().is_some_and(|number| number != 0.0),
        serde_json::Value::String(text) => !text.is_empty(),
        serde_json::Value::Array(items) => !items.is_empty(),
        serde_json::Value::Object(map) => !map.is_empty(),
    }
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

/// `invalid template: unexpected end of input (line 1)`, with `prefix`
/// first.
fn describe_error(error: &minijinja::Error, prefix: &str) -> String {
    let what = error
        .detail()
        .map_or_else(|| error.kind().to_string(), ToString::to_string);
    match error.line() {
        Some(line) => format!("{prefix}: {what} (line {line})"),
        None => format!("{prefix}: {what}"),
    }
}

/// Why a render or an evaluation failed at run time. `what` is "template"
/// or "expression", `verb` "render" or "evaluate".
fn describe_failure(failure: &minijinja::Error, what: &str, verb: &str) -> String {
    match failure.kind() {
        ErrorKind::UndefinedError => describe_undefined(failure.detail()),
        ErrorKind::OutOfFuel => {
            format!("the {what} ran for more than {MAX_RENDER_STEPS} steps; simplify it")
        }
        _ => describe_error(failure, &format!("cannot {verb}")),
    }
}

/// Deepest nesting of lists and objects an expression's result may have.
const MAX_RESULT_DEPTH: usize = 128;

/// An expression's result as JSON. Values read from params and outputs are
/// copied as they are; values the expression built are converted.
fn to_json(value: &Value, depth: usize) -> Result<serde_json::Value, String> {
    if let Some(node) = value.downcast_object_ref::<JsonNode>() {
        return Ok(node.node().clone());
    }
    if depth > MAX_RESULT_DEPTH {
        return Err(format!(
            "the result is nested more than {MAX_RESULT_DEPTH} levels deep"
        ));
    }
    let convert_error = |what: String| format!("the result cannot be converted to JSON: {what}");
    Ok(match value.kind() {
        ValueKind::Undefined => {
            return Err("the expression is undefined".to_string());
        }
        ValueKind::None => serde_json::Value::Null,
        ValueKind::Bool => serde_json::Value::Bool(value.is_true()),
        ValueKind::Number => {
            let integer = value
                .is_integer()
                .then(|| {
                    i64::try_from(value.clone())
                        .map(serde_json::Value::from)
                        .or_else(|_| u64::try_from(value.clone()).map(serde_json::Value::from))
                        .ok()
                })
                .flatten();
            match integer {
                Some(integer) => integer,
                None => {
                    let float = f64::try_from(value.clone())
                        .map_err(|error| convert_error(error.to_string()))?;
                    serde_json::Number::from_f64(float)
                        .map(serde_json::Value::Number)
                        .ok_or_else(|| convert_error(format!("{float} is not a finite number")))?
                }
            }
        }
        ValueKind::String => serde_json::Value::String(value.as_str().unwrap_or_default().into()),
        ValueKind::Bytes => serde_json::Value::String(
            String::from_utf8_lossy(value.as_bytes().unwrap_or_default()).into_owned(),
        ),
        ValueKind::Seq | ValueKind::Iterable => {
            let items = value
                .try_iter()
                .map_err(|error| convert_error(error.to_string()))?;
            let mut array = Vec::with_capacity(value.len().unwrap_or(0).min(4096));
            for item in items {
                array.push(to_json(&item, depth + 1)?);
            }
            serde_json::Value::Array(array)
        }
        ValueKind::Map => {
            let keys = value
                .try_iter()
                .map_err(|error| convert_error(error.to_string()))?;
            let mut map = serde_json::Map::new();
            for key in keys {
                let item = value
                    .get_item(&key)
                    .map_err(|error| convert_error(error.to_string()))?;
                let name = match key.as_str() {
                    Some(name) => name.to_string(),
                    None => key.to_string(),
                };
                map.insert(name, to_json(&item, depth + 1)?);
            }
            serde_json::Value::Object(map)
        }
        ValueKind::Plain | ValueKind::Invalid => {
            return Err(convert_error(format!("a {} value", value.kind())));
        }
        _ => return Err(convert_error(format!("a {} value", value.kind()))),
    })
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
            .map_err(|failure| error(describe_error(&failure, "invalid template")))?;
        let root = Value::from_object(RunContext::new(context, scan_references(source)));
        let rendered = template
            .render(root)
            .map_err(|failure| error(describe_failure(&failure, "template", "render")))?;
        if rendered.len() > MAX_RENDERED_BYTES {
            return Err(error(format!(
                "the rendered value is {} bytes; the limit is {MAX_RENDERED_BYTES}",
                rendered.len()
            )));
        }
        Ok(rendered)
    }

    /// Evaluates an expression (a task's `run_if` or `map_over`) to a JSON
    /// value. `field` is its path for messages ("run_if"). An undefined
    /// name is an error naming it, as in [`Renderer::render`]: "run_if:
    /// undefined variable `params.full`"; so is a result that is undefined.
    /// Values read from params and outputs come back as they are (numbers
    /// keep their JSON form); others are converted (a whole number stays
    /// one).
    pub fn evaluate(
        &self,
        field: &str,
        expression: &str,
        context: &TemplateContext<'_>,
    ) -> Result<serde_json::Value, TemplateError> {
        let error = |message: String| TemplateError {
            message: format!("{field}: {message}"),
        };
        let environment = self.environment();
        let compiled = environment
            .compile_expression(expression)
            .map_err(|failure| error(describe_error(&failure, "invalid expression")))?;
        let mut scan = ScannedReferences::default();
        scan_expression(expression, 0, None, &mut scan);
        let root = Value::from_object(RunContext::new(context, scan));
        let value = compiled
            .eval(root.clone())
            .map_err(|failure| error(describe_failure(&failure, "expression", "evaluate")))?;
        if value.is_undefined() {
            // minijinja returns an undefined result as a value; printing it
            // in strict mode is what names the path that was missing.
            let printed = environment
                .template_from_str(&format!("{{{{ ({expression}) }}}}"))
                .and_then(|template| template.render(root));
            return Err(error(match printed {
                Err(failure) if failure.kind() == ErrorKind::UndefinedError => {
                    describe_undefined(failure.detail())
                }
                _ => "the expression is undefined".to_string(),
            }));
        }
        to_json(&value, 0).map_err(error)
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
            } else if MAPPED_VARIABLES.contains(&path) {
                format!(
                    "undefined variable `{path}`: only the instances of a task with `map_over` have it"
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
    /// Undefined (absent) unless the task is a mapped instance.
    item: Option<Value>,
    map_index: Option<Value>,
}

/// Airflow's `ts` format: RFC 3339 in UTC with `+00:00`, a fraction only
/// when there is one.
fn airflow_timestamp(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

impl RunContext {
    /// The context of one render or evaluation; `refs` is what its source
    /// reads of `tasks`, so only those outputs are parsed.
    fn new(context: &TemplateContext<'_>, refs: ScannedReferences) -> RunContext {
        let local_date = context
            .logical_date
            .with_timezone(&context.timezone)
            .date_naive();
        let params = JsonNode::root(serde_json::Value::Object(context.params.clone()));
        // Only the outputs the template names are parsed, unless it reads
        // `tasks` by a computed name.
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
            item: context
                .item
                .map(|item| json_value(&Arc::new(item.clone()), item, String::new())),
            map_index: context.map_index.map(Value::from),
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
            "item" => self.item.as_ref()?,
            "map_index" => self.map_index.as_ref()?,
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
                let end = scan_expression(source, start + 2, Some(closing), &mut found);
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
/// closing. Without `closing`, scans `source` to its end: a bare
/// expression.
fn scan_expression(
    source: &str,
    from: usize,
    closing: Option<&str>,
    found: &mut ScannedReferences,
) -> usize {
    let bytes = source.as_bytes();
    let mut position = from;
    // The previous token was `.`: a name after it is an attribute, not a variable.
    let mut after_dot = false;
    while position < bytes.len() {
        if let Some(closing) = closing
            && source[position..].starts_with(closing)
        {
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
                item: None,
                map_index: None,
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

    fn evaluate(expression: &str) -> Result<serde_json::Value, TemplateError> {
        let fixture = Fixture::new();
        Renderer::new().evaluate("run_if", expression, &fixture.context())
    }

    #[test]
    fn expressions_evaluate_to_json() {
        use serde_json::json;
        let cases = [
            ("params.limit > 5 and tasks.count.output > 3", json!(true)),
            ("params.mode == 'incremental'", json!(false)),
            ("params.limit", json!(100)),
            ("params.tags", json!(["a", "b"])),
            ("params.nested", json!({"deep": true})),
            (
                "tasks['extract-orders'].output.files",
                json!(["a.csv", "b.csv"]),
            ),
            ("tasks['extract-orders'].output.rows * 2", json!(84)),
            (
                "[1, 2.5, 'a', none, true]",
                json!([1, 2.5, "a", null, true]),
            ),
            ("range(3) | list", json!([0, 1, 2])),
            ("{'a': [1, 2]}", json!({"a": [1, 2]})),
            ("params.tags | length", json!(2)),
            ("ds", json!("2026-01-01")),
            ("params.missing | default('x')", json!("x")),
            ("params.missing is defined", json!(false)),
            ("none", json!(null)),
        ];
        for (expression, expected) in cases {
            assert_eq!(evaluate(expression), Ok(expected), "{expression}");
        }
    }

    #[test]
    fn expression_errors_name_what_failed() {
        let cases = [
            (
                "params.missing",
                "run_if: undefined variable `params.missing`",
            ),
            (
                "params.missing and true",
                "run_if: undefined variable `params.missing`",
            ),
            (
                "tasks.count.output.rows > 0",
                "run_if: undefined variable `tasks.count.output.rows`",
            ),
            (
                "tasks.load.output",
                "run_if: undefined variable `tasks.load`: that task has no output in this run (it has not succeeded, or wrote none)",
            ),
            (
                "item",
                "run_if: undefined variable `item`: only the instances of a task with `map_over` have it",
            ),
            (
                "('x' * 100000000) | length",
                "run_if: the expression ran for more than 1000000 steps; simplify it",
            ),
        ];
        for (expression, expected) in cases {
            let error = evaluate(expression).unwrap_err();
            assert_eq!(error.message, expected, "{expression}");
        }
        let error = evaluate("params.limit >").unwrap_err();
        assert!(
            error.message.starts_with("run_if: invalid expression: "),
            "{}",
            error.message
        );
        let error = evaluate("params.tags | sum").unwrap_err();
        assert!(
            error.message.starts_with("run_if: cannot evaluate: "),
            "{}",
            error.message
        );
    }

    #[test]
    fn truthiness_is_minijinjas() {
        use serde_json::json;
        let renderer = Renderer::new();
        for value in [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(0.0),
            json!(-1),
            json!(0.5),
            json!(""),
            json!("0"),
            json!("false"),
            json!([]),
            json!([0]),
            json!({}),
            json!({"a": null}),
        ] {
            let params = json!({ "value": value }).as_object().unwrap().clone();
            let outputs = BTreeMap::new();
            let fixture = Fixture::new();
            let context = TemplateContext {
                params: &params,
                task_outputs: &outputs,
                ..fixture.context()
            };
            let held = renderer
                .evaluate("run_if", "true if params.value else false", &context)
                .unwrap();
            assert_eq!(json!(is_truthy(&value)), held, "{value}");
            let literal = renderer
                .evaluate(
                    "run_if",
                    &value.to_string().replace("null", "none"),
                    &context,
                )
                .unwrap();
            assert_eq!(is_truthy(&literal), is_truthy(&value), "{value}");
        }
    }

    #[test]
    fn mapped_instances_read_item_and_map_index() {
        use serde_json::json;
        let fixture = Fixture::new();
        let renderer = Renderer::new();
        let cases = [
            (json!("a.csv"), "{{ item }}", "a.csv"),
            (json!(7), "{{ item }} {{ map_index }}", "7 3"),
            (json!(1.5), "{{ item }}", "1.5"),
            (
                json!({"path": "a", "n": 2}),
                "{{ item }}",
                r#"{"path":"a","n":2}"#,
            ),
            (
                json!({"path": "a", "n": 2}),
                "{{ item.path }}-{{ item['n'] }}",
                "a-2",
            ),
            (json!([1, "x"]), "{{ item }}", r#"[1,"x"]"#),
            (json!(true), "{{ item | tojson }}", "true"),
            (json!("a b"), "--name={{ item | upper }}", "--name=A B"),
            (json!(5), "{{ map_index + 1 }}/{{ params.limit }}", "4/100"),
        ];
        for (item, source, expected) in cases {
            let context = TemplateContext {
                item: Some(&item),
                map_index: Some(3),
                ..fixture.context()
            };
            assert_eq!(
                renderer.render("command[1]", source, &context).as_deref(),
                Ok(expected),
                "{source} with {item}"
            );
        }
        for source in ["{{ item }}", "{{ map_index }}"] {
            let error = renderer
                .render("command[1]", source, &fixture.context())
                .unwrap_err();
            assert!(
                error
                    .message
                    .ends_with("only the instances of a task with `map_over` have it"),
                "{}",
                error.message
            );
        }
    }

    #[test]
    fn a_mapped_tasks_output_is_a_list_downstream() {
        let fixture = Fixture::new();
        let mut outputs = fixture.outputs.clone();
        outputs.insert("per-file".to_string(), "[3, 4, null, 5]".to_string());
        outputs.insert(
            "process".to_string(),
            r#"[{"rows": 2}, {"rows": 5}]"#.to_string(),
        );
        let context = TemplateContext {
            task_outputs: &outputs,
            ..fixture.context()
        };
        let renderer = Renderer::new();
        for (source, expected) in [
            ("{{ tasks['per-file'].output | select | sum }}", "12"),
            ("{{ tasks['per-file'].output | length }}", "4"),
            ("{{ tasks['per-file'].output[1] }}", "4"),
            ("{{ tasks['per-file'].output }}", "[3,4,null,5]"),
            (
                "{{ tasks.process.output | map(attribute='rows') | sum }}",
                "7",
            ),
        ] {
            assert_eq!(
                renderer.render("command[1]", source, &context).as_deref(),
                Ok(expected),
                "{source}"
            );
        }
        assert_eq!(
            renderer.evaluate(
                "map_over",
                "tasks['per-file'].output | select | list",
                &context
            ),
            Ok(serde_json::json!([3, 4, 5]))
        );
    }

    #[test]
    fn check_expression_reports_syntax_and_reads() {
        let refs = check_expression(
            r#"params.full and tasks.count.output.rows > 0 and tasks["extract-orders"].output | length > ds | length"#,
        )
        .unwrap();
        assert_eq!(
            refs.variables,
            ["ds", "params", "tasks"].map(String::from).into()
        );
        assert_eq!(
            refs.task_outputs,
            ["count", "extract-orders"].map(String::from).into()
        );
        assert_eq!(refs.params, ["full"].map(String::from).into());
        assert!(!refs.reads_any_task);

        let refs = check_expression("item + map_index + range(3) | length").unwrap();
        assert_eq!(
            refs.variables,
            ["item", "map_index"].map(String::from).into()
        );
        let refs = check_expression("tasks[params.which].output").unwrap();
        assert!(refs.reads_any_task);
        let refs = check_expression("'tasks.a' ~ x.tasks").unwrap();
        assert!(refs.task_outputs.is_empty(), "{refs:?}");
        assert_eq!(refs.variables, ["x"].map(String::from).into());

        for source in ["", "a b", "{{ x }}", "params.x >", "x if"] {
            let error = check_expression(source).unwrap_err();
            assert!(
                error.starts_with("invalid expression: "),
                "{source}: {error}"
            );
        }
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
