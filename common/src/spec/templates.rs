//! The registration-time check of templated fields: each `command`
//! argument (or the shell string), `env` values, `cwd`, and a sensor's
//! `file` and `http.url`; and of the expressions of `run_if` and
//! `map_over`.
//!
//! A field with a template (`{{` or `{%`), and every expression, must
//! parse, read only known variables, only declared params (when the DAG
//! declares any: a run's params are then exactly those), and only the
//! outputs of tasks upstream of its task, directly or transitively: the
//! others may not have run when it is dispatched. `item` and `map_index`
//! exist only in the templated fields of a task with `map_over`;
//! expressions are evaluated before any attempt and before the task is
//! expanded, so they read neither those nor `attempt`.
//!
//! `default_args.env` and `default_args.cwd` are checked once for syntax
//! and variables; the outputs they read, and `item` or `map_index`, are
//! checked for each task that inherits them, and reported at the
//! `default_args` field, naming the task.
//!
//! Properties kept for large DAGs: the same template text is parsed once
//! (a fan-out of 100,000 tasks usually repeats a handful of texts); "is
//! upstream" is answered from the task's own `depends_on` when it can be,
//! else from the set of tasks downstream of the one read, computed once
//! per task read.

use std::collections::{HashMap, HashSet, VecDeque};

use super::ParamsSpec;
use super::flow::is_checkable_expression;
use super::model::{CommandSpec, TaskKindSpec, TaskSpec};
use super::validate::{Parsed, Report, did_you_mean};
use crate::template::{
    EXPRESSION_VARIABLES, MAPPED_VARIABLES, TemplateRefs, VARIABLES, check, check_expression,
    is_templated,
};

/// What a field holds, which decides how it is parsed and what it may
/// read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// A templated field of a task; `mapped` when the task has `map_over`
    /// (its instances have `item` and `map_index`).
    Template { mapped: bool },
    /// A templated field of `default_args`: whether its tasks are mapped is
    /// checked per task.
    DefaultTemplate,
    /// `run_if` or `map_over`.
    Expression { run_if: bool },
}

impl Reader {
    /// The word messages use for the field.
    fn noun(self) -> &'static str {
        match self {
            Reader::Expression { .. } => "expression",
            _ => "template",
        }
    }
}

/// One templated field, or expression, of one task.
struct Field<'a> {
    path: String,
    text: &'a str,
    /// Inherited from `default_args`: syntax and variables are checked
    /// there, once.
    inherited: bool,
    reader: Reader,
}

/// Templates and expressions checked so far, by text: each is parsed once.
#[derive(Default)]
struct Checked<'a> {
    templates: HashMap<&'a str, Result<TemplateRefs, String>>,
    expressions: HashMap<&'a str, Result<TemplateRefs, String>>,
}

impl<'a> Checked<'a> {
    fn refs(&mut self, field: &Field<'a>) -> &Result<TemplateRefs, String> {
        match field.reader {
            Reader::Expression { .. } => self
                .expressions
                .entry(field.text)
                .or_insert_with(|| check_expression(field.text)),
            _ => self
                .templates
                .entry(field.text)
                .or_insert_with(|| check(field.text)),
        }
    }
}

/// Checks every templated field and expression of the document.
/// `dependencies` are the resolved `depends_on` of each task (by position).
pub(super) fn check_templates(
    parsed: &Parsed,
    dependencies: &[Vec<usize>],
    params: &ParamsSpec,
    params_readable: bool,
    report: &mut Report,
) {
    let spec = &parsed.spec;
    let mut checked = Checked::default();
    let mut reachability = Reachability::new(dependencies);
    // Built when a template first reads an output.
    let mut index: Option<HashMap<&str, usize>> = None;
    // `default_args` fields already reported for `item` in a task that is
    // not mapped: once each is enough.
    let mut unmapped_reported: HashSet<String> = HashSet::new();

    let defaults = &spec.default_args;
    let mut default_fields: Vec<Field<'_>> = defaults
        .env
        .iter()
        .map(|(name, value)| Field {
            path: format!("default_args.env.{name}"),
            text: value.as_str(),
            inherited: false,
            reader: Reader::DefaultTemplate,
        })
        .collect();
    if let Some(cwd) = &defaults.cwd {
        default_fields.push(Field {
            path: "default_args.cwd".to_string(),
            text: cwd,
            inherited: false,
            reader: Reader::DefaultTemplate,
        });
    }
    for field in &default_fields {
        if is_templated(field.text) {
            let refs = checked.refs(field);
            check_variables(field, refs, params, params_readable, report);
        }
    }

    for (position, task) in spec.tasks.iter().enumerate() {
        let unreadable = parsed.task(position);
        if unreadable.has("kind") || unreadable.has("id") {
            continue;
        }
        let mapped = task.map_over.is_some();
        for field in task_fields(position, task, &default_fields) {
            let refs = checked.refs(&field);
            if !field.inherited {
                check_variables(&field, refs, params, params_readable, report);
            }
            let Ok(refs) = refs else {
                continue;
            };
            if field.inherited
                && !mapped
                && let Some(variable) = MAPPED_VARIABLES
                    .iter()
                    .find(|variable| refs.variables.contains(**variable))
                && unmapped_reported.insert(field.path.clone())
            {
                report.push(
                    field.path.clone(),
                    format!(
                        "the template reads `{variable}`, which only tasks with `map_over` have, and `{}` inherits this value without one",
                        task.id
                    ),
                );
            }
            if refs.task_outputs.is_empty() {
                continue;
            }
            let index = index.get_or_insert_with(|| {
                spec.tasks
                    .iter()
                    .enumerate()
                    .map(|(position, task)| (task.id.as_str(), position))
                    .collect()
            });
            let noun = field.reader.noun();
            for read in &refs.task_outputs {
                let reason = match index.get(read.as_str()) {
                    None => Some(match did_you_mean(read, index.keys().copied()) {
                        Some(close) => format!(
                            "the {noun} reads the output of `{read}`, which is not a task of this DAG; did you mean `{close}`?"
                        ),
                        None => format!(
                            "the {noun} reads the output of `{read}`, which is not a task of this DAG"
                        ),
                    }),
                    Some(&upstream) if !reachability.is_upstream(upstream, position) => {
                        Some(format!(
                            "the {noun} reads the output of `{read}`, which is not upstream of `{}`",
                            task.id
                        ))
                    }
                    Some(_) => None,
                };
                if let Some(reason) = reason {
                    let reason = if field.inherited {
                        format!("{reason} (which inherits this value)")
                    } else {
                        reason
                    };
                    report.push(field.path.clone(), reason);
                }
            }
        }
    }
}

/// Why a field may not read `variable`, one of the names templates know
/// (`None` when it may).
fn refused_known_variable(reader: Reader, variable: &str) -> Option<String> {
    let mapped_only = MAPPED_VARIABLES.contains(&variable);
    match reader {
        Reader::Template { mapped: false } if mapped_only => Some(format!(
            "the template reads `{variable}`, which only tasks with `map_over` have"
        )),
        Reader::Expression { .. } if variable == "attempt" => Some(
            "the expression reads `attempt`, which it cannot: it is evaluated before the task's first attempt"
                .to_string(),
        ),
        Reader::Expression { run_if: true } if mapped_only => Some(format!(
            "the expression reads `{variable}`, which it cannot: run_if is evaluated once for the whole task, before it is expanded"
        )),
        Reader::Expression { run_if: false } if mapped_only => Some(format!(
            "the expression reads `{variable}`, which it cannot: map_over gives the list whose elements are `item`"
        )),
        _ => None,
    }
}

/// Syntax, unknown variables and undeclared params of one field.
fn check_variables(
    field: &Field<'_>,
    refs: &Result<TemplateRefs, String>,
    params: &ParamsSpec,
    params_readable: bool,
    report: &mut Report,
) {
    let refs = match refs {
        Ok(refs) => refs,
        Err(reason) => {
            report.push(field.path.clone(), reason.clone());
            return;
        }
    };
    let noun = field.reader.noun();
    let known: Vec<&str> = match field.reader {
        Reader::Expression { .. } => EXPRESSION_VARIABLES.to_vec(),
        Reader::Template { mapped: false } => VARIABLES.to_vec(),
        Reader::Template { mapped: true } | Reader::DefaultTemplate => {
            VARIABLES.iter().chain(MAPPED_VARIABLES).copied().collect()
        }
    };
    for variable in &refs.variables {
        if VARIABLES.contains(&variable.as_str()) || MAPPED_VARIABLES.contains(&variable.as_str()) {
            if let Some(reason) = refused_known_variable(field.reader, variable) {
                report.push(field.path.clone(), reason);
            }
            continue;
        }
        let what = match field.reader {
            Reader::Expression { .. } => "a variable expressions can read",
            _ => "a template variable",
        };
        let reason = match did_you_mean(variable, known.iter().copied()) {
            Some(close) => format!(
                "the {noun} reads `{variable}`, which is not {what}; did you mean `{close}`?"
            ),
            None => format!(
                "the {noun} reads `{variable}`, which is not {what}; the variables are {}",
                known.join(", ")
            ),
        };
        report.push(field.path.clone(), reason);
    }
    if params.is_empty() || !params_readable {
        return;
    }
    for param in &refs.params {
        if params.get(param).is_some() {
            continue;
        }
        let names: Vec<&str> = params.names().collect();
        let reason = match did_you_mean(param, names.iter().copied()) {
            Some(close) => format!(
                "the {noun} reads `params.{param}`, which the DAG does not declare; did you mean `{close}`?"
            ),
            None => format!(
                "the {noun} reads `params.{param}`, which the DAG does not declare; it declares {}",
                names.join(", ")
            ),
        };
        report.push(field.path.clone(), reason);
    }
}

/// The fields of a task that hold a template, its own and those it
/// inherits, then its expressions. Paths are built only for those: most
/// fields hold none.
fn task_fields<'a>(position: usize, task: &'a TaskSpec, defaults: &[Field<'a>]) -> Vec<Field<'a>> {
    let mut fields = Vec::new();
    let reader = Reader::Template {
        mapped: task.map_over.is_some(),
    };
    let mut own = |name: &dyn Fn() -> String, text: &'a str| {
        if is_templated(text) {
            fields.push(Field {
                path: format!("tasks[{position}].{}", name()),
                text,
                inherited: false,
                reader,
            });
        }
    };
    match task.kind.unwrap_or(TaskKindSpec::Command).runs_as() {
        TaskKindSpec::Command | TaskKindSpec::Branch => {
            match &task.command {
                Some(CommandSpec::Shell(script)) => own(&|| "command".to_string(), script),
                Some(CommandSpec::Argv(argv)) => {
                    for (entry, argument) in argv.iter().enumerate() {
                        own(&|| format!("command[{entry}]"), argument);
                    }
                }
                None => {}
            }
            for (name, value) in &task.env {
                own(&|| format!("env.{name}"), value);
            }
            if let Some(cwd) = &task.cwd {
                own(&|| "cwd".to_string(), cwd);
            }
            for inherited in defaults.iter().filter(|field| is_templated(field.text)) {
                let overridden = match inherited.path.strip_prefix("default_args.env.") {
                    Some(name) => task.env.contains_key(name),
                    None => task.cwd.is_some(),
                };
                if !overridden {
                    fields.push(Field {
                        path: inherited.path.clone(),
                        text: inherited.text,
                        inherited: true,
                        reader,
                    });
                }
            }
        }
        TaskKindSpec::Sensor => {
            if let Some(sensor) = &task.sensor {
                if let Some(path) = &sensor.file {
                    own(&|| "sensor.file".to_string(), path);
                }
                if let Some(url) = sensor.http.as_ref().and_then(|http| http.url.as_ref()) {
                    own(&|| "sensor.http.url".to_string(), url);
                }
            }
        }
        TaskKindSpec::Noop | TaskKindSpec::Custom => {}
    }
    for (name, expression) in [("run_if", &task.run_if), ("map_over", &task.map_over)] {
        if let Some(text) = expression
            && is_checkable_expression(text)
        {
            fields.push(Field {
                path: format!("tasks[{position}].{name}"),
                text,
                inherited: false,
                reader: Reader::Expression {
                    run_if: name == "run_if",
                },
            });
        }
    }
    fields
}

/// Answers "is task `upstream` upstream of task `task`?".
struct Reachability<'a> {
    dependencies: &'a [Vec<usize>],
    /// Downstream edges, built on first need.
    downstream: Option<Vec<Vec<usize>>>,
    /// For each task read by a template: the tasks downstream of it.
    below: HashMap<usize, Vec<bool>>,
}

impl<'a> Reachability<'a> {
    fn new(dependencies: &'a [Vec<usize>]) -> Self {
        Self {
            dependencies,
            downstream: None,
            below: HashMap::new(),
        }
    }

    fn is_upstream(&mut self, upstream: usize, task: usize) -> bool {
        if upstream == task {
            return false;
        }
        if self.dependencies[task].contains(&upstream) {
            return true;
        }
        let dependencies = self.dependencies;
        let downstream = self.downstream.get_or_insert_with(|| {
            let mut downstream = vec![Vec::new(); dependencies.len()];
            for (position, upstream) in dependencies.iter().enumerate() {
                for &source in upstream {
                    downstream[source].push(position);
                }
            }
            downstream
        });
        let below = self.below.entry(upstream).or_insert_with(|| {
            let mut seen = vec![false; dependencies.len()];
            let mut queue = VecDeque::from([upstream]);
            while let Some(current) = queue.pop_front() {
                for &next in &downstream[current] {
                    if !seen[next] {
                        seen[next] = true;
                        queue.push_back(next);
                    }
                }
            }
            seen
        });
        below[task]
    }
}
