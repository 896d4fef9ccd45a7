//! `POST /api/alert`: read the body (at most 1 MiB) and the query string, hand them to the intake, and
//! turn its answer into the status codes an action group understands.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::error;
use crate::intake::{Action, Intake, IntakeError, Options};

/// Action groups send far less; anything bigger is not an alert.
pub const MAX_BODY: usize = 1024 * 1024;

fn options(query: Option<&str>) -> Options {
    let mut options = Options::default();
    // Unknown parameters are ignored: the Functions host adds `code` (the function key).
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let value = Some(value.into_owned()).filter(|v| !v.is_empty());
        match name.as_ref() {
            "connection" => options.connection = value,
            "workItemType" => options.work_item_type = value,
            "template" => options.template = value,
            "grouping" => options.grouping = value,
            _ => {}
        }
    }
    options
}

pub async fn post_alert(State(intake): State<Arc<Intake>>, RawQuery(query): RawQuery, body: Body) -> Response {
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is over {MAX_BODY} bytes; an Azure Monitor alert is far smaller"),
            );
        }
    };
    match intake.accept(&body, &options(query.as_deref())).await {
        Ok(outcome) => {
            let status = if outcome.action == Action::Queued { StatusCode::ACCEPTED } else { StatusCode::OK };
            (status, axum::Json(outcome)).into_response()
        }
        Err(IntakeError::BadRequest { code, message }) => error(StatusCode::BAD_REQUEST, code, message),
        Err(e @ IntakeError::Rejected(_)) => error(StatusCode::BAD_GATEWAY, "itsm_rejected", e.to_string()),
        Err(e @ IntakeError::TooLarge(_)) => error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.to_string()),
        Err(e @ IntakeError::Unavailable(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::options;

    #[test]
    fn query_options_ignore_the_function_key() {
        let o = options(Some("code=secret%3D%3D&connection=prod&workItemType=Event&grouping=rule&template=db"));
        assert_eq!(o.connection.as_deref(), Some("prod"));
        assert_eq!(o.work_item_type.as_deref(), Some("Event"));
        assert_eq!(o.grouping.as_deref(), Some("rule"));
        assert_eq!(o.template.as_deref(), Some("db"));
        assert_eq!(options(None), Default::default());
    }
}
