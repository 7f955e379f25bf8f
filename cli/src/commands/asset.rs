//! `baton asset`: assets (datasets) that tasks update through their
//! `outputs` and data-aware schedules consume (`schedule: {assets: [uri]}`):
//! list them, show one with its producers, consumers and update history,
//! and record an update made outside Baton (`EventService`).

use baton_common::pb::api::{
    Asset, AssetUpdate, GetAssetRequest, ListAssetsRequest, RecordAssetUpdateRequest,
};
use clap::Subcommand;
use serde_json::{Value, json};

use super::Context;
use super::event::print_runs;
use crate::Outcome;
use crate::output::{print_json, print_line, table, text_or_null, time_json, time_text};

#[derive(Debug, Subcommand)]
pub enum AssetCommand {
    /// List known assets in URI order.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue from the token a previous page printed.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show an asset: the tasks that produce it, the DAGs that consume it,
    /// and its updates (newest first) with the runs each triggered.
    Show {
        uri: String,
        /// Updates to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Continue from the token a previous page printed.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Record an update of an asset made outside Baton (a load by another
    /// tool): the DAGs consuming it may run, as after a producing task.
    #[command(after_help = "Example:\n  baton asset touch s3://warehouse/orders")]
    Touch {
        /// The asset's URI (1-1000 characters, no whitespace).
        uri: String,
    },
}

pub async fn run(command: AssetCommand, context: &Context) -> anyhow::Result<Outcome> {
    let mut client = context.client().await?;
    match command {
        AssetCommand::List { limit, page_token } => {
            let response = client
                .events
                .list_assets(ListAssetsRequest {
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if context.json() {
                print_json(&json!({
                    "assets": response.assets.iter().map(asset_json).collect::<Vec<_>>(),
                    "next_page_token": response.next_page_token,
                }));
            } else {
                let mut out =
                    table(&["ASSET", "LAST UPDATED", "UPDATES", "PRODUCERS", "CONSUMERS"]);
                for asset in &response.assets {
                    out.add_row(vec![
                        asset.uri.clone(),
                        time_text(asset.last_updated_at.as_ref()),
                        asset.update_count.to_string(),
                        asset.producers.join(", "),
                        asset.consumers.join(", "),
                    ]);
                }
                print_line(out);
                if !response.next_page_token.is_empty() {
                    print_line(format_args!(
                        "more: --page-token {}",
                        response.next_page_token
                    ));
                }
            }
        }
        AssetCommand::Show {
            uri,
            limit,
            page_token,
        } => {
            let response = client
                .events
                .get_asset(GetAssetRequest {
                    uri,
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let asset = response.asset.unwrap_or_default();
            if context.json() {
                let mut value = asset_json(&asset);
                value["updates"] = response.updates.iter().map(update_json).collect();
                value["next_page_token"] = Value::String(response.next_page_token);
                print_json(&value);
            } else {
                print_line(format_args!(
                    "asset {}: {} update(s), last {}",
                    asset.uri,
                    asset.update_count,
                    time_text(asset.last_updated_at.as_ref())
                ));
                print_line(format_args!(
                    "produced by: {}",
                    list_or_none(&asset.producers)
                ));
                print_line(format_args!(
                    "consumed by: {}",
                    list_or_none(&asset.consumers)
                ));
                if !response.updates.is_empty() {
                    let mut out = table(&["UPDATED", "BY", "RUN", "TRIGGERED RUNS"]);
                    for update in &response.updates {
                        out.add_row(vec![
                            time_text(update.updated_at.as_ref()),
                            update_source(update),
                            if update.run_id.is_empty() {
                                "-".into()
                            } else {
                                update.run_id.clone()
                            },
                            update.triggered_run_ids.join("\n"),
                        ]);
                    }
                    print_line(out);
                }
                if !response.next_page_token.is_empty() {
                    print_line(format_args!(
                        "older updates: --page-token {}",
                        response.next_page_token
                    ));
                }
            }
        }
        AssetCommand::Touch { uri } => {
            let update = client
                .events
                .record_asset_update(RecordAssetUpdateRequest { uri })
                .await?
                .into_inner()
                .update
                .unwrap_or_default();
            if context.json() {
                print_json(&update_json(&update));
            } else {
                print_line(format_args!(
                    "asset {} updated at {}: {} run(s) triggered",
                    update.uri,
                    time_text(update.updated_at.as_ref()),
                    update.triggered_run_ids.len()
                ));
                if !update.triggered_run_ids.is_empty() {
                    print_runs(&mut client, &update.triggered_run_ids).await;
                }
            }
        }
    }
    Ok(Outcome::Success)
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// `etl.load` for a task's update, `outside baton` for a recorded one.
fn update_source(update: &AssetUpdate) -> String {
    if update.dag_id.is_empty() {
        "outside baton".into()
    } else if update.task_id.is_empty() {
        update.dag_id.clone()
    } else {
        format!("{}.{}", update.dag_id, update.task_id)
    }
}

fn asset_json(asset: &Asset) -> Value {
    json!({
        "uri": asset.uri,
        "last_updated_at": time_json(asset.last_updated_at.as_ref()),
        "update_count": asset.update_count,
        "producers": asset.producers,
        "consumers": asset.consumers,
    })
}

fn update_json(update: &AssetUpdate) -> Value {
    json!({
        "uri": update.uri,
        "updated_at": time_json(update.updated_at.as_ref()),
        "dag_id": text_or_null(&update.dag_id),
        "run_id": text_or_null(&update.run_id),
        "task_id": text_or_null(&update.task_id),
        "triggered_run_ids": update.triggered_run_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_name_their_source() {
        let external = AssetUpdate {
            uri: "s3://b/o".into(),
            ..AssetUpdate::default()
        };
        assert_eq!(update_source(&external), "outside baton");
        assert_eq!(update_json(&external)["dag_id"], Value::Null);
        let by_task = AssetUpdate {
            dag_id: "etl".into(),
            run_id: "r1".into(),
            task_id: "load".into(),
            ..external
        };
        assert_eq!(update_source(&by_task), "etl.load");
        assert_eq!(update_json(&by_task)["task_id"], "load");
    }
}
