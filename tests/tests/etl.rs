//! The shipped ETL example (`examples/etl.yaml`) on `baton dev`: the run
//! succeeds, no task starts before every one of its upstream tasks ended,
//! the files the tasks hand to each other hold the right data, and each
//! task's `$BATON_OUTPUT` JSON arrives as its `output_json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_tests::pb::{RunState, TaskState};
use baton_tests::{Sandbox, micros};
use serde_json::{Value, json};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Where the example writes (its `default_args.env.ETL_ROOT`).
const ETL_ROOT: &str = "/tmp/baton-etl";

/// Removes what the run wrote outside the test directory.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if baton_tests::dirs::keep_test_dirs() {
            return;
        }
        for path in &self.0 {
            let _ = std::fs::remove_dir_all(path);
            let _ = std::fs::remove_file(path);
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

fn output(json_text: &str, task_id: &str) -> Value {
    serde_json::from_str(json_text)
        .unwrap_or_else(|error| panic!("output of {task_id} `{json_text}` is not JSON: {error}"))
}

#[tokio::test]
async fn etl_example_runs_in_dependency_order_and_passes_its_data() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/etl.yaml");
    let spec = read(&example);
    let mut sandbox = Sandbox::new("etl");
    let _dev = sandbox.start_dev(&["--slots", "4"]).await;
    let mut api = sandbox.api().await;

    let registered = api.register(&spec).await;
    assert_eq!(registered.version, 1);
    let run = api.trigger("etl").await;
    let run_dir = Path::new(ETL_ROOT).join(&run.run_id);
    let warehouse_file = Path::new(ETL_ROOT)
        .join("warehouse")
        .join(format!("{}.csv", run.run_id));
    let _cleanup = RemoveOnDrop(vec![run_dir.clone(), warehouse_file.clone()]);

    let view = api.wait_for_run(&run.run_id, RUN_TIMEOUT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    for task in &view.tasks {
        assert_eq!(
            view.task_state(&task.task_id),
            TaskState::Success,
            "{}",
            view.describe()
        );
        assert_eq!(task.attempt, 1, "{} needed a retry", task.task_id);
    }

    // Dependency order: every task started after each upstream ended.
    let dag = api.get_dag("etl").await;
    let version = dag.version.expect("GetDag answers a version");
    let upstreams: HashMap<&str, &[String]> = version
        .tasks
        .iter()
        .map(|task| (task.task_id.as_str(), task.depends_on.as_slice()))
        .collect();
    assert_eq!(
        upstreams["transform"],
        ["extract_orders", "extract_customers"]
    );
    assert_eq!(upstreams["load"], ["validate"]);
    for task in &view.tasks {
        let started = micros(task.started_at.as_ref());
        assert!(started > 0, "{} has no start time", task.task_id);
        for upstream in upstreams[task.task_id.as_str()] {
            let ended = micros(view.task(upstream).ended_at.as_ref());
            assert!(ended > 0, "{upstream} has no end time");
            assert!(
                started >= ended,
                "{} started at {started} before its upstream {upstream} ended at {ended}",
                task.task_id
            );
        }
    }

    // The data the tasks handed to each other.
    assert_eq!(
        read(&run_dir.join("orders.csv")),
        "order_id,customer_id,amount\n1,10,25.50\n2,11,12.00\n3,10,7.25\n4,12,40.00\n"
    );
    assert_eq!(
        read(&run_dir.join("customers.csv")),
        "customer_id,name\n10,Ada\n11,Grace\n12,Edsger\n"
    );
    assert_eq!(
        read(&run_dir.join("totals.csv")),
        "name,total\nAda,32.75\nEdsger,40.00\nGrace,12.00\n"
    );
    let run_id = &run.run_id;
    assert_eq!(
        read(&warehouse_file),
        format!("{run_id},Ada,32.75\n{run_id},Edsger,40.00\n{run_id},Grace,12.00\n")
    );

    // Each task's $BATON_OUTPUT.
    let outputs: HashMap<&str, Value> = view
        .tasks
        .iter()
        .map(|task| {
            (
                task.task_id.as_str(),
                output(&task.output_json, &task.task_id),
            )
        })
        .collect();
    let file = |name: &str| run_dir.join(name).to_string_lossy().into_owned();
    assert_eq!(
        outputs["extract_orders"],
        json!({"rows": 4, "file": file("orders.csv")})
    );
    assert_eq!(
        outputs["extract_customers"],
        json!({"rows": 3, "file": file("customers.csv")})
    );
    assert_eq!(
        outputs["transform"],
        json!({"rows": 3, "file": file("totals.csv")})
    );
    assert_eq!(outputs["validate"], json!({"total": 84.75}));
    assert_eq!(outputs["load"], json!({"loaded": 3}));
}
