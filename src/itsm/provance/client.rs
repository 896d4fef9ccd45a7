//! Sending a [`Request`] to Dataverse's Web API and turning its answer into bytes or an [`ItsmError`].
//!
//! Every request carries the headers the Web API documentation asks for (`Accept: application/json`,
//! `OData-MaxVersion`/`OData-Version: 4.0`) and a bearer token for the environment. A 401 renews the token once;
//! a refusal after that reads a Key Vault client secret again, once. Errors are Dataverse's
//! `{"error": {"code", "message"}}`; 429 (service protection limits) and 5xx are transient, with the
//! `Retry-After` Dataverse gives.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use serde_json::Value;

use super::auth::{Auth, TokenError};
use super::requests::{API, Request};
use crate::config::Secret;
use crate::http::retry_after;
use crate::itsm::limit::Limiter;
use crate::itsm::{Diagnosis, ItsmError};

pub struct Client {
    /// The environment URL, e.g. `https://contoso.crm.dynamics.com`.
    pub url: String,
    /// `{url}/api/data/v9.2`.
    api: String,
    http: reqwest::Client,
    auth: Auth,
    limiter: Limiter,
}

/// A successful answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self, what: &str) -> Result<Value, ItsmError> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|e| ItsmError::Transient {
            message: format!("Dataverse's answer to {what} could not be read: {e}"),
            retry_after: None,
        })
    }
}

impl Client {
    pub fn new(url: String, http: reqwest::Client, auth: Auth, limiter: Limiter) -> Client {
        Client { api: format!("{url}{API}"), url, http, auth, limiter }
    }

    /// Send the request; `allowed` statuses (412 for a PATCH with `If-Match`) come back as answers, not errors.
    pub async fn send(&self, request: &Request, allowed: &[u16]) -> Result<Answer, ItsmError> {
        let mut renewed = false;
        let mut reloaded = false;
        loop {
            let token = match self.auth.token().await {
                Ok(token) => token,
                Err(TokenError::Refused(_)) if !reloaded && self.auth.reload().await => {
                    reloaded = true;
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            let builder = self.request(request, &token)?;
            let response = self.limiter.send(builder, |e| transport_error(request, &e)).await?;
            let status = response.status().as_u16();
            if status == 401 && !renewed {
                // Expired, revoked, or signed for another environment: sign in anew, once.
                self.auth.forget(&token).await;
                renewed = true;
                continue;
            }
            if status == 401 && !reloaded && self.auth.reload().await {
                reloaded = true;
                continue;
            }
            if (200..300).contains(&status) || allowed.contains(&status) {
                let body = response.bytes().await.map_err(|e| transport_error(request, &e))?;
                return Ok(Answer { status, body });
            }
            let retry = retry_after(response.headers());
            let body = response.text().await.unwrap_or_default();
            return Err(classify(status, retry, &body, &describe(request), &self.auth.who()));
        }
    }

    fn request(&self, request: &Request, token: &Secret) -> Result<reqwest::RequestBuilder, ItsmError> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let url = if request.path.starts_with("https://") || request.path.starts_with("http://") {
            // A next link: followed only into this environment's Web API, where the token belongs.
            if !request.path.starts_with(&format!("{}/", self.api)) {
                return Err(ItsmError::Rejected(format!(
                    "Dataverse named a next page outside {} ({}); not following it",
                    self.api, request.path
                )));
            }
            request.path.clone()
        } else {
            format!("{}/{}", self.api, request.path)
        };
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| ItsmError::Auth("the Entra token is not a valid HTTP header value".into()))?;
        authorization.set_sensitive(true);
        let mut builder = self
            .http
            .request(method, url)
            .header(ACCEPT, "application/json")
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0")
            .header(reqwest::header::AUTHORIZATION, authorization);
        if !request.query.is_empty() {
            builder = builder.query(&request.query);
        }
        if !request.prefer.is_empty() {
            builder = builder.header("Prefer", request.prefer.join(","));
        }
        if let Some(etag) = &request.if_match {
            builder = builder.header(reqwest::header::IF_MATCH, etag.as_str());
        }
        if let Some(body) = &request.body {
            builder = builder.header(CONTENT_TYPE, "application/json; charset=utf-8").json(body);
        }
        Ok(builder)
    }

    /// What a connection test says about one read, keeping apart what the alert path treats alike.
    pub async fn probe(&self, request: &Request, what: &str) -> Diagnosis {
        let token = match self.auth.token().await {
            Ok(token) => token,
            Err(TokenError::Refused(message)) => return Diagnosis::problem("wrong_credentials", message),
            Err(TokenError::Unreachable(message)) => {
                return Diagnosis::problem(
                    "unreachable",
                    format!("{message}; check ITSMC_PROVANCE_AUTHORITY and that this host can reach it"),
                );
            }
            Err(TokenError::Unavailable(message)) => return Diagnosis::problem("unavailable", message),
        };
        let sent = match self.request(request, &token) {
            Ok(builder) => builder.send().await,
            Err(error) => return Diagnosis::problem("unexpected", error.to_string()),
        };
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Diagnosis::unreachable(&self.url, &e),
        };
        let status = response.status().as_u16();
        let retry = retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        let who = self.auth.who();
        match status {
            200..=299 => Diagnosis::ok(format!("read {what}")),
            401 => {
                self.auth.forget(&token).await;
                Diagnosis::problem(
                    "wrong_credentials",
                    format!(
                        "Dataverse refused {who}'s token for {} ({}); the app registration must be in the \
                         environment's tenant, and the token for this environment's URL",
                        self.url,
                        error_text(&body)
                    ),
                )
            }
            403 => Diagnosis::problem(
                "missing_role",
                format!(
                    "{who} may sign in but not read {what} ({}); create an application user for it in the \
                     environment (Power Platform admin center > Settings > Users + permissions > Application users) \
                     and give it a security role that reads, creates and writes cases and notes (Customer Service \
                     Representative, or Provance's own)",
                    error_text(&body)
                ),
            ),
            429 => Diagnosis::problem(
                "rate_limited",
                format!(
                    "Dataverse's service protection limits hold {who} back{} ({}); sync less often or spread the load",
                    retry.map(|d| format!(" (retry after {} s)", d.as_secs())).unwrap_or_default(),
                    error_text(&body)
                ),
            ),
            500..=599 => {
                Diagnosis::problem("unavailable", format!("Dataverse answered HTTP {status}: {}", error_text(&body)))
            }
            _ => Diagnosis::problem("unexpected", format!("Dataverse answered HTTP {status}: {}", error_text(&body))),
        }
    }
}

fn describe(request: &Request) -> String {
    let path = request.path.split('?').next().unwrap_or_default();
    format!("{} {path}", request.method)
}

/// Dataverse's `{"error": {"code", "message"}}` (its code is often empty).
pub fn error_text(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name| error.and_then(|e| e.get(name)).and_then(Value::as_str).unwrap_or_default();
    match (field("message"), field("code")) {
        ("", "") if body.trim().is_empty() => "no error message".into(),
        ("", "") => body.chars().take(300).collect(),
        (message, "") => message.to_string(),
        ("", code) => code.to_string(),
        (message, code) => format!("{message} ({code})"),
    }
}

fn classify(status: u16, retry_after: Option<Duration>, body: &str, what: &str, who: &str) -> ItsmError {
    let message = format!("Dataverse answered {what} with HTTP {status}: {}", error_text(body));
    let expired = format!(
        "Dataverse refused {who}'s token even after signing in anew: check the tenant and that the app is \
         registered in this environment's tenant"
    );
    let no_role = format!(
        "{who} needs an application user in the environment with a security role that creates and writes cases \
         and notes"
    );
    ItsmError::from_status(status, retry_after, message, [&expired, &no_role])
}

pub fn transport_error(request: &Request, error: &reqwest::Error) -> ItsmError {
    ItsmError::transport("Dataverse", &describe(request), error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_what_the_outbox_needs() {
        let limited = r#"{"error":{"code":"0x80072322","message":"Number of requests exceeded the limit of 6000 over time window of 300 seconds."}}"#;
        assert!(matches!(
            classify(429, Some(Duration::from_secs(7)), limited, "POST incidents", "app"),
            ItsmError::Transient { retry_after: Some(d), ref message } if d.as_secs() == 7 && message.contains("6000")
        ));
        assert!(matches!(classify(403, None, "", "x", "app"), ItsmError::Auth(_)));
        assert!(matches!(classify(404, None, "", "x", "app"), ItsmError::NotFound(_)));
        assert!(matches!(classify(503, None, "", "x", "app"), ItsmError::Transient { .. }));
        assert!(matches!(classify(400, None, "", "x", "app"), ItsmError::Rejected(_)));
        assert_eq!(error_text(r#"{"error":{"code":"","message":"Not there"}}"#), "Not there");
    }
}
