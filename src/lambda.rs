//! AWS Lambda: the same router as `itsmc serve`, behind lambda_http. A Function URL or API Gateway (HTTP
//! API) event becomes an HTTP request to the router and its answer the event's response; an EventBridge
//! schedule runs the timer's [`crate::timer::tick`]. `itsmc lambda` (or no command at all, when Lambda
//! sets `AWS_LAMBDA_RUNTIME_API`) runs it.
//!
//! Lambda keeps no disk between instances and freezes an instance between invocations, so state must be
//! in Table Storage ([`check_state`]), nothing may run after an answer (a delivery the alert route could not
//! finish within its budget is left to the outbox, whose retries run with the next schedule), and the
//! connector log is sent before each answer.

use std::sync::Arc;

use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, LambdaEvent, Service};
use serde::Deserialize;

use crate::App;
use crate::config::{Config, StateSettings};

/// What Lambda hands the function.
#[derive(Debug)]
pub enum Invocation {
    /// API Gateway v2 (HTTP API) or Function URL: both use the payload format 2.0.
    Http(Box<LambdaRequest>),
    /// An EventBridge (CloudWatch Events) schedule.
    Schedule { time: Option<String> },
}

impl<'de> Deserialize<'de> for Invocation {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Probe {
            source: Option<String>,
            #[serde(rename = "detail-type")]
            detail_type: Option<String>,
            time: Option<String>,
        }
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        let probe: Probe = serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?;
        if probe.source.as_deref() == Some("aws.events") && probe.detail_type.as_deref() == Some("Scheduled Event") {
            return Ok(Invocation::Schedule { time: probe.time });
        }
        if probe.detail_type.is_some() {
            return Err(serde::de::Error::custom(format!(
                "itsmc takes HTTP events and EventBridge schedules; this is an EventBridge event of type '{}' from \
                 '{}': point only the schedule rule at this function",
                probe.detail_type.unwrap_or_default(),
                probe.source.unwrap_or_default()
            )));
        }
        serde_json::from_str(raw.get()).map(|request| Invocation::Http(Box::new(request))).map_err(|_| {
            serde::de::Error::custom(
                "itsmc takes Function URL or API Gateway HTTP API (payload format 2.0) events and EventBridge \
                 schedules; this event is neither",
            )
        })
    }
}

/// Run the Lambda runtime loop: fetch invocations from `AWS_LAMBDA_RUNTIME_API` and answer them until the
/// platform ends the instance. A configuration that cannot work on Lambda is reported as an init error, so
/// it shows in the function's status and log, not as a crash loop.
pub async fn run(config: Result<Config, String>) -> Result<(), String> {
    let runtime_api = std::env::var("AWS_LAMBDA_RUNTIME_API")
        .map_err(|_| "itsmc lambda runs inside AWS Lambda, which sets AWS_LAMBDA_RUNTIME_API".to_string())?;
    let function = match start(config).await {
        Ok(app) => Arc::new(Function::new(app)),
        Err(message) => {
            report_init_error(&runtime_api, &message).await;
            return Err(message);
        }
    };
    let handler = lambda_http::service_fn(move |event: LambdaEvent<Invocation>| {
        let function = Arc::clone(&function);
        async move { function.invoke(event).await }
    });
    lambda_http::lambda_runtime::run(handler).await.map_err(|e| format!("the Lambda runtime stopped: {e}"))
}

async fn start(config: Result<Config, String>) -> Result<App, String> {
    let mut config = config?;
    config.finish_after_answer = false;
    check_state(&config)?;
    for name in ["AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION"] {
        if std::env::var(name).is_err() {
            return Err(format!("{name} is not set: Lambda sets it; run itsmc lambda only inside Lambda"));
        }
    }
    App::start(config).await
}

/// Lambda's disk is per instance and lost with it: the embedded store would give each instance a state of
/// its own, and duplicates would become work items.
pub fn check_state(config: &Config) -> Result<(), String> {
    match config.state {
        StateSettings::Embedded { .. } => Err("on AWS Lambda itsmc keeps its state in Azure Table Storage (an \
             instance's disk does not outlive it, and instances do not share it): set \
             AzureWebJobsStorage__accountName with AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or \
             AzureWebJobsStorage (a connection string)"
            .into()),
        _ => Ok(()),
    }
}

/// The app and its router, built once per instance.
pub struct Function {
    pub app: App,
    router: axum::Router,
}

impl Function {
    pub fn new(app: App) -> Function {
        let router = app.router();
        Function { app, router }
    }

    /// One invocation: an HTTP event through the router, or a schedule's tick. The answer is JSON, already
    /// serialized (the HTTP response in the shape its event source expects).
    pub async fn invoke(
        &self,
        event: LambdaEvent<Invocation>,
    ) -> Result<Box<serde_json::value::RawValue>, lambda_http::Error> {
        let LambdaEvent { payload, context } = event;
        let answer = match payload {
            Invocation::Http(request) => {
                let mut adapter = Adapter::from(self.router.clone());
                let response = adapter.call(LambdaEvent::new(*request, context)).await?;
                // Frozen after the answer and perhaps never thawed: the connector log's rows go now.
                self.app.syncer.flush_log().await;
                serde_json::value::to_raw_value(&response)?
            }
            Invocation::Schedule { time } => {
                tracing::info!(scheduled_for = time.as_deref(), "EventBridge schedule: running the timer");
                let tick = crate::timer::tick(&self.app.intake, &self.app.syncer).await?;
                for line in &tick.logs {
                    tracing::info!("{line}");
                }
                // The instance may be frozen right after this answer: the connector log goes now, not later.
                self.app.syncer.flush_log().await;
                serde_json::value::to_raw_value(&tick)?
            }
        };
        Ok(answer)
    }
}

/// Tell Lambda that initialisation failed (`POST /runtime/init/error`), with the message that says what to fix.
async fn report_init_error(runtime_api: &str, message: &str) {
    let url = format!("http://{runtime_api}/2018-06-01/runtime/init/error");
    let body = serde_json::json!({ "errorMessage": message, "errorType": "Runtime.ItsmcConfiguration" });
    let Ok(client) = crate::http::build_client(&crate::http::HttpSettings::default()) else { return };
    let sent = client
        .post(&url)
        .header("Lambda-Runtime-Function-Error-Type", "Runtime.ItsmcConfiguration")
        .json(&body)
        .send()
        .await;
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not report the init error to the Lambda runtime API");
    }
}
