//! Sending a [`Request`] to the Cireson portal and turning its answer into a value or an [`ItsmError`].
//!
//! The portal is an ASP.NET Web API application: its errors come as `{"Message": ..., "ExceptionMessage": ...}`
//! with the HTTP status, while `Commit` answers 200 with `{"success": false, "exception": ...}` when SCSM refused
//! the change (the connector reads that).

use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use serde_json::Value;

use super::auth::{Auth, SignInError};
use super::requests::Request;
use crate::http::retry_after;
use crate::itsm::limit::Limiter;
use crate::itsm::{Diagnosis, ItsmError};

pub struct Client {
    pub base_url: String,
    http: reqwest::Client,
    auth: Auth,
    limiter: Limiter,
}

/// What went wrong with one request, kept apart for the connection test.
enum Failure {
    Transport(reqwest::Error),
    /// The connection's limits held the request back (see [`Limiter`]).
    Held(ItsmError),
    SignIn(SignInError),
    Status {
        status: u16,
        retry: Option<Duration>,
        body: String,
    },
}

impl From<ItsmError> for Failure {
    fn from(error: ItsmError) -> Failure {
        Failure::Held(error)
    }
}

impl Client {
    pub fn new(base_url: String, http: reqwest::Client, auth: Auth, limiter: Limiter) -> Client {
        Client { base_url, http, auth, limiter }
    }

    /// Send the request and read its JSON answer. A refused token is renewed once; a refused password (or one
    /// refused a short while ago, not tried again yet) is read from Key Vault again once, and when it changed
    /// (rotated) the request goes once more.
    pub async fn send(&self, request: &Request) -> Result<Value, ItsmError> {
        let answer = match self.send_once(request).await {
            Err(failure) if is_refusal(&failure) && self.auth.reload().await => self.send_once(request).await,
            answer => answer,
        };
        let body = answer.map_err(|failure| self.error(request, failure))?;
        if body.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&body).map_err(|e| ItsmError::Transient {
            message: format!("the Cireson portal's answer to {} could not be read: {e}", describe(request)),
            retry_after: None,
        })
    }

    /// One request with the current token; on a 401, the token renewed and the request sent once more.
    async fn send_once(&self, request: &Request) -> Result<String, Failure> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let url = format!("{}{}", self.base_url, request.path);
        let mut token = self.auth.token(&self.http).await.map_err(Failure::SignIn)?;
        let mut renewed = false;
        loop {
            let mut authorization = HeaderValue::from_str(&format!("Token {}", token.expose())).map_err(|_| {
                let error = ItsmError::Auth("the Cireson portal's token is not a valid HTTP header value".into());
                Failure::SignIn(SignInError::Failed(error, None))
            })?;
            authorization.set_sensitive(true);
            let mut builder = self
                .http
                .request(method.clone(), &url)
                .header(ACCEPT, "application/json")
                .header(AUTHORIZATION, authorization);
            if !request.query.is_empty() {
                builder = builder.query(&request.query);
            }
            if let Some(body) = &request.body {
                builder = builder.json(body);
            }
            let response = self.limiter.send(builder, Failure::Transport).await?;
            let status = response.status().as_u16();
            if status == 401 && !renewed {
                token = self.auth.renew(&self.http, Some(&token)).await.map_err(Failure::SignIn)?;
                renewed = true;
                continue;
            }
            let retry = retry_after(response.headers());
            let body = response.text().await.map_err(Failure::Transport)?;
            if (200..300).contains(&status) {
                return Ok(body);
            }
            return Err(Failure::Status { status, retry, body });
        }
    }

    fn error(&self, request: &Request, failure: Failure) -> ItsmError {
        match failure {
            Failure::Transport(e) => transport_error(&describe(request), &e),
            Failure::Held(e) => e,
            Failure::SignIn(e) => e.into(),
            Failure::Status { status, retry, body } => classify(status, retry, &body, &describe(request)),
        }
    }

    /// One request of the connection test, its failure told as an operator needs it (`what` names what was read).
    pub async fn probe(&self, request: &Request, what: &str) -> Result<Value, Diagnosis> {
        let failure = match self.send_once(request).await {
            Ok(body) if body.trim().is_empty() => return Ok(Value::Null),
            Ok(body) => match serde_json::from_str(&body) {
                Ok(value) => return Ok(value),
                Err(_) => {
                    return Err(Diagnosis::problem(
                        "unexpected",
                        format!(
                            "{} answered {what} with something that is not JSON; is ITSMC_URL the Cireson portal's \
                             base URL?",
                            self.base_url
                        ),
                    ));
                }
            },
            Err(failure) => failure,
        };
        Err(match failure {
            Failure::Transport(e) => Diagnosis::unreachable(&self.base_url, &e),
            Failure::Held(e) => Diagnosis::problem("rate_limited", e.to_string()),
            Failure::SignIn(SignInError::Refused(status, reason)) => Diagnosis::problem(
                "wrong_credentials",
                format!(
                    "the Cireson portal refused to sign in (HTTP {status}: {reason}); check the user name (DOMAIN\\user) \
                     and password"
                ),
            ),
            Failure::SignIn(SignInError::Held(error)) => Diagnosis::problem("wrong_credentials", error.to_string()),
            Failure::SignIn(SignInError::Failed(error, status)) => match (error, status) {
                (ItsmError::Transient { message, retry_after }, Some(429)) => rate_limited(&message, retry_after),
                (ItsmError::Transient { message, .. }, Some(_)) => Diagnosis::problem("unavailable", message),
                (ItsmError::Transient { message, .. }, None) => Diagnosis::problem(
                    "unreachable",
                    format!("{message}; check ITSMC_URL and that this host can reach the portal"),
                ),
                (other, _) => Diagnosis::problem("wrong_credentials", other.to_string()),
            },
            Failure::Status { status, retry, body } => {
                let reason = error_text(&body);
                match status {
                    401 => Diagnosis::problem(
                        "wrong_credentials",
                        format!("the Cireson portal refused a fresh token reading {what} ({reason})"),
                    ),
                    403 => Diagnosis::problem(
                        "missing_role",
                        format!(
                            "the user may sign in but not read {what} ({reason}); make it a portal analyst with \
                             access to incidents and change requests (SCSM's Incident Resolvers / Change Managers)"
                        ),
                    ),
                    404 => Diagnosis::problem(
                        "unexpected",
                        format!(
                            "{} has no {what} (HTTP 404: {reason}); is ITSMC_URL the portal's base URL?",
                            self.base_url
                        ),
                    ),
                    429 => rate_limited(&reason, retry),
                    500..=599 => Diagnosis::problem(
                        "unavailable",
                        format!("the Cireson portal answered HTTP {status} reading {what}: {reason}"),
                    ),
                    _ => Diagnosis::problem(
                        "unexpected",
                        format!("the Cireson portal answered HTTP {status} reading {what}: {reason}"),
                    ),
                }
            }
        })
    }
}

fn rate_limited(reason: &str, retry: Option<Duration>) -> Diagnosis {
    Diagnosis::problem(
        "rate_limited",
        format!(
            "the Cireson portal (or a proxy before it) limits this client's requests{} ({reason}); sync less often",
            retry.map(|d| format!(" (retry after {} s)", d.as_secs())).unwrap_or_default()
        ),
    )
}

fn is_refusal(failure: &Failure) -> bool {
    matches!(
        failure,
        Failure::SignIn(SignInError::Refused(..) | SignInError::Held(_)) | Failure::Status { status: 401, .. }
    )
}

fn describe(request: &Request) -> String {
    format!("{} {}", request.method, request.path)
}

/// The reason in an error body: ASP.NET Web API's `ExceptionMessage`/`Message`, a commit's `exception`, else the
/// start of the text.
pub fn error_text(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let field = |name: &str| {
        parsed.as_ref().and_then(|v| v.get(name)).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
    };
    let text = field("ExceptionMessage").or_else(|| field("exception")).or_else(|| field("Message"));
    match text {
        Some(text) => crate::itsm::truncate(text, 300),
        None if parsed.as_ref().is_some_and(Value::is_string) => {
            crate::itsm::truncate(parsed.as_ref().and_then(Value::as_str).unwrap_or_default(), 300)
        }
        None if body.trim().is_empty() => "no error message".into(),
        None => crate::itsm::truncate(body.trim(), 200),
    }
}

/// An HTTP error as the outbox needs it. The portal answers every unhandled exception with 500, so its ASP.NET
/// `ExceptionType` says more than the status: an argument SCSM refuses (a template or projection id it does not
/// have), an object it cannot find or a criteria it cannot parse fails the same way every time, so it is
/// `Rejected`; any other 5xx is an outage and retried.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &str, what: &str) -> ItsmError {
    let reason = error_text(body);
    if status == 500
        && let Some(kind) = exception_type(body).filter(|kind| is_refusal_type(kind))
    {
        return ItsmError::Rejected(format!("the Cireson portal refused {what} ({kind}): {reason}"));
    }
    let message = format!("the Cireson portal answered {what} with HTTP {status}: {reason}");
    let refused = "check the connection's user name and password, and that the user is a portal analyst with \
                   rights on incidents";
    ItsmError::from_status(status, retry_after, message, [refused, refused])
}

/// ASP.NET Web API's `ExceptionType` of an error body (`System.ArgumentException`...).
fn exception_type(body: &str) -> Option<String> {
    let parsed: Value = serde_json::from_str(body).ok()?;
    parsed.get("ExceptionType").and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

/// Exceptions that say the request itself is wrong: retrying it cannot help.
fn is_refusal_type(kind: &str) -> bool {
    let name = kind.rsplit('.').next().unwrap_or(kind);
    name.starts_with("Argument") || name.contains("ObjectNotFound") || name.contains("Criteria")
}

pub fn transport_error(what: &str, error: &reqwest::Error) -> ItsmError {
    ItsmError::transport("Cireson portal", what, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_map_to_what_the_outbox_needs() {
        let body = r#"{"Message":"An error has occurred.","ExceptionMessage":"Cannot find template","ExceptionType":"System.ArgumentException"}"#;
        assert!(
            matches!(classify(500, None, body, "x"), ItsmError::Rejected(message) if message.contains("Cannot find template"))
        );
        for kind in [
            "Microsoft.EnterpriseManagement.Common.ObjectNotFoundException",
            "Microsoft.EnterpriseManagement.Common.InvalidCriteriaException",
            "System.ArgumentNullException",
        ] {
            let body = json!({ "Message": "An error has occurred.", "ExceptionMessage": "no such thing", "ExceptionType": kind });
            assert!(
                matches!(classify(500, None, &body.to_string(), "x"), ItsmError::Rejected(m) if m.contains("no such thing")),
                "{kind}"
            );
        }
        let outage = r#"{"Message":"An error has occurred.","ExceptionMessage":"Timeout expired","ExceptionType":"System.Data.SqlClient.SqlException"}"#;
        assert!(
            matches!(classify(500, None, outage, "x"), ItsmError::Transient { message, .. } if message.contains("Timeout expired"))
        );
        assert!(matches!(classify(503, None, body, "x"), ItsmError::Transient { .. }), "a proxy's 503 stays an outage");
        assert!(
            matches!(classify(429, Some(Duration::from_secs(3)), "", "x"), ItsmError::Transient { retry_after: Some(d), .. } if d.as_secs() == 3)
        );
        assert!(
            matches!(classify(401, None, r#"{"Message":"Authorization has been denied for this request."}"#, "x"), ItsmError::Auth(m) if m.contains("denied"))
        );
        assert!(matches!(classify(404, None, "", "x"), ItsmError::NotFound(_)));
        assert!(matches!(classify(400, None, "", "x"), ItsmError::Rejected(_)));
        assert_eq!(error_text(r#"{"success":false,"exception":"Invalid enumeration"}"#), "Invalid enumeration");
    }
}
