//! The registration-time check of templated fields: each `command`
//! argument (or the shell string), `env` values, `cwd`, and a sensor's
//! `file` and `http.url`.
//!
//! A field with a template (`{{` or `{%`) must parse, read only known
//! variables, only declared params (when the DAG declares any: a run's
//! params are then exactly those), and only the outputs of tasks upstream
//! of its task, directly or transitively: the others may not have run when
//! it is dispatched.
//!
//! `default_args.env` and `default_args.cwd` are checked once for syntax
//! and variables; the outputs they read are checked for each task that
//! inherits them, and reported at the `default_args` field, naming the
//! task.
//!
//! Properties kept for large DAGs: the same template text is parsed once
//! (a fan-out of 100,000 tasks usually repeats a handful of texts); "is
//! upstream" is answered from the task's own `depends_on` when it can be,
//! else from the set of tasks downstream of the one read, computed once
//! per task read.

use std::collections::{HashMap, VecDeque};

use super::ParamsSpec;
use super::model::{CommandSpec, TaskKindSpec, TaskSpec};
use super::validate::{Parsed, Report, did_you_mean};
use crate::template::{TemplateRefs, VARIABLES, check, is_templated};

/// One templated field of one task.
struct Field<'a> {
    path: String,
    text: &'a str,
    /// Inherited from `default_args`: syntax and variables are checked
    /// there, once.
    inherited: bool,
}

/// Checks every templated field of the document. `dependencies` are the
/// resolved `depends_on` of each task (by position).
pub(super) fn check_templates(
    parsed: &Parsed,
    dependencies: &[Vec<usize>],
    params: &ParamsSpec,
    params_readable: bool,
    report: &mut Report,
) {
    let spec = &parsed.spec;
    let mut checked: HashMap<&str, Result<TemplateRefs, String>> = HashMap::new();
    let mut reachability = Reachability::new(dependencies);
    // Built when a template first reads an output.
    let mut index: Option<HashMap<&str, usize>> = None;

    let defaults = &spec.default_args;
    let mut default_fields: Vec<Field<'_>> = defaults
        .env
        .iter()
        .map(|(name, value)| Field {
            path: format!("default_args.env.{name}"),
            text: value.as_str(),
            inherited: false,
        })
        .collect();
    if let Some(cwd) = &defaults.cwd {
        default_fields.push(Field {
            path: "default_args.cwd".to_string(),
            text: cwd,
            inherited: false,
        });
    }
    for field in &default_fields {
        if is_templated(field.text) {
            let refs = checked
                .entry(field.text)
                .or_insert_with(|| check(field.text));
            check_variables(field, refs, params, params_readable, report);
        }
    }

    for (position, task) in spec.tasks.iter().enumerate() {
        let unreadable = parsed.task(position);
        if unreadable.has("kind") || unreadable.has("id") {
            continue;
        }
        for field in templated_fields(position, task, &default_fields) {
            let refs = checked
                .entry(field.text)
                .or_insert_with(|| check(field.text));
            if !field.inherited {
                check_variables(&field, refs, params, params_readable, report);
            }
            let Ok(refs) = refs else {
                continue;
            };
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
            for read in &refs.task_outputs {
                let reason = match index.get(read.as_str()) {
                    None => Some(match did_you_mean(read, index.keys().copied()) {
                        Some(close) => format!(
                            "the template reads the output of `{read}`, which is not a task of this DAG; did you mean `{close}`?"
                        ),
                        None => format!(
                            "the template reads the output of `{read}`, which is not a task of this DAG"
                        ),
                    }),
                    Some(&upstream) if !reachability.is_upstream(upstream, position) => {
                        Some(format!(
                            "the template reads the output of `{read}`, which is not upstream of `{}`",
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
    for variable in &refs.variables {
        if VARIABLES.contains(&variable.as_str()) {
            continue;
        }
        let reason = match did_you_mean(variable, VARIABLES.iter().copied()) {
            Some(close) => format!(
                "the template reads `{variable}`, which is not a template variable; did you mean `{close}`?"
            ),
            None => format!(
                "the template reads `{variable}`, which is not a template variable; the variables are {}",
                VARIABLES.join(", ")
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
                "the template reads `params.{param}`, which the DAG does not declare; did you mean `{close}`?"
            ),
            None => format!(
                "the template reads `params.{param}`, which the DAG does not declare; it declares {}",
                names.join(", ")
            ),
        };
        report.push(field.path.clone(), reason);
    }
}

/// The fields of a task that hold a template, its own and those it
/// inherits. Paths are built only for those: most fields hold none.
fn templated_fields<'a>(
    position: usize,
    task: &'a TaskSpec,
    defaults: &[Field<'a>],
) -> Vec<Field<'a>> {
    let mut fields = Vec::new();
    let mut own = |name: &dyn Fn() -> String, text: &'a str| {
        if is_templated(text) {
            fields.push(Field {
                path: format!("tasks[{position}].{}", name()),
                text,
                inherited: false,
            });
        }
    };
    match task.kind.unwrap_or(TaskKindSpec::Command) {
        TaskKindSpec::Command => {
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
