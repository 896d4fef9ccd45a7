//! What a Table store is pointed at: the storage connection string, the endpoint and the table prefix,
//! checked once when the store is built so that a mistake stops start-up with a message naming it.
//! Nothing here ever puts the account key into an error.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use url::Url;

use crate::store::StoreError;

/// Azurite's (and the old storage emulator's) well-known account; public by design.
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const DEV_TABLE_ENDPOINT: &str = "http://127.0.0.1:10002/devstoreaccount1";

/// The storage account key, decoded. Its `Debug` does not show it.
pub(super) struct AccountKey(pub(super) Vec<u8>);

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountKey(***)")
    }
}

#[derive(Debug)]
pub(super) struct SharedKeySettings {
    pub(super) endpoint: Url,
    pub(super) account: String,
    pub(super) key: AccountKey,
}

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::Unavailable(format!("storage connection string: {}", message.into()))
}

/// Parses a standard storage connection string (`Name=value;...`). Names are matched without regard to
/// case, as the Azure SDKs do; settings for other services (`BlobEndpoint`, ...) are ignored.
pub(super) fn parse_connection_string(connection_string: &str) -> Result<SharedKeySettings, StoreError> {
    let mut account = None;
    let mut key = None;
    let mut protocol = None;
    let mut suffix = None;
    let mut table_endpoint = None;
    let mut development = false;
    for (n, part) in connection_string.split(';').map(str::trim).enumerate() {
        if part.is_empty() {
            continue;
        }
        // The part itself is never shown: it may be the key.
        let Some((name, value)) = part.split_once('=') else {
            return Err(invalid(format!("part {} is not Name=value", n + 1)));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "usedevelopmentstorage" => development = value.eq_ignore_ascii_case("true"),
            "developmentstorageproxyuri" => {
                return Err(invalid("DevelopmentStorageProxyUri is not supported; give TableEndpoint instead"));
            }
            "accountname" => account = Some(value.to_owned()),
            "accountkey" => key = Some(value),
            "defaultendpointsprotocol" => protocol = Some(value.to_ascii_lowercase()),
            "endpointsuffix" => suffix = Some(value.to_owned()),
            "tableendpoint" => table_endpoint = Some(value.to_owned()),
            "sharedaccesssignature" => {
                return Err(invalid(
                    "SharedAccessSignature is not supported; use AccountKey, or a managed identity \
                     (Storage Table Data Contributor) without a connection string",
                ));
            }
            _ => {}
        }
    }
    if development {
        let endpoint = Url::parse(table_endpoint.as_deref().unwrap_or(DEV_TABLE_ENDPOINT))
            .map_err(|err| invalid(format!("TableEndpoint is not a URL: {err}")))?;
        return Ok(SharedKeySettings {
            endpoint: check_endpoint(endpoint, "TableEndpoint")?,
            account: DEV_ACCOUNT.into(),
            key: AccountKey(BASE64.decode(DEV_KEY).expect("the well-known key is base64")),
        });
    }
    let account = account.filter(|a| !a.is_empty()).ok_or_else(|| invalid("AccountName is missing"))?;
    let key = key.filter(|k| !k.is_empty()).ok_or_else(|| invalid("AccountKey is missing"))?;
    let key = BASE64.decode(key).map_err(|_| invalid("AccountKey is not base64 (copy it again from the portal)"))?;
    let endpoint = match table_endpoint {
        Some(endpoint) => Url::parse(&endpoint).map_err(|err| invalid(format!("TableEndpoint is not a URL: {err}")))?,
        None => {
            let protocol = protocol.unwrap_or_else(|| "https".into());
            if protocol != "https" && protocol != "http" {
                return Err(invalid(format!("DefaultEndpointsProtocol is '{protocol}', not https or http")));
            }
            let suffix = suffix.unwrap_or_else(|| "core.windows.net".into());
            Url::parse(&format!("{protocol}://{account}.table.{suffix}"))
                .map_err(|err| invalid(format!("AccountName and EndpointSuffix do not make a URL: {err}")))?
        }
    };
    Ok(SharedKeySettings { endpoint: check_endpoint(endpoint, "TableEndpoint")?, account, key: AccountKey(key) })
}

/// The endpoint as requests are built from it: https (plain http only on loopback, for Azurite), no
/// credentials or query in it, and no trailing slash.
pub(super) fn check_endpoint(mut endpoint: Url, setting: &str) -> Result<Url, StoreError> {
    let bad = |why: &str| StoreError::Unavailable(format!("{setting}: {why}"));
    if !endpoint.username().is_empty() || endpoint.password().is_some() {
        return Err(bad("the Table endpoint must not hold a user name or password"));
    }
    if endpoint.query().is_some() || endpoint.fragment().is_some() {
        // Not shown: a query here is most likely a SAS token.
        return Err(bad("the Table endpoint must not have a query (a SAS token is not supported)"));
    }
    match endpoint.scheme() {
        "https" => {}
        "http" if crate::http::plain_http_allowed(&endpoint) => {}
        "http" => return Err(bad(&format!("'{endpoint}' must be an https:// URL (http is only for loopback)"))),
        other => return Err(bad(&format!("'{other}' is not http or https"))),
    }
    let path = endpoint.path().trim_end_matches('/').to_owned();
    endpoint.set_path(&path);
    Ok(endpoint)
}

/// The table names for `prefix`, e.g. `itsmclinks`: Table Storage names are 3 to 63 letters and
/// digits, starting with a letter.
pub(super) fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    let longest = crate::store::Table::ALL.iter().map(|t| t.name().len()).max().unwrap_or(0);
    let bad = |why: String| {
        StoreError::Unavailable(format!(
            "table prefix '{}': {why}; table names are the prefix followed by 'links', 'deliveries', 'sync' or 'servicedesk'",
            prefix.escape_debug()
        ))
    };
    if !prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(bad("Table Storage table names hold only letters and digits".into()));
    }
    if prefix.chars().next().is_some_and(|c| !c.is_ascii_alphabetic()) {
        return Err(bad("Table Storage table names start with a letter".into()));
    }
    if prefix.len() + longest > 63 {
        return Err(bad(format!("Table Storage table names are at most 63 characters, so at most {}", 63 - longest)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1ieXRlcw=="; // "secret-key-bytes"

    fn err(connection_string: &str) -> String {
        parse_connection_string(connection_string).unwrap_err().to_string()
    }

    #[test]
    fn development_storage_is_azurite() {
        let s = parse_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(s.endpoint.as_str(), "http://127.0.0.1:10002/devstoreaccount1");
        assert_eq!(s.account, "devstoreaccount1");
        assert_eq!(s.key.0.len(), 64);
    }

    #[test]
    fn account_and_suffix_make_the_endpoint() {
        let s = parse_connection_string(&format!(
            "DefaultEndpointsProtocol=https;AccountName=contoso;AccountKey={KEY};EndpointSuffix=core.chinacloudapi.cn"
        ))
        .unwrap();
        assert_eq!(s.endpoint.as_str(), "https://contoso.table.core.chinacloudapi.cn/");
        assert_eq!((s.account.as_str(), s.key.0.as_slice()), ("contoso", b"secret-key-bytes".as_slice()));
        let s = parse_connection_string(&format!("accountname=contoso;ACCOUNTKEY={KEY};")).unwrap();
        assert_eq!(s.endpoint.as_str(), "https://contoso.table.core.windows.net/");
        let s = parse_connection_string(&format!(
            "AccountName=devstoreaccount1;AccountKey={KEY};TableEndpoint=http://127.0.0.1:10002/devstoreaccount1/;\
             BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1"
        ))
        .unwrap();
        assert_eq!(s.endpoint.as_str(), "http://127.0.0.1:10002/devstoreaccount1");
    }

    #[test]
    fn mistakes_are_named_without_the_key() {
        assert!(err(&format!("AccountKey={KEY}")).contains("AccountName is missing"));
        assert!(err("AccountName=contoso").contains("AccountKey is missing"));
        let e = err("AccountName=contoso;AccountKey=not base64!");
        assert!(e.contains("AccountKey is not base64") && !e.contains("not base64!"), "{e}");
        // A key pasted without its name (and without the padding that would read as a name).
        let e = err("AccountName=contoso;c2VjcmV0LWtleS1ieXRlcw");
        assert!(e.contains("part 2 is not Name=value") && !e.contains("c2VjcmV0"), "{e}");
        let e = err(&format!("AccountName=contoso;AccountKey={KEY};DefaultEndpointsProtocol=ftp"));
        assert!(e.contains("ftp") && !e.contains(KEY), "{e}");
        let e = err(&format!("AccountName=contoso;AccountKey={KEY};TableEndpoint=http://contoso.example"));
        assert!(e.contains("https://") && !e.contains(KEY), "{e}");
        let e = err("AccountName=contoso;SharedAccessSignature=sv=2020&sig=abc");
        assert!(e.contains("not supported") && !e.contains("sig=abc"), "{e}");
        let e = err(&format!("AccountName=contoso;AccountKey={KEY};TableEndpoint=https://x.example/?sig=abc"));
        assert!(e.contains("SAS") && !e.contains("sig=abc"), "{e}");
    }

    #[test]
    fn prefixes_make_valid_table_names() {
        for prefix in ["", "itsmc", "t0123456789abcdef", &"a".repeat(52)] {
            check_prefix(prefix).unwrap();
        }
        for prefix in ["1tsmc", "its-mc", "itsmc_", "ïtsmc", &"a".repeat(53)] {
            assert!(check_prefix(prefix).is_err(), "{prefix}");
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let s = parse_connection_string(&format!("AccountName=contoso;AccountKey={KEY}")).unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("secret") && !debug.contains(KEY) && debug.contains("***"), "{debug}");
    }
}
