//! The manifest's beat schedules of this module's tasks bind to their parameters and types (the
//! tasks are not run: their targets are placeholders on the internet).

use taskbeat::manifest::Manifest;
use taskbeat::registry::bind_args;
use taskbeat_alert::{CHECK_HEALTH, CHECK_QUEUES, CheckHealth, CheckQueues, registry};

#[test]
fn scheduled_calls_bind_to_the_tasks() {
    let manifest = Manifest::parse(include_str!("../../../../taskbeat.toml"), "taskbeat.toml").unwrap();
    let registry = registry();
    let mut bound = 0;
    for (name, schedule) in &manifest.schedules {
        let Some(spec) = registry.get(&schedule.task) else { continue };
        let args = bind_args(&schedule.task, spec.params(), schedule.args.clone(), schedule.kwargs.clone())
            .unwrap_or_else(|e| panic!("schedule `{name}`: {e}"));
        let typed = match schedule.task.as_str() {
            CHECK_HEALTH => serde_json::from_value::<CheckHealth>(args).map(|a| assert!(!a.targets.is_empty())),
            CHECK_QUEUES => serde_json::from_value::<CheckQueues>(args).map(drop),
            _ => Ok(()),
        };
        typed.unwrap_or_else(|e| panic!("schedule `{name}` does not fit {}: {e}", schedule.task));
        bound += 1;
    }
    assert!(bound > 0, "the manifest schedules none of this module's tasks");
}
