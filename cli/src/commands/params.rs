//! Parameters on the command line, shared by `run trigger`, `backfill` and
//! `event emit`: `--param key=value` (repeatable) merged over one JSON object
//! (`--params-json`, `--payload`). Both are checked while the arguments are
//! parsed, so a bad value is refused, naming its flag, before any call.

use serde_json::{Map, Value};

/// `key=value`: the value is read as JSON when it is valid JSON (`3`,
/// `true`, `[1,2]`, `"quoted"`), else taken as a string.
pub fn parse_param(text: &str) -> Result<(String, Value), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not key=value"))?;
    if key.is_empty() {
        return Err(format!("`{text}` has an empty key"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((key.to_string(), value))
}

/// A JSON object (clap adds the flag's name to the error).
pub fn parse_json_object(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(format!(
            "must be a JSON object such as '{{\"day\": \"2026-01-31\"}}', not {}",
            json_kind(&other)
        )),
        Err(error) => Err(format!("is not valid JSON: {error}")),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The object's text, with every `--param` set over `base` (the later of
/// two equal keys wins).
pub fn merge(base: Option<Map<String, Value>>, params: Vec<(String, Value)>) -> String {
    let mut object = base.unwrap_or_default();
    for (key, value) in params {
        object.insert(key, value);
    }
    Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn params_read_json_values_and_fall_back_to_strings() {
        assert_eq!(parse_param("n=3").unwrap(), ("n".to_string(), json!(3)));
        assert_eq!(
            parse_param("s=abc").unwrap(),
            ("s".to_string(), json!("abc"))
        );
        assert_eq!(parse_param("e=").unwrap(), ("e".to_string(), json!("")));
        assert_eq!(
            parse_param("eq=a=b").unwrap(),
            ("eq".to_string(), json!("a=b"))
        );
        assert!(parse_param("=x").is_err());
        assert!(parse_param("nokey").is_err());
    }

    #[test]
    fn params_merge_over_the_json_object() {
        let base = parse_json_object(r#"{"a": 1, "b": true}"#).unwrap();
        let merged = merge(Some(base), vec![("a".into(), json!(2))]);
        assert_eq!(
            serde_json::from_str::<Value>(&merged).unwrap(),
            json!({"a": 2, "b": true})
        );
        assert_eq!(merge(None, vec![]), "{}");
    }

    #[test]
    fn only_json_objects_are_accepted() {
        for (text, says) in [
            ("[1]", "not an array"),
            ("3", "not a number"),
            ("\"x\"", "not a string"),
            ("null", "not null"),
            ("{", "not valid JSON"),
        ] {
            let error = parse_json_object(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
        assert!(parse_json_object("{}").unwrap().is_empty());
    }
}
