//! `taskbeat infra render [--check]` as CI and a person use it: writing the template beside the
//! manifest, catching a stale one, refusing a schedule no module can run.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::{taskbeat, text};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn repo_manifest() -> String {
    std::fs::read_to_string(repo_root().join("taskbeat.toml")).unwrap()
}

#[test]
fn render_writes_the_template_and_check_catches_a_stale_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("taskbeat.toml"), repo_manifest()).unwrap();
    let template = dir.path().join("infra/template.yaml");

    let missing = taskbeat(dir.path(), &["infra", "render", "--check"]);
    assert!(!missing.status.success());
    let message = text(&missing.stderr);
    assert!(message.contains("missing") && message.contains("Run `taskbeat infra render`"), "{message}");
    assert!(!template.exists(), "--check writes nothing");

    let rendered = taskbeat(dir.path(), &["infra", "render"]);
    assert!(rendered.status.success(), "{}", text(&rendered.stderr));
    assert!(text(&rendered.stderr).contains("wrote"), "{}", text(&rendered.stderr));
    // The same manifest renders the same bytes in another process: the committed template.
    let written = std::fs::read_to_string(&template).unwrap();
    let committed = std::fs::read_to_string(repo_root().join("infra/template.yaml")).unwrap();
    assert!(written == committed, "infra/template.yaml is stale: run `taskbeat infra render` and commit it");
    let fresh = taskbeat(dir.path(), &["infra", "render", "--check"]);
    assert!(fresh.status.success(), "{}", text(&fresh.stderr));

    // A new schedule changes the template; --check says so and leaves the file alone.
    let extra = "\n[schedules.extra_health_check]\ntask = \"app.schedules.alert.check_health\"\nexpression = \"rate(2 hours)\"\n";
    std::fs::write(dir.path().join("taskbeat.toml"), repo_manifest() + extra).unwrap();
    let stale = taskbeat(dir.path(), &["infra", "render", "--check"]);
    assert_eq!(stale.status.code(), Some(1));
    let message = text(&stale.stderr);
    assert!(
        message.contains("stale") && message.contains("line ") && message.contains("Run `taskbeat infra render`"),
        "{message}"
    );
    assert_eq!(std::fs::read_to_string(&template).unwrap(), written, "--check writes nothing");

    let again = taskbeat(dir.path(), &["infra", "render"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let updated = std::fs::read_to_string(&template).unwrap();
    assert!(updated.contains("Name: taskbeat-extra_health_check") && updated.contains("rate(2 hours)"));
    assert!(taskbeat(dir.path(), &["infra", "render", "--check"]).status.success());
}

#[test]
fn render_refuses_a_schedule_whose_task_its_module_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let typo = "\n[schedules.typo]\ntask = \"app.schedules.alert.chek_health\"\nexpression = \"rate(1 hour)\"\n";
    std::fs::write(dir.path().join("taskbeat.toml"), repo_manifest() + typo).unwrap();
    let refused = taskbeat(dir.path(), &["infra", "render"]);
    assert!(!refused.status.success());
    let message = text(&refused.stderr);
    assert!(
        message.contains("schedule `typo`") && message.contains("chek_health") && message.contains("module `alert`"),
        "{message}"
    );
    assert!(message.contains("app.schedules.alert.check_health"), "lists the tasks it has: {message}");
    assert!(!dir.path().join("infra/template.yaml").exists());
}

#[test]
fn render_needs_a_manifest_file() {
    let dir = tempfile::tempdir().unwrap();
    let refused = taskbeat(dir.path(), &["infra", "render"]);
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("--manifest"), "{}", text(&refused.stderr));
    assert!(!dir.path().join("infra").exists());
}

/// The template builds each function from the [[bin]] named after its module.
#[test]
fn every_module_has_a_binary_named_after_it() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--no-deps", "--offline", "--format-version", "1", "--manifest-path"])
        .arg(repo_root().join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let manifest = taskbeat::manifest::Manifest::parse(&repo_manifest(), "taskbeat.toml").unwrap();
    for (name, module) in &manifest.modules {
        let package = metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == module.crate_name.as_str())
            .unwrap_or_else(|| panic!("module {name}: no workspace crate {}", module.crate_name));
        let bins: Vec<&str> = package["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(bins.contains(&name.as_str()), "crate {} has bins {bins:?}, none named {name}", module.crate_name);
    }
}
