//! The AWS usage log: JSON events in a CloudWatch Logs group, one log stream
//! per backend process.
//!
//! It only calls CreateLogStream and PutLogEvents, which is what the
//! `casey-backend-ai` policy allows; the log group itself is Terraform's.
//! Writing happens on a background task so a slow or failing CloudWatch
//! never delays a client, and a failure is logged, never fatal.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_config::SdkConfig;
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::aws::describe;
use crate::log;

/// Events waiting to be written; beyond this they are dropped (and logged).
const QUEUE: usize = 256;

/// A handle to record usage events; cheap to clone. A disabled log (no AWS
/// credentials) drops events silently.
#[derive(Clone, Debug)]
pub struct UsageLog {
    sender: Option<mpsc::Sender<Value>>,
    common: Map<String, Value>,
}

/// The writer task; `stop` makes it write what is queued and finish.
pub struct UsageWriter {
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
}

impl UsageLog {
    pub fn disabled() -> Self {
        UsageLog { sender: None, common: Map::new() }
    }

    /// Starts the writer for log group `group`, stream
    /// `casey-backend/<date>/<instance_id>`. `common` fields go into every event.
    pub fn start(
        config: &SdkConfig,
        group: &str,
        instance_id: &str,
        common: Map<String, Value>,
    ) -> (Self, UsageWriter) {
        let date: String = log::now_rfc3339().chars().take(10).collect();
        let writer = Writer {
            client: aws_sdk_cloudwatchlogs::Client::new(config),
            group: group.to_owned(),
            stream: format!("casey-backend/{date}/{instance_id}"),
            stream_ready: false,
        };
        let (sender, receiver) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let task = tokio::spawn(writer.run(receiver, stop.clone()));
        let log = UsageLog { sender: Some(sender), common };
        (log, UsageWriter { stop, task })
    }

    /// Queues event `kind` with `fields` (an object) plus the common fields.
    pub fn record(&self, kind: &str, fields: Value) {
        let Some(sender) = &self.sender else {
            return;
        };
        let mut event = Map::new();
        event.insert("event".into(), kind.into());
        event.insert("time".into(), log::now_rfc3339().into());
        event.extend(self.common.clone());
        if let Value::Object(fields) = fields {
            event.extend(fields);
        }
        if sender.try_send(Value::Object(event)).is_err() {
            log::warn("usage event dropped: the usage log queue is full or closed", json!({ "usage_event": kind }));
        }
    }
}

struct Writer {
    client: aws_sdk_cloudwatchlogs::Client,
    group: String,
    stream: String,
    stream_ready: bool,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::Receiver<Value>, stop: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                Some(event) = receiver.recv() => self.write(event).await,
                () = stop.cancelled() => break,
            }
        }
        receiver.close();
        while let Ok(event) = receiver.try_recv() {
            self.write(event).await;
        }
    }

    async fn write(&mut self, event: Value) {
        let kind = event["event"].as_str().unwrap_or_default().to_owned();
        if !self.stream_ready && !self.create_stream().await {
            return;
        }
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX));
        let log_event = InputLogEvent::builder().timestamp(millis).message(event.to_string()).build();
        let result = match log_event {
            Ok(log_event) => self
                .client
                .put_log_events()
                .log_group_name(&self.group)
                .log_stream_name(&self.stream)
                .log_events(log_event)
                .send()
                .await
                .map(|_| ())
                .map_err(|error| describe(&error)),
            Err(error) => Err(error.to_string()),
        };
        match result {
            Ok(()) => log::info(
                "usage event written",
                json!({ "usage_event": kind, "log_group": self.group, "log_stream": self.stream }),
            ),
            Err(error) => log::warn(
                "could not write the usage event to CloudWatch Logs",
                json!({ "usage_event": kind, "log_group": self.group, "error": error }),
            ),
        }
    }

    /// Creates the log stream; returns whether it exists now. Retried with the
    /// next event after a failure (e.g. the log group was not there yet).
    async fn create_stream(&mut self) -> bool {
        let result =
            self.client.create_log_stream().log_group_name(&self.group).log_stream_name(&self.stream).send().await;
        match result {
            Ok(_) => {}
            Err(error)
                if error.as_service_error().is_some_and(|error| error.is_resource_already_exists_exception()) => {}
            Err(error) => {
                log::warn(
                    "could not create the usage log stream",
                    json!({
                        "log_group": self.group,
                        "log_stream": self.stream,
                        "error": describe(&error),
                    }),
                );
                return false;
            }
        }
        self.stream_ready = true;
        log::info("usage log stream ready", json!({ "log_group": self.group, "log_stream": self.stream }));
        true
    }
}
