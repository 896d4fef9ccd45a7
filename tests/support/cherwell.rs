//! A Cherwell Service Management (Ivanti CSM) server in a box: an axum server on `127.0.0.1` speaking the REST
//! API under `/CherwellAPI` that itsmc's Cherwell connector uses, so the production client runs unchanged
//! against it; only the base URL differs. Tests drive faults and look at the stored records through
//! [`CherwellEmulator`].
//!
//! # What it emulates, and from which public material
//!
//! Sources: Ivanti's CSM REST API documentation (help.ivanti.com, CSM 10.x/2023: "OAuth2 Protocol for the REST
//! API", "Authenticating Using the Internal Mode", "Get Access Token using Postman", "Using Search Operations",
//! "Errors", "Parameter Glossary"); the API's Swagger models as generated into public clients
//! (colinPlusPlus/swagger-codegen-js `docs/*.md`, dataway/cherwell_pydantic_api); public integrations that call
//! the live API (demisto/content's Cherwell integration and its recorded records, Atlassian's OpsGenie Cherwell
//! script, panoramicdata/Cherwell.Api); and the fixtures in `tests/fixtures/protocols/cherwell-*.json`.
//!
//! - **Tokens** (`POST /CherwellAPI/token`, form-encoded): `grant_type=password` with `client_id` (the REST API
//!   client key), `username`, `password` and `auth_mode` (query string or form; Internal when absent, the
//!   Swagger's "If no other mode is specified, Internal mode is used"; a user signs in only in the mode it is
//!   set up for, `Auto` in any); `grant_type=refresh_token` with `client_id` and `refresh_token`. The answer
//!   has the fixture's shape (`access_token`, `token_type` `bearer`, `expires_in` 1199 by default as the
//!   documentation shows, `refresh_token`, `as:client_id`, `username`, `.issued`, `.expires` as RFC 1123 dates).
//!   A refresh hands out a new refresh token and retires the old one: `as:client_id` is the property name of
//!   the OWIN authorization server sample CSM's token endpoint follows, whose refresh token provider does
//!   that. Failures are HTTP 400 with the bodies the "Errors" page shows, which it prints as a JSON *string*
//!   holding the object (kept so): an unknown client key is `invalid_client_id` "Client {id} is not registered
//!   in the system.", refused credentials `invalid_grant` "Could not login to system with the provided user ID
//!   and password."; an unknown, expired or retired refresh token is OWIN's bare `{"error":"invalid_grant"}`.
//! - **Bearer tokens** on every `/api/` route; missing, unknown or expired ones get 401 with ASP.NET Web API's
//!   `{"Message":"Authorization has been denied for this request."}` (public clients read `Message` from
//!   CSM's error bodies).
//! - **Business objects**: Incident (the fixture's `busObId`, `stateFieldId`, `firstRecIdField` and `states`;
//!   field names from a record demisto/content recorded from CSM 10.1: `IncidentID`, `Status`, `Priority`,
//!   `Urgency`, `Impact`, `ShortDescription`, `Description`, `CustomerDisplayName`/`CustomerRecID`, `Service`,
//!   `Category`, `Subcategory`, `CallSource`, `AssignedTo`, `AssignedTeam`, `CreatedDateTime`, `CreatedBy`,
//!   `LastModifiedDateTime`, `LastModBy`, `ClosedDateTime`, `ClosedBy`, `CloseDescription`,
//!   `Stat_DateTimeResolved`, `Stat_IncidentEscalated`, `ConfigItemDisplayName`, `RecID`) plus the custom
//!   correlation field an administrator adds (`ItsmcCorrelationKey`, [`EmulatorConfig::correlation_field`]);
//!   ChangeRequest (no public record of its fields was found: `ChangeID`, `Title`, `Type`, `RiskLevel`,
//!   `RequestedBy`, `OwnedBy`, `ProposedStartDate`, `ScheduledStartDate`/`EndDate`, `ActualStartDate`/`EndDate`
//!   and the common ones are this emulator's guess); Journal, a group whose members include `Journal - Note`
//!   (name `JournalNote`), with `JournalTypeID`, `JournalTypeName`, `Details` (the OpsGenie script writes notes
//!   through exactly these), related to incidents by the relationship "Incident Owns Journals".
//! - **`GET api/V1/getbusinessobjectsummary/busobname/{name}`** (and `/busobid/{id}`): an array of summaries
//!   (`firstRecIdField`, `groupSummaries`, `recIdFields`, `stateFieldId`, `states` comma-separated, `busObId`,
//!   `displayName`, `group`, `lookup`, `major`, `name`, `supporting`), as the fixture and the Swagger `Summary`
//!   model show; an unknown name gives `[]` (public clients test for an empty array).
//! - **`POST api/V1/getbusinessobjecttemplate`** (`busObId`, `includeAll`, `includeRequired`, `fieldNames`,
//!   `fieldIds`): `{fields: [FieldTemplateItem]}` with `dirty`, `displayName`, `fieldId`, `html`, `name`, `value`.
//! - **`GET api/V1/getbusinessobjectschema/busobid/{id}?includerelationships=true`**: `fieldDefinitions`,
//!   `relationships` (`relationshipId`, `displayName`, `target`, `cardinality`), states.
//! - **`POST api/V1/savebusinessobject`** (`busObId`, `busObRecId` or `busObPublicId` to update, `fields`
//!   [`dirty`, `fieldId`, `name`, `value`], `persist`): creates or updates; answers the `SaveResponse` model
//!   (`busObPublicId`, `busObRecId`, `cacheKey`, `fieldValidationErrors` [`error`, `errorCode`, `fieldId`],
//!   `notificationTriggers`, `errorCode`, `errorMessage`, `hasError`). Validation failures (a required field
//!   left empty, a date that is not in the user's format, a customer or status CSM does not know) answer
//!   **HTTP 200** with `hasError: true` and the field errors: the shape is the Swagger's; the error codes and
//!   texts (`REQUIREDFIELDMISSING`, `INVALIDVALUE`, `VALIDATIONFAILED`) are this emulator's own.
//!   Every save sets `LastModifiedDateTime` and `LastModBy`; a create sets the public id (incidents from
//!   100001, change requests from 5001), `RecID` (42 hex digits, as recorded ones are), `CreatedDateTime`,
//!   `CreatedBy`, status `New`; status Resolved sets `Stat_DateTimeResolved`, Closed sets `ClosedDateTime`
//!   and `ClosedBy`, any other status clears those two. A valid `CustomerDisplayName` fills `CustomerRecID`.
//! - **`POST api/V1/saverelatedbusinessobject`** (`parentBusObId`, `parentBusObRecId` or
//!   `parentBusObPublicId`, `relationshipId`, `busObId`, `fields`, `persist`): a Journal record under an
//!   incident, `JournalTypeID` naming the member (the `RelatedSaveResponse` model).
//! - **`GET api/V1/getbusinessobject/busobid/{id}/busobrecid/{recid}`** (and `/publicid/{id}`): the
//!   `ReadResponse` model with every field.
//! - **`POST api/V1/getsearchresults`** (`busObId`, `filters` [`fieldId`, `operator`, `value`], `sorting`
//!   [`fieldId`, `sortDirection` 1 ascending / 0 descending], `fields`, `includeAllFields`, `pageNumber`,
//!   `pageSize`): `{businessObjects: [ReadResponse], totalRows, hasError...}`. Operators `eq`, `gt`, `lt`,
//!   `contains`, `startswith`; filters on one field are ORed, on different fields ANDed ("Using Search
//!   Operations"). Field ids may be short or full (`BO:{busObId},FI:{fieldId}`). Text compares ignoring case
//!   (SQL Server's default collation), numbers as numbers, date-times as instants.
//! - **Date-times**: CSM keeps them to the millisecond and writes them in the API user's culture (a record
//!   recorded from CSM shows `7/22/2021 12:22 PM`; public clients parse `%m/%d/%Y %I:%M:%S %p` and
//!   `%d.%m.%Y %H:%M`). The emulator keeps milliseconds (seeded records spread over sub-second times), writes
//!   and reads [`EmulatorConfig::date_format`] (US English general long by default) in UTC, filters and sorts
//!   on the kept milliseconds, so records within one shown second come in time order, not record id order.
//! - **Errors**: `{errorCode, errorMessage, hasError: true, httpStatusCode}` (the Swagger's error fields):
//!   404 `RECORDNOTFOUND` for a record that does not exist, 403 `INSUFFICIENTRIGHTS` when the user's rights
//!   ([`CherwellEmulator::set_rights`]) lack view, add or edit on the business object (both codes as public
//!   clients name them), 400 `BUSOBNOTFOUND`, `FIELDNOTFOUND`, `RELATIONSHIPNOTFOUND` for ids CSM does not know
//!   (codes this emulator's own). 404 for routes it does not serve.
//! - **Faults**: [`CherwellEmulator::set_down`] answers everything 503 with IIS's HTTP.sys "Service
//!   Unavailable" page (CSM runs on IIS); [`CherwellEmulator::fail_next`] injects statuses; a rate limit per
//!   second answers 429 with `Retry-After` (CSM documents no rate limiting; a gateway in front of a hosted
//!   instance would answer so); latency delays every answer.
//!
//! # What it leaves out
//!
//! No other business objects, lookups, one-step actions, attachments, saved searches, quick search, queues,
//! teams or security APIs; no business rules (priority is not computed from impact and urgency), no
//! notification triggers, no audit history, no time zones (every user is UTC), no locales beyond the one date
//! format. Rights are per user and business object (view, add, edit), not security groups. Journal records are
//! not indexed as search targets and adding one does not change the incident.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use chrono::{DateTime, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::itsm::{EmulatedItem, EmulatedItsm};
use super::serve::{Server, lock};

/// The user [`EmulatorConfig::default`] knows.
pub const DEFAULT_USERNAME: &str = "itsmc.api";
pub const DEFAULT_PASSWORD: &str = "CSM-api-Pa55word";
/// The REST API client key [`EmulatorConfig::default`] knows (CSM Administrator makes them as GUIDs).
pub const DEFAULT_CLIENT_ID: &str = "0b5a1c2e-7d3f-4e8a-9b6c-1f2e3d4c5b6a";
/// A customer incidents may name (`CustomerDisplayName` is required on incidents).
pub const DEFAULT_CUSTOMER: &str = "Azure Monitor";
/// The Incident business object's id, as a real CSM has it (the summary fixture).
pub const INCIDENT_BUS_OB_ID: &str = "6dd53665c0c24cab86870a21cf6434ae";
pub const DEFAULT_DATE_FORMAT: &str = "%m/%d/%Y %I:%M:%S %p";

const DENIED: &str = "Authorization has been denied for this request.";
const IIS_503: &str = "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01//EN\"\"http://www.w3.org/TR/html4/strict.dtd\">\r\n\
<HTML><HEAD><TITLE>Service Unavailable</TITLE>\r\n<META HTTP-EQUIV=\"Content-Type\" Content=\"text/html; charset=us-ascii\"></HEAD>\r\n\
<BODY><h2>Service Unavailable</h2>\r\n<hr><p>HTTP Error 503. The service is unavailable.</p>\r\n</BODY></HTML>\r\n";

/// A CSM user.
#[derive(Clone, Debug)]
pub struct User {
    pub login: String,
    pub password: String,
    /// The mode the user signs in with: Internal, LDAP, SAML or Windows.
    pub auth_mode: String,
    pub full_name: String,
}

/// What a user may do with a business object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rights {
    pub view: bool,
    pub add: bool,
    pub edit: bool,
}

impl Rights {
    pub const ALL: Rights = Rights { view: true, add: true, edit: true };
    pub const NONE: Rights = Rights { view: false, add: false, edit: false };
}

#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    pub users: Vec<User>,
    /// REST API client keys.
    pub api_keys: Vec<String>,
    /// Reported as `expires_in`: 1199 s, as CSM's documentation shows.
    pub access_token_lifetime: Duration,
    pub refresh_token_lifetime: Duration,
    /// How the users' culture writes date-times (chrono's strftime syntax).
    pub date_format: String,
    /// The custom Incident field an administrator added for itsmc; `None`: not added.
    pub correlation_field: Option<String>,
    pub customers: Vec<String>,
    pub latency: Duration,
    pub rate_limit: Option<u32>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            users: vec![User {
                login: DEFAULT_USERNAME.into(),
                password: DEFAULT_PASSWORD.into(),
                auth_mode: "Internal".into(),
                full_name: "itsmc API".into(),
            }],
            api_keys: vec![DEFAULT_CLIENT_ID.into()],
            access_token_lifetime: Duration::from_secs(1199),
            refresh_token_lifetime: Duration::from_secs(24 * 3600),
            date_format: DEFAULT_DATE_FORMAT.into(),
            correlation_field: Some("ItsmcCorrelationKey".into()),
            customers: vec![DEFAULT_CUSTOMER.into(), "Contoso IT".into(), "Fabrikam Ops".into()],
            latency: Duration::ZERO,
            rate_limit: None,
        }
    }
}

impl EmulatorConfig {
    pub fn with_user(mut self, login: &str, password: &str, auth_mode: &str) -> Self {
        self.users.push(User {
            login: login.into(),
            password: password.into(),
            auth_mode: auth_mode.into(),
            full_name: login.into(),
        });
        self
    }
}

/// One request as the emulator saw it, with the status it answered.
#[derive(Clone, Debug)]
pub struct RequestLog {
    pub method: String,
    /// The path below `/CherwellAPI`, e.g. `/api/V1/getsearchresults`.
    pub path: String,
    pub query: String,
    pub body: String,
    pub bearer: bool,
    pub status: u16,
}

/// A running emulated CSM. It serves until dropped.
pub struct CherwellEmulator {
    addr: SocketAddr,
    instance: Arc<Mutex<Instance>>,
    _server: Server,
}

impl CherwellEmulator {
    /// Binds `127.0.0.1:0` and serves on a thread and runtime of its own (it works from any test, and keeps
    /// real time when a test pauses tokio's clock).
    pub fn start(config: EmulatorConfig) -> CherwellEmulator {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("cherwell emulator: bind");
        let addr = listener.local_addr().expect("cherwell emulator: address");
        let instance = Arc::new(Mutex::new(Instance::new(config)));
        let app = Router::new().fallback(handle).with_state(Arc::clone(&instance));
        let server = Server::http("cherwell-emulator", listener, app);
        CherwellEmulator { addr, instance, _server: server }
    }

    /// `http://127.0.0.1:PORT/CherwellAPI`, the REST API's base.
    pub fn url(&self) -> String {
        format!("http://{}/CherwellAPI", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, Instance> {
        lock(&self.instance)
    }

    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Requests per second (`None`: unlimited); starts a fresh window.
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        let mut instance = self.lock();
        instance.rate_limit = per_second;
        instance.window = (Instant::now(), 0);
    }

    /// While down, every request gets IIS's 503 page.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// The next `times` requests answer `status` (with `Retry-After` when given) and do nothing else.
    pub fn fail_next(&self, times: u32, status: u16, retry_after: Option<u64>) {
        let mut instance = self.lock();
        for _ in 0..times {
            instance.failures.push_back((status, retry_after));
        }
    }

    /// An administrator changes a user's password; tokens already issued stay valid.
    pub fn set_password(&self, login: &str, password: &str) {
        super::serve::capture::secret("cherwell password", password);
        for user in self.lock().users.iter_mut().filter(|u| u.login.eq_ignore_ascii_case(login)) {
            user.password = password.into();
        }
    }

    /// What `login` may do with the business object `object` (every right by default).
    pub fn set_rights(&self, login: &str, object: &str, rights: Rights) {
        self.lock().rights.insert((login.to_ascii_lowercase(), object.to_ascii_lowercase()), rights);
    }

    /// Makes a field of a business object required (or not) from now on.
    pub fn set_required(&self, object: &str, field: &str, required: bool) {
        let mut instance = self.lock();
        if let Some(def) = instance.objects.iter_mut().find(|o| o.name.eq_ignore_ascii_case(object))
            && let Some(f) = def.fields.iter_mut().find(|f| f.name.eq_ignore_ascii_case(field))
        {
            f.required = required;
        }
    }

    /// An administrator changes a field's id (re-creating it): clients that kept the old one must read it again.
    pub fn change_field_id(&self, object: &str, field: &str) -> String {
        let mut instance = self.lock();
        let def = instance.objects.iter_mut().find(|o| o.name.eq_ignore_ascii_case(object)).expect("object");
        let f = def.fields.iter_mut().find(|f| f.name.eq_ignore_ascii_case(field)).expect("field");
        f.id = field_id(&format!("{object}/{field}/renamed"));
        f.id.clone()
    }

    /// Every access token issued so far expires now; refresh tokens stay valid.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for grant in self.lock().access.values_mut() {
            grant.expires = now;
        }
    }

    /// Every refresh token issued so far is refused from now on (the user was logged out).
    pub fn revoke_refresh_tokens(&self) {
        self.lock().refresh.clear();
    }

    /// The `grant_type` of every token request, successful or not, oldest first.
    pub fn token_grants(&self) -> Vec<String> {
        self.lock().grants.clone()
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// The records of a business object (`Incident`, `ChangeRequest`, `Journal`) in creation order, every
    /// field by name as CSM would show it (plus `RecID`).
    pub fn records(&self, object: &str) -> Vec<BTreeMap<String, String>> {
        let instance = self.lock();
        let Some(def) = instance.object_by_name(object) else { return Vec::new() };
        instance
            .records
            .get(&def.id)
            .map_or_else(Vec::new, |records| records.iter().map(|r| instance.shown(def, r)).collect())
    }

    /// One record by its record id.
    pub fn record(&self, object: &str, rec_id: &str) -> Option<BTreeMap<String, String>> {
        let instance = self.lock();
        let def = instance.object_by_name(object)?;
        let record = instance.records.get(&def.id)?.iter().find(|r| r.rec_id == rec_id)?;
        Some(instance.shown(def, record))
    }

    /// The `Details` of the Journal - Note records of an incident, oldest first.
    pub fn notes(&self, incident_rec_id: &str) -> Vec<String> {
        let instance = self.lock();
        let Some(journal) = instance.object_by_name("Journal") else { return Vec::new() };
        instance
            .records
            .get(&journal.id)
            .into_iter()
            .flatten()
            .filter(|r| r.parent.as_deref() == Some(incident_rec_id))
            .filter(|r| r.text("JournalTypeName") == "Journal - Note")
            .map(|r| r.text("Details").to_string())
            .collect()
    }

    /// A person changes a record in the CSM client (fields by name, dates in the date format); the same rules
    /// as a save, without validation. Returns `false` when there is no such record.
    pub fn update(&self, object: &str, rec_id: &str, fields: &[(&str, &str)]) -> bool {
        let mut instance = self.lock();
        let Some(def) = instance.object_by_name(object).cloned() else { return false };
        let now = now_ms();
        let Some(index) = instance.records.get(&def.id).and_then(|r| r.iter().position(|r| r.rec_id == rec_id)) else {
            return false;
        };
        let format = instance.date_format.clone();
        let record = &mut instance.records.get_mut(&def.id).expect("records")[index];
        for (name, value) in fields {
            if let Some(field) = def.field_by_name(name) {
                record.set(&def, field, value, &format);
            }
        }
        record.touch(&def, "CSM Administrator", now);
        true
    }

    /// Reads and searches show `shown` for the record's field (an empty or odd value CSM should not hold), while
    /// filters and sorts still use the value it keeps.
    pub fn show_as(&self, rec_id: &str, field: &str, shown: &str) {
        self.lock().shown.insert((rec_id.to_string(), field.to_ascii_lowercase()), shown.to_string());
    }

    /// Reads and searches send the record without its `busObRecId`.
    pub fn drop_rec_id(&self, rec_id: &str) {
        self.lock().no_rec_id.push(rec_id.to_string());
    }

    /// `n` varied incidents last modified evenly (to the millisecond) over `[from, to)`.
    pub fn seed_incidents(&self, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) {
        self.lock().seed("Incident", n, from, to);
    }

    /// `n` varied change requests last modified evenly over `[from, to)`.
    pub fn seed_change_requests(&self, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) {
        self.lock().seed("ChangeRequest", n, from, to);
    }

    /// The date format the emulator writes.
    pub fn date_format(&self) -> String {
        self.lock().date_format.clone()
    }
}

impl EmulatedItsm for CherwellEmulator {
    fn product(&self) -> &'static str {
        "cherwell"
    }

    fn settings(&self) -> Vec<(String, String)> {
        [
            ("ITSMC_PRODUCT", "cherwell".to_string()),
            ("ITSMC_URL", self.url()),
            ("ITSMC_USERNAME", DEFAULT_USERNAME.to_string()),
            ("ITSMC_PASSWORD", DEFAULT_PASSWORD.to_string()),
            ("ITSMC_CLIENT_ID", DEFAULT_CLIENT_ID.to_string()),
            // Incidents need a customer.
            ("ITSMC_CALLER_ID", DEFAULT_CUSTOMER.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn items(&self, kind: &str) -> Vec<EmulatedItem> {
        let object = if kind == "ChangeRequest" { "ChangeRequest" } else { "Incident" };
        self.records(object)
            .into_iter()
            .map(|record| {
                let field = |name: &str| record.get(name).cloned().unwrap_or_default();
                let id = field("RecID");
                EmulatedItem {
                    correlation: field("ItsmcCorrelationKey"),
                    open: !["Resolved", "Closed"].contains(&field("Status").as_str()),
                    notes: self.notes(&id),
                    id,
                }
            })
            .collect()
    }

    fn set_down(&self, down: bool) {
        CherwellEmulator::set_down(self, down);
    }

    fn close(&self, id: &str) {
        self.update("Incident", id, &[("Status", "Closed")]);
    }

    fn seed(&self, kind: &str, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) {
        if kind == "ChangeRequest" { self.seed_change_requests(n, from, to) } else { self.seed_incidents(n, from, to) }
    }
}

// ---------------------------------------------------------------------------------------------
// Business objects
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
    DateTime,
    Logical,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Text => "Text",
            Kind::Number => "Number",
            Kind::DateTime => "DateTime",
            Kind::Logical => "Logical",
        }
    }
}

#[derive(Clone, Debug)]
struct FieldDef {
    name: String,
    display_name: String,
    id: String,
    kind: Kind,
    required: bool,
}

#[derive(Clone, Debug)]
struct ObjectDef {
    name: String,
    display_name: String,
    id: String,
    fields: Vec<FieldDef>,
    states: Vec<String>,
    /// The field the public id is in (`IncidentID`), and the first number handed out.
    public_id: Option<(&'static str, u64)>,
    /// Group members: (display name, name, busObId).
    members: Vec<(String, String, String)>,
    /// (relationshipId, display name, target busObId).
    relationships: Vec<(String, String, String)>,
    /// The fields a search without `fields` returns.
    grid: Vec<&'static str>,
}

impl ObjectDef {
    fn field(&self, id: &str) -> Option<&FieldDef> {
        // Full ids are `BO:{busObId},FI:{fieldId}`.
        let short = id.rsplit("FI:").next().unwrap_or(id).trim();
        self.fields.iter().find(|f| f.id.eq_ignore_ascii_case(short))
    }
    fn field_by_name(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name.eq_ignore_ascii_case(name))
    }
    fn state_field(&self) -> Option<&FieldDef> {
        if self.states.is_empty() { None } else { self.field_by_name("Status") }
    }
}

/// A stable 42-hex-digit id for a name (CSM's field and record ids have this shape).
fn field_id(seed: &str) -> String {
    hex::encode(&Sha256::digest(seed.as_bytes())[..21])
}

fn define(name: &str, display: &str, id: &str, fields: &[(&str, Kind, bool)]) -> ObjectDef {
    let mut defs: Vec<FieldDef> = fields
        .iter()
        .map(|(field, kind, required)| FieldDef {
            name: field.to_string(),
            display_name: display_name(field),
            id: field_id(&format!("{name}/{field}")),
            kind: *kind,
            required: *required,
        })
        .collect();
    defs.insert(
        0,
        FieldDef {
            name: "RecID".into(),
            display_name: "RecID".into(),
            id: field_id(&format!("{name}/RecID")),
            kind: Kind::Text,
            required: false,
        },
    );
    ObjectDef {
        name: name.into(),
        display_name: display.into(),
        id: id.into(),
        fields: defs,
        states: Vec::new(),
        public_id: None,
        members: Vec::new(),
        relationships: Vec::new(),
        grid: Vec::new(),
    }
}

/// `ShortDescription` is shown as "Short Description", `Stat_DateTimeResolved` as "Stat Date Time Resolved".
fn display_name(name: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if *c == '_' {
            out.push(' ');
            continue;
        }
        let boundary = i > 0
            && c.is_ascii_uppercase()
            && (chars[i - 1].is_ascii_lowercase() || chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase()))
            && chars[i - 1] != '_';
        if boundary {
            out.push(' ');
        }
        out.push(*c);
    }
    out
}

fn objects(correlation_field: Option<&str>) -> Vec<ObjectDef> {
    use Kind::{DateTime as D, Logical as L, Number as N, Text as T};
    let mut incident_fields = vec![
        ("IncidentID", T, false),
        ("Status", T, false),
        ("Priority", N, true),
        ("Urgency", T, false),
        ("Impact", T, false),
        ("ShortDescription", T, false),
        ("Description", T, true),
        ("CustomerDisplayName", T, true),
        ("CustomerRecID", T, false),
        ("Service", T, false),
        ("Category", T, false),
        ("Subcategory", T, false),
        ("CallSource", T, false),
        ("IncidentType", T, false),
        ("AssignedTo", T, false),
        ("AssignedTeam", T, false),
        ("ConfigItemDisplayName", T, false),
        ("CreatedDateTime", D, false),
        ("CreatedBy", T, false),
        ("LastModifiedDateTime", D, false),
        ("LastModBy", T, false),
        ("ClosedDateTime", D, false),
        ("ClosedBy", T, false),
        ("CloseDescription", T, false),
        ("Stat_DateTimeResolved", D, false),
        ("Stat_IncidentEscalated", L, false),
    ];
    if let Some(field) = correlation_field {
        incident_fields.push((field, T, false));
    }
    let mut incident = define("Incident", "Incident", INCIDENT_BUS_OB_ID, &incident_fields);
    // The summary fixture's ids.
    incident.fields[0].id = "fa03d51b709e4a6eb2d52885b2ef7e04".into();
    if let Some(status) = incident.fields.iter_mut().find(|f| f.name == "Status") {
        status.id = "5eb3234ae1344c64a19819eda437f18d".into();
    }
    incident.states =
        ["Pending", "Closed", "Reopened", "New", "In Progress", "Resolved", "Assigned"].map(String::from).to_vec();
    incident.public_id = Some(("IncidentID", 100_001));
    incident.grid = vec!["IncidentID", "Status", "ShortDescription", "Priority"];

    let mut change = define(
        "ChangeRequest",
        "Change Request",
        "934ec7c8f42e3e4b3ab8d7a49aab3a2b3c4ccc1d7d",
        &[
            ("ChangeID", T, false),
            ("Status", T, false),
            ("Title", T, true),
            ("Description", T, false),
            ("Type", T, false),
            ("Category", T, false),
            ("Priority", N, false),
            ("Urgency", T, false),
            ("Impact", T, false),
            ("RiskLevel", T, false),
            ("RequestedBy", T, false),
            ("OwnedBy", T, false),
            ("ConfigItemDisplayName", T, false),
            ("ProposedStartDate", D, false),
            ("ScheduledStartDate", D, false),
            ("ScheduledEndDate", D, false),
            ("ActualStartDate", D, false),
            ("ActualEndDate", D, false),
            ("CreatedDateTime", D, false),
            ("CreatedBy", T, false),
            ("LastModifiedDateTime", D, false),
            ("LastModBy", T, false),
            ("ClosedDateTime", D, false),
            ("ClosedBy", T, false),
        ],
    );
    change.states =
        ["New", "Classify", "Approval", "Scheduled", "Implementing", "Review", "Closed"].map(String::from).to_vec();
    change.public_id = Some(("ChangeID", 5_001));
    change.grid = vec!["ChangeID", "Status", "Title"];

    let mut journal = define(
        "Journal",
        "Journal",
        "934d7f5f4a8c35b8a81d66489db3e8ae2e1db6ab54",
        &[
            ("JournalTypeID", T, true),
            ("JournalTypeName", T, false),
            ("Details", T, true),
            ("ParentRecID", T, false),
            ("ParentTypeID", T, false),
            ("CreatedDateTime", D, false),
            ("CreatedBy", T, false),
            ("LastModifiedDateTime", D, false),
            ("LastModBy", T, false),
        ],
    );
    journal.members = [
        ("Journal - Note", "JournalNote"),
        ("Journal - Mail History", "JournalMailHistory"),
        ("Journal - History", "JournalHistory"),
    ]
    .iter()
    .map(|(display, name)| {
        (display.to_string(), name.to_string(), field_id(&format!("member/{name}"))[..32].to_string())
    })
    .collect();
    journal.grid = vec!["JournalTypeName", "Details"];
    incident.relationships = vec![
        (field_id("rel/Incident Owns Journals"), "Incident Owns Journals".into(), journal.id.clone()),
        (field_id("rel/Incident Owns Tasks"), "Incident Owns Tasks".into(), field_id("Task")[..32].to_string()),
    ];
    vec![incident, change, journal]
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Rec {
    rec_id: String,
    public_id: String,
    /// Text values by field name (lower case).
    values: HashMap<String, String>,
    /// Date-time values by field name (lower case), Unix milliseconds.
    times: HashMap<String, i64>,
    /// The parent record (journals).
    parent: Option<String>,
}

impl Rec {
    fn text(&self, name: &str) -> &str {
        self.values.get(&name.to_ascii_lowercase()).map(String::as_str).unwrap_or_default()
    }
    fn time(&self, name: &str) -> Option<i64> {
        self.times.get(&name.to_ascii_lowercase()).copied()
    }
    fn set_time(&mut self, name: &str, at: Option<i64>) {
        match at {
            Some(at) => self.times.insert(name.to_ascii_lowercase(), at),
            None => self.times.remove(&name.to_ascii_lowercase()),
        };
    }
    fn set_text(&mut self, name: &str, value: &str) {
        self.values.insert(name.to_ascii_lowercase(), value.to_string());
    }

    /// Sets a field from text; a date that does not parse is left out (saves validate before).
    fn set(&mut self, def: &ObjectDef, field: &FieldDef, value: &str, format: &str) {
        match field.kind {
            Kind::DateTime => self.set_time(&field.name, parse_time(value, format)),
            _ => self.set_text(&field.name, value),
        }
        if field.name.eq_ignore_ascii_case("Status") && !def.states.is_empty() {
            self.status_changed(value);
        }
    }

    fn status_changed(&mut self, status: &str) {
        let now = now_ms();
        match status {
            "Resolved" => self.set_time("Stat_DateTimeResolved", Some(now)),
            "Closed" => self.set_time("ClosedDateTime", Some(now)),
            _ => {
                self.set_time("ClosedDateTime", None);
                self.set_text("ClosedBy", "");
            }
        }
    }

    fn touch(&mut self, def: &ObjectDef, user: &str, now: i64) {
        self.set_time("LastModifiedDateTime", Some(now));
        self.set_text("LastModBy", user);
        if self.text("Status") == "Closed" && self.text("ClosedBy").is_empty() && !def.states.is_empty() {
            self.set_text("ClosedBy", user);
        }
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn parse_time(text: &str, format: &str) -> Option<i64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    chrono::NaiveDateTime::parse_from_str(text, format).ok().map(|t| t.and_utc().timestamp_millis())
}

fn show_time(ms: i64, format: &str) -> String {
    Utc.timestamp_millis_opt(ms).single().map(|t| t.format(format).to_string()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Instance
// ---------------------------------------------------------------------------------------------

struct Grant {
    user: String,
    client: String,
    expires: Instant,
}

struct Instance {
    users: Vec<User>,
    api_keys: Vec<String>,
    access_lifetime: Duration,
    refresh_lifetime: Duration,
    date_format: String,
    customers: Vec<(String, String)>,
    latency: Duration,
    rate_limit: Option<u32>,
    window: (Instant, u32),
    down: bool,
    failures: VecDeque<(u16, Option<u64>)>,
    objects: Vec<ObjectDef>,
    /// Records per busObId, in creation order.
    records: HashMap<String, Vec<Rec>>,
    /// Next public id per busObId.
    sequences: HashMap<String, u64>,
    rights: HashMap<(String, String), Rights>,
    access: HashMap<String, Grant>,
    refresh: HashMap<String, Grant>,
    grants: Vec<String>,
    requests: Vec<RequestLog>,
    rng: StdRng,
    /// Text shown for (record id, field name in lower case) in place of the kept value: a record CSM holds in
    /// a shape it should not (filters and sorts still use the kept value).
    shown: HashMap<(String, String), String>,
    /// Records whose reads and search results come without `busObRecId`.
    no_rec_id: Vec<String>,
}

struct Reply {
    status: StatusCode,
    body: String,
    content_type: &'static str,
    retry_after: Option<u64>,
}

impl Reply {
    fn json(status: StatusCode, body: Value) -> Reply {
        Reply { status, body: body.to_string(), content_type: "application/json; charset=utf-8", retry_after: None }
    }
    fn ok(body: Value) -> Reply {
        Reply::json(StatusCode::OK, body)
    }
    /// CSM's error body.
    fn error(status: StatusCode, code: &str, message: &str) -> Reply {
        let http = status.canonical_reason().unwrap_or("Error").replace(' ', "");
        Reply::json(
            status,
            json!({"errorCode": code, "errorMessage": message, "hasError": true, "httpStatusCode": http}),
        )
    }
    fn denied() -> Reply {
        Reply::json(StatusCode::UNAUTHORIZED, json!({ "Message": DENIED }))
    }
    /// A token refusal, as the documentation prints it: a JSON string holding the object.
    fn oauth(error: &str, description: Option<&str>) -> Reply {
        let mut object = json!({ "error": error });
        if let Some(description) = description {
            object["error_description"] = json!(description);
        }
        Reply::json(StatusCode::BAD_REQUEST, Value::String(object.to_string()))
    }
}

type Shared = Arc<Mutex<Instance>>;

async fn handle(State(instance): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024).await.unwrap_or_default();
    let latency = lock(&instance).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    let mut guard = lock(&instance);
    let reply = guard.respond(&parts.method, &path, &query, &parts.headers, &body);
    guard.requests.push(RequestLog {
        method: parts.method.to_string(),
        path: path.get("/CherwellAPI".len()..).unwrap_or(&path).to_string(),
        query,
        body: String::from_utf8_lossy(&body).into_owned(),
        bearer: bearer(&parts.headers).is_some(),
        status: reply.status.as_u16(),
    });
    drop(guard);
    let mut response = Response::new(Body::from(reply.body));
    *response.status_mut() = reply.status;
    if let Ok(value) = header::HeaderValue::from_str(reply.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    if let Some(seconds) = reply.retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, seconds.into());
    }
    response
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

fn parse_form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn text(value: &Value, name: &str) -> String {
    match value.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

impl Instance {
    fn new(config: EmulatorConfig) -> Instance {
        config.users.iter().for_each(|u| super::serve::capture::secret("cherwell password", &u.password));
        let mut instance = Instance {
            users: config.users,
            api_keys: config.api_keys,
            access_lifetime: config.access_token_lifetime,
            refresh_lifetime: config.refresh_token_lifetime,
            date_format: config.date_format,
            customers: config.customers.iter().map(|c| (c.clone(), field_id(&format!("customer/{c}")))).collect(),
            latency: config.latency,
            rate_limit: config.rate_limit,
            window: (Instant::now(), 0),
            down: false,
            failures: VecDeque::new(),
            objects: objects(config.correlation_field.as_deref()),
            records: HashMap::new(),
            sequences: HashMap::new(),
            rights: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            grants: Vec::new(),
            requests: Vec::new(),
            rng: StdRng::seed_from_u64(0x00c4_e3e1),
            shown: HashMap::new(),
            no_rec_id: Vec::new(),
        };
        for def in &instance.objects {
            if let Some((_, first)) = def.public_id {
                instance.sequences.insert(def.id.clone(), first);
            }
        }
        instance
    }

    fn object_by_name(&self, name: &str) -> Option<&ObjectDef> {
        self.objects.iter().find(|o| o.name.eq_ignore_ascii_case(name))
    }

    fn object_by_id(&self, id: &str) -> Option<&ObjectDef> {
        self.objects
            .iter()
            .find(|o| o.id.eq_ignore_ascii_case(id) || o.members.iter().any(|m| m.2.eq_ignore_ascii_case(id)))
    }

    fn rights(&self, user: &str, object: &str) -> Rights {
        self.rights.get(&(user.to_ascii_lowercase(), object.to_ascii_lowercase())).copied().unwrap_or(Rights::ALL)
    }

    fn full_name(&self, login: &str) -> String {
        self.users
            .iter()
            .find(|u| u.login.eq_ignore_ascii_case(login))
            .map_or(login.to_string(), |u| u.full_name.clone())
    }

    /// A record as CSM shows it: every field by name (dates in the date format), plus `RecID`.
    fn shown(&self, def: &ObjectDef, record: &Rec) -> BTreeMap<String, String> {
        def.fields.iter().map(|f| (f.name.clone(), self.value(f, record))).collect()
    }

    fn value(&self, field: &FieldDef, record: &Rec) -> String {
        match field.kind {
            _ if field.name == "RecID" => record.rec_id.clone(),
            Kind::DateTime => record.time(&field.name).map(|ms| show_time(ms, &self.date_format)).unwrap_or_default(),
            _ => record.text(&field.name).to_string(),
        }
    }

    /// A field's value as reads show it: [`Instance::value`], unless a test made it show something else.
    fn shown_value(&self, field: &FieldDef, record: &Rec) -> String {
        match self.shown.get(&(record.rec_id.clone(), field.name.to_ascii_lowercase())) {
            Some(shown) => shown.clone(),
            None => self.value(field, record),
        }
    }

    fn rec_id(&mut self) -> String {
        let bytes: [u8; 21] = self.rng.random();
        hex::encode(bytes)
    }

    fn respond(&mut self, method: &Method, path: &str, query: &str, headers: &HeaderMap, body: &[u8]) -> Reply {
        if self.down {
            return Reply {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: IIS_503.into(),
                content_type: "text/html; charset=us-ascii",
                retry_after: None,
            };
        }
        if let Some(limit) = self.rate_limit {
            if self.window.0.elapsed() >= Duration::from_secs(1) {
                self.window = (Instant::now(), 0);
            }
            self.window.1 += 1;
            if self.window.1 > limit {
                let mut reply = Reply::json(StatusCode::TOO_MANY_REQUESTS, json!({ "Message": "Too many requests." }));
                reply.retry_after = Some(1);
                return reply;
            }
        }
        if let Some((status, retry_after)) = self.failures.pop_front() {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut reply = match status {
                StatusCode::UNAUTHORIZED => Reply::denied(),
                StatusCode::FORBIDDEN => {
                    Reply::error(status, "INSUFFICIENTRIGHTS", "You do not have rights to perform this operation.")
                }
                StatusCode::TOO_MANY_REQUESTS => Reply::json(status, json!({ "Message": "Too many requests." })),
                _ => Reply::error(status, "GENERALFAILURE", status.canonical_reason().unwrap_or("Error")),
            };
            reply.retry_after = retry_after;
            return reply;
        }
        let Some(rest) = strip_prefix_ignore_case(path, "/CherwellAPI") else {
            return Reply::json(
                StatusCode::NOT_FOUND,
                json!({ "Message": "No HTTP resource was found that matches the request URI." }),
            );
        };
        let rest = rest.trim_end_matches('/');
        if rest.eq_ignore_ascii_case("/token") {
            if method != Method::POST {
                return Reply::json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    json!({ "Message": "The requested resource does not support this method." }),
                );
            }
            return self.token(query, body);
        }
        let Some(api) = strip_prefix_ignore_case(rest, "/api/V1/") else {
            return Reply::json(
                StatusCode::NOT_FOUND,
                json!({ "Message": "No HTTP resource was found that matches the request URI." }),
            );
        };
        let Some(user) = bearer(headers)
            .and_then(|token| self.access.get(&token).filter(|g| g.expires > Instant::now()).map(|g| g.user.clone()))
        else {
            return Reply::denied();
        };
        let segments: Vec<&str> = api.split('/').collect();
        let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
        let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
        let json_body = || serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
        match (method.as_str(), lower.as_slice()) {
            ("GET", ["getbusinessobjectsummary", "busobname", _]) => {
                self.summaries(|o| o.name.eq_ignore_ascii_case(segments[2]))
            }
            ("GET", ["getbusinessobjectsummary", "busobid", _]) => {
                self.summaries(|o| o.id.eq_ignore_ascii_case(segments[2]))
            }
            ("POST", ["getbusinessobjecttemplate"]) => self.template(&json_body()),
            ("GET", ["getbusinessobjectschema", "busobid", _]) => self.schema(segments[2], query),
            ("GET", ["getbusinessobject", "busobid", _, kind @ ("busobrecid" | "publicid"), _]) => {
                self.read(&user, segments[2], *kind == "publicid", segments[4])
            }
            ("POST", ["savebusinessobject"]) => self.save(&user, &json_body()),
            ("POST", ["saverelatedbusinessobject"]) => self.save_related(&user, &json_body()),
            ("POST", ["getsearchresults"]) => self.search(&user, &json_body()),
            _ => Reply::json(
                StatusCode::NOT_FOUND,
                json!({ "Message": "No HTTP resource was found that matches the request URI." }),
            ),
        }
    }

    // --- tokens -----------------------------------------------------------------------------

    fn token(&mut self, query: &str, body: &[u8]) -> Reply {
        let form = parse_form(body);
        let query = parse_form(query.as_bytes());
        let grant_type = form.get("grant_type").cloned().unwrap_or_default();
        self.grants.push(grant_type.clone());
        let client = form.get("client_id").cloned().unwrap_or_default();
        if !self.api_keys.iter().any(|k| k == &client) {
            return Reply::oauth(
                "invalid_client_id",
                Some(&format!("Client {client} is not registered in the system.")),
            );
        }
        let user = match grant_type.as_str() {
            "password" => {
                let mode = form
                    .get("auth_mode")
                    .or_else(|| query.get("auth_mode"))
                    .cloned()
                    .unwrap_or_else(|| "Internal".into());
                let login = form.get("username").cloned().unwrap_or_default();
                let password = form.get("password").cloned().unwrap_or_default();
                let known = self.users.iter().find(|u| {
                    u.login.eq_ignore_ascii_case(&login)
                        && u.password == password
                        && (mode.eq_ignore_ascii_case("Auto") || u.auth_mode.eq_ignore_ascii_case(&mode))
                });
                match known {
                    Some(user) => user.login.clone(),
                    None => {
                        return Reply::oauth(
                            "invalid_grant",
                            Some("Could not login to system with the provided user ID and password."),
                        );
                    }
                }
            }
            "refresh_token" => {
                let token = form.get("refresh_token").cloned().unwrap_or_default();
                match self.refresh.remove(&token) {
                    Some(grant) if grant.expires > Instant::now() && grant.client == client => grant.user,
                    _ => return Reply::oauth("invalid_grant", None),
                }
            }
            _ => return Reply::oauth("unsupported_grant_type", None),
        };
        let access = hex::encode(self.rng.random::<[u8; 24]>());
        let refresh = hex::encode(self.rng.random::<[u8; 16]>());
        super::serve::capture::secrets("cherwell token", [&access, &refresh]);
        let now = Instant::now();
        self.access.insert(
            access.clone(),
            Grant { user: user.clone(), client: client.clone(), expires: now + self.access_lifetime },
        );
        self.refresh.insert(
            refresh.clone(),
            Grant { user: user.clone(), client: client.clone(), expires: now + self.refresh_lifetime },
        );
        let issued = Utc::now();
        let expires = issued + chrono::Duration::from_std(self.access_lifetime).unwrap_or_default();
        let rfc1123 = |t: DateTime<Utc>| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        Reply::ok(json!({
            "access_token": access,
            "token_type": "bearer",
            "expires_in": self.access_lifetime.as_secs(),
            "refresh_token": refresh,
            "as:client_id": client,
            "username": user,
            ".issued": rfc1123(issued),
            ".expires": rfc1123(expires),
        }))
    }

    // --- configuration ----------------------------------------------------------------------

    fn summary(&self, def: &ObjectDef) -> Value {
        let rec_id = def.fields[0].id.clone();
        json!({
            "firstRecIdField": rec_id,
            "groupSummaries": def.members.iter().map(|(display, name, id)| json!({
                "firstRecIdField": rec_id, "groupSummaries": [], "recIdFields": rec_id, "stateFieldId": "",
                "states": "", "busObId": id, "displayName": display, "group": false, "lookup": false,
                "major": false, "name": name, "supporting": true,
            })).collect::<Vec<_>>(),
            "recIdFields": rec_id,
            "stateFieldId": def.state_field().map(|f| f.id.clone()).unwrap_or_default(),
            "states": def.states.join(","),
            "busObId": def.id,
            "displayName": def.display_name,
            "group": !def.members.is_empty(),
            "lookup": false,
            "major": def.public_id.is_some(),
            "name": def.name,
            "supporting": def.public_id.is_none(),
        })
    }

    fn summaries(&self, matches: impl Fn(&ObjectDef) -> bool) -> Reply {
        let found: Vec<Value> = self.objects.iter().filter(|o| matches(o)).map(|o| self.summary(o)).collect();
        Reply::ok(Value::Array(found))
    }

    fn template(&self, body: &Value) -> Reply {
        let Some(def) = self.object_by_id(&text(body, "busObId")) else {
            return Reply::error(StatusCode::BAD_REQUEST, "BUSOBNOTFOUND", "Business object not found");
        };
        let all = body.get("includeAll").and_then(Value::as_bool) == Some(true);
        let required = body.get("includeRequired").and_then(Value::as_bool) == Some(true);
        let list = |name: &str| -> Vec<String> {
            body.get(name)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        };
        let (names, ids) = (list("fieldNames"), list("fieldIds"));
        let fields: Vec<Value> = def
            .fields
            .iter()
            .filter(|f| {
                all || (required && f.required)
                    || names.iter().any(|n| n.eq_ignore_ascii_case(&f.name))
                    || ids.iter().any(|i| def.field(i).is_some_and(|d| d.id == f.id))
            })
            .map(|f| json!({"dirty": false, "displayName": f.display_name, "fieldId": f.id, "html": null, "name": f.name, "value": ""}))
            .collect();
        Reply::ok(json!({ "fields": fields, "errorCode": null, "errorMessage": null, "hasError": false }))
    }

    fn schema(&self, id: &str, query: &str) -> Reply {
        let Some(def) = self.objects.iter().find(|o| o.id.eq_ignore_ascii_case(id)) else {
            return Reply::error(StatusCode::BAD_REQUEST, "BUSOBNOTFOUND", "Business object not found");
        };
        let with_relationships =
            parse_form(query.as_bytes()).get("includerelationships").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let definitions: Vec<Value> = def
            .fields
            .iter()
            .map(|f| json!({
                "autoFill": false, "calculated": false, "category": "", "decimalDigits": 0, "description": "",
                "details": "", "displayName": f.display_name, "enabled": true, "fieldId": f.id,
                "hasDate": f.kind == Kind::DateTime, "hasTime": f.kind == Kind::DateTime, "isFullTextSearchable": f.kind == Kind::Text,
                "maximumSize": "", "name": f.name, "readOnly": f.name == "RecID", "required": f.required,
                "type": f.kind.name(), "typeLocalized": f.kind.name(), "validated": false, "wholeDigits": 0,
            }))
            .collect();
        let relationships: Vec<Value> = if with_relationships {
            def.relationships
                .iter()
                .map(|(id, display, target)| {
                    json!({
                        "cardinality": "OneToMany", "description": "", "displayName": display,
                        "fieldDefinitions": [], "relationshipId": id, "target": target,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        Reply::ok(json!({
            "busObId": def.id, "fieldDefinitions": definitions, "firstRecIdField": def.fields[0].id,
            "gridDefinitions": [], "name": def.name, "recIdFields": def.fields[0].id, "relationships": relationships,
            "stateFieldId": def.state_field().map(|f| f.id.clone()).unwrap_or_default(), "states": def.states.join(","),
            "errorCode": null, "errorMessage": null, "hasError": false,
        }))
    }

    // --- records ----------------------------------------------------------------------------

    fn read_response(&self, def: &ObjectDef, record: &Rec, fields: Option<&[&FieldDef]>) -> Value {
        let all: Vec<&FieldDef> = def.fields.iter().collect();
        let fields = fields.unwrap_or(&all);
        json!({
            "busObId": def.id,
            "busObPublicId": record.public_id,
            "busObRecId": if self.no_rec_id.contains(&record.rec_id) { "" } else { record.rec_id.as_str() },
            "fields": fields.iter().map(|f| json!({
                "dirty": false, "displayName": f.display_name, "fieldId": f.id, "html": null,
                "name": f.name, "value": self.shown_value(f, record),
            })).collect::<Vec<_>>(),
            "links": [],
            "errorCode": null,
            "errorMessage": null,
            "hasError": false,
        })
    }

    fn read(&self, user: &str, id: &str, by_public_id: bool, key: &str) -> Reply {
        let Some(def) = self.object_by_id(id) else {
            return Reply::error(StatusCode::BAD_REQUEST, "BUSOBNOTFOUND", "Business object not found");
        };
        if !self.rights(user, &def.name).view {
            return Reply::error(
                StatusCode::FORBIDDEN,
                "INSUFFICIENTRIGHTS",
                "You do not have rights to view this business object.",
            );
        }
        let record = self.records.get(&def.id).into_iter().flatten().find(|r| {
            if by_public_id { r.public_id.eq_ignore_ascii_case(key) } else { r.rec_id.eq_ignore_ascii_case(key) }
        });
        match record {
            Some(record) => Reply::ok(self.read_response(def, record, None)),
            None => Reply::error(StatusCode::NOT_FOUND, "RECORDNOTFOUND", "Record not found"),
        }
    }

    /// The values a save sets, checked: (field, value) pairs, or the fields' validation errors.
    fn validate(&self, def: &ObjectDef, fields: &[(FieldDef, String)], existing: Option<&Rec>) -> Vec<Value> {
        let mut errors = Vec::new();
        let mut error = |field: &FieldDef, code: &str, message: String| {
            errors.push(json!({ "error": message, "errorCode": code, "fieldId": field.id }));
        };
        for (field, value) in fields {
            if value.trim().is_empty() {
                continue;
            }
            match field.kind {
                Kind::DateTime if parse_time(value, &self.date_format).is_none() => {
                    error(field, "INVALIDVALUE", format!("{} is not a valid date/time: {value}", field.display_name))
                }
                Kind::Number if value.trim().parse::<f64>().is_err() => {
                    error(field, "INVALIDVALUE", format!("{} must be a number", field.display_name))
                }
                _ => {}
            }
            if field.name == "CustomerDisplayName" && !self.customers.iter().any(|(c, _)| c.eq_ignore_ascii_case(value))
            {
                error(field, "INVALIDVALUE", format!("'{value}' is not a valid value for {}", field.display_name));
            }
            if field.name == "Status" && !def.states.is_empty() && !def.states.iter().any(|s| s == value) {
                error(field, "INVALIDVALUE", format!("'{value}' is not a valid value for {}", field.display_name));
            }
        }
        for field in def.fields.iter().filter(|f| f.required) {
            let given = fields.iter().find(|(f, _)| f.id == field.id).map(|(_, v)| v.trim());
            let present = match (given, existing) {
                (Some(value), _) => !value.is_empty(),
                (None, Some(record)) => !self.value(field, record).is_empty(),
                (None, None) => false,
            };
            if !present {
                error(field, "REQUIREDFIELDMISSING", format!("{} is required", field.display_name));
            }
        }
        errors
    }

    /// The fields of a save body, resolved against the business object.
    fn fields(def: &ObjectDef, body: &Value) -> Result<Vec<(FieldDef, String)>, Reply> {
        let mut out = Vec::new();
        for item in body.get("fields").and_then(Value::as_array).into_iter().flatten() {
            let id = text(item, "fieldId");
            let field = if id.is_empty() { def.field_by_name(&text(item, "name")) } else { def.field(&id) };
            let Some(field) = field else {
                return Err(Reply::error(
                    StatusCode::BAD_REQUEST,
                    "FIELDNOTFOUND",
                    &format!("Field {id} was not found on business object {}", def.name),
                ));
            };
            if item.get("dirty").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            out.push((field.clone(), text(item, "value")));
        }
        Ok(out)
    }

    fn save(&mut self, user: &str, body: &Value) -> Reply {
        let Some(def) = self.object_by_id(&text(body, "busObId")).cloned() else {
            return Reply::error(StatusCode::BAD_REQUEST, "BUSOBNOTFOUND", "Business object not found");
        };
        let fields = match Self::fields(&def, body) {
            Ok(fields) => fields,
            Err(reply) => return reply,
        };
        let (rec_id, public_id) = (text(body, "busObRecId"), text(body, "busObPublicId"));
        let update = !rec_id.is_empty() || !public_id.is_empty();
        let rights = self.rights(user, &def.name);
        if (update && !rights.edit) || (!update && !rights.add) {
            return Reply::error(
                StatusCode::FORBIDDEN,
                "INSUFFICIENTRIGHTS",
                "You do not have rights to save this business object.",
            );
        }
        let index = if update {
            let found = self.records.get(&def.id).and_then(|records| {
                records.iter().position(|r| {
                    (!rec_id.is_empty() && r.rec_id.eq_ignore_ascii_case(&rec_id))
                        || (rec_id.is_empty() && r.public_id.eq_ignore_ascii_case(&public_id))
                })
            });
            match found {
                Some(index) => Some(index),
                None => return Reply::error(StatusCode::NOT_FOUND, "RECORDNOTFOUND", "Record not found"),
            }
        } else {
            None
        };
        let existing = index.map(|i| self.records[&def.id][i].clone());
        let errors = self.validate(&def, &fields, existing.as_ref());
        if !errors.is_empty() {
            return Reply::ok(json!({
                "busObPublicId": public_id, "busObRecId": rec_id, "cacheKey": null,
                "fieldValidationErrors": errors, "notificationTriggers": [],
                "errorCode": "VALIDATIONFAILED", "errorMessage": "The business object failed validation.", "hasError": true,
            }));
        }
        if body.get("persist").and_then(Value::as_bool) == Some(false) {
            return Reply::ok(json!({
                "busObPublicId": public_id, "busObRecId": rec_id, "cacheKey": hex::encode(self.rng.random::<[u8; 8]>()),
                "fieldValidationErrors": [], "notificationTriggers": [], "errorCode": null, "errorMessage": null, "hasError": false,
            }));
        }
        let full_name = self.full_name(user);
        let format = self.date_format.clone();
        let now = now_ms();
        let mut record = match existing {
            Some(record) => record,
            None => {
                let rec_id = self.rec_id();
                let public_id = match def.public_id {
                    Some(_) => {
                        let next = self.sequences.entry(def.id.clone()).or_insert(1);
                        let id = next.to_string();
                        *next += 1;
                        id
                    }
                    None => rec_id.clone(),
                };
                let mut record = Rec {
                    rec_id,
                    public_id: public_id.clone(),
                    values: HashMap::new(),
                    times: HashMap::new(),
                    parent: None,
                };
                if let Some((field, _)) = def.public_id {
                    record.set_text(field, &public_id);
                }
                if def.state_field().is_some() {
                    record.set_text("Status", "New");
                }
                record.set_time("CreatedDateTime", Some(now));
                record.set_text("CreatedBy", &full_name);
                record
            }
        };
        for (field, value) in &fields {
            record.set(&def, field, value, &format);
            if field.name == "CustomerDisplayName" {
                let id = self.customers.iter().find(|(c, _)| c.eq_ignore_ascii_case(value)).map(|(_, id)| id.clone());
                record.set_text("CustomerRecID", &id.unwrap_or_default());
            }
        }
        record.touch(&def, &full_name, now);
        let answer = json!({
            "busObPublicId": record.public_id, "busObRecId": record.rec_id, "cacheKey": null,
            "fieldValidationErrors": [], "notificationTriggers": [], "errorCode": null, "errorMessage": null, "hasError": false,
        });
        let records = self.records.entry(def.id.clone()).or_default();
        match index {
            Some(index) => records[index] = record,
            None => records.push(record),
        }
        Reply::ok(answer)
    }

    fn save_related(&mut self, user: &str, body: &Value) -> Reply {
        let Some(parent) = self.object_by_id(&text(body, "parentBusObId")).cloned() else {
            return Reply::error(StatusCode::BAD_REQUEST, "BUSOBNOTFOUND", "Parent business object not found");
        };
        let (parent_rec, parent_public) = (text(body, "parentBusObRecId"), text(body, "parentBusObPublicId"));
        let Some(parent_record) = self
            .records
            .get(&parent.id)
            .into_iter()
            .flatten()
            .find(|r| {
                (!parent_rec.is_empty() && r.rec_id.eq_ignore_ascii_case(&parent_rec))
                    || (parent_rec.is_empty() && r.public_id.eq_ignore_ascii_case(&parent_public))
            })
            .cloned()
        else {
            return Reply::error(StatusCode::NOT_FOUND, "RECORDNOTFOUND", "Parent record not found");
        };
        let relationship = text(body, "relationshipId");
        let Some((_, _, target)) =
            parent.relationships.iter().find(|(id, _, _)| id.eq_ignore_ascii_case(&relationship)).cloned()
        else {
            return Reply::error(StatusCode::BAD_REQUEST, "RELATIONSHIPNOTFOUND", "Relationship not found");
        };
        let Some(def) =
            self.object_by_id(&text(body, "busObId")).cloned().filter(|d| d.id.eq_ignore_ascii_case(&target))
        else {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                "BUSOBNOTFOUND",
                "The business object is not the relationship's target",
            );
        };
        if !self.rights(user, &def.name).add {
            return Reply::error(
                StatusCode::FORBIDDEN,
                "INSUFFICIENTRIGHTS",
                "You do not have rights to add this business object.",
            );
        }
        let fields = match Self::fields(&def, body) {
            Ok(fields) => fields,
            Err(reply) => return reply,
        };
        let mut errors = self.validate(&def, &fields, None);
        let type_id =
            fields.iter().find(|(f, _)| f.name == "JournalTypeID").map(|(_, v)| v.clone()).unwrap_or_default();
        let member = def.members.iter().find(|m| m.2.eq_ignore_ascii_case(&type_id)).cloned();
        if member.is_none()
            && let Some(field) = def.field_by_name("JournalTypeID")
        {
            errors.push(json!({ "error": format!("'{type_id}' is not a journal type"), "errorCode": "INVALIDVALUE", "fieldId": field.id }));
        }
        let related = |rec: &str, public: &str, errors: Vec<Value>, code: Value, message: Value| {
            json!({
                "parentBusObId": parent.id, "parentBusObPublicId": parent_record.public_id, "parentBusObRecId": parent_record.rec_id,
                "relationshipId": relationship, "busObPublicId": public, "busObRecId": rec, "cacheKey": null,
                "fieldValidationErrors": errors, "notificationTriggers": [], "errorCode": code.clone(), "errorMessage": message,
                "hasError": !code.is_null(),
            })
        };
        if !errors.is_empty() {
            return Reply::ok(related(
                "",
                "",
                errors,
                json!("VALIDATIONFAILED"),
                json!("The business object failed validation."),
            ));
        }
        let full_name = self.full_name(user);
        let format = self.date_format.clone();
        let now = now_ms();
        let rec_id = self.rec_id();
        let mut record = Rec {
            rec_id: rec_id.clone(),
            public_id: rec_id.clone(),
            values: HashMap::new(),
            times: HashMap::new(),
            parent: Some(parent_record.rec_id.clone()),
        };
        for (field, value) in &fields {
            record.set(&def, field, value, &format);
        }
        if let Some((display, _, _)) = member {
            record.set_text("JournalTypeName", &display);
        }
        record.set_text("ParentRecID", &parent_record.rec_id);
        record.set_text("ParentTypeID", &parent.id);
        record.set_time("CreatedDateTime", Some(now));
        record.set_text("CreatedBy", &full_name);
        record.touch(&def, &full_name, now);
        self.records.entry(def.id.clone()).or_default().push(record);
        Reply::ok(related(&rec_id, &rec_id, Vec::new(), Value::Null, Value::Null))
    }

    // --- search -----------------------------------------------------------------------------

    fn compare(&self, field: &FieldDef, record: &Rec, operand: &str) -> Option<std::cmp::Ordering> {
        match field.kind {
            Kind::DateTime => {
                let stored = record.time(&field.name)?;
                Some(stored.cmp(&parse_time(operand, &self.date_format)?))
            }
            Kind::Number => {
                let stored: f64 = record.text(&field.name).trim().parse().ok()?;
                stored.partial_cmp(&operand.trim().parse::<f64>().ok()?)
            }
            _ => Some(self.value(field, record).to_lowercase().cmp(&operand.to_lowercase())),
        }
    }

    fn matches(&self, field: &FieldDef, operator: &str, operand: &str, record: &Rec) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        let is = |name: &str| operator.eq_ignore_ascii_case(name);
        if is("eq") {
            match field.kind {
                Kind::Text | Kind::Logical if field.name != "RecID" => {
                    record.text(&field.name).eq_ignore_ascii_case(operand)
                }
                Kind::Text | Kind::Logical => record.rec_id.eq_ignore_ascii_case(operand),
                _ => self.compare(field, record, operand) == Some(Equal),
            }
        } else if is("gt") {
            self.compare(field, record, operand) == Some(Greater)
        } else if is("lt") {
            self.compare(field, record, operand) == Some(Less)
        } else if is("contains") {
            self.value(field, record).to_lowercase().contains(&operand.to_lowercase())
        } else if is("startswith") {
            self.value(field, record).to_lowercase().starts_with(&operand.to_lowercase())
        } else {
            false
        }
    }

    fn sort_key(&self, field: &FieldDef, a: &Rec, b: &Rec) -> std::cmp::Ordering {
        match field.kind {
            Kind::DateTime => a.time(&field.name).cmp(&b.time(&field.name)),
            Kind::Number => {
                let n = |r: &Rec| r.text(&field.name).trim().parse::<f64>().unwrap_or(f64::NEG_INFINITY);
                n(a).total_cmp(&n(b))
            }
            _ => self.value(field, a).to_lowercase().cmp(&self.value(field, b).to_lowercase()),
        }
    }

    fn search(&self, user: &str, body: &Value) -> Reply {
        let Some(def) = self.object_by_id(&text(body, "busObId")) else {
            return Reply::error(StatusCode::BAD_REQUEST, "BUSOBNOTFOUND", "Business object not found");
        };
        if !self.rights(user, &def.name).view {
            return Reply::error(
                StatusCode::FORBIDDEN,
                "INSUFFICIENTRIGHTS",
                "You do not have rights to view this business object.",
            );
        }
        // Filters grouped by field: ORed within a field, ANDed across fields.
        let mut groups: Vec<(&FieldDef, Vec<(String, String)>)> = Vec::new();
        for filter in body.get("filters").and_then(Value::as_array).into_iter().flatten() {
            let id = text(filter, "fieldId");
            let Some(field) = def.field(&id) else {
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    "FIELDNOTFOUND",
                    &format!("Field {id} was not found on business object {}", def.name),
                );
            };
            let condition = (text(filter, "operator"), text(filter, "value"));
            match groups.iter_mut().find(|(f, _)| f.id == field.id) {
                Some((_, conditions)) => conditions.push(condition),
                None => groups.push((field, vec![condition])),
            }
        }
        let mut sorting: Vec<(&FieldDef, bool)> = Vec::new();
        for sort in body.get("sorting").and_then(Value::as_array).into_iter().flatten() {
            let id = text(sort, "fieldId");
            let Some(field) = def.field(&id) else {
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    "FIELDNOTFOUND",
                    &format!("Field {id} was not found on business object {}", def.name),
                );
            };
            sorting.push((field, sort.get("sortDirection").and_then(Value::as_i64) != Some(0)));
        }
        let records: Vec<&Rec> = self.records.get(&def.id).into_iter().flatten().collect();
        let mut found: Vec<&Rec> = records
            .into_iter()
            .filter(|r| {
                groups
                    .iter()
                    .all(|(field, conditions)| conditions.iter().any(|(op, value)| self.matches(field, op, value, r)))
            })
            .collect();
        found.sort_by(|a, b| {
            sorting
                .iter()
                .map(|(field, ascending)| {
                    let order = self.sort_key(field, a, b);
                    if *ascending { order } else { order.reverse() }
                })
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let total = found.len();
        let size = body.get("pageSize").and_then(Value::as_u64).unwrap_or(200).max(1) as usize;
        let number = body.get("pageNumber").and_then(Value::as_u64).unwrap_or(1).max(1) as usize;
        let page: Vec<&Rec> = found.into_iter().skip((number - 1) * size).take(size).collect();
        let asked: Vec<String> = body
            .get("fields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect();
        let all = body.get("includeAllFields").and_then(Value::as_bool) == Some(true);
        let fields: Vec<&FieldDef> = if all {
            def.fields.iter().collect()
        } else if !asked.is_empty() {
            let mut fields = Vec::new();
            for id in &asked {
                match def.field(id) {
                    Some(field) => fields.push(field),
                    None => {
                        return Reply::error(
                            StatusCode::BAD_REQUEST,
                            "FIELDNOTFOUND",
                            &format!("Field {id} was not found on business object {}", def.name),
                        );
                    }
                }
            }
            fields
        } else {
            def.grid.iter().filter_map(|name| def.field_by_name(name)).collect()
        };
        let objects: Vec<Value> = page.iter().map(|r| self.read_response(def, r, Some(&fields))).collect();
        Reply::ok(json!({
            "businessObjects": objects, "hasPrompts": false, "links": [], "prompts": [], "searchResultsFields": [],
            "simpleResults": null, "totalRows": total, "errorCode": null, "errorMessage": null, "hasError": false,
        }))
    }

    // --- seeding ----------------------------------------------------------------------------

    fn seed(&mut self, object: &str, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) {
        let Some(def) = self.object_by_name(object).cloned() else { return };
        let (start, end) = (from.timestamp_millis(), to.timestamp_millis().max(from.timestamp_millis() + 1));
        let span = (end - start) as f64;
        let customers: Vec<String> = self.customers.iter().map(|(c, _)| c.clone()).collect();
        let people = ["Beth Anglin", "Ravi Kumar", "Zoë Müller", "José O'Brien", "李 伟"];
        let teams = ["1st Level Support", "2nd Level Support", "Network", "Database"];
        let cis = ["web01", "web02", "sql-prod-1", "", "vpn-gw"];
        let subjects =
            ["Disk \"C:\" full", "CPU high on", "Cannot reach", "Backup failed for", "Certificate expires on"];
        for i in 0..n {
            let modified = start + (span * (i as f64) / (n as f64)) as i64;
            let created = modified - self.rng.random_range(0..86_400_000);
            let rec_id = self.rec_id();
            let next = self.sequences.entry(def.id.clone()).or_insert(1);
            let public_id = next.to_string();
            *next += 1;
            let mut record = Rec {
                rec_id,
                public_id: public_id.clone(),
                values: HashMap::new(),
                times: HashMap::new(),
                parent: None,
            };
            let pick = |rng: &mut StdRng, list: &[&str]| list[rng.random_range(0..list.len())].to_string();
            let ci = pick(&mut self.rng, &cis);
            let subject = format!("{} {ci}", pick(&mut self.rng, &subjects));
            let status = def.states[self.rng.random_range(0..def.states.len())].clone();
            let who = pick(&mut self.rng, &people);
            record.set_text("Status", &status);
            record.set_text("Priority", &self.rng.random_range(1..=5).to_string());
            record.set_text("Urgency", &pick(&mut self.rng, &["High", "Medium", "Low"]));
            record.set_text("Impact", &pick(&mut self.rng, &["Widespread", "Department", "Individual"]));
            record.set_text("Category", &pick(&mut self.rng, &["Hardware", "Software", "Network", ""]));
            record.set_text(
                "Description",
                &format!("{subject}\r\nReported by {who}; line two with a tab\tand \"quotes\"."),
            );
            record.set_text("ConfigItemDisplayName", &ci);
            record.set_text("CreatedBy", &who);
            record.set_text("LastModBy", &who);
            record.set_time("CreatedDateTime", Some(created));
            record.set_time("LastModifiedDateTime", Some(modified));
            if status == "Closed" {
                record.set_time("ClosedDateTime", Some(modified));
                record.set_text("ClosedBy", &who);
            }
            match def.name.as_str() {
                "Incident" => {
                    record.set_text("IncidentID", &public_id);
                    record.set_text("ShortDescription", &subject);
                    record.set_text("CustomerDisplayName", &customers[i % customers.len()]);
                    record.set_text("CallSource", &pick(&mut self.rng, &["Phone", "Email", "Event", "Portal"]));
                    record.set_text("AssignedTo", &pick(&mut self.rng, &people));
                    record.set_text("AssignedTeam", &pick(&mut self.rng, &teams));
                    record.set_text("Stat_IncidentEscalated", if i % 7 == 0 { "True" } else { "False" });
                    if status == "Resolved" || status == "Closed" {
                        record.set_time("Stat_DateTimeResolved", Some(modified - 60_000));
                    }
                }
                _ => {
                    record.set_text("ChangeID", &public_id);
                    record.set_text("Title", &subject);
                    record.set_text("Type", &pick(&mut self.rng, &["Standard", "Normal", "Emergency"]));
                    record.set_text("RiskLevel", &pick(&mut self.rng, &["High", "Moderate", "Low"]));
                    record.set_text("RequestedBy", &who);
                    record.set_text("OwnedBy", &pick(&mut self.rng, &people));
                    record.set_time("ProposedStartDate", Some(created + 86_400_000));
                    record.set_time("ScheduledStartDate", Some(created + 2 * 86_400_000));
                    record.set_time("ScheduledEndDate", Some(created + 2 * 86_400_000 + 3_600_000));
                }
            }
            self.records.entry(def.id.clone()).or_default().push(record);
        }
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}
