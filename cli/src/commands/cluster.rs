//! `baton cluster status`: the leader, every controller, every worker with
//! its free slots, and the depth of each queue.

use baton_common::pb::api::{GetClusterStatusRequest, GetClusterStatusResponse};
use baton_common::time::duration_from_proto;
use clap::Subcommand;
use serde_json::json;

use super::Context;
use crate::Outcome;
use crate::output::{print_json, print_line, table, time_text};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the leader, controllers, workers and queues.
    Status,
}

pub async fn run(command: ClusterCommand, context: &Context) -> anyhow::Result<Outcome> {
    match command {
        ClusterCommand::Status => {
            let mut client = context.client().await?;
            let status = client
                .cluster
                .get_cluster_status(GetClusterStatusRequest {})
                .await?
                .into_inner();
            if context.json() {
                print_json(&json!({
                    "store": status.store,
                    "leader": {
                        "controller_id": status.leader_id,
                        "address": status.leader_address,
                        "term": status.leader_term,
                        "since": time_text(status.leader_since.as_ref()),
                    },
                    "controllers": status.controllers.iter().map(|c| json!({
                        "controller_id": c.controller_id,
                        "address": c.address,
                        "leader": c.leader,
                        "started_at": time_text(c.started_at.as_ref()),
                    })).collect::<Vec<_>>(),
                    "workers": status.workers.iter().map(|w| json!({
                        "worker_id": w.worker_id,
                        "hostname": w.hostname,
                        "queues": w.queues,
                        "labels": w.labels,
                        "slots": w.slots,
                        "free_slots": w.free_slots,
                        "running": w.running,
                        "connected": w.connected,
                        "draining": w.draining,
                        "version": w.version,
                        "handlers": w.handlers,
                        "cpu_millis": w.resources.map(|r| r.cpu_millis),
                        "memory_bytes": w.resources.map(|r| r.memory_bytes),
                        "free_cpu_millis": w.free_resources.map(|r| r.cpu_millis),
                        "free_memory_bytes": w.free_resources.map(|r| r.memory_bytes),
                    })).collect::<Vec<_>>(),
                    "queues": status.queues.iter().map(|q| json!({
                        "queue": q.queue,
                        "ready": q.ready,
                        "limited": q.limited,
                        "running": q.running,
                        "oldest_ready_age_seconds": q.oldest_ready_age.as_ref().map_or(0.0, |age| duration_from_proto(age).as_secs_f64()),
                        "workers": q.workers,
                        "free_slots": q.free_slots,
                    })).collect::<Vec<_>>(),
                    "pools": status.pools.iter().map(|p| json!({
                        "name": p.name,
                        "slots": p.slots,
                        "used_slots": p.used_slots,
                        "queued": p.queued,
                    })).collect::<Vec<_>>(),
                    "active_runs": status.active_runs,
                }));
                return Ok(Outcome::Success);
            }
            print_line(status_text(&status).trim_end());
            Ok(Outcome::Success)
        }
    }
}

/// The cluster's status as `cluster status` prints it (and `top` shows it).
pub fn status_text(status: &GetClusterStatusResponse) -> String {
    let mut text = format!(
        "leader: {} at {} (term {}, since {}); store: {}; active runs: {}\n",
        status.leader_id,
        status.leader_address,
        status.leader_term,
        time_text(status.leader_since.as_ref()),
        status.store,
        status.active_runs
    );
    let mut controllers = table(&["CONTROLLER", "ADDRESS", "ROLE", "STARTED"]);
    for controller in &status.controllers {
        controllers.add_row(vec![
            controller.controller_id.clone(),
            controller.address.clone(),
            if controller.leader {
                "leader".into()
            } else {
                "follower".into()
            },
            time_text(controller.started_at.as_ref()),
        ]);
    }
    text.push_str(&format!("{controllers}\n"));
    let mut workers = table(&[
        "WORKER", "HOST", "QUEUES", "SLOTS", "FREE", "RUNNING", "STATE",
    ]);
    for worker in &status.workers {
        let state = match (worker.connected, worker.draining) {
            (false, _) => "disconnected",
            (true, true) => "draining",
            (true, false) => "connected",
        };
        workers.add_row(vec![
            worker.worker_id.clone(),
            worker.hostname.clone(),
            worker.queues.join(","),
            worker.slots.to_string(),
            worker.free_slots.to_string(),
            worker.running.to_string(),
            state.to_string(),
        ]);
    }
    text.push_str(&format!("{workers}\n"));
    let mut queues = table(&[
        "QUEUE",
        "READY",
        "LIMITED",
        "OLDEST READY",
        "RUNNING",
        "WORKERS",
        "FREE SLOTS",
    ]);
    for queue in &status.queues {
        let oldest = queue
            .oldest_ready_age
            .as_ref()
            .map(duration_from_proto)
            .map_or_else(
                || "-".to_string(),
                |age| format!("{:.1}s", age.as_secs_f64()),
            );
        queues.add_row(vec![
            queue.queue.clone(),
            queue.ready.to_string(),
            queue.limited.to_string(),
            oldest,
            queue.running.to_string(),
            queue.workers.to_string(),
            queue.free_slots.to_string(),
        ]);
    }
    text.push_str(&format!("{queues}\n"));
    if !status.pools.is_empty() {
        let mut pools = table(&["POOL", "SLOTS", "USED", "QUEUED"]);
        for pool in &status.pools {
            pools.add_row(vec![
                pool.name.clone(),
                pool.slots.to_string(),
                pool.used_slots.to_string(),
                pool.queued.to_string(),
            ]);
        }
        text.push_str(&format!("{pools}\n"));
    }
    text
}
