//! Building the `SqsEvent` Lambda's SQS event source mapping delivers, from received messages.

use std::collections::HashMap;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage, SqsMessageAttribute};

use crate::queue::ReceivedMessage;

/// The record attribute naming a FIFO message's group, as Lambda delivers it.
pub const MESSAGE_GROUP_ID: &str = "MessageGroupId";

/// The account id used in ARNs of local queues.
pub const LOCAL_ACCOUNT: &str = "000000000000";

/// The event for `messages` received from the queue `queue_arn` in `region`.
pub fn sqs_event(queue_arn: &str, region: &str, messages: &[ReceivedMessage]) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = messages
        .iter()
        .map(|m| {
            let mut record = SqsMessage::default();
            record.message_id = Some(m.message_id.clone());
            record.receipt_handle = Some(m.receipt_handle.clone());
            record.body = Some(m.body.clone());
            record.attributes = HashMap::from([
                ("ApproximateReceiveCount".to_owned(), m.receive_count.to_string()),
                ("SentTimestamp".to_owned(), m.sent_at.timestamp_millis().to_string()),
                ("SenderId".to_owned(), LOCAL_ACCOUNT.to_owned()),
                (
                    "ApproximateFirstReceiveTimestamp".to_owned(),
                    m.first_received_at.unwrap_or(m.sent_at).timestamp_millis().to_string(),
                ),
            ]);
            if let Some(group) = &m.group_id {
                record.attributes.insert(MESSAGE_GROUP_ID.to_owned(), group.clone());
            }
            record.message_attributes = m
                .attributes
                .iter()
                .map(|(k, v)| {
                    let mut attribute = SqsMessageAttribute::default();
                    attribute.string_value = Some(v.clone());
                    attribute.data_type = Some("String".to_owned());
                    (k.clone(), attribute)
                })
                .collect();
            record.event_source = Some("aws:sqs".to_owned());
            record.event_source_arn = Some(queue_arn.to_owned());
            record.aws_region = Some(region.to_owned());
            record
        })
        .collect();
    event
}

/// The ARN of a queue.
pub fn queue_arn(region: &str, account: &str, queue: &str) -> String {
    format!("arn:aws:sqs:{region}:{account}:{queue}")
}
