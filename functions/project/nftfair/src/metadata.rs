//! ERC-721 metadata documents, checked.
//!
//! Required: `name` (non-empty), `description` (may be empty) and `image` (non-empty), all
//! strings. `attributes`, when present, is an array of objects each with a string
//! `trait_type` and a `value` that is a string, a number or a boolean (OpenSea's form; its
//! optional `display_type` and `max_value` are allowed). Other fields are left alone.

use serde_json::Value;
use taskbeat::envelope::json_kind;

/// A token's checked metadata, as far as the tasks use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMetadata {
    /// `name`.
    pub name: String,
    /// `(trait_type, value)` pairs; numbers and booleans written as JSON writes them.
    pub traits: Vec<(String, String)>,
}

/// Checks a document; the error names the field that is wrong.
pub fn validate(document: &Value) -> Result<TokenMetadata, String> {
    let Value::Object(fields) = document else {
        return Err(format!("metadata is {}, not a JSON object", json_kind(document)));
    };
    let text = |name: &str, allow_empty: bool| -> Result<String, String> {
        match fields.get(name) {
            None | Some(Value::Null) => Err(format!("`{name}` is missing")),
            Some(Value::String(s)) if s.trim().is_empty() && !allow_empty => Err(format!("`{name}` is empty")),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("`{name}` must be a string, found {}", json_kind(other))),
        }
    };
    let name = text("name", false)?;
    text("description", true)?;
    text("image", false)?;
    let traits = match fields.get("attributes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            items.iter().enumerate().map(|(i, item)| attribute(i, item)).collect::<Result<_, _>>()?
        }
        Some(other) => return Err(format!("`attributes` must be an array, found {}", json_kind(other))),
    };
    Ok(TokenMetadata { name, traits })
}

fn attribute(i: usize, item: &Value) -> Result<(String, String), String> {
    let Value::Object(fields) = item else {
        return Err(format!(
            "`attributes[{i}]` must be an object with trait_type and value, found {}",
            json_kind(item)
        ));
    };
    let trait_type = match fields.get("trait_type") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(format!("`attributes[{i}].trait_type` is empty")),
        None | Some(Value::Null) => return Err(format!("`attributes[{i}].trait_type` is missing")),
        Some(other) => {
            return Err(format!("`attributes[{i}].trait_type` must be a string, found {}", json_kind(other)));
        }
    };
    let value = match fields.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
        None | Some(Value::Null) => return Err(format!("`attributes[{i}].value` is missing")),
        Some(other) => {
            return Err(format!(
                "`attributes[{i}].value` must be a string, number or boolean, found {}",
                json_kind(other)
            ));
        }
    };
    Ok((trait_type, value))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "name": "Fair #1",
            "description": "",
            "image": "ipfs://QmImg/1.png",
            "external_url": "https://example.com/1",
            "attributes": [
                { "trait_type": "Hat", "value": "Cap" },
                { "trait_type": "Level", "value": 5, "display_type": "number", "max_value": 10 },
                { "trait_type": "Shiny", "value": true },
            ],
        })
    }

    #[test]
    fn a_valid_document() {
        let meta = validate(&doc()).unwrap();
        assert_eq!(meta.name, "Fair #1");
        assert_eq!(
            meta.traits,
            [("Hat".into(), "Cap".into()), ("Level".into(), "5".into()), ("Shiny".into(), "true".into())]
        );
        let mut bare = doc();
        bare.as_object_mut().unwrap().remove("attributes");
        assert_eq!(validate(&bare).unwrap().traits, []);
    }

    #[test]
    fn each_wrong_field_is_named() {
        let broken = |path: &str, value: Value| {
            let mut d = doc();
            *d.pointer_mut(path).unwrap() = value;
            validate(&d).unwrap_err()
        };
        assert_eq!(broken("/name", json!(7)), "`name` must be a string, found a number");
        assert_eq!(broken("/name", json!(" ")), "`name` is empty");
        assert_eq!(broken("/image", Value::Null), "`image` is missing");
        assert_eq!(broken("/description", json!(["x"])), "`description` must be a string, found an array");
        assert_eq!(broken("/attributes", json!({})), "`attributes` must be an array, found an object");
        assert_eq!(
            broken("/attributes/1", json!("Hat")),
            "`attributes[1]` must be an object with trait_type and value, found a string"
        );
        assert_eq!(
            broken("/attributes/0/trait_type", json!(3)),
            "`attributes[0].trait_type` must be a string, found a number"
        );
        assert_eq!(
            broken("/attributes/2/value", json!({"a": 1})),
            "`attributes[2].value` must be a string, number or boolean, found an object"
        );
        assert_eq!(validate(&json!([1])).unwrap_err(), "metadata is an array, not a JSON object");
        let mut no_description = doc();
        no_description.as_object_mut().unwrap().remove("description");
        assert_eq!(validate(&no_description).unwrap_err(), "`description` is missing");
    }
}
