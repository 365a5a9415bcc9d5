//! Secret payload values: masked wherever a job is shown, and wherever what
//! the job produced (its result, error or progress) repeats them.

use std::borrow::Cow;

use serde_json::Value;

/// What is shown in place of a secret value.
pub const MASK: &str = "***";

/// Secret values shorter than this are masked in the payload but not looked
/// for in results: masking every `a` of a response would ruin it. At this
/// length masking also never makes a text longer (a result that fits the
/// result cap still fits once masked).
pub const MIN_MASKED_IN_OUTPUT: usize = 4;

/// The secret values of one payload, as text (numbers as JSON writes them),
/// longest first. Booleans are left out: masking every `true` of a result
/// would hide nothing and ruin it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Secrets(Vec<String>);

impl Secrets {
    /// The values of `original` that `shown` (its redacted copy) replaced.
    pub fn between(original: &Value, shown: &Value) -> Self {
        let mut found = Vec::new();
        replaced(original, shown, &mut found);
        found.retain(|value| value.chars().count() >= MIN_MASKED_IN_OUTPUT);
        // Longest first: a value that holds another is masked whole.
        found.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        found.dedup();
        Self(found)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every occurrence of a secret value replaced by [`MASK`].
    pub fn mask_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = Cow::Borrowed(text);
        for secret in &self.0 {
            if text.contains(secret.as_str()) {
                text = Cow::Owned(text.replace(secret.as_str(), MASK));
            }
        }
        text
    }

    /// Masks the secret values in every string of `value` (object keys aside).
    pub fn mask_value(&self, value: &mut Value) {
        if self.is_empty() {
            return;
        }
        match value {
            Value::String(text) => {
                if let Cow::Owned(masked) = self.mask_text(text) {
                    *text = masked;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.mask_value(item)),
            Value::Object(map) => map.values_mut().for_each(|item| self.mask_value(item)),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

/// Collects the leaves of `original` where `shown` differs.
fn replaced(original: &Value, shown: &Value, found: &mut Vec<String>) {
    match (original, shown) {
        (Value::Object(original), Value::Object(shown)) => {
            for (name, value) in original {
                match shown.get(name) {
                    Some(other) => replaced(value, other, found),
                    None => leaves(value, found),
                }
            }
        }
        (Value::Array(original), Value::Array(shown)) if original.len() == shown.len() => {
            for (value, other) in original.iter().zip(shown) {
                replaced(value, other, found);
            }
        }
        _ if original == shown => {}
        _ => leaves(original, found),
    }
}

fn leaves(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::String(text) => found.push(text.clone()),
        Value::Number(_) => found.push(value.to_string()),
        Value::Array(items) => items.iter().for_each(|item| leaves(item, found)),
        Value::Object(map) => map.values().for_each(|item| leaves(item, found)),
        Value::Bool(_) | Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_values_a_redaction_replaced_are_found_longest_first() {
        let original = json!({
            "headers": {"Authorization": "Bearer tok-123", "x-plain": "seen"},
            "args": {"pin": 123456, "flag": true, "short": "abc", "list": ["one1", "two2"]},
            "same": "kept"
        });
        let mut shown = original.clone();
        shown["headers"]["Authorization"] = json!(MASK);
        shown["args"]["pin"] = json!(MASK);
        shown["args"]["flag"] = json!(MASK);
        shown["args"]["short"] = json!(MASK);
        shown["args"]["list"] = json!(MASK);
        let secrets = Secrets::between(&original, &shown);
        // `abc` is too short to look for in output, a boolean never is.
        assert_eq!(
            secrets.0,
            ["Bearer tok-123", "123456", "one1", "two2"].map(String::from)
        );
        assert!(Secrets::between(&original, &original).is_empty());
    }

    #[test]
    fn every_occurrence_in_every_string_is_masked_and_never_grows_the_text() {
        let secrets = Secrets(vec!["Bearer tok-123".into(), "tok-123".into()]);
        let mut result = json!({
            "body": "auth was Bearer tok-123; token tok-123 tok-123",
            "headers": {"x-echo": "tok-123"},
            "status": 200,
            "list": ["a tok-123 b"]
        });
        let before = result.to_string().len();
        secrets.mask_value(&mut result);
        assert_eq!(
            result,
            json!({
                "body": "auth was ***; token *** ***",
                "headers": {"x-echo": "***"},
                "status": 200,
                "list": ["a *** b"]
            })
        );
        assert!(result.to_string().len() <= before);
        assert!(matches!(secrets.mask_text("nothing"), Cow::Borrowed(_)));
    }
}
