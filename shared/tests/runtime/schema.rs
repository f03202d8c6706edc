//! The envelope's JSON Schema and the Rust parser agree: what the schema accepts parses, what it
//! refuses is rejected with a message naming the field.

use std::path::{Path, PathBuf};

use serde_json::Value;
use taskbeat::Envelope;

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schema")
}

fn examples(kind: &str) -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(schema_dir().join("examples").join(kind))
        .expect("examples folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).expect("read")))
        .collect()
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(schema_dir().join("envelope.schema.json")).expect("schema");
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

#[test]
fn valid_examples_pass_the_schema_and_parse() {
    let validator = validator();
    let valid = examples("valid");
    assert!(valid.len() >= 3);
    for (name, body) in valid {
        let value: Value = serde_json::from_str(&body).unwrap();
        assert!(validator.is_valid(&value), "{name} should be valid under the schema");
        let envelope = Envelope::parse(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(envelope.id.to_string(), value["id"].as_str().unwrap().to_lowercase(), "{name}");
    }
}

#[test]
fn invalid_examples_fail_the_schema_and_name_the_field() {
    let validator = validator();
    let invalid = examples("invalid");
    assert!(invalid.len() >= 10);
    for (name, body) in invalid {
        // Files are named FIELD--what.json.
        let field = name.split("--").next().unwrap();
        let value: Value = serde_json::from_str(&body).unwrap();
        assert!(!validator.is_valid(&value), "{name} should be invalid under the schema");
        let err = Envelope::parse(&body).expect_err(&name);
        assert_eq!(err.field(), Some(field), "{name}: {err}");
        assert!(err.to_string().contains(field), "{name}: message {err:?} does not name {field}");
    }
}

#[test]
fn what_the_runtime_writes_is_valid_under_the_schema() {
    let validator = validator();
    let mut envelope = Envelope::new(
        "app.schedules.user_task.process_users",
        vec![serde_json::json!(["u1"]), "x".into()],
        Default::default(),
    );
    envelope.expires = Some(chrono::Utc::now());
    envelope.parent_id = Some(uuid::Uuid::new_v4());
    let value: Value = serde_json::from_str(&envelope.to_body()).unwrap();
    let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
}
