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
//! - **Display values** (`sysparm_display_value=true|all`; with `all` each field is
//!   `{"display_value", "value"}`, plus `link` for references unless excluded), as the docs describe
//!   them: a reference shows the referenced record's display field (`name`, else `number`, `u_number`,
//!   `u_name`, the fallback order a ServiceNow community answer gives for tables without a display
//!   field), or `""` when the referenced record does not exist; a choice shows its label from the
//!   `sys_choice` table (language `en`; a task table without its own choices for a field uses
//!   `task`'s); anything else shows its value. Date-times display exactly as stored, UTC
//!   `YYYY-MM-DD HH:MM:SS`: ServiceNow formats them in the user's time zone and format, and the
//!   emulator's users are all UTC with the default format.
//! - **`sys_choice`** holds, from start, the out-of-the-box choices clients display: incident `state`
//!   (1 New, 2 In Progress, 3 On Hold, 6 Resolved, 7 Closed, 8 Canceled), `impact`/`urgency`/`severity`
//!   (1 - High, 2 - Medium, 3 - Low), `priority` (1 - Critical … 5 - Planning), `escalation` (0 Normal,
//!   1 Moderate, 2 High, 3 Overdue), `category` (inquiry → Inquiry / Help, software, hardware, network,
//!   database), `contact_type`, `hold_reason`; change_request `state` (-5 New, -4 Assess, -3 Authorize,
//!   -2 Scheduled, -1 Implement, 0 Review, 3 Closed, 4 Canceled), `type` (standard/normal/emergency),
//!   `risk`, `conflict_status`, `close_code`, `impact`/`urgency`/`priority`; task `approval`,
//!   `upon_approval`, `upon_reject`, `sys_class_name` (the table's label); alert and event
//!   `severity`. Sources: docs "Create an incident"
//!   (channels Chat, Email, Phone, Monitoring, Self-service, Virtual agent, Walk-in: so `contact_type`
//!   has `chat`, `monitoring` and `virtual_agent` besides email/phone/self-service/walk-in) and
//!   "Create a change request" (Risk is High, Moderate or Low; Conflict status is Conflict, No
//!   Conflict or Not Run); the values from ansible-collections/servicenow.itsm's mappings (risk 1
//!   very high, 2 high, 3 moderate, 4 low; the change states above); a change request read with
//!   `sysparm_display_value=true` in bigpanda's API helpers (risk `High`, type `Normal`, impact
//!   `2 - Medium`, escalation `Normal`, conflict_status `Not Run`, approval `Approved`). Where that
//!   material differs from the obvious: change `risk` labels carry no number (`High`, not `2 - High`)
//!   and `1` Very High is an inactive choice, since the docs offer only the three; `conflict_status`
//!   stores its label as the value (`Not Run`), and so does change `category` (`Other`, as the
//!   captured records hold it).
//! - **`sys_template`** records (`name`, `table`, `template` as an encoded query such as
//!   `short_description=Disk full^urgency=2^EQ`, `active`, `global`, `user`, `groups`,
//!   `short_description`; docs "Create a template using the Template form") are stored and served
//!   like any table; [`ServiceNowEmulator::add_template`] adds one.
//! - **Keyset paging**: every table keeps its records ordered by (`sys_updated_on`, `sys_id`). A list
//!   query whose conditions all must hold and are `= > >= < <=` on `sys_updated_on` (plus any on
//!   `sys_id` once `sys_updated_on=X` fixes the time), ordered by `sys_updated_on` then `sys_id`
//!   (or by `sys_id` alone under `sys_updated_on=X`), is answered from that order in O(log n + page):
//!   the sync's `sys_updated_on>=T^ORDERBYsys_updated_on^ORDERBYsys_id` and, for more than a page in
//!   one second, `sys_updated_on=T^sys_id>S^ORDERBYsys_id`. Every other query scans; both give the
//!   same answer (a self-test compares them on random data).
//! - **Bulk seeding** ([`ServiceNowEmulator::seed`], `seed_incidents`, `seed_change_requests`): a
//!   million records in seconds, with the defaults of a normal insert; the generators make varied,
//!   deterministic records (people, groups and CIs to reference, unicode, quotes, newlines, empty
//!   fields, resolution and planning dates). Records are stored compactly (one string buffer and
//!   one offset array per record) so a million incidents take about a gigabyte.
//! - **Numbers and defaults**: `INC0010001`, `CHG…`, `PRB…`, `RITM…`, `Alert0010001`… per table
//!   (a prefix made from the name for tables it does not know; none for `sys_*`, `cmdb*`, `em_event`).
//!   New incidents and change requests get the usual columns (empty or defaulted as in the docs'
//!   example records and a captured change request), so a client reading `close_code` or
//!   `resolved_at` finds them; new alerts start `Open`.
//! - **Incident lifecycle**: state 6/7/8 sets `active=false` and `resolved_at`/`closed_at`; 1/2/3 sets
//!   `active=true` (and clears the resolution when reopening); `priority` follows the standard
//!   impact × urgency lookup unless the client sets it. Change requests: state 3/4 sets
//!   `active=false` (3 also `closed_at`/`closed_by`), any other state `active=true`. Every update sets
//!   `sys_updated_on` to now and adds one to `sys_mod_count`.
//! - **Encoded queries** (`sysparm_query`): `^`, `^OR`, `^NQ`, `^^` as a literal caret, `ORDERBY` /
//!   `ORDERBYDESC`, operators `= != > >= < <= IN NOT IN LIKE NOT LIKE STARTSWITH ENDSWITH ISEMPTY
//!   ISNOTEMPTY EMPTYSTRING ANYTHING BETWEEN SAMEAS NSAMEAS`. Source: docs "Operators available for
//!   filters and queries". A condition that does not parse is ignored and the rest of the query
//!   still applies, as the Table API docs say of invalid query parts. Values that are plain decimal
//!   numbers (at most 15 digits before and after the point) compare as numbers, everything else as
//!   text (so sys_ids and date-times compare as text).
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
//! - **Hibernation** ([`ServiceNowEmulator::set_hibernating`]): a personal developer instance left
//!   idle hibernates (its database and application server shut down, data kept; docs "Understanding
//!   PDIs"), and any HTTP request to it gets a notice page with a link to the developer portal,
//!   where signing in wakes it (developer.servicenow.com blog "Hibernation and developer instances").
//!   The page, as captured in vdesabou/kafka-docker-playground#8778 and #8780, is HTML headed "Your
//!   instance is hibernating", says to sign in to the site to wake the instance, and has a Sign in
//!   button to `https://developer.servicenow.com/dev.do#!/home?wu=true`. The emulator answers every
//!   request (Table API, Event Management and `/oauth_token.do` alike) with a page carrying those
//!   facts in its own words, `200` and `Content-Type: text/html`. The captures do not show the status;
//!   200 is what clients' reports imply (they fail parsing `<` as JSON rather than on an HTTP error:
//!   FXinnovation/alertmanager-webhook-servicenow#23).
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
//! seconds later) and knows nothing of alert rules, flapping or re-opening closed alerts. Display
//! values know no time zones or date formats (always UTC `YYYY-MM-DD HH:MM:SS`), no translations
//! (only `en` choices), no dependent choices, and no display fields other than the name/number
//! fallback; choice fields outside the seeded list show their value. Templates are stored, not
//! applied (applying them is a form feature, not the Table API's). Change requests have no change
//! models, approvals, risk calculation or conflict detection (their fields hold whatever is set).
//! The hibernation page has none of the real page's styling or images, and waking happens only
//! through [`ServiceNowEmulator::set_hibernating`]. The keyset order is only used for the query shapes
//! above, and only while no `sys_updated_on` or `sys_id` in the table looks like a number (then text
//! order and the numeric comparison could disagree); other queries scan the table. Comparisons are
//! case-sensitive, as the docs state (instances usually compare text case-insensitively).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

use super::serve::lock;

/// User accepted by [`EmulatorConfig::default`].
pub const DEFAULT_USERNAME: &str = "admin";
/// Password of [`DEFAULT_USERNAME`].
pub const DEFAULT_PASSWORD: &str = "admin";
/// OAuth client accepted by [`EmulatorConfig::default`].
pub const DEFAULT_CLIENT_ID: &str = "itsmc-client";
/// Secret of [`DEFAULT_CLIENT_ID`].
pub const DEFAULT_CLIENT_SECRET: &str = "itsmc-secret";
/// The heading of the page a hibernating instance serves (as captured from a real one).
pub const HIBERNATION_HEADING: &str = "Your instance is hibernating";
/// Where the hibernation page sends people to wake the instance.
pub const DEVELOPER_PORTAL_WAKE_URL: &str = "https://developer.servicenow.com/dev.do#!/home?wu=true";

/// ServiceNow rejects REST payloads above this size (KB0747638).
const MAX_BODY_BYTES: usize = 10_485_760;
/// The Table API's default `sysparm_limit`.
const DEFAULT_PAGE_SIZE: usize = 10_000;
const JSON_CONTENT_TYPE: &str = "application/json;charset=UTF-8";
const HTML_CONTENT_TYPE: &str = "text/html";

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
        let thread = lock(&self.thread).take();
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

    /// An administrator changes a user's password; tokens already issued stay valid, as in ServiceNow.
    pub fn set_password(&self, username: &str, password: &str) {
        super::serve::capture::basic("servicenow password", username, password);
        let mut instance = self.lock();
        instance.users.retain(|(known, _)| known != username);
        instance.users.push((username.to_owned(), password.to_owned()));
    }

    /// While down, every request (OAuth included) gets 503 with a ServiceNow-style error body.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// While hibernating, every request (Table API, Event Management and `/oauth_token.do` alike)
    /// gets `200` with `Content-Type: text/html` and the page a sleeping developer instance serves
    /// (headed [`HIBERNATION_HEADING`], linking to [`DEVELOPER_PORTAL_WAKE_URL`]), and has no other
    /// effect. Records and tokens are kept, as a real instance keeps its data while it sleeps.
    pub fn set_hibernating(&self, on: bool) {
        self.lock().hibernating = on;
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
        let instance = self.lock();
        let Some(table) = instance.tables.get(table) else {
            return Vec::new();
        };
        table.live_rows().map(|(_, row)| table.to_record(row)).collect()
    }

    /// One stored record, raw.
    pub fn record(&self, table: &str, sys_id: &str) -> Option<Map<String, Value>> {
        let instance = self.lock();
        let table = instance.tables.get(table)?;
        Some(table.to_record(table.row(table.row_of(sys_id)?)?))
    }

    /// Number of records in `table`.
    pub fn count(&self, table: &str) -> usize {
        self.lock().tables.get(table).map_or(0, Table::len)
    }

    /// Journal entries of a record, oldest first, as `(element, value)` where element is
    /// `work_notes` or `comments`.
    pub fn journal(&self, sys_id: &str) -> Vec<(String, String)> {
        let instance = self.lock();
        let Some(journal) = instance.tables.get(JOURNAL_TABLE) else {
            return Vec::new();
        };
        let (element_id, element, value) = (journal.col("element_id"), journal.col("element"), journal.col("value"));
        journal
            .live_rows()
            .filter(|(_, row)| row.text(element_id) == sys_id)
            .map(|(_, row)| (row.text(element).to_owned(), row.text(value).to_owned()))
            .collect()
    }

    /// Seeds a record as an administrator would, returning its `sys_id`. Unlike the Table API this
    /// honours `sys_*` fields, so tests can back-date `sys_created_on` or choose the `sys_id`.
    /// `fields` should be a JSON object; anything else inserts a record with defaults only.
    pub fn insert(&self, table: &str, fields: Value) -> String {
        let fields = into_object(fields);
        let now = now_timestamp();
        self.lock().create(table, &input_pairs(&fields), ADMIN_ACTOR, SystemFields::Honour, &now)
    }

    /// Inserts many records at once, as [`insert`](Self::insert) would one by one (same defaults,
    /// numbering, lifecycle rules and journal entries; `sys_id`, `number`, `sys_created_on`,
    /// `sys_updated_on` and other `sys_*` fields are kept when given, generated otherwise), but
    /// fast: a million incidents take a few seconds. A given `sys_id` that is not 32 hex digits or
    /// is already taken is replaced by a fresh one, as on insert. Given numbers with the table's
    /// prefix move its sequence past them, so later inserts do not reuse them.
    ///
    /// The emulator is locked while seeding: requests wait until it is done, and `records` must not
    /// call back into the emulator.
    pub fn seed(&self, table: &str, records: impl IntoIterator<Item = Map<String, Value>>) {
        let now = now_timestamp();
        let records = records.into_iter();
        let mut instance = self.lock();
        instance.begin_bulk(table, records.size_hint().0);
        for record in records {
            instance.create(table, &input_pairs(&record), ADMIN_ACTOR, SystemFields::Honour, &now);
            instance.note_seeded_number(table, &record);
        }
        instance.end_bulk(table);
    }

    /// Seeds `n` varied, realistic incidents whose `sys_updated_on` is spread uniformly over
    /// `[from, to)` (so several share a second when `n` is large against the range), together with
    /// the users, groups and configuration items they reference (added once, with fixed sys_ids).
    /// Deterministic: the same `n`, `from` and `to` on a table of the same size give the same
    /// records (a second call therefore adds different ones). About 2 % of `cmdb_ci` references
    /// point to a CI that does not exist, and so display as `""`.
    pub fn seed_incidents(&self, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) {
        self.generate("incident", n, from, to);
    }

    /// Like [`seed_incidents`](Self::seed_incidents), for `change_request`: types, states, risks,
    /// conflict statuses, planned and actual dates, plans with `\r\n` line breaks, close codes.
    pub fn seed_change_requests(&self, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) {
        self.generate("change_request", n, from, to);
    }

    /// Adds an active, global `sys_template` record and returns its `sys_id`. `template` is the
    /// encoded field list, e.g. `short_description=Disk full^urgency=2^assignment_group=<sys_id>^EQ`.
    /// Change `active`, `global`, `user` or `groups` afterwards with [`update`](Self::update).
    pub fn add_template(&self, name: &str, table: &str, template: &str) -> String {
        self.insert(
            TEMPLATE_TABLE,
            json!({"name": name, "table": table, "template": template, "active": "true", "global": "true",
                   "user": "", "groups": "", "short_description": "", "next_child": "", "next": ""}),
        )
    }

    /// Turns the keyset order off (every list query then scans, as any other query does) or back
    /// on. For tests that compare the two ways of answering.
    pub fn set_ordered_index(&self, enabled: bool) {
        self.lock().ordered_index_enabled = enabled;
    }

    /// How many list queries the keyset order has answered so far.
    pub fn ordered_index_uses(&self) -> u64 {
        self.lock().ordered_index_uses
    }

    /// Changes a record as a person in the ServiceNow UI would (e.g. resolving an incident), with
    /// the same rules as a PATCH. Returns `false` when there is no such record.
    pub fn update(&self, table: &str, sys_id: &str, fields: Value) -> bool {
        let fields = into_object(fields);
        let now = now_timestamp();
        self.lock().modify(table, sys_id, input_pairs(&fields), ADMIN_ACTOR, &now).is_some()
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

    fn generate(&self, table: &str, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) {
        let now = now_timestamp();
        let mut instance = self.lock();
        let people = instance.ensure_reference_data(&now);
        let span = (from.timestamp(), to.timestamp().max(from.timestamp() + 1));
        // The table's size goes into the seed too, so that a second call with the same arguments
        // makes new records (with new sys_ids) rather than the same ones again.
        let existing = instance.tables.get(table).map_or(0, Table::len) as u64;
        let seed = GENERATOR_SEED
            ^ (n as u64).rotate_left(17)
            ^ (span.0 as u64).rotate_left(31)
            ^ span.1 as u64
            ^ existing.rotate_left(47);
        let mut rng = StdRng::seed_from_u64(if table == "incident" { seed } else { !seed });
        instance.begin_bulk(table, n);
        // Records are made on a second thread, in batches, while this one stores them: on two
        // cores that hides most of the generating. Batches go back to that thread to be freed, as
        // glibc's allocator is slow to free memory another thread allocated.
        const BATCH: usize = 1_024;
        let (batches, arriving) = std::sync::mpsc::sync_channel::<Vec<Input<'_>>>(2);
        let (used, returned) = std::sync::mpsc::channel::<Vec<Input<'_>>>();
        std::thread::scope(|scope| {
            let people = &people;
            scope.spawn(move || {
                let mut left = n;
                while left > 0 {
                    let batch = (0..left.min(BATCH))
                        .map(|_| match table {
                            "incident" => generate_incident(&mut rng, people, span),
                            _ => generate_change_request(&mut rng, people, span),
                        })
                        .collect();
                    left = left.saturating_sub(BATCH);
                    if batches.send(batch).is_err() {
                        break;
                    }
                    returned.try_iter().for_each(drop);
                }
                drop(batches);
                returned.iter().for_each(drop);
            });
            for batch in arriving {
                for fields in &batch {
                    instance.create(table, fields, ADMIN_ACTOR, SystemFields::Honour, &now);
                }
                let _ = used.send(batch);
            }
            drop(used);
        });
        instance.end_bulk(table);
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

/// A record as the control API and the request bodies see it: field → JSON value.
type Record = Map<String, Value>;

/// Field/value pairs on their way into a record: what a request body or a seed supplies, already
/// turned into text, borrowed where it can be.
type Input<'a> = Vec<(&'a str, Cow<'a, str>)>;

const JOURNAL_TABLE: &str = "sys_journal_field";
const JOURNAL_FIELDS: [&str; 2] = ["work_notes", "comments"];
const CHOICE_TABLE: &str = "sys_choice";
const TEMPLATE_TABLE: &str = "sys_template";
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
    hibernating: bool,
    failures: VecDeque<InjectedFailure>,
    tables: BTreeMap<String, Table>,
    /// Last number handed out per number prefix.
    sequences: HashMap<String, u64>,
    access_tokens: HashMap<String, TokenGrant>,
    refresh_tokens: HashMap<String, TokenGrant>,
    requests: Vec<RequestLog>,
    grants: Vec<String>,
    base_url: String,
    ordered_index_enabled: bool,
    ordered_index_uses: u64,
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
    drop(instance);
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
        for (name, secret) in config.users.iter().chain(&config.oauth_clients) {
            super::serve::capture::basic("servicenow", name, secret);
        }
        let mut instance = Self {
            users: config.users,
            clients: config.oauth_clients,
            access_lifetime: config.access_token_lifetime,
            refresh_lifetime: config.refresh_token_lifetime,
            latency: config.latency,
            rate_limit: config.rate_limit,
            window: RateWindow::starting_now(),
            down: false,
            hibernating: false,
            failures: VecDeque::new(),
            tables: BTreeMap::new(),
            sequences: HashMap::new(),
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            requests: Vec::new(),
            grants: Vec::new(),
            base_url,
            ordered_index_enabled: true,
            ordered_index_uses: 0,
        };
        instance.seed_choices();
        instance
    }

    fn respond(&mut self, call: &Call) -> Reply {
        // A sleeping instance has no application behind its front door: no rate limiter, no API.
        if self.hibernating {
            return hibernation_page();
        }
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

/// The notice a hibernating developer instance serves instead of any answer. The facts (heading,
/// what to do, where) are those of the captured page; the wording and markup are the emulator's.
fn hibernation_page() -> Reply {
    let body = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Instance hibernating</title>\n\
         </head>\n<body>\n<div class=\"instance-hibernating-page\">\n<h1>{HIBERNATION_HEADING}</h1>\n\
         <p class=\"information\">Sign in to the developer site to wake your instance.</p>\n\
         <p><a href=\"{DEVELOPER_PORTAL_WAKE_URL}\">Sign in</a></p>\n\
         <p class=\"information\">Personal developer instances hibernate when they are idle; their data is \
         kept. See <a href=\"https://developer.servicenow.com\">developer.servicenow.com</a> for why.</p>\n\
         </div>\n</body>\n</html>\n"
    );
    Reply { status: StatusCode::OK, headers: Vec::new(), body: Some(body), content_type: HTML_CONTENT_TYPE }
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
        super::serve::capture::secrets("servicenow token", [&access_token, &refresh_token]);
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

    fn list(&mut self, table: &str, params: &Params, path: &str) -> Reply {
        let query = EncodedQuery::parse(&params.encoded_query());
        let limit = params
            .get("sysparm_limit")
            .and_then(|value| value.trim().parse::<usize>().ok())
            .filter(|&limit| limit > 0)
            .unwrap_or(DEFAULT_PAGE_SIZE);
        let offset = params.get("sysparm_offset").and_then(|value| value.trim().parse::<usize>().ok()).unwrap_or(0);

        let (page, total) = match self.tables.get(table) {
            None => (Vec::new(), 0),
            Some(records) => match records.keyset_range(&query).filter(|_| self.ordered_index_enabled) {
                Some(range) => {
                    self.ordered_index_uses += 1;
                    let start = range.start.saturating_add(offset).min(range.end);
                    let end = start.saturating_add(limit).min(range.end);
                    (records.order[start..end].to_vec(), range.len())
                }
                None => {
                    let mut rows = records.select(&query);
                    records.sort(&query, &mut rows);
                    let total = rows.len();
                    (rows.into_iter().skip(offset).take(limit).collect(), total)
                }
            },
        };

        let options = params.render_options();
        let mut body = String::with_capacity(16 + page.len() * 256);
        body.push_str("{\"result\":[");
        if let Some(records) = self.tables.get(table) {
            let plan = self.render_plan(table, records, &options);
            for (n, row) in page.iter().filter_map(|&row| records.row(row)).enumerate() {
                if n > 0 {
                    body.push(',');
                }
                plan.render(row, &mut body);
                if n == 0 {
                    // Size the body from the first record rather than growing it page by page.
                    body.reserve((body.len() + 1) * page.len() * 5 / 4);
                }
            }
        }
        body.push_str("]}");

        let mut reply = Reply::json_text(StatusCode::OK, body);
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
        match self.render_one(table, sys_id, &params.render_options()) {
            Some(record) => Reply::json_text(StatusCode::OK, format!("{{\"result\":{record}}}")),
            None => no_record_found(),
        }
    }

    /// One record as JSON, `None` when there is no such record.
    fn render_one(&self, table: &str, sys_id: &str, options: &RenderOptions) -> Option<String> {
        let records = self.tables.get(table)?;
        let row = records.row(records.row_of(sys_id)?)?;
        let mut out = String::with_capacity(1024);
        self.render_plan(table, records, options).render(row, &mut out);
        Some(out)
    }

    fn create_from_request(&mut self, table: &str, body: &[u8], user: &str, params: &Params) -> Reply {
        let Some(fields) = json_object(body) else {
            return unreadable_request();
        };
        let now = now_timestamp();
        let sys_id = self.create(table, &input_pairs(&fields), user, SystemFields::Ignore, &now);
        let Some(record) = self.render_one(table, &sys_id, &params.render_options()) else {
            return no_record_found();
        };
        let location = format!("{}/api/now/table/{table}/{sys_id}", self.base_url);
        Reply::json_text(StatusCode::CREATED, format!("{{\"result\":{record}}}")).header(header::LOCATION, location)
    }

    fn update_from_request(&mut self, table: &str, sys_id: &str, body: &[u8], user: &str, params: &Params) -> Reply {
        let Some(fields) = json_object(body) else {
            return unreadable_request();
        };
        let now = now_timestamp();
        if self.modify(table, sys_id, input_pairs(&fields), user, &now).is_none() {
            return no_record_found();
        }
        self.read(table, sys_id, params)
    }

    fn delete(&mut self, table: &str, sys_id: &str) -> Reply {
        if !self.tables.get_mut(table).is_some_and(|records| records.remove(sys_id)) {
            return no_record_found();
        }
        Reply { status: StatusCode::NO_CONTENT, headers: Vec::new(), body: None, content_type: JSON_CONTENT_TYPE }
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

/// A JSON object's members as record input: strings borrowed, other values turned into the text
/// ServiceNow would store.
fn input_pairs(fields: &Record) -> Input<'_> {
    fields
        .iter()
        .map(|(field, value)| {
            let text = match value {
                Value::String(text) => Cow::Borrowed(text.as_str()),
                other => Cow::Owned(stored_text(other)),
            };
            (field.as_str(), text)
        })
        .collect()
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
// Tables: compact rows, hash indexes and the keyset order
// ---------------------------------------------------------------------------------------------

/// A record's place in its table: rows are numbered in insertion order and never renumbered.
type RowId = u32;
/// A column's place in its table's list of field names.
type Col = u32;

const UPDATED_ON: &str = "sys_updated_on";
const SYS_ID: &str = "sys_id";

/// A fast, deterministic hasher for the emulator's own maps, whose keys are field names and
/// record values (a multiply-rotate over 8-byte words, finished with MurmurHash3's mixer). Nothing
/// here faces hostile input, so speed wins over SipHash's flooding resistance.
#[derive(Default, Clone, Copy)]
struct QuickHasher(u64);

const QUICK_MULTIPLIER: u64 = 0x517c_c1b7_2722_0a95;

impl QuickHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(QUICK_MULTIPLIER);
    }
}

impl Hasher for QuickHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word));
        }
        self.mix(bytes.len() as u64);
    }

    fn write_u8(&mut self, byte: u8) {
        self.mix(u64::from(byte));
    }

    fn write_u32(&mut self, value: u32) {
        self.mix(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.mix(value);
    }

    fn finish(&self) -> u64 {
        let mut hash = self.0;
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        hash ^ (hash >> 33)
    }
}

type QuickMap<K, V> = HashMap<K, V, BuildHasherDefault<QuickHasher>>;

fn value_hash(text: &str) -> u64 {
    let mut hasher = QuickHasher::default();
    hasher.write(text.as_bytes());
    hasher.finish()
}

/// The field names a table has seen, in order of first use. Rows store values by position in this
/// list, so a name is stored once per table rather than once per record.
#[derive(Default)]
struct Columns {
    names: Vec<Box<str>>,
    ids: QuickMap<Box<str>, Col>,
    /// The column after the last one looked up. Records are mostly built field by field in the
    /// same order, so checking it first spares most lookups their hashing.
    next: std::cell::Cell<usize>,
    /// The columns of [`KNOWN_FIELDS`], kept at hand because every insert, update and keyset
    /// lookup reads them.
    known: [Option<Col>; KNOWN_FIELDS.len()],
}

/// The indexed fields (in [`INDEXED_FIELDS`] order), then `sys_updated_on`.
const KNOWN_FIELDS: [&str; 5] = [SYS_ID, "number", "correlation_id", "message_key", UPDATED_ON];
const KNOWN_SYS_ID: usize = 0;
const KNOWN_UPDATED_ON: usize = 4;

impl Columns {
    fn id(&self, name: &str) -> Option<Col> {
        let guess = self.next.get();
        let id = match self.names.get(guess) {
            Some(candidate) if **candidate == *name => guess as Col,
            _ => *self.ids.get(name)?,
        };
        self.next.set(id as usize + 1);
        Some(id)
    }

    fn id_or_add(&mut self, name: &str) -> Col {
        if let Some(id) = self.id(name) {
            return id;
        }
        let id = Col::try_from(self.names.len()).expect("servicenow emulator: too many fields in one table");
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        if let Some(slot) = KNOWN_FIELDS.iter().position(|known| *known == name) {
            self.known[slot] = Some(id);
        }
        id
    }

    fn len(&self) -> usize {
        self.names.len()
    }
}

/// Marks a column the row has no value for (absent, which is not the same as empty).
const ABSENT_NARROW: u16 = 1 << 15;
const ABSENT_WIDE: u32 = 1 << 31;

/// One record: its values back to back in one string, and where each column's value ends. A
/// million incidents of ~60 fields take ~1 KB each this way, where a JSON map per record took ~8.
struct Row {
    data: Box<str>,
    ends: Ends,
}

/// End offsets per column, 16-bit while the record is under 32 KiB (nearly always).
enum Ends {
    Narrow(Box<[u16]>),
    Wide(Box<[u32]>),
}

impl Row {
    /// Slots past the last value are left off; `None` slots become absent columns.
    fn build(slots: &[Option<Cow<'_, str>>]) -> Self {
        let used = slots.iter().rposition(Option::is_some).map_or(0, |last| last + 1);
        let slots = &slots[..used];
        let total: usize = slots.iter().flatten().map(|value| value.len()).sum();
        let mut data = String::with_capacity(total);
        let ends = if total < usize::from(ABSENT_NARROW) {
            let mut ends = Vec::with_capacity(used);
            for slot in slots {
                if let Some(value) = slot {
                    data.push_str(value);
                }
                let end = u16::try_from(data.len()).unwrap_or(ABSENT_NARROW - 1);
                ends.push(if slot.is_some() { end } else { end | ABSENT_NARROW });
            }
            Ends::Narrow(ends.into_boxed_slice())
        } else {
            let mut ends = Vec::with_capacity(used);
            for slot in slots {
                if let Some(value) = slot {
                    data.push_str(value);
                }
                // Request bodies are capped at 10 MiB, far below 2 GiB.
                let end = u32::try_from(data.len()).unwrap_or(ABSENT_WIDE - 1);
                ends.push(if slot.is_some() { end } else { end | ABSENT_WIDE });
            }
            Ends::Wide(ends.into_boxed_slice())
        };
        Self { data: data.into_boxed_str(), ends }
    }

    /// The column's value, `None` when the record does not have that field.
    fn get(&self, col: Col) -> Option<&str> {
        let at = col as usize;
        let (start, end) = match &self.ends {
            Ends::Narrow(ends) => {
                let end = *ends.get(at)?;
                if end & ABSENT_NARROW != 0 {
                    return None;
                }
                let start = if at == 0 { 0 } else { ends[at - 1] & !ABSENT_NARROW };
                (usize::from(start), usize::from(end))
            }
            Ends::Wide(ends) => {
                let end = *ends.get(at)?;
                if end & ABSENT_WIDE != 0 {
                    return None;
                }
                let start = if at == 0 { 0 } else { ends[at - 1] & !ABSENT_WIDE };
                (start as usize, end as usize)
            }
        };
        self.data.get(start..end)
    }

    /// The column's value, `""` when absent or when the table has no such column.
    fn text(&self, col: Option<Col>) -> &str {
        col.and_then(|col| self.get(col)).unwrap_or_default()
    }

    /// How many columns the row has slots for.
    fn width(&self) -> usize {
        match &self.ends {
            Ends::Narrow(ends) => ends.len(),
            Ends::Wide(ends) => ends.len(),
        }
    }
}

/// Read access to a record's fields by name, whatever holds it.
trait Fields {
    /// The field's value, `""` when the record has no such field.
    fn text(&self, field: &str) -> &str;
}

impl Fields for Record {
    fn text(&self, field: &str) -> &str {
        self.get(field).and_then(Value::as_str).unwrap_or_default()
    }
}

/// A stored row with its table's column names, for matching queries against it.
struct RowView<'a> {
    columns: &'a Columns,
    row: &'a Row,
}

impl Fields for RowView<'_> {
    fn text(&self, field: &str) -> &str {
        self.row.text(self.columns.id(field))
    }
}

/// Fields looked up on nearly every request: `sys_id` by reads and updates, `number` by people,
/// `correlation_id` and `message_key` by itsmc before each incident or alert it raises (and by event
/// processing, which matches alerts by message key).
const INDEXED_FIELDS: [&str; 4] = [KNOWN_FIELDS[0], KNOWN_FIELDS[1], KNOWN_FIELDS[2], KNOWN_FIELDS[3]];

/// Rows holding one value (or, rarely, values that hash alike): one, or several in insertion
/// order. (A sorted vector rather than a B-tree: rows arrive in id order, so adding one is a push,
/// and an empty `correlation_id` shared by a million rows costs 4 MB rather than 20.)
enum Rows {
    One(RowId),
    Many(Vec<RowId>),
}

/// A borrowed [`Rows`], or none.
#[derive(Clone, Copy)]
enum RowSet<'a> {
    Empty,
    One(RowId),
    Many(&'a [RowId]),
}

impl<'a> RowSet<'a> {
    fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::One(_) => 1,
            Self::Many(rows) => rows.len(),
        }
    }

    /// In insertion order.
    fn iter(self) -> impl Iterator<Item = RowId> + 'a {
        let (one, many) = match self {
            Self::Empty => (None, None),
            Self::One(row) => (Some(row), None),
            Self::Many(rows) => (None, Some(rows.iter().copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// value hash → rows holding it, for one field. It exists so that finding a record by `sys_id`, or
/// answering `correlation_id=…`, costs a hash lookup rather than a scan of the table: the load
/// benchmark stores 20,000+ incidents and looks one up per alert, and scanning made it measure the
/// emulator instead of itsmc. Every row is indexed, empty values included (a missing field reads as
/// empty), so a lookup never needs to fall back to a scan. Keys are 64-bit hashes rather than the
/// values themselves (a million sys_ids would otherwise cost ~100 MB); callers compare the rows'
/// actual values, so a collision only costs a comparison.
struct FieldIndex {
    field: &'static str,
    rows: QuickMap<u64, Rows>,
}

impl FieldIndex {
    fn new(field: &'static str) -> Self {
        Self { field, rows: QuickMap::default() }
    }

    fn add(&mut self, value: &str, row: RowId) {
        match self.rows.entry(value_hash(value)) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Rows::One(row));
            }
            std::collections::hash_map::Entry::Occupied(mut slot) => match slot.get_mut() {
                Rows::One(other) => {
                    let other = *other;
                    slot.insert(Rows::Many(if other < row { vec![other, row] } else { vec![row, other] }));
                }
                Rows::Many(rows) => {
                    if rows.last().is_none_or(|&last| last < row) {
                        rows.push(row);
                    } else if let Err(at) = rows.binary_search(&row) {
                        rows.insert(at, row);
                    }
                }
            },
        }
    }

    fn remove(&mut self, value: &str, row: RowId) {
        let hash = value_hash(value);
        let Some(rows) = self.rows.get_mut(&hash) else {
            return;
        };
        match rows {
            Rows::One(other) if *other == row => {
                self.rows.remove(&hash);
            }
            Rows::One(_) => {}
            Rows::Many(many) => {
                if let Ok(at) = many.binary_search(&row) {
                    many.remove(at);
                }
                if let [last] = many.as_slice() {
                    *rows = Rows::One(*last);
                }
            }
        }
    }

    fn lookup(&self, value: &str) -> RowSet<'_> {
        match self.rows.get(&value_hash(value)) {
            None => RowSet::Empty,
            Some(Rows::One(row)) => RowSet::One(*row),
            Some(Rows::Many(rows)) => RowSet::Many(rows.as_slice()),
        }
    }
}

/// One table's records in insertion order, with a [`FieldIndex`] per [`INDEXED_FIELDS`] entry and
/// the keyset order. Records are only added, changed and removed through these methods, which keep
/// the indexes in step.
struct Table {
    columns: Columns,
    /// By row id; `None` once deleted.
    rows: Vec<Option<Row>>,
    live: usize,
    indexes: [FieldIndex; INDEXED_FIELDS.len()],
    /// Every live row, ordered by (`sys_updated_on`, `sys_id`, row id) compared as text: the order
    /// keyset paging reads in, so a page costs a binary search and the page itself.
    order: Vec<RowId>,
    /// Rows whose `sys_updated_on` or `sys_id` reads as a number. The scan compares those as
    /// numbers, so while there are any, text order is not the scan's order and `order` is not used.
    numeric_keys: usize,
    /// During a bulk insert, the first row not yet placed in `order` (all are placed at the end).
    bulk_from: Option<RowId>,
    /// What inserts set by name, resolved to columns on the first insert.
    insert_columns: Option<Arc<InsertColumns>>,
}

/// Column ids of the fields every insert into a table sets by name (system fields, number, journal
/// placeholders, defaults), looked up once per table instead of once per record: a bulk insert
/// spent a third of its time hashing these names.
struct InsertColumns {
    /// `sys_id`, `sys_class_name`, `sys_created_on`, `sys_updated_on`, `sys_created_by`,
    /// `sys_updated_by`, `sys_mod_count`, `sys_domain`.
    system: [Col; 8],
    active: Col,
    /// The number prefix and the `number` column, for tables that number their records.
    number: Option<(String, Col)>,
    /// `work_notes`, `comments`, `comments_and_work_notes` on task tables.
    journal: Vec<Col>,
    defaults: Vec<(Col, &'static str)>,
}

impl Table {
    fn new() -> Self {
        Self {
            columns: Columns::default(),
            rows: Vec::new(),
            live: 0,
            indexes: INDEXED_FIELDS.map(FieldIndex::new),
            order: Vec::new(),
            numeric_keys: 0,
            bulk_from: None,
            insert_columns: None,
        }
    }

    fn insert_columns(&mut self, table: &str) -> Arc<InsertColumns> {
        if let Some(known) = &self.insert_columns {
            return Arc::clone(known);
        }
        let columns = &mut self.columns;
        let system = [
            SYS_ID,
            "sys_class_name",
            "sys_created_on",
            UPDATED_ON,
            "sys_created_by",
            "sys_updated_by",
            "sys_mod_count",
            "sys_domain",
        ]
        .map(|field| columns.id_or_add(field));
        let journal = if is_task_table(table) {
            JOURNAL_FIELDS.iter().chain(&["comments_and_work_notes"]).map(|field| columns.id_or_add(field)).collect()
        } else {
            Vec::new()
        };
        let known = Arc::new(InsertColumns {
            system,
            active: columns.id_or_add("active"),
            number: number_prefix(table).map(|prefix| (prefix, columns.id_or_add("number"))),
            journal,
            defaults: default_fields(table).iter().map(|(field, value)| (columns.id_or_add(field), *value)).collect(),
        });
        self.insert_columns = Some(Arc::clone(&known));
        known
    }

    fn len(&self) -> usize {
        self.live
    }

    fn col(&self, name: &str) -> Option<Col> {
        self.columns.id(name)
    }

    fn row(&self, id: RowId) -> Option<&Row> {
        self.rows.get(id as usize)?.as_ref()
    }

    /// Every live row, in insertion order.
    fn live_rows(&self) -> impl Iterator<Item = (RowId, &Row)> {
        self.rows.iter().enumerate().filter_map(|(id, row)| Some((id as RowId, row.as_ref()?)))
    }

    /// A row as the control API hands it out: a JSON object of strings.
    fn to_record(&self, row: &Row) -> Record {
        (0..row.width())
            .filter_map(|col| {
                let value = row.get(col as Col)?;
                Some((self.columns.names[col].to_string(), Value::String(value.to_owned())))
            })
            .collect()
    }

    /// Rows that may hold `value` in `field` (a hash match: compare before trusting); `None` when
    /// `field` has no index.
    fn find_rows(&self, field: &str, value: &str) -> Option<RowSet<'_>> {
        Some(self.indexes.iter().find(|index| index.field == field)?.lookup(value))
    }

    fn row_of(&self, sys_id: &str) -> Option<RowId> {
        let col = self.columns.known[KNOWN_SYS_ID];
        self.find_rows(SYS_ID, sys_id)?.iter().find(|&id| self.row(id).is_some_and(|row| row.text(col) == sys_id))
    }

    /// (`sys_updated_on`, `sys_id`, row id): what [`Self::order`] is sorted by.
    fn order_key(&self, id: RowId) -> (&str, &str, RowId) {
        let row = self.row(id);
        let text = |slot: usize| row.map_or("", |row| row.text(self.columns.known[slot]));
        (text(KNOWN_UPDATED_ON), text(KNOWN_SYS_ID), id)
    }

    /// Where row `id` is, or would go, in [`Self::order`].
    fn order_position(&self, id: RowId) -> usize {
        let key = self.order_key(id);
        self.order.partition_point(|&other| self.order_key(other) < key)
    }

    fn has_numeric_key(&self, row: &Row) -> bool {
        let [sys_id, .., updated_on] = self.columns.known;
        as_number(row.text(updated_on)).is_some() || as_number(row.text(sys_id)).is_some()
    }

    fn in_order(&self, id: RowId) -> bool {
        self.bulk_from.is_none_or(|from| id < from)
    }

    fn insert(&mut self, row: Row) -> RowId {
        let id = RowId::try_from(self.rows.len()).expect("servicenow emulator: too many rows in one table");
        for (index, col) in self.indexes.iter_mut().zip(self.columns.known) {
            index.add(row.text(col), id);
        }
        if self.has_numeric_key(&row) {
            self.numeric_keys += 1;
        }
        self.rows.push(Some(row));
        self.live += 1;
        if self.in_order(id) {
            let at = self.order_position(id);
            self.order.insert(at, id);
        }
        id
    }

    /// Puts `new` in place of row `id`, re-indexing the fields that changed.
    fn replace(&mut self, id: RowId, new: Row) {
        let Some(old) = self.row(id) else {
            return;
        };
        let (updated_on, sys_id) = (self.columns.known[KNOWN_UPDATED_ON], self.columns.known[KNOWN_SYS_ID]);
        let moves = old.text(updated_on) != new.text(updated_on) || old.text(sys_id) != new.text(sys_id);
        if moves && self.in_order(id) {
            let at = self.order_position(id);
            if self.order.get(at) == Some(&id) {
                self.order.remove(at);
            }
        }
        let numeric = usize::from(self.has_numeric_key(&new));
        let Some(old) = self.rows.get_mut(id as usize).and_then(|slot| slot.replace(new)) else {
            return;
        };
        self.numeric_keys = (self.numeric_keys + numeric).saturating_sub(usize::from(self.has_numeric_key(&old)));
        if let Some(Some(new)) = self.rows.get(id as usize) {
            for (index, col) in self.indexes.iter_mut().zip(self.columns.known) {
                let (before, after) = (old.text(col), new.text(col));
                if before != after {
                    index.remove(before, id);
                    index.add(after, id);
                }
            }
        }
        if moves && self.in_order(id) {
            let at = self.order_position(id);
            self.order.insert(at, id);
        }
    }

    /// Changes row `id` through a [`Draft`] of it. `None` when there is no such row.
    fn edit<'v>(&mut self, id: RowId, change: impl FnOnce(&mut Draft<'_, 'v>)) -> Option<()> {
        let row = self.rows.get(id as usize)?.as_ref()?;
        let mut draft = Draft::from_row(&mut self.columns, row);
        change(&mut draft);
        let row = draft.finish();
        self.replace(id, row);
        Some(())
    }

    /// `false` when there is no such record.
    fn remove(&mut self, sys_id: &str) -> bool {
        let Some(id) = self.row_of(sys_id) else {
            return false;
        };
        if self.in_order(id) {
            let at = self.order_position(id);
            if self.order.get(at) == Some(&id) {
                self.order.remove(at);
            }
        }
        let Some(old) = self.rows.get_mut(id as usize).and_then(Option::take) else {
            return false;
        };
        if self.has_numeric_key(&old) {
            self.numeric_keys = self.numeric_keys.saturating_sub(1);
        }
        for (index, col) in self.indexes.iter_mut().zip(self.columns.known) {
            index.remove(old.text(col), id);
        }
        self.live -= 1;
        true
    }

    /// From now until [`end_bulk`](Self::end_bulk), new rows skip the keyset order; it is sorted
    /// once at the end instead of shifted per row.
    /// `expected` rows are about to arrive: room is made for them up front.
    fn begin_bulk(&mut self, expected: usize) {
        if self.bulk_from.is_none() {
            self.bulk_from = Some(RowId::try_from(self.rows.len()).unwrap_or(RowId::MAX));
        }
        self.rows.reserve(expected);
        self.order.reserve(expected);
        // sys_id and number are unique per row; the other indexes hold few distinct values.
        for index in &mut self.indexes[..2] {
            index.rows.reserve(expected);
        }
    }

    fn end_bulk(&mut self) {
        let Some(from) = self.bulk_from.take() else {
            return;
        };
        let (updated_on, sys_id) = (self.columns.known[KNOWN_UPDATED_ON], self.columns.known[KNOWN_SYS_ID]);
        let rows = &self.rows;
        let key = |id: RowId| {
            let row = rows.get(id as usize).and_then(Option::as_ref);
            (row.map_or("", |row| row.text(updated_on)), row.map_or("", |row| row.text(sys_id)), id)
        };
        // Sorted on fixed-width prefixes (32 bytes of the time, 16 of the sys_id, zero-padded, which
        // orders like the text), falling back to the full key wherever the prefixes cannot decide:
        // several times faster than comparing the strings.
        let prefix = |text: &str, skip: usize| {
            let mut bytes = [0u8; 16];
            let tail = text.as_bytes().get(skip..).unwrap_or_default();
            let length = tail.len().min(16);
            bytes[..length].copy_from_slice(&tail[..length]);
            u128::from_be_bytes(bytes)
        };
        let mut keyed: Vec<([u128; 2], usize, u128, RowId)> = (from as usize..rows.len())
            .filter_map(|at| {
                let row = rows[at].as_ref()?;
                let (time, sys_id) = (row.text(updated_on), row.text(sys_id));
                let id = RowId::try_from(at).ok()?;
                Some(([prefix(time, 0), prefix(time, 16)], time.len(), prefix(sys_id, 0), id))
            })
            .collect();
        keyed.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                // Equal prefixes of equal, short lengths mean equal times; only then does the
                // sys_id prefix decide.
                let same_time = a.1 == b.1 && a.1 <= 32;
                let by_sys_id = if same_time { a.2.cmp(&b.2) } else { Ordering::Equal };
                by_sys_id.then_with(|| key(a.3).cmp(&key(b.3)))
            })
        });
        let fresh = keyed.into_iter().map(|(.., id)| id);
        let old = std::mem::take(&mut self.order);
        if old.is_empty() {
            self.order = fresh.collect();
            return;
        }
        let mut merged = Vec::with_capacity(old.len() + fresh.len());
        let mut old_rows = old.iter().copied().peekable();
        for new in fresh {
            let new_key = key(new);
            while let Some(&existing) = old_rows.peek()
                && key(existing) < new_key
            {
                merged.push(existing);
                old_rows.next();
            }
            merged.push(new);
        }
        merged.extend(old_rows);
        self.order = merged;
    }

    /// The rows matching `query`, in insertion order. When the query requires `field=value` on an
    /// indexed field, only the rows holding that value are examined (the fewest, if several qualify);
    /// the whole query still applies to them, so the answer is the same as a full scan's.
    fn select(&self, query: &EncodedQuery) -> Vec<RowId> {
        let narrowest = query
            .required_equalities()
            .filter_map(|(field, value)| self.find_rows(field, value))
            .min_by_key(RowSet::len);
        let matches =
            |id: &RowId| self.row(*id).is_some_and(|row| query.matches(&RowView { columns: &self.columns, row }));
        match narrowest {
            Some(rows) => rows.iter().filter(matches).collect(),
            None => self.live_rows().map(|(id, _)| id).filter(matches).collect(),
        }
    }

    /// Sorts by the query's `ORDERBY` fields; ties keep their order (insertion order, from
    /// [`select`](Self::select)).
    fn sort(&self, query: &EncodedQuery, rows: &mut [RowId]) {
        if query.order.is_empty() {
            return;
        }
        let keys: Vec<(Option<Col>, bool)> =
            query.order.iter().map(|(field, descending)| (self.col(field), *descending)).collect();
        let text = |id: RowId, col: Option<Col>| self.row(id).map_or("", |row| row.text(col));
        rows.sort_by(|&a, &b| {
            for &(col, descending) in &keys {
                let ordering = sort_order(text(a, col), text(b, col));
                let ordering = if descending { ordering.reverse() } else { ordering };
                if ordering != Ordering::Equal {
                    return ordering;
                }
            }
            Ordering::Equal
        });
    }

    /// For the keyset-paging query shapes, the stretch of [`Self::order`] that answers `query`, in
    /// its order; `None` for anything else (answered by [`select`](Self::select) and
    /// [`sort`](Self::sort)). The shapes: conditions that must all hold, each `= > >= < <=` on
    /// `sys_updated_on`, or on `sys_id` when a `sys_updated_on=` condition fixes the time; ordered by
    /// `sys_updated_on` then `sys_id`, or by `sys_id` alone under `sys_updated_on=`. Within one
    /// time the order is by `sys_id`, then insertion, as the scan's stable sort leaves it.
    fn keyset_range(&self, query: &EncodedQuery) -> Option<Range<usize>> {
        if self.numeric_keys > 0 || self.bulk_from.is_some() {
            return None;
        }
        let mut groups = query.groups.iter().filter(|group| !group.is_empty());
        let conditions: Vec<&Condition> = match (groups.next(), groups.next()) {
            (None, _) => Vec::new(),
            (Some(group), None) => group
                .iter()
                .map(|clause| match clause.as_slice() {
                    [condition] => Some(condition),
                    _ => None,
                })
                .collect::<Option<_>>()?,
            _ => return None,
        };
        let (mut on_time, mut on_id) = (Vec::new(), Vec::new());
        for condition in conditions {
            if !matches!(
                condition.operator,
                Operator::Equals
                    | Operator::Greater
                    | Operator::GreaterOrEqual
                    | Operator::Less
                    | Operator::LessOrEqual
            ) {
                return None;
            }
            match condition.field.as_str() {
                UPDATED_ON => on_time.push(condition),
                SYS_ID => on_id.push(condition),
                _ => return None,
            }
        }
        let time_fixed = on_time.iter().any(|condition| condition.operator == Operator::Equals);
        let order: Vec<(&str, bool)> =
            query.order.iter().map(|(field, descending)| (field.as_str(), *descending)).collect();
        let ordered = order == [(UPDATED_ON, false), (SYS_ID, false)] || (time_fixed && order == [(SYS_ID, false)]);
        if !ordered || (!on_id.is_empty() && !time_fixed) {
            return None;
        }
        let (updated_on, sys_id) = (self.columns.known[KNOWN_UPDATED_ON], self.columns.known[KNOWN_SYS_ID]);
        let text = |id: RowId, col: Option<Col>| self.row(id).map_or("", |row| row.text(col));
        let range = narrow(&self.order, 0..self.order.len(), &on_time, |id| text(id, updated_on));
        Some(if on_id.is_empty() { range } else { narrow(&self.order, range, &on_id, |id| text(id, sys_id)) })
    }
}

/// The part of `order[range]` (sorted by `key`) that meets every condition, each an `= > >= < <=`
/// comparison of `key` as text. Ordering comparisons never match an empty value, as in
/// [`Condition::matches`].
fn narrow<'a>(
    order: &[RowId],
    range: Range<usize>,
    conditions: &[&Condition],
    key: impl Fn(RowId) -> &'a str,
) -> Range<usize> {
    let slice = &order[range.clone()];
    let below = |before: &dyn Fn(&str) -> bool| range.start + slice.partition_point(|&id| before(key(id)));
    let (mut low, mut high) = (range.start, range.end);
    let mut ordering = false;
    for condition in conditions {
        let value = condition.value.as_str();
        match condition.operator {
            Operator::Equals => {
                low = low.max(below(&|key| key < value));
                high = high.min(below(&|key| key <= value));
            }
            Operator::Greater => {
                low = low.max(below(&|key| key <= value));
                ordering = true;
            }
            Operator::GreaterOrEqual => {
                low = low.max(below(&|key| key < value));
                ordering = true;
            }
            Operator::Less => {
                high = high.min(below(&|key| key < value));
                ordering = true;
            }
            Operator::LessOrEqual => {
                high = high.min(below(&|key| key <= value));
                ordering = true;
            }
            _ => {}
        }
    }
    if ordering {
        low = low.max(below(&str::is_empty));
    }
    low..high.max(low)
}

// ---------------------------------------------------------------------------------------------
// Record store: inserts, updates, journal, numbering, incident and change rules
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
fn journal_entries(input: &[(&str, Cow<'_, str>)]) -> Vec<(&'static str, String)> {
    JOURNAL_FIELDS
        .iter()
        .filter_map(|field| {
            let (_, value) = input.iter().find(|(name, _)| name == field)?;
            Some((*field, value.to_string()))
        })
        .collect()
}

fn given<'i>(input: &'i [(&str, Cow<'_, str>)], field: &str) -> Option<&'i str> {
    input.iter().find(|(name, _)| *name == field).map(|(_, value)| value.as_ref())
}

/// A record being built or changed: one slot per column of its table, values borrowed where they
/// can be, turned into a [`Row`] by [`finish`](Self::finish).
struct Draft<'c, 'v> {
    columns: &'c mut Columns,
    slots: Vec<Option<Cow<'v, str>>>,
}

impl<'c, 'v> Draft<'c, 'v> {
    fn new(columns: &'c mut Columns) -> Self {
        let mut slots = Vec::new();
        slots.resize_with(columns.len(), || None);
        Self { columns, slots }
    }

    fn from_row(columns: &'c mut Columns, row: &Row) -> Self {
        let mut slots: Vec<Option<Cow<'v, str>>> =
            (0..row.width()).map(|col| row.get(col as Col).map(|value| Cow::Owned(value.to_owned()))).collect();
        slots.resize_with(columns.len().max(slots.len()), || None);
        Self { columns, slots }
    }

    fn slot(&self, field: &str) -> Option<&Cow<'v, str>> {
        self.slots.get(self.columns.id(field)? as usize)?.as_ref()
    }

    fn get(&self, field: &str) -> &str {
        self.slot(field).map(AsRef::as_ref).unwrap_or_default()
    }

    fn has(&self, field: &str) -> bool {
        self.slot(field).is_some()
    }

    fn set(&mut self, field: &str, value: impl Into<Cow<'v, str>>) {
        let at = self.columns.id_or_add(field) as usize;
        if at >= self.slots.len() {
            self.slots.resize_with(at + 1, || None);
        }
        self.slots[at] = Some(value.into());
    }

    fn has_col(&self, col: Col) -> bool {
        self.slots.get(col as usize).is_some_and(Option::is_some)
    }

    fn set_col(&mut self, col: Col, value: impl Into<Cow<'v, str>>) {
        let at = col as usize;
        if at >= self.slots.len() {
            self.slots.resize_with(at + 1, || None);
        }
        self.slots[at] = Some(value.into());
    }

    fn set_if_empty(&mut self, field: &str, value: impl Into<Cow<'v, str>>) {
        if self.get(field).is_empty() {
            self.set(field, value);
        }
    }

    /// Counters are text like every other field; seeded garbage counts as 0.
    fn increment(&mut self, field: &str) {
        let next = self.get(field).parse::<u64>().unwrap_or(0).saturating_add(1);
        self.set(field, next.to_string());
    }

    fn finish(self) -> Row {
        Row::build(&self.slots)
    }
}

fn now_timestamp() -> String {
    format_timestamp(Utc::now().timestamp())
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for seconds since the Unix epoch, written by hand: the generators
/// format millions of these, and chrono's formatter is ten times slower.
fn format_timestamp(seconds: i64) -> String {
    let (days, time) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let mut text = *b"0000-00-00 00:00:00";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for position in (at..at + width).rev() {
            text[position] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, u64::from(month));
    put(8, 2, u64::from(day));
    put(11, 2, (time / 3600) as u64);
    put(14, 2, (time % 3600 / 60) as u64);
    put(17, 2, (time % 60) as u64);
    String::from_utf8(text.to_vec()).unwrap_or_default()
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
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
/// field they read. Values follow the docs' example records and, for change requests, a captured
/// record (ansible-collections/servicenow.itsm's `change_request_info` sample).
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
        "change_request" => &[
            ("short_description", ""),
            ("description", ""),
            ("type", "normal"),
            ("category", ""),
            ("risk", ""),
            ("impact", "3"),
            ("urgency", "3"),
            ("priority", "4"),
            ("conflict_status", "Not Run"),
            ("conflict_last_run", ""),
            ("requested_by", ""),
            ("opened_by", ""),
            ("assignment_group", ""),
            ("assigned_to", ""),
            ("cmdb_ci", ""),
            ("business_service", ""),
            ("start_date", ""),
            ("end_date", ""),
            ("work_start", ""),
            ("work_end", ""),
            ("justification", ""),
            ("implementation_plan", ""),
            ("backout_plan", ""),
            ("test_plan", ""),
            ("risk_impact_analysis", ""),
            ("close_code", ""),
            ("close_notes", ""),
            ("closed_at", ""),
            ("closed_by", ""),
            ("correlation_id", ""),
            ("correlation_display", ""),
            ("approval", "not requested"),
            ("phase", "requested"),
            ("phase_state", "open"),
            ("scope", "3"),
            ("escalation", "0"),
            ("on_hold", "false"),
            ("on_hold_reason", ""),
            ("cab_required", "false"),
            ("unauthorized", "false"),
            ("outside_maintenance_schedule", "false"),
            ("production_system", "false"),
            ("made_sla", "true"),
            ("knowledge", "false"),
            ("upon_approval", "proceed"),
            ("upon_reject", "cancel"),
            ("reassignment_count", "0"),
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
    fn next_number(&mut self, prefix: &str) -> String {
        if !self.sequences.contains_key(prefix) {
            self.sequences.insert(prefix.to_owned(), 0);
        }
        let Some(sequence) = self.sequences.get_mut(prefix) else {
            return prefix.to_owned();
        };
        *sequence += 1;
        // New instances number from 0010001 (the docs' example insert answers INC0010002).
        format!("{prefix}{:07}", 10_000 + *sequence)
    }

    /// After a seeded record with a number of the table's own form, later numbers follow it.
    fn note_seeded_number(&mut self, table: &str, record: &Record) {
        let Some(prefix) = number_prefix(table) else {
            return;
        };
        let Some(sequence) = record
            .text("number")
            .strip_prefix(prefix.as_str())
            .filter(|digits| digits.len() >= 7 && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u64>().ok())
        else {
            return;
        };
        let last = self.sequences.entry(prefix).or_insert(0);
        *last = (*last).max(sequence.saturating_sub(10_000));
    }

    fn begin_bulk(&mut self, table: &str, expected: usize) {
        self.tables.entry(table.to_owned()).or_insert_with(Table::new).begin_bulk(expected);
    }

    fn end_bulk(&mut self, table: &str) {
        if let Some(records) = self.tables.get_mut(table) {
            records.end_bulk();
        }
    }

    /// Inserts a record with the defaults ServiceNow fills in and returns its `sys_id`.
    fn create<'a>(
        &mut self,
        table: &'a str,
        input: &'a [(&'a str, Cow<'a, str>)],
        user: &'a str,
        system_fields: SystemFields,
        now: &'a str,
    ) -> String {
        let existing = self.tables.get(table);
        let sys_id = given(input, SYS_ID)
            .filter(|id| is_sys_id(id) && existing.is_none_or(|records| records.row_of(id).is_none()))
            .map_or_else(random_sys_id, str::to_owned);
        let journal = journal_entries(input);
        if !self.tables.contains_key(table) {
            self.tables.insert(table.to_owned(), Table::new());
        }
        let Some(known) = self.tables.get_mut(table).map(|records| records.insert_columns(table)) else {
            return sys_id;
        };
        let number = match &known.number {
            Some((prefix, col)) if given(input, "number").is_none_or(str::is_empty) => {
                Some((self.next_number(prefix), *col))
            }
            _ => None,
        };
        let Some(records) = self.tables.get_mut(table) else {
            return sys_id;
        };

        let mut record = Draft::new(&mut records.columns);
        for &(field, ref value) in input {
            if !field.starts_with("sys_") && !JOURNAL_FIELDS.contains(&field) {
                record.set(field, value.as_ref());
            }
        }
        let [sys_id_col, class, created_on, updated_on, created_by, updated_by, mod_count, domain] = known.system;
        record.set_col(sys_id_col, sys_id.clone());
        record.set_col(class, table);
        record.set_col(created_on, now);
        record.set_col(updated_on, now);
        record.set_col(created_by, user);
        record.set_col(updated_by, user);
        record.set_col(mod_count, "0");
        record.set_col(domain, "global");
        if record.slots.get(known.active as usize).and_then(Option::as_ref).is_none_or(|active| active.is_empty()) {
            record.set_col(known.active, "true");
        }
        if let Some((number, col)) = number {
            record.set_col(col, number);
        }
        for &col in &known.journal {
            record.set_col(col, "");
        }
        for &(col, default) in &known.defaults {
            if !record.has_col(col) {
                record.set_col(col, default);
            }
        }
        match table {
            "incident" => {
                if record.get("state").is_empty() {
                    let state = record.get("incident_state").to_owned();
                    record.set("state", if state.is_empty() { Cow::Borrowed("1") } else { Cow::Owned(state) });
                }
                record.set_if_empty("impact", "3");
                record.set_if_empty("urgency", "3");
                if record.get("priority").is_empty() {
                    let priority = incident_priority(record.get("impact"), record.get("urgency"));
                    record.set("priority", priority.unwrap_or("5"));
                }
                record.set_if_empty("opened_at", now);
                record.set_if_empty("opened_by", user);
                apply_incident_state(&mut record, None, user, now);
            }
            "change_request" => {
                record.set_if_empty("state", "-5");
                record.set_if_empty("opened_at", now);
                record.set_if_empty("opened_by", user);
                apply_change_state(&mut record, user, now);
            }
            "em_alert" => record.set_if_empty("state", "Open"),
            "em_event" => record.set_if_empty("state", "Ready"),
            _ => {}
        }
        if system_fields == SystemFields::Honour {
            for &(field, ref value) in input {
                if field.starts_with("sys_") && field != SYS_ID {
                    record.set(field, value.as_ref());
                }
            }
        }
        let row = record.finish();
        records.insert(row);

        for (element, value) in journal {
            self.append_journal(table, &sys_id, element, &value, user, now);
        }
        if table == "em_event" {
            self.process_event(&sys_id, user, now);
        }
        sys_id
    }

    /// Applies a PATCH/PUT (they behave the same on ServiceNow). `None` when there is no record.
    fn modify<'a>(&mut self, table: &str, sys_id: &str, input: Input<'a>, user: &'a str, now: &'a str) -> Option<()> {
        let journal = journal_entries(&input);
        let records = self.tables.get_mut(table)?;
        let id = records.row_of(sys_id)?;
        records.edit(id, |record| apply_change(table, record, input, user, now))?;
        for (element, value) in journal {
            self.append_journal(table, sys_id, element, &value, user, now);
        }
        Some(())
    }

    /// Journal entries live in their own table, as on ServiceNow, so clients can read them back
    /// through the Table API (`sys_journal_field?sysparm_query=element_id=…`).
    fn append_journal(&mut self, table: &str, sys_id: &str, element: &str, value: &str, user: &str, now: &str) {
        if value.is_empty() {
            return;
        }
        let journal = self.tables.entry(JOURNAL_TABLE.to_owned()).or_insert_with(Table::new);
        let mut entry = Draft::new(&mut journal.columns);
        entry.set(SYS_ID, random_sys_id());
        entry.set("element_id", sys_id);
        entry.set("element", element);
        entry.set("name", table);
        entry.set("value", value);
        entry.set("sys_created_on", now);
        entry.set("sys_created_by", user);
        let row = entry.finish();
        journal.insert(row);
    }
}

/// The field changes of a PATCH/PUT, with the incident and change rules they trigger; journal
/// fields and `sys_*` fields from the client are left out. Every change moves `sys_updated_on` to
/// now and counts in `sys_mod_count`, as on ServiceNow.
fn apply_change<'v>(table: &str, record: &mut Draft<'_, 'v>, input: Input<'v>, user: &'v str, now: &'v str) {
    let previous_state = record.get("state").to_owned();
    let has = |field: &str| input.iter().any(|(name, _)| *name == field);
    let (state_given, incident_state_given) = (has("state"), has("incident_state"));
    let rates_given = has("impact") || has("urgency");
    let priority_given = has("priority");
    for (field, value) in input {
        if !JOURNAL_FIELDS.contains(&field) && !field.starts_with("sys_") {
            record.set(field, value);
        }
    }
    match table {
        "incident" => {
            if incident_state_given && !state_given {
                let state = record.get("incident_state").to_owned();
                record.set("state", state);
            }
            if rates_given
                && !priority_given
                && let Some(priority) = incident_priority(record.get("impact"), record.get("urgency"))
            {
                record.set("priority", priority);
            }
            if state_given || incident_state_given {
                apply_incident_state(record, Some(previous_state.as_str()), user, now);
            }
        }
        "change_request" if state_given => apply_change_state(record, user, now),
        _ => {}
    }
    record.increment("sys_mod_count");
    record.set(UPDATED_ON, now);
    record.set("sys_updated_by", user);
}

/// Incident states: 1 New, 2 In Progress, 3 On Hold, 6 Resolved, 7 Closed, 8 Canceled.
fn apply_incident_state<'v>(record: &mut Draft<'_, 'v>, previous: Option<&str>, user: &'v str, now: &'v str) {
    let state = record.get("state").to_owned();
    match state.as_str() {
        "6" => {
            record.set("active", "false");
            record.set_if_empty("resolved_at", now);
            record.set_if_empty("resolved_by", user);
        }
        "7" => {
            record.set("active", "false");
            record.set_if_empty("resolved_at", now);
            record.set_if_empty("resolved_by", user);
            record.set_if_empty("closed_at", now);
            record.set_if_empty("closed_by", user);
        }
        "8" => record.set("active", "false"),
        "1" | "2" | "3" => {
            record.set("active", "true");
            if matches!(previous, Some("6" | "7" | "8")) {
                for field in ["resolved_at", "resolved_by", "closed_at", "closed_by"] {
                    record.set(field, "");
                }
                record.increment("reopen_count");
            }
        }
        _ => {}
    }
    record.set("incident_state", state);
}

/// Change states: -5 New, -4 Assess, -3 Authorize, -2 Scheduled, -1 Implement, 0 Review, 3 Closed,
/// 4 Canceled.
fn apply_change_state<'v>(record: &mut Draft<'_, 'v>, user: &'v str, now: &'v str) {
    match record.get("state") {
        "3" => {
            record.set("active", "false");
            record.set_if_empty("closed_at", now);
            record.set_if_empty("closed_by", user);
        }
        "4" => record.set("active", "false"),
        _ => record.set("active", "true"),
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering: display values, references, field projection, JSON written straight to the body
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
        "caller_id" | "opened_by" | "assigned_to" | "resolved_by" | "closed_by" | "requested_for" | "requested_by" => {
            "sys_user"
        }
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

/// The field a table's records are displayed by when referenced. Without a dictionary the emulator
/// uses the fallback ServiceNow applies to tables that mark no display field: `name`, `number`,
/// `u_number`, `u_name`, the first the table has.
fn display_column(records: &Table) -> Option<Col> {
    ["name", "number", "u_number", "u_name"].into_iter().find_map(|field| records.col(field))
}

/// How one output field is written, worked out once per request.
struct FieldPlan<'a> {
    /// `"name":`, already escaped.
    key: String,
    col: Option<Col>,
    kind: FieldKind<'a>,
}

enum FieldKind<'a> {
    Plain,
    /// `(value, label)` pairs from `sys_choice`.
    Choice(Vec<(&'a str, &'a str)>),
    Reference(Reference<'a>),
}

struct Reference<'a> {
    target: &'static str,
    /// Tables to look the referenced record up in; empty when display values were not asked for.
    tables: Vec<ReferencedTable<'a>>,
    /// `sys_domain` holds `global`, which the emulator has no record for but shows as itself.
    shows_itself: Option<&'static str>,
}

/// A table references are looked up in: its sys_id index and the columns involved, resolved once
/// per request.
struct ReferencedTable<'a> {
    records: &'a Table,
    by_sys_id: &'a FieldIndex,
    sys_id: Option<Col>,
    display: Option<Col>,
}

impl<'a> ReferencedTable<'a> {
    fn new(records: &'a Table) -> Self {
        Self { records, by_sys_id: &records.indexes[0], sys_id: records.col(SYS_ID), display: display_column(records) }
    }
}

impl<'a> Reference<'a> {
    fn display(&self, sys_id: &str) -> &'a str {
        for table in &self.tables {
            let found = table.by_sys_id.lookup(sys_id).iter().find_map(|id| {
                let row = table.records.row(id)?;
                (row.text(table.sys_id) == sys_id).then_some(row)
            });
            if let Some(row) = found {
                return row.text(table.display);
            }
        }
        match self.shows_itself {
            Some(itself) if itself == sys_id => itself,
            _ => "",
        }
    }
}

/// Everything needed to write records of one table for one request.
struct RenderPlan<'a> {
    fields: Vec<FieldPlan<'a>>,
    /// Without `sysparm_fields` a record shows the fields it has; with it, every listed field, `""`
    /// when the record lacks it.
    only_present: bool,
    display: DisplayMode,
    exclude_reference_link: bool,
    base_url: &'a str,
}

impl Instance {
    fn render_plan<'a>(&'a self, table: &str, records: &'a Table, options: &RenderOptions) -> RenderPlan<'a> {
        let names: Vec<&str> = match &options.fields {
            Some(fields) => {
                let mut seen = BTreeSet::new();
                fields.iter().map(String::as_str).filter(|field| seen.insert(*field)).collect()
            }
            None => {
                let mut names: Vec<&str> = records.columns.names.iter().map(AsRef::as_ref).collect();
                names.sort_unstable();
                names
            }
        };
        let display = options.display != DisplayMode::Value;
        let mut choices = if display { self.choice_lists(table) } else { HashMap::new() };
        let fields = names
            .into_iter()
            .map(|name| {
                let kind = if let Some(target) = reference_target(name) {
                    FieldKind::Reference(self.reference(name, target, display))
                } else if let Some(list) = choices.remove(name) {
                    FieldKind::Choice(list)
                } else {
                    FieldKind::Plain
                };
                let mut key = String::with_capacity(name.len() + 3);
                push_json_str(&mut key, name);
                key.push(':');
                FieldPlan { key, col: records.col(name), kind }
            })
            .collect();
        RenderPlan {
            fields,
            only_present: options.fields.is_none(),
            display: options.display,
            exclude_reference_link: options.exclude_reference_link,
            base_url: &self.base_url,
        }
    }

    fn reference<'a>(&'a self, field: &str, target: &'static str, display: bool) -> Reference<'a> {
        let tables = match (display, target) {
            (false, _) => Vec::new(),
            // `parent` may point at any task; look in every table.
            (true, "task") => self.tables.values().map(ReferencedTable::new).collect(),
            (true, _) => self.tables.get(target).map(ReferencedTable::new).into_iter().collect(),
        };
        Reference { target, tables, shows_itself: (field == "sys_domain").then_some("global") }
    }

    /// element → `(value, label)` choices for `table`, from `sys_choice` (language `en`), with
    /// `task`'s for fields a task table has none of its own for.
    fn choice_lists<'a>(&'a self, table: &str) -> HashMap<&'a str, Vec<(&'a str, &'a str)>> {
        let mut own: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
        let Some(choices) = self.tables.get(CHOICE_TABLE) else {
            return own;
        };
        let mut inherited: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
        let [name, element, value, label, language] =
            ["name", "element", "value", "label", "language"].map(|field| choices.col(field));
        let inherits = is_task_table(table) && table != "task";
        for (_, row) in choices.live_rows() {
            if !matches!(row.text(language), "" | "en") {
                continue;
            }
            let lists = match row.text(name) {
                owner if owner == table => &mut own,
                "task" if inherits => &mut inherited,
                _ => continue,
            };
            lists.entry(row.text(element)).or_default().push((row.text(value), row.text(label)));
        }
        for (field, list) in inherited {
            own.entry(field).or_insert(list);
        }
        own
    }
}

impl RenderPlan<'_> {
    fn render(&self, row: &Row, out: &mut String) {
        out.push('{');
        let mut first = true;
        for field in &self.fields {
            let value = match field.col.and_then(|col| row.get(col)) {
                Some(value) => value,
                None if self.only_present => continue,
                None => "",
            };
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&field.key);
            self.render_value(field, value, out);
        }
        out.push('}');
    }

    fn render_value(&self, field: &FieldPlan<'_>, value: &str, out: &mut String) {
        let link = !self.exclude_reference_link;
        match &field.kind {
            FieldKind::Reference(reference) if !value.is_empty() => match self.display {
                DisplayMode::Value if !link => push_json_str(out, value),
                DisplayMode::Value => {
                    out.push_str("{\"link\":");
                    self.push_link(out, reference.target, value);
                    out.push_str(",\"value\":");
                    push_json_str(out, value);
                    out.push('}');
                }
                DisplayMode::Display if !link => push_json_str(out, reference.display(value)),
                DisplayMode::Display => {
                    out.push_str("{\"display_value\":");
                    push_json_str(out, reference.display(value));
                    out.push_str(",\"link\":");
                    self.push_link(out, reference.target, value);
                    out.push('}');
                }
                DisplayMode::Both => {
                    out.push_str("{\"display_value\":");
                    push_json_str(out, reference.display(value));
                    if link {
                        out.push_str(",\"link\":");
                        self.push_link(out, reference.target, value);
                    }
                    out.push_str(",\"value\":");
                    push_json_str(out, value);
                    out.push('}');
                }
            },
            kind => {
                let shown = || match kind {
                    FieldKind::Choice(list) => {
                        list.iter().find(|(choice, _)| *choice == value).map_or(value, |(_, label)| label)
                    }
                    _ => value,
                };
                match self.display {
                    DisplayMode::Value => push_json_str(out, value),
                    DisplayMode::Display => push_json_str(out, shown()),
                    DisplayMode::Both => {
                        out.push_str("{\"display_value\":");
                        let shown = shown();
                        let start = out.len();
                        push_json_str(out, shown);
                        out.push_str(",\"value\":");
                        if std::ptr::eq(shown, value) {
                            // Most fields show their value: escape it once, copy it.
                            out.extend_from_within(start..out.len() - ",\"value\":".len());
                        } else {
                            push_json_str(out, value);
                        }
                        out.push('}');
                    }
                }
            }
        }
    }

    fn push_link(&self, out: &mut String, target: &str, sys_id: &str) {
        out.push('"');
        push_json_inner(out, self.base_url);
        out.push_str("/api/now/table/");
        out.push_str(target);
        out.push('/');
        push_json_inner(out, sys_id);
        out.push('"');
    }
}

/// For each byte, what JSON needs instead of it: 0 (nothing), a letter for a two-character escape,
/// or `u` for `\u00XX`. The same escapes serde_json writes.
const JSON_ESCAPES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// `text` as a JSON string literal.
fn push_json_str(out: &mut String, text: &str) {
    out.push('"');
    push_json_inner(out, text);
    out.push('"');
}

/// `text` escaped for the inside of a JSON string literal. Eight bytes at a time skip ahead while
/// none needs escaping (most text), falling back to byte by byte around the ones that do.
fn push_json_inner(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Non-zero when some byte of `word` is below 0x20, a quote or a backslash (bytes of 0x80 and
    // above never count: they are parts of multi-byte characters).
    let needs_escape = |word: u64| {
        let below_space = word.wrapping_sub(ONES * 0x20) & !word;
        let quote = (word ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES) & !(word ^ (ONES * u64::from(b'"')));
        let backslash = (word ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES) & !(word ^ (ONES * u64::from(b'\\')));
        (below_space | quote | backslash) & HIGHS
    };
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut at = 0;
    while at < bytes.len() {
        if at + 8 <= bytes.len() {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            if needs_escape(u64::from_le_bytes(word)) == 0 {
                at += 8;
                continue;
            }
        }
        let end = (at + 8).min(bytes.len());
        while at < end {
            let byte = bytes[at];
            let escape = JSON_ESCAPES[usize::from(byte)];
            if escape != 0 {
                // Escaped bytes are ASCII, so `at` is a character boundary.
                out.push_str(&text[start..at]);
                out.push('\\');
                if escape == b'u' {
                    out.push_str("u00");
                    out.push(char::from(HEX[usize::from(byte >> 4)]));
                    out.push(char::from(HEX[usize::from(byte & 0xf)]));
                } else {
                    out.push(char::from(escape));
                }
                start = at + 1;
            }
            at += 1;
        }
    }
    out.push_str(&text[start..]);
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

    fn matches(&self, record: &impl Fields) -> bool {
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

/// A plain decimal number (optional sign, at most 15 digits before and after an optional point)
/// as a number; anything else, including sys_ids that happen to be all digits and exponent forms,
/// is text. ServiceNow compares by column type; without a schema, this is the closest guess.
fn as_number(text: &str) -> Option<f64> {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let digits = |part: &str| !part.is_empty() && part.len() <= 15 && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || fraction.is_some_and(|fraction| !digits(fraction)) {
        return None;
    }
    text.parse().ok()
}

/// Numbers compare as numbers (`10 > 9`), everything else as text, which is also right for the
/// `YYYY-MM-DD HH:MM:SS` timestamps.
fn compare_values(a: &str, b: &str) -> Ordering {
    match (as_number(a), as_number(b)) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => a.cmp(b),
    }
}

/// Empty values sort first in ascending order, like NULLs in the database behind ServiceNow; then
/// numbers by value, then text. (Numbers before text keeps the order total in a column that mixes
/// them, where comparing pairwise could go round in circles.)
fn sort_order(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => match (as_number(a), as_number(b)) {
            (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => a.cmp(b),
        },
    }
}

impl Condition {
    fn matches(&self, record: &impl Fields) -> bool {
        let actual = record.text(&self.field);
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
            Operator::SameAs => actual == record.text(expected),
            Operator::NotSameAs => actual != record.text(expected),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Out-of-the-box choices (sys_choice)
// ---------------------------------------------------------------------------------------------

/// `(value, label)` pairs of one choice list.
type ChoiceList = &'static [(&'static str, &'static str)];

const HIGH_MEDIUM_LOW: ChoiceList = &[("1", "1 - High"), ("2", "2 - Medium"), ("3", "3 - Low")];
const PRIORITIES: ChoiceList =
    &[("1", "1 - Critical"), ("2", "2 - High"), ("3", "3 - Moderate"), ("4", "4 - Low"), ("5", "5 - Planning")];
const INCIDENT_STATES: ChoiceList =
    &[("1", "New"), ("2", "In Progress"), ("3", "On Hold"), ("6", "Resolved"), ("7", "Closed"), ("8", "Canceled")];
const EVENT_SEVERITIES: ChoiceList =
    &[("0", "Clear"), ("1", "Critical"), ("2", "Major"), ("3", "Minor"), ("4", "Warning"), ("5", "Info")];

/// `(table, element, choices)`, seeded into `sys_choice` when the instance starts (see the module
/// comment for where each list comes from).
const CHOICES: &[(&str, &str, ChoiceList)] = &[
    ("task", "impact", HIGH_MEDIUM_LOW),
    ("task", "urgency", HIGH_MEDIUM_LOW),
    ("task", "severity", HIGH_MEDIUM_LOW),
    ("task", "priority", PRIORITIES),
    ("task", "escalation", &[("0", "Normal"), ("1", "Moderate"), ("2", "High"), ("3", "Overdue")]),
    (
        "task",
        "approval",
        &[
            ("not requested", "Not Yet Requested"),
            ("requested", "Requested"),
            ("approved", "Approved"),
            ("rejected", "Rejected"),
        ],
    ),
    (
        "task",
        "upon_approval",
        &[("proceed", "Proceed to Next Task"), ("do_nothing", "Wait for a User to Close this task")],
    ),
    ("task", "upon_reject", &[("cancel", "Cancel all future Tasks"), ("goto", "Go to a previous Task")]),
    (
        "task",
        "sys_class_name",
        &[
            ("task", "Task"),
            ("incident", "Incident"),
            ("problem", "Problem"),
            ("change_request", "Change Request"),
            ("change_task", "Change Task"),
            ("sc_request", "Request"),
            ("sc_req_item", "Requested Item"),
            ("sc_task", "Catalog Task"),
        ],
    ),
    ("incident", "state", INCIDENT_STATES),
    ("incident", "incident_state", INCIDENT_STATES),
    ("incident", "impact", HIGH_MEDIUM_LOW),
    ("incident", "urgency", HIGH_MEDIUM_LOW),
    ("incident", "severity", HIGH_MEDIUM_LOW),
    ("incident", "priority", PRIORITIES),
    (
        "incident",
        "category",
        &[
            ("inquiry", "Inquiry / Help"),
            ("software", "Software"),
            ("hardware", "Hardware"),
            ("network", "Network"),
            ("database", "Database"),
        ],
    ),
    (
        "incident",
        "contact_type",
        &[
            ("chat", "Chat"),
            ("email", "Email"),
            ("phone", "Phone"),
            ("monitoring", "Monitoring"),
            ("self-service", "Self-service"),
            ("virtual_agent", "Virtual agent"),
            ("walk-in", "Walk-in"),
        ],
    ),
    (
        "incident",
        "hold_reason",
        &[("1", "Awaiting Caller"), ("3", "Awaiting Problem"), ("4", "Awaiting Vendor"), ("5", "Awaiting Change")],
    ),
    (
        "change_request",
        "state",
        &[
            ("-5", "New"),
            ("-4", "Assess"),
            ("-3", "Authorize"),
            ("-2", "Scheduled"),
            ("-1", "Implement"),
            ("0", "Review"),
            ("3", "Closed"),
            ("4", "Canceled"),
        ],
    ),
    ("change_request", "type", &[("standard", "Standard"), ("normal", "Normal"), ("emergency", "Emergency")]),
    ("change_request", "risk", &[("1", "Very High"), ("2", "High"), ("3", "Moderate"), ("4", "Low")]),
    (
        "change_request",
        "conflict_status",
        &[("Not Run", "Not Run"), ("Conflict", "Conflict"), ("No Conflict", "No Conflict")],
    ),
    (
        "change_request",
        "close_code",
        &[
            ("successful", "Successful"),
            ("successful_issues", "Successful with issues"),
            ("unsuccessful", "Unsuccessful"),
        ],
    ),
    (
        "change_request",
        "category",
        &[
            ("Hardware", "Hardware"),
            ("Software", "Software"),
            ("Service", "Service"),
            ("System Software", "System Software"),
            ("Applications Software", "Applications Software"),
            ("Network", "Network"),
            ("Telecom", "Telecom"),
            ("Documentation", "Documentation"),
            ("Other", "Other"),
        ],
    ),
    ("change_request", "impact", HIGH_MEDIUM_LOW),
    ("change_request", "urgency", HIGH_MEDIUM_LOW),
    (
        "change_request",
        "priority",
        &[("1", "1 - Critical"), ("2", "2 - High"), ("3", "3 - Moderate"), ("4", "4 - Low")],
    ),
    ("em_alert", "severity", EVENT_SEVERITIES),
    ("em_event", "severity", EVENT_SEVERITIES),
];

/// Choices present but not offered any more; their labels still display.
const INACTIVE_CHOICES: &[(&str, &str, &str)] = &[("change_request", "risk", "1")];

impl Instance {
    fn seed_choices(&mut self) {
        let now = now_timestamp();
        for (table, element, choices) in CHOICES {
            for (sequence, (value, label)) in choices.iter().enumerate() {
                let inactive = INACTIVE_CHOICES.contains(&(*table, *element, *value));
                let sequence = (sequence * 100).to_string();
                let input: Input<'_> = vec![
                    ("name", Cow::Borrowed(*table)),
                    ("element", Cow::Borrowed(*element)),
                    ("value", Cow::Borrowed(*value)),
                    ("label", Cow::Borrowed(*label)),
                    ("language", Cow::Borrowed("en")),
                    ("inactive", Cow::Borrowed(if inactive { "true" } else { "false" })),
                    ("sequence", Cow::Owned(sequence)),
                    ("dependent_value", Cow::Borrowed("")),
                    ("hint", Cow::Borrowed("")),
                ];
                self.create(CHOICE_TABLE, &input, ADMIN_ACTOR, SystemFields::Ignore, &now);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generated data: people, groups and CIs to reference; incidents and change requests
// ---------------------------------------------------------------------------------------------

const GENERATOR_SEED: u64 = 0x5eed_1c0d_e0f5_17c1;
const REFERENCE_SEED: u64 = 0x00c0_ffee_5e1f_da7a;

/// (display, ASCII) first and last names: accents, apostrophes, non-Latin scripts.
const FIRST_NAMES: [(&str, &str); 20] = [
    ("Beth", "beth"),
    ("Zoë", "zoe"),
    ("José", "jose"),
    ("Åsa", "asa"),
    ("Chidi", "chidi"),
    ("美玲", "meiling"),
    ("Siobhán", "siobhan"),
    ("Łukasz", "lukasz"),
    ("Fatima", "fatima"),
    ("Дмитрий", "dmitri"),
    ("Aiko", "aiko"),
    ("Olúwaseun", "oluwaseun"),
    ("Renée", "renee"),
    ("Björn", "bjorn"),
    ("Priya", "priya"),
    ("Tomás", "tomas"),
    ("Nguyễn", "nguyen"),
    ("Seán", "sean"),
    ("Ingrid", "ingrid"),
    ("Kwame", "kwame"),
];
const LAST_NAMES: [(&str, &str); 20] = [
    ("Anglin", "anglin"),
    ("O'Brien", "obrien"),
    ("Müller", "muller"),
    ("Ångström", "angstrom"),
    ("Okafor", "okafor"),
    ("Wang", "wang"),
    ("Nowak", "nowak"),
    ("García", "garcia"),
    ("Dubois", "dubois"),
    ("Иванов", "ivanov"),
    ("Tanaka", "tanaka"),
    ("Adeyemi", "adeyemi"),
    ("Fernández", "fernandez"),
    ("Öztürk", "ozturk"),
    ("Sharma", "sharma"),
    ("Kowalski", "kowalski"),
    ("Smith", "smith"),
    ("Johansson", "johansson"),
    ("Mensah", "mensah"),
    ("D'Angelo", "dangelo"),
];
const GROUP_NAMES: [&str; 12] = [
    "Service Desk",
    "Network",
    "Database",
    "Hardware",
    "Software",
    "Linux Servers",
    "Windows Servers",
    "Incident Management",
    "Change Management",
    "CAB Approval",
    "Help Desk – Tier 2",
    "Équipe Réseau (Paris)",
];
const CI_NAMES: [&str; 12] = [
    "lnux",
    "win-srv",
    "db-prod",
    "sap-erp",
    "exch-sjc",
    "rtr-fra",
    "sw-core",
    "k8s-node",
    "vm-itsmc",
    "printer-3f",
    "lb-edge",
    "nas",
];
const USER_COUNT: usize = 60;
const CI_COUNT: usize = 48;

/// The referenced records the generators point at, with their fixed sys_ids.
struct ReferenceData {
    users: Vec<(String, String)>,
    groups: Vec<String>,
    cis: Vec<(String, String)>,
    /// A CI sys_id no record has: a dangling reference, which displays as `""`.
    missing_ci: String,
}

impl ReferenceData {
    fn user<'p>(&'p self, rng: &mut StdRng) -> &'p (String, String) {
        &self.users[rng.random_range(0..self.users.len())]
    }

    fn group(&self, rng: &mut StdRng) -> &str {
        &self.groups[rng.random_range(0..self.groups.len())]
    }

    fn ci(&self, rng: &mut StdRng) -> &(String, String) {
        &self.cis[rng.random_range(0..self.cis.len())]
    }
}

fn random_hex(rng: &mut StdRng) -> String {
    format!("{:032x}", rng.random::<u128>())
}

/// One of `choices`, picked with the given weights.
fn weighted<T: Copy>(rng: &mut StdRng, choices: &[(T, u32)]) -> T {
    let total: u32 = choices.iter().map(|(_, weight)| weight).sum();
    let mut point = rng.random_range(0..total.max(1));
    for &(choice, weight) in choices {
        if point < weight {
            return choice;
        }
        point -= weight;
    }
    choices[choices.len() - 1].0
}

fn pick<T: Copy>(rng: &mut StdRng, choices: &[T]) -> T {
    choices[rng.random_range(0..choices.len())]
}

impl Instance {
    /// Users, groups and CIs for generated records to reference, inserted the first time only.
    fn ensure_reference_data(&mut self, now: &str) -> ReferenceData {
        let mut rng = StdRng::seed_from_u64(REFERENCE_SEED);
        let mut data =
            ReferenceData { users: Vec::new(), groups: Vec::new(), cis: Vec::new(), missing_ci: String::new() };
        let mut records: Vec<(&str, Record)> = Vec::new();
        for n in 0..USER_COUNT {
            let (first, first_ascii) = FIRST_NAMES[n % FIRST_NAMES.len()];
            let (last, last_ascii) = LAST_NAMES[(n * 7 + n / FIRST_NAMES.len()) % LAST_NAMES.len()];
            let sys_id = random_hex(&mut rng);
            let user_name = format!(
                "{first_ascii}.{last_ascii}{}",
                if n < FIRST_NAMES.len() { String::new() } else { n.to_string() }
            );
            let record = json!({"sys_id": sys_id, "user_name": user_name, "name": format!("{first} {last}"),
                "first_name": first, "last_name": last, "email": format!("{user_name}@example.com"),
                "active": "true", "sys_created_on": "2020-01-01 00:00:00", "sys_updated_on": "2020-01-01 00:00:00"});
            records.push(("sys_user", into_object(record)));
            data.users.push((sys_id, user_name));
        }
        for name in GROUP_NAMES {
            let sys_id = random_hex(&mut rng);
            let record = json!({"sys_id": sys_id, "name": name, "active": "true", "description": format!("{name} team"),
                "sys_created_on": "2020-01-01 00:00:00", "sys_updated_on": "2020-01-01 00:00:00"});
            records.push(("sys_user_group", into_object(record)));
            data.groups.push(sys_id);
        }
        for n in 0..CI_COUNT {
            let sys_id = random_hex(&mut rng);
            let name = format!("{}{:02}", CI_NAMES[n % CI_NAMES.len()], n / CI_NAMES.len() + 1);
            let class = if n % CI_NAMES.len() == 3 { "cmdb_ci_service" } else { "cmdb_ci_server" };
            let record = json!({"sys_id": sys_id, "name": name, "sys_class_name": class,
                "operational_status": "1", "sys_created_on": "2020-01-01 00:00:00", "sys_updated_on": "2020-01-01 00:00:00"});
            records.push(("cmdb_ci", into_object(record)));
            data.cis.push((sys_id, name));
        }
        data.missing_ci = random_hex(&mut rng);
        for (table, record) in &records {
            let exists = self.tables.get(*table).is_some_and(|records| records.row_of(record.text(SYS_ID)).is_some());
            if !exists {
                self.create(table, &input_pairs(record), ADMIN_ACTOR, SystemFields::Honour, now);
            }
        }
        data
    }
}

const INCIDENT_SUBJECTS: [&str; 16] = [
    "Disk full on {ci}",
    "CPU above 95% on {ci} for 15 minutes",
    "Email not syncing on phone",
    "VPN keeps disconnecting",
    "Printer says \"PC LOAD LETTER\"",
    "Can't log in to SAP",
    "Outlook crashes when opening attachments",
    "{ci} unreachable (ping timeout)",
    "Zugriff verweigert auf Laufwerk S:\\",
    "Écran bleu au démarrage",
    "ネットワークが遅い",
    "Backup job failed: exit code 2",
    "Certificate for {ci} expires in 7 days",
    "Azure Monitor: Heartbeat missing from {ci}",
    "Password reset for O'Brien",
    "Disk I/O latency > 200 ms 🔥",
];
const INCIDENT_CATEGORIES: [(&str, &[&str]); 5] = [
    ("inquiry", &["antivirus", "email", "internal application"]),
    ("software", &["email", "operating system"]),
    ("hardware", &["cpu", "disk", "keyboard", "memory", "monitor", "mouse"]),
    ("network", &["dhcp", "dns", "ip address", "vpn", "wireless"]),
    ("database", &["db2", "ms sql server", "oracle"]),
];
const INCIDENT_CLOSE_CODES: [&str; 5] = [
    "Solved (Permanently)",
    "Solved (Work Around)",
    "Solved Remotely (Permanently)",
    "Not Solved (Not Reproducible)",
    "Closed/Resolved by Caller",
];
const CHANGE_SUBJECTS: [&str; 10] = [
    "Monthly patching - {ci}",
    "Upgrade firmware on {ci}",
    "Rotate TLS certificate on {ci}",
    "Decommission {ci}",
    "Add 2 vCPU to {ci}",
    "Firewall rule: allow 443 from \"partner-net\"",
    "Mise à jour du noyau sur {ci}",
    "Migrate mailbox database to {ci}",
    "Datenbank-Wartung {ci} (Wochenende)",
    "Failover test: {ci} ➜ DR",
];

fn subject(rng: &mut StdRng, subjects: &[&str], ci: &str) -> String {
    pick(rng, subjects).replace("{ci}", ci)
}

/// A multi-line description with the awkward characters real ones have, or (one time in ten) none.
fn description(rng: &mut StdRng, subject: &str, caller: &str, channel: &str) -> String {
    match rng.random_range(0..20) {
        0 | 1 => String::new(),
        2 => format!("{subject}\r\nPath: C:\\Users\\{caller}\\AppData\\Local\\Temp\r\n\tTab-indented \"quoted\" line"),
        3 => format!("{subject} – reported via {channel}.\u{7}Bell character pasted from a terminal."),
        4 => format!("{subject}\n\n```\nERROR 1045 (28000): Access denied for user 'app'@'10.0.0.7'\n```"),
        _ => format!(
            "{subject}\n\nReported by {caller} via {channel}.\nSteps tried:\n- restarted the service\n- cleared the \
             cache (\"again\")\nImpact: ~{} users. Ünïcödé ✓",
            rng.random_range(1..500)
        ),
    }
}

fn generate_incident<'p>(rng: &mut StdRng, people: &'p ReferenceData, (from, to): (i64, i64)) -> Input<'p> {
    let updated = rng.random_range(from..to);
    let state = weighted(rng, &[("1", 10), ("2", 20), ("3", 5), ("6", 20), ("7", 40), ("8", 5)]);
    let age = if state == "1" { rng.random_range(0..=3_600) } else { rng.random_range(60..=14 * 86_400) };
    let created = updated - age;
    let caller = people.user(rng);
    let opener = people.user(rng);
    let (ci_id, ci_name) = match rng.random_range(0..100) {
        0..70 => {
            let (id, name) = people.ci(rng);
            (Cow::Borrowed(id.as_str()), name.as_str())
        }
        70..72 => (Cow::Borrowed(people.missing_ci.as_str()), "a retired server"),
        _ => (Cow::Borrowed(""), "the laptop"),
    };
    let (category, subcategories) = pick(rng, &INCIDENT_CATEGORIES);
    let channel = weighted(
        rng,
        &[
            ("email", 30),
            ("phone", 25),
            ("self-service", 20),
            ("monitoring", 15),
            ("walk-in", 5),
            ("chat", 3),
            ("virtual_agent", 2),
        ],
    );
    let short_description = subject(rng, &INCIDENT_SUBJECTS, ci_name);
    let description = description(rng, &short_description, &caller.1, channel);
    let rating = |rng: &mut StdRng| weighted(rng, &[("1", 15), ("2", 35), ("3", 50)]);
    let (impact, urgency) = (rating(rng), rating(rng));
    let unassigned = state == "1" && rng.random_bool(0.6);
    let mut fields: Input<'p> = Vec::with_capacity(48);
    let mut put = |field: &'static str, value: Cow<'p, str>| fields.push((field, value));
    put(SYS_ID, Cow::Owned(random_hex(rng)));
    put("sys_created_on", Cow::Owned(format_timestamp(created)));
    put(UPDATED_ON, Cow::Owned(format_timestamp(updated)));
    put("sys_created_by", Cow::Borrowed(&opener.1));
    put("sys_updated_by", Cow::Borrowed(&people.user(rng).1));
    put("sys_mod_count", Cow::Owned(rng.random_range(0..30u32).to_string()));
    put("opened_at", Cow::Owned(format_timestamp(created)));
    put("opened_by", Cow::Borrowed(&opener.0));
    put("caller_id", if rng.random_bool(0.95) { Cow::Borrowed(&caller.0) } else { Cow::Borrowed("") });
    put("state", Cow::Borrowed(state));
    put("impact", Cow::Borrowed(impact));
    put("urgency", Cow::Borrowed(urgency));
    put("severity", Cow::Borrowed(weighted(rng, &[("1", 5), ("2", 15), ("3", 80)])));
    put("escalation", Cow::Borrowed(weighted(rng, &[("0", 90), ("1", 6), ("2", 3), ("3", 1)])));
    put("category", Cow::Borrowed(category));
    put("subcategory", Cow::Borrowed(if rng.random_bool(0.8) { pick(rng, subcategories) } else { "" }));
    put("contact_type", Cow::Borrowed(channel));
    put("short_description", Cow::Owned(short_description));
    put("description", Cow::Owned(description));
    put("cmdb_ci", ci_id);
    put(
        "assignment_group",
        if unassigned || rng.random_bool(0.05) { Cow::Borrowed("") } else { Cow::Borrowed(people.group(rng)) },
    );
    put("assigned_to", if unassigned { Cow::Borrowed("") } else { Cow::Borrowed(&people.user(rng).0) });
    if channel == "monitoring" || rng.random_bool(0.05) {
        put("correlation_id", Cow::Owned(format!("azmon-{}", &random_hex(rng)[..20])));
        put("correlation_display", Cow::Borrowed("Azure Monitor"));
    }
    put("reassignment_count", Cow::Owned(rng.random_range(0..4u32).to_string()));
    put("reopen_count", Cow::Borrowed(if rng.random_bool(0.02) { "1" } else { "0" }));
    put("made_sla", Cow::Borrowed(if rng.random_bool(0.9) { "true" } else { "false" }));
    if rng.random_bool(0.1) {
        let watchers = format!("{},{}", people.user(rng).0, people.user(rng).0);
        put("watch_list", Cow::Owned(watchers));
    }
    match state {
        "3" => put("hold_reason", Cow::Borrowed(pick(rng, &["1", "3", "4", "5"]))),
        "6" | "7" => {
            let resolved = created + rng.random_range(0..=age.max(1));
            let resolver = people.user(rng);
            put("resolved_at", Cow::Owned(format_timestamp(resolved.min(updated))));
            put("resolved_by", Cow::Borrowed(&resolver.0));
            put("close_code", Cow::Borrowed(pick(rng, &INCIDENT_CLOSE_CODES)));
            let notes = match rng.random_range(0..4) {
                0 => String::new(),
                1 => "Rebooted; monitoring shows \"OK\" since.\nWill watch for 24 h.".to_owned(),
                2 => format!("Fixed by {} – see KB0000{}.", resolver.1, rng.random_range(10..99)),
                _ => "Résolu : espace disque libéré (42 Go).".to_owned(),
            };
            put("close_notes", Cow::Owned(notes));
            if state == "7" {
                put("closed_at", Cow::Owned(format_timestamp(updated)));
                put("closed_by", Cow::Borrowed(&people.user(rng).0));
            }
        }
        _ => {}
    }
    fields
}

fn generate_change_request<'p>(rng: &mut StdRng, people: &'p ReferenceData, (from, to): (i64, i64)) -> Input<'p> {
    let updated = rng.random_range(from..to);
    let change_type = weighted(rng, &[("standard", 30), ("normal", 60), ("emergency", 10)]);
    let state =
        weighted(rng, &[("-5", 10), ("-4", 10), ("-3", 10), ("-2", 15), ("-1", 10), ("0", 5), ("3", 35), ("4", 5)]);
    let created = updated - rng.random_range(300..=30 * 86_400);
    let planned_start = created + rng.random_range(3_600..=10 * 86_400);
    let planned_end = planned_start + rng.random_range(1..=8) * 3_600;
    let requester = people.user(rng);
    let (ci_id, ci_name) = match rng.random_range(0..100) {
        0..85 => {
            let (id, name) = people.ci(rng);
            (Cow::Borrowed(id.as_str()), name.as_str())
        }
        85..87 => (Cow::Borrowed(people.missing_ci.as_str()), "a retired server"),
        _ => (Cow::Borrowed(""), "several servers"),
    };
    let short_description = subject(rng, &CHANGE_SUBJECTS, ci_name);
    let description = description(rng, &short_description, &requester.1, "the change form");
    let conflict = weighted(rng, &[("Not Run", 60), ("No Conflict", 35), ("Conflict", 5)]);
    let approval = match state {
        "-5" | "-4" => "not requested",
        "-3" => "requested",
        "4" => weighted(rng, &[("rejected", 1), ("approved", 1)]),
        _ => "approved",
    };
    let mut fields: Input<'p> = Vec::with_capacity(48);
    let mut put = |field: &'static str, value: Cow<'p, str>| fields.push((field, value));
    put(SYS_ID, Cow::Owned(random_hex(rng)));
    put("sys_created_on", Cow::Owned(format_timestamp(created)));
    put(UPDATED_ON, Cow::Owned(format_timestamp(updated)));
    put("sys_created_by", Cow::Borrowed(&requester.1));
    put("sys_updated_by", Cow::Borrowed(&people.user(rng).1));
    put("sys_mod_count", Cow::Owned(rng.random_range(0..40u32).to_string()));
    put("opened_at", Cow::Owned(format_timestamp(created)));
    put("opened_by", Cow::Borrowed(&requester.0));
    put("requested_by", Cow::Borrowed(&requester.0));
    put("type", Cow::Borrowed(change_type));
    put("state", Cow::Borrowed(state));
    put("risk", Cow::Borrowed(weighted(rng, &[("2", 20), ("3", 40), ("4", 40)])));
    put("impact", Cow::Borrowed(weighted(rng, &[("1", 10), ("2", 30), ("3", 60)])));
    put("urgency", Cow::Borrowed(weighted(rng, &[("1", 10), ("2", 30), ("3", 60)])));
    put("priority", Cow::Borrowed(weighted(rng, &[("1", 5), ("2", 15), ("3", 30), ("4", 50)])));
    put("category", Cow::Borrowed(pick(rng, &["Hardware", "Software", "Network", "Service", "Other"])));
    put("conflict_status", Cow::Borrowed(conflict));
    if conflict != "Not Run" {
        put("conflict_last_run", Cow::Owned(format_timestamp(created + 60)));
    }
    put("approval", Cow::Borrowed(approval));
    put("short_description", Cow::Owned(short_description));
    put("description", Cow::Owned(description));
    put("cmdb_ci", ci_id);
    put("assignment_group", Cow::Borrowed(people.group(rng)));
    put("assigned_to", if state == "-5" { Cow::Borrowed("") } else { Cow::Borrowed(&people.user(rng).0) });
    put("start_date", Cow::Owned(format_timestamp(planned_start)));
    put("end_date", Cow::Owned(format_timestamp(planned_end)));
    put("justification", Cow::Borrowed("Security patches are required by policy; vendor advisory \"critical\"."));
    put(
        "implementation_plan",
        Cow::Borrowed("Take a snapshot\r\nDrain traffic\r\nApply the change\r\nshutdown /r\r\nConfirm service health"),
    );
    put("backout_plan", Cow::Borrowed("Restore the snapshot\r\nRe-enable traffic"));
    put(
        "test_plan",
        Cow::Borrowed(if rng.random_bool(0.8) { "Smoke test the login page; check \\\\share\\logs" } else { "" }),
    );
    put(
        "risk_impact_analysis",
        Cow::Borrowed(if rng.random_bool(0.5) { "Some risk: brief outage possible." } else { "" }),
    );
    if matches!(state, "-1" | "0" | "3") {
        put("work_start", Cow::Owned(format_timestamp(planned_start + 120)));
        if state != "-1" {
            put("work_end", Cow::Owned(format_timestamp(planned_end.min(updated).max(planned_start + 240))));
        }
    }
    if state == "3" {
        let code = weighted(rng, &[("successful", 80), ("successful_issues", 15), ("unsuccessful", 5)]);
        put("close_code", Cow::Borrowed(code));
        put(
            "close_notes",
            Cow::Borrowed(if code == "successful" {
                "Completed successfully."
            } else {
                "See work notes; follow-up PRB raised."
            }),
        );
        put("closed_at", Cow::Owned(format_timestamp(updated)));
        put("closed_by", Cow::Borrowed(&people.user(rng).0));
    }
    fields
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
        let now = now_timestamp();
        let mut inserted = 0;
        for event in events {
            if let Value::Object(fields) = event {
                self.create("em_event", &input_pairs(&fields), user, SystemFields::Ignore, &now);
                inserted += 1;
            }
        }
        Reply::json(
            StatusCode::OK,
            json!({ "result": { "Default Bulk Endpoint": format!("{inserted} events were inserted") } }),
        )
    }

    /// Turns a stored event into alert changes, keyed by message key.
    fn process_event(&mut self, event_id: &str, user: &str, now: &str) {
        let Some(event) = self.tables.get("em_event").and_then(|events| {
            let row = events.row(events.row_of(event_id)?)?;
            Some(events.to_record(row))
        }) else {
            return;
        };
        let message_key = match event.text("message_key") {
            "" => ["source", "node", "type", "resource", "metric_name"]
                .iter()
                .map(|field| event.text(field))
                .collect::<String>(),
            key => key.to_owned(),
        };
        let severity = event.text("severity");
        let clears = severity == "0" || event.text("resolution_state").eq_ignore_ascii_case("Closing");
        let open_alert = self.tables.get("em_alert").and_then(|alerts| {
            let (key, state, sys_id) = (alerts.col("message_key"), alerts.col("state"), alerts.col(SYS_ID));
            let same_key = alerts.find_rows("message_key", &message_key)?;
            let open = same_key
                .iter()
                .filter_map(|id| alerts.row(id))
                .find(|alert| alert.text(key) == message_key && alert.text(state) != "Closed")?;
            Some(open.text(sys_id).to_owned())
        });

        let (alert_id, notes) = match (open_alert, clears) {
            (Some(alert_id), true) => {
                let mut change = Record::new();
                change.insert("state".to_owned(), json!("Closed"));
                self.modify("em_alert", &alert_id, input_pairs(&change), user, now);
                (alert_id, "Closed the open alert with this message key")
            }
            (Some(alert_id), false) => {
                let count = self.tables.get("em_alert").map_or(0, |alerts| {
                    let row = alerts.row_of(&alert_id).and_then(|id| alerts.row(id));
                    row.map_or(0, |alert| alert.text(alerts.col("event_count")).parse::<u64>().unwrap_or(0))
                });
                let mut change = Record::new();
                for field in ["severity", "description", "additional_info"] {
                    if event.contains_key(field) {
                        change.insert(field.to_owned(), json!(event.text(field)));
                    }
                }
                change.insert("event_count".to_owned(), json!(count.saturating_add(1).to_string()));
                self.modify("em_alert", &alert_id, input_pairs(&change), user, now);
                (alert_id, "Updated the open alert with this message key")
            }
            (None, true) => (String::new(), "No open alert to close"),
            (None, false) => {
                let mut alert = Record::new();
                for field in ALERT_FIELDS {
                    alert.insert(field.to_owned(), json!(event.text(field)));
                }
                alert.insert("message_key".to_owned(), json!(message_key));
                alert.insert("event_count".to_owned(), json!("1"));
                alert.insert("acknowledged".to_owned(), json!("false"));
                let alert_id = self.create("em_alert", &input_pairs(&alert), user, SystemFields::Ignore, now);
                (alert_id, "Created a new alert")
            }
        };
        if let Some(events) = self.tables.get_mut("em_event")
            && let Some(id) = events.row_of(event_id)
        {
            events.edit(id, |stored| {
                stored.set("state", "Processed");
                stored.set("alert", alert_id);
                stored.set("processing_notes", notes);
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
    /// Serialized JSON (or, for the hibernation page, HTML).
    body: Option<String>,
    /// Sent with a body.
    content_type: &'static str,
}

impl Reply {
    fn json(status: StatusCode, body: Value) -> Self {
        Self::json_text(status, body.to_string())
    }

    fn json_text(status: StatusCode, body: String) -> Self {
        Self { status, headers: Vec::new(), body: Some(body), content_type: JSON_CONTENT_TYPE }
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
        let has_body = self.body.is_some();
        let mut response = match self.body {
            Some(body) => Response::new(Body::from(body)),
            None => Response::new(Body::empty()),
        };
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if has_body {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
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
