//! Trigger rules as a pure function: what a pending task does, given the
//! states of its direct upstream tasks so far.
//!
//! The scheduler keeps, per task, how many of its upstream tasks succeeded,
//! failed and were skipped, updated as each one ends, so deciding is O(1)
//! per event whatever the fan-in. The table is Airflow's and is the one
//! docs/dag-reference.md shows ("Trigger rules"); a cancelled upstream
//! counts as failed. A decision is taken as soon as more upstream tasks
//! ending cannot change it (every verdict is monotone), so the outcome
//! never depends on the order in which upstream tasks end.

use baton_common::spec::TriggerRule;

/// What the upstream tasks of one task did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpstreamCounts {
    /// Direct upstream tasks in all.
    pub total: u32,
    pub succeeded: u32,
    /// Failed, upstream_failed or cancelled.
    pub failed: u32,
    pub skipped: u32,
}

impl UpstreamCounts {
    pub fn done(&self) -> u32 {
        self.succeeded + self.failed + self.skipped
    }

    pub fn all_done(&self) -> bool {
        self.done() >= self.total
    }
}

/// What a pending task does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet: more upstream tasks must end.
    Wait,
    /// Its rule holds: it runs.
    Run,
    Skip,
    UpstreamFailed,
}

/// The trigger rule's verdict for a task whose upstream did `counts`.
pub fn verdict(rule: TriggerRule, counts: UpstreamCounts) -> Verdict {
    use TriggerRule::*;
    use Verdict::*;
    let UpstreamCounts {
        total,
        succeeded: s,
        failed: f,
        skipped: k,
    } = counts;
    let all_done = counts.all_done();
    if total == 0 {
        // A task without upstream runs when the run starts, whatever its
        // rule (as in Airflow).
        return Run;
    }
    match rule {
        Always => Run,
        AllSuccess => {
            if f > 0 {
                UpstreamFailed
            } else if !all_done {
                // Skipped only once no upstream can still fail: a failure
                // after a skip makes it upstream_failed, whatever the order
                // they ended in.
                Wait
            } else if k > 0 {
                Skip
            } else {
                Run
            }
        }
        AllFailed => {
            if s + k > 0 {
                Skip
            } else if f >= total {
                Run
            } else {
                Wait
            }
        }
        AllDone => {
            if all_done {
                Run
            } else {
                Wait
            }
        }
        AllSkipped => {
            if s + f > 0 {
                Skip
            } else if k >= total {
                Run
            } else {
                Wait
            }
        }
        OneSuccess => {
            if s > 0 {
                Run
            } else if !all_done {
                Wait
            } else if k >= total {
                Skip
            } else {
                UpstreamFailed
            }
        }
        OneFailed => {
            if f > 0 {
                Run
            } else if all_done {
                Skip
            } else {
                Wait
            }
        }
        OneDone => {
            if s + f > 0 {
                Run
            } else if all_done {
                Skip
            } else {
                Wait
            }
        }
        NoneFailed => {
            if f > 0 {
                UpstreamFailed
            } else if all_done {
                Run
            } else {
                Wait
            }
        }
        NoneFailedMinOneSuccess => {
            if f > 0 {
                UpstreamFailed
            } else if !all_done {
                Wait
            } else if s > 0 {
                Run
            } else {
                Skip
            }
        }
        NoneSkipped => {
            if k > 0 {
                Skip
            } else if all_done {
                Run
            } else {
                Wait
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TriggerRule::*;
    use Verdict::*;

    fn counts(total: u32, succeeded: u32, failed: u32, skipped: u32) -> UpstreamCounts {
        UpstreamCounts {
            total,
            succeeded,
            failed,
            skipped,
        }
    }

    #[test]
    fn a_root_task_runs_whatever_its_rule() {
        let none = counts(0, 0, 0, 0);
        for rule in TriggerRule::ALL {
            assert_eq!(verdict(rule, none), Run, "{rule:?}");
        }
    }

    #[test]
    fn each_rule_decides_as_the_reference_table_says() {
        // (rule, total, succeeded, failed, skipped, verdict)
        let cases = [
            (AllSuccess, 3, 2, 0, 0, Wait),
            (AllSuccess, 3, 3, 0, 0, Run),
            (AllSuccess, 3, 1, 1, 0, UpstreamFailed),
            (AllSuccess, 3, 1, 0, 1, Wait),
            (AllSuccess, 3, 2, 0, 1, Skip),
            (AllSuccess, 3, 0, 1, 1, UpstreamFailed),
            (AllFailed, 2, 0, 1, 0, Wait),
            (AllFailed, 2, 0, 2, 0, Run),
            (AllFailed, 2, 1, 0, 0, Skip),
            (AllFailed, 2, 0, 1, 1, Skip),
            (AllDone, 2, 1, 0, 0, Wait),
            (AllDone, 2, 0, 1, 1, Run),
            (AllSkipped, 2, 0, 0, 1, Wait),
            (AllSkipped, 2, 0, 0, 2, Run),
            (AllSkipped, 2, 0, 1, 1, Skip),
            (OneSuccess, 3, 1, 0, 0, Run),
            (OneSuccess, 3, 0, 1, 0, Wait),
            (OneSuccess, 3, 0, 2, 1, UpstreamFailed),
            (OneSuccess, 2, 0, 0, 2, Skip),
            (OneFailed, 3, 0, 1, 0, Run),
            (OneFailed, 3, 2, 0, 0, Wait),
            (OneFailed, 3, 2, 0, 1, Skip),
            (OneDone, 2, 0, 1, 0, Run),
            (OneDone, 2, 0, 0, 1, Wait),
            (OneDone, 2, 0, 0, 2, Skip),
            (NoneFailed, 2, 1, 0, 0, Wait),
            (NoneFailed, 2, 1, 0, 1, Run),
            (NoneFailed, 2, 0, 1, 0, UpstreamFailed),
            (NoneFailedMinOneSuccess, 2, 1, 0, 1, Run),
            (NoneFailedMinOneSuccess, 2, 0, 0, 2, Skip),
            (NoneFailedMinOneSuccess, 2, 0, 1, 0, UpstreamFailed),
            (NoneFailedMinOneSuccess, 2, 1, 0, 0, Wait),
            (NoneSkipped, 2, 1, 1, 0, Run),
            (NoneSkipped, 2, 1, 0, 1, Skip),
            (NoneSkipped, 2, 1, 0, 0, Wait),
            (Always, 2, 0, 0, 0, Run),
        ];
        for (rule, total, s, f, k, expected) in cases {
            assert_eq!(
                verdict(rule, counts(total, s, f, k)),
                expected,
                "{rule:?} with {total} upstream: {s} succeeded, {f} failed, {k} skipped"
            );
        }
    }

    #[test]
    fn a_decision_once_made_is_never_undone_by_more_upstream_ending() {
        // Monotone: from a decided state, any upstream ending in any way
        // keeps the same verdict, so deciding early cannot depend on the
        // order upstream tasks end in.
        let total = 3;
        for rule in TriggerRule::ALL {
            for s in 0..=total {
                for f in 0..=total - s {
                    for k in 0..=total - s - f {
                        let decided = verdict(rule, counts(total, s, f, k));
                        if decided == Wait || s + f + k == total {
                            continue;
                        }
                        for (ds, df, dk) in [(1, 0, 0), (0, 1, 0), (0, 0, 1)] {
                            let later = verdict(rule, counts(total, s + ds, f + df, k + dk));
                            assert_eq!(later, decided, "{rule:?} {s}/{f}/{k} then +{ds}/{df}/{dk}");
                        }
                    }
                }
            }
        }
    }
}
