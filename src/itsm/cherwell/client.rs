//! Sending a [`Request`] to the Cherwell REST API and turning its answer into a value or a [`Failure`].
//!
//! CSM answers errors in two ways: an HTTP error status, and HTTP 200 with `hasError: true`, `errorCode`,
//! `errorMessage` (and, for saves, `fieldValidationErrors`) in the body. Both are read here; saves' field
//! errors are read by the caller, which knows the field names.

use std::time::Duration;

use reqwest::header::ACCEPT;
use serde_json::Value;

use super::auth::Auth;
use super::requests::Request;
use crate::http::retry_after;
use crate::itsm::ItsmError;
use crate::itsm::limit::Limiter;

/// Why a call failed.
#[derive(Debug, Clone)]
pub enum Failure {
    Itsm(ItsmError),
    /// CSM does not know a business object or field id itsmc sent: its cached configuration is stale (an
    /// administrator changed the business object) and must be read again.
    Stale(String),
}

impl From<ItsmError> for Failure {
    fn from(error: ItsmError) -> Failure {
        Failure::Itsm(error)
    }
}

impl From<Failure> for ItsmError {
    fn from(failure: Failure) -> ItsmError {
        match failure {
            Failure::Itsm(error) => error,
            Failure::Stale(message) => ItsmError::Rejected(message),
        }
    }
}

/// An HTTP answer, for callers that tell statuses apart themselves (the connection test).
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Value,
    pub text: String,
}

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

    /// Send the request and read the answer: `Ok` for a 2xx answer without `hasError`.
    pub async fn send(&self, request: &Request) -> Result<Value, Failure> {
        let answer = self.answer_reloading(request).await?;
        if (200..300).contains(&answer.status) {
            if let Some(failure) = body_error(&answer.body, 200, &describe(request)) {
                return Err(failure);
            }
            return Ok(answer.body);
        }
        Err(classify(&answer, &describe(request)))
    }

    /// [`Client::answer`]; when CSM refuses the password, it is read from Key Vault again, once, and when it
    /// changed (rotated) the request goes once more.
    pub async fn answer_reloading(&self, request: &Request) -> Result<Answer, Failure> {
        match self.answer(request).await {
            Err(Failure::Itsm(ItsmError::Auth(_))) if self.auth.reload().await => self.answer(request).await,
            answer => answer,
        }
    }

    /// Send the request with a bearer token; on a 401, renew the token and send it once more. Transport
    /// failures and token refusals are errors; any HTTP answer is returned as it came.
    pub async fn answer(&self, request: &Request) -> Result<Answer, Failure> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let url = format!("{}{}", self.base_url, request.path);
        let mut renewed = false;
        loop {
            let token = self.auth.bearer(&self.http).await?;
            let mut builder =
                self.http.request(method.clone(), &url).header(ACCEPT, "application/json").bearer_auth(token.expose());
            if !request.query.is_empty() {
                builder = builder.query(&request.query);
            }
            if let Some(body) = &request.body {
                builder = builder.json(body);
            }
            let response = self.limiter.send(builder, |e| transport_error(&describe(request), &e)).await?;
            let status = response.status().as_u16();
            if status == 401 && !renewed {
                // Expired early, or the user was logged out: a new token, once.
                self.auth.forget(&token);
                renewed = true;
                continue;
            }
            let retry = retry_after(response.headers());
            let text = response.text().await.map_err(|e| transport_error(&describe(request), &e))?;
            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
            if (200..300).contains(&status) && body.is_null() && !text.trim().is_empty() {
                return Err(Failure::Itsm(ItsmError::Transient {
                    message: format!("Cherwell's answer to {} is not JSON: {}", describe(request), snippet(&text)),
                    retry_after: None,
                }));
            }
            return Ok(Answer { status, retry_after: retry, body, text });
        }
    }
}

pub fn describe(request: &Request) -> String {
    format!("{} {}", request.method, request.path)
}

/// An error answer's message: CSM's `errorMessage` (with its `errorCode`), ASP.NET's `Message`, or the start
/// of the text.
pub fn error_text(answer: &Answer) -> String {
    let body = &answer.body;
    let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or_default();
    match (field("errorCode"), field("errorMessage"), field("Message")) {
        (code, message, _) if !message.is_empty() && !code.is_empty() => format!("{code}: {message}"),
        (_, message, _) if !message.is_empty() => message.to_string(),
        (code, _, _) if !code.is_empty() => code.to_string(),
        (_, _, message) if !message.is_empty() => message.to_string(),
        _ => snippet(&answer.text),
    }
}

fn snippet(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() { "no error message".into() } else { text.chars().take(200).collect() }
}

/// Whether CSM's error code says an id itsmc sent is unknown to it.
fn is_stale(code: &str) -> bool {
    let code = code.to_ascii_uppercase();
    code.contains("FIELDNOTFOUND") || code.contains("BUSOBNOTFOUND") || code.contains("RELATIONSHIPNOTFOUND")
}

/// A 2xx body that says it failed (`hasError`), classified by its `errorCode`.
pub fn body_error(body: &Value, status: u16, what: &str) -> Option<Failure> {
    if body.get("hasError").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    let answer = Answer { status, retry_after: None, body: body.clone(), text: String::new() };
    Some(classify(&answer, what))
}

/// A failed answer as the outbox sees it.
pub fn classify(answer: &Answer, what: &str) -> Failure {
    let code = answer.body.get("errorCode").and_then(Value::as_str).unwrap_or_default().to_ascii_uppercase();
    let message = format!("Cherwell answered {what} with HTTP {}: {}", answer.status, error_text(answer));
    if is_stale(&code) {
        return Failure::Stale(message);
    }
    // CSM names some refusals in its body whatever the status.
    let status = match code.as_str() {
        "INSUFFICIENTRIGHTS" => 403,
        "RECORDNOTFOUND" => 404,
        _ => answer.status,
    };
    let refused = [
        "check the connection's user, password and client key",
        "give the user's security group rights to view, add and edit the business object",
    ];
    Failure::Itsm(ItsmError::from_status(status, answer.retry_after, message, refused))
}

pub fn transport_error(what: &str, error: &reqwest::Error) -> Failure {
    Failure::Itsm(ItsmError::transport("Cherwell", what, error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(status: u16, body: Value) -> Answer {
        Answer { status, retry_after: Some(Duration::from_secs(3)), text: body.to_string(), body }
    }

    #[test]
    fn statuses_and_error_codes_map_to_what_the_outbox_needs() {
        let denied = json!({"Message": "Authorization has been denied for this request."});
        assert!(
            matches!(classify(&answer(401, denied), "x"), Failure::Itsm(ItsmError::Auth(m)) if m.contains("denied"))
        );
        let rights = json!({"errorCode": "INSUFFICIENTRIGHTS", "errorMessage": "no", "hasError": true});
        assert!(
            matches!(classify(&answer(403, rights), "x"), Failure::Itsm(ItsmError::Auth(m)) if m.contains("security group"))
        );
        let missing = json!({"errorCode": "RECORDNOTFOUND", "errorMessage": "Record not found", "hasError": true});
        assert!(matches!(classify(&answer(404, missing), "x"), Failure::Itsm(ItsmError::NotFound(_))));
        let field = json!({"errorCode": "FIELDNOTFOUND", "errorMessage": "Field not found", "hasError": true});
        assert!(matches!(classify(&answer(400, field), "x"), Failure::Stale(_)));
        assert!(matches!(
            classify(&answer(429, Value::Null), "x"),
            Failure::Itsm(ItsmError::Transient { retry_after: Some(d), .. }) if d.as_secs() == 3
        ));
        assert!(matches!(classify(&answer(503, Value::Null), "x"), Failure::Itsm(ItsmError::Transient { .. })));
        assert!(matches!(
            classify(&answer(400, json!({"errorMessage": "bad"})), "x"),
            Failure::Itsm(ItsmError::Rejected(_))
        ));
        assert!(body_error(&json!({"hasError": false}), 200, "x").is_none());
    }
}
