//! The one outbound HTTP client builder: every client itsmc makes (ITSM tools, and later Azure services)
//! comes from here, so TLS and timeouts are decided in one place.
//!
//! TLS is rustls with the platform's trust store, plus the PEM bundle named by `ITSMC_CA_FILE` for
//! instances behind a corporate CA. There is deliberately no setting that turns verification off.

use std::time::Duration;

/// Why an HTTP client could not be built; names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ITSMC_CA_FILE: cannot read {path}: {source}")]
    CaFileUnreadable { path: String, source: std::io::Error },
    #[error("ITSMC_CA_FILE: {path} holds no PEM certificate ({reason})")]
    CaFileInvalid { path: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// Settings that shape every client; read from the environment by [`crate::config`].
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Extra trust anchors (PEM), from `ITSMC_CA_FILE`.
    pub ca_file: Option<String>,
    /// Whole-request timeout; the alert path's budget is enforced separately, this bounds background work.
    pub request_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings { ca_file: None, request_timeout: Duration::from_secs(30) }
    }
}

/// Whether `url` may be plain `http://`: only to this machine (tests, Azurite, a local tunnel). Credentials,
/// tokens or the keys that decide who gets in travel to every URL itsmc is given, so anywhere else it is https.
pub fn plain_http_allowed(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

pub fn build_client(settings: &HttpSettings) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("itsmc/", env!("CARGO_PKG_VERSION")))
        .timeout(settings.request_timeout)
        .connect_timeout(Duration::from_secs(5))
        // Keep enough idle connections per host for an alert storm: opening TLS connections costs far
        // more than the requests themselves.
        .pool_max_idle_per_host(256)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        // The APIs itsmc calls answer in place; a redirect would mean a misconfigured URL, and following
        // one would send the request (and its credentials) somewhere the operator did not name.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path).map_err(|source| ClientError::CaFileUnreadable { path: path.clone(), source })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ClientError::CaFileInvalid { path: path.clone(), reason: e.to_string() })?;
        if certs.is_empty() {
            return Err(ClientError::CaFileInvalid { path: path.clone(), reason: "no certificate found".into() });
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| ClientError::Build(e.to_string()))
}

/// `Retry-After` as seconds or an HTTP date; capped, so a confused server cannot park work for days.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let raw = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match raw.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or_default()
        }
    };
    Some(wait.min(Duration::from_secs(3600)))
}

/// Why a request got no answer, for an error message: timeout, refused connection, DNS, TLS certificate.
/// The source chain never holds our credentials.
pub fn failure(error: &reqwest::Error) -> String {
    let reason = if error.is_timeout() {
        "no answer in time"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "the connection failed"
    };
    let mut detail = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    if detail.is_empty() { reason.to_string() } else { format!("{reason} ({detail})") }
}

/// Percent-encodes everything but the unreserved characters, for a path segment or a query value (where `+`
/// would otherwise read as a space).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(reqwest::header::RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(reqwest::header::RETRY_AFTER, "999999".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3600)));
    }
}
