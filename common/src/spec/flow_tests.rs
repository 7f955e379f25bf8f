//! Tests of what DAG files say about dependency semantics, through
//! `parse_dag`: trigger rules, branches, `run_if` and `map_over`.

use super::*;

fn parse(text: &str) -> Result<ValidatedDag, SpecErrors> {
    parse_dag(text, SpecFormat::Detect, &SpecLimits::default())
}

fn valid(text: &str) -> ValidatedDag {
    match parse(text) {
        Ok(dag) => dag,
        Err(errors) => panic!("expected a valid document, got:\n{errors}"),
    }
}

fn violations(text: &str) -> Vec<FieldViolation> {
    match parse(text) {
        Ok(dag) => panic!(
            "expected violations, got a valid DAG: {}",
            dag.canonical_json
        ),
        Err(errors) => errors.0,
    }
}

/// The only violation of `text`, as `path: reason`.
fn only_violation(text: &str) -> String {
    let found = violations(text);
    assert_eq!(found.len(), 1, "{text}\n{}", SpecErrors(found.clone()));
    found[0].to_string()
}

fn task<'a>(dag: &'a ValidatedDag, id: &str) -> &'a ResolvedTask {
    dag.tasks
        .iter()
        .find(|task| task.id.as_str() == id)
        .unwrap_or_else(|| panic!("no task {id}"))
}

const FLOW: &str = r#"
id: flow
params:
  full: {type: boolean, default: false}
  items: [a, b]
tasks:
  - id: count
    command: 'echo "{\"rows\": 3}" > "$BATON_OUTPUT"'
  - id: list
    command: [list-files]
  - id: cleanup
    trigger_rule: one_failed
    depends_on: [count, list]
    command: [cleanup]
  - id: pick
    kind: branch
    command: 'echo "[\"weekday\"]" > "$BATON_OUTPUT"'
  - id: weekday
    depends_on: pick
    kind: noop
  - id: weekend
    depends_on: pick
    kind: noop
  - id: choose
    branch: true
    kind: custom
    handler: ml.pick
  - id: model-a
    depends_on: choose
    kind: noop
  - id: maybe
    depends_on: count
    run_if: "params.full and tasks.count.output.rows > 0"
    command: [maybe]
  - id: per-file
    depends_on: list
    map_over: "tasks.list.output.files"
    max_map_length: 500
    command: [process, "{{ item }}", "--index", "{{ map_index }}"]
    env: {FILE: "{{ item.path | default(item) }}"}
  - id: per-param
    map_over: params.items
    kind: sensor
    sensor: {file: "/data/{{ item }}/_SUCCESS"}
  - id: literal
    map_over: "[1, 2, 3]"
    kind: noop
  - id: total
    depends_on: per-file
    trigger_rule: none_failed_min_one_success
    command: ["echo", "{{ tasks['per-file'].output | sum }}", "{{ tasks['per-file'].output[0].rows }}"]
"#;

#[test]
fn flow_fields_resolve() {
    let dag = valid(FLOW);
    assert_eq!(task(&dag, "count").trigger_rule, TriggerRule::AllSuccess);
    assert!(!task(&dag, "count").branch);
    assert_eq!(task(&dag, "count").run_if, None);
    assert_eq!(task(&dag, "count").map_over, None);
    assert_eq!(task(&dag, "cleanup").trigger_rule, TriggerRule::OneFailed);

    let pick = task(&dag, "pick");
    assert!(pick.branch);
    assert!(
        matches!(&pick.kind, TaskKind::Command(command) if command.argv[0] == "sh"),
        "kind: branch runs as a command: {:?}",
        pick.kind
    );
    let choose = task(&dag, "choose");
    assert!(choose.branch);
    assert!(matches!(choose.kind, TaskKind::Custom(_)));

    assert_eq!(
        task(&dag, "maybe").run_if.as_deref(),
        Some("params.full and tasks.count.output.rows > 0")
    );
    let per_file = task(&dag, "per-file");
    assert_eq!(
        per_file.map_over,
        Some(MapOver {
            expression: "tasks.list.output.files".to_string(),
            max_length: 500,
        })
    );
    assert!(per_file.templated);
    assert_eq!(
        task(&dag, "per-param").map_over,
        Some(MapOver {
            expression: "params.items".to_string(),
            max_length: DEFAULT_MAX_MAP_LENGTH,
        })
    );
    assert_eq!(
        task(&dag, "total").trigger_rule,
        TriggerRule::NoneFailedMinOneSuccess
    );
}

#[test]
fn the_canonical_form_keeps_what_was_written() {
    let dag = valid(FLOW);
    assert!(
        dag.canonical_json
            .contains(r#""id":"pick","kind":"branch""#),
        "{}",
        dag.canonical_json
    );
    assert!(
        dag.canonical_json
            .contains(r#""id":"choose","kind":"custom","branch":true"#),
        "{}",
        dag.canonical_json
    );
    assert!(
        dag.canonical_json.contains(
            r#""depends_on":["list"],"map_over":"tasks.list.output.files","max_map_length":500"#
        ),
        "{}",
        dag.canonical_json
    );
    let again = parse_dag(
        &dag.canonical_json,
        SpecFormat::Json,
        &SpecLimits::default(),
    )
    .expect("the canonical form parses");
    assert_eq!(again, dag);

    // `kind: branch` and `branch: true` resolve alike, but are different
    // documents.
    let written_as_kind = valid(
        "id: x\ntasks:\n  - {id: a, kind: branch, command: [pick]}\n  - {id: b, depends_on: a, kind: noop}\n",
    );
    let written_as_flag = valid(
        "id: x\ntasks:\n  - {id: a, branch: true, command: [pick]}\n  - {id: b, depends_on: a, kind: noop}\n",
    );
    assert_eq!(written_as_kind.tasks, written_as_flag.tasks);
    assert_ne!(written_as_kind.digest, written_as_flag.digest);
}

#[test]
fn default_args_give_the_trigger_rule() {
    let dag = valid(
        "id: x\ndefault_args: {trigger_rule: all_done}\ntasks:\n  - {id: a, command: \"true\"}\n  - {id: b, depends_on: a, command: \"true\", trigger_rule: always}\n",
    );
    assert_eq!(dag.tasks[0].trigger_rule, TriggerRule::AllDone);
    assert_eq!(dag.tasks[1].trigger_rule, TriggerRule::Always);
    assert!(
        dag.canonical_json
            .contains(r#""default_args":{"trigger_rule":"all_done"}"#),
        "{}",
        dag.canonical_json
    );
    for rule in TriggerRule::ALL {
        let dag = valid(&format!(
            "id: x\ntasks:\n  - {{id: a, command: \"true\"}}\n  - {{id: b, depends_on: a, command: \"true\", trigger_rule: {}}}\n",
            rule.name()
        ));
        assert_eq!(dag.tasks[1].trigger_rule, rule);
    }
}

#[test]
fn unknown_trigger_rules_get_a_suggestion() {
    let errors = violations(
        "id: x\ndefault_args: {trigger_rule: all_sucess}\ntasks:\n  - {id: a, command: \"true\", trigger_rule: one_faild}\n  - {id: b, command: \"true\", trigger_rule: whenever}\n",
    );
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "default_args.trigger_rule: unknown trigger rule `all_sucess`; did you mean `all_success`?",
            "tasks[0].trigger_rule: unknown trigger rule `one_faild`; did you mean `one_failed`?",
            "tasks[1].trigger_rule: unknown trigger rule `whenever`; the rules are all_success, all_failed, all_done, all_skipped, one_success, one_failed, one_done, none_failed, none_failed_min_one_success, none_skipped, always",
        ]
    );
    assert_eq!(
        only_violation("id: x\ntasks:\n  - {id: a, command: \"true\", trigger_rule: 3}\n"),
        "tasks[0].trigger_rule: invalid type: integer `3`, expected a string"
    );
}

#[test]
fn branches_need_a_command_or_custom_task_with_a_downstream_task() {
    assert_eq!(
        only_violation("id: x\ntasks:\n  - {id: a, kind: branch, command: [pick]}\n"),
        "tasks[0].kind: a branch chooses which of its downstream tasks run, and no task depends on `a`; add it to the `depends_on` of the tasks it chooses among"
    );
    assert_eq!(
        only_violation(
            "id: x\ntasks:\n  - {id: a, branch: true, command: [pick]}\n  - {id: b, command: \"true\"}\n"
        ),
        "tasks[0].branch: a branch chooses which of its downstream tasks run, and no task depends on `a`; add it to the `depends_on` of the tasks it chooses among"
    );
    assert_eq!(
        only_violation(
            "id: x\ntasks:\n  - {id: a, branch: true, kind: noop}\n  - {id: b, depends_on: a, command: \"true\"}\n"
        ),
        "tasks[0].branch: only command and custom tasks can branch: a branch's output names the downstream tasks that run; this one is `kind: noop`"
    );
    assert_eq!(
        only_violation(
            "id: x\ntasks:\n  - {id: a, kind: branch}\n  - {id: b, depends_on: a, command: \"true\"}\n"
        ),
        "tasks[0].command: missing; a branch task needs a `command` that writes the ids of the downstream tasks to run to $BATON_OUTPUT"
    );
    assert_eq!(
        only_violation(
            "id: x\ntasks:\n  - {id: a, kind: branch, branch: false, command: [pick]}\n  - {id: b, depends_on: a, command: \"true\"}\n"
        ),
        "tasks[0].branch: `kind: branch` makes the task a branch; remove `branch: false` or write `kind: command`"
    );
    assert_eq!(
        only_violation(
            "id: x\ntasks:\n  - {id: a, kind: branch, command: [pick], handler: h}\n  - {id: b, depends_on: a, command: \"true\"}\n"
        ),
        "tasks[0].handler: only custom tasks take `handler` (this one is `kind: branch`); add `kind: custom`"
    );
    // `branch: false` is a plain task, with or without downstream tasks.
    valid("id: x\ntasks:\n  - {id: a, branch: false, command: [pick]}\n");
    // `kind: branch` takes what a command task takes.
    valid(
        "id: x\ntasks:\n  - {id: a, kind: branch, command: [pick, \"{{ ds }}\"], env: {A: b}, cwd: /tmp}\n  - {id: b, depends_on: a, kind: noop}\n",
    );
}

#[test]
fn mapped_tasks_are_checked() {
    assert_eq!(
        only_violation(
            "id: x\ntasks:\n  - {id: a, kind: branch, map_over: \"[1]\", command: [pick]}\n  - {id: b, depends_on: a, kind: noop}\n"
        ),
        "tasks[0].map_over: a branch cannot be mapped: its one output names the downstream tasks that run; map a task below it instead"
    );
    assert_eq!(
        only_violation(
            "id: x\ntasks:\n  - {id: a, kind: sensor, sensor: {time: \"06:00\"}, map_over: \"[1]\"}\n"
        ),
        "tasks[0].map_over: a `time` sensor is evaluated by the controller and cannot be mapped; map a `file` or `http` sensor, or a command"
    );
    assert_eq!(
        only_violation(
            "id: x\ntasks:\n  - {id: a, kind: sensor, sensor: {external_task: {dag: other}}, map_over: \"[1]\"}\n"
        ),
        "tasks[0].map_over: a `external_task` sensor is evaluated by the controller and cannot be mapped; map a `file` or `http` sensor, or a command"
    );
    assert_eq!(
        only_violation("id: x\ntasks:\n  - {id: a, command: \"true\", max_map_length: 5}\n"),
        "tasks[0].max_map_length: max_map_length needs `map_over`: it caps the list a mapped task expands over"
    );
    for length in [0, 100_001] {
        assert_eq!(
            only_violation(&format!(
                "id: x\ntasks:\n  - {{id: a, command: \"true\", map_over: \"[1]\", max_map_length: {length}}}\n"
            )),
            format!(
                "tasks[0].max_map_length: max_map_length is {length}; it must be from 1 to 100000"
            )
        );
    }
    assert_eq!(
        only_violation(
            "id: x\ntasks:\n  - {id: a, command: \"true\", map_over: [1, 2], max_map_length: 2}\n"
        ),
        "tasks[0].map_over: invalid type: sequence, expected an expression in a string, such as \"tasks.list.output.files\", \"params.items\" or \"[1, 2, 3]\""
    );
}

#[test]
fn expressions_are_checked_like_templates() {
    let errors = violations(
        r#"
id: x
params:
  full: {type: boolean, default: false}
tasks:
  - id: count
    command: "true"
  - id: other
    command: "true"
  - id: a
    depends_on: count
    command: "true"
    run_if: "params.ful and tasks.count.output.rows > 0 and tasks.other.output and tasks.cuont.output"
  - id: b
    command: "true"
    run_if: "attempt > 1 or item or lds"
  - id: c
    command: "true"
    map_over: "range(map_index) | list"
  - id: d
    command: "true"
    run_if: "   "
    map_over: "{{ params.items }}"
  - id: e
    command: "true"
    run_if: "params.full >"
"#,
    );
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "tasks[5].run_if: run_if must not be empty; leave it out to run the task whenever its trigger rule lets it",
            "tasks[5].map_over: map_over is an expression, written without `{{ }}`: `map_over: \"params.items\"`",
            "tasks[2].run_if: the expression reads `params.ful`, which the DAG does not declare; did you mean `full`?",
            "tasks[2].run_if: the expression reads the output of `cuont`, which is not a task of this DAG; did you mean `count`?",
            "tasks[2].run_if: the expression reads the output of `other`, which is not upstream of `a`",
            "tasks[3].run_if: the expression reads `attempt`, which it cannot: it is evaluated before the task's first attempt",
            "tasks[3].run_if: the expression reads `item`, which it cannot: run_if is evaluated once for the whole task, before it is expanded",
            "tasks[3].run_if: the expression reads `lds`, which is not a variable expressions can read; did you mean `ds`?",
            "tasks[4].map_over: the expression reads `map_index`, which it cannot: map_over gives the list whose elements are `item`",
            "tasks[6].run_if: invalid expression: unexpected end of input, expected expression (line 1)",
        ]
    );
    assert_eq!(
        only_violation("id: x\ntasks:\n  - {id: a, command: \"true\", run_if: false}\n"),
        "tasks[0].run_if: invalid type: boolean `false`, expected an expression in a string, such as \"params.full\" or \"tasks.count.output.rows > 0\""
    );
}

#[test]
fn item_and_map_index_only_in_mapped_tasks() {
    let errors = violations(
        r#"
id: x
default_args:
  env: {ITEM: "{{ item }}"}
tasks:
  - id: a
    command: [echo, "{{ item }}"]
    cwd: "/data/{{ map_index }}"
  - id: b
    command: [echo, "{{ map_index }}"]
    map_over: "[1, 2]"
  - id: c
    command: "true"
  - id: d
    command: "true"
"#,
    );
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "tasks[0].command[1]: the template reads `item`, which only tasks with `map_over` have",
            "tasks[0].cwd: the template reads `map_index`, which only tasks with `map_over` have",
            "default_args.env.ITEM: the template reads `item`, which only tasks with `map_over` have, and `a` inherits this value without one",
        ]
    );
    valid(
        "id: x\ndefault_args:\n  env: {ITEM: \"{{ item }}\"}\ntasks:\n  - {id: a, map_over: \"[1]\", command: [echo, \"{{ item }} {{ map_index }}\"]}\n  - {id: b, kind: noop}\n",
    );
    assert_eq!(
        only_violation(
            "id: x\ntasks:\n  - {id: a, map_over: \"[1]\", command: [echo, \"{{ iten }}\"]}\n"
        ),
        "tasks[0].command[1]: the template reads `iten`, which is not a template variable; did you mean `item`?"
    );
}

#[test]
fn unknown_fields_suggest_the_flow_fields() {
    let errors = violations(
        "id: x\ndefault_args: {run_if: \"true\"}\ntasks:\n  - {id: a, command: \"true\", when: \"true\", expand: \"[1]\", trigger: all_done}\n",
    );
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "default_args.run_if: unknown field; `run_if` cannot be shared through `default_args`: set it on each task",
            "tasks[0].when: unknown field; did you mean `run_if`?",
            "tasks[0].expand: unknown field; did you mean `map_over`?",
            "tasks[0].trigger: unknown field; did you mean `trigger_rule`?",
        ]
    );
}

const REFERENCE: &str = include_str!("../../../docs/dag-reference.md");

/// The fenced block that follows `<!-- example: NAME -->` in the reference.
fn reference_block(name: &str) -> &'static str {
    let marker = format!("<!-- example: {name} -->\n");
    let start = REFERENCE
        .find(&marker)
        .expect("marker in docs/dag-reference.md")
        + marker.len();
    let fenced = &REFERENCE[start..];
    let body = &fenced[fenced.find('\n').expect("fence line") + 1..];
    &body[..body.find("```").expect("closing fence")]
}

#[test]
fn the_reference_examples_of_flow_are_valid() {
    let branching = valid(reference_block("branching"));
    assert!(task(&branching, "pick").branch);
    assert!(task(&branching, "choose-model").branch);
    assert_eq!(
        task(&branching, "report").trigger_rule,
        TriggerRule::NoneFailedMinOneSuccess
    );

    let mapping = valid(reference_block("mapping"));
    let process = task(&mapping, "process");
    assert_eq!(
        process.map_over,
        Some(MapOver {
            expression: "tasks.list.output".to_string(),
            max_length: 5_000,
        })
    );
    assert_eq!(
        task(&mapping, "per-region")
            .map_over
            .as_ref()
            .map(|map| map.max_length),
        Some(DEFAULT_MAX_MAP_LENGTH)
    );
    assert!(task(&mapping, "total").map_over.is_none());
}

#[test]
fn the_reference_lists_every_trigger_rule_and_quotes_the_branch_error() {
    let table = &REFERENCE[REFERENCE
        .find("| rule | runs when | becomes instead |")
        .unwrap()..];
    let listed: Vec<&str> = table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| line.split('`').nth(1).expect("a rule in backquotes"))
        .collect();
    assert_eq!(listed, TriggerRule::ALL.map(TriggerRule::name));

    let error = branch_choice(Some("\"wekday\""), &["weekday", "weekend"]).unwrap_err();
    let quoted = error.replace(' ', "");
    let flat: String = REFERENCE.split_whitespace().collect();
    assert!(flat.contains(&quoted), "{error}");
}
