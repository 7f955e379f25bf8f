//! `baton pool`: create, resize, describe, list and delete pools (named
//! global concurrency limits that tasks name with `pool:`).

use baton_common::pb::api::{
    CreatePoolRequest, DeletePoolRequest, GetPoolRequest, ListPoolsRequest, PoolInfo,
    UpdatePoolRequest,
};
use clap::Subcommand;
use serde_json::{Value, json};

use super::Context;
use crate::Outcome;
use crate::output::{print_json, print_line, table, time_text};

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a pool with a number of slots.
    Create {
        name: String,
        /// How many slots its tasks may take at once (0 holds them all back).
        #[arg(long)]
        slots: u32,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Resize a pool and/or change its description; applies at once.
    Set {
        name: String,
        #[arg(long)]
        slots: Option<u32>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Show one pool with its use.
    Show { name: String },
    /// List pools with their use.
    List,
    /// Delete a pool no task is using or waiting for.
    Delete { name: String },
}

fn pool_json(pool: &PoolInfo) -> Value {
    json!({
        "name": pool.name,
        "slots": pool.slots,
        "used_slots": pool.used_slots,
        "queued": pool.queued,
        "description": pool.description,
        "created_at": time_text(pool.created_at.as_ref()),
        "updated_at": time_text(pool.updated_at.as_ref()),
    })
}

fn print_pools(context: &Context, pools: &[PoolInfo]) {
    if context.json() {
        print_json(&Value::Array(pools.iter().map(pool_json).collect()));
        return;
    }
    let mut rows = table(&["POOL", "SLOTS", "USED", "QUEUED", "DESCRIPTION"]);
    for pool in pools {
        rows.add_row(vec![
            pool.name.clone(),
            pool.slots.to_string(),
            pool.used_slots.to_string(),
            pool.queued.to_string(),
            pool.description.clone(),
        ]);
    }
    print_line(rows);
}

fn print_pool(context: &Context, pool: Option<PoolInfo>) {
    match pool {
        Some(pool) if context.json() => print_json(&pool_json(&pool)),
        Some(pool) => print_pools(context, &[pool]),
        None => {}
    }
}

pub async fn run(command: PoolCommand, context: &Context) -> anyhow::Result<Outcome> {
    let mut client = context.client().await?;
    match command {
        PoolCommand::Create {
            name,
            slots,
            description,
        } => {
            let pool = client
                .pools
                .create_pool(CreatePoolRequest {
                    name,
                    slots,
                    description,
                })
                .await?
                .into_inner()
                .pool;
            print_pool(context, pool);
        }
        PoolCommand::Set {
            name,
            slots,
            description,
        } => {
            let pool = client
                .pools
                .update_pool(UpdatePoolRequest {
                    name,
                    slots,
                    description,
                })
                .await?
                .into_inner()
                .pool;
            print_pool(context, pool);
        }
        PoolCommand::Show { name } => {
            let pool = client
                .pools
                .get_pool(GetPoolRequest { name })
                .await?
                .into_inner()
                .pool;
            print_pool(context, pool);
        }
        PoolCommand::List => {
            let pools = client
                .pools
                .list_pools(ListPoolsRequest {})
                .await?
                .into_inner()
                .pools;
            print_pools(context, &pools);
        }
        PoolCommand::Delete { name } => {
            client
                .pools
                .delete_pool(DeletePoolRequest { name: name.clone() })
                .await?;
            if context.json() {
                print_json(&json!({"deleted": name}));
            } else {
                print_line(format_args!("pool {name} deleted"));
            }
        }
    }
    Ok(Outcome::Success)
}
