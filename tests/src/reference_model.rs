//! A reference model of Baton's dependency semantics: trigger rules,
//! branches and the run's outcome. Given a DAG (each task's direct upstream,
//! trigger rule, whether it is a branch and which direct downstream tasks it
//! chooses, and the outcome its command has if it runs) it says how every
//! task ends and how the run ends. It shares no code with the controller:
//! tests compare the real scheduler against it.
//!
//! The rules, over a task's direct upstream tasks that have ended so far
//! (`s` succeeded, `f` failed or upstream_failed, `k` skipped, `d = s + f +
//! k`, `n` upstream in all), are [`decide`]: one `match` that is the table
//! of the DAG reference, row by row. A rule decides "as soon as" its
//! condition holds on the upstream that ended so far. The rules alone never
//! depend on the order in which upstream tasks end (`all_success` is
//! skipped only once every upstream ended, so a failure after a skip still
//! makes it `upstream_failed`), but a branch can: a `one_success` task below
//! a branch and another task runs if the other task succeeds before the
//! branch ends without choosing it, and is skipped otherwise. [`possible_decisions`]
//! therefore tries every order (over counts, not permutations, so it stays
//! polynomial) and returns each decision some order leads to; where there
//! are several, [`evaluate_with`] lets the caller say which one happened
//! (a test passes the state the scheduler reached, and checks that it is
//! one of them), and [`evaluate`] takes the first.
//!
//! Branches: a task directly downstream of a branch that succeeded without
//! choosing it is skipped as soon as that branch ends, whatever its rule; a
//! branch that failed or was skipped chooses nothing, and its downstream
//! follow their rules. A rule that decided before the branch ended keeps
//! its decision: `always` runs when the run starts, so a branch can never
//! skip it (tests avoid putting `always` right below a branch).
//!
//! The run fails when a leaf task (nothing depends on it) ended `failed` or
//! `upstream_failed`, and succeeds otherwise.

use std::collections::{BTreeSet, HashSet, VecDeque};

/// When a task may run, given how its direct upstream tasks ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TriggerRule {
    AllSuccess,
    AllFailed,
    AllDone,
    AllSkipped,
    OneSuccess,
    OneFailed,
    OneDone,
    NoneFailed,
    NoneFailedMinOneSuccess,
    NoneSkipped,
    Always,
}

impl TriggerRule {
    pub const ALL: [TriggerRule; 11] = [
        TriggerRule::AllSuccess,
        TriggerRule::AllFailed,
        TriggerRule::AllDone,
        TriggerRule::AllSkipped,
        TriggerRule::OneSuccess,
        TriggerRule::OneFailed,
        TriggerRule::OneDone,
        TriggerRule::NoneFailed,
        TriggerRule::NoneFailedMinOneSuccess,
        TriggerRule::NoneSkipped,
        TriggerRule::Always,
    ];

    /// The name a DAG file gives the rule (`trigger_rule: one_failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerRule::AllSuccess => "all_success",
            TriggerRule::AllFailed => "all_failed",
            TriggerRule::AllDone => "all_done",
            TriggerRule::AllSkipped => "all_skipped",
            TriggerRule::OneSuccess => "one_success",
            TriggerRule::OneFailed => "one_failed",
            TriggerRule::OneDone => "one_done",
            TriggerRule::NoneFailed => "none_failed",
            TriggerRule::NoneFailedMinOneSuccess => "none_failed_min_one_success",
            TriggerRule::NoneSkipped => "none_skipped",
            TriggerRule::Always => "always",
        }
    }

    /// Whether a task with this rule runs only once every direct upstream
    /// task ended (the `all_*` and `none_*` rules).
    pub fn waits_for_every_upstream(self) -> bool {
        !matches!(
            self,
            TriggerRule::OneSuccess
                | TriggerRule::OneFailed
                | TriggerRule::OneDone
                | TriggerRule::Always
        )
    }

    /// For the `one_*` rules, which run as soon as one upstream ended in a
    /// qualifying state: whether `state` qualifies. `None` for other rules.
    pub fn qualifying(self, state: FinalState) -> Option<bool> {
        let failed = matches!(state, FinalState::Failed | FinalState::UpstreamFailed);
        match self {
            TriggerRule::OneSuccess => Some(state == FinalState::Success),
            TriggerRule::OneFailed => Some(failed),
            TriggerRule::OneDone => Some(state == FinalState::Success || failed),
            _ => None,
        }
    }
}

/// How a task's command ends if it runs (retries are not modelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    Failed,
}

/// The state a task ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FinalState {
    Success,
    Failed,
    UpstreamFailed,
    Skipped,
}

impl FinalState {
    /// Whether a task in this state ran (started an attempt).
    pub fn ran(self) -> bool {
        matches!(self, FinalState::Success | FinalState::Failed)
    }
}

/// How the run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunOutcome {
    Success,
    Failed,
}

/// What a trigger rule decides for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    Run,
    Skip,
    UpstreamFailed,
}

/// What a task sees of its direct upstream tasks that ended so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Direct upstream tasks in all.
    pub upstream: usize,
    pub succeeded: usize,
    /// Failed or upstream_failed.
    pub failed: usize,
    pub skipped: usize,
    /// A branch among the ended upstream succeeded without choosing this
    /// task.
    pub not_chosen: bool,
}

impl Counts {
    pub fn done(&self) -> usize {
        self.succeeded + self.failed + self.skipped
    }
}

/// The table: what `rule` decides given the upstream tasks that ended so
/// far, or `None` while it waits. A root task runs when the run starts; a
/// task a succeeded branch did not choose is skipped.
pub fn decide(rule: TriggerRule, counts: &Counts) -> Option<Decision> {
    use Decision::{Run, Skip, UpstreamFailed};
    let n = counts.upstream;
    let (s, f, k) = (counts.succeeded, counts.failed, counts.skipped);
    let all_done = counts.done() == n;
    assert!(
        counts.done() <= n,
        "more upstream ended than exist: {counts:?}"
    );
    if n == 0 {
        return Some(Run);
    }
    if rule == TriggerRule::Always {
        return Some(Run);
    }
    if counts.not_chosen {
        return Some(Skip);
    }
    match rule {
        TriggerRule::AllSuccess if s == n => Some(Run),
        TriggerRule::AllSuccess if f > 0 => Some(UpstreamFailed),
        TriggerRule::AllSuccess if all_done && k > 0 => Some(Skip),
        TriggerRule::AllFailed if f == n => Some(Run),
        TriggerRule::AllFailed if s + k > 0 => Some(Skip),
        TriggerRule::AllDone if all_done => Some(Run),
        TriggerRule::AllSkipped if k == n => Some(Run),
        TriggerRule::AllSkipped if s + f > 0 => Some(Skip),
        TriggerRule::OneSuccess if s > 0 => Some(Run),
        TriggerRule::OneSuccess if all_done && k == n => Some(Skip),
        TriggerRule::OneSuccess if all_done => Some(UpstreamFailed),
        TriggerRule::OneFailed if f > 0 => Some(Run),
        TriggerRule::OneFailed if all_done => Some(Skip),
        TriggerRule::OneDone if s + f > 0 => Some(Run),
        TriggerRule::OneDone if all_done => Some(Skip),
        TriggerRule::NoneFailed if f > 0 => Some(UpstreamFailed),
        TriggerRule::NoneFailed if all_done => Some(Run),
        TriggerRule::NoneFailedMinOneSuccess if f > 0 => Some(UpstreamFailed),
        TriggerRule::NoneFailedMinOneSuccess if all_done && s > 0 => Some(Run),
        TriggerRule::NoneFailedMinOneSuccess if all_done => Some(Skip),
        TriggerRule::NoneSkipped if k > 0 => Some(Skip),
        TriggerRule::NoneSkipped if all_done => Some(Run),
        _ => None,
    }
}

/// How one direct upstream task ended, as its downstream task sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamEnd {
    Succeeded,
    /// A branch that succeeded and did not choose the downstream task.
    SucceededNotChoosing,
    /// Failed or upstream_failed.
    Failed,
    Skipped,
}

/// Every decision `rule` can reach when the upstream tasks end as `ends`
/// say, in some order: the rule decides at the first moment its condition
/// holds, and later ends change nothing.
pub fn possible_decisions(rule: TriggerRule, ends: &[UpstreamEnd]) -> BTreeSet<Decision> {
    let total = |wanted: UpstreamEnd| ends.iter().filter(|end| **end == wanted).count();
    // How many of each kind ended so far: succeeded, succeeded without
    // choosing, failed, skipped.
    let limits = [
        total(UpstreamEnd::Succeeded),
        total(UpstreamEnd::SucceededNotChoosing),
        total(UpstreamEnd::Failed),
        total(UpstreamEnd::Skipped),
    ];
    let counts_of = |ended: [usize; 4]| Counts {
        upstream: ends.len(),
        succeeded: ended[0] + ended[1],
        failed: ended[2],
        skipped: ended[3],
        not_chosen: ended[1] > 0,
    };
    let mut decisions = BTreeSet::new();
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([[0usize; 4]]);
    while let Some(ended) = queue.pop_front() {
        if !seen.insert(ended) {
            continue;
        }
        let counts = counts_of(ended);
        if let Some(decision) = decide(rule, &counts) {
            decisions.insert(decision);
            continue;
        }
        assert!(
            counts.done() < ends.len(),
            "{} decides nothing with every upstream ended: {counts:?}",
            rule.as_str()
        );
        for kind in 0..4 {
            if ended[kind] < limits[kind] {
                let mut next = ended;
                next[kind] += 1;
                queue.push_back(next);
            }
        }
    }
    decisions
}

/// One task of a modelled DAG.
#[derive(Debug, Clone)]
pub struct ModelTask {
    pub id: String,
    /// Indexes of its direct upstream tasks (duplicates count once).
    pub upstream: Vec<usize>,
    pub rule: TriggerRule,
    /// `Some(chosen)` for a branch: the indexes of the direct downstream
    /// tasks its output names.
    pub branch: Option<Vec<usize>>,
    /// How its command ends if it runs.
    pub outcome: Outcome,
}

/// A modelled DAG; edges must not form a cycle.
#[derive(Debug, Clone, Default)]
pub struct ModelDag {
    pub tasks: Vec<ModelTask>,
}

/// What the model says about one run of a [`ModelDag`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRun {
    /// Each task's final state, by index.
    pub states: Vec<FinalState>,
    /// Each task's possible final states given its upstream's states (more
    /// than one where the order in which upstream tasks end decides).
    pub possible: Vec<Vec<FinalState>>,
    pub outcome: RunOutcome,
}

impl ModelDag {
    /// Indexes in an order where every task comes after its upstream;
    /// panics on a cycle or an unknown index.
    pub fn topological_order(&self) -> Vec<usize> {
        let count = self.tasks.len();
        let mut waiting: Vec<usize> = self
            .tasks
            .iter()
            .map(|task| unique(&task.upstream).len())
            .collect();
        let downstream = self.downstream();
        let mut ready: VecDeque<usize> = (0..count).filter(|&i| waiting[i] == 0).collect();
        let mut order = Vec::with_capacity(count);
        while let Some(index) = ready.pop_front() {
            order.push(index);
            for &next in &downstream[index] {
                waiting[next] -= 1;
                if waiting[next] == 0 {
                    ready.push_back(next);
                }
            }
        }
        assert_eq!(order.len(), count, "the modelled DAG has a cycle");
        order
    }

    /// Direct downstream indexes of every task.
    pub fn downstream(&self) -> Vec<Vec<usize>> {
        let mut downstream = vec![Vec::new(); self.tasks.len()];
        for (index, task) in self.tasks.iter().enumerate() {
            for upstream in unique(&task.upstream) {
                assert!(
                    upstream < self.tasks.len(),
                    "task {index}: unknown upstream {upstream}"
                );
                downstream[upstream].push(index);
            }
        }
        downstream
    }
}

fn unique(indexes: &[usize]) -> Vec<usize> {
    let set: BTreeSet<usize> = indexes.iter().copied().collect();
    set.into_iter().collect()
}

/// [`evaluate_with`], taking the first possible state wherever there are
/// several.
pub fn evaluate(dag: &ModelDag) -> ModelRun {
    evaluate_with(dag, |_, possible| possible[0])
}

/// Evaluates the tasks in topological order. Where a task's final state
/// depends on the order its upstream tasks ended in, `choose(index,
/// possible)` picks it (it must return one of `possible`, which is sorted
/// and has at least two states).
pub fn evaluate_with(
    dag: &ModelDag,
    mut choose: impl FnMut(usize, &[FinalState]) -> FinalState,
) -> ModelRun {
    let count = dag.tasks.len();
    let mut states: Vec<Option<FinalState>> = vec![None; count];
    let mut possible = vec![Vec::new(); count];
    for index in dag.topological_order() {
        let task = &dag.tasks[index];
        let ends: Vec<UpstreamEnd> = unique(&task.upstream)
            .into_iter()
            .map(|upstream| {
                let state = states[upstream].expect("upstream evaluated first");
                let chooser = &dag.tasks[upstream].branch;
                match state {
                    FinalState::Success => match chooser {
                        Some(chosen) if !chosen.contains(&index) => {
                            UpstreamEnd::SucceededNotChoosing
                        }
                        _ => UpstreamEnd::Succeeded,
                    },
                    FinalState::Failed | FinalState::UpstreamFailed => UpstreamEnd::Failed,
                    FinalState::Skipped => UpstreamEnd::Skipped,
                }
            })
            .collect();
        let options: BTreeSet<FinalState> = possible_decisions(task.rule, &ends)
            .into_iter()
            .map(|decision| match decision {
                Decision::Run => match task.outcome {
                    Outcome::Success => FinalState::Success,
                    Outcome::Failed => FinalState::Failed,
                },
                Decision::Skip => FinalState::Skipped,
                Decision::UpstreamFailed => FinalState::UpstreamFailed,
            })
            .collect();
        let options: Vec<FinalState> = options.into_iter().collect();
        let state = match options.as_slice() {
            [only] => *only,
            _ => {
                let chosen = choose(index, &options);
                assert!(
                    options.contains(&chosen),
                    "task {}: chose {chosen:?}, not one of {options:?}",
                    task.id
                );
                chosen
            }
        };
        states[index] = Some(state);
        possible[index] = options;
    }
    let states: Vec<FinalState> = states
        .into_iter()
        .map(|state| state.expect("every task evaluated"))
        .collect();
    let downstream = dag.downstream();
    let leaf_failed = (0..count).any(|index| {
        downstream[index].is_empty()
            && matches!(
                states[index],
                FinalState::Failed | FinalState::UpstreamFailed
            )
    });
    ModelRun {
        states,
        possible,
        outcome: if leaf_failed {
            RunOutcome::Failed
        } else {
            RunOutcome::Success
        },
    }
}

#[cfg(test)]
mod tests {
    use super::Decision::{Run, Skip, UpstreamFailed};
    use super::FinalState as S;
    use super::TriggerRule::*;
    use super::*;

    /// Counts with `n` upstream of which `s` succeeded, `f` failed, `k`
    /// skipped so far.
    fn c(n: usize, s: usize, f: usize, k: usize) -> Counts {
        Counts {
            upstream: n,
            succeeded: s,
            failed: f,
            skipped: k,
            not_chosen: false,
        }
    }

    #[test]
    fn a_root_task_runs_whatever_its_rule() {
        for rule in TriggerRule::ALL {
            assert_eq!(decide(rule, &c(0, 0, 0, 0)), Some(Run), "{}", rule.as_str());
        }
    }

    #[test]
    fn all_success() {
        assert_eq!(decide(AllSuccess, &c(2, 2, 0, 0)), Some(Run));
        assert_eq!(decide(AllSuccess, &c(3, 2, 0, 0)), None);
        assert_eq!(
            decide(AllSuccess, &c(3, 1, 1, 0)),
            Some(UpstreamFailed),
            "as soon as f > 0"
        );
        assert_eq!(
            decide(AllSuccess, &c(3, 0, 0, 1)),
            None,
            "a skip waits: a later failure decides"
        );
        assert_eq!(
            decide(AllSuccess, &c(3, 2, 0, 1)),
            Some(Skip),
            "once every upstream ended"
        );
        assert_eq!(decide(AllSuccess, &c(3, 1, 1, 1)), Some(UpstreamFailed));
    }

    #[test]
    fn all_failed() {
        assert_eq!(decide(AllFailed, &c(2, 0, 2, 0)), Some(Run));
        assert_eq!(decide(AllFailed, &c(3, 0, 2, 0)), None);
        assert_eq!(
            decide(AllFailed, &c(3, 1, 0, 0)),
            Some(Skip),
            "as soon as s > 0"
        );
        assert_eq!(
            decide(AllFailed, &c(3, 0, 1, 1)),
            Some(Skip),
            "as soon as k > 0"
        );
    }

    #[test]
    fn all_done() {
        assert_eq!(decide(AllDone, &c(3, 1, 1, 1)), Some(Run));
        assert_eq!(decide(AllDone, &c(3, 0, 3, 0)), Some(Run));
        assert_eq!(decide(AllDone, &c(3, 0, 0, 3)), Some(Run));
        assert_eq!(decide(AllDone, &c(3, 1, 1, 0)), None);
    }

    #[test]
    fn all_skipped() {
        assert_eq!(decide(AllSkipped, &c(2, 0, 0, 2)), Some(Run));
        assert_eq!(decide(AllSkipped, &c(3, 0, 0, 2)), None);
        assert_eq!(
            decide(AllSkipped, &c(3, 1, 0, 0)),
            Some(Skip),
            "as soon as s > 0"
        );
        assert_eq!(
            decide(AllSkipped, &c(3, 0, 1, 1)),
            Some(Skip),
            "as soon as f > 0"
        );
    }

    #[test]
    fn one_success() {
        assert_eq!(decide(OneSuccess, &c(3, 1, 0, 0)), Some(Run), "at once");
        assert_eq!(decide(OneSuccess, &c(3, 0, 1, 1)), None);
        assert_eq!(
            decide(OneSuccess, &c(2, 0, 0, 2)),
            Some(Skip),
            "all skipped"
        );
        assert_eq!(decide(OneSuccess, &c(2, 0, 1, 1)), Some(UpstreamFailed));
        assert_eq!(decide(OneSuccess, &c(2, 0, 2, 0)), Some(UpstreamFailed));
    }

    #[test]
    fn one_failed() {
        assert_eq!(decide(OneFailed, &c(3, 0, 1, 0)), Some(Run), "at once");
        assert_eq!(decide(OneFailed, &c(3, 1, 0, 1)), None);
        assert_eq!(decide(OneFailed, &c(2, 1, 0, 1)), Some(Skip));
        assert_eq!(decide(OneFailed, &c(2, 2, 0, 0)), Some(Skip));
    }

    #[test]
    fn one_done() {
        assert_eq!(decide(OneDone, &c(3, 1, 0, 0)), Some(Run), "at once");
        assert_eq!(decide(OneDone, &c(3, 0, 1, 0)), Some(Run), "at once");
        assert_eq!(decide(OneDone, &c(3, 0, 0, 2)), None);
        assert_eq!(decide(OneDone, &c(2, 0, 0, 2)), Some(Skip));
    }

    #[test]
    fn none_failed() {
        assert_eq!(decide(NoneFailed, &c(3, 1, 0, 2)), Some(Run));
        assert_eq!(
            decide(NoneFailed, &c(2, 0, 0, 2)),
            Some(Run),
            "all skipped still runs"
        );
        assert_eq!(decide(NoneFailed, &c(3, 1, 0, 1)), None);
        assert_eq!(
            decide(NoneFailed, &c(3, 0, 1, 0)),
            Some(UpstreamFailed),
            "as soon as f > 0"
        );
    }

    #[test]
    fn none_failed_min_one_success() {
        let rule = NoneFailedMinOneSuccess;
        assert_eq!(decide(rule, &c(3, 1, 0, 2)), Some(Run));
        assert_eq!(decide(rule, &c(2, 0, 0, 2)), Some(Skip));
        assert_eq!(decide(rule, &c(3, 1, 0, 1)), None);
        assert_eq!(
            decide(rule, &c(3, 0, 1, 0)),
            Some(UpstreamFailed),
            "as soon as f > 0"
        );
    }

    #[test]
    fn none_skipped() {
        assert_eq!(decide(NoneSkipped, &c(3, 2, 1, 0)), Some(Run));
        assert_eq!(decide(NoneSkipped, &c(3, 2, 0, 0)), None);
        assert_eq!(
            decide(NoneSkipped, &c(3, 0, 0, 1)),
            Some(Skip),
            "as soon as k > 0"
        );
    }

    #[test]
    fn always() {
        assert_eq!(
            decide(Always, &c(3, 0, 0, 0)),
            Some(Run),
            "when the run starts"
        );
        assert_eq!(decide(Always, &c(2, 0, 2, 0)), Some(Run));
    }

    #[test]
    fn a_branch_that_did_not_choose_a_task_skips_it_whatever_its_rule() {
        let counts = Counts {
            not_chosen: true,
            ..c(2, 1, 1, 0)
        };
        for rule in TriggerRule::ALL {
            let expected = if rule == Always { Run } else { Skip };
            assert_eq!(decide(rule, &counts), Some(expected), "{}", rule.as_str());
        }
    }

    #[test]
    fn every_rule_decides_once_every_upstream_ended() {
        for rule in TriggerRule::ALL {
            for n in 1..=4 {
                for s in 0..=n {
                    for f in 0..=n - s {
                        for not_chosen in [false, true] {
                            let counts = Counts {
                                not_chosen: not_chosen && s > 0,
                                ..c(n, s, f, n - s - f)
                            };
                            assert!(
                                decide(rule, &counts).is_some(),
                                "{} {counts:?}",
                                rule.as_str()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn decisions_never_change_as_more_upstream_end() {
        // "As soon as": once a rule decided on some ended upstream, every
        // later state of the same ends decides the same, so for one order
        // the first decision is also the last.
        for rule in TriggerRule::ALL {
            for n in 1..=4usize {
                for (s, f, k) in triples(n) {
                    let Some(first) = decide(rule, &c(n, s, f, k)) else {
                        continue;
                    };
                    for (s2, f2, k2) in triples(n) {
                        if s2 >= s && f2 >= f && k2 >= k {
                            let later = decide(rule, &c(n, s2, f2, k2));
                            // all_success is the one rule whose "as soon
                            // as" outcomes (f > 0, k > 0) can both come.
                            if rule == AllSuccess && f == 0 && f2 > 0 {
                                continue;
                            }
                            assert_eq!(
                                later,
                                Some(first),
                                "{} {s},{f},{k} → {s2},{f2},{k2}",
                                rule.as_str()
                            );
                        }
                    }
                }
            }
        }
    }

    fn triples(n: usize) -> Vec<(usize, usize, usize)> {
        let mut all = Vec::new();
        for s in 0..=n {
            for f in 0..=n - s {
                for k in 0..=n - s - f {
                    all.push((s, f, k));
                }
            }
        }
        all
    }

    #[test]
    fn the_order_of_ends_matters_only_where_two_outcomes_race() {
        use UpstreamEnd::*;
        // all_success waits for every upstream before it skips.
        assert_eq!(
            possible_decisions(AllSuccess, &[Failed, Skipped]),
            BTreeSet::from([UpstreamFailed])
        );
        assert_eq!(
            possible_decisions(AllSuccess, &[Succeeded, Skipped]),
            BTreeSet::from([Skip])
        );
        assert_eq!(
            possible_decisions(NoneFailed, &[Skipped, Failed]),
            BTreeSet::from([UpstreamFailed])
        );
        assert_eq!(
            possible_decisions(OneSuccess, &[Failed, Succeeded]),
            BTreeSet::from([Run])
        );
        // A run at once may come before the branch that did not choose it.
        assert_eq!(
            possible_decisions(OneSuccess, &[Succeeded, SucceededNotChoosing]),
            BTreeSet::from([Run, Skip])
        );
        assert_eq!(
            possible_decisions(AllSuccess, &[Failed, SucceededNotChoosing]),
            BTreeSet::from([Skip, UpstreamFailed])
        );
        // Rules that wait for every upstream always see the branch.
        assert_eq!(
            possible_decisions(AllDone, &[Failed, SucceededNotChoosing]),
            BTreeSet::from([Skip])
        );
        assert_eq!(
            possible_decisions(NoneSkipped, &[SucceededNotChoosing]),
            BTreeSet::from([Skip])
        );
        assert_eq!(
            possible_decisions(Always, &[SucceededNotChoosing]),
            BTreeSet::from([Run])
        );
    }

    /// Builds a DAG from `(id, upstream ids, rule, outcome)` rows and
    /// branch choices `(branch id, chosen ids)`.
    fn dag(
        rows: &[(&str, &[&str], TriggerRule, Outcome)],
        branches: &[(&str, &[&str])],
    ) -> ModelDag {
        let index = |id: &str| {
            rows.iter()
                .position(|row| row.0 == id)
                .unwrap_or_else(|| panic!("no task {id}"))
        };
        ModelDag {
            tasks: rows
                .iter()
                .map(|(id, upstream, rule, outcome)| ModelTask {
                    id: id.to_string(),
                    upstream: upstream.iter().map(|u| index(u)).collect(),
                    rule: *rule,
                    branch: branches
                        .iter()
                        .find(|(branch, _)| branch == id)
                        .map(|(_, chosen)| chosen.iter().map(|c| index(c)).collect()),
                    outcome: *outcome,
                })
                .collect(),
        }
    }

    fn states_of(dag: &ModelDag, run: &ModelRun) -> Vec<(String, FinalState)> {
        dag.tasks
            .iter()
            .zip(&run.states)
            .map(|(task, state)| (task.id.clone(), *state))
            .collect()
    }

    fn named(expected: &[(&str, FinalState)]) -> Vec<(String, FinalState)> {
        expected
            .iter()
            .map(|(id, s)| (id.to_string(), *s))
            .collect()
    }

    const OK: Outcome = Outcome::Success;
    const BAD: Outcome = Outcome::Failed;

    #[test]
    fn cleanup_runs_only_when_transform_fails() {
        for (transform, expected, outcome) in [
            (
                BAD,
                [S::Success, S::Failed, S::UpstreamFailed, S::Success],
                RunOutcome::Failed,
            ),
            (
                OK,
                [S::Success, S::Success, S::Success, S::Skipped],
                RunOutcome::Success,
            ),
        ] {
            let model = dag(
                &[
                    ("extract", &[], AllSuccess, OK),
                    ("transform", &["extract"], AllSuccess, transform),
                    ("load", &["transform"], AllSuccess, OK),
                    ("cleanup", &["transform"], AllFailed, OK),
                ],
                &[],
            );
            let run = evaluate(&model);
            assert_eq!(run.states, expected, "transform {transform:?}");
            assert_eq!(run.outcome, outcome);
        }
    }

    #[test]
    fn a_branch_skip_flows_through_all_success_and_stops_at_none_failed_and_all_done() {
        let model = dag(
            &[
                ("pick", &[], AllSuccess, OK),
                ("taken", &["pick"], AllSuccess, OK),
                ("not_taken", &["pick"], AllSuccess, OK),
                ("step", &["not_taken"], AllSuccess, OK),
                ("join_none_failed", &["step", "taken"], NoneFailed, OK),
                ("join_all_done", &["step"], AllDone, OK),
                ("join_all_success", &["step", "taken"], AllSuccess, OK),
                ("after", &["join_none_failed"], AllSuccess, OK),
            ],
            &[("pick", &["taken"])],
        );
        let run = evaluate(&model);
        assert_eq!(
            states_of(&model, &run),
            named(&[
                ("pick", S::Success),
                ("taken", S::Success),
                ("not_taken", S::Skipped),
                ("step", S::Skipped),
                ("join_none_failed", S::Success),
                ("join_all_done", S::Success),
                ("join_all_success", S::Skipped),
                ("after", S::Success),
            ])
        );
        assert_eq!(
            run.outcome,
            RunOutcome::Success,
            "a skipped leaf fails nothing"
        );
    }

    #[test]
    fn a_failed_branch_chooses_nothing_and_its_downstream_follow_their_rules() {
        let model = dag(
            &[
                ("pick", &[], AllSuccess, BAD),
                ("a", &["pick"], AllSuccess, OK),
                ("b", &["pick"], OneFailed, OK),
            ],
            &[("pick", &["a"])],
        );
        let run = evaluate(&model);
        assert_eq!(run.states, [S::Failed, S::UpstreamFailed, S::Success]);
        assert_eq!(run.outcome, RunOutcome::Failed);
    }

    #[test]
    fn the_run_fails_only_for_a_failed_or_upstream_failed_leaf() {
        // A failure handled by an all_done leaf does not fail the run.
        let handled = dag(
            &[
                ("bad", &[], AllSuccess, BAD),
                ("finally", &["bad"], AllDone, OK),
            ],
            &[],
        );
        let run = evaluate(&handled);
        assert_eq!(run.states, [S::Failed, S::Success]);
        assert_eq!(run.outcome, RunOutcome::Success);
        // always runs after a failure, and a failing always leaf fails it.
        let always = dag(
            &[
                ("bad", &[], AllSuccess, BAD),
                ("after", &["bad"], Always, OK),
                ("after_bad", &["bad"], Always, BAD),
            ],
            &[],
        );
        let run = evaluate(&always);
        assert_eq!(run.states, [S::Failed, S::Success, S::Failed]);
        assert_eq!(run.outcome, RunOutcome::Failed);
    }

    #[test]
    fn upstream_failed_and_skipped_propagate_down_a_chain() {
        let model = dag(
            &[
                ("bad", &[], AllSuccess, BAD),
                ("a", &["bad"], AllSuccess, OK),
                ("b", &["a"], AllSuccess, OK),
                ("c", &["b"], OneFailed, OK),
                ("d", &["c"], AllSkipped, OK),
            ],
            &[],
        );
        let run = evaluate(&model);
        assert_eq!(
            run.states,
            [
                S::Failed,
                S::UpstreamFailed,
                S::UpstreamFailed,
                S::Success,
                S::Skipped
            ]
        );
        assert_eq!(run.outcome, RunOutcome::Success);
    }

    #[test]
    fn a_racing_task_takes_the_state_the_caller_saw() {
        // `join` is below a failing task and a branch that does not
        // choose it: upstream_failed if the failure comes first, skipped
        // if the branch does.
        let model = dag(
            &[
                ("bad", &[], AllSuccess, BAD),
                ("pick", &[], AllSuccess, OK),
                ("chosen", &["pick"], AllSuccess, OK),
                ("join", &["bad", "pick"], AllSuccess, OK),
                ("after", &["join"], AllSkipped, OK),
            ],
            &[("pick", &["chosen"])],
        );
        let first = evaluate(&model);
        assert_eq!(first.possible[3], [S::UpstreamFailed, S::Skipped]);
        assert_eq!(first.states[3], S::UpstreamFailed);
        assert_eq!(first.states[4], S::Skipped);
        assert_eq!(first.outcome, RunOutcome::Success);
        let skipped = evaluate_with(&model, |index, possible| {
            assert_eq!(index, 3);
            assert_eq!(possible, [S::UpstreamFailed, S::Skipped]);
            S::Skipped
        });
        assert_eq!(skipped.states[3], S::Skipped);
        assert_eq!(skipped.states[4], S::Success, "all_skipped now runs");
    }

    #[test]
    fn tasks_are_evaluated_in_topological_order_whatever_their_index() {
        let model = dag(
            &[
                ("late", &["early"], OneSuccess, OK),
                ("early", &[], AllSuccess, BAD),
            ],
            &[],
        );
        assert_eq!(model.topological_order(), [1, 0]);
        let run = evaluate(&model);
        assert_eq!(run.states, [S::UpstreamFailed, S::Failed]);
    }

    #[test]
    fn waiting_and_qualifying_rules() {
        assert!(AllDone.waits_for_every_upstream());
        assert!(NoneFailedMinOneSuccess.waits_for_every_upstream());
        assert!(!OneFailed.waits_for_every_upstream());
        assert!(!Always.waits_for_every_upstream());
        assert_eq!(OneFailed.qualifying(S::UpstreamFailed), Some(true));
        assert_eq!(OneDone.qualifying(S::Skipped), Some(false));
        assert_eq!(OneSuccess.qualifying(S::Success), Some(true));
        assert_eq!(AllDone.qualifying(S::Success), None);
    }
}
