//! The Azure Table Storage store: itsmc's state in a storage account, for instances that share it (several
//! Function App instances, or a restart on another machine). It implements [`Store`] over the Table
//! service's REST API, with a small client of its own on the caller's `reqwest` client: no maintained
//! crate speaks Table Storage. Authorization is SharedKey (a connection string, Azurite in tests) or an
//! Entra token (a managed identity), in [`auth`].
//!
//! The trait's primitives are the service's own: `insert` is Insert Entity (201, or 409
//! `EntityAlreadyExists`), `replace` and `delete` are Update and Delete Entity with `If-Match` (412 when
//! someone else wrote first, 404 when the entity is gone), and etags are the service's `ETag` strings.
//! An etag that is not of the service's shape is never sent (it cannot match, and `*` would make the write
//! unconditional); it is answered as a mismatch.
//!
//! **Entity layout** (one entity per entry, in table `<prefix><table>`, e.g. `itsmclinks`):
//!
//! | property | holds |
//! |---|---|
//! | `PartitionKey` | the first two characters of the key |
//! | `RowKey` | the key |
//! | `Layout` | `1` (Int32): the version of this layout |
//! | `Parts`, `J0`, `J1`, ... | the value's JSON, split into binary properties of up to 64 KiB |
//! | `F_<field>` (or `H_<sha256 of the field name>`) | each top-level string field of the value |
//!
//! The JSON is stored whole, so a value of any shape reads back exactly; binary rather than string parts,
//! because the service counts strings in UTF-16 and the limit would halve. Top-level string fields are
//! repeated as properties so that a [`Filter`] is an OData `$filter` evaluated by the service
//! (`F_state eq 'pending'`): a field name that is not a plain identifier is stored under the hash of the
//! name, and a string that is long (over 256 UTF-16 units), holds control characters, or starts with
//! `sha256:` is stored as `sha256:<hex>` of itself, so that an alert body costs 71 characters and not a
//! second copy; the filter applies the same transformation to its value, and equality stays exact.
//!
//! **Partitioning.** The PartitionKey is a prefix of the key, the RowKey the key itself. The service
//! returns entities in (PartitionKey, RowKey) order, and cutting keys to a prefix keeps their order, so a
//! scan is in key order with no sorting here, and "after key k" is the range `PartitionKey ge prefix(k)
//! and RowKey gt k`, which the service starts at the right partition. itsmc's keys are hashes in hex, so
//! two characters make 256 partitions that share the load evenly: one partition serves about 2,000
//! entities a second, and the service spreads partitions over servers. One PartitionKey per key would
//! spread as well but make a scan cross a partition boundary at every entity, and the service may end a
//! query page at each. No operation needs two entities in one partition (there are no batches).
//!
//! **Limits**, refused before anything is sent, with a message naming the limit: keys with `/ \ # ?` or
//! control characters, or over 1 KiB; a value whose entity would exceed 1 MiB as the service counts it,
//! or whose request would (as Azurite counts it: the JSON body with its base64), or that needs more than
//! 252 properties (more than some 240 top-level string fields).
//!
//! **Failures.** An unreachable service, 5xx and 429 are [`StoreError::Unavailable`] with what to check;
//! an entity this module cannot read is [`StoreError::Corrupt`]. Nothing is retried here: a write whose
//! answer was lost may have landed, and an insert retried blindly would find its own entity and report a
//! `Conflict`, which callers take as someone else's claim. The callers' outbox retries whole operations.
//!
//! Keys order as the service compares them; for the hex keys itsmc uses that is the order of `str`, which
//! the embedded store uses (they differ only for characters beyond U+FFFF, which the service compares as
//! UTF-16).

mod auth;
mod entity;
mod settings;

use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value};
use url::Url;

use super::{Entry, Filter, Insert, Page, Store, StoreError, Swap, Table};
use crate::http::percent_encode;
use crate::secrets::TokenCache;
use auth::{Auth, STORAGE_SCOPE};
use entity::{check_key, decode, encode, field_property, indexed_value, is_service_etag, partition_key, shown};

/// Supports Entra authorization (2019-02-02 or later) and is what the Azure SDKs send to Table Storage.
const API_VERSION: &str = "2019-02-02";
/// With minimal metadata each queried entity carries its `odata.etag`.
const ACCEPT_JSON: &str = "application/json;odata=minimalmetadata";
/// The service answers at most this many entities a request.
const SERVER_PAGE_MAX: usize = 1000;
/// How often an insert that met an entity deleted before it could be read is tried again.
const INSERT_ATTEMPTS: usize = 5;

/// The state store in an Azure storage account's Table service. See the module comment.
pub struct TableStore {
    http: reqwest::Client,
    /// The Table endpoint without a trailing slash, e.g. `https://contoso.table.core.windows.net`.
    endpoint: Url,
    auth: Auth,
    prefix: String,
    /// The service's table name of each [`Table`], by its position.
    names: [String; Table::ALL.len()],
}

impl std::fmt::Debug for TableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableStore")
            .field("endpoint", &self.endpoint.as_str())
            .field("prefix", &self.prefix)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl TableStore {
    /// A store authorized with the account key of a storage connection string (`AccountName`, `AccountKey`,
    /// and `DefaultEndpointsProtocol`/`EndpointSuffix` or `TableEndpoint`; or `UseDevelopmentStorage=true`
    /// for Azurite). Tables are `<table_prefix>links`, `<table_prefix>deliveries`, ... (`Table::ALL`).
    pub fn from_connection_string(
        connection_string: &str,
        table_prefix: &str,
        http: reqwest::Client,
    ) -> Result<TableStore, StoreError> {
        let settings = settings::parse_connection_string(connection_string)?;
        let auth = Auth::SharedKey { account: settings.account, key: settings.key };
        TableStore::new(settings.endpoint, auth, table_prefix, http)
    }

    /// A store authorized with Entra tokens for `https://storage.azure.com/.default` from `credential` (a
    /// managed identity needs Storage Table Data Contributor on the account). `table_endpoint` is e.g.
    /// `https://contoso.table.core.windows.net`.
    pub fn with_credential(
        table_endpoint: Url,
        credential: Arc<dyn TokenCredential>,
        table_prefix: &str,
        http: reqwest::Client,
    ) -> Result<TableStore, StoreError> {
        let endpoint = settings::check_endpoint(table_endpoint, "the Table endpoint")?;
        TableStore::new(endpoint, Auth::Bearer(TokenCache::new(credential, STORAGE_SCOPE)), table_prefix, http)
    }

    fn new(endpoint: Url, auth: Auth, prefix: &str, http: reqwest::Client) -> Result<TableStore, StoreError> {
        settings::check_prefix(prefix)?;
        Ok(TableStore {
            http,
            endpoint,
            auth,
            prefix: prefix.to_owned(),
            names: Table::ALL.map(|table| format!("{prefix}{}", table.name())),
        })
    }

    /// Creates the tables that do not exist yet. Run once at start-up; also how a wrong endpoint or
    /// credential shows itself before the first alert.
    pub async fn ensure_tables(&self) -> Result<(), StoreError> {
        // All at once: start-up waits one round trip, not one per table.
        let created = futures_util::future::join_all(Table::ALL.into_iter().map(|table| self.ensure_table(table)));
        created.await.into_iter().collect()
    }

    async fn ensure_table(&self, table: Table) -> Result<(), StoreError> {
        let name = self.table_name(table);
        let body = serde_json::to_vec(&serde_json::json!({ "TableName": name })).expect("JSON of a string");
        let what = format!("creating table {name}");
        let reply = self.send(&what, Method::POST, "Tables", None, Some(body), None).await?;
        match reply.status.as_u16() {
            201 | 204 => Ok(()),
            409 if reply.error_code().as_deref() == Some("TableAlreadyExists") => Ok(()),
            _ => Err(self.failed(&what, &reply)),
        }
    }

    /// Deletes itsmc's tables and everything in them (tests, and decommissioning). Tables already gone are fine.
    /// The service takes a while to really remove a table: creating it again soon after answers 409.
    pub async fn drop_tables(&self) -> Result<(), StoreError> {
        for table in Table::ALL {
            let name = self.table_name(table);
            let what = format!("deleting table {name}");
            let reply = self.send(&what, Method::DELETE, &format!("Tables('{name}')"), None, None, None).await?;
            if !matches!(reply.status.as_u16(), 204 | 404) {
                return Err(self.failed(&what, &reply));
            }
        }
        Ok(())
    }

    fn table_name(&self, table: Table) -> &str {
        &self.names[table as usize]
    }

    /// The address of one entity, relative to the endpoint.
    fn entity_resource(&self, table: Table, key: &str) -> String {
        format!(
            "{}(PartitionKey='{}',RowKey='{}')",
            self.table_name(table),
            percent_encode(&partition_key(key).replace('\'', "''")),
            percent_encode(&key.replace('\'', "''"))
        )
    }

    /// One request, signed; the answer whatever its status (callers decide which statuses they expect).
    async fn send(
        &self,
        what: &str,
        method: Method,
        resource: &str,
        query: Option<&str>,
        body: Option<Vec<u8>>,
        if_match: Option<&str>,
    ) -> Result<Reply, StoreError> {
        let mut url = self.endpoint.clone();
        url.set_path(&format!("{}/{resource}", self.endpoint.path().trim_end_matches('/')));
        url.set_query(query);
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let content_type = if body.is_some() { "application/json" } else { "" };
        let authorization = self.auth.header(method.as_str(), content_type, &date, url.path()).await?;
        let post = method == Method::POST;
        let mut request = self
            .http
            .request(method, url)
            .header("x-ms-date", &date)
            .header("x-ms-version", API_VERSION)
            .header(ACCEPT, ACCEPT_JSON)
            .header("DataServiceVersion", "3.0")
            .header("MaxDataServiceVersion", "3.0;NetFx")
            .header(AUTHORIZATION, authorization);
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, content_type).body(body);
            if post {
                // The ETag header is all an insert needs back.
                request = request.header("Prefer", "return-no-content");
            }
        }
        if let Some(etag) = if_match {
            request = request.header(IF_MATCH, etag);
        }
        let response = request.send().await.map_err(|err| self.unreachable(what, &err))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|err| self.unreachable(what, &err))?.into();
        Ok(Reply { status, headers, body })
    }

    fn unreachable(&self, what: &str, err: &reqwest::Error) -> StoreError {
        StoreError::Unavailable(format!(
            "Table Storage at {}: {what}: {}; check that the endpoint is right and reachable from here (DNS, \
             firewall, private endpoint) and that the storage account is up",
            self.shown_endpoint(),
            crate::http::failure(err)
        ))
    }

    /// An answer the operation did not expect, as an error that says what to check.
    fn failed(&self, what: &str, reply: &Reply) -> StoreError {
        let status = reply.status;
        let code = reply.error_code().unwrap_or_default();
        let hint = match status.as_u16() {
            429 => "the storage account is throttling itsmc; if this persists, the account is past its \
                    scalability targets (requests per second per partition or per account)"
                .to_owned(),
            500..=599 => "the Table service failed or is busy; if this persists, check the storage account's \
                          health in the Azure portal"
                .to_owned(),
            403 => match &self.auth {
                Auth::SharedKey { .. } => {
                    "check the AccountKey (was the key rotated?), that shared key access is allowed on the \
                     account, and that this machine's clock is right"
                        .to_owned()
                }
                Auth::Bearer(_) => "check that itsmc's identity holds the Storage Table Data Contributor role on \
                                    the account (role assignments take a few minutes to apply)"
                    .to_owned(),
            },
            404 if code == "TableNotFound" => "itsmc creates its tables at start-up: check the table prefix, \
                                               or whether the tables were deleted since"
                .to_owned(),
            _ => "this is not an answer itsmc expects; please report it".to_owned(),
        };
        StoreError::Unavailable(format!(
            "Table Storage at {}: {what}: the service answered {status} {code}{}; {hint}",
            self.shown_endpoint(),
            reply.error_message().map(|m| format!(" ({m})")).unwrap_or_default()
        ))
    }

    fn shown_endpoint(&self) -> &str {
        self.endpoint.as_str().trim_end_matches('/')
    }

    /// The entity of `key`; a 404 other than a missing table is an absent key.
    async fn read(&self, table: Table, key: &str) -> Result<Option<Entry>, StoreError> {
        let what = format!("reading {}/{}", self.table_name(table), shown(key));
        let reply = self.send(&what, Method::GET, &self.entity_resource(table, key), None, None, None).await?;
        match reply.status.as_u16() {
            200 => {
                let entity = reply.json_object(self.table_name(table))?;
                decode(self.table_name(table), entity, reply.etag()).map(Some)
            }
            404 if !reply.table_missing() => Ok(None),
            _ => Err(self.failed(&what, &reply)),
        }
    }
}

#[async_trait]
impl Store for TableStore {
    async fn get(&self, table: Table, key: &str) -> Result<Option<Entry>, StoreError> {
        check_key(self.table_name(table), key)?;
        self.read(table, key).await
    }

    async fn insert(&self, table: Table, key: &str, value: &Value) -> Result<Insert, StoreError> {
        for _ in 0..INSERT_ATTEMPTS {
            match self.claim(table, key, value).await? {
                Some(etag) => return Ok(Insert::Inserted { etag }),
                None => {
                    if let Some(current) = self.read(table, key).await? {
                        return Ok(Insert::Conflict(current));
                    }
                    // Deleted between the two requests: the key is free again, so the insert may succeed.
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "inserting {}/{}: the entity was deleted and written again {INSERT_ATTEMPTS} times while itsmc tried \
             to insert or read it; something else is writing this table",
            self.table_name(table),
            shown(key)
        )))
    }

    /// Insert Entity: 201 (or 204), or 409 `EntityAlreadyExists`, which carries no entity.
    async fn claim(&self, table: Table, key: &str, value: &Value) -> Result<Option<String>, StoreError> {
        let name = self.table_name(table);
        check_key(name, key)?;
        let body = encode(name, key, value)?;
        let what = format!("inserting {name}/{}", shown(key));
        let reply = self.send(&what, Method::POST, name, None, Some(body), None).await?;
        match reply.status.as_u16() {
            201 | 204 => Ok(Some(reply.required_etag(name, key)?)),
            409 if reply.error_code().as_deref() == Some("EntityAlreadyExists") => Ok(None),
            _ => Err(self.failed(&what, &reply)),
        }
    }

    async fn replace(&self, table: Table, key: &str, value: &Value, if_match: &str) -> Result<Swap, StoreError> {
        let name = self.table_name(table);
        check_key(name, key)?;
        let body = encode(name, key, value)?;
        if !is_service_etag(if_match) {
            return Ok(Swap::Stale(self.read(table, key).await?));
        }
        let what = format!("replacing {name}/{}", shown(key));
        let resource = self.entity_resource(table, key);
        let reply = self.send(&what, Method::PUT, &resource, None, Some(body), Some(if_match)).await?;
        match reply.status.as_u16() {
            204 | 200 => Ok(Swap::Replaced { etag: reply.required_etag(name, key)? }),
            412 => Ok(Swap::Stale(self.read(table, key).await?)),
            404 if !reply.table_missing() => Ok(Swap::Stale(None)),
            _ => Err(self.failed(&what, &reply)),
        }
    }

    async fn delete(&self, table: Table, key: &str, if_match: &str) -> Result<bool, StoreError> {
        let name = self.table_name(table);
        check_key(name, key)?;
        if !is_service_etag(if_match) {
            return Ok(false);
        }
        let what = format!("deleting {name}/{}", shown(key));
        let resource = self.entity_resource(table, key);
        let reply = self.send(&what, Method::DELETE, &resource, None, None, Some(if_match)).await?;
        match reply.status.as_u16() {
            204 => Ok(true),
            412 => Ok(false),
            404 if !reply.table_missing() => Ok(false),
            _ => Err(self.failed(&what, &reply)),
        }
    }

    async fn scan(
        &self,
        table: Table,
        filter: Option<Filter<'_>>,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let name = self.table_name(table);
        // A zero limit would return an empty page that continues where it started, forever.
        let limit = limit.max(1);
        let mut clauses = Vec::new();
        if let Some(after) = continuation {
            check_key(name, after)?;
            clauses.push(format!(
                "PartitionKey ge {} and RowKey gt {}",
                odata_string(partition_key(after)),
                odata_string(after)
            ));
        }
        if let Some(filter) = filter {
            clauses.push(format!("{} eq {}", field_property(filter.field), odata_string(&indexed_value(filter.value))));
        }
        let filter = (!clauses.is_empty()).then(|| format!("&$filter={}", percent_encode(&clauses.join(" and "))));
        let what = format!("querying {name}");
        let resource = format!("{name}()");
        let mut entries = Vec::new();
        // The service's own continuation, while this page is being filled: it may end its pages early (at
        // 1,000 entities, after 5 seconds, at a partition boundary), even with nothing in them.
        let mut next: Option<String> = None;
        loop {
            // One more than the page needs says whether there is a next page.
            let top = (limit + 1 - entries.len()).min(SERVER_PAGE_MAX);
            let query = format!("$top={top}{}{}", filter.as_deref().unwrap_or(""), next.as_deref().unwrap_or(""));
            let reply = self.send(&what, Method::GET, &resource, Some(&query), None, None).await?;
            if reply.status != StatusCode::OK {
                return Err(self.failed(&what, &reply));
            }
            let mut page = reply.json_object(name)?;
            let Some(Value::Array(found)) = page.remove("value") else {
                return Err(StoreError::Corrupt(format!("{what}: the service's answer has no \"value\" list")));
            };
            for entity in found {
                let Value::Object(entity) = entity else {
                    return Err(StoreError::Corrupt(format!(
                        "{what}: the service returned an entity that is not an object"
                    )));
                };
                // A value that cannot be read fails the scan rather than being skipped: skipping would
                // silently drop, say, a pending delivery from the outbox.
                entries.push(decode(name, entity, None)?);
            }
            next = reply.continuation();
            if entries.len() > limit || next.is_none() {
                break;
            }
        }
        let mut page = Page { entries, continuation: None };
        if page.entries.len() > limit {
            page.entries.truncate(limit);
            page.continuation = page.entries.last().map(|e| e.key.clone());
        }
        Ok(page)
    }

    fn describe(&self) -> String {
        format!("table storage ({}, prefix {})", self.shown_endpoint(), self.prefix)
    }
}

/// An answer of the service, read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn etag(&self) -> Option<&str> {
        self.header("etag")
    }

    fn required_etag(&self, table: &str, key: &str) -> Result<String, StoreError> {
        self.etag().map(str::to_owned).ok_or_else(|| {
            StoreError::Corrupt(format!("{table}/{}: the service confirmed the write without an ETag", shown(key)))
        })
    }

    /// The service's error code: a header on every error answer, and in the JSON body too.
    fn error_code(&self) -> Option<String> {
        self.header("x-ms-error-code").map(str::to_owned).or_else(|| {
            let body: Value = serde_json::from_slice(&self.body).ok()?;
            body["odata.error"]["code"].as_str().map(str::to_owned)
        })
    }

    /// The first line of the service's error message (the rest is a request id and a time).
    fn error_message(&self) -> Option<String> {
        let body: Value = serde_json::from_slice(&self.body).ok()?;
        let message = body["odata.error"]["message"]["value"].as_str()?;
        let line = message.lines().next()?.trim();
        Some(line.chars().take(200).collect())
    }

    fn table_missing(&self) -> bool {
        self.error_code().as_deref() == Some("TableNotFound")
    }

    fn json_object(&self, table: &str) -> Result<Map<String, Value>, StoreError> {
        serde_json::from_slice(&self.body).map_err(|err| {
            StoreError::Corrupt(format!("{table}: the service's answer is not the JSON object expected: {err}"))
        })
    }

    /// The query parameters that continue the service's query, when it has more.
    fn continuation(&self) -> Option<String> {
        let partition = self.header("x-ms-continuation-NextPartitionKey")?;
        let mut next = format!("&NextPartitionKey={}", percent_encode(partition));
        if let Some(row) = self.header("x-ms-continuation-NextRowKey") {
            next.push_str(&format!("&NextRowKey={}", percent_encode(row)));
        }
        Some(next)
    }
}

/// An OData string literal: quoted, with quotes doubled.
fn odata_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> TableStore {
        TableStore::from_connection_string("UseDevelopmentStorage=true", "itsmc", reqwest::Client::new()).unwrap()
    }

    #[test]
    fn describe_names_the_endpoint_and_prefix_only() {
        let store = store();
        assert_eq!(store.describe(), "table storage (http://127.0.0.1:10002/devstoreaccount1, prefix itsmc)");
        let debug = format!("{store:?}");
        assert!(debug.contains("***") && !debug.contains("Eby8vdM02x"), "{debug}");
    }

    #[test]
    fn entity_addresses_quote_and_encode_keys() {
        let store = store();
        assert_eq!(store.entity_resource(Table::Links, "4cd95b"), "itsmclinks(PartitionKey='4c',RowKey='4cd95b')");
        assert_eq!(
            store.entity_resource(Table::Deliveries, "it's a,b"),
            "itsmcdeliveries(PartitionKey='it',RowKey='it%27%27s%20a%2Cb')"
        );
        assert_eq!(odata_string("she said 'no'"), "'she said ''no'''");
        assert_eq!(percent_encode("a+b=c/d é"), "a%2Bb%3Dc%2Fd%20%C3%A9");
    }
}
