//! The real scheduler against the reference model
//! (`baton_tests::reference_model`), on random DAGs.
//!
//! One `baton dev` serves the whole test; each case registers a DAG of its
//! own (up to 200 tasks, edges from earlier to later tasks so it is
//! acyclic, random trigger rules, some branch tasks choosing a random
//! non-empty set of their direct downstream tasks, each task `exit 0` or
//! `exit 1`), triggers it, and waits until the run and every task are
//! final. Then:
//!
//! - (a) every task is in a final state (the wait times out otherwise);
//! - (b) each task's state and the run's state are the model's. Where the
//!   semantics let the order in which upstream tasks end decide (see the
//!   model's doc), the model takes the state the scheduler reached if it is
//!   one of the possible ones, and goes on from there;
//! - (c) no task started before the tasks it depends on ended: with a rule
//!   that waits for every upstream (`all_*`, `none_*`), after each one's
//!   `ended_at`; with `one_*`, after the `ended_at` of at least one upstream
//!   in a qualifying state; `always` and root tasks, no constraint. Tasks
//!   that ran have exactly one attempt, the others none.
//!
//! A failing case is shrunk (bounded in steps and time) and reported with
//! its DAG file, the model's states and the scheduler's. The generator is
//! seeded from `BATON_TEST_SEED` when set (the seed is printed either way),
//! and `PROPTEST_CASES` sets the number of cases.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baton_tests::pb::{RunState, TaskState};
use baton_tests::reference_model::{
    FinalState, ModelDag, ModelRun, ModelTask, Outcome, RunOutcome, TriggerRule, evaluate_with,
};
use baton_tests::{Api, RunView, Sandbox, micros, task_state};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

const MAX_TASKS: usize = 200;
/// Upstream picks per task (duplicates collapse).
const MAX_UPSTREAM: usize = 4;
/// Half the edges come from one of the previous tasks within this
/// distance, so that chains (and skip propagation) get long.
const LOCAL_WINDOW: usize = 8;
const DEFAULT_CASES: u32 = 32;
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// No case starts later than this after the first one (shrinking
/// included); those that would are counted as not run.
const TOTAL_BUDGET: Duration = Duration::from_secs(110);
const MAX_SHRINK_ITERS: u32 = 1024;
const MAX_SHRINK_MILLIS: u32 = 45_000;
/// Fewer cases run within the budget than this fails the test: it would
/// have checked too little.
const MIN_CASES_RUN: usize = 8;

/// One generated task, interpreted by [`Case::build`] so that any vector of
/// them (including the shrunk ones) is a valid DAG.
#[derive(Debug, Clone)]
struct GenTask {
    /// Each names an earlier task: even values one of the previous
    /// [`LOCAL_WINDOW`], odd values any earlier task.
    picks: Vec<u16>,
    rule: TriggerRule,
    fails: bool,
    /// Made a branch when it has direct downstream tasks and none of them
    /// has the rule `always` (which runs before a branch could skip it).
    branch: bool,
    /// Bits choosing among the direct downstream tasks; the top bit writes
    /// a single choice as a string rather than a list.
    choice: u32,
}

fn gen_task() -> impl Strategy<Value = GenTask> {
    (
        prop::collection::vec(any::<u16>(), 0..=MAX_UPSTREAM),
        prop_oneof![
            3 => Just(TriggerRule::AllSuccess),
            8 => prop::sample::select(TriggerRule::ALL.to_vec()),
        ],
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.15),
        any::<u32>(),
    )
        .prop_map(|(picks, rule, fails, branch, choice)| GenTask {
            picks,
            rule,
            fails,
            branch,
            choice,
        })
}

/// A generated DAG: the model, and the DAG file the scheduler runs.
#[derive(Debug)]
struct Case {
    dag_id: String,
    model: ModelDag,
    yaml: String,
}

fn task_id(index: usize) -> String {
    format!("t{index:03}")
}

impl Case {
    fn build(dag_id: String, generated: &[GenTask]) -> Self {
        let mut tasks: Vec<ModelTask> = generated
            .iter()
            .enumerate()
            .map(|(index, task)| {
                let mut upstream: Vec<usize> = Vec::new();
                if index > 0 {
                    for pick in &task.picks {
                        let value = usize::from(pick >> 1);
                        let chosen = if pick & 1 == 0 {
                            index - 1 - value % index.min(LOCAL_WINDOW)
                        } else {
                            value % index
                        };
                        if !upstream.contains(&chosen) {
                            upstream.push(chosen);
                        }
                    }
                }
                upstream.sort_unstable();
                ModelTask {
                    id: task_id(index),
                    upstream,
                    rule: task.rule,
                    branch: None,
                    outcome: if task.fails {
                        Outcome::Failed
                    } else {
                        Outcome::Success
                    },
                }
            })
            .collect();
        let downstream = ModelDag {
            tasks: tasks.clone(),
        }
        .downstream();
        let mut single_string = vec![false; tasks.len()];
        for (index, task) in generated.iter().enumerate() {
            let below = &downstream[index];
            let can_branch = !below.is_empty()
                && below
                    .iter()
                    .all(|&next| tasks[next].rule != TriggerRule::Always);
            if task.branch && can_branch {
                let mut chosen: Vec<usize> = below
                    .iter()
                    .enumerate()
                    .filter(|(position, _)| task.choice & (1 << (position % 31)) != 0)
                    .map(|(_, &next)| next)
                    .collect();
                if chosen.is_empty() {
                    chosen.push(below[task.choice as usize % below.len()]);
                }
                single_string[index] = chosen.len() == 1 && task.choice & (1 << 31) != 0;
                tasks[index].branch = Some(chosen);
            }
        }
        let mut yaml = format!("id: {dag_id}\ntasks:\n");
        for (index, task) in tasks.iter().enumerate() {
            let _ = writeln!(yaml, "  - id: {}", task.id);
            if task.branch.is_some() {
                yaml.push_str("    kind: branch\n");
            }
            // all_success is the default; leaving it out checks that.
            if task.rule != TriggerRule::AllSuccess {
                let _ = writeln!(yaml, "    trigger_rule: {}", task.rule.as_str());
            }
            if !task.upstream.is_empty() {
                let ids: Vec<String> = task.upstream.iter().map(|&u| task_id(u)).collect();
                let _ = writeln!(yaml, "    depends_on: [{}]", ids.join(", "));
            }
            let command = match (&task.branch, task.outcome) {
                (_, Outcome::Failed) => "exit 1".to_string(),
                (None, Outcome::Success) => "exit 0".to_string(),
                (Some(chosen), Outcome::Success) => {
                    let ids: Vec<String> = chosen.iter().map(|&c| task_id(c)).collect();
                    let output = if single_string[index] {
                        serde_json::to_string(&ids[0])
                    } else {
                        serde_json::to_string(&ids)
                    }
                    .expect("ids serialize");
                    format!("echo '{output}' > \"$BATON_OUTPUT\"")
                }
            };
            // A JSON string is a valid YAML double-quoted scalar.
            let _ = writeln!(
                yaml,
                "    command: {}",
                serde_json::to_string(&command).expect("a string serializes")
            );
        }
        Case {
            dag_id,
            model: ModelDag { tasks },
            yaml,
        }
    }
}

fn final_state(state: TaskState) -> Option<FinalState> {
    match state {
        TaskState::Success => Some(FinalState::Success),
        TaskState::Failed => Some(FinalState::Failed),
        TaskState::UpstreamFailed => Some(FinalState::UpstreamFailed),
        TaskState::Skipped => Some(FinalState::Skipped),
        _ => None,
    }
}

/// Compares the scheduler's run with the model; every problem found, in
/// task order.
fn check(case: &Case, view: &RunView) -> Result<ModelRun, (Option<ModelRun>, Vec<String>)> {
    let by_id: HashMap<&str, usize> = view
        .tasks
        .iter()
        .enumerate()
        .map(|(position, task)| (task.task_id.as_str(), position))
        .collect();
    let mut problems = Vec::new();
    if view.tasks.len() != case.model.tasks.len() {
        problems.push(format!(
            "GetRun shows {} tasks; the DAG has {}",
            view.tasks.len(),
            case.model.tasks.len()
        ));
    }
    let mut actual = Vec::with_capacity(case.model.tasks.len());
    for task in &case.model.tasks {
        let Some(&position) = by_id.get(task.id.as_str()) else {
            problems.push(format!("{}: missing from GetRun", task.id));
            actual.push(None);
            continue;
        };
        let state = task_state(&view.tasks[position]);
        let state_opt = final_state(state);
        if state_opt.is_none() {
            problems.push(format!("(a) {}: {state:?} is not a final state", task.id));
        }
        actual.push(state_opt.map(|state| (state, position)));
    }
    if !problems.is_empty() {
        return Err((None, problems));
    }
    let actual: Vec<(FinalState, usize)> = actual.into_iter().flatten().collect();
    let model = evaluate_with(&case.model, |index, possible| {
        let seen = actual[index].0;
        if possible.contains(&seen) {
            seen
        } else {
            possible[0]
        }
    });
    for (index, task) in case.model.tasks.iter().enumerate() {
        let (state, position) = actual[index];
        if state != model.states[index] {
            problems.push(format!(
                "(b) {}: scheduler {state:?}, model {:?} (possible {:?})",
                task.id, model.states[index], model.possible[index]
            ));
        }
        let instance = &view.tasks[position];
        let attempts = u32::from(state.ran());
        if instance.attempt != attempts {
            problems.push(format!(
                "{}: {state:?} with attempt {}, expected {attempts}",
                task.id, instance.attempt
            ));
        }
        let started = micros(instance.started_at.as_ref());
        if !state.ran() || task.upstream.is_empty() || started == 0 {
            if state.ran() && started == 0 {
                problems.push(format!("(c) {}: ran but has no started_at", task.id));
            }
            continue;
        }
        let ended_before =
            |upstream: usize| micros(view.tasks[actual[upstream].1].ended_at.as_ref()) <= started;
        if task.rule.waits_for_every_upstream() {
            for &upstream in &task.upstream {
                if !ended_before(upstream) {
                    problems.push(format!(
                        "(c) {} ({}) started before its upstream {} ended",
                        task.id,
                        task.rule.as_str(),
                        task_id(upstream)
                    ));
                }
            }
        } else if task.rule != TriggerRule::Always {
            let qualified = task.upstream.iter().any(|&upstream| {
                task.rule.qualifying(actual[upstream].0) == Some(true) && ended_before(upstream)
            });
            if !qualified {
                problems.push(format!(
                    "(c) {} ({}) started before any qualifying upstream ended",
                    task.id,
                    task.rule.as_str()
                ));
            }
        }
    }
    let run_outcome = match view.state() {
        RunState::Success => Some(RunOutcome::Success),
        RunState::Failed => Some(RunOutcome::Failed),
        _ => None,
    };
    if run_outcome != Some(model.outcome) {
        problems.push(format!(
            "(b) run: scheduler {:?}, model {:?}",
            view.state(),
            model.outcome
        ));
    }
    if problems.is_empty() {
        Ok(model)
    } else {
        Err((Some(model), problems))
    }
}

/// One line per task: its rule, upstream, branch choice, how its command
/// ends, the model's state (and the possible ones) and the scheduler's.
fn table(case: &Case, model: Option<&ModelRun>, view: &RunView) -> String {
    let mut lines = vec![format!(
        "run {}: {:?} {}",
        view.run.run_id,
        view.state(),
        view.run.reason
    )];
    for (index, task) in case.model.tasks.iter().enumerate() {
        let scheduler = view
            .tasks
            .iter()
            .find(|instance| instance.task_id == task.id)
            .map(|instance| {
                format!(
                    "{:?} attempt {} started {} ended {} {}",
                    task_state(instance),
                    instance.attempt,
                    micros(instance.started_at.as_ref()),
                    micros(instance.ended_at.as_ref()),
                    instance.error
                )
            })
            .unwrap_or_else(|| "missing".to_string());
        let model = model.map_or_else(String::new, |run| {
            format!("{:?} {:?}", run.states[index], run.possible[index])
        });
        let upstream: Vec<String> = task.upstream.iter().map(|&u| task_id(u)).collect();
        let branch = task.branch.as_ref().map_or_else(String::new, |chosen| {
            let ids: Vec<String> = chosen.iter().map(|&c| task_id(c)).collect();
            format!(" branch→[{}]", ids.join(","))
        });
        lines.push(format!(
            "  {} {} [{}]{branch} {:?} | model {model} | scheduler {scheduler}",
            task.id,
            task.rule.as_str(),
            upstream.join(","),
            task.outcome
        ));
    }
    lines.join("\n")
}

async fn run_case(api: &mut Api, case: &Case) -> Result<(), String> {
    api.register(&case.yaml).await;
    let run = api.trigger(&case.dag_id).await;
    let view = api.wait_for_settled_run(&run.run_id, RUN_TIMEOUT).await;
    match check(case, &view) {
        Ok(_) => Ok(()),
        Err((model, problems)) => Err(format!(
            "{} problems:\n{}\n--- DAG file ---\n{}--- model | scheduler ---\n{}",
            problems.len(),
            problems.join("\n"),
            case.yaml,
            table(case, model.as_ref(), &view)
        )),
    }
}

fn seed() -> u64 {
    if let Some(seed) = std::env::var("BATON_TEST_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
    {
        return seed;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or_default();
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_dags_end_as_the_reference_model_says() {
    let mut sandbox = Sandbox::new("trigger-rule-model");
    let _dev = sandbox.start_dev(&["--slots", "8"]).await;
    let api = sandbox.api().await;

    let seed = seed();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    eprintln!(
        "trigger rule model: {cases} cases, seed {seed} (BATON_TEST_SEED={seed} repeats them)"
    );
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: MAX_SHRINK_ITERS,
        max_shrink_time: MAX_SHRINK_MILLIS,
        ..Config::default()
    };
    let seed_bytes: Vec<u8> = std::iter::repeat_n(seed.to_le_bytes(), 4)
        .flatten()
        .collect();
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let strategy = prop::collection::vec(gen_task(), 1..=MAX_TASKS);
    let handle = tokio::runtime::Handle::current();
    let next_dag = AtomicUsize::new(0);
    let ran = AtomicUsize::new(0);
    let not_run = AtomicUsize::new(0);
    let started = Instant::now();
    let tasks_run = AtomicUsize::new(0);

    let result = tokio::task::block_in_place(|| {
        runner.run(&strategy, |generated| {
            if started.elapsed() > TOTAL_BUDGET {
                not_run.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            let number = next_dag.fetch_add(1, Ordering::Relaxed);
            let case = Case::build(format!("model-{number}"), &generated);
            let mut api = api.clone();
            let outcome = handle.block_on(run_case(&mut api, &case));
            ran.fetch_add(1, Ordering::Relaxed);
            tasks_run.fetch_add(case.model.tasks.len(), Ordering::Relaxed);
            outcome.map_err(TestCaseError::fail)
        })
    });
    let ran = ran.into_inner();
    eprintln!(
        "trigger rule model: {ran} cases ({} tasks) in {:.1} s, {} not run (budget {TOTAL_BUDGET:?})",
        tasks_run.into_inner(),
        started.elapsed().as_secs_f64(),
        not_run.into_inner()
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, _)) => panic!(
            "the scheduler disagrees with the reference model (seed {seed}; smallest failing case after shrinking):\n{reason}"
        ),
        Err(TestError::Abort(reason)) => {
            panic!("the property test aborted (seed {seed}): {reason}")
        }
    }
    assert!(
        ran >= MIN_CASES_RUN,
        "only {ran} cases ran within {TOTAL_BUDGET:?}; at least {MIN_CASES_RUN} are needed"
    );
}

#[test]
fn generated_dags_are_acyclic_and_branches_choose_direct_downstream_tasks() {
    // The generator itself, without a scheduler: any vector of generated
    // tasks builds a DAG the model accepts, whose branches choose among
    // their direct downstream tasks, never above an `always` task.
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 64,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = prop::collection::vec(gen_task(), 1..=MAX_TASKS);
    let result = runner.run(&strategy, |generated| {
        let case = Case::build("generated".to_string(), &generated);
        let downstream = case.model.downstream();
        for (index, task) in case.model.tasks.iter().enumerate() {
            prop_assert!(task.upstream.iter().all(|&upstream| upstream < index));
            if let Some(chosen) = &task.branch {
                prop_assert!(!chosen.is_empty());
                prop_assert!(chosen.iter().all(|next| downstream[index].contains(next)));
                prop_assert!(
                    downstream[index]
                        .iter()
                        .all(|&next| case.model.tasks[next].rule != TriggerRule::Always)
                );
            }
        }
        prop_assert_eq!(case.model.topological_order().len(), generated.len());
        // The DAG file says what the model holds.
        let file: serde_json::Value = serde_yaml_ng::from_str(&case.yaml)
            .map_err(|error| TestCaseError::fail(format!("{error}\n{}", case.yaml)))?;
        let entries = file["tasks"].as_array().cloned().unwrap_or_default();
        prop_assert_eq!(entries.len(), generated.len());
        for (task, entry) in case.model.tasks.iter().zip(&entries) {
            prop_assert_eq!(entry["id"].as_str(), Some(task.id.as_str()));
            let rule = entry["trigger_rule"].as_str().unwrap_or("all_success");
            prop_assert_eq!(rule, task.rule.as_str());
            let upstream: Vec<String> = task.upstream.iter().map(|&u| task_id(u)).collect();
            let depends_on: Vec<String> = entry["depends_on"]
                .as_array()
                .map(|ids| {
                    ids.iter()
                        .filter_map(|id| id.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            prop_assert_eq!(depends_on, upstream);
            prop_assert_eq!(
                entry["kind"].as_str() == Some("branch"),
                task.branch.is_some()
            );
            let command = entry["command"].as_str().unwrap_or_default();
            match (&task.branch, task.outcome) {
                (_, Outcome::Failed) => prop_assert_eq!(command, "exit 1"),
                (None, Outcome::Success) => prop_assert_eq!(command, "exit 0"),
                (Some(chosen), Outcome::Success) => {
                    let output = command
                        .strip_prefix("echo '")
                        .and_then(|rest| rest.strip_suffix("' > \"$BATON_OUTPUT\""))
                        .unwrap_or_default();
                    let written: serde_json::Value = serde_json::from_str(output)
                        .map_err(|error| TestCaseError::fail(format!("{command}: {error}")))?;
                    let names: Vec<String> = match written {
                        serde_json::Value::String(id) => vec![id],
                        other => serde_json::from_value(other)
                            .map_err(|error| TestCaseError::fail(error.to_string()))?,
                    };
                    let expected: Vec<String> = chosen.iter().map(|&c| task_id(c)).collect();
                    prop_assert_eq!(names, expected);
                }
            }
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}
