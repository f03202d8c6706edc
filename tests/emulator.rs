//! The AWS emulator (moto server) the test command starts: its endpoint, an SDK configuration
//! pointing at it, and fresh resource names for each test.

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// The variable the test command sets to the emulator's URL.
pub const ENDPOINT_VAR: &str = "TASKBEAT_TEST_AWS_ENDPOINT";

/// The emulator's URL. Fails the test (not skips it) when the test command did not start one.
pub fn endpoint() -> String {
    std::env::var(ENDPOINT_VAR).unwrap_or_else(|_| {
        panic!("{ENDPOINT_VAR} is not set: run the tests with scripts/test, which starts the AWS emulator")
    })
}

/// An SDK configuration for the emulator only (dummy credentials, fixed region).
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "emulator"))
        .load()
        .await
}

/// A project name no other test uses (resource names derive from it).
pub fn unique_project(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// A one-module manifest (the user module on `default`) for a project.
pub fn user_manifest(project: &str) -> String {
    format!(
        r#"
[project]
name = "{project}"

[modules.user]
crate = "taskbeat-user"
queue = "default"
timeout = 30

[queues.default]
max_receive_count = 3
"#
    )
}
