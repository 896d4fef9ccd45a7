//! The Azure Monitor Logs Ingestion API in a box: an HTTPS server that takes uploads the way a data
//! collection endpoint (DCE) or a data collection rule's own logs ingestion endpoint does, so itsmc's
//! Logs Ingestion client runs unchanged against it; only the base URL differs. Bearer tokens are checked
//! against the tokens the managed identity emulator (`identity.rs`) issued, as the service checks Entra
//! ID's signature. Tests read what arrived per stream, inject throttling and slowness, and revoke the
//! role through [`LogsIngestionEmulator`].
//!
//! # Addressing
//!
//! [`LogsIngestionEmulator::url`] is `https://127.0.0.1:{port}`: the certificate (from `tls.rs`'s test CA)
//! names `127.0.0.1`, so itsmc's own HTTP client with `ITSMC_CA_FILE` reaches it as it would reach
//! `https://my-dce-5kyl.eastus-1.ingest.monitor.azure.com`. The certificate also names [`DCE_HOST`];
//! [`LogsIngestionEmulator::dce_url`] and [`LogsIngestionEmulator::client`] use that name for tests that
//! want a realistic host. Nothing in the protocol depends on the host.
//!
//! # What it emulates, and from which public material
//!
//! - **Upload** `POST /dataCollectionRules/{dcrImmutableId}/streams/{streamName}?api-version=2023-01-01`
//!   with a JSON array of objects, answered `204 No Content` with no body. Headers: `Authorization: Bearer`
//!   (required), `Content-Type: application/json` (required), `Content-Encoding: gzip` (optional),
//!   `x-ms-client-request-id` (optional, echoed and recorded). Sources: Microsoft Learn "Logs Ingestion API
//!   in Azure Monitor" (learn.microsoft.com/azure/azure-monitor/logs/logs-ingestion-api-overview: URI, the
//!   request header table, the body), "Sample code to send data to Azure Monitor using Logs ingestion API"
//!   (…/logs/tutorial-logs-ingestion-code: "you should see an `HTTP - 204` response"), the REST spec
//!   `specification/monitor/data-plane/ingestion/stable/2023-01-01/DataCollectionRules.json` in
//!   Azure/azure-rest-api-specs (operation `Upload`, responses `204` and a default `ErrorResponse` with an
//!   `x-ms-error-code` header) and the fixtures `logs-ingestion-*.json`. `2021-11-01-preview`, the version
//!   the API was first published under and that older scripts still send, is accepted too.
//! - **Tokens** must be issued for `https://monitor.azure.com` (the overview's header table; a trailing `/`
//!   is the same audience). The caller also needs the **Monitoring Metrics Publisher** role on the DCR;
//!   without it (see [`LogsIngestionEmulator::set_publisher`]) the answer is 403 with the body the Azure SDK
//!   troubleshooting guides quote (Azure/azure-sdk-for-net `sdk/monitor/Azure.Monitor.Ingestion/
//!   TROUBLESHOOTING.md`): `{"error":{"code":"OperationFailed","message":"The authentication token provided
//!   does not have access to ingest data for the data collection rule with immutable Id '…' PipelineAccessResult:
//!   …"}}`.
//! - **Errors** use the Azure.Core envelope `{"error":{"code","message"}}` of the REST spec, with the code
//!   repeated in `x-ms-error-code`. Only `OperationFailed` (403) comes from a capture; the other codes and
//!   every other message are the emulator's own, no capture of them was found: 401
//!   `InvalidAuthenticationToken` (no, unknown or expired token) or `InvalidAuthenticationTokenAudience`, 400
//!   `MissingApiVersionParameter` / `UnsupportedApiVersion`, 404 `DataCollectionRuleNotFound` /
//!   `StreamNotFound` / `NotFound`, 405, 415 `UnsupportedMediaType`, 400 `UnsupportedContentEncoding` /
//!   `InvalidContentEncoding` (gzip that does not decode), 400 `InvalidPayload`, 413 `RequestEntityTooLarge`,
//!   429 `TooManyRequests` with `Retry-After` in seconds.
//! - **Size**: Azure Monitor service limits (…/fundamentals/service-limits#logs-ingestion-api): "Maximum size
//!   of API call: 1 MB — Both compressed and uncompressed data". The Azure SDKs read that as a limit on the
//!   uncompressed JSON: Python's `azure-monitor-ingestion` cuts batches at `MAX_CHUNK_SIZE_BYTES = 1024 * 1024`
//!   of serialized JSON before gzipping, .NET's `LogsIngestionClient` at `SingleUploadThreshold = 1000000`.
//!   So the emulator answers 413 when the body as received, or after gunzip, exceeds 1,048,576 bytes
//!   ([`MAX_CALL_BYTES`], adjustable with [`LogsIngestionEmulator::set_body_limits`]). The tutorial's
//!   troubleshooting table gives 413 for "The message is too large… 1 MB per call" (the real service may
//!   also abort the connection, `ReadyBody_ClientConnectionAbort`). The gzip container (RFC 1952, CRC-32 and
//!   length checked, members may be concatenated) and DEFLATE (RFC 1951) are decoded here: the crate has no
//!   compression dependency.
//! - **Throttling**: the limits table says to retry after the `Retry-After` header of a 429 (12,000
//!   requests and 2 GB per minute per DCR). [`LogsIngestionEmulator::set_rate_limit`] counts requests in a
//!   one-second window instead, so tests stay fast; [`LogsIngestionEmulator::fail_next`] injects answers.
//!
//! # Strict and lenient checking of the body
//!
//! The real service validates little and answers 204 anyway; what does not fit is dropped after the call:
//! - a body that is a JSON *object* rather than an array answers 204 and nothing is ingested
//!   (MicrosoftDocs/azure-docs#106266, #112669, #118163);
//! - properties the stream does not declare are dropped, not refused (the "Log Columns Dropped per Min" DCR
//!   metric of "Monitor DCR data collection in Azure Monitor", …/data-collection/data-collection-monitor;
//!   reported as "silently drops any property the DCR stream does not declare" in relizaio/rearm#291);
//! - values that cannot be converted to the declared type: no public statement was found; a failed
//!   conversion ends up in the DCR's error log (`DCRLogErrors`), not in the HTTP answer.
//!
//! Client bugs of that kind would pass unnoticed, so the emulator is **strict by default**
//! ([`LogsIngestionEmulator::set_strict`]): such a body answers 400 `InvalidPayload` naming the row and
//! the column. Strict types: `string` takes a JSON string, `datetime` an ISO 8601 string
//! (`2023-11-14T15:10:02.1104269Z`, `2023-11-14 15:10:02`, a date alone, an optional `Z` or `±hh:mm`),
//! `real` a number, `int` an integer within 32 bits, `long` within 64 bits, `boolean` `true`/`false`,
//! `dynamic` anything; `null` fits every column. In lenient mode the emulator does what the service is
//! documented to do: an object body answers 204 and stores nothing, an undeclared property or a value of
//! the wrong type is left out of the stored row (counted by [`LogsIngestionEmulator::dropped_values`]),
//! and an array element that is not an object is skipped.
//!
//! # Memory and speed
//!
//! Accepted rows are kept per stream ([`LogsIngestionEmulator::rows`]) unless
//! [`LogsIngestionEmulator::keep_rows`] is turned off; then only counts and, for columns named with
//! [`LogsIngestionEmulator::track_distinct`], a 64-bit hash per row are kept, and the body is checked
//! without building JSON values. Decoding and checking run outside the emulator's lock, on its own
//! two-thread runtime.
//!
//! # What it leaves out
//!
//! Transformations (`transformKql`), output tables and the workspace (rows are stored as sent, per stream
//! name, whatever the DCR), ingestion latency, the 64 KB field truncation, the `TimeGenerated` age rules,
//! private link, PoP tokens, per-DCR role assignments (a role is granted or not for every DCR), Kusto's
//! looser datetime formats (RFC 822 and the like), and `Content-Encoding` values other than `gzip` and
//! `identity`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use super::identity::{TokenCheck, TokenRegistry};
use super::serve::{lock, random_uuid};
use super::tls::{TestCa, TlsServer};

/// The API version the overview documents.
pub const API_VERSION: &str = "2023-01-01";
/// Every `api-version` the emulator accepts.
pub const API_VERSIONS: &[&str] = &["2023-01-01", "2021-11-01-preview"];
/// The audience tokens must be issued for (Azure public cloud).
pub const AUDIENCE: &str = "https://monitor.azure.com";
/// The immutable id of the DCR [`LogsIngestionEmulator::start`] configures (`dcr-` and 32 hex digits).
pub const DEFAULT_DCR_IMMUTABLE_ID: &str = "dcr-5e0c9a7b3f1d4e2a8c6b0d9f7a1e3c52";
/// A DCE host name the emulator's certificate covers (see [`LogsIngestionEmulator::client`]).
pub const DCE_HOST: &str = "itsmc-emulator-5kyl.eastus-1.ingest.monitor.azure.com";
/// The stream of `schema/ServiceDesk_CL.json`.
pub const SERVICE_DESK_STREAM: &str = "Custom-ServiceDesk_CL";
/// The stream of `schema/ServiceDeskLog_CL.json`.
pub const SERVICE_DESK_LOG_STREAM: &str = "Custom-ServiceDeskLog_CL";
/// The service's "1 MB" per call, read as a binary megabyte (what the Python SDK batches to).
pub const MAX_CALL_BYTES: usize = 1024 * 1024;

/// Bodies larger than this are not even read: 413 at once.
const READ_CAP: usize = 16 * 1024 * 1024;
const SUBSCRIPTION: &str = "3f2c9a71-5e4b-4d8a-b6c1-9e0f2a7d4b58";
const RESOURCE_GROUP: &str = "itsmc-rg";
const CONTENT_TYPE: &str = "application/json; charset=utf-8";

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The column types a stream declaration may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ColumnType {
    String,
    Datetime,
    Real,
    Boolean,
    Int,
    Long,
    Dynamic,
}

impl ColumnType {
    /// The type as a DCR spells it (`"datetime"`…), case-insensitively.
    pub fn parse(name: &str) -> Option<ColumnType> {
        Some(match name.to_ascii_lowercase().as_str() {
            "string" => ColumnType::String,
            "datetime" => ColumnType::Datetime,
            "real" => ColumnType::Real,
            "boolean" => ColumnType::Boolean,
            "int" => ColumnType::Int,
            "long" => ColumnType::Long,
            "dynamic" => ColumnType::Dynamic,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Datetime => "datetime",
            ColumnType::Real => "real",
            ColumnType::Boolean => "boolean",
            ColumnType::Int => "int",
            ColumnType::Long => "long",
            ColumnType::Dynamic => "dynamic",
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One declared column of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub kind: ColumnType,
}

/// A `streamDeclarations` entry: the stream name (`Custom-…`) and its columns.
#[derive(Clone, Debug)]
pub struct StreamDeclaration {
    pub name: String,
    pub columns: Vec<Column>,
}

impl StreamDeclaration {
    pub fn new(name: &str, columns: &[(&str, ColumnType)]) -> StreamDeclaration {
        StreamDeclaration {
            name: name.to_string(),
            columns: columns.iter().map(|(name, kind)| Column { name: name.to_string(), kind: *kind }).collect(),
        }
    }

    /// Read a file of the repository's `schema/` format: `{"table","stream","columns":[{"name","type"}]}`.
    /// Panics on a file that does not fit, which no test could recover from.
    pub fn from_schema_file(path: &std::path::Path) -> StreamDeclaration {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let schema: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
        let stream = schema["stream"].as_str().unwrap_or_else(|| panic!("{}: no \"stream\"", path.display()));
        let columns = schema["columns"].as_array().unwrap_or_else(|| panic!("{}: no \"columns\"", path.display()));
        let columns = columns
            .iter()
            .map(|column| {
                let name =
                    column["name"].as_str().unwrap_or_else(|| panic!("{}: a column without name", path.display()));
                let kind = column["type"].as_str().and_then(ColumnType::parse);
                let kind = kind.unwrap_or_else(|| panic!("{}: column {name} has no known type", path.display()));
                Column { name: name.to_string(), kind }
            })
            .collect();
        StreamDeclaration { name: stream.to_string(), columns }
    }

    /// `Custom-ServiceDesk_CL` from `schema/ServiceDesk_CL.json`.
    pub fn service_desk() -> StreamDeclaration {
        StreamDeclaration::from_schema_file(&schema_path("ServiceDesk_CL.json"))
    }

    /// `Custom-ServiceDeskLog_CL` from `schema/ServiceDeskLog_CL.json`.
    pub fn service_desk_log() -> StreamDeclaration {
        StreamDeclaration::from_schema_file(&schema_path("ServiceDeskLog_CL.json"))
    }
}

fn schema_path(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema").join(file)
}

/// A data collection rule as far as the API sees it: its immutable id and its stream declarations.
#[derive(Clone, Debug)]
pub struct DataCollectionRule {
    pub immutable_id: String,
    pub streams: Vec<StreamDeclaration>,
}

impl DataCollectionRule {
    /// Panics unless `immutable_id` is `dcr-` followed by 32 hex digits, the shape Azure gives them.
    pub fn new(immutable_id: &str, streams: Vec<StreamDeclaration>) -> DataCollectionRule {
        let hex = immutable_id.strip_prefix("dcr-").unwrap_or("");
        assert!(
            hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "a DCR immutable id is dcr- and 32 hex digits, not {immutable_id}"
        );
        DataCollectionRule { immutable_id: immutable_id.to_string(), streams }
    }

    /// A DCR from its ARM definition (the JSON of `az monitor data-collection rule show`, or a template's
    /// resource): the streams of `properties.streamDeclarations`. Panics on a definition without them.
    pub fn from_definition(immutable_id: &str, definition: &Value) -> DataCollectionRule {
        let declarations = definition["properties"]["streamDeclarations"]
            .as_object()
            .expect("a DCR definition has properties.streamDeclarations");
        let streams = declarations
            .iter()
            .map(|(name, declaration)| {
                let columns = declaration["columns"].as_array().map(Vec::as_slice).unwrap_or_default();
                let columns = columns
                    .iter()
                    .map(|column| {
                        let name = column["name"].as_str().expect("a declared column has a name");
                        let kind = column["type"].as_str().and_then(ColumnType::parse);
                        Column {
                            name: name.to_string(),
                            kind: kind.unwrap_or_else(|| panic!("column {name}: unknown type")),
                        }
                    })
                    .collect();
                StreamDeclaration { name: name.clone(), columns }
            })
            .collect();
        DataCollectionRule::new(immutable_id, streams)
    }

    /// The default DCR: [`DEFAULT_DCR_IMMUTABLE_ID`] with the two ServiceDesk streams.
    pub fn service_desk() -> DataCollectionRule {
        DataCollectionRule::new(
            DEFAULT_DCR_IMMUTABLE_ID,
            vec![StreamDeclaration::service_desk(), StreamDeclaration::service_desk_log()],
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// One request the emulator answered.
#[derive(Clone, Debug)]
pub struct IngestRequest {
    pub method: String,
    pub path: String,
    pub dcr_immutable_id: Option<String>,
    pub stream: Option<String>,
    pub api_version: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub client_request_id: Option<String>,
    /// The client id of a valid bearer token, whatever the answer.
    pub client_id: Option<String>,
    /// Body size as received (compressed when gzip).
    pub wire_bytes: usize,
    /// Body size after gunzip (equal to `wire_bytes` without `Content-Encoding`); 0 when not decoded.
    pub json_bytes: usize,
    /// Rows stored by this request (0 unless it answered 204).
    pub rows: usize,
    pub status: u16,
    /// The `x-ms-error-code` of a refusal.
    pub error_code: Option<String>,
}

#[derive(Default)]
struct StreamStore {
    rows: Vec<Map<String, Value>>,
    count: usize,
    dropped_values: usize,
    /// Column name to the hashes of its distinct values.
    distinct: HashMap<String, HashSet<u64>>,
}

struct Injected {
    status: u16,
    retry_after: Option<u64>,
}

struct Ingest {
    rules: Vec<(String, Vec<Arc<StreamSchema>>)>,
    tokens: TokenRegistry,
    /// Client ids refused the Monitoring Metrics Publisher role (lower case).
    refused: HashSet<String>,
    strict: bool,
    keep_rows: bool,
    max_wire: usize,
    max_json: usize,
    latency: Duration,
    rate_limit: Option<u32>,
    window: (Instant, u32),
    /// What the next uploads get: `None` lets one through as usual.
    failures: VecDeque<Option<Injected>>,
    streams: HashMap<String, StreamStore>,
    requests: Vec<IngestRequest>,
}

type Shared = Arc<Mutex<Ingest>>;

/// The running endpoint. Dropping it stops the server.
pub struct LogsIngestionEmulator {
    shared: Shared,
    server: TlsServer,
}

impl LogsIngestionEmulator {
    /// Start on a fresh port of `127.0.0.1` with the default DCR ([`DEFAULT_DCR_IMMUTABLE_ID`], streams
    /// `Custom-ServiceDesk_CL` and `Custom-ServiceDeskLog_CL` from `schema/`), serving a certificate from
    /// `ca` and accepting the tokens in `tokens` (see [`super::identity::IdentityEmulator::tokens`]).
    /// `ServiceDeskId_s` of `Custom-ServiceDesk_CL` is tracked for [`Self::distinct_ids`].
    pub fn start(ca: &TestCa, tokens: TokenRegistry) -> LogsIngestionEmulator {
        let emulator = LogsIngestionEmulator::start_with(ca, tokens, vec![DataCollectionRule::service_desk()]);
        emulator.track_distinct(SERVICE_DESK_STREAM, "ServiceDeskId_s");
        emulator
    }

    /// Start with any DCRs and streams.
    pub fn start_with(ca: &TestCa, tokens: TokenRegistry, rules: Vec<DataCollectionRule>) -> LogsIngestionEmulator {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the logs ingestion endpoint");
        let rules = rules
            .into_iter()
            .map(|rule| (rule.immutable_id, rule.streams.into_iter().map(|s| Arc::new(StreamSchema::new(s))).collect()))
            .collect();
        let shared = Arc::new(Mutex::new(Ingest {
            rules,
            tokens,
            refused: HashSet::new(),
            strict: true,
            keep_rows: true,
            max_wire: MAX_CALL_BYTES,
            max_json: MAX_CALL_BYTES,
            latency: Duration::ZERO,
            rate_limit: None,
            window: (Instant::now(), 0),
            failures: VecDeque::new(),
            streams: HashMap::new(),
            requests: Vec::new(),
        }));
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = super::tls::serve(listener, ca.server_config(&[DCE_HOST]), app);
        LogsIngestionEmulator { shared, server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The endpoint as itsmc is configured with it: `https://127.0.0.1:{port}` (no trailing `/`, like the
    /// `logsIngestion` endpoint of a DCR).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr().port())
    }

    /// The same server under [`DCE_HOST`], for a client from [`Self::client`].
    pub fn dce_url(&self) -> String {
        format!("https://{DCE_HOST}:{}", self.addr().port())
    }

    /// A client that trusts `ca` and resolves [`DCE_HOST`] to this emulator.
    pub fn client(&self, ca: &TestCa) -> reqwest::Client {
        ca.client_resolving(DCE_HOST, self.addr())
    }

    /// The immutable id of the first configured DCR ([`DEFAULT_DCR_IMMUTABLE_ID`] after [`Self::start`]).
    pub fn dcr_immutable_id(&self) -> String {
        self.lock().rules.first().map(|(id, _)| id.clone()).unwrap_or_default()
    }

    /// itsmc's Logs Ingestion settings for this emulator: its endpoint and first DCR, the default streams.
    pub fn settings(&self) -> itsmc::ingest::client::IngestionSettings {
        itsmc::ingest::client::IngestionSettings {
            endpoint: self.url().parse().unwrap(),
            rule: self.dcr_immutable_id(),
            service_desk_stream: None,
            service_desk_log_stream: None,
            client_id: None,
        }
    }

    /// A production syncer of `intake` sending to this emulator with `credential`'s tokens over `http`.
    pub fn syncer(
        &self,
        intake: &Arc<itsmc::intake::Intake>,
        credential: Arc<dyn azure_core::credentials::TokenCredential>,
        http: reqwest::Client,
    ) -> itsmc::sync::Syncer {
        let client = itsmc::ingest::client::LogsIngestion::new(self.settings(), credential, http);
        itsmc::sync::Syncer::new(Arc::clone(intake), itsmc::ingest::Sink::LogsIngestion(Box::new(client)))
    }

    /// `{url}/dataCollectionRules/{dcr}/streams/{stream}?api-version=2023-01-01` for the first DCR.
    pub fn upload_url(&self, stream: &str) -> String {
        format!(
            "{}/dataCollectionRules/{}/streams/{stream}?api-version={API_VERSION}",
            self.url(),
            self.dcr_immutable_id()
        )
    }

    /// Strict (the default) refuses bodies the real service would take and partly drop; lenient behaves
    /// as the service is documented to (see the module documentation).
    pub fn set_strict(&self, strict: bool) {
        self.lock().strict = strict;
    }

    /// Keep accepted rows for [`Self::rows`] (the default), or only count them and hash tracked columns.
    pub fn keep_rows(&self, keep: bool) {
        self.lock().keep_rows = keep;
    }

    /// Hash `column` of every row accepted into `stream` from now on, for [`Self::distinct_ids`].
    pub fn track_distinct(&self, stream: &str, column: &str) {
        self.lock().streams.entry(stream.to_string()).or_default().distinct.entry(column.to_string()).or_default();
    }

    /// Limits on the body as received and after gunzip (both [`MAX_CALL_BYTES`] by default).
    pub fn set_body_limits(&self, max_wire: usize, max_json: usize) {
        let mut ingest = self.lock();
        ingest.max_wire = max_wire;
        ingest.max_json = max_json;
    }

    /// Every answer is delayed this long.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// At most `per_second` requests per one-second window; the rest answer 429 with `Retry-After`.
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        let mut ingest = self.lock();
        ingest.rate_limit = per_second;
        ingest.window = (Instant::now(), 0);
    }

    /// The next `times` requests, whatever they are, answer `status` (with `Retry-After` when given) and
    /// store nothing. Calls queue up behind each other.
    pub fn fail_next(&self, times: u32, status: u16, retry_after: Option<u64>) {
        let mut ingest = self.lock();
        for _ in 0..times {
            ingest.failures.push_back(Some(Injected { status, retry_after }));
        }
    }

    /// Forget the failures queued by `fail_next` and `fail_after`: the service is healthy again.
    pub fn clear_failures(&self) {
        self.lock().failures.clear();
    }

    /// Let `ok` uploads through as usual, then answer the next `times` with `status`: a failure in the
    /// middle of a sync, after its first batches were accepted.
    pub fn fail_after(&self, ok: u32, times: u32, status: u16, retry_after: Option<u64>) {
        let mut ingest = self.lock();
        ingest.failures.extend((0..ok).map(|_| None));
        ingest.failures.extend((0..times).map(|_| Some(Injected { status, retry_after })));
    }

    /// Grant (the default for every identity) or refuse the Monitoring Metrics Publisher role to the
    /// identity with this client id, on every DCR.
    pub fn set_publisher(&self, client_id: &str, granted: bool) {
        let mut ingest = self.lock();
        if granted {
            ingest.refused.remove(&client_id.to_ascii_lowercase());
        } else {
            ingest.refused.insert(client_id.to_ascii_lowercase());
        }
    }

    /// The rows stored for `stream`, oldest first (empty when rows are not kept).
    pub fn rows(&self, stream: &str) -> Vec<Map<String, Value>> {
        self.lock().streams.get(stream).map(|s| s.rows.clone()).unwrap_or_default()
    }

    /// How many rows `stream` accepted, whether they were kept or not.
    pub fn row_count(&self, stream: &str) -> usize {
        self.lock().streams.get(stream).map_or(0, |s| s.count)
    }

    /// How many distinct non-null values `column` had among the rows of `stream`. Counted from the
    /// hashes when the column is tracked ([`Self::track_distinct`]), else from the kept rows; panics when
    /// neither is there.
    pub fn distinct_ids(&self, stream: &str, column: &str) -> usize {
        let ingest = self.lock();
        let store = ingest.streams.get(stream);
        if let Some(hashes) = store.and_then(|s| s.distinct.get(column)) {
            return hashes.len();
        }
        assert!(ingest.keep_rows, "{stream}.{column} is not tracked and rows are not kept: call track_distinct first");
        let rows = store.map(|s| s.rows.as_slice()).unwrap_or_default();
        rows.iter()
            .filter_map(|row| row.get(column).and_then(|v| value_hash(&scalar_of(v))))
            .collect::<HashSet<_>>()
            .len()
    }

    /// Values left out of stored rows in lenient mode (undeclared properties, values of the wrong type).
    pub fn dropped_values(&self, stream: &str) -> usize {
        self.lock().streams.get(stream).map_or(0, |s| s.dropped_values)
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<IngestRequest> {
        self.lock().requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.lock().requests.len()
    }

    /// Forget stored rows, counts, hashes and requests; settings, tracked columns and queued failures stay.
    pub fn clear(&self) {
        let mut ingest = self.lock();
        for store in ingest.streams.values_mut() {
            store.rows = Vec::new();
            store.count = 0;
            store.dropped_values = 0;
            for hashes in store.distinct.values_mut() {
                *hashes = HashSet::new();
            }
        }
        ingest.requests = Vec::new();
    }

    fn lock(&self) -> MutexGuard<'_, Ingest> {
        lock(&self.shared)
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A refusal (or an injected answer) in the Azure.Core error envelope.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal { status, code, message: message.into(), retry_after: None }
    }
}

/// What phase one (under the lock) hands to the decoding phase.
struct Accepted {
    schema: Arc<StreamSchema>,
    strict: bool,
    keep: bool,
    max_wire: usize,
    max_json: usize,
    /// Indices of tracked columns, with their names.
    tracked: Vec<(usize, String)>,
}

async fn handle(State(shared): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, READ_CAP).await;
    let latency = lock(&shared).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let headers = &parts.headers;
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let query = parts.uri.query().unwrap_or("");
    let api_version = url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key.eq_ignore_ascii_case("api-version"))
        .map(|(_, value)| value.into_owned());
    let mut record = IngestRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        dcr_immutable_id: None,
        stream: None,
        api_version,
        content_type: text("content-type"),
        content_encoding: text("content-encoding"),
        client_request_id: text("x-ms-client-request-id"),
        client_id: None,
        wire_bytes: body.as_ref().map_or(0, Bytes::len),
        json_bytes: 0,
        rows: 0,
        status: 0,
        error_code: None,
    };
    let outcome = match body {
        Ok(body) => upload(&shared, &parts.method, headers, &body, &mut record),
        Err(_) => Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("The request body is larger than {READ_CAP} bytes; the limit is {MAX_CALL_BYTES} bytes per call."),
        )),
    };
    let response = match outcome {
        Ok(()) => {
            record.status = 204;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(refusal) => {
            record.status = refusal.status.as_u16();
            record.error_code = Some(refusal.code.to_string());
            error_response(&refusal)
        }
    };
    let response = with_ids(response, record.client_request_id.as_deref());
    lock(&shared).requests.push(record);
    response
}

/// The whole upload: checks under the lock, decoding and validation outside it, storing under it again.
fn upload(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    body: &Bytes,
    record: &mut IngestRequest,
) -> Result<(), Refusal> {
    let accepted = admit(&mut lock(shared), method, headers, record)?;
    let json = decode_body(headers, body, &accepted, record)?;
    let checked = check_batch(&json, &accepted)?;
    let mut ingest = lock(shared);
    let keep = accepted.keep;
    let store = ingest.streams.entry(accepted.schema.name.clone()).or_default();
    record.rows = checked.rows;
    store.count += checked.rows;
    store.dropped_values += checked.dropped;
    if keep {
        store.rows.extend(checked.kept);
    }
    for ((_, column), hashes) in accepted.tracked.iter().zip(checked.hashes) {
        store.distinct.entry(column.clone()).or_default().extend(hashes);
    }
    Ok(())
}

/// Everything decided from the request line and headers: injected failures, throttling, the token, the
/// API version, the DCR, the role and the stream.
fn admit(
    ingest: &mut Ingest,
    method: &Method,
    headers: &HeaderMap,
    record: &mut IngestRequest,
) -> Result<Accepted, Refusal> {
    if let Some(Some(injected)) = ingest.failures.pop_front() {
        let status = StatusCode::from_u16(injected.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = if status == StatusCode::TOO_MANY_REQUESTS { "TooManyRequests" } else { "InjectedFailure" };
        let message = format!("The emulator was told to answer {} to this request.", status.as_u16());
        return Err(Refusal { retry_after: injected.retry_after, ..Refusal::new(status, code, message) });
    }
    if let Some(limit) = ingest.rate_limit {
        let now = Instant::now();
        if now.duration_since(ingest.window.0) >= Duration::from_secs(1) {
            ingest.window = (now, 0);
        }
        ingest.window.1 += 1;
        if ingest.window.1 > limit {
            let left = Duration::from_secs(1).saturating_sub(now.duration_since(ingest.window.0));
            let message =
                format!("Rate limit of {limit} requests per second exceeded; retry after the Retry-After header.");
            return Err(Refusal {
                retry_after: Some(left.as_secs_f64().ceil().max(1.0) as u64),
                ..Refusal::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message)
            });
        }
    }

    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|token| !token.is_empty());
    let unauthorized = |code, message: String| Refusal::new(StatusCode::UNAUTHORIZED, code, message);
    let issued = match bearer.map(|token| ingest.tokens.check(token, AUDIENCE)) {
        None => {
            return Err(unauthorized("InvalidAuthenticationToken", "The request has no bearer token.".into()));
        }
        Some(TokenCheck::Valid(issued)) => issued,
        Some(TokenCheck::Expired(_)) => {
            return Err(unauthorized("InvalidAuthenticationToken", "The access token has expired.".into()));
        }
        Some(TokenCheck::WrongAudience(issued)) => {
            let message = format!("The access token audience '{}' is not '{AUDIENCE}'.", issued.resource);
            return Err(unauthorized("InvalidAuthenticationTokenAudience", message));
        }
        Some(TokenCheck::Unknown) => {
            let message = "The access token was not issued by the identity emulator.".to_string();
            return Err(unauthorized("InvalidAuthenticationToken", message));
        }
    };
    record.client_id = Some(issued.client_id.clone());

    match record.api_version.as_deref() {
        None | Some("") => {
            let message = "The api-version query parameter is required; use 2023-01-01.";
            return Err(Refusal::new(StatusCode::BAD_REQUEST, "MissingApiVersionParameter", message));
        }
        Some(version) if !API_VERSIONS.contains(&version) => {
            let message = format!("The api-version '{version}' is not supported; use 2023-01-01.");
            return Err(Refusal::new(StatusCode::BAD_REQUEST, "UnsupportedApiVersion", message));
        }
        Some(_) => {}
    }

    let segments: Vec<&str> = record.path.trim_matches('/').split('/').collect();
    let (dcr, stream) = match segments.as_slice() {
        [rules, dcr, streams, stream]
            if rules.eq_ignore_ascii_case("dataCollectionRules") && streams.eq_ignore_ascii_case("streams") =>
        {
            (dcr.to_string(), stream.to_string())
        }
        _ => {
            let message = format!("No resource at {}.", record.path);
            return Err(Refusal::new(StatusCode::NOT_FOUND, "NotFound", message));
        }
    };
    record.dcr_immutable_id = Some(dcr.clone());
    record.stream = Some(stream.clone());
    if method != Method::POST {
        let message = format!("The method {method} is not supported; upload with POST.");
        return Err(Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message));
    }
    let Some((dcr_id, streams)) = ingest.rules.iter().find(|(id, _)| id.eq_ignore_ascii_case(&dcr)) else {
        let message = format!("No data collection rule with immutable Id '{dcr}' is bound to this endpoint.");
        return Err(Refusal::new(StatusCode::NOT_FOUND, "DataCollectionRuleNotFound", message));
    };
    if ingest.refused.contains(&issued.client_id.to_ascii_lowercase()) {
        let message = format!(
            "The authentication token provided does not have access to ingest data for the data collection rule \
             with immutable Id '{dcr_id}' PipelineAccessResult: AccessGranted: False, IsRbacPresent: False, \
             IsDcrDceBindingValid: , DcrArmId: /subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/\
             providers/Microsoft.Insights/dataCollectionRules/itsmc, Message: Required authorization action was \
             not found for tenantId {} objectId {} on resourceId /subscriptions/{SUBSCRIPTION}/resourceGroups/\
             {RESOURCE_GROUP}/providers/Microsoft.Insights/dataCollectionRules/itsmc ConfigurationId: {dcr_id}..",
            issued.tenant_id, issued.object_id
        );
        return Err(Refusal::new(StatusCode::FORBIDDEN, "OperationFailed", message));
    }
    let Some(schema) = streams.iter().find(|s| s.name == stream).cloned() else {
        let message = format!("The data collection rule '{dcr_id}' declares no stream '{stream}'.");
        return Err(Refusal::new(StatusCode::NOT_FOUND, "StreamNotFound", message));
    };
    let tracked = ingest
        .streams
        .get(&schema.name)
        .map(|store| {
            store
                .distinct
                .keys()
                .filter_map(|column| schema.index.get(column.as_str()).map(|&i| (i, column.clone())))
                .collect()
        })
        .unwrap_or_default();
    Ok(Accepted {
        schema,
        strict: ingest.strict,
        keep: ingest.keep_rows,
        max_wire: ingest.max_wire,
        max_json: ingest.max_json,
        tracked,
    })
}

/// Content type, size and encoding; returns the JSON bytes.
fn decode_body<'a>(
    headers: &HeaderMap,
    body: &'a Bytes,
    accepted: &Accepted,
    record: &mut IngestRequest,
) -> Result<std::borrow::Cow<'a, [u8]>, Refusal> {
    let media_type = record.content_type.as_deref().and_then(|v| v.split(';').next()).map(str::trim).unwrap_or("");
    if !media_type.eq_ignore_ascii_case("application/json") {
        let message = format!("The Content-Type '{media_type}' is not supported; send application/json.");
        return Err(Refusal::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", message));
    }
    let too_large = |size: usize, what: &str, limit: usize| {
        let message = format!("The request body is {size} bytes {what}; the limit is {limit} bytes per call.");
        Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", message)
    };
    if body.len() > accepted.max_wire {
        return Err(too_large(body.len(), "as sent", accepted.max_wire));
    }
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(str::trim).unwrap_or("");
    let json = if encoding.eq_ignore_ascii_case("gzip") {
        match gunzip(body, accepted.max_json) {
            Ok(json) => std::borrow::Cow::Owned(json),
            Err(GzipError::TooLarge) => {
                return Err(too_large(accepted.max_json + 1, "or more after gunzip", accepted.max_json));
            }
            Err(GzipError::Corrupt(reason)) => {
                let message = format!("The request body is not valid gzip data: {reason}.");
                return Err(Refusal::new(StatusCode::BAD_REQUEST, "InvalidContentEncoding", message));
            }
        }
    } else if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
        std::borrow::Cow::Borrowed(&body[..])
    } else {
        let message = format!("The Content-Encoding '{encoding}' is not supported; use gzip or none.");
        return Err(Refusal::new(StatusCode::BAD_REQUEST, "UnsupportedContentEncoding", message));
    };
    record.json_bytes = json.len();
    if json.len() > accepted.max_json {
        return Err(too_large(json.len(), "of JSON", accepted.max_json));
    }
    Ok(json)
}

fn error_response(refusal: &Refusal) -> Response {
    let body = json!({ "error": { "code": refusal.code, "message": refusal.message } });
    let mut response = (refusal.status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    headers.insert("x-ms-error-code", HeaderValue::from_static(refusal.code));
    if let Some(seconds) = refusal.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn with_ids(mut response: Response, client_request_id: Option<&str>) -> Response {
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&random_uuid()) {
        headers.insert("x-ms-request-id", id);
    }
    if let Some(id) = client_request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        headers.insert("x-ms-client-request-id", id);
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Checking a batch against a stream declaration
// ---------------------------------------------------------------------------------------------

struct StreamSchema {
    name: String,
    columns: Vec<Column>,
    index: HashMap<String, usize>,
}

impl StreamSchema {
    fn new(declaration: StreamDeclaration) -> StreamSchema {
        let index = declaration.columns.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
        StreamSchema { name: declaration.name, columns: declaration.columns, index }
    }
}

/// What a checked batch yields.
struct Checked {
    rows: usize,
    kept: Vec<Map<String, Value>>,
    /// Per tracked column, the hashes of its non-null values.
    hashes: Vec<Vec<u64>>,
    dropped: usize,
}

/// Why a batch is refused (strict mode), or ignored (lenient mode, `NotArray` only).
enum Problem {
    NotArray(&'static str),
    NotObject { row: usize, found: &'static str },
    Undeclared { row: usize, column: String },
    Mismatch { row: usize, column: String, expected: ColumnType, found: String },
}

/// Parse and check `json` against the stream, in one pass and without building values unless rows are
/// kept.
fn check_batch(json: &[u8], accepted: &Accepted) -> Result<Checked, Refusal> {
    let context = Context {
        schema: &accepted.schema,
        strict: accepted.strict,
        keep: accepted.keep,
        tracked: &accepted.tracked,
        problem: RefCell::new(None),
        rows: Cell::new(0),
        kept: RefCell::new(Vec::new()),
        hashes: RefCell::new(vec![Vec::new(); accepted.tracked.len()]),
        dropped: Cell::new(0),
    };
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let parsed = BatchSeed(&context).deserialize(&mut deserializer).and_then(|()| deserializer.end());
    let invalid = |message: String| Refusal::new(StatusCode::BAD_REQUEST, "InvalidPayload", message);
    let stream = &accepted.schema.name;
    if let Some(problem) = context.problem.take() {
        return match problem {
            Problem::NotArray(_) if !accepted.strict => {
                Ok(Checked { rows: 0, kept: Vec::new(), hashes: vec![Vec::new(); accepted.tracked.len()], dropped: 0 })
            }
            Problem::NotArray(found) => {
                Err(invalid(format!("The request body must be a JSON array of objects, not {found}.")))
            }
            Problem::NotObject { row, found } => {
                Err(invalid(format!("Row {row} of the request body must be a JSON object, not {found}.")))
            }
            Problem::Undeclared { row, column } => Err(invalid(format!(
                "Row {row}: column '{column}' is not declared in stream '{stream}' (the service would drop it)."
            ))),
            Problem::Mismatch { row, column, expected, found } => Err(invalid(format!(
                "Row {row}: column '{column}' of stream '{stream}' is declared {expected}, got {found}."
            ))),
        };
    }
    if let Err(error) = parsed {
        return Err(invalid(format!("The request body is not valid JSON: {error}.")));
    }
    Ok(Checked {
        rows: context.rows.get(),
        kept: context.kept.into_inner(),
        hashes: context.hashes.into_inner(),
        dropped: context.dropped.get(),
    })
}

struct Context<'a> {
    schema: &'a StreamSchema,
    strict: bool,
    keep: bool,
    tracked: &'a [(usize, String)],
    problem: RefCell<Option<Problem>>,
    rows: Cell<usize>,
    kept: RefCell<Vec<Map<String, Value>>>,
    hashes: RefCell<Vec<Vec<u64>>>,
    dropped: Cell<usize>,
}

impl Context<'_> {
    /// Record why the batch is refused and stop the parser.
    fn refuse<E: de::Error>(&self, problem: Problem) -> E {
        *self.problem.borrow_mut() = Some(problem);
        E::custom("refused")
    }
}

/// The JSON value a column got, as far as type checking needs to know it.
enum Scalar<'v> {
    Null,
    Bool(bool),
    Signed(i64),
    Unsigned(u64),
    Float(f64),
    Text(&'v str),
    Array,
    Object,
}

impl Scalar<'_> {
    fn describe(&self) -> String {
        match self {
            Scalar::Null => "null".into(),
            Scalar::Bool(b) => format!("boolean {b}"),
            Scalar::Signed(n) => format!("number {n}"),
            Scalar::Unsigned(n) => format!("number {n}"),
            Scalar::Float(n) => format!("number {n}"),
            Scalar::Text(s) if s.chars().count() > 40 => {
                format!("string \"{}…\"", s.chars().take(40).collect::<String>())
            }
            Scalar::Text(s) => format!("string \"{s}\""),
            Scalar::Array => "an array".into(),
            Scalar::Object => "an object".into(),
        }
    }

    fn fits(&self, kind: ColumnType) -> bool {
        match (kind, self) {
            (_, Scalar::Null) | (ColumnType::Dynamic, _) => true,
            (ColumnType::String, Scalar::Text(_)) => true,
            (ColumnType::Datetime, Scalar::Text(text)) => is_datetime(text),
            (ColumnType::Real, Scalar::Signed(_) | Scalar::Unsigned(_) | Scalar::Float(_)) => true,
            (ColumnType::Boolean, Scalar::Bool(_)) => true,
            (ColumnType::Int, Scalar::Signed(n)) => i32::try_from(*n).is_ok(),
            (ColumnType::Int, Scalar::Unsigned(n)) => i32::try_from(*n).is_ok(),
            (ColumnType::Long, Scalar::Signed(_)) => true,
            (ColumnType::Long, Scalar::Unsigned(n)) => i64::try_from(*n).is_ok(),
            _ => false,
        }
    }
}

fn scalar_of(value: &Value) -> Scalar<'_> {
    match value {
        Value::Null => Scalar::Null,
        Value::Bool(b) => Scalar::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Scalar::Unsigned(u),
            (None, Some(i)) => Scalar::Signed(i),
            _ => Scalar::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Scalar::Text(s),
        Value::Array(_) => Scalar::Array,
        Value::Object(_) => Scalar::Object,
    }
}

/// The hash [`LogsIngestionEmulator::distinct_ids`] counts: equal JSON scalars hash alike (`1` and `1.0`
/// do not); null, arrays and objects are not counted.
fn value_hash(scalar: &Scalar<'_>) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    match scalar {
        Scalar::Null | Scalar::Array | Scalar::Object => return None,
        Scalar::Bool(b) => (0u8, b).hash(&mut hasher),
        Scalar::Signed(n) => (1u8, i128::from(*n)).hash(&mut hasher),
        Scalar::Unsigned(n) => (1u8, i128::from(*n)).hash(&mut hasher),
        Scalar::Float(n) => (2u8, n.to_bits()).hash(&mut hasher),
        Scalar::Text(s) => (3u8, s).hash(&mut hasher),
    }
    Some(hasher.finish())
}

struct BatchSeed<'c, 'a>(&'c Context<'a>);

impl<'de> DeserializeSeed<'de> for BatchSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut row = 0;
        while seq.next_element_seed(RowSeed { context: self.0, row })?.is_some() {
            row += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        Err(self.0.refuse(Problem::NotArray("an object")))
    }

    fn visit_str<E: de::Error>(self, _v: &str) -> Result<(), E> {
        Err(self.0.refuse(Problem::NotArray("a string")))
    }

    fn visit_bool<E: de::Error>(self, _v: bool) -> Result<(), E> {
        Err(self.0.refuse(Problem::NotArray("a boolean")))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.0.refuse(Problem::NotArray("null")))
    }

    fn visit_i64<E: de::Error>(self, _v: i64) -> Result<(), E> {
        Err(self.0.refuse(Problem::NotArray("a number")))
    }

    fn visit_u64<E: de::Error>(self, _v: u64) -> Result<(), E> {
        Err(self.0.refuse(Problem::NotArray("a number")))
    }

    fn visit_f64<E: de::Error>(self, _v: f64) -> Result<(), E> {
        Err(self.0.refuse(Problem::NotArray("a number")))
    }
}

struct RowSeed<'c, 'a> {
    context: &'c Context<'a>,
    row: usize,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl RowSeed<'_, '_> {
    /// An element that is not an object: refused, or skipped in lenient mode.
    fn not_object<E: de::Error>(&self, found: &'static str) -> Result<(), E> {
        if self.context.strict { Err(self.context.refuse(Problem::NotObject { row: self.row, found })) } else { Ok(()) }
    }
}

impl<'de> Visitor<'de> for RowSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let context = self.context;
        let mut kept = context.keep.then(Map::new);
        while let Some(key) = map.next_key_seed(KeySeed(context.schema))? {
            let index = match key {
                Ok(index) => index,
                Err(column) if context.strict => {
                    return Err(context.refuse(Problem::Undeclared { row: self.row, column }));
                }
                Err(_) => {
                    map.next_value::<IgnoredAny>()?;
                    context.dropped.set(context.dropped.get() + 1);
                    continue;
                }
            };
            let column = &context.schema.columns[index];
            let tracked = context.tracked.iter().position(|(i, _)| *i == index);
            let outcome = if let Some(row) = kept.as_mut() {
                let value: Value = map.next_value()?;
                let outcome = Outcome::of(scalar_of(&value), column.kind, tracked.is_some());
                if outcome.fits {
                    row.insert(column.name.clone(), value);
                }
                outcome
            } else {
                map.next_value_seed(ValueSeed { kind: column.kind, hash: tracked.is_some() })?
            };
            if !outcome.fits {
                if context.strict {
                    let problem = Problem::Mismatch {
                        row: self.row,
                        column: column.name.clone(),
                        expected: column.kind,
                        found: outcome.found,
                    };
                    return Err(context.refuse(problem));
                }
                context.dropped.set(context.dropped.get() + 1);
                continue;
            }
            if let (Some(slot), Some(hash)) = (tracked, outcome.hash) {
                context.hashes.borrow_mut()[slot].push(hash);
            }
        }
        context.rows.set(context.rows.get() + 1);
        if let Some(row) = kept {
            context.kept.borrow_mut().push(row);
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.not_object("an array")?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _v: &str) -> Result<(), E> {
        self.not_object("a string")
    }

    fn visit_bool<E: de::Error>(self, _v: bool) -> Result<(), E> {
        self.not_object("a boolean")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.not_object("null")
    }

    fn visit_i64<E: de::Error>(self, _v: i64) -> Result<(), E> {
        self.not_object("a number")
    }

    fn visit_u64<E: de::Error>(self, _v: u64) -> Result<(), E> {
        self.not_object("a number")
    }

    fn visit_f64<E: de::Error>(self, _v: f64) -> Result<(), E> {
        self.not_object("a number")
    }
}

/// Looks a property name up among the declared columns without allocating; an undeclared name comes back
/// as `Err(name)`.
struct KeySeed<'s>(&'s StreamSchema);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Result<usize, String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Result<usize, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a property name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.0.index.get(name).copied().ok_or_else(|| name.to_string()))
    }
}

/// The result of checking one value.
struct Outcome {
    fits: bool,
    found: String,
    hash: Option<u64>,
}

impl Outcome {
    fn of(scalar: Scalar<'_>, kind: ColumnType, hash: bool) -> Outcome {
        let fits = scalar.fits(kind);
        Outcome {
            fits,
            found: if fits { String::new() } else { scalar.describe() },
            hash: if hash && fits { value_hash(&scalar) } else { None },
        }
    }
}

/// Checks one value against its column's type without building it.
struct ValueSeed {
    kind: ColumnType,
    hash: bool,
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Outcome;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Outcome, D::Error> {
        if self.kind == ColumnType::Dynamic && !self.hash {
            IgnoredAny::deserialize(deserializer)?;
            return Ok(Outcome { fits: true, found: String::new(), hash: None });
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Outcome;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Outcome, E> {
        Ok(Outcome::of(Scalar::Null, self.kind, self.hash))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Outcome, E> {
        Ok(Outcome::of(Scalar::Bool(v), self.kind, self.hash))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Outcome, E> {
        Ok(Outcome::of(Scalar::Signed(v), self.kind, self.hash))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Outcome, E> {
        Ok(Outcome::of(Scalar::Unsigned(v), self.kind, self.hash))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Outcome, E> {
        Ok(Outcome::of(Scalar::Float(v), self.kind, self.hash))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Outcome, E> {
        Ok(Outcome::of(Scalar::Text(v), self.kind, self.hash))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Outcome, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Outcome::of(Scalar::Array, self.kind, self.hash))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Outcome, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Outcome::of(Scalar::Object, self.kind, self.hash))
    }
}

/// ISO 8601 as Kusto's `datetime` takes it from JSON: `yyyy-MM-dd`, optionally followed by `T` or a space,
/// `HH:mm`, `:ss`, a fraction of up to 9 digits and `Z` or an offset `±HH:mm` / `±HHmm`.
pub fn is_datetime(text: &str) -> bool {
    fn number(bytes: &[u8]) -> Option<u32> {
        bytes.iter().try_fold(0u32, |n, b| b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0')))
    }
    let b = text.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let (Some(year), Some(month), Some(day)) = (number(&b[0..4]), number(&b[5..7]), number(&b[8..10])) else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if !(1..=days).contains(&day) {
        return false;
    }
    let mut rest = &b[10..];
    if rest.is_empty() {
        return true;
    }
    if !matches!(rest[0], b'T' | b't' | b' ') || rest.len() < 6 || rest[3] != b':' {
        return false;
    }
    match (number(&rest[1..3]), number(&rest[4..6])) {
        (Some(hour), Some(minute)) if hour < 24 && minute < 60 => {}
        _ => return false,
    }
    rest = &rest[6..];
    if rest.first() == Some(&b':') {
        match rest.get(1..3).and_then(number) {
            Some(second) if second < 60 => rest = &rest[3..],
            _ => return false,
        }
        if rest.first() == Some(&b'.') {
            let digits = rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
            if !(1..=9).contains(&digits) {
                return false;
            }
            rest = &rest[1 + digits..];
        }
    }
    match rest {
        [] | [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] | [b'+' | b'-', h1, h2, m1, m2] => {
            matches!((number(&[*h1, *h2]), number(&[*m1, *m2])), (Some(h), Some(m)) if h < 24 && m < 60)
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// gzip (RFC 1952) and DEFLATE (RFC 1951)
// ---------------------------------------------------------------------------------------------

/// Why a gzip body did not decode.
#[derive(Debug, PartialEq, Eq)]
pub enum GzipError {
    /// Not gzip, truncated, or a checksum that does not match.
    Corrupt(&'static str),
    /// It decodes to more than the limit.
    TooLarge,
}

/// Decode a gzip body (one or more members) into at most `limit` bytes.
pub fn gunzip(data: &[u8], limit: usize) -> Result<Vec<u8>, GzipError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    let mut pos = 0;
    loop {
        let header = gzip_header(&data[pos..])?;
        pos += header;
        let start = out.len();
        pos += inflate(&data[pos..], &mut out, limit)?;
        let trailer = data.get(pos..pos + 8).ok_or(GzipError::Corrupt("the gzip trailer is missing"))?;
        let crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        let size = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
        if crc32(&out[start..]) != crc {
            return Err(GzipError::Corrupt("the CRC-32 does not match"));
        }
        if (out.len() - start) as u32 != size {
            return Err(GzipError::Corrupt("the length in the trailer does not match"));
        }
        pos += 8;
        if pos == data.len() {
            return Ok(out);
        }
    }
}

/// The length of the member header at the start of `data`.
fn gzip_header(data: &[u8]) -> Result<usize, GzipError> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let truncated = GzipError::Corrupt("the gzip header is truncated");
    if data.len() < 10 {
        return Err(truncated);
    }
    if data[0] != 0x1f || data[1] != 0x8b {
        return Err(GzipError::Corrupt("it does not start with the gzip magic number"));
    }
    if data[2] != 8 {
        return Err(GzipError::Corrupt("the compression method is not deflate"));
    }
    let flags = data[3];
    if flags & 0xe0 != 0 {
        return Err(GzipError::Corrupt("reserved header flags are set"));
    }
    let mut pos = 10;
    if flags & FEXTRA != 0 {
        let length = data.get(pos..pos + 2).ok_or(GzipError::Corrupt("the gzip header is truncated"))?;
        pos += 2 + usize::from(u16::from_le_bytes([length[0], length[1]]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let end = data.get(pos..).and_then(|rest| rest.iter().position(|&b| b == 0));
            pos += end.ok_or(GzipError::Corrupt("the gzip header is truncated"))? + 1;
        }
    }
    if flags & FHCRC != 0 {
        pos += 2;
    }
    if pos > data.len() { Err(truncated) } else { Ok(pos) }
}

/// CRC-32 (ISO-HDLC, the one gzip uses), eight bytes at a time.
pub fn crc32(data: &[u8]) -> u32 {
    static TABLES: OnceLock<Box<[[u32; 256]; 8]>> = OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        let mut tables = Box::new([[0u32; 256]; 8]);
        for n in 0..256 {
            let mut c = n as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            tables[0][n] = c;
        }
        for n in 0..256 {
            for k in 1..8 {
                let previous = tables[k - 1][n];
                tables[k][n] = (previous >> 8) ^ tables[0][(previous & 0xff) as usize];
            }
        }
        tables
    });
    let mut crc = !0u32;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let low = crc ^ u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let high = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        crc = tables[7][(low & 0xff) as usize]
            ^ tables[6][((low >> 8) & 0xff) as usize]
            ^ tables[5][((low >> 16) & 0xff) as usize]
            ^ tables[4][(low >> 24) as usize]
            ^ tables[3][(high & 0xff) as usize]
            ^ tables[2][((high >> 8) & 0xff) as usize]
            ^ tables[1][((high >> 16) & 0xff) as usize]
            ^ tables[0][(high >> 24) as usize];
    }
    for &byte in chunks.remainder() {
        crc = tables[0][((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const LENGTH_BASE: [u16; 29] =
    [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LENGTH_EXTRA: [u8; 29] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DISTANCE_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145,
    8193, 12289, 16385, 24577,
];
const DISTANCE_EXTRA: [u8; 30] =
    [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
/// The order code length code lengths come in (RFC 1951 §3.2.7).
const CODE_LENGTH_ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

/// Reads DEFLATE's LSB-first bit stream, up to 63 bits buffered.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buffer: u64,
    count: u32,
}

impl Bits<'_> {
    fn refill(&mut self) {
        if self.pos + 8 <= self.data.len() {
            let mut word = [0u8; 8];
            word.copy_from_slice(&self.data[self.pos..self.pos + 8]);
            // The byte that only partly fits is ORed in again, at the same place, by the next refill.
            self.buffer |= u64::from_le_bytes(word) << self.count;
            let whole = (63 - self.count) / 8;
            self.pos += whole as usize;
            self.count += whole * 8;
        } else {
            while self.count <= 55 && self.pos < self.data.len() {
                self.buffer |= u64::from(self.data[self.pos]) << self.count;
                self.pos += 1;
                self.count += 8;
            }
        }
    }

    fn take(&mut self, n: u32) -> Result<u32, GzipError> {
        if self.count < n {
            self.refill();
            if self.count < n {
                return Err(GzipError::Corrupt("the deflate stream is truncated"));
            }
        }
        let value = (self.buffer & ((1u64 << n) - 1)) as u32;
        self.buffer >>= n;
        self.count -= n;
        Ok(value)
    }

    /// Drop the bits up to the next byte boundary and give back the whole bytes still buffered: the
    /// position of the next unread byte.
    fn align(&mut self) -> usize {
        let pos = self.pos - (self.count / 8) as usize;
        self.pos = pos;
        self.buffer = 0;
        self.count = 0;
        pos
    }
}

const FAST_BITS: u32 = 10;

/// A canonical Huffman code: codes up to [`FAST_BITS`] long are looked up in one step, longer ones are
/// decoded bit by bit (they are rare by construction).
struct Huffman {
    /// Indexed by the next `FAST_BITS` bits: `length << 9 | symbol`, 0 when the code is longer.
    fast: Vec<u16>,
    counts: [u16; 16],
    symbols: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Result<Huffman, GzipError> {
        let mut counts = [0u16; 16];
        for &length in lengths {
            counts[usize::from(length)] += 1;
        }
        counts[0] = 0;
        let mut left = 1i32;
        for &count in &counts[1..] {
            left = (left << 1) - i32::from(count);
            if left < 0 {
                return Err(GzipError::Corrupt("a Huffman code is over-subscribed"));
            }
        }
        let mut offsets = [0u16; 16];
        for length in 1..15 {
            offsets[length + 1] = offsets[length] + counts[length];
        }
        let mut symbols = vec![0u16; lengths.len()];
        let mut next_code = [0u32; 16];
        let mut code = 0u32;
        for length in 1..16 {
            code = (code + u32::from(counts[length - 1])) << 1;
            next_code[length] = code;
        }
        let mut fast = vec![0u16; 1 << FAST_BITS];
        for (symbol, &length) in lengths.iter().enumerate() {
            if length == 0 {
                continue;
            }
            let length = usize::from(length);
            symbols[usize::from(offsets[length])] = symbol as u16;
            offsets[length] += 1;
            let code = next_code[length];
            next_code[length] += 1;
            if length as u32 <= FAST_BITS {
                let reversed = (code.reverse_bits() >> (32 - length)) as usize;
                let entry = (length as u16) << 9 | symbol as u16;
                for slot in fast.iter_mut().skip(reversed).step_by(1 << length) {
                    *slot = entry;
                }
            }
        }
        Ok(Huffman { fast, counts, symbols })
    }

    fn decode(&self, bits: &mut Bits<'_>) -> Result<u16, GzipError> {
        if bits.count < 15 {
            bits.refill();
        }
        let entry = self.fast[(bits.buffer & ((1 << FAST_BITS) - 1)) as usize];
        if entry != 0 {
            let length = u32::from(entry >> 9);
            if length > bits.count {
                return Err(GzipError::Corrupt("the deflate stream is truncated"));
            }
            bits.buffer >>= length;
            bits.count -= length;
            return Ok(entry & 0x1ff);
        }
        // Canonical decoding one bit at a time (the method of zlib's `puff`).
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for length in 1..16 {
            code |= bits.take(1)? as i32;
            let count = i32::from(self.counts[length]);
            if code - first < count {
                return Ok(self.symbols[(index + code - first) as usize]);
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        Err(GzipError::Corrupt("the deflate stream has an invalid Huffman code"))
    }
}

/// Inflate one DEFLATE stream from `data`, appending to `out` (never past `limit` bytes); returns how
/// many bytes of `data` it took.
fn inflate(data: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<usize, GzipError> {
    let mut bits = Bits { data, pos: 0, buffer: 0, count: 0 };
    loop {
        let last = bits.take(1)? == 1;
        match bits.take(2)? {
            0 => {
                let pos = bits.align();
                let header = data.get(pos..pos + 4).ok_or(GzipError::Corrupt("the deflate stream is truncated"))?;
                let length = usize::from(u16::from_le_bytes([header[0], header[1]]));
                if u16::from_le_bytes([header[2], header[3]]) != !(length as u16) {
                    return Err(GzipError::Corrupt("a stored block's length check does not match"));
                }
                let block =
                    data.get(pos + 4..pos + 4 + length).ok_or(GzipError::Corrupt("the deflate stream is truncated"))?;
                if out.len() + length > limit {
                    return Err(GzipError::TooLarge);
                }
                out.extend_from_slice(block);
                bits.pos = pos + 4 + length;
            }
            1 => {
                let mut lengths = [0u8; 288 + 32];
                lengths[..144].fill(8);
                lengths[144..256].fill(9);
                lengths[256..280].fill(7);
                lengths[280..288].fill(8);
                lengths[288..].fill(5);
                let literals = Huffman::new(&lengths[..288])?;
                let distances = Huffman::new(&lengths[288..])?;
                inflate_block(&mut bits, out, limit, &literals, &distances)?;
            }
            2 => {
                let (literals, distances) = dynamic_tables(&mut bits)?;
                inflate_block(&mut bits, out, limit, &literals, &distances)?;
            }
            _ => return Err(GzipError::Corrupt("a deflate block has the reserved type 3")),
        }
        if last {
            return Ok(bits.align());
        }
    }
}

fn dynamic_tables(bits: &mut Bits<'_>) -> Result<(Huffman, Huffman), GzipError> {
    let literal_count = bits.take(5)? as usize + 257;
    let distance_count = bits.take(5)? as usize + 1;
    let code_length_count = bits.take(4)? as usize + 4;
    if literal_count > 286 || distance_count > 30 {
        return Err(GzipError::Corrupt("a dynamic block declares too many codes"));
    }
    let mut code_lengths = [0u8; 19];
    for &slot in &CODE_LENGTH_ORDER[..code_length_count] {
        code_lengths[slot] = bits.take(3)? as u8;
    }
    let code_length_code = Huffman::new(&code_lengths)?;
    let mut lengths = vec![0u8; literal_count + distance_count];
    let mut i = 0;
    while i < lengths.len() {
        let symbol = code_length_code.decode(bits)?;
        let (value, repeat) = match symbol {
            0..=15 => (symbol as u8, 1),
            16 => {
                let previous =
                    *lengths[..i].last().ok_or(GzipError::Corrupt("a length repeat has nothing to repeat"))?;
                (previous, 3 + bits.take(2)? as usize)
            }
            17 => (0, 3 + bits.take(3)? as usize),
            18 => (0, 11 + bits.take(7)? as usize),
            _ => return Err(GzipError::Corrupt("the deflate stream has an invalid code length code")),
        };
        if i + repeat > lengths.len() {
            return Err(GzipError::Corrupt("code lengths overrun the declared count"));
        }
        lengths[i..i + repeat].fill(value);
        i += repeat;
    }
    if lengths[256] == 0 {
        return Err(GzipError::Corrupt("a dynamic block has no end-of-block code"));
    }
    Ok((Huffman::new(&lengths[..literal_count])?, Huffman::new(&lengths[literal_count..])?))
}

fn inflate_block(
    bits: &mut Bits<'_>,
    out: &mut Vec<u8>,
    limit: usize,
    literals: &Huffman,
    distances: &Huffman,
) -> Result<(), GzipError> {
    loop {
        let symbol = literals.decode(bits)?;
        if symbol < 256 {
            if out.len() >= limit {
                return Err(GzipError::TooLarge);
            }
            out.push(symbol as u8);
            continue;
        }
        if symbol == 256 {
            return Ok(());
        }
        let index = usize::from(symbol - 257);
        if index >= LENGTH_BASE.len() {
            return Err(GzipError::Corrupt("the deflate stream has an invalid length code"));
        }
        let length = usize::from(LENGTH_BASE[index]) + bits.take(u32::from(LENGTH_EXTRA[index]))? as usize;
        let code = usize::from(distances.decode(bits)?);
        if code >= DISTANCE_BASE.len() {
            return Err(GzipError::Corrupt("the deflate stream has an invalid distance code"));
        }
        let distance = usize::from(DISTANCE_BASE[code]) + bits.take(u32::from(DISTANCE_EXTRA[code]))? as usize;
        if distance > out.len() {
            return Err(GzipError::Corrupt("a distance reaches before the start of the data"));
        }
        if out.len() + length > limit {
            return Err(GzipError::TooLarge);
        }
        let start = out.len() - distance;
        if distance >= length {
            out.extend_from_within(start..start + length);
        } else {
            for k in 0..length {
                let byte = out[start + k];
                out.push(byte);
            }
        }
    }
}

/// Compress `data` into a gzip member (one fixed-Huffman DEFLATE block with LZ77 matches), for tests to
/// send `Content-Encoding: gzip` bodies. Real compressors (and so itsmc) mostly write dynamic blocks,
/// which [`gunzip`] decodes too.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    struct Writer {
        out: Vec<u8>,
        buffer: u64,
        count: u32,
    }
    impl Writer {
        fn put(&mut self, value: u32, n: u32) {
            self.buffer |= u64::from(value) << self.count;
            self.count += n;
            while self.count >= 8 {
                self.out.push(self.buffer as u8);
                self.buffer >>= 8;
                self.count -= 8;
            }
        }
        /// A Huffman code, most significant bit first.
        fn code(&mut self, code: u32, n: u32) {
            self.put(code.reverse_bits() >> (32 - n), n);
        }
        fn literal(&mut self, symbol: u32) {
            match symbol {
                0..=143 => self.code(0x30 + symbol, 8),
                144..=255 => self.code(0x190 + symbol - 144, 9),
                256..=279 => self.code(symbol - 256, 7),
                _ => self.code(0xc0 + symbol - 280, 8),
            }
        }
    }
    const WINDOW: usize = 32 * 1024;
    const CHAIN: usize = 16;
    let mut writer = Writer { out: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff], buffer: 0, count: 0 };
    writer.put(1, 1);
    writer.put(1, 2);
    let hash = |i: usize| {
        ((u32::from(data[i]) << 16 | u32::from(data[i + 1]) << 8 | u32::from(data[i + 2])).wrapping_mul(0x9e37_79b1)
            >> 17) as usize
    };
    let mut head = vec![usize::MAX; 1 << 15];
    let mut previous = vec![usize::MAX; WINDOW];
    let mut i = 0;
    while i < data.len() {
        let mut best = (0usize, 0usize);
        if i + 3 <= data.len() {
            let h = hash(i);
            let mut candidate = head[h];
            for _ in 0..CHAIN {
                if candidate == usize::MAX || i - candidate > WINDOW - 1 {
                    break;
                }
                let max = (data.len() - i).min(258);
                let length = data[candidate..].iter().zip(&data[i..i + max]).take_while(|(a, b)| a == b).count();
                if length > best.0 {
                    best = (length, i - candidate);
                }
                candidate = previous[candidate % WINDOW];
            }
        }
        let step = if best.0 >= 3 { best.0 } else { 1 };
        for k in i..(i + step).min(data.len().saturating_sub(2)) {
            let h = hash(k);
            previous[k % WINDOW] = head[h];
            head[h] = k;
        }
        if best.0 >= 3 {
            let (length, distance) = best;
            let code = LENGTH_BASE.iter().rposition(|&base| usize::from(base) <= length).unwrap_or(0);
            writer.literal(257 + code as u32);
            writer.put((length - usize::from(LENGTH_BASE[code])) as u32, u32::from(LENGTH_EXTRA[code]));
            let code = DISTANCE_BASE.iter().rposition(|&base| usize::from(base) <= distance).unwrap_or(0);
            writer.code(code as u32, 5);
            writer.put((distance - usize::from(DISTANCE_BASE[code])) as u32, u32::from(DISTANCE_EXTRA[code]));
        } else {
            writer.literal(u32::from(data[i]));
        }
        i += step;
    }
    writer.literal(256);
    writer.put(0, 7);
    let mut out = writer.out;
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}
