//! `baton event`: emit events, which trigger the DAGs whose schedule listens
//! to them (`schedule: {events: [name]}`) with the payload as the runs'
//! params, and list them (`EventService`).

use baton_common::client::BatonClient;
use baton_common::pb::api::{EmitEventRequest, Event, GetRunRequest, ListEventsRequest};
use baton_common::states::run_state_name;
use clap::Subcommand;
use serde_json::{Map, Value, json};

use super::Context;
use super::params::{merge, parse_json_object, parse_param};
use crate::Outcome;
use crate::output::{params, print_json, print_line, run_state, table, time_json, time_text};

/// Runs looked up to show their DAG and state after an emit or an update.
const MAX_RUNS_DESCRIBED: usize = 100;
/// Characters of a payload shown in `event list`.
const PAYLOAD_PREVIEW_CHARS: usize = 60;

#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Emit an event: every DAG whose schedule lists its name gets a run,
    /// with the payload as the run's params.
    #[command(after_help = "Examples:
  baton event emit orders_ready --payload '{\"day\": \"2026-01-31\", \"region\": \"eu\"}'
  baton event emit orders_ready -p day=2026-01-31 -p region=eu --idempotency-key orders-2026-01-31")]
    Emit {
        /// The event's name: 1-200 of A-Za-z0-9 _ . : -, starting with a
        /// letter or digit.
        name: String,
        /// The payload, a JSON object (at most 64 KiB); it must fit the
        /// params of every DAG listening to the event, or nothing happens.
        #[arg(long, value_name = "JSON", value_parser = parse_json_object)]
        payload: Option<Map<String, Value>>,
        /// A payload field as key=value (set over --payload); the value is
        /// read as JSON when it is valid JSON, else as a string. Repeat for
        /// several.
        #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
        params: Vec<(String, Value)>,
        /// Emitting the same name with the same key again returns the first
        /// event and triggers nothing (at most 200 characters).
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// List events, newest first, with the runs each triggered.
    List {
        /// Only events of this name.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue from the token a previous page printed.
        #[arg(long)]
        page_token: Option<String>,
    },
}

pub async fn run(command: EventCommand, context: &Context) -> anyhow::Result<Outcome> {
    match command {
        EventCommand::Emit {
            name,
            payload,
            params,
            idempotency_key,
        } => {
            let payload_json = merge(payload, params);
            let mut client = context.client().await?;
            let response = client
                .events
                .emit_event(EmitEventRequest {
                    name,
                    payload_json,
                    idempotency_key: idempotency_key.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let event = response.event.unwrap_or_default();
            if context.json() {
                let mut value = event_json(&event);
                value["created"] = Value::Bool(response.created);
                print_json(&value);
                return Ok(Outcome::Success);
            }
            if response.created {
                print_line(format_args!(
                    "event {} `{}` emitted: {} run(s) triggered",
                    event.event_id,
                    event.name,
                    event.run_ids.len()
                ));
            } else {
                print_line(format_args!(
                    "event {} `{}` was already emitted with this idempotency key (at {}); nothing new was triggered",
                    event.event_id,
                    event.name,
                    time_text(event.emitted_at.as_ref())
                ));
            }
            if event.run_ids.is_empty() {
                if response.created {
                    print_line(format_args!(
                        "no DAG's schedule listens to `{}`",
                        event.name
                    ));
                }
            } else {
                print_runs(&mut client, &event.run_ids).await;
            }
            Ok(Outcome::Success)
        }
        EventCommand::List {
            name,
            limit,
            page_token,
        } => {
            let mut client = context.client().await?;
            let response = client
                .events
                .list_events(ListEventsRequest {
                    name: name.unwrap_or_default(),
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if context.json() {
                print_json(&json!({
                    "events": response.events.iter().map(event_json).collect::<Vec<_>>(),
                    "next_page_token": response.next_page_token,
                }));
            } else {
                let mut out = table(&["EVENT", "NAME", "EMITTED", "RUNS", "PAYLOAD"]);
                for event in &response.events {
                    out.add_row(vec![
                        event.event_id.clone(),
                        event.name.clone(),
                        time_text(event.emitted_at.as_ref()),
                        event.run_ids.len().to_string(),
                        preview(&event.payload_json, PAYLOAD_PREVIEW_CHARS),
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
            Ok(Outcome::Success)
        }
    }
}

pub fn event_json(event: &Event) -> Value {
    json!({
        "event_id": event.event_id,
        "name": event.name,
        "payload": if event.payload_json.is_empty() { json!({}) } else { params(&event.payload_json) },
        "emitted_at": time_json(event.emitted_at.as_ref()),
        "run_ids": event.run_ids,
    })
}

/// At most `max` characters of `text`, with `…` when cut.
fn preview(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A table of runs (id, DAG, state), read one by one: an emit or an asset
/// update triggers one run per listening DAG, a handful. A run that cannot
/// be read is shown with its id alone.
pub async fn print_runs(client: &mut BatonClient, run_ids: &[String]) {
    let mut out = table(&["RUN", "DAG", "STATE"]);
    for (index, run_id) in run_ids.iter().enumerate() {
        let run = if index < MAX_RUNS_DESCRIBED {
            client
                .runs
                .get_run(GetRunRequest {
                    run_id: run_id.clone(),
                    include_tasks: false,
                })
                .await
                .ok()
                .and_then(|response| response.into_inner().run)
        } else {
            None
        };
        out.add_row(match run {
            Some(run) => vec![
                run_id.clone(),
                run.dag_id.clone(),
                run_state_name(run_state(&run)).to_string(),
            ],
            None => vec![run_id.clone(), "-".into(), "-".into()],
        });
    }
    print_line(out);
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: EventCommand,
    }

    fn parse(args: &[&str]) -> Result<EventCommand, clap::Error> {
        let mut argv = vec!["event"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| cli.command)
    }

    #[test]
    fn the_payload_merges_params_over_the_json_object() {
        let EventCommand::Emit {
            name,
            payload,
            params,
            idempotency_key,
        } = parse(&[
            "emit",
            "orders_ready",
            "--payload",
            r#"{"day": "2026-01-31", "n": 1}"#,
            "-p",
            "n=2",
            "--idempotency-key",
            "k1",
        ])
        .unwrap()
        else {
            panic!("not an emit");
        };
        assert_eq!(name, "orders_ready");
        assert_eq!(idempotency_key.as_deref(), Some("k1"));
        assert_eq!(merge(payload, params), r#"{"day":"2026-01-31","n":2}"#);
    }

    #[test]
    fn a_payload_that_is_not_a_json_object_is_refused_naming_the_flag() {
        for payload in ["[1, 2]", "\"text\"", "{not json"] {
            let error = parse(&["emit", "x", "--payload", payload])
                .unwrap_err()
                .to_string();
            assert!(error.contains("--payload"), "{payload}: {error}");
        }
        let error = parse(&["emit", "x", "-p", "novalue"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--param"), "{error}");
        assert!(parse(&["emit"]).is_err());
    }

    #[test]
    fn payload_previews_are_cut_on_characters() {
        assert_eq!(preview("{}", 60), "{}");
        assert_eq!(preview("ééééé", 3), "éé…");
    }

    #[test]
    fn event_json_shows_the_payload_as_json() {
        let event = Event {
            event_id: "e1".into(),
            name: "x".into(),
            payload_json: r#"{"a": 1}"#.into(),
            ..Event::default()
        };
        let value = event_json(&event);
        assert_eq!(value["payload"], json!({"a": 1}));
        assert_eq!(value["emitted_at"], Value::Null);
    }
}
