//! Creating the AWS resources of a manifest where they are missing: the task table (and the
//! Celery result table when the manifest writes Celery results) and each queue with its DLQ and
//! redrive policy. For the emulator and first trials; a deployment uses
//! the infrastructure template, built from the same definitions.

use aws_sdk_sqs::types::QueueAttributeName;

use crate::manifest::Manifest;
use crate::store::StoreError;
use crate::store::dynamodb::DynamoStore;

/// What failed while creating resources.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProvisionError {
    /// The table.
    #[error("cannot create the task table: {0}")]
    Table(#[from] StoreError),
    /// The Celery result table.
    #[error("cannot create the Celery result table {table}: {message}")]
    CeleryTable {
        /// Table name.
        table: String,
        /// The service's message.
        message: String,
    },
    /// A queue.
    #[error("cannot create queue {queue}: {message}")]
    Queue {
        /// Queue name.
        queue: String,
        /// The service's message.
        message: String,
    },
}

/// Creates the table and every queue (with DLQ and redrive) of `manifest` that is missing.
pub async fn create_missing(
    manifest: &Manifest,
    dynamodb: &aws_sdk_dynamodb::Client,
    sqs: &aws_sdk_sqs::Client,
) -> Result<(), ProvisionError> {
    DynamoStore::new(dynamodb.clone(), manifest.table_name()).create_table().await?;
    if let Some(config) = manifest.celery_results() {
        let table = config.table.clone();
        crate::celery::results::CeleryResultWriter::new(dynamodb.clone(), config)
            .create_table()
            .await
            .map_err(|e| ProvisionError::CeleryTable { table, message: e.to_string() })?;
    }
    for queue in manifest.queue_names() {
        let settings = manifest.queue_settings(queue);
        let module = manifest.module_for_queue(queue).map(|(_, m)| m.clone());
        let dlq_name = manifest.sqs_dlq_name(queue);
        let queue_error = |name: &str, e: &dyn std::error::Error| ProvisionError::Queue {
            queue: name.to_owned(),
            message: crate::queue::sqs::aws_error_chain(e),
        };
        let fifo = |request: aws_sdk_sqs::operation::create_queue::builders::CreateQueueFluentBuilder| {
            if settings.fifo { request.attributes(QueueAttributeName::FifoQueue, "true") } else { request }
        };
        let dlq_url = fifo(sqs.create_queue())
            .queue_name(&dlq_name)
            .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
            .send()
            .await
            .map_err(|e| queue_error(&dlq_name, &e))?
            .queue_url
            .unwrap_or_default();
        let dlq_arn = sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| queue_error(&dlq_name, &e))?
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .unwrap_or_default();
        let redrive =
            serde_json::json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": settings.max_receive_count });
        let visibility = module.map_or(360, |m| m.visibility_timeout().as_secs());
        let name = manifest.sqs_queue_name(queue);
        fifo(sqs.create_queue())
            .queue_name(&name)
            .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
            .attributes(QueueAttributeName::VisibilityTimeout, visibility.to_string())
            .send()
            .await
            .map_err(|e| queue_error(&name, &e))?;
    }
    Ok(())
}
