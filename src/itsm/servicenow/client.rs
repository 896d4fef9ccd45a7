//! Sending a [`Request`] to a ServiceNow instance and turning its answer into a value or an [`ItsmError`].

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};

use crate::http::retry_after;
use serde_json::Value;

use super::auth::Auth;
use super::requests::Request;
use crate::itsm::limit::Limiter;
use crate::itsm::{Diagnosis, ItsmError};

pub struct Client {
    pub base_url: String,
    http: reqwest::Client,
    auth: Auth,
    limiter: Limiter,
}

impl Client {
    pub fn new(base_url: String, http: reqwest::Client, auth: Auth, limiter: Limiter) -> Client {
        Client { base_url, http, auth, limiter }
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Send the request. Refused credentials are read from Key Vault again, once, and when they changed
    /// (rotated) the request goes once more.
    pub async fn send(&self, request: &Request) -> Result<Value, ItsmError> {
        let body = self.send_raw(request).await?;
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).map_err(|e| ItsmError::Transient {
            message: format!("ServiceNow's answer to {} could not be read: {e}", describe(request)),
            retry_after: None,
        })
    }

    /// [`Client::send`], answering the body as it came (empty for 204), for callers that read it themselves.
    pub async fn send_raw(&self, request: &Request) -> Result<Bytes, ItsmError> {
        match self.send_once(request).await {
            Err(ItsmError::Auth(_)) if self.auth.reload().await => self.send_once(request).await,
            answer => answer,
        }
    }

    /// Send the request; on a 401 to an OAuth token, renew the token and send it once more.
    async fn send_once(&self, request: &Request) -> Result<Bytes, ItsmError> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let url = format!("{}{}", self.base_url, request.path);
        let mut renewed = false;
        loop {
            let mut builder = self.http.request(method.clone(), &url).header(ACCEPT, "application/json");
            if !request.query.is_empty() {
                builder = builder.query(&request.query);
            }
            if let Some(body) = &request.body {
                builder = builder.json(body);
            }
            let builder = self.auth.apply(&self.http, builder).await?;
            let response = self.limiter.send(builder, |e| transport_error(&describe(request), &e)).await?;
            let status = response.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && self.auth.is_oauth() && !renewed {
                self.auth.forget_access_token();
                renewed = true;
                continue;
            }
            if status.is_success() {
                if is_html(response.headers()) {
                    // A sleeping personal developer instance answers every request with a web page.
                    return Err(ItsmError::Transient {
                        message: format!(
                            "ServiceNow answered {} with a web page instead of JSON: a personal developer \
                             instance that is hibernating does this; wake it at developer.servicenow.com",
                            describe(request)
                        ),
                        retry_after: None,
                    });
                }
                return response.bytes().await.map_err(|e| transport_error(&describe(request), &e));
            }
            let retry = retry_after(response.headers());
            let body = response.text().await.unwrap_or_default();
            return Err(classify(status.as_u16(), retry, &body, &describe(request)));
        }
    }
}

impl Client {
    /// One read of `table`, classified for an operator: what is wrong and what to do (`itsmc connections
    /// test`). Unlike [`Client::send`] it keeps apart what the alert path treats alike (a refused password
    /// and a missing role are both "authentication" there).
    pub async fn probe(&self, table: &str) -> Diagnosis {
        let url = format!("{}/api/now/table/{table}", self.base_url);
        let mut renewed = false;
        loop {
            let request = self.http.get(&url).header(ACCEPT, "application/json").query(&[
                ("sysparm_limit", "1"),
                ("sysparm_fields", "sys_id"),
                ("sysparm_no_count", "true"),
            ]);
            let request = match self.auth.apply(&self.http, request).await {
                Ok(request) => request,
                Err(ItsmError::Auth(message)) => return Diagnosis::problem("wrong_credentials", message),
                Err(error) => return Diagnosis::problem("unreachable", error.to_string()),
            };
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => return Diagnosis::unreachable(&self.base_url, &e),
            };
            let status = response.status().as_u16();
            if status == 401 && self.auth.is_oauth() && !renewed {
                self.auth.forget_access_token();
                renewed = true;
                continue;
            }
            let retry = retry_after(response.headers());
            let html = is_html(response.headers());
            let body = response.text().await.unwrap_or_default();
            return match status {
                200 if html => Diagnosis::problem(
                    "hibernating",
                    format!(
                        "{} answers with a web page, not the Table API: a personal developer instance that is hibernating does this; wake it at developer.servicenow.com",
                        self.base_url
                    ),
                ),
                200 => Diagnosis::ok(format!("read {table}")),
                401 => Diagnosis::problem(
                    "wrong_credentials",
                    format!(
                        "ServiceNow refused the credentials ({}); check the user name and password (and the OAuth client id and secret)",
                        error_text(&body)
                    ),
                ),
                403 => Diagnosis::problem(
                    "missing_role",
                    format!(
                        "the user may sign in but not read {table} ({}); give it the itil role (and read access to {table})",
                        error_text(&body)
                    ),
                ),
                429 => Diagnosis::problem(
                    "rate_limited",
                    format!(
                        "ServiceNow's rate limit for this user is reached{}; raise the user's limit in Inbound REST API rate limiting, or sync less often",
                        retry.map(|d| format!(" (retry after {} s)", d.as_secs())).unwrap_or_default()
                    ),
                ),
                500..=599 => Diagnosis::problem(
                    "unavailable",
                    format!("ServiceNow answered HTTP {status}: {}", error_text(&body)),
                ),
                _ => Diagnosis::problem(
                    "unexpected",
                    format!("ServiceNow answered HTTP {status}: {}", error_text(&body)),
                ),
            };
        }
    }
}

fn is_html(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim_start().starts_with("text/html"))
}

fn describe(request: &Request) -> String {
    format!("{} {}", request.method, request.path)
}

/// ServiceNow's error envelope: `{"error": {"message", "detail"}, "status": "failure"}`.
fn error_text(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let message = error.and_then(|e| e.get("message")).and_then(Value::as_str).unwrap_or_default();
    let detail = error.and_then(|e| e.get("detail")).and_then(Value::as_str).unwrap_or_default();
    match (message.is_empty(), detail.is_empty()) {
        (false, false) => format!("{message} ({detail})"),
        (false, true) => message.to_string(),
        (true, false) => detail.to_string(),
        (true, true) => "no error message".to_string(),
    }
}

fn classify(status: u16, retry_after: Option<Duration>, body: &str, what: &str) -> ItsmError {
    let message = format!("ServiceNow answered {what} with HTTP {status}: {}", error_text(body));
    let refused = "check the connection's user name and password, and that the user has the itil role";
    ItsmError::from_status(status, retry_after, message, [refused, refused])
}

pub fn transport_error(what: &str, error: &reqwest::Error) -> ItsmError {
    ItsmError::transport("ServiceNow", what, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_what_the_outbox_needs() {
        let body = r#"{"error":{"message":"User Not Authenticated","detail":"Required to provide Auth information"},"status":"failure"}"#;
        let auth = classify(401, None, body, "GET /x");
        assert!(
            matches!(&auth, ItsmError::Auth(m) if m.contains("User Not Authenticated (Required to provide Auth information)"))
        );
        assert!(
            matches!(classify(429, Some(Duration::from_secs(3)), "", "x"), ItsmError::Transient { retry_after: Some(d), .. } if d.as_secs() == 3)
        );
        assert!(matches!(classify(503, None, "<html>", "x"), ItsmError::Transient { .. }));
        assert!(matches!(classify(404, None, "", "x"), ItsmError::NotFound(_)));
        assert!(matches!(classify(400, None, "", "x"), ItsmError::Rejected(_)));
    }
}
