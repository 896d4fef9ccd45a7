//! A ServiceNow instance in a box: an axum server on `127.0.0.1` speaking the wire protocol that
//! itsmc's ServiceNow client uses, so the production client runs unchanged against it; only the base
//! URL differs. Tests drive faults and inspect the stored records through [`ServiceNowEmulator`].
//!
//! # What it emulates, and from which public material
//!
//! - **Table API** (`GET/POST/PATCH/PUT/DELETE /api/now[/v1|/v2]/table/{table}[/{sys_id}]`): records
//!   hold string values only (numbers and booleans sent by the client are stored as strings), inserts
//!   get `sys_id`, `number`, `sys_created_on`… and answer 201 with a `Location` header; lists carry
//!   `X-Total-Count` and a `Link` header; `sysparm_fields`, `sysparm_display_value=true|false|all`,
//!   `sysparm_exclude_reference_link`, `sysparm_limit` (default 10000), `sysparm_offset`,
//!   `sysparm_no_count`, `sysparm_suppress_pagination_header`, name=value filters, `X-no-response-body`.
//!   Reference fields (a fixed list: `caller_id`, `assignment_group`, `cmdb_ci`…) render as
//!   `{link, value}`. Source: ServiceNow docs "Table API" (`c_TableAPI`, Australia release, read in
//!   the ServiceNow/ServiceNowDocs repository) and the fixtures in `tests/fixtures/protocols/` (a copy of
//!   the team's `../shared/fixtures`).
//!   The `Link` header follows a captured one: `last` is `total - limit`, `prev` is `offset - limit`
//!   even when that is negative, `next` only while records remain.
//!   `work_notes` and `comments` are journal fields: appended to `sys_journal_field` (queryable through
//!   the Table API by `element_id`) and read back as `""`.
//!   Reads by `sys_id`, and queries whose conditions all must hold and include `field=value` on
//!   `sys_id`, `number`, `correlation_id` or `message_key`, go through per-table hash indexes, so
//!   tables of tens of thousands of records (the load benchmark's) answer without a scan.
//! - **Numbers and defaults**: `INC0010001`, `CHG…`, `PRB…`, `RITM…`, `Alert0010001`… per table
//!   (a prefix made from the name for tables it does not know; none for `sys_*`, `cmdb*`, `em_event`).
//!   New incidents get the usual columns (empty or defaulted as in the docs' example records), so a
//!   client reading `close_code` or `resolved_at` finds them; new alerts start `Open`.
//! - **Incident lifecycle**: state 6/7/8 sets `active=false` and `resolved_at`/`closed_at`; 1/2/3 sets
//!   `active=true` (and clears the resolution when reopening); `priority` follows the standard
//!   impact × urgency lookup unless the client sets it.
//! - **Encoded queries** (`sysparm_query`): `^`, `^OR`, `^NQ`, `^^` as a literal caret, `ORDERBY` /
//!   `ORDERBYDESC`, operators `= != > >= < <= IN NOT IN LIKE NOT LIKE STARTSWITH ENDSWITH ISEMPTY
//!   ISNOTEMPTY EMPTYSTRING ANYTHING BETWEEN SAMEAS NSAMEAS`. Source: docs "Operators available for
//!   filters and queries". A condition that does not parse is ignored and the rest of the query
//!   still applies, as the Table API docs say of invalid query parts.
//! - **Authentication** on every `/api` route: Basic with a configured user or a valid Bearer token,
//!   else 401 with the fixture body `servicenow-error-401-response.json` and
//!   `WWW-Authenticate: BASIC realm="Service-now"` (the header as seen in captured responses).
//! - **OAuth** `POST /oauth_token.do`, form-encoded, grants `password` and `refresh_token`. Source:
//!   docs "OAuth API request parameters" (`r_OAuthAPIRequestParameters`) and KB0791140: a request
//!   made while the access token is still valid returns that same token with a renewed expiry; a
//!   refresh grant answers with the current refresh token; default lifespans 1799 s / 100 days. Every
//!   failure (bad client, bad password, unknown, expired or revoked refresh token, JSON body) answers
//!   401 `{"error_description":"access_denied","error":"server_error"}`: that is what ServiceNow sends
//!   for both grants (demisto/content-docs#1301 shows it for a password grant; a captured
//!   refresh-token failure shows the same body); it does not use RFC 6749's `invalid_grant`.
//! - **Rate limiting**: 429 with `Retry-After`, `X-RateLimit-Limit`, `X-RateLimit-Reset` and the
//!   documented body `{"error":{"message":"Rate limit exceeded",…}}`. Source: docs "Inbound REST API
//!   rate limiting". ServiceNow counts per hour and per user; the emulator counts every request in a
//!   fixed one-second window so tests stay fast.
//! - **Event Management** `POST /api/global/em/jsonv2` `{"records":[…]}`: each record is stored in
//!   `em_event` and processed at once into `em_alert` by `message_key` (default
//!   `source+node+type+resource+metric_name`): severity `0` (Clear) or `resolution_state=Closing`
//!   closes the open alert, anything else updates it (`event_count` goes up) or opens a new one
//!   (`Alert0010001`…). Answers `{"result":{"Default Bulk Endpoint":"N events were inserted"}}`.
//!   Source: docs "Pushing events to the instance using web service API"; the answer text from
//!   captured responses. Events inserted through the Table API into `em_event` are processed too.
//! - **Errors**: `{"error":{"message","detail"},"status":"failure"}` envelopes: 404 "No Record
//!   found", 400 "Exception while reading request" for bodies that are not JSON objects or exceed
//!   10 MiB (KB0747638), 400 "Invalid table", 405 for methods a resource does not take.
//!
//! # What it leaves out
//!
//! No schema: every table exists and every field name is accepted, so a misspelt field is stored
//! (ServiceNow drops it) and a query on an unknown field compares against `""` (ServiceNow ignores
//! the condition). No ACLs, roles, business rules, data policies, domains, dot-walking, `javascript:`
//! query values (compared literally), date-relative operators, display-value input
//! (`sysparm_input_display_value`), XML, attachments, Import Set / Aggregate / Batch APIs, other OAuth
//! grants, or per-user rate limits. Event processing is synchronous (ServiceNow runs it as a job a few
//! seconds later) and knows nothing of alert rules, flapping or re-opening closed alerts. Choice
//! display values exist only for incident `state`/`impact`/`urgency`/`priority`/`severity` and alert
//! severity. Comparisons are case-sensitive, as the docs state (instances usually compare text
//! case-insensitively).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

/// User accepted by [`EmulatorConfig::default`].
pub const DEFAULT_USERNAME: &str = "admin";
/// Password of [`DEFAULT_USERNAME`].
pub const DEFAULT_PASSWORD: &str = "admin";
/// OAuth client accepted by [`EmulatorConfig::default`].
pub const DEFAULT_CLIENT_ID: &str = "itsmc-client";
/// Secret of [`DEFAULT_CLIENT_ID`].
pub const DEFAULT_CLIENT_SECRET: &str = "itsmc-secret";

/// ServiceNow rejects REST payloads above this size (KB0747638).
const MAX_BODY_BYTES: usize = 10_485_760;
/// The Table API's default `sysparm_limit`.
const DEFAULT_PAGE_SIZE: usize = 10_000;
const JSON_CONTENT_TYPE: &str = "application/json;charset=UTF-8";

/// How the emulated instance is set up. Every field can be changed later through the emulator
/// except the credentials and token lifetimes.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// `(username, password)` pairs accepted by Basic auth and the password grant.
    pub users: Vec<(String, String)>,
    /// `(client_id, client_secret)` pairs accepted by `/oauth_token.do`.
    pub oauth_clients: Vec<(String, String)>,
    /// Reported as `expires_in`; ServiceNow's default is 1799 s.
    pub access_token_lifetime: Duration,
    /// ServiceNow's default is 100 days.
    pub refresh_token_lifetime: Duration,
    /// Delay before every answer.
    pub latency: Duration,
    /// Requests per second across all clients; `None` means unlimited.
    pub rate_limit: Option<u32>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            users: vec![(DEFAULT_USERNAME.to_owned(), DEFAULT_PASSWORD.to_owned())],
            oauth_clients: vec![(DEFAULT_CLIENT_ID.to_owned(), DEFAULT_CLIENT_SECRET.to_owned())],
            access_token_lifetime: Duration::from_secs(1799),
            refresh_token_lifetime: Duration::from_secs(100 * 24 * 3600),
            latency: Duration::ZERO,
            rate_limit: None,
        }
    }
}

impl EmulatorConfig {
    /// Adds a user to the ones already configured.
    pub fn with_user(mut self, username: &str, password: &str) -> Self {
        self.users.push((username.to_owned(), password.to_owned()));
        self
    }

    /// Adds an OAuth client to the ones already configured.
    pub fn with_oauth_client(mut self, client_id: &str, client_secret: &str) -> Self {
        self.oauth_clients.push((client_id.to_owned(), client_secret.to_owned()));
        self
    }
}

/// One request as the emulator saw it, with the status it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLog {
    pub method: String,
    pub path: String,
    /// The raw (still percent-encoded) query string, `""` when absent.
    pub query: String,
    /// `"basic"`, `"bearer"` or `"none"`, from the `Authorization` header's scheme.
    pub authorization_kind: String,
    pub status: u16,
    /// The request body, lossily decoded as UTF-8.
    pub body: String,
}

/// A running emulated instance. It serves until dropped or [`shutdown`](Self::shutdown).
///
/// The control methods are synchronous and safe to call from a test while requests are in flight.
pub struct ServiceNowEmulator {
    addr: SocketAddr,
    instance: Arc<Mutex<Instance>>,
    commands: mpsc::UnboundedSender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ServiceNowEmulator {
    /// Binds `127.0.0.1:0` and starts serving.
    ///
    /// The server runs on its own thread and runtime, so it works from any test (sync, current-thread
    /// or multi-thread tokio) and keeps real time even when a test pauses tokio's clock.
    pub fn start(config: EmulatorConfig) -> Self {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("servicenow emulator: bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("servicenow emulator: set_nonblocking");
        let addr = listener.local_addr().expect("servicenow emulator: local_addr");
        let instance = Arc::new(Mutex::new(Instance::new(config, format!("http://{addr}"))));
        let app = Router::new().fallback(handle).with_state(Arc::clone(&instance));
        let (commands, receiver) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("servicenow-emulator".to_owned())
            .spawn(move || run_server(listener, addr, app, receiver))
            .expect("servicenow emulator: spawn server thread");
        Self { addr, instance, commands, thread: Mutex::new(Some(thread)) }
    }

    /// `http://127.0.0.1:PORT`, the instance URL to give the client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and closes the port. Idempotent; dropping the emulator does the same.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// Closes the listening socket so new connections are refused, and closes idle keep-alive
    /// connections. Requests already being answered still complete. Returns once the port is closed.
    pub fn stop_listening(&self) {
        let (ack, done) = std::sync::mpsc::channel();
        if self.commands.send(Command::StopListening(ack)).is_ok() {
            let _ = done.recv();
        }
    }

    /// Listens again on the same port after [`stop_listening`](Self::stop_listening).
    ///
    /// Panics if the port cannot be bound again (another process took it meanwhile).
    pub fn resume(&self) {
        let (ack, done) = std::sync::mpsc::channel();
        self.commands.send(Command::Resume(ack)).expect("servicenow emulator: server thread has stopped");
        done.recv()
            .expect("servicenow emulator: server thread has stopped")
            .expect("servicenow emulator: could not bind the same port again");
    }

    /// Delay applied before every answer from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Requests per second across all clients (`None`: unlimited). Starts a fresh window.
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        let mut instance = self.lock();
        instance.rate_limit = per_second;
        instance.window = RateWindow::starting_now();
    }

    /// While down, every request (OAuth included) gets 503 with a ServiceNow-style error body.
    /// An administrator changes a user's password; tokens already issued stay valid, as in ServiceNow.
    pub fn set_password(&self, username: &str, password: &str) {
        let mut instance = self.lock();
        instance.users.retain(|(known, _)| known != username);
        instance.users.push((username.to_owned(), password.to_owned()));
    }

    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// The next `times` requests, whatever they are, answer `status` (with `Retry-After` when given)
    /// and have no other effect. Calls queue up behind each other.
    pub fn fail_next(&self, times: u32, status: u16, retry_after: Option<u64>) {
        let mut instance = self.lock();
        for _ in 0..times {
            instance.failures.push_back(InjectedFailure { status, retry_after });
        }
    }

    /// Every access token issued so far expires now; refresh tokens stay valid.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for grant in self.lock().access_tokens.values_mut() {
            grant.expires = now;
        }
    }

    /// Every refresh token issued so far is revoked; access tokens stay valid until they expire.
    pub fn revoke_refresh_tokens(&self) {
        for grant in self.lock().refresh_tokens.values_mut() {
            grant.revoked = true;
        }
    }

    /// The stored records of `table` in insertion order, with their raw (string) values.
    pub fn records(&self, table: &str) -> Vec<Map<String, Value>> {
        self.lock().tables.get(table).map(|records| records.records().cloned().collect()).unwrap_or_default()
    }

    /// One stored record, raw.
    pub fn record(&self, table: &str, sys_id: &str) -> Option<Map<String, Value>> {
        self.lock().find(table, sys_id).cloned()
    }

    /// Number of records in `table`.
    pub fn count(&self, table: &str) -> usize {
        self.lock().tables.get(table).map_or(0, Table::len)
    }

    /// Journal entries of a record, oldest first, as `(element, value)` where element is
    /// `work_notes` or `comments`.
    pub fn journal(&self, sys_id: &str) -> Vec<(String, String)> {
        let instance = self.lock();
        instance
            .tables
            .get(JOURNAL_TABLE)
            .into_iter()
            .flat_map(Table::records)
            .filter(|entry| text(entry, "element_id") == sys_id)
            .map(|entry| (text(entry, "element").to_owned(), text(entry, "value").to_owned()))
            .collect()
    }

    /// Seeds a record as an administrator would, returning its `sys_id`. Unlike the Table API this
    /// honours `sys_*` fields, so tests can back-date `sys_created_on` or choose the `sys_id`.
    /// `fields` should be a JSON object; anything else inserts a record with defaults only.
    pub fn insert(&self, table: &str, fields: Value) -> String {
        let fields = into_object(fields);
        self.lock().create(table, fields, ADMIN_ACTOR, SystemFields::Honour)
    }

    /// Changes a record as a person in the ServiceNow UI would (e.g. resolving an incident), with
    /// the same rules as a PATCH. Returns `false` when there is no such record.
    pub fn update(&self, table: &str, sys_id: &str, fields: Value) -> bool {
        let fields = into_object(fields);
        self.lock().modify(table, sys_id, fields, ADMIN_ACTOR).is_some()
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.lock().requests.clone()
    }

    /// Forgets the request log (not the grants).
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// The `grant_type` of every `/oauth_token.do` request, successful or not, oldest first.
    pub fn token_grants(&self) -> Vec<String> {
        self.lock().grants.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Instance> {
        lock(&self.instance)
    }
}

impl Drop for ServiceNowEmulator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// ---------------------------------------------------------------------------------------------
// Server lifecycle
// ---------------------------------------------------------------------------------------------

type Shared = Arc<Mutex<Instance>>;

enum Command {
    StopListening(std::sync::mpsc::Sender<()>),
    Resume(std::sync::mpsc::Sender<std::io::Result<()>>),
    Shutdown,
}

/// A poisoned lock only means a test thread panicked mid-call; the state is still usable, and the
/// server must keep answering.
fn lock(instance: &Mutex<Instance>) -> MutexGuard<'_, Instance> {
    instance.lock().unwrap_or_else(PoisonError::into_inner)
}

fn run_server(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    app: Router,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() else {
        return;
    };
    runtime.block_on(async move {
        let mut serving =
            tokio::net::TcpListener::from_std(listener).ok().map(|listener| Serving::start(listener, app.clone()));
        while let Some(command) = commands.recv().await {
            match command {
                Command::StopListening(ack) => {
                    if let Some(current) = serving.take() {
                        current.stop().await;
                    }
                    let _ = ack.send(());
                }
                Command::Resume(ack) => {
                    let outcome = if serving.is_some() {
                        Ok(())
                    } else {
                        tokio::net::TcpListener::bind(addr).await.map(|listener| {
                            serving = Some(Serving::start(listener, app.clone()));
                        })
                    };
                    let _ = ack.send(outcome);
                }
                Command::Shutdown => break,
            }
        }
    });
    // Dropping the runtime cancels every connection task, which closes their sockets: nothing
    // lingers on the port once `shutdown` returns.
    drop(runtime);
}

/// One period of listening on the port, between start/resume and stop.
struct Serving {
    stop: oneshot::Sender<()>,
    listener_closed: oneshot::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    fn start(listener: tokio::net::TcpListener, app: Router) -> Self {
        let (stop, stop_requested) = oneshot::channel::<()>();
        let (closed, listener_closed) = oneshot::channel();
        let listener = ClosingListener { inner: Some(listener), closed: Some(closed) };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_requested.await;
                })
                .await;
        });
        Self { stop, listener_closed, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.listener_closed.await;
        // Graceful shutdown closes idle keep-alive connections right away; waiting a little for it
        // means a pooled client connection is gone too when `stop_listening` returns. Slow requests
        // in flight are not waited for beyond that.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.task).await;
    }
}

/// A TCP listener that reports when its socket is closed, so `stop_listening` can return only once
/// new connections are really refused.
struct ClosingListener {
    inner: Option<tokio::net::TcpListener>,
    closed: Option<oneshot::Sender<()>>,
}

impl axum::serve::Listener for ClosingListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Some(listener) = self.inner.as_ref() else {
                return std::future::pending().await;
            };
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return (stream, peer);
                }
                // Typically EMFILE; back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.inner {
            Some(listener) => listener.local_addr(),
            None => Err(std::io::Error::other("listener closed")),
        }
    }
}

impl Drop for ClosingListener {
    fn drop(&mut self) {
        // Close the socket before telling anyone, or a test could connect in between.
        drop(self.inner.take());
        if let Some(closed) = self.closed.take() {
            let _ = closed.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Instance state and request entry point
// ---------------------------------------------------------------------------------------------

type Record = Map<String, Value>;

const JOURNAL_TABLE: &str = "sys_journal_field";
const JOURNAL_FIELDS: [&str; 2] = ["work_notes", "comments"];
const ADMIN_ACTOR: &str = "admin";

struct Instance {
    users: Vec<(String, String)>,
    clients: Vec<(String, String)>,
    access_lifetime: Duration,
    refresh_lifetime: Duration,
    latency: Duration,
    rate_limit: Option<u32>,
    window: RateWindow,
    down: bool,
    failures: VecDeque<InjectedFailure>,
    tables: BTreeMap<String, Table>,
    /// Last number handed out per number prefix.
    sequences: HashMap<String, u64>,
    access_tokens: HashMap<String, TokenGrant>,
    refresh_tokens: HashMap<String, TokenGrant>,
    requests: Vec<RequestLog>,
    grants: Vec<String>,
    base_url: String,
}

struct RateWindow {
    started: Instant,
    count: u32,
}

impl RateWindow {
    fn starting_now() -> Self {
        Self { started: Instant::now(), count: 0 }
    }
}

#[derive(Clone, Copy)]
struct InjectedFailure {
    status: u16,
    retry_after: Option<u64>,
}

struct TokenGrant {
    user: String,
    client: String,
    expires: Instant,
    revoked: bool,
}

impl TokenGrant {
    fn usable_by(&self, client: &str, user: &str, now: Instant) -> bool {
        self.client == client && self.user == user && !self.revoked && self.expires > now
    }
}

/// What the handler needs from an HTTP request once its body has been read.
struct Call {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    /// `None` when the body was over the size limit or could not be read.
    body: Option<Bytes>,
}

async fn handle(State(instance): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES).await.ok();
    let latency = lock(&instance).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let call = Call {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts.headers,
        body,
    };
    let mut instance = lock(&instance);
    let reply = instance.respond(&call);
    instance.requests.push(RequestLog {
        method: call.method.to_string(),
        path: call.path.clone(),
        query: call.query.clone(),
        authorization_kind: authorization_kind(&call.headers).to_owned(),
        status: reply.status.as_u16(),
        body: call.body.as_deref().map(|bytes| String::from_utf8_lossy(bytes).into_owned()).unwrap_or_default(),
    });
    reply.into_response()
}

enum Route<'a> {
    OAuthToken,
    EventManagement,
    Table { table: &'a str, sys_id: Option<&'a str> },
    UnknownApi,
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    if path == "/oauth_token.do" {
        return Route::OAuthToken;
    }
    let Some(rest) = path.strip_prefix("/api/") else {
        return Route::Unknown;
    };
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        ["global", "em", "jsonv2"] => Route::EventManagement,
        ["now", "table", table] => Route::Table { table, sys_id: None },
        ["now", version, "table", table] if is_api_version(version) => Route::Table { table, sys_id: None },
        ["now", "table", table, sys_id] => Route::Table { table, sys_id: Some(*sys_id) },
        ["now", version, "table", table, sys_id] if is_api_version(version) => {
            Route::Table { table, sys_id: Some(*sys_id) }
        }
        _ => Route::UnknownApi,
    }
}

fn is_api_version(segment: &str) -> bool {
    segment.strip_prefix('v').is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

impl Instance {
    fn new(config: EmulatorConfig, base_url: String) -> Self {
        Self {
            users: config.users,
            clients: config.oauth_clients,
            access_lifetime: config.access_token_lifetime,
            refresh_lifetime: config.refresh_token_lifetime,
            latency: config.latency,
            rate_limit: config.rate_limit,
            window: RateWindow::starting_now(),
            down: false,
            failures: VecDeque::new(),
            tables: BTreeMap::new(),
            sequences: HashMap::new(),
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            requests: Vec::new(),
            grants: Vec::new(),
            base_url,
        }
    }

    fn respond(&mut self, call: &Call) -> Reply {
        let mut reply = self.answer(call);
        if let Some(limit) = self.rate_limit {
            // ServiceNow sends these on every request a rate-limit rule matches, not only on 429s.
            reply = reply
                .header(HeaderName::from_static("x-ratelimit-limit"), limit.to_string())
                .header(HeaderName::from_static("x-ratelimit-reset"), self.window_reset_unix().to_string());
        }
        reply
    }

    /// Faults come first, in the order a request meets them on its way in: an instance that is down
    /// answers nothing else, the rate limiter sits in front of the application, and injected failures
    /// stand for whatever broke behind it.
    fn answer(&mut self, call: &Call) -> Reply {
        if self.down {
            return Reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "The instance is temporarily unavailable",
            );
        }
        if let Some(refusal) = self.enforce_rate_limit() {
            return refusal;
        }
        if let Some(failure) = self.failures.pop_front() {
            return injected_failure(failure);
        }
        let Some(body) = call.body.as_ref() else {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                "Exception while reading request",
                format!("Rejected large REST payload. Max allowed: {MAX_BODY_BYTES} bytes."),
            );
        };
        match route(&call.path) {
            Route::OAuthToken => self.oauth_token(call, body),
            Route::Unknown => Reply::error(StatusCode::NOT_FOUND, "Not Found", format!("No resource at {}", call.path)),
            authenticated_route => {
                let Some(user) = self.authenticate(&call.headers) else {
                    return unauthenticated();
                };
                match authenticated_route {
                    Route::Table { table, sys_id } => self.table_api(call, body, &user, table, sys_id),
                    Route::EventManagement => self.event_management(call, body, &user),
                    _ => Reply::error(
                        StatusCode::BAD_REQUEST,
                        "Requested URI does not represent any resource",
                        Value::Null,
                    ),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

impl Instance {
    fn enforce_rate_limit(&mut self) -> Option<Reply> {
        let limit = self.rate_limit?;
        if self.window.started.elapsed() >= Duration::from_secs(1) {
            self.window = RateWindow::starting_now();
        }
        self.window.count = self.window.count.saturating_add(1);
        if self.window.count <= limit {
            return None;
        }
        let remaining = Duration::from_secs(1).saturating_sub(self.window.started.elapsed());
        let retry_after = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
        Some(
            Reply::error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit exceeded",
                format!("Rate limit of {limit} requests per second for Table API exceeded"),
            )
            .header(header::RETRY_AFTER, retry_after.max(1).to_string()),
        )
    }

    fn window_reset_unix(&self) -> u64 {
        let remaining = Duration::from_secs(1).saturating_sub(self.window.started.elapsed());
        let reset = SystemTime::now() + remaining;
        let since_epoch = reset.duration_since(UNIX_EPOCH).unwrap_or_default();
        since_epoch.as_secs() + u64::from(since_epoch.subsec_nanos() > 0)
    }
}

fn injected_failure(failure: InjectedFailure) -> Reply {
    // An informational status cannot end a response; treat it, like an invalid one, as a 500.
    let status = StatusCode::from_u16(failure.status)
        .ok()
        .filter(|status| !status.is_informational())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reply = match status {
        StatusCode::UNAUTHORIZED => unauthenticated(),
        StatusCode::TOO_MANY_REQUESTS => {
            Reply::error(status, "Rate limit exceeded", "Rate limit for Table API exceeded")
        }
        _ => Reply::error(status, status.canonical_reason().unwrap_or("Error"), "The request could not be processed"),
    };
    match failure.retry_after {
        Some(seconds) => reply.header(header::RETRY_AFTER, seconds.to_string()),
        None => reply,
    }
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

fn authorization_kind(headers: &HeaderMap) -> &'static str {
    let scheme = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_whitespace().next())
        .unwrap_or_default();
    if scheme.eq_ignore_ascii_case("basic") {
        "basic"
    } else if scheme.eq_ignore_ascii_case("bearer") {
        "bearer"
    } else {
        "none"
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Instance {
    /// The user a request acts as, if its credentials are good.
    fn authenticate(&self, headers: &HeaderMap) -> Option<String> {
        if let Some((user, password)) = basic_credentials(headers) {
            return self.password_matches(&user, &password).then_some(user);
        }
        let grant = self.access_tokens.get(bearer_token(headers)?)?;
        (grant.expires > Instant::now()).then(|| grant.user.clone())
    }

    fn password_matches(&self, user: &str, password: &str) -> bool {
        self.users.iter().any(|(known, secret)| known == user && secret == password)
    }

    fn client_matches(&self, client_id: &str, client_secret: &str) -> bool {
        self.clients.iter().any(|(known, secret)| known == client_id && secret == client_secret)
    }
}

fn unauthenticated() -> Reply {
    Reply::error(StatusCode::UNAUTHORIZED, "User Not Authenticated", "Required to provide Auth information")
        .header(header::WWW_AUTHENTICATE, r#"BASIC realm="Service-now""#)
}

// ---------------------------------------------------------------------------------------------
// OAuth (/oauth_token.do)
// ---------------------------------------------------------------------------------------------

impl Instance {
    fn oauth_token(&mut self, call: &Call, body: &[u8]) -> Reply {
        if call.method != Method::POST {
            return method_not_supported(&call.method);
        }
        let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
        let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
        self.grants.push(field("grant_type").to_owned());

        // The docs warn that a JSON body "results in an unspecified error"; clients must send a form.
        let is_json = call
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.to_ascii_lowercase().contains("json"));
        if is_json {
            return oauth_denied();
        }
        // Client credentials normally come in the form; RFC 6749 also allows Basic.
        let (client_id, client_secret) = if form.contains_key("client_id") {
            (field("client_id").to_owned(), field("client_secret").to_owned())
        } else {
            basic_credentials(&call.headers).unwrap_or_default()
        };
        if !self.client_matches(&client_id, &client_secret) {
            return oauth_denied();
        }
        match field("grant_type") {
            "password" => {
                let user = field("username").to_owned();
                if !self.password_matches(&user, field("password")) {
                    return oauth_denied();
                }
                let refresh = self.current_or_new_refresh_token(&client_id, &user);
                self.token_response(&client_id, &user, refresh)
            }
            "refresh_token" => {
                let now = Instant::now();
                let presented = field("refresh_token");
                let Some(grant) = self.refresh_tokens.get(presented) else {
                    return oauth_denied();
                };
                if grant.client != client_id || grant.revoked || grant.expires <= now {
                    return oauth_denied();
                }
                let user = grant.user.clone();
                // A refresh grant hands back the refresh token it was given, without extending it
                // (KB0791140: only credential requests renew the refresh token's expiry).
                self.token_response(&client_id, &user, presented.to_owned())
            }
            _ => oauth_denied(),
        }
    }

    fn current_or_new_refresh_token(&mut self, client: &str, user: &str) -> String {
        let now = Instant::now();
        let expires = expiry(now, self.refresh_lifetime);
        if let Some((token, grant)) =
            self.refresh_tokens.iter_mut().find(|(_, grant)| grant.usable_by(client, user, now))
        {
            grant.expires = expires;
            return token.clone();
        }
        let token = random_token();
        self.refresh_tokens.insert(
            token.clone(),
            TokenGrant { user: user.to_owned(), client: client.to_owned(), expires, revoked: false },
        );
        token
    }

    /// While an access token for this client and user is still valid ServiceNow returns it again,
    /// with a renewed expiry, instead of minting another (docs and KB0791140).
    fn token_response(&mut self, client: &str, user: &str, refresh_token: String) -> Reply {
        let now = Instant::now();
        let expires = expiry(now, self.access_lifetime);
        let reusable = self.access_tokens.iter_mut().find(|(_, grant)| grant.usable_by(client, user, now));
        let access_token = match reusable {
            Some((token, grant)) => {
                grant.expires = expires;
                token.clone()
            }
            None => {
                let token = random_token();
                self.access_tokens.insert(
                    token.clone(),
                    TokenGrant { user: user.to_owned(), client: client.to_owned(), expires, revoked: false },
                );
                token
            }
        };
        // Key order as in the fixture servicenow-oauth-token-response.json.
        let body = ordered_object(&[
            ("access_token", json!(access_token).to_string()),
            ("refresh_token", json!(refresh_token).to_string()),
            ("scope", json!("useraccount").to_string()),
            ("token_type", json!("Bearer").to_string()),
            ("expires_in", self.access_lifetime.as_secs().to_string()),
        ]);
        Reply::json_text(StatusCode::OK, body)
    }
}

/// `now + lifetime`, saturating far in the future for absurd lifetimes instead of overflowing.
fn expiry(now: Instant, lifetime: Duration) -> Instant {
    now.checked_add(lifetime).or_else(|| now.checked_add(Duration::from_secs(1 << 32))).unwrap_or(now)
}

fn oauth_denied() -> Reply {
    let body = ordered_object(&[
        ("error_description", json!("access_denied").to_string()),
        ("error", json!("server_error").to_string()),
    ]);
    Reply::json_text(StatusCode::UNAUTHORIZED, body)
}

/// Opaque, unguessable, and the same shape as the fixture's tokens (86 URL-safe characters).
fn random_token() -> String {
    let bytes: [u8; 64] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn random_sys_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

// ---------------------------------------------------------------------------------------------
// Table API
// ---------------------------------------------------------------------------------------------

/// Query parameters in request order; ServiceNow takes the first of repeated names.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: &str) -> Self {
        Self(url::form_urlencoded::parse(query.as_bytes()).into_owned().collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        self.get(name).is_some_and(|value| value.eq_ignore_ascii_case("true"))
    }

    fn render_options(&self) -> RenderOptions {
        let display = match self.get("sysparm_display_value") {
            Some(value) if value.eq_ignore_ascii_case("true") => DisplayMode::Display,
            Some(value) if value.eq_ignore_ascii_case("all") => DisplayMode::Both,
            _ => DisplayMode::Value,
        };
        let fields = self
            .get("sysparm_fields")
            .map(|list| list.split(',').map(str::trim).filter(|field| !field.is_empty()).map(str::to_owned).collect());
        RenderOptions { display, exclude_reference_link: self.flag("sysparm_exclude_reference_link"), fields }
    }

    /// `sysparm_query`, or else the plain `field=value` parameters ANDed, which the docs describe
    /// as the shorthand alternative to it.
    fn encoded_query(&self) -> String {
        if let Some(query) = self.get("sysparm_query") {
            return query.to_owned();
        }
        self.0
            .iter()
            .filter(|(key, _)| !key.starts_with("sysparm_"))
            .map(|(key, value)| format!("{key}={}", value.replace('^', "^^")))
            .collect::<Vec<_>>()
            .join("^")
    }
}

fn is_valid_table_name(table: &str) -> bool {
    !table.is_empty() && table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Instance {
    fn table_api(&mut self, call: &Call, body: &[u8], user: &str, table: &str, sys_id: Option<&str>) -> Reply {
        if !is_valid_table_name(table) {
            return Reply::error(StatusCode::BAD_REQUEST, &format!("Invalid table {table}"), Value::Null);
        }
        let params = Params::parse(&call.query);
        let suppress_body = call
            .headers
            .get("x-no-response-body")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.eq_ignore_ascii_case("true"));
        let reply = match (&call.method, sys_id) {
            (&Method::GET, None) => self.list(table, &params, &call.path),
            (&Method::GET, Some(sys_id)) => self.read(table, sys_id, &params),
            (&Method::POST, None) => self.create_from_request(table, body, user, &params),
            (&Method::PATCH | &Method::PUT, Some(sys_id)) => {
                self.update_from_request(table, sys_id, body, user, &params)
            }
            (&Method::DELETE, Some(sys_id)) => self.delete(table, sys_id),
            (method, _) => method_not_supported(method),
        };
        if suppress_body && reply.status.is_success() { Reply { body: None, ..reply } } else { reply }
    }

    fn list(&self, table: &str, params: &Params, path: &str) -> Reply {
        let query = EncodedQuery::parse(&params.encoded_query());
        let mut rows = self.tables.get(table).map(|records| records.select(&query)).unwrap_or_default();
        query.sort(&mut rows);

        let total = rows.len();
        let limit = params
            .get("sysparm_limit")
            .and_then(|value| value.trim().parse::<usize>().ok())
            .filter(|&limit| limit > 0)
            .unwrap_or(DEFAULT_PAGE_SIZE);
        let offset = params.get("sysparm_offset").and_then(|value| value.trim().parse::<usize>().ok()).unwrap_or(0);
        let options = params.render_options();
        let page: Vec<Value> =
            rows.iter().skip(offset).take(limit).map(|record| self.render(table, record, &options)).collect();

        let mut reply = Reply::json(StatusCode::OK, json!({ "result": page }));
        if !params.flag("sysparm_no_count") {
            reply = reply.header(HeaderName::from_static("x-total-count"), total.to_string());
        }
        if !params.flag("sysparm_suppress_pagination_header") {
            let link = self.link_header(path, params, offset, limit, total);
            reply = reply.header(header::LINK, link);
        }
        reply
    }

    /// `first`, `prev`, `next` (only while records remain) and `last`, the way instances write them:
    /// `last` is `total - limit` and `prev` is `offset - limit` even on the first page, where it goes
    /// negative (seen in a captured header: `sysparm_limit=1&sysparm_offset=-1` with `rel="prev"`).
    fn link_header(&self, path: &str, params: &Params, offset: usize, limit: usize, total: usize) -> String {
        let page_url = |page_offset: i128| {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            for (key, value) in &params.0 {
                if key != "sysparm_offset" && key != "sysparm_limit" {
                    query.append_pair(key, value);
                }
            }
            query.append_pair("sysparm_limit", &limit.to_string());
            query.append_pair("sysparm_offset", &page_offset.to_string());
            format!("<{}{}?{}>", self.base_url, path, query.finish())
        };
        let (offset, limit, total) = (offset as i128, limit as i128, total as i128);
        let mut links =
            vec![format!("{};rel=\"first\"", page_url(0)), format!("{};rel=\"prev\"", page_url(offset - limit))];
        if offset + limit < total {
            links.push(format!("{};rel=\"next\"", page_url(offset + limit)));
        }
        links.push(format!("{};rel=\"last\"", page_url((total - limit).max(0))));
        links.join(",")
    }

    fn read(&self, table: &str, sys_id: &str, params: &Params) -> Reply {
        match self.find(table, sys_id) {
            Some(record) => {
                Reply::json(StatusCode::OK, json!({ "result": self.render(table, record, &params.render_options()) }))
            }
            None => no_record_found(),
        }
    }

    fn create_from_request(&mut self, table: &str, body: &[u8], user: &str, params: &Params) -> Reply {
        let Some(fields) = json_object(body) else {
            return unreadable_request();
        };
        let sys_id = self.create(table, fields, user, SystemFields::Ignore);
        let Some(record) = self.find(table, &sys_id) else {
            return no_record_found();
        };
        let location = format!("{}/api/now/table/{table}/{sys_id}", self.base_url);
        Reply::json(StatusCode::CREATED, json!({ "result": self.render(table, record, &params.render_options()) }))
            .header(header::LOCATION, location)
    }

    fn update_from_request(&mut self, table: &str, sys_id: &str, body: &[u8], user: &str, params: &Params) -> Reply {
        let Some(fields) = json_object(body) else {
            return unreadable_request();
        };
        if self.modify(table, sys_id, fields, user).is_none() {
            return no_record_found();
        }
        self.read(table, sys_id, params)
    }

    fn delete(&mut self, table: &str, sys_id: &str) -> Reply {
        if !self.tables.get_mut(table).is_some_and(|records| records.remove(sys_id)) {
            return no_record_found();
        }
        Reply { status: StatusCode::NO_CONTENT, headers: Vec::new(), body: None }
    }
}

fn json_object(body: &[u8]) -> Option<Record> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => Some(fields),
        _ => None,
    }
}

fn into_object(value: Value) -> Record {
    match value {
        Value::Object(fields) => fields,
        _ => Record::new(),
    }
}

fn no_record_found() -> Reply {
    Reply::error(StatusCode::NOT_FOUND, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")
}

fn unreadable_request() -> Reply {
    Reply::error(
        StatusCode::BAD_REQUEST,
        "Exception while reading request",
        "Verify Request body and Content-type headers. Not able to parse request",
    )
}

fn method_not_supported(method: &Method) -> Reply {
    Reply::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not Supported",
        format!("The HTTP method {method} is not supported by this resource"),
    )
}

// ---------------------------------------------------------------------------------------------
// Tables: records in insertion order, with hash indexes
// ---------------------------------------------------------------------------------------------

/// Fields looked up on nearly every request: `sys_id` by reads and updates, `number` by people,
/// `correlation_id` and `message_key` by itsmc before each incident or alert it raises (and by event
/// processing, which matches alerts by message key).
const INDEXED_FIELDS: [&str; 4] = ["sys_id", "number", "correlation_id", "message_key"];

/// A record's place in its table: rows are numbered in insertion order and never renumbered.
type RowId = u64;

/// value → rows holding it, for one field. It exists so that finding a record by `sys_id`, or
/// answering `correlation_id=…`, costs a hash lookup rather than a scan of the table: the load
/// benchmark stores 20,000+ incidents and looks one up per alert, and scanning made it measure the
/// emulator instead of itsmc. Every row is indexed, empty values included (a missing field reads as
/// empty), so a lookup never needs to fall back to a scan.
struct FieldIndex {
    field: &'static str,
    rows: HashMap<String, BTreeSet<RowId>>,
}

impl FieldIndex {
    fn new(field: &'static str) -> Self {
        Self { field, rows: HashMap::new() }
    }

    fn add(&mut self, value: &str, row: RowId) {
        self.rows.entry(value.to_owned()).or_default().insert(row);
    }

    fn remove(&mut self, value: &str, row: RowId) {
        if let Some(rows) = self.rows.get_mut(value) {
            rows.remove(&row);
            if rows.is_empty() {
                self.rows.remove(value);
            }
        }
    }
}

/// One table's records in insertion order, with a [`FieldIndex`] per [`INDEXED_FIELDS`] entry.
/// Records are only added, changed and removed through these methods, which keep the indexes in
/// step.
struct Table {
    records: BTreeMap<RowId, Record>,
    next_row: RowId,
    indexes: [FieldIndex; INDEXED_FIELDS.len()],
}

impl Table {
    fn new() -> Self {
        Self { records: BTreeMap::new(), next_row: 0, indexes: INDEXED_FIELDS.map(FieldIndex::new) }
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    /// Every record, in insertion order.
    fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    /// The rows whose `field` is `value`, in insertion order; `None` when `field` has no index.
    fn rows_with(&self, field: &str, value: &str) -> Option<&BTreeSet<RowId>> {
        static NO_ROWS: BTreeSet<RowId> = BTreeSet::new();
        let index = self.indexes.iter().find(|index| index.field == field)?;
        Some(index.rows.get(value).unwrap_or(&NO_ROWS))
    }

    fn records_in<'a>(&'a self, rows: &'a BTreeSet<RowId>) -> impl Iterator<Item = &'a Record> {
        rows.iter().filter_map(|row| self.records.get(row))
    }

    fn row_of(&self, sys_id: &str) -> Option<RowId> {
        self.rows_with("sys_id", sys_id)?.first().copied()
    }

    fn get(&self, sys_id: &str) -> Option<&Record> {
        self.records.get(&self.row_of(sys_id)?)
    }

    fn insert(&mut self, record: Record) {
        let row = self.next_row;
        self.next_row += 1;
        for index in &mut self.indexes {
            index.add(text(&record, index.field), row);
        }
        self.records.insert(row, record);
    }

    /// Runs `change` on the record with this `sys_id`, then re-indexes the fields it changed.
    /// `None` when there is no such record.
    fn update<T>(&mut self, sys_id: &str, change: impl FnOnce(&mut Record) -> T) -> Option<T> {
        let row = self.row_of(sys_id)?;
        let record = self.records.get_mut(&row)?;
        let before: Vec<String> = self.indexes.iter().map(|index| text(record, index.field).to_owned()).collect();
        let outcome = change(record);
        for (index, old) in self.indexes.iter_mut().zip(before) {
            let new = text(record, index.field);
            if new != old {
                index.remove(&old, row);
                index.add(new, row);
            }
        }
        Some(outcome)
    }

    /// `false` when there is no such record.
    fn remove(&mut self, sys_id: &str) -> bool {
        let Some(row) = self.row_of(sys_id) else {
            return false;
        };
        let Some(record) = self.records.remove(&row) else {
            return false;
        };
        for index in &mut self.indexes {
            index.remove(text(&record, index.field), row);
        }
        true
    }

    /// The records matching `query`, in insertion order. When the query requires `field=value` on an
    /// indexed field, only the rows holding that value are examined (the fewest, if several qualify);
    /// the whole query still applies to them, so the answer is the same as a full scan's.
    fn select(&self, query: &EncodedQuery) -> Vec<&Record> {
        let narrowest = query
            .required_equalities()
            .filter_map(|(field, value)| self.rows_with(field, value))
            .min_by_key(|rows| rows.len());
        match narrowest {
            Some(rows) => self.records_in(rows).filter(|record| query.matches(record)).collect(),
            None => self.records().filter(|record| query.matches(record)).collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Record store: inserts, updates, journal, numbering, incident rules
// ---------------------------------------------------------------------------------------------

/// Whether `sys_*` fields from the caller are kept. The Table API generates them (the docs say they
/// "cannot be updated"); test seeding may set them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SystemFields {
    Ignore,
    Honour,
}

/// ServiceNow stores every field as a string, so what a client sends is read back as text: numbers
/// and booleans as written, `null` as empty, a reference object by its `value`.
fn stored_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::Object(object) => match object.get("value") {
            Some(inner) if !inner.is_object() => stored_text(inner),
            _ => value.to_string(),
        },
        Value::Array(_) => value.to_string(),
    }
}

/// Journal values of an insert or update, work notes before comments whatever order the client
/// wrote them in (the request's key order is not kept).
fn journal_entries(input: &Record) -> Vec<(&'static str, String)> {
    JOURNAL_FIELDS.iter().filter_map(|field| input.get(*field).map(|value| (*field, stored_text(value)))).collect()
}

fn text<'a>(record: &'a Record, field: &str) -> &'a str {
    record.get(field).and_then(Value::as_str).unwrap_or_default()
}

fn set(record: &mut Record, field: &str, value: impl Into<String>) {
    record.insert(field.to_owned(), Value::String(value.into()));
}

/// Counters are text like every other field; seeded garbage counts as 0.
fn increment(record: &mut Record, field: &str) {
    let next = text(record, field).parse::<u64>().unwrap_or(0).saturating_add(1);
    set(record, field, next.to_string());
}

fn set_if_empty(record: &mut Record, field: &str, value: &str) {
    if text(record, field).is_empty() {
        set(record, field, value);
    }
}

fn now_timestamp() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

fn is_sys_id(candidate: &str) -> bool {
    candidate.len() == 32 && candidate.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Tables whose records carry work notes and comments.
fn is_task_table(table: &str) -> bool {
    matches!(
        table,
        "task"
            | "incident"
            | "problem"
            | "change_request"
            | "change_task"
            | "sc_request"
            | "sc_req_item"
            | "sc_task"
            | "em_alert"
    )
}

/// The `number` prefix ServiceNow uses for a table; `None` for tables without a number field.
/// Tables it does not know get a prefix made from their name.
fn number_prefix(table: &str) -> Option<String> {
    let known = match table {
        "incident" => "INC",
        "em_alert" => "Alert",
        "change_request" => "CHG",
        "change_task" => "CTASK",
        "problem" => "PRB",
        "sc_request" => "REQ",
        "sc_req_item" => "RITM",
        "sc_task" => "SCTASK",
        "task" => "TASK",
        "kb_knowledge" => "KB",
        "em_event" | "core_company" | "cmn_location" | JOURNAL_TABLE => return None,
        _ if table.starts_with("sys_") || table.starts_with("cmdb") => return None,
        _ => {
            let generated: String = table
                .trim_start_matches("u_")
                .chars()
                .filter(char::is_ascii_alphabetic)
                .take(3)
                .collect::<String>()
                .to_ascii_uppercase();
            return Some(if generated.is_empty() { "REC".to_owned() } else { generated });
        }
    };
    Some(known.to_owned())
}

/// Columns a new record of an out-of-the-box table always has, set or not, so clients find every
/// field they read. Values follow the docs' example records.
fn default_fields(table: &str) -> &'static [(&'static str, &'static str)] {
    match table {
        "incident" => &[
            ("short_description", ""),
            ("description", ""),
            ("caller_id", ""),
            ("category", "inquiry"),
            ("subcategory", ""),
            ("contact_type", ""),
            ("assignment_group", ""),
            ("assigned_to", ""),
            ("cmdb_ci", ""),
            ("business_service", ""),
            ("company", ""),
            ("location", ""),
            ("correlation_id", ""),
            ("correlation_display", ""),
            ("close_code", ""),
            ("close_notes", ""),
            ("resolved_at", ""),
            ("resolved_by", ""),
            ("closed_at", ""),
            ("closed_by", ""),
            ("parent_incident", ""),
            ("problem_id", ""),
            ("severity", "3"),
            ("escalation", "0"),
            ("notify", "1"),
            ("made_sla", "true"),
            ("knowledge", "false"),
            ("approval", "not requested"),
            ("upon_approval", "proceed"),
            ("upon_reject", "cancel"),
            ("child_incidents", "0"),
            ("reassignment_count", "0"),
            ("reopen_count", "0"),
            ("hold_reason", ""),
            ("due_date", ""),
            ("watch_list", ""),
            ("work_notes_list", ""),
            ("sys_domain_path", "/"),
            ("sys_tags", ""),
        ],
        "em_alert" => &[
            ("source", ""),
            ("node", ""),
            ("type", ""),
            ("resource", ""),
            ("metric_name", ""),
            ("severity", ""),
            ("description", ""),
            ("message_key", ""),
            ("additional_info", ""),
            ("incident", ""),
            ("acknowledged", "false"),
            ("maintenance", "false"),
            ("event_count", "0"),
        ],
        _ => &[],
    }
}

/// The default priority lookup (impact × urgency) of a ServiceNow instance.
fn incident_priority(impact: &str, urgency: &str) -> Option<&'static str> {
    Some(match (impact, urgency) {
        ("1", "1") => "1",
        ("1", "2") | ("2", "1") => "2",
        ("1", "3") | ("2", "2") | ("3", "1") => "3",
        ("2", "3") | ("3", "2") => "4",
        ("3", "3") => "5",
        _ => return None,
    })
}

impl Instance {
    fn find(&self, table: &str, sys_id: &str) -> Option<&Record> {
        self.tables.get(table)?.get(sys_id)
    }

    fn next_number(&mut self, prefix: &str) -> String {
        let sequence = self.sequences.entry(prefix.to_owned()).or_insert(0);
        *sequence += 1;
        // New instances number from 0010001 (the docs' example insert answers INC0010002).
        format!("{prefix}{:07}", 10_000 + *sequence)
    }

    /// Inserts a record with the defaults ServiceNow fills in and returns its `sys_id`.
    fn create(&mut self, table: &str, input: Record, user: &str, system_fields: SystemFields) -> String {
        let now = now_timestamp();
        let requested_id =
            input.get("sys_id").map(stored_text).filter(|id| is_sys_id(id) && self.find(table, id).is_none());
        let sys_id = requested_id.unwrap_or_else(random_sys_id);

        let mut record = Record::new();
        let journal = journal_entries(&input);
        let mut system_overrides = Vec::new();
        for (field, value) in &input {
            let value = stored_text(value);
            if JOURNAL_FIELDS.contains(&field.as_str()) {
                continue;
            } else if field.starts_with("sys_") {
                system_overrides.push((field.clone(), value));
            } else {
                set(&mut record, field, value);
            }
        }

        set(&mut record, "sys_id", sys_id.clone());
        set(&mut record, "sys_class_name", table);
        set(&mut record, "sys_created_on", now.clone());
        set(&mut record, "sys_updated_on", now.clone());
        set(&mut record, "sys_created_by", user);
        set(&mut record, "sys_updated_by", user);
        set(&mut record, "sys_mod_count", "0");
        set(&mut record, "sys_domain", "global");
        set_if_empty(&mut record, "active", "true");
        if let Some(prefix) = number_prefix(table)
            && text(&record, "number").is_empty()
        {
            let number = self.next_number(&prefix);
            set(&mut record, "number", number);
        }
        if is_task_table(table) {
            for field in JOURNAL_FIELDS.iter().chain(&["comments_and_work_notes"]) {
                set(&mut record, field, "");
            }
        }
        for (field, default) in default_fields(table) {
            if !record.contains_key(*field) {
                set(&mut record, field, *default);
            }
        }
        match table {
            "incident" => {
                if text(&record, "state").is_empty() {
                    let state = text(&record, "incident_state").to_owned();
                    set(&mut record, "state", if state.is_empty() { "1" } else { &state });
                }
                set_if_empty(&mut record, "impact", "3");
                set_if_empty(&mut record, "urgency", "3");
                if text(&record, "priority").is_empty() {
                    let priority = incident_priority(text(&record, "impact"), text(&record, "urgency"));
                    set(&mut record, "priority", priority.unwrap_or("5"));
                }
                set_if_empty(&mut record, "opened_at", &now);
                set_if_empty(&mut record, "opened_by", user);
                apply_incident_state(&mut record, None, user, &now);
            }
            "em_alert" => set_if_empty(&mut record, "state", "Open"),
            "em_event" => set_if_empty(&mut record, "state", "Ready"),
            _ => {}
        }
        if system_fields == SystemFields::Honour {
            for (field, value) in system_overrides {
                if field != "sys_id" {
                    set(&mut record, &field, value);
                }
            }
        }

        self.tables.entry(table.to_owned()).or_insert_with(Table::new).insert(record);
        for (element, value) in journal {
            self.append_journal(table, &sys_id, element, &value, user);
        }
        if table == "em_event" {
            self.process_event(&sys_id, user);
        }
        sys_id
    }

    /// Applies a PATCH/PUT (they behave the same on ServiceNow). `None` when there is no record.
    fn modify(&mut self, table: &str, sys_id: &str, input: Record, user: &str) -> Option<()> {
        let now = now_timestamp();
        let journal = journal_entries(&input);
        self.tables.get_mut(table)?.update(sys_id, |record| apply_change(table, record, &input, user, &now))?;
        for (element, value) in journal {
            self.append_journal(table, sys_id, element, &value, user);
        }
        Some(())
    }

    /// Journal entries live in their own table, as on ServiceNow, so clients can read them back
    /// through the Table API (`sys_journal_field?sysparm_query=element_id=…`).
    fn append_journal(&mut self, table: &str, sys_id: &str, element: &str, value: &str, user: &str) {
        if value.is_empty() {
            return;
        }
        let now = now_timestamp();
        let mut entry = Record::new();
        set(&mut entry, "sys_id", random_sys_id());
        set(&mut entry, "element_id", sys_id);
        set(&mut entry, "element", element);
        set(&mut entry, "name", table);
        set(&mut entry, "value", value);
        set(&mut entry, "sys_created_on", now);
        set(&mut entry, "sys_created_by", user);
        self.tables.entry(JOURNAL_TABLE.to_owned()).or_insert_with(Table::new).insert(entry);
    }
}

/// The field changes of a PATCH/PUT, with the incident rules they trigger; journal fields and
/// `sys_*` fields from the client are left out.
fn apply_change(table: &str, record: &mut Record, input: &Record, user: &str, now: &str) {
    let previous_state = text(record, "state").to_owned();
    for (field, value) in input {
        if !JOURNAL_FIELDS.contains(&field.as_str()) && !field.starts_with("sys_") {
            set(record, field, stored_text(value));
        }
    }
    if table == "incident" {
        if input.contains_key("incident_state") && !input.contains_key("state") {
            let state = text(record, "incident_state").to_owned();
            set(record, "state", state);
        }
        let rates_changed = input.contains_key("impact") || input.contains_key("urgency");
        if rates_changed
            && !input.contains_key("priority")
            && let Some(priority) = incident_priority(text(record, "impact"), text(record, "urgency"))
        {
            set(record, "priority", priority);
        }
        if input.contains_key("state") || input.contains_key("incident_state") {
            apply_incident_state(record, Some(previous_state.as_str()), user, now);
        }
    }
    increment(record, "sys_mod_count");
    set(record, "sys_updated_on", now);
    set(record, "sys_updated_by", user);
}

/// Incident states: 1 New, 2 In Progress, 3 On Hold, 6 Resolved, 7 Closed, 8 Canceled.
fn apply_incident_state(record: &mut Record, previous: Option<&str>, user: &str, now: &str) {
    let state = text(record, "state").to_owned();
    set(record, "incident_state", state.clone());
    match state.as_str() {
        "6" => {
            set(record, "active", "false");
            set_if_empty(record, "resolved_at", now);
            set_if_empty(record, "resolved_by", user);
        }
        "7" => {
            set(record, "active", "false");
            set_if_empty(record, "resolved_at", now);
            set_if_empty(record, "resolved_by", user);
            set_if_empty(record, "closed_at", now);
            set_if_empty(record, "closed_by", user);
        }
        "8" => set(record, "active", "false"),
        "1" | "2" | "3" => {
            set(record, "active", "true");
            if matches!(previous, Some("6" | "7" | "8")) {
                for field in ["resolved_at", "resolved_by", "closed_at", "closed_by"] {
                    set(record, field, "");
                }
                increment(record, "reopen_count");
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering: display values, references, field projection
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum DisplayMode {
    Value,
    Display,
    Both,
}

struct RenderOptions {
    display: DisplayMode,
    exclude_reference_link: bool,
    fields: Option<Vec<String>>,
}

/// The table a reference field points to. The emulator has no dictionary, so this is the usual
/// out-of-the-box list.
fn reference_target(field: &str) -> Option<&'static str> {
    Some(match field {
        "caller_id" | "opened_by" | "assigned_to" | "resolved_by" | "closed_by" | "requested_for" => "sys_user",
        "assignment_group" | "sys_domain" => "sys_user_group",
        "cmdb_ci" => "cmdb_ci",
        "business_service" => "cmdb_ci_service",
        "company" => "core_company",
        "location" => "cmn_location",
        "problem_id" => "problem",
        "parent" => "task",
        "parent_incident" | "incident" => "incident",
        "rfc" | "caused_by" => "change_request",
        "alert" => "em_alert",
        _ => return None,
    })
}

/// Labels of the out-of-the-box choice lists a client is likely to display.
fn choice_label(table: &str, field: &str, value: &str) -> Option<&'static str> {
    let incident_like = matches!(table, "incident" | "problem" | "change_request" | "task");
    Some(match (field, value) {
        ("state" | "incident_state", _) if table == "incident" => match value {
            "1" => "New",
            "2" => "In Progress",
            "3" => "On Hold",
            "6" => "Resolved",
            "7" => "Closed",
            "8" => "Canceled",
            _ => return None,
        },
        ("impact" | "urgency", _) | ("severity", _) if incident_like => match value {
            "1" => "1 - High",
            "2" => "2 - Medium",
            "3" => "3 - Low",
            _ => return None,
        },
        ("priority", _) if incident_like => match value {
            "1" => "1 - Critical",
            "2" => "2 - High",
            "3" => "3 - Moderate",
            "4" => "4 - Low",
            "5" => "5 - Planning",
            _ => return None,
        },
        ("severity", _) if matches!(table, "em_alert" | "em_event") => match value {
            "0" => "Clear",
            "1" => "Critical",
            "2" => "Major",
            "3" => "Minor",
            "4" => "Warning",
            "5" => "Info",
            _ => return None,
        },
        _ => return None,
    })
}

impl Instance {
    fn render(&self, table: &str, record: &Record, options: &RenderOptions) -> Value {
        let fields: Vec<&str> = match &options.fields {
            Some(fields) => fields.iter().map(String::as_str).collect(),
            None => record.keys().map(String::as_str).collect(),
        };
        let rendered: Record = fields
            .into_iter()
            .map(|field| {
                let value = text(record, field);
                (field.to_owned(), self.render_field(table, field, value, options))
            })
            .collect();
        Value::Object(rendered)
    }

    fn render_field(&self, table: &str, field: &str, value: &str, options: &RenderOptions) -> Value {
        if let Some(target) = reference_target(field).filter(|_| !value.is_empty()) {
            let link = format!("{}/api/now/table/{target}/{value}", self.base_url);
            let shown = self.reference_display(target, value);
            return match (options.display, options.exclude_reference_link) {
                (DisplayMode::Value, false) => json!({ "link": link, "value": value }),
                (DisplayMode::Value, true) => json!(value),
                (DisplayMode::Display, false) => json!({ "display_value": shown, "link": link }),
                (DisplayMode::Display, true) => json!(shown),
                (DisplayMode::Both, false) => {
                    json!({ "display_value": shown, "link": link, "value": value })
                }
                (DisplayMode::Both, true) => json!({ "display_value": shown, "value": value }),
            };
        }
        let shown = choice_label(table, field, value).unwrap_or(value);
        match options.display {
            DisplayMode::Value => json!(value),
            DisplayMode::Display => json!(shown),
            DisplayMode::Both => json!({ "display_value": shown, "value": value }),
        }
    }

    /// The referenced record's display field (name, else number…), or the raw value when the
    /// emulator holds no such record.
    fn reference_display(&self, target: &str, sys_id: &str) -> String {
        let referenced = if target == "task" {
            self.tables.keys().find_map(|table| self.find(table, sys_id))
        } else {
            self.find(target, sys_id)
        };
        referenced
            .and_then(|record| {
                ["name", "number", "user_name", "short_description"]
                    .into_iter()
                    .map(|field| text(record, field))
                    .find(|shown| !shown.is_empty())
            })
            .unwrap_or(sys_id)
            .to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Encoded queries
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operator {
    Equals,
    NotEquals,
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
    In,
    NotIn,
    Like,
    NotLike,
    StartsWith,
    EndsWith,
    IsEmpty,
    IsNotEmpty,
    EmptyString,
    Anything,
    Between,
    SameAs,
    NotSameAs,
}

/// Tried in order at the end of the field name, so longer spellings come before their prefixes.
const OPERATORS: [(&str, Operator); 19] = [
    ("NOT LIKE", Operator::NotLike),
    ("NOT IN", Operator::NotIn),
    ("NSAMEAS", Operator::NotSameAs),
    ("ISNOTEMPTY", Operator::IsNotEmpty),
    ("ISEMPTY", Operator::IsEmpty),
    ("EMPTYSTRING", Operator::EmptyString),
    ("STARTSWITH", Operator::StartsWith),
    ("ENDSWITH", Operator::EndsWith),
    ("ANYTHING", Operator::Anything),
    ("BETWEEN", Operator::Between),
    ("SAMEAS", Operator::SameAs),
    ("LIKE", Operator::Like),
    ("IN", Operator::In),
    ("!=", Operator::NotEquals),
    (">=", Operator::GreaterOrEqual),
    ("<=", Operator::LessOrEqual),
    ("=", Operator::Equals),
    (">", Operator::Greater),
    ("<", Operator::Less),
];

#[derive(Debug)]
struct Condition {
    field: String,
    operator: Operator,
    value: String,
}

/// `^NQ`-separated groups (any may match) of `^`-joined clauses (all must match) of `^OR`-joined
/// conditions (one must match), plus the requested ordering.
#[derive(Debug, Default)]
struct EncodedQuery {
    groups: Vec<Vec<Vec<Condition>>>,
    order: Vec<(String, bool)>,
}

/// Splits on `^`, where `^^` stands for a literal caret inside a value.
fn split_encoded_query(query: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut chars = query.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '^' {
            current.push(c);
        } else if chars.peek() == Some(&'^') {
            chars.next();
            current.push('^');
        } else {
            segments.push(std::mem::take(&mut current));
        }
    }
    segments.push(current);
    segments
}

impl EncodedQuery {
    fn parse(query: &str) -> Self {
        let mut parsed = Self { groups: vec![Vec::new()], order: Vec::new() };
        for segment in split_encoded_query(query) {
            if let Some(field) = segment.strip_prefix("ORDERBYDESC") {
                parsed.order_by(field, true);
            } else if let Some(field) = segment.strip_prefix("ORDERBY") {
                parsed.order_by(field, false);
            } else if segment == "EQ" || segment.starts_with("GROUPBY") {
                // End-of-query marker and grouping: nothing to filter on.
            } else if let Some(rest) = segment.strip_prefix("NQ") {
                parsed.groups.push(Vec::new());
                parsed.and(parse_condition(rest));
            } else if let Some(rest) = segment.strip_prefix("OR") {
                parsed.or(parse_condition(rest));
            } else {
                parsed.and(parse_condition(&segment));
            }
        }
        parsed
    }

    fn order_by(&mut self, field: &str, descending: bool) {
        if !field.is_empty() {
            self.order.push((field.to_owned(), descending));
        }
    }

    /// Invalid conditions are dropped: ServiceNow ignores the invalid part of a query and filters
    /// on the rest.
    fn and(&mut self, condition: Option<Condition>) {
        if let (Some(condition), Some(group)) = (condition, self.groups.last_mut()) {
            group.push(vec![condition]);
        }
    }

    fn or(&mut self, condition: Option<Condition>) {
        let Some(condition) = condition else { return };
        let Some(group) = self.groups.last_mut() else {
            return;
        };
        match group.last_mut() {
            Some(clause) => clause.push(condition),
            None => group.push(vec![condition]),
        }
    }

    fn matches(&self, record: &Record) -> bool {
        let mut groups = self.groups.iter().filter(|group| !group.is_empty()).peekable();
        if groups.peek().is_none() {
            return true;
        }
        groups.any(|group| group.iter().all(|clause| clause.iter().any(|condition| condition.matches(record))))
    }

    /// `(field, value)` pairs that every matching record must have: the `=` conditions standing alone
    /// (not `^OR`ed) in a query with a single group. With `^NQ` a record may match another group, so
    /// nothing is required.
    fn required_equalities(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut groups = self.groups.iter().filter(|group| !group.is_empty());
        let single_group = match (groups.next(), groups.next()) {
            (Some(group), None) => Some(group),
            _ => None,
        };
        single_group.into_iter().flatten().filter_map(|clause| match clause.as_slice() {
            [Condition { field, operator: Operator::Equals, value }] => Some((field.as_str(), value.as_str())),
            _ => None,
        })
    }

    fn sort(&self, rows: &mut [&Record]) {
        if self.order.is_empty() {
            return;
        }
        rows.sort_by(|a, b| {
            for (field, descending) in &self.order {
                let ordering = sort_order(text(a, field), text(b, field));
                let ordering = if *descending { ordering.reverse() } else { ordering };
                if ordering != Ordering::Equal {
                    return ordering;
                }
            }
            Ordering::Equal
        });
    }
}

/// `field` `OPERATOR` `value`. Field names are lower-case, as ServiceNow column names are, which is
/// what lets an operator like `LIKE` follow the name without a separator.
fn parse_condition(text: &str) -> Option<Condition> {
    let name_length = text
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'))
        .unwrap_or(text.len());
    if name_length == 0 {
        return None;
    }
    let (field, rest) = text.split_at(name_length);
    OPERATORS.iter().find_map(|(spelling, operator)| {
        rest.strip_prefix(spelling).map(|value| Condition {
            field: field.to_owned(),
            operator: *operator,
            value: value.to_owned(),
        })
    })
}

/// Numbers compare as numbers (`10 > 9`), everything else as text, which is also right for the
/// `YYYY-MM-DD HH:MM:SS` timestamps.
fn compare_values(a: &str, b: &str) -> Ordering {
    match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        (Ok(x), Ok(y)) if x.is_finite() && y.is_finite() => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => a.cmp(b),
    }
}

/// Empty values sort first in ascending order, like NULLs in the database behind ServiceNow.
fn sort_order(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => compare_values(a, b),
    }
}

impl Condition {
    fn matches(&self, record: &Record) -> bool {
        let actual = text(record, &self.field);
        let expected = self.value.as_str();
        // Ordering comparisons never match an empty value, as with NULL in SQL.
        let ordered = |accept: fn(Ordering) -> bool| !actual.is_empty() && accept(compare_values(actual, expected));
        let listed = || expected.split(',').any(|item| item.trim() == actual);
        match self.operator {
            Operator::Equals => actual == expected,
            Operator::NotEquals => actual != expected,
            Operator::Greater => ordered(Ordering::is_gt),
            Operator::GreaterOrEqual => ordered(Ordering::is_ge),
            Operator::Less => ordered(Ordering::is_lt),
            Operator::LessOrEqual => ordered(Ordering::is_le),
            Operator::In => listed(),
            Operator::NotIn => !listed(),
            Operator::Like => actual.contains(expected),
            Operator::NotLike => !actual.contains(expected),
            Operator::StartsWith => actual.starts_with(expected),
            Operator::EndsWith => actual.ends_with(expected),
            Operator::IsEmpty | Operator::EmptyString => actual.is_empty(),
            Operator::IsNotEmpty => !actual.is_empty(),
            Operator::Anything => true,
            Operator::Between => expected.split_once('@').is_some_and(|(low, high)| {
                !actual.is_empty() && compare_values(actual, low).is_ge() && compare_values(actual, high).is_le()
            }),
            Operator::SameAs => actual == text(record, expected),
            Operator::NotSameAs => actual != text(record, expected),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Event Management (/api/global/em/jsonv2)
// ---------------------------------------------------------------------------------------------

/// Event fields copied onto the alert they open.
const ALERT_FIELDS: [&str; 9] =
    ["source", "event_class", "node", "type", "resource", "metric_name", "severity", "description", "additional_info"];

impl Instance {
    fn event_management(&mut self, call: &Call, body: &[u8], user: &str) -> Reply {
        if call.method != Method::POST {
            return method_not_supported(&call.method);
        }
        let Some(mut request) = json_object(body) else {
            return unreadable_request();
        };
        let Some(Value::Array(events)) = request.remove("records") else {
            return unreadable_request();
        };
        let mut inserted = 0;
        for event in events {
            if let Value::Object(fields) = event {
                self.create("em_event", fields, user, SystemFields::Ignore);
                inserted += 1;
            }
        }
        Reply::json(
            StatusCode::OK,
            json!({ "result": { "Default Bulk Endpoint": format!("{inserted} events were inserted") } }),
        )
    }

    /// Turns a stored event into alert changes, keyed by message key.
    fn process_event(&mut self, event_id: &str, user: &str) {
        let Some(event) = self.find("em_event", event_id).cloned() else {
            return;
        };
        let message_key = match text(&event, "message_key") {
            "" => ["source", "node", "type", "resource", "metric_name"]
                .iter()
                .map(|field| text(&event, field))
                .collect::<String>(),
            key => key.to_owned(),
        };
        let severity = text(&event, "severity");
        let clears = severity == "0" || text(&event, "resolution_state").eq_ignore_ascii_case("Closing");
        let open_alert = self.tables.get("em_alert").and_then(|alerts| {
            let same_key = alerts.rows_with("message_key", &message_key)?;
            let open = alerts.records_in(same_key).find(|alert| text(alert, "state") != "Closed")?;
            Some(text(open, "sys_id").to_owned())
        });

        let (alert_id, notes) = match (open_alert, clears) {
            (Some(alert_id), true) => {
                let mut change = Record::new();
                set(&mut change, "state", "Closed");
                self.modify("em_alert", &alert_id, change, user);
                (alert_id, "Closed the open alert with this message key")
            }
            (Some(alert_id), false) => {
                let count = self
                    .find("em_alert", &alert_id)
                    .map_or(0, |alert| text(alert, "event_count").parse::<u64>().unwrap_or(0));
                let mut change = Record::new();
                for field in ["severity", "description", "additional_info"] {
                    if event.contains_key(field) {
                        set(&mut change, field, text(&event, field));
                    }
                }
                set(&mut change, "event_count", count.saturating_add(1).to_string());
                self.modify("em_alert", &alert_id, change, user);
                (alert_id, "Updated the open alert with this message key")
            }
            (None, true) => (String::new(), "No open alert to close"),
            (None, false) => {
                let mut alert = Record::new();
                for field in ALERT_FIELDS {
                    set(&mut alert, field, text(&event, field));
                }
                set(&mut alert, "message_key", message_key);
                set(&mut alert, "event_count", "1");
                set(&mut alert, "acknowledged", "false");
                let alert_id = self.create("em_alert", alert, user, SystemFields::Ignore);
                (alert_id, "Created a new alert")
            }
        };
        if let Some(events) = self.tables.get_mut("em_event") {
            events.update(event_id, |stored| {
                set(stored, "state", "Processed");
                set(stored, "alert", alert_id);
                set(stored, "processing_notes", notes);
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

/// A JSON object with its keys in the given order (serde_json's `Map` sorts them), from already
/// serialized values. Used where the fixtures show ServiceNow's order, for byte-exact comparisons.
fn ordered_object(members: &[(&str, String)]) -> String {
    let members: Vec<String> = members.iter().map(|(key, value)| format!("{}:{value}", json!(key))).collect();
    format!("{{{}}}", members.join(","))
}

struct Reply {
    status: StatusCode,
    headers: Vec<(HeaderName, String)>,
    /// Serialized JSON.
    body: Option<String>,
}

impl Reply {
    fn json(status: StatusCode, body: Value) -> Self {
        Self::json_text(status, body.to_string())
    }

    fn json_text(status: StatusCode, body: String) -> Self {
        Self { status, headers: Vec::new(), body: Some(body) }
    }

    /// ServiceNow's error envelope, keys in the order instances send them.
    fn error(status: StatusCode, message: &str, detail: impl Into<Value>) -> Self {
        let error = ordered_object(&[("message", json!(message).to_string()), ("detail", detail.into().to_string())]);
        Self::json_text(status, ordered_object(&[("error", error), ("status", json!("failure").to_string())]))
    }

    fn header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn into_response(self) -> Response {
        let mut response = match &self.body {
            Some(body) => Response::new(Body::from(body.clone())),
            None => Response::new(Body::empty()),
        };
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if self.body.is_some() {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE));
        }
        for (name, value) in self.headers {
            // Values come from validated table names, sys_ids and encoded URLs; one that still is
            // not a legal header value is dropped rather than risking a panic.
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.append(name, value);
            }
        }
        response
    }
}
