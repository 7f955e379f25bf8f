//! Where a scenario's runs go: one `baton dev` process (the embedded
//! store), or a cluster of controllers and workers on etcd. The scenarios
//! that run on both (`command`, `etl-runs`, `mixed`, `scale`, `map` and
//! their `cluster-` variants, and `cluster-memory`) are written against
//! [`Target`].

use std::path::Path;
use std::time::Duration;

use baton_common::client::BatonClient;

use crate::cluster::{Cluster, DEFAULT_TTL, OnCluster, WORKERS};
use crate::procs::{Alive, Proc, Settled, quiet_cpu, settle, settle_above, start_dev};
use crate::reference::{compare, compare_cluster};
use crate::report::{Report, number};

enum Deployment {
    Dev(Proc),
    Cluster {
        cluster: Cluster,
        /// CPU the leader uses over a quiet window with nothing to do.
        floor: Duration,
        etcd_members: usize,
    },
}

/// A running deployment and a client of it (calls reach the leader).
pub struct Target {
    pub client: BatonClient,
    deployment: Deployment,
}

impl Target {
    /// One `baton dev --slots slots`.
    pub async fn dev(binary: &Path, work: &Path, name: &str, slots: u32) -> anyhow::Result<Self> {
        let (process, client) = start_dev(binary, work, name, slots).await?;
        Ok(Self {
            client,
            deployment: Deployment::Dev(process),
        })
    }

    /// `on.controllers` controllers on `on.etcd` (keys under
    /// `/bench-<name>`, the default lease TTL) and [`WORKERS`] workers of
    /// `on.slots` slots.
    pub async fn cluster(on: OnCluster<'_>, name: &str) -> anyhow::Result<Self> {
        let mut cluster = Cluster::start(
            on.binary,
            &on.work.join(name),
            on.etcd,
            &format!("/bench-{name}"),
            DEFAULT_TTL,
            on.controllers,
            WORKERS,
            on.slots,
        )
        .await?;
        let status = cluster.wait_whole().await?;
        let leader = cluster.index_of(&status.leader_id)?;
        // A controller of a cluster is never quite idle (leases, leader
        // tracking): what it uses with nothing to do is the floor of "idle".
        let floor = quiet_cpu(cluster.process_of(leader)?.pid()).await?;
        Ok(Self {
            client: cluster.client.clone(),
            deployment: Deployment::Cluster {
                cluster,
                floor,
                etcd_members: on.etcd.members.len(),
            },
        })
    }

    /// What it is, for headings and notes.
    pub fn describe(&self, slots: u32) -> String {
        match &self.deployment {
            Deployment::Dev(_) => format!("baton dev --slots {slots}"),
            Deployment::Cluster {
                cluster,
                etcd_members,
                ..
            } => format!(
                "etcd {etcd_members} members, {} controllers, {WORKERS} workers × --slots {slots}",
                cluster.controllers.len()
            ),
        }
    }

    /// Whether it runs on etcd (its figures are compared with the etcd
    /// cluster's).
    pub fn is_cluster(&self) -> bool {
        matches!(self.deployment, Deployment::Cluster { .. })
    }

    /// `what` (a rate when `is_rate`, else a latency) beside the reference
    /// of its store measured in the same invocation.
    pub fn compare(&self, report: &Report, what: &str, value: f64, is_rate: bool) -> Vec<String> {
        if self.is_cluster() {
            compare_cluster(report, what, value, is_rate)
        } else {
            compare(report, what, value, is_rate)
        }
    }

    /// Adds the comparison of the median rate `key` of `scenario` (in
    /// `unit`/s) with the references to the report.
    pub fn compare_median(&self, report: &mut Report, scenario: &str, key: &str, unit: &str) {
        if let Some(rate) = report.median(scenario, key) {
            let what = format!("{scenario} {} {unit}/s", number(rate));
            let lines = self.compare(report, &what, rate, true);
            report.comparisons.extend(lines);
        }
    }

    /// The `baton dev` process, whose memory a scenario may report.
    pub fn dev_pid(&self) -> Option<u32> {
        match &self.deployment {
            Deployment::Dev(process) => Some(process.pid()),
            Deployment::Cluster { .. } => None,
        }
    }

    /// The PIDs of its controllers, the one that schedules (the dev process,
    /// or the leader) first.
    pub async fn controller_pids(&mut self) -> anyhow::Result<Vec<u32>> {
        match &mut self.deployment {
            Deployment::Dev(process) => Ok(vec![process.pid()]),
            Deployment::Cluster { cluster, .. } => {
                let status = cluster.wait_whole().await?;
                let leader = cluster.index_of(&status.leader_id)?;
                let mut pids = vec![cluster.process_of(leader)?.pid()];
                pids.extend(
                    cluster
                        .controllers
                        .iter()
                        .enumerate()
                        .filter(|(index, _)| *index != leader)
                        .filter_map(|(_, controller)| controller.process.as_ref())
                        .map(Proc::pid),
                );
                Ok(pids)
            }
        }
    }

    /// Waits until it is idle again: the dev process, or the leader of a
    /// whole cluster down to its floor.
    pub async fn settle(&mut self) -> anyhow::Result<Settled> {
        match &mut self.deployment {
            Deployment::Dev(process) => settle(process.pid()).await,
            Deployment::Cluster { cluster, floor, .. } => {
                let status = cluster.wait_whole().await?;
                let leader = cluster.index_of(&status.leader_id)?;
                settle_above(cluster.process_of(leader)?.pid(), *floor).await
            }
        }
    }

    /// Stops every process it started.
    pub async fn stop(&mut self) {
        match &mut self.deployment {
            Deployment::Dev(process) => {
                process.stop().await;
            }
            Deployment::Cluster { cluster, .. } => cluster.stop().await,
        }
    }
}

impl Alive for Target {
    fn check_alive(&mut self) -> anyhow::Result<()> {
        match &mut self.deployment {
            Deployment::Dev(process) => process.check_alive(),
            Deployment::Cluster { cluster, .. } => cluster.check_alive(),
        }
    }
}
