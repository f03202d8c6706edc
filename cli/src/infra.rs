//! `taskbeat infra render [--check]`: the SAM template `infra/template.yaml`, rendered from
//! the manifest beside it. Reads only the manifest: no store, no queue, no AWS call.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use taskbeat::infra::{RenderOptions, render, schedule_target};
use taskbeat::manifest::Manifest;

use crate::modules;

/// The template's place, relative to the folder of `taskbeat.toml`.
pub const TEMPLATE_PATH: &str = "infra/template.yaml";

#[derive(Debug, Args)]
pub struct InfraArgs {
    #[command(subcommand)]
    command: InfraCommand,
}

#[derive(Debug, Subcommand)]
enum InfraCommand {
    /// Write infra/template.yaml (AWS SAM) from taskbeat.toml.
    Render {
        /// Write nothing; fail if infra/template.yaml is not what the manifest renders (for CI).
        #[arg(long)]
        check: bool,
    },
}

/// Runs an `infra` command with the manifest found as every command finds it.
pub fn run(args: InfraArgs, explicit_manifest: Option<&Path>) -> Result<i32> {
    let (manifest, origin, path) = crate::find_manifest(explicit_manifest)?;
    let path = path.ok_or_else(|| {
        anyhow!(
            "no taskbeat.toml here or in a parent folder: the template is rendered beside the project's \
             manifest; run this in the repository or pass --manifest PATH"
        )
    })?;
    let root = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let root = if root.as_os_str().is_empty() { PathBuf::from(".") } else { root };
    let InfraCommand::Render { check } = args.command;
    check_schedule_tasks(&manifest)?;
    let template = render(&manifest, &RenderOptions::default()).with_context(|| format!("cannot render {origin}"))?;
    let text = template.to_yaml();
    let target = root.join(TEMPLATE_PATH);
    let current = match std::fs::read_to_string(&target) {
        Ok(current) => Some(current),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", target.display())),
    };
    if check {
        return match current {
            Some(current) if current == text => {
                eprintln!("{} is up to date with {origin}", target.display());
                Ok(0)
            }
            Some(current) => bail!(
                "{} is stale: it differs from what {origin} renders ({}).\n  Run `taskbeat infra render` and commit the result.",
                target.display(),
                first_difference(&current, &text)
            ),
            None => bail!("{} is missing.\n  Run `taskbeat infra render` and commit the result.", target.display()),
        };
    }
    if current.as_deref() == Some(text.as_str()) {
        eprintln!("{} is up to date with {origin}", target.display());
        return Ok(0);
    }
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&target, &text).with_context(|| format!("cannot write {}", target.display()))?;
    let resources = match template.root().get("Resources") {
        Some(taskbeat::infra::Node::Map(entries)) => entries.len(),
        _ => 0,
    };
    eprintln!("wrote {} ({resources} resources) from {origin}", target.display());
    Ok(0)
}

/// A schedule whose task the target module does not have would dead-letter every firing:
/// refuse it here, where the modules linked into this binary are known.
fn check_schedule_tasks(manifest: &Manifest) -> Result<()> {
    for (name, spec) in &manifest.schedules {
        let target = schedule_target(manifest, name, spec)?;
        let Some(module) = manifest.modules.get(&target.module) else { continue };
        let Some(registry) = modules::registry_for(&module.crate_name) else { continue };
        if registry.get(&spec.task).is_none() {
            let mut known: Vec<&str> = registry.names().collect();
            known.sort_unstable();
            bail!(
                "schedule `{name}` sends task `{}` to queue `{}`, but module `{}` ({}) has no such task; it has:\n  {}",
                spec.task,
                target.queue,
                target.module,
                module.crate_name,
                known.join("\n  ")
            );
        }
    }
    Ok(())
}

/// Where two texts first differ, for the stale-template message.
fn first_difference(current: &str, rendered: &str) -> String {
    let mut current_lines = current.lines();
    let mut rendered_lines = rendered.lines();
    for number in 1.. {
        match (current_lines.next(), rendered_lines.next()) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(a), Some(b)) => return format!("line {number}: has `{}`, renders `{}`", a.trim(), b.trim()),
            (Some(_), None) => return format!("line {number}: has lines the manifest does not render"),
            (None, Some(b)) => return format!("line {number}: lacks `{}`", b.trim()),
            (None, None) => break,
        }
    }
    "line endings differ".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_first_difference() {
        assert_eq!(first_difference("a\nb\n", "a\nc\n"), "line 2: has `b`, renders `c`");
        assert_eq!(first_difference("a\n", "a\nb\n"), "line 2: lacks `b`");
        assert_eq!(first_difference("a\nb\n", "a\n"), "line 2: has lines the manifest does not render");
        assert_eq!(first_difference("a\r\n", "a\n"), "line endings differ");
    }
}
