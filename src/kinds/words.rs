//! A payload's schema errors in the API's words: what the field must be,
//! in JSON's terms, at the field's own pointer.

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{JsonType, ValidationError};
use serde_json::Value;

use crate::domain::{FieldError, escape_pointer};

/// The errors of one payload, each at `at` plus its instance path. A
/// "matches none of the forms" error is kept only when nothing more precise
/// was found (the precise ones say what to change).
pub fn field_errors<'a>(
    errors: impl Iterator<Item = ValidationError<'a>>,
    at: &str,
) -> Vec<FieldError> {
    let mut precise = Vec::new();
    let mut vague = Vec::new();
    for error in errors {
        let pointer = format!("{at}{}", error.instance_path());
        let instance = error.instance();
        match error.kind() {
            ValidationErrorKind::OneOfNotValid { .. } | ValidationErrorKind::AnyOf { .. } => {
                vague.push(FieldError::new(
                    pointer,
                    "matches none of the forms this kind accepts",
                ));
            }
            ValidationErrorKind::Required { property } => {
                let name = property
                    .as_str()
                    .map_or_else(|| property.to_string(), str::to_owned);
                precise.push(FieldError::new(
                    format!("{pointer}/{}", escape_pointer(&name)),
                    "is required",
                ));
            }
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                for name in unexpected {
                    precise.push(FieldError::new(
                        format!("{pointer}/{}", escape_pointer(name)),
                        "is not a field here",
                    ));
                }
            }
            kind => precise.push(FieldError::new(pointer, message(kind, instance))),
        }
    }
    let mut errors = if precise.is_empty() { vague } else { precise };
    // In the payload's order of fields, once each.
    errors.sort_by(|a, b| a.pointer.cmp(&b.pointer));
    errors.dedup_by(|a, b| a.pointer == b.pointer && a.message == b.message);
    errors
}

fn message(kind: &ValidationErrorKind, instance: &Value) -> String {
    match kind {
        ValidationErrorKind::Type { kind } => {
            let expected: Vec<&str> = match kind {
                TypeKind::Single(one) => vec![a_type(*one)],
                TypeKind::Multiple(set) => set.iter().map(a_type).collect(),
            };
            format!(
                "must be {}, not {}",
                expected.join(" or "),
                a_value(instance)
            )
        }
        ValidationErrorKind::Enum { options } => match options.as_array() {
            Some(options) => format!("must be one of {}", list(options)),
            None => format!("must be {options}"),
        },
        ValidationErrorKind::Constant { expected_value } => format!("must be {expected_value}"),
        ValidationErrorKind::Minimum { limit } => format!("must be at least {limit}"),
        ValidationErrorKind::Maximum { limit } => format!("must be at most {limit}"),
        ValidationErrorKind::ExclusiveMinimum { limit } => format!("must be more than {limit}"),
        ValidationErrorKind::ExclusiveMaximum { limit } => format!("must be less than {limit}"),
        ValidationErrorKind::MinLength { limit } => {
            format!("must be at least {limit} characters long")
        }
        ValidationErrorKind::MaxLength { limit } => {
            format!("must be at most {limit} characters long")
        }
        ValidationErrorKind::MinItems { limit } => format!("must have at least {limit} items"),
        ValidationErrorKind::MaxItems { limit } => format!("must have at most {limit} items"),
        ValidationErrorKind::Pattern { pattern } => format!("must match the pattern {pattern}"),
        ValidationErrorKind::Format { format } => format!("must be a valid {format}"),
        ValidationErrorKind::OneOfMultipleValid { .. } => {
            "matches more than one of the forms this kind accepts".to_owned()
        }
        _ => kind_fallback(kind),
    }
}

/// Anything else, as the validator says it (rare in kinds' schemas).
fn kind_fallback(kind: &ValidationErrorKind) -> String {
    format!("is not valid ({})", kind.keyword())
}

fn a_type(kind: JsonType) -> &'static str {
    match kind {
        JsonType::Null => "null",
        JsonType::Boolean => "true or false",
        JsonType::Integer => "an integer",
        JsonType::Number => "a number",
        JsonType::String => "a string",
        JsonType::Array => "an array",
        JsonType::Object => "an object",
    }
}

fn a_value(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn list(options: &[Value]) -> String {
    options
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn said(schema: Value, payload: Value) -> Vec<(String, String)> {
        let validator = jsonschema::validator_for(&schema).unwrap();
        field_errors(validator.iter_errors(&payload), "/payload")
            .into_iter()
            .map(|error| (error.pointer, error.message))
            .collect()
    }

    #[test]
    fn schema_errors_say_what_the_field_must_be_at_its_own_pointer() {
        let schema = json!({
            "type": "object",
            "properties": {
                "ms": {"type": "integer", "minimum": 0},
                "mode": {"enum": ["fast", "slow"]}
            },
            "required": ["ms"],
            "additionalProperties": false
        });
        assert_eq!(
            said(
                schema.clone(),
                json!({"ms": "x", "mode": "medium", "extra": 1})
            ),
            [
                (
                    "/payload/extra".to_owned(),
                    "is not a field here".to_owned()
                ),
                (
                    "/payload/mode".to_owned(),
                    r#"must be one of "fast", "slow""#.to_owned()
                ),
                (
                    "/payload/ms".to_owned(),
                    "must be an integer, not a string".to_owned()
                ),
            ]
        );
        assert_eq!(
            said(schema.clone(), json!({})),
            [("/payload/ms".to_owned(), "is required".to_owned())]
        );
        assert_eq!(
            said(schema, json!({"ms": -1})),
            [("/payload/ms".to_owned(), "must be at least 0".to_owned())]
        );
    }

    #[test]
    fn none_of_the_forms_is_said_only_when_nothing_more_precise_is() {
        let forms = json!({"oneOf": [
            {"type": "object", "required": ["a"]},
            {"type": "object", "required": ["b"]}
        ]});
        assert_eq!(
            said(forms, json!({})),
            [(
                "/payload".to_owned(),
                "matches none of the forms this kind accepts".to_owned()
            )]
        );
    }
}
