//! How requests to the Table service are authorized: SharedKey (an account key, from a connection string)
//! or an Entra bearer token (a managed identity, through azure_core's `TokenCredential`).
//!
//! Neither secret ever leaves this module except in the `Authorization` header, which is marked
//! sensitive so that a debug print of the request does not show it either.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use reqwest::header::HeaderValue;
use sha2::Sha256;

use super::settings::AccountKey;
use crate::secrets::TokenCache;
use crate::store::StoreError;

/// The audience of Azure Storage's data plane.
pub(super) const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

pub(super) enum Auth {
    SharedKey { account: String, key: AccountKey },
    Bearer(TokenCache),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::SharedKey { account, .. } => write!(f, "SharedKey({account}, ***)"),
            Auth::Bearer(_) => f.write_str("Bearer(Entra token)"),
        }
    }
}

impl Auth {
    /// The `Authorization` header for a request. `path` is the URL path exactly as sent, `date` the
    /// request's `x-ms-date`.
    pub(super) async fn header(
        &self,
        method: &str,
        content_type: &str,
        date: &str,
        path: &str,
    ) -> Result<HeaderValue, StoreError> {
        let value = match self {
            Auth::SharedKey { account, key } => {
                format!("SharedKey {account}:{}", shared_key_signature(key, account, method, content_type, date, path))
            }
            Auth::Bearer(cache) => {
                let token = cache.token().await.map_err(|err| {
                    StoreError::Unavailable(format!(
                        "no Entra token for Table Storage (scope {STORAGE_SCOPE}): {err}; check the managed \
                         identity (or the developer sign-in) and that it holds Storage Table Data Contributor on \
                         the account"
                    ))
                })?;
                format!("Bearer {}", token.token.secret())
            }
        };
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            StoreError::Unavailable("the Table service credential is not a valid HTTP header value".into())
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// SharedKey for the Table service: the verb, Content-MD5 (never sent), Content-Type, the date and the
/// canonicalized resource (`/account` + the path; no query, since itsmc never sends `comp`).
fn shared_key_signature(
    key: &AccountKey,
    account: &str,
    method: &str,
    content_type: &str,
    date: &str,
    path: &str,
) -> String {
    let string_to_sign = format!("{method}\n\n{content_type}\n{date}\n/{account}{path}");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).expect("HMAC takes a key of any length");
    mac.update(string_to_sign.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query signed with a known key, checked against an independent signer (Python's hmac) of the
    /// string to sign that the SharedKey documentation gives for the Table service.
    #[test]
    fn shared_key_signs_the_documented_string() {
        let key = AccountKey(b"key".to_vec());
        let signature =
            shared_key_signature(&key, "myaccount", "GET", "", "Sun, 11 Oct 2009 19:52:39 GMT", "/mytable()");
        // python3 -c 'import hmac,hashlib,base64;print(base64.b64encode(hmac.new(b"key",
        //   b"GET\n\n\nSun, 11 Oct 2009 19:52:39 GMT\n/myaccount/mytable()",hashlib.sha256).digest()).decode())'
        assert_eq!(signature, "RkLsoWa7vTXb+Hn4JaG88JSvVQSm6uOBNpp1Nrcv4YQ=");
    }

    #[test]
    fn debug_hides_the_key() {
        let auth = Auth::SharedKey { account: "contoso".into(), key: AccountKey(b"secret".to_vec()) };
        assert_eq!(format!("{auth:?}"), "SharedKey(contoso, ***)");
    }
}
