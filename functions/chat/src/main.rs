//! The chat module's Lambda function.

#[tokio::main]
async fn main() -> Result<(), taskbeat::lambda::Error> {
    taskbeat::lambda::run(taskbeat_chat::registry(), include_str!("../../../taskbeat.toml")).await
}
