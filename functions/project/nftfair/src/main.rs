//! The nftfair module's Lambda function.

#[tokio::main]
async fn main() -> Result<(), taskbeat::lambda::Error> {
    taskbeat::lambda::run(taskbeat_nftfair::registry(), include_str!("../../../../taskbeat.toml")).await
}
