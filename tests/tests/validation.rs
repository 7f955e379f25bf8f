//! Bad input changes nothing: each invalid DAG document (a misspelt field,
//! a duplicate task id, an unknown dependency, a cycle, a bad id, no tasks,
//! more tasks or bytes than the controller's configured limits) is refused
//! by RegisterDag with INVALID_ARGUMENT naming the field and the problem,
//! nothing is stored, and `baton dag validate` refuses the same file offline
//! with the same text. A document with hundreds of problems gets the first
//! ones listed and a count of the rest, not a transport error. TriggerRun
//! refuses parameters that are not a JSON object, naming `params_json`, and
//! creates no run.

use std::time::Duration;

use baton_tests::pb::{GetDagRequest, ListRunsRequest, TriggerRunRequest};
use baton_tests::{Api, Sandbox};
use tonic::Code;

/// The controller's limits in these tests, and the same limits given to
/// `baton dag validate`.
const CONFIG: &str = "version = 1\n\n[limits]\nmax_tasks_per_dag = 5\nmax_spec_bytes = 2048\n";
const VALIDATE_LIMITS: [&str; 4] = ["--max-tasks", "5", "--max-spec-bytes", "2048"];

struct Case {
    name: &'static str,
    dag_id: &'static str,
    spec: String,
    /// Field path as `baton dag validate` prints it; the API prefixes it
    /// with `spec.` (the request field holding the document).
    field: &'static str,
    reason: String,
}

fn cases() -> Vec<Case> {
    let six_tasks: String = (0..6)
        .map(|n| format!("  - id: t{n}\n    kind: noop\n"))
        .collect();
    let big = format!(
        "id: big\ndescription: \"{}\"\ntasks:\n  - id: a\n    kind: noop\n",
        "x".repeat(2100)
    );
    let big_len = big.len();
    vec![
        Case {
            name: "misspelt field",
            dag_id: "typo",
            spec: "id: typo\ntasks:\n  - id: a\n    kind: noop\n    retires: 2\n".into(),
            field: "tasks[0].retires",
            reason: "unknown field; did you mean `retries`?".into(),
        },
        Case {
            name: "duplicate task id",
            dag_id: "dup",
            spec: "id: dup\ntasks:\n  - id: a\n    kind: noop\n  - id: a\n    kind: noop\n".into(),
            field: "tasks[1].id",
            reason: "duplicate task id `a`".into(),
        },
        Case {
            name: "unknown dependency",
            dag_id: "dep",
            spec: "id: dep\ntasks:\n  - id: a\n    kind: noop\n    depends_on: [nope]\n".into(),
            field: "tasks[0].depends_on[0]",
            reason: "unknown task `nope`".into(),
        },
        Case {
            name: "cycle",
            dag_id: "cycle",
            spec: "id: cycle\ntasks:\n  - id: a\n    kind: noop\n    depends_on: [b]\n  - id: b\n    kind: noop\n    depends_on: [c]\n  - id: c\n    kind: noop\n    depends_on: [a]\n".into(),
            field: "tasks[0].depends_on[0]",
            reason: "dependency cycle: a → b → c → a".into(),
        },
        Case {
            name: "bad dag id",
            dag_id: "bad id",
            spec: "id: \"bad id\"\ntasks:\n  - id: a\n    kind: noop\n".into(),
            field: "id",
            reason: "dag id `bad id` contains ' '".into(),
        },
        Case {
            name: "no tasks",
            dag_id: "empty",
            spec: "id: empty\ntasks: []\n".into(),
            field: "tasks",
            reason: "a DAG needs at least one task".into(),
        },
        Case {
            name: "more tasks than the limit",
            dag_id: "many",
            spec: format!("id: many\ntasks:\n{six_tasks}"),
            field: "tasks",
            reason: "the DAG has 6 tasks; the limit is 5".into(),
        },
        Case {
            name: "more bytes than the limit",
            dag_id: "big",
            spec: big,
            field: "",
            reason: format!("the document is {big_len} bytes; the limit is 2048 bytes"),
        },
    ]
}

async fn assert_nothing_stored(api: &mut Api, case: &Case) {
    let dags = api.list_dags().await;
    assert!(
        dags.is_empty(),
        "{}: an invalid DAG was stored: {dags:?}",
        case.name
    );
    let status = api
        .client
        .dags
        .get_dag(GetDagRequest {
            dag_id: case.dag_id.to_string(),
            version: 0,
        })
        .await
        .expect_err("GetDag of a refused DAG fails");
    // An id that is itself invalid may be refused before the lookup.
    let allowed: &[Code] = if case.dag_id.contains(' ') {
        &[Code::NotFound, Code::InvalidArgument]
    } else {
        &[Code::NotFound]
    };
    assert!(
        allowed.contains(&status.code()),
        "{}: GetDag answered {status}",
        case.name
    );
}

#[tokio::test]
async fn invalid_dags_are_refused_with_the_problem_named_and_nothing_stored() {
    let mut sandbox = Sandbox::new("validation");
    let config = sandbox.write_file("controller.toml", CONFIG);
    let _controller = sandbox
        .start_controller(&["--config", &config.to_string_lossy()])
        .await;
    let mut api = sandbox.api().await;

    let mut failures = Vec::new();
    for case in cases() {
        // The API.
        match api.try_register(&case.spec).await {
            Ok(response) => failures.push(format!(
                "{}: RegisterDag accepted it: {response:?}",
                case.name
            )),
            Err(status) => {
                let field = if case.field.is_empty() {
                    "spec".to_string()
                } else {
                    format!("spec.{}", case.field)
                };
                let expected = format!("{field}: {}", case.reason);
                if status.code() != Code::InvalidArgument || !status.message().contains(&expected) {
                    failures.push(format!(
                        "{}: expected INVALID_ARGUMENT with `{expected}`, got {:?}: {}",
                        case.name,
                        status.code(),
                        status.message()
                    ));
                }
            }
        }
        assert_nothing_stored(&mut api, &case).await;

        // The CLI, offline, with the same limits.
        let file = sandbox.write_file(
            &format!("{}.yaml", case.dag_id.replace(' ', "_")),
            &case.spec,
        );
        let mut args = vec!["dag", "validate"];
        args.extend(VALIDATE_LIMITS);
        let file = file.to_string_lossy().into_owned();
        args.push(&file);
        let output = sandbox.cli(&args).await;
        let expected = if case.field.is_empty() {
            case.reason.clone()
        } else {
            format!("{}: {}", case.field, case.reason)
        };
        if output.success() || !output.stderr.contains(&expected) {
            failures.push(format!(
                "{}: expected a failure printing `{expected}`, got {output}",
                case.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn hundreds_of_problems_are_listed_as_far_as_they_fit_and_counted() {
    let mut sandbox = Sandbox::new("many-problems");
    let _controller = sandbox.start_controller(&[]).await;
    let mut api = sandbox.api().await;
    let tasks: String = (0..400)
        .map(|n| format!("  - id: t{n}\n    kind: noop\n    depends_on: [missing-{n}]\n"))
        .collect();
    let spec = format!("id: many\ntasks:\n{tasks}");

    let status = api
        .try_register(&spec)
        .await
        .expect_err("400 unknown dependencies");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let message = status.message();
    assert!(
        message.starts_with("spec.tasks[0].depends_on[0]: unknown task `missing-0`"),
        "{message}"
    );
    // The validator lists 100 problems and counts the other 300; the
    // status lists those that fit, counts the rest, and keeps that count.
    let lines: Vec<&str> = message.lines().collect();
    let listed = lines.len() - 2;
    assert!(listed >= 20, "{listed} problems listed: {message}");
    assert_eq!(
        lines[listed],
        format!("… and {} more problems not listed", 100 - listed),
        "{message}"
    );
    assert_eq!(
        lines[listed + 1],
        "spec: 300 more problems not listed; fix the ones above and validate again",
        "{message}"
    );
    let dags = api.list_dags().await;
    assert!(dags.is_empty(), "nothing is stored: {dags:?}");
}

#[tokio::test]
async fn trigger_refuses_params_that_are_not_a_json_object() {
    let mut sandbox = Sandbox::new("params");
    let _controller = sandbox.start_controller(&[]).await;
    let mut api = sandbox.api().await;
    api.register("id: params\ntasks:\n  - id: a\n    kind: noop\n")
        .await;

    for params in ["[1, 2]", "\"text\"", "42", "{not json"] {
        let status = api
            .try_trigger(TriggerRunRequest {
                dag_id: "params".to_string(),
                params_json: params.to_string(),
                ..Default::default()
            })
            .await
            .expect_err("params that are not an object are refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{params}: {status}");
        assert!(
            status.message().contains("params_json"),
            "{params}: the error does not name params_json: {}",
            status.message()
        );
    }
    let runs = tokio::time::timeout(
        Duration::from_secs(10),
        api.client.runs.list_runs(ListRunsRequest::default()),
    )
    .await
    .expect("ListRuns in time")
    .expect("ListRuns")
    .into_inner()
    .runs;
    assert!(runs.is_empty(), "a refused trigger created runs: {runs:?}");
}
