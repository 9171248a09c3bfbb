//! Input validation against the KMS service model that botocore ships (trimmed by
//! scripts/gen-kms-model.py into kms-model.json): required members, length and range
//! limits, enums, string patterns and JSON types, answered in AWS's wording ("1 validation
//! error detected: Value at 'x' failed to satisfy constraint: ..."). The KMS layer still
//! checks the names it stores, for callers that do not come through the API.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::errors::ApiError;

#[derive(Debug, Deserialize)]
struct Model {
    operations: HashMap<String, Option<String>>,
    shapes: HashMap<String, Shape>,
    /// Each string shape's pattern, compiled (filled in after loading).
    #[serde(skip)]
    patterns: HashMap<String, Regex>,
}

#[derive(Debug, Deserialize)]
struct Shape {
    #[serde(rename = "type")]
    kind: String,
    min: Option<f64>,
    max: Option<f64>,
    #[serde(rename = "enum")]
    enum_values: Option<Vec<String>>,
    #[serde(default)]
    required: Vec<String>,
    #[serde(default)]
    members: HashMap<String, String>,
    member: Option<String>,
    key: Option<String>,
    value: Option<String>,
    /// A Java regular expression the whole value must match.
    pattern: Option<String>,
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let mut m: Model =
            serde_json::from_str(include_str!("kms-model.json")).expect("kms-model.json is valid");
        m.patterns = m
            .shapes
            .iter()
            .filter_map(|(name, shape)| Some((name.clone(), compile_pattern(shape.pattern.as_deref()?))))
            .collect();
        m
    })
}

/// The model's patterns are Java regular expressions that AWS matches against the whole
/// value; Java's `\w` and `\d` are ASCII-only where Rust's are Unicode, so they are spelled
/// out as ASCII classes (`\w` appears only inside brackets in the model).
fn compile_pattern(java: &str) -> Regex {
    let rust = java.replace("\\w", "[:word:]").replace("\\d", "[0-9]");
    Regex::new(&format!("^(?:{rust})$")).expect("the model's patterns compile")
}

/// Whether the service model has this operation.
pub fn is_operation(name: &str) -> bool {
    model().operations.contains_key(name)
}

/// Checks `input` against the operation's input shape.
pub fn validate(operation: &str, input: &Value) -> Result<(), ApiError> {
    let m = model();
    let Some(shape) = m.operations.get(operation) else { return Ok(()) };
    let Some(shape) = shape else { return Ok(()) };
    let mut problems = Vec::new();
    check(m, shape, input, "", &mut problems)?;
    match problems.len() {
        0 => Ok(()),
        1 => Err(ApiError::validation(format!("1 validation error detected: {}", problems[0]))),
        n => Err(ApiError::validation(format!("{n} validation errors detected: {}", problems.join("; ")))),
    }
}

/// AWS names members in messages with a lower-case first letter.
fn member_path(parent: &str, name: &str) -> String {
    let mut c = name.chars();
    let first: String = c.next().map(|f| f.to_lowercase().collect()).unwrap_or_default();
    let name = format!("{first}{}", c.as_str());
    if parent.is_empty() {
        name
    } else {
        format!("{parent}.{name}")
    }
}

fn serialization(msg: String) -> ApiError {
    ApiError::client("SerializationException", msg)
}

fn check(m: &Model, shape_name: &str, v: &Value, at: &str, out: &mut Vec<String>) -> Result<(), ApiError> {
    let Some(shape) = m.shapes.get(shape_name) else { return Ok(()) };
    let fail = |value: Option<String>, constraint: String| match value {
        Some(v) => format!("Value '{v}' at '{at}' failed to satisfy constraint: Member must {constraint}"),
        None => format!("Value at '{at}' failed to satisfy constraint: Member must {constraint}"),
    };
    let wrong_type = || serialization(format!("{} at '{at}' must be of type {}", v, shape.kind));
    match shape.kind.as_str() {
        "structure" => {
            let obj = v.as_object().ok_or_else(|| {
                serialization(format!("Start of structure or map found where not expected at '{at}'"))
            })?;
            let mut names: Vec<&String> = shape.members.keys().collect();
            names.sort();
            for name in names {
                let path = member_path(at, name);
                match obj.get(name.as_str()) {
                    None | Some(Value::Null) if shape.required.contains(name) => out.push(format!(
                        "Value null at '{path}' failed to satisfy constraint: Member must not be null"
                    )),
                    None | Some(Value::Null) => {}
                    Some(child) => check(m, &shape.members[name], child, &path, out)?,
                }
            }
        }
        "string" => {
            let s = v.as_str().ok_or_else(wrong_type)?;
            let len = s.chars().count() as f64;
            if let Some(values) = &shape.enum_values {
                if !values.iter().any(|e| e == s) {
                    out.push(fail(
                        Some(s.into()),
                        format!("satisfy enum value set: [{}]", values.join(", ")),
                    ));
                    return Ok(());
                }
            }
            let before = out.len();
            length_checks(shape, len, Some(s.to_string()), &fail, out);
            if out.len() == before {
                if let (Some(pattern), Some(re)) = (&shape.pattern, m.patterns.get(shape_name)) {
                    if !re.is_match(s) {
                        out.push(fail(
                            Some(s.into()),
                            format!("satisfy regular expression pattern: {pattern}"),
                        ));
                    }
                }
            }
        }
        "blob" => {
            let s = v.as_str().ok_or_else(wrong_type)?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| serialization(format!("Value at '{at}' is not valid base64")))?;
            length_checks(shape, bytes.len() as f64, None, &fail, out);
        }
        "integer" | "long" => {
            let n = v.as_i64().ok_or_else(wrong_type)?;
            if shape.min.is_some_and(|min| (n as f64) < min) {
                out.push(fail(
                    Some(n.to_string()),
                    format!("have value greater than or equal to {}", shape.min.unwrap_or(0.0)),
                ));
            } else if shape.max.is_some_and(|max| (n as f64) > max) {
                out.push(fail(
                    Some(n.to_string()),
                    format!("have value less than or equal to {}", shape.max.unwrap_or(0.0)),
                ));
            }
        }
        "boolean" => {
            v.as_bool().ok_or_else(wrong_type)?;
        }
        "timestamp" if !v.is_number() && !v.is_string() => return Err(wrong_type()),
        "list" => {
            let items = v.as_array().ok_or_else(wrong_type)?;
            length_checks(shape, items.len() as f64, None, &fail, out);
            if let Some(member) = &shape.member {
                for (i, item) in items.iter().enumerate() {
                    check(m, member, item, &format!("{at}.{}.member", i + 1), out)?;
                }
            }
        }
        "map" => {
            let obj = v.as_object().ok_or_else(wrong_type)?;
            length_checks(shape, obj.len() as f64, None, &fail, out);
            for (k, value) in obj {
                if let Some(key_shape) = &shape.key {
                    check(m, key_shape, &Value::String(k.clone()), &format!("{at}.key"), out)?;
                }
                if let Some(value_shape) = &shape.value {
                    check(m, value_shape, value, &format!("{at}.{k}"), out)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn length_checks(
    shape: &Shape,
    len: f64,
    shown: Option<String>,
    fail: &dyn Fn(Option<String>, String) -> String,
    out: &mut Vec<String>,
) {
    if let Some(min) = shape.min.filter(|&min| len < min) {
        out.push(fail(shown, format!("have length greater than or equal to {min}")));
    } else if let Some(max) = shape.max.filter(|&max| len > max) {
        out.push(fail(shown, format!("have length less than or equal to {max}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aws_wording() {
        let e = validate("Encrypt", &json!({"KeyId": "k"})).unwrap_err();
        assert_eq!(e.code, "ValidationException");
        assert_eq!(
            e.message,
            "1 validation error detected: Value null at 'plaintext' failed to satisfy constraint: Member must not be null"
        );
        let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 4097]);
        let e = validate("Encrypt", &json!({"KeyId": "k", "Plaintext": big})).unwrap_err();
        assert!(e.message.ends_with("Value at 'plaintext' failed to satisfy constraint: Member must have length less than or equal to 4096"), "{}", e.message);
        let e = validate("CreateKey", &json!({"KeySpec": "RSA_9"})).unwrap_err();
        assert!(e.message.contains("Value 'RSA_9' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [RSA_2048"));
        let e = validate("ScheduleKeyDeletion", &json!({"PendingWindowInDays": 0})).unwrap_err();
        assert!(e.message.starts_with("2 validation errors detected: "), "{}", e.message);
        assert!(validate("Encrypt", &json!({"KeyId": "k", "Plaintext": "AAAA"})).is_ok());
        assert_eq!(
            validate("Encrypt", &json!({"KeyId": 5, "Plaintext": "AAAA"})).unwrap_err().code,
            "SerializationException"
        );
        assert!(is_operation("Decrypt") && !is_operation("Frobnicate"));
    }

    #[test]
    fn patterns_in_aws_wording() {
        let e = validate(
            "CreateGrant",
            &json!({"KeyId": "k", "GranteePrincipal": "has space", "Operations": ["Decrypt"]}),
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "1 validation error detected: Value 'has space' at 'granteePrincipal' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: ^[\\w+=,.@:/-]+$"
        );
        let ok = json!({"KeyId": "k", "GranteePrincipal": "arn:aws:iam::111122223333:user/bob", "Operations": ["Decrypt"]});
        assert!(validate("CreateGrant", &ok).is_ok());
        // Java's \w is ASCII: a non-ASCII letter fails the pattern.
        let e = validate(
            "CreateGrant",
            &json!({"KeyId": "k", "GranteePrincipal": "bj\u{f6}rn", "Operations": ["Decrypt"]}),
        );
        assert!(e.is_err());
        // The whole value must match, not a part of it.
        assert!(validate("GetKeyPolicy", &json!({"KeyId": "k", "PolicyName": "default"})).is_ok());
        assert!(validate("GetKeyPolicy", &json!({"KeyId": "k", "PolicyName": "de fault"})).is_err());
    }
}
