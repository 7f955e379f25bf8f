//! Typed run parameters: the `params` a DAG declares, checked when the DAG
//! is registered, and the params a run is given, checked against them when
//! it is triggered, backfilled or started by an event.
//!
//! A declaration is a mapping (`{type: integer, default: 100, minimum: 1}`)
//! or, as a shorthand, any other value, which is then the default and gives
//! the type (`tags: [a, b]` is an array defaulting to `[a, b]`). A param
//! without a default must be given by every run.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use super::model::{ParamDeclarationSpec, ParamSpec};
use super::validate::{Report, did_you_mean};
use crate::error::FieldViolation;
use crate::ids::validate_name;

/// What a param is called in id errors.
const PARAM_WHAT: &str = "param name";

/// Longest value quoted in a message, in bytes.
const MAX_QUOTED_BYTES: usize = 80;

/// The JSON type a param's values have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    Array,
    Object,
}

impl ParamType {
    pub fn name(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
            ParamType::Array => "array",
            ParamType::Object => "object",
        }
    }

    /// "a string", "an integer", … for messages.
    fn with_article(self) -> &'static str {
        match self {
            ParamType::String => "a string",
            ParamType::Integer => "an integer",
            ParamType::Number => "a number",
            ParamType::Boolean => "a boolean",
            ParamType::Array => "an array",
            ParamType::Object => "an object",
        }
    }

    /// The type a shorthand default gives its param; `None` for `null`.
    fn of_value(value: &Value) -> Option<ParamType> {
        Some(match value {
            Value::Null => return None,
            Value::Bool(_) => ParamType::Boolean,
            Value::Number(number) if number.is_i64() || number.is_u64() => ParamType::Integer,
            Value::Number(_) => ParamType::Number,
            Value::String(_) => ParamType::String,
            Value::Array(_) => ParamType::Array,
            Value::Object(_) => ParamType::Object,
        })
    }

    fn admits(self, value: &Value) -> bool {
        match self {
            ParamType::String => value.is_string(),
            ParamType::Integer => value.is_i64() || value.is_u64(),
            ParamType::Number => value.is_number(),
            ParamType::Boolean => value.is_boolean(),
            ParamType::Array => value.is_array(),
            ParamType::Object => value.is_object(),
        }
    }

    fn has_range(self) -> bool {
        matches!(self, ParamType::Integer | ParamType::Number)
    }

    fn has_length(self) -> bool {
        matches!(self, ParamType::String | ParamType::Array)
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One declared param, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDeclaration {
    pub param_type: ParamType,
    /// `None`: every run must give it.
    pub default: Option<Value>,
    pub description: String,
    /// The values allowed (`enum`); empty means any of the type.
    pub allowed: Vec<Value>,
    pub minimum: Option<Number>,
    pub maximum: Option<Number>,
    /// In characters for strings, items for arrays.
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
}

impl ParamDeclaration {
    /// Why `value` does not satisfy the declaration, if it does not.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        if !self.param_type.admits(value) {
            return Err(format!(
                "expected {}, got {}",
                self.param_type.with_article(),
                quote(value)
            ));
        }
        if !self.allowed.is_empty() && !self.allowed.contains(value) {
            let allowed: Vec<String> = self.allowed.iter().map(quote).collect();
            return Err(format!(
                "{} is not one of the allowed values: {}",
                quote(value),
                allowed.join(", ")
            ));
        }
        if let Value::Number(number) = value {
            if let Some(minimum) = &self.minimum
                && compare_numbers(number, minimum) == Ordering::Less
            {
                return Err(format!("{number} is below the minimum {minimum}"));
            }
            if let Some(maximum) = &self.maximum
                && compare_numbers(number, maximum) == Ordering::Greater
            {
                return Err(format!("{number} is above the maximum {maximum}"));
            }
        }
        let length = match value {
            Value::String(text) => Some((text.chars().count() as u64, "characters")),
            Value::Array(items) => Some((items.len() as u64, "items")),
            _ => None,
        };
        if let Some((length, unit)) = length {
            if let Some(minimum) = self.min_length
                && length < minimum
            {
                return Err(format!(
                    "{} has {length} {unit}; the minimum is {minimum}",
                    quote(value)
                ));
            }
            if let Some(maximum) = self.max_length
                && length > maximum
            {
                return Err(format!(
                    "{} has {length} {unit}; the maximum is {maximum}",
                    quote(value)
                ));
            }
        }
        Ok(())
    }
}

/// The params a DAG declares, in name order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamsSpec {
    declared: BTreeMap<String, ParamDeclaration>,
}

impl ParamsSpec {
    /// Params from checked declarations.
    pub fn new(declared: BTreeMap<String, ParamDeclaration>) -> ParamsSpec {
        ParamsSpec { declared }
    }

    pub fn is_empty(&self) -> bool {
        self.declared.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&ParamDeclaration> {
        self.declared.get(name)
    }

    /// The declarations in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ParamDeclaration)> {
        self.declared
            .iter()
            .map(|(name, declaration)| (name.as_str(), declaration))
    }

    /// Names of the declared params, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.declared.keys().map(String::as_str)
    }

    /// Checks run params (a JSON object given at trigger time, by a backfill
    /// or an event payload) against the declarations and returns them with
    /// defaults filled in. When the DAG declares no params, `given` is
    /// returned unchanged (any object is accepted). When it declares some,
    /// an undeclared name is refused. Each violation's `field` is the param
    /// name (e.g. "limit"), the reason says what is wrong ("expected an
    /// integer, got \"ten\"", "100001 is above the maximum 10000", "required;
    /// the DAG declares it without a default", "unknown param; the DAG
    /// declares: limit, mode"). The caller prefixes the field path.
    pub fn resolve(
        &self,
        given: &Map<String, Value>,
    ) -> Result<Map<String, Value>, Vec<FieldViolation>> {
        if self.declared.is_empty() {
            return Ok(given.clone());
        }
        let mut violations = Vec::new();
        for name in given.keys() {
            if !self.declared.contains_key(name) {
                let names: Vec<&str> = self.names().collect();
                let reason = match did_you_mean(name, names.iter().copied()) {
                    Some(close) => format!(
                        "unknown param; did you mean `{close}`? The DAG declares: {}",
                        names.join(", ")
                    ),
                    None => format!("unknown param; the DAG declares: {}", names.join(", ")),
                };
                violations.push(FieldViolation::new(name.clone(), reason));
            }
        }
        let mut resolved = Map::with_capacity(self.declared.len());
        for (name, declaration) in &self.declared {
            match given.get(name) {
                Some(value) => match declaration.check(value) {
                    Ok(()) => {
                        resolved.insert(name.clone(), value.clone());
                    }
                    Err(reason) => violations.push(FieldViolation::new(name.clone(), reason)),
                },
                None => match &declaration.default {
                    Some(default) => {
                        resolved.insert(name.clone(), default.clone());
                    }
                    None => violations.push(FieldViolation::new(
                        name.clone(),
                        "required; the DAG declares it without a default",
                    )),
                },
            }
        }
        if violations.is_empty() {
            Ok(resolved)
        } else {
            Err(violations)
        }
    }
}

/// `-1` < `0.5` < `2`, exactly for integers of any size.
fn compare_numbers(left: &Number, right: &Number) -> Ordering {
    if let (Some(left), Some(right)) = (left.as_i64(), right.as_i64()) {
        return left.cmp(&right);
    }
    if let (Some(left), Some(right)) = (left.as_u64(), right.as_u64()) {
        return left.cmp(&right);
    }
    let left = left.as_f64().unwrap_or(f64::NAN);
    let right = right.as_f64().unwrap_or(f64::NAN);
    left.partial_cmp(&right).unwrap_or(Ordering::Equal)
}

/// A value as compact JSON, cut short: `"ten"`, `100`, `["a","b"]`.
fn quote(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > MAX_QUOTED_BYTES {
        text.truncate(text.floor_char_boundary(MAX_QUOTED_BYTES));
        text.push('…');
    }
    text
}

/// Checks the `params` of a document, reporting each problem at
/// `params.<name>[.<field>]`, and returns the declarations that are sound.
pub(super) fn check_params(
    params: &BTreeMap<String, ParamSpec>,
    report: &mut Report,
) -> ParamsSpec {
    let mut declared = BTreeMap::new();
    for (name, spec) in params {
        let path = format!("params.{name}");
        let mut sound = true;
        if let Err(error) = validate_name(PARAM_WHAT, name) {
            report.push(path.clone(), error.reason);
            sound = false;
        }
        let declaration = match spec {
            ParamSpec::Default(value) => match ParamType::of_value(value) {
                Some(param_type) => ParamDeclaration {
                    param_type,
                    default: Some(value.clone()),
                    description: String::new(),
                    allowed: Vec::new(),
                    minimum: None,
                    maximum: None,
                    min_length: None,
                    max_length: None,
                },
                None => {
                    report.push(
                        path,
                        "a param needs a type or a default; write for example `{type: string}`",
                    );
                    continue;
                }
            },
            ParamSpec::Declared(declaration) => {
                match check_declaration(&path, declaration, report) {
                    Some(declaration) => declaration,
                    None => continue,
                }
            }
        };
        if sound {
            declared.insert(name.clone(), declaration);
        }
    }
    ParamsSpec::new(declared)
}

/// Checks one mapping declaration; `None` when it has a problem (reported).
fn check_declaration(
    path: &str,
    spec: &ParamDeclarationSpec,
    report: &mut Report,
) -> Option<ParamDeclaration> {
    let field = |name: &str| format!("{path}.{name}");
    let Some(param_type) = spec.param_type else {
        report.push(
            field("type"),
            "missing; a param declared as a mapping needs a `type`: string, integer, number, boolean, array or object",
        );
        return None;
    };
    let mut sound = true;
    if !param_type.has_range() {
        for (name, bound) in [("minimum", &spec.minimum), ("maximum", &spec.maximum)] {
            if bound.is_some() {
                report.push(
                    field(name),
                    format!(
                        "only integer and number params take `{name}` (this one is {param_type})"
                    ),
                );
                sound = false;
            }
        }
    }
    if !param_type.has_length() {
        for (name, bound) in [
            ("min_length", spec.min_length),
            ("max_length", spec.max_length),
        ] {
            if bound.is_some() {
                report.push(
                    field(name),
                    format!(
                        "only string and array params take `{name}` (this one is {param_type})"
                    ),
                );
                sound = false;
            }
        }
    }
    if let (Some(minimum), Some(maximum)) = (&spec.minimum, &spec.maximum)
        && compare_numbers(minimum, maximum) == Ordering::Greater
    {
        report.push(
            field("minimum"),
            format!("minimum {minimum} is above maximum {maximum}"),
        );
        sound = false;
    }
    if let (Some(minimum), Some(maximum)) = (spec.min_length, spec.max_length)
        && minimum > maximum
    {
        report.push(
            field("min_length"),
            format!("min_length {minimum} is above max_length {maximum}"),
        );
        sound = false;
    }
    if let Some(allowed) = &spec.allowed {
        if allowed.is_empty() {
            report.push(
                field("enum"),
                "list at least one allowed value, or leave `enum` out",
            );
            sound = false;
        }
        for (position, value) in allowed.iter().enumerate() {
            if !param_type.admits(value) {
                report.push(
                    format!("{path}.enum[{position}]"),
                    format!(
                        "expected {}, got {}",
                        param_type.with_article(),
                        quote(value)
                    ),
                );
                sound = false;
            }
        }
    }
    if !sound {
        return None;
    }
    let declaration = ParamDeclaration {
        param_type,
        default: spec.default.clone(),
        description: spec.description.clone().unwrap_or_default(),
        allowed: spec.allowed.clone().unwrap_or_default(),
        minimum: spec.minimum.clone(),
        maximum: spec.maximum.clone(),
        min_length: spec.min_length,
        max_length: spec.max_length,
    };
    if let Some(default) = &declaration.default
        && let Err(reason) = declaration.check(default)
    {
        report.push(field("default"), reason);
        return None;
    }
    Some(declaration)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn declared(document: Value) -> Result<ParamsSpec, Vec<FieldViolation>> {
        let params: BTreeMap<String, ParamSpec> = serde_json::from_value(document).unwrap();
        let mut report = Report::default();
        let spec = check_params(&params, &mut report);
        if report.is_empty() {
            Ok(spec)
        } else {
            Err(report.into_errors().0)
        }
    }

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn etl() -> ParamsSpec {
        declared(json!({
            "limit": {"type": "integer", "default": 100, "minimum": 1, "maximum": 10000, "description": "rows per batch"},
            "mode": {"type": "string", "enum": ["full", "incremental"], "default": "incremental"},
            "day": {"type": "string", "min_length": 10, "max_length": 10},
            "ratio": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
            "tags": ["a", "b"],
            "dry_run": false,
            "options": {"type": "object", "default": {}},
            "files": {"type": "array", "max_length": 2, "default": []},
        }))
        .unwrap()
    }

    #[test]
    fn defaults_fill_in_and_given_values_win() {
        let params = etl();
        let resolved = params
            .resolve(&object(json!({"day": "2024-01-01", "limit": 5})))
            .unwrap();
        assert_eq!(
            Value::Object(resolved),
            json!({"day": "2024-01-01", "dry_run": false, "files": [], "limit": 5, "mode": "incremental", "options": {}, "ratio": 0.5, "tags": ["a", "b"]})
        );
        let names: Vec<&str> = params.names().collect();
        assert_eq!(
            names,
            [
                "day", "dry_run", "files", "limit", "mode", "options", "ratio", "tags"
            ]
        );
        let limit = params.get("limit").unwrap();
        assert_eq!(limit.description, "rows per batch");
        assert_eq!(params.get("tags").unwrap().param_type, ParamType::Array);
        assert_eq!(
            params.get("dry_run").unwrap().param_type,
            ParamType::Boolean
        );
    }

    #[test]
    fn each_violation_names_the_param() {
        let params = etl();
        let errors = params
            .resolve(&object(json!({
                "limit": "ten",
                "mode": "partial",
                "day": "2024-1-1",
                "ratio": 1.5,
                "files": ["a", "b", "c"],
                "dry_run": "no",
                "limt": 1,
                "zzz": 2,
            })))
            .unwrap_err();
        let found: Vec<(&str, &str)> = errors
            .iter()
            .map(|violation| (violation.field.as_str(), violation.reason.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "limt",
                    "unknown param; did you mean `limit`? The DAG declares: day, dry_run, files, limit, mode, options, ratio, tags"
                ),
                (
                    "zzz",
                    "unknown param; the DAG declares: day, dry_run, files, limit, mode, options, ratio, tags"
                ),
                ("day", "\"2024-1-1\" has 8 characters; the minimum is 10"),
                ("dry_run", "expected a boolean, got \"no\""),
                ("files", "[\"a\",\"b\",\"c\"] has 3 items; the maximum is 2"),
                ("limit", "expected an integer, got \"ten\""),
                (
                    "mode",
                    "\"partial\" is not one of the allowed values: \"full\", \"incremental\""
                ),
                ("ratio", "1.5 is above the maximum 1"),
            ]
        );
        let errors = params
            .resolve(&object(json!({"limit": 100001})))
            .unwrap_err();
        assert_eq!(
            errors,
            [
                FieldViolation::new("day", "required; the DAG declares it without a default"),
                FieldViolation::new("limit", "100001 is above the maximum 10000"),
            ]
        );
        let errors = params
            .resolve(&object(
                json!({"day": "2024-01-01", "limit": 0, "ratio": -0.1}),
            ))
            .unwrap_err();
        assert_eq!(
            errors,
            [
                FieldViolation::new("limit", "0 is below the minimum 1"),
                FieldViolation::new("ratio", "-0.1 is below the minimum 0"),
            ]
        );
        let errors = params
            .resolve(&object(json!({"day": "2024-01-01", "limit": 5.0})))
            .unwrap_err();
        assert_eq!(
            errors,
            [FieldViolation::new("limit", "expected an integer, got 5.0")]
        );
    }

    #[test]
    fn numbers_accept_integers_and_compare_exactly() {
        let params = declared(json!({"big": {"type": "integer", "maximum": 9007199254740993u64}, "x": {"type": "number"}})).unwrap();
        assert!(
            params
                .resolve(&object(json!({"big": 9007199254740993u64, "x": 3})))
                .is_ok()
        );
        assert!(
            params
                .resolve(&object(json!({"big": 9007199254740994u64, "x": 3})))
                .is_err()
        );
        let long = "x".repeat(200);
        let errors = params
            .resolve(&object(json!({"big": long, "x": 1})))
            .unwrap_err();
        assert!(errors[0].reason.ends_with("xxx…"), "{}", errors[0].reason);
    }

    #[test]
    fn a_dag_without_declarations_passes_anything() {
        let params = ParamsSpec::default();
        assert!(params.is_empty());
        let given = object(json!({"anything": [1, {"goes": true}], "z": null}));
        assert_eq!(params.resolve(&given).unwrap(), given);
    }

    #[test]
    fn declarations_are_checked() {
        let errors = declared(json!({
            "no-type": {"default": 1},
            "bad name": 1,
            "nothing": null,
            "low": {"type": "integer", "default": 0, "minimum": 1},
            "long": {"type": "string", "minimum": 1, "max_length": 1, "min_length": 2},
            "count": {"type": "boolean", "min_length": 1},
            "range": {"type": "number", "minimum": 5, "maximum": 1},
            "choice": {"type": "string", "enum": ["a", 1], "default": "a"},
            "empty": {"type": "string", "enum": []},
            "picked": {"type": "string", "enum": ["a", "b"], "default": "c"},
        }))
        .unwrap_err();
        let found: Vec<(&str, &str)> = errors
            .iter()
            .map(|violation| (violation.field.as_str(), violation.reason.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "params.bad name",
                    "param name `bad name` contains ' '; only letters, digits, `_`, `.` and `-` are allowed"
                ),
                ("params.choice.enum[1]", "expected a string, got 1"),
                (
                    "params.count.min_length",
                    "only string and array params take `min_length` (this one is boolean)"
                ),
                (
                    "params.empty.enum",
                    "list at least one allowed value, or leave `enum` out"
                ),
                (
                    "params.long.minimum",
                    "only integer and number params take `minimum` (this one is string)"
                ),
                (
                    "params.long.min_length",
                    "min_length 2 is above max_length 1"
                ),
                ("params.low.default", "0 is below the minimum 1"),
                (
                    "params.no-type.type",
                    "missing; a param declared as a mapping needs a `type`: string, integer, number, boolean, array or object"
                ),
                (
                    "params.nothing",
                    "a param needs a type or a default; write for example `{type: string}`"
                ),
                (
                    "params.picked.default",
                    "\"c\" is not one of the allowed values: \"a\", \"b\""
                ),
                ("params.range.minimum", "minimum 5 is above maximum 1"),
            ]
        );
    }
}
