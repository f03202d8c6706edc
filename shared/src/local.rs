//! `taskbeat local`: one worker per module polling its queue, building the `SqsEvent` Lambda
//! would deliver, calling the same batch handler, and deleting what the batch response says is
//! done (as the event source mapping does). The beat ([`beat`]) fires the manifest's schedules.

pub mod beat;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::event::{LOCAL_ACCOUNT, queue_arn, sqs_event};
use crate::handler::BatchHandler;
use crate::queue::TaskQueue;

/// The region put in local events.
pub const LOCAL_REGION: &str = "local";

/// Where the runtime is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Receiving and running.
    Running,
    /// Not receiving; in-flight batches finish.
    Draining,
    /// Stop now; in-flight messages go back to their queue.
    Abandon,
}

/// One module's worker.
#[derive(Debug, Clone)]
pub struct LocalWorker {
    /// Module name, for logs.
    pub module: String,
    /// The queue it polls.
    pub queue: Arc<dyn TaskQueue>,
    /// The module's batch handler.
    pub handler: BatchHandler,
    /// Records per batch.
    pub batch_size: usize,
    /// Batches at once (Lambda's concurrent invocations).
    pub concurrency: usize,
    /// The function timeout: each batch's deadline.
    pub timeout: Duration,
    /// How long a received message stays hidden.
    pub visibility_timeout: Duration,
    /// The queue's ARN in events.
    pub arn: String,
}

impl LocalWorker {
    /// The worker of a manifest module, as Lambda's event source would run it: batches of at
    /// most 10 (an SQS receive), the module's concurrency, timeout and visibility timeout.
    pub fn for_module(
        name: &str,
        module: &crate::manifest::Module,
        queue: Arc<dyn TaskQueue>,
        handler: BatchHandler,
        arn: String,
    ) -> Self {
        LocalWorker {
            module: name.to_owned(),
            queue,
            handler,
            batch_size: usize::from(module.batch_size.min(10)),
            concurrency: usize::from(module.max_concurrency),
            timeout: module.timeout(),
            visibility_timeout: module.visibility_timeout(),
            arn,
        }
    }

    /// The ARN local events carry for a queue.
    pub fn local_arn(queue: &str) -> String {
        queue_arn(LOCAL_REGION, LOCAL_ACCOUNT, queue)
    }
}

/// Runs every worker until the phase leaves `Running` (then drains or abandons as told).
pub async fn run(workers: Vec<LocalWorker>, phase: watch::Receiver<Phase>) {
    let mut pollers = JoinSet::new();
    for worker in workers {
        for _ in 0..worker.concurrency.max(1) {
            let worker = worker.clone();
            let phase = phase.clone();
            pollers.spawn(async move { poll(worker, phase).await });
        }
    }
    while pollers.join_next().await.is_some() {}
}

async fn poll(worker: LocalWorker, mut phase: watch::Receiver<Phase>) {
    loop {
        if *phase.borrow() != Phase::Running {
            return;
        }
        let received = tokio::select! {
            _ = phase.changed() => continue,
            received = worker.queue.receive(worker.batch_size, Duration::from_secs(1), worker.visibility_timeout) => received,
        };
        let messages = match received {
            Ok(messages) if messages.is_empty() => continue,
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(module = %worker.module, error = %e, "receive failed; trying again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let event = sqs_event(&worker.arn, LOCAL_REGION, &messages);
        let deadline = Instant::now() + worker.timeout;
        let run = worker.handler.handle(event, Some(deadline));
        tokio::pin!(run);
        let response = loop {
            tokio::select! {
                response = &mut run => break Some(response),
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow() == Phase::Abandon {
                        break None;
                    }
                }
            }
        };
        let Some(response) = response else {
            worker.handler.release_interrupted(&messages).await;
            for message in &messages {
                let _ = worker.queue.change_visibility(&message.receipt_handle, Duration::ZERO).await;
            }
            tracing::warn!(module = %worker.module, records = messages.len(), "abandoned in-flight batch; its messages are back in the queue");
            return;
        };
        let failed: Vec<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
        let done: Vec<String> = messages
            .iter()
            .filter(|m| !failed.contains(&m.message_id.as_str()))
            .map(|m| m.receipt_handle.clone())
            .collect();
        if let Err(e) = worker.queue.delete(&done).await {
            // Not lost: they come back after the visibility timeout and the store's claim
            // acknowledges finished tasks without running them again.
            tracing::warn!(module = %worker.module, error = %e, "delete failed");
        }
    }
}
