//! A Dynamics 365 environment with Provance's tables, in a box: an axum server over TLS (the test CA) speaking
//! the part of Dataverse's Web API v9.2 that itsmc's Provance connector uses, with its own Entra tenant
//! ([`super::entra::EntraEmulator`]) issuing the bearer tokens it accepts. The production client runs unchanged
//! against it; only the environment URL (`https://127.0.0.1:PORT`) and the authority differ.
//!
//! # What it emulates, and from which public material
//!
//! Sources are Microsoft's Dataverse documentation as published in MicrosoftDocs/powerapps-docs
//! (`developer/data-platform/webapi/*`, `api-limits.md`) and the incident entity reference in
//! MicrosoftDocs/dynamics-365-customer-engagement (`ce/developer/entities/incident.md`).
//!
//! - **Authentication**: every request needs `Authorization: Bearer` with a token the Entra emulator issued for
//!   the environment (`aud` = the environment URL, from the client credentials scope `{url}/.default`; "Use OAuth
//!   authentication with Dataverse"). A missing, unknown, expired, revoked or wrong-audience token gets 401 with
//!   an empty body and `WWW-Authenticate: Bearer authorization_uri=…/oauth2/authorize, resource_id=…`
//!   (compose-http-requests-handle-errors: 401 for `ExpiredAuthTicket`, `InvalidAuthTicket`, …; the header as
//!   Dataverse sends it for authority discovery). A token whose app has no application user in the environment
//!   gets 403 "The user is not a member of the organization." (the message as quoted in public reports; the
//!   code is left empty, which the error documentation says is frequent).
//! - **Privileges**: an application user holds privileges (by default all the connector needs). A request
//!   without one gets 403 `0x80040220` "Principal user (Id=…, type=8, …), is missing prvReadIncident privilege
//!   (Id=…) on OTC=112 for entity 'incident'…" (the shape quoted in public issue reports; 403 and
//!   `PrincipalPrivilegeDenied` from the status code table).
//! - **Headers and errors**: JSON only; errors are `{"error":{"code","message"}}` (compose-http-requests:
//!   "Parse errors from the response"). 404 "{entity} With Id = {id} Does Not Exist" (the conditional operations
//!   page's example).
//! - **Create** `POST {set}`: 204 with `OData-EntityId`, or with `Prefer: return=representation` 201 and the
//!   record (`$select` applies) (create-entity-web-api; the `Prefer` table). Lookups are set only through
//!   `{navigation}@odata.bind: "/{set}({id})"` (`customerid_account`, `customerid_contact`,
//!   `objectid_incident`, `incidentid`). Values are typed as Dataverse types them: a choice must be one of its
//!   options (a string for it is refused), text no longer than its maximum (incident `title` 200, `description`
//!   2,000, `ticketnumber` 100; annotation `notetext` 100,000), unknown properties refused ("The property 'x'
//!   does not exist on type 'Microsoft.Dynamics.CRM.incident'…", the OData library's message). A case needs a
//!   customer (`customerid` is SystemRequired in the incident reference; the message is the emulator's). New
//!   cases are Active / In Progress with a `ticketnumber` `CAS-nnnnn-xxxxxx`.
//! - **Update** `PATCH {set}({id})` answers 204; `If-Match` with another `@odata.etag` gets 412 "The version of
//!   the existing record doesn't match the RowVersion property provided." and `If-Match: *` on a missing
//!   record 404, while a PATCH without `If-Match` to a missing id creates it (an upsert)
//!   (perform-conditional-operations-using-web-api). Setting a case's `statecode` to 1 is refused with the
//!   platform's "use the CloseIncidentRequest message instead"; a resolved or canceled case takes no other
//!   update until reactivated (the incident reference: "Resolved and canceled cases are read-only and can't be
//!   edited unless they are reactivated"; the message is the emulator's). Reactivating sets `statecode` 0 with a
//!   `statuscode` of that state. Every write moves `modifiedon` and the row version (`@odata.etag`
//!   `W/"n"`, one counter for the environment, as `versionnumber`).
//! - **CloseIncident** `POST CloseIncident {IncidentResolution, Status}` (the CloseIncident action reference:
//!   `IncidentResolution` an incidentresolution, `Status` an Int32): creates the incidentresolution (completed)
//!   bound to the case through `incidentid@odata.bind`, sets the case Resolved with that status reason, 204.
//!   `Status` must be a status reason of the Resolved state (5 Problem Solved, 1000 Information Provided, from
//!   the incident reference); closing a case that is not active is refused (400, the emulator's words).
//! - **Annotations** (notes) `POST annotations` with `subject`, `notetext` and `objectid_incident@odata.bind`
//!   (the `Incident_Annotation` relationship of the incident reference).
//! - **Queries** `GET {set}` and `GET {set}({id})`: `$select` (unknown columns refused with
//!   "Could not find a property named 'x' on type 'Microsoft.Dynamics.CRM.incident'." `0x80060888`), `$filter`
//!   with `eq ne gt ge lt le`, `and`, `or`, `not` and parentheses, literals as OData writes them ('text' with ''
//!   for a quote, numbers, `null`, `true`/`false`, unquoted GUIDs and date-times); text comparisons ignore case
//!   (filter-rows: "All filters using string values are case insensitive"); `$orderby` with `asc`/`desc`;
//!   `$top`, ignored together with `odata.maxpagesize` (page-results). Lookups read as `_{name}_value`.
//!   `Prefer: odata.include-annotations="OData.Community.Display.V1.FormattedValue"` (or `*`) adds formatted
//!   values: choice labels, Yes/No, the referenced record's primary name, dates as `11/25/2026 12:00 PM`.
//! - **Paging**: at most `odata.maxpagesize` records a page (5,000 without it, and never more), then
//!   `@odata.nextLink`: the request's URL with a `$skiptoken` paging cookie
//!   (`<cookie pagenumber="2" pagingcookie="…" istracking="False" />`, shaped as page-results shows it) that
//!   records the last record's order values, so the next page starts after it whatever changed meanwhile
//!   (cc-ordering-paging: "A paging cookie tells Dataverse the previous page"). The id is always the last order.
//! - **Order of records**: date-times are kept to the millisecond, as the database keeps them, and written to
//!   the second, as every Web API example shows them; ids order as SQL Server orders a uniqueidentifier (its
//!   last group first), not as text. Both are stated assumptions about the service, not documented facts: they
//!   make the emulator order the records of one second in a way a client must not take for (second, id) text
//!   order.
//! - **Metadata**: `GET EntityDefinitions?$filter=EntitySetName eq '…'` (LogicalName, EntitySetName,
//!   PrimaryIdAttribute, PrimaryNameAttribute, MetadataId) and a choice column's options at
//!   `EntityDefinitions(LogicalName='incident')/Attributes(LogicalName='…')/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$expand=OptionSet`
//!   (query-metadata-web-api); `GET WhoAmI` answers `{BusinessUnitId, UserId, OrganizationId}`.
//! - **Service protection limits**: 429 with `Retry-After` seconds and `0x80072322` "Number of requests
//!   exceeded the limit of 6000 over time window of 300 seconds." (api-limits.md), on demand.
//! - **Faults**: [`ProvanceEmulator::set_down`] answers 503 to everything, `fail_next` any status, latency.
//!
//! # What it leaves out
//!
//! Batches, `$expand`, `$apply`, `$count`, functions in `$filter` (`contains`, the Dataverse query functions),
//! alternate keys, upsert's `If-None-Match`, duplicate detection, plug-ins, business rules, SLAs, queues and
//! routing, the other case actions (merge, cancel), `Consistency` and impersonation headers, change tracking,
//! per-web-server limits (429 comes only when asked for), and time zones (everything is UTC). Provance's own
//! solution is not public: its change request table here is a stand-in with a publisher prefix of its own
//! (`contoso_changerequests`), which is why the connector takes the table's name from its settings.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value, json};

use super::entra::{self, EntraEmulator};
use super::identity::{TokenCheck, TokenRegistry};
use super::itsm::{EmulatedItem, EmulatedItsm};
use super::serve::{lock, random_uuid};
use super::tls::{TestCa, TlsServer};

/// The app registration itsmc signs in with, registered in the emulator's tenant with [`APP_SECRET`].
pub const APP_ID: &str = "3c9b2f7e-58a1-4d6e-9c04-7b1e2d3f4a5b";
pub const APP_SECRET: &str = "Qv48Q~dAtAv3rS3-cr3tN0tL0gg3d.Xy7zW2pL";
/// The account every case is for, seeded at start.
pub const ACCOUNT_ID: &str = "8f2d6c4a-1b3e-4f5a-9c7d-2e4b6a8c0d1f";
pub const ACCOUNT_NAME: &str = "Contoso IT (itsmc)";
/// The custom incident columns an organization adds for itsmc.
pub const CORRELATION_FIELD: &str = "new_itsmccorrelationkey";
pub const CI_FIELD: &str = "new_configurationitem";
/// The stand-in for Provance's change request table.
pub const CHANGE_SET: &str = "contoso_changerequests";
const API: &str = "/api/data/v9.2";
const FORMATTED: &str = "@OData.Community.Display.V1.FormattedValue";
const MAX_PAGE: usize = 5000;

// ---------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Kind {
    Text(usize),
    Choice(Vec<(i64, &'static str)>),
    /// `statecode`: value, label.
    State(Vec<(i64, &'static str)>),
    /// `statuscode`: value, label, state.
    Status(Vec<(i64, &'static str, i64)>),
    Bool,
    DateTime,
    /// A lookup to these entity sets; read as `_{name}_value`.
    Lookup(Vec<&'static str>),
    Id,
}

#[derive(Clone, Debug)]
struct Column {
    kind: Kind,
    /// Set by the platform only.
    read_only: bool,
}

#[derive(Clone, Debug)]
struct Record {
    id: String,
    values: Map<String, Value>,
    /// For each lookup set, the entity set it points into.
    targets: HashMap<String, String>,
    version: u64,
}

struct Table {
    logical: &'static str,
    set: &'static str,
    id: &'static str,
    name: &'static str,
    /// Object type code, for privilege messages.
    otc: u32,
    /// The privilege suffix: `prvReadIncident`.
    privilege: &'static str,
    columns: BTreeMap<String, Column>,
    /// Navigation property -> lookup column.
    navigation: Vec<(&'static str, &'static str, &'static str)>,
    records: Vec<Record>,
    index: HashMap<String, usize>,
}

impl Table {
    fn record(&self, id: &str) -> Option<&Record> {
        self.index.get(&id.to_ascii_lowercase()).map(|&i| &self.records[i])
    }

    fn column(&self, name: &str) -> Option<(&str, &Column)> {
        let plain = name.strip_prefix('_').and_then(|n| n.strip_suffix("_value"));
        match plain {
            Some(lookup) => self
                .columns
                .get_key_value(lookup)
                .filter(|(_, c)| matches!(c.kind, Kind::Lookup(_)))
                .map(|(n, c)| (n.as_str(), c)),
            None => self
                .columns
                .get_key_value(name)
                .filter(|(_, c)| !matches!(c.kind, Kind::Lookup(_)))
                .map(|(n, c)| (n.as_str(), c)),
        }
    }
}

fn column(kind: Kind) -> Column {
    Column { kind, read_only: false }
}

fn platform(kind: Kind) -> Column {
    Column { kind, read_only: true }
}

/// The columns every user-owned table has.
fn common(columns: &mut BTreeMap<String, Column>) {
    for (name, c) in [
        ("createdon", platform(Kind::DateTime)),
        ("modifiedon", platform(Kind::DateTime)),
        ("createdby", platform(Kind::Lookup(vec!["systemusers"]))),
        ("ownerid", column(Kind::Lookup(vec!["systemusers"]))),
    ] {
        columns.insert(name.into(), c);
    }
}

fn incidents() -> Table {
    let mut columns = BTreeMap::new();
    common(&mut columns);
    for (name, c) in [
        ("incidentid", column(Kind::Id)),
        ("ticketnumber", column(Kind::Text(100))),
        ("title", column(Kind::Text(200))),
        ("description", column(Kind::Text(2000))),
        ("prioritycode", column(Kind::Choice(vec![(1, "High"), (2, "Normal"), (3, "Low")]))),
        ("severitycode", column(Kind::Choice(vec![(1, "Default Value")]))),
        (
            "caseorigincode",
            column(Kind::Choice(vec![(1, "Phone"), (2, "Email"), (3, "Web"), (2483, "Facebook"), (3986, "Twitter")])),
        ),
        ("casetypecode", column(Kind::Choice(vec![(1, "Question"), (2, "Problem"), (3, "Request")]))),
        ("isescalated", column(Kind::Bool)),
        ("statecode", column(Kind::State(vec![(0, "Active"), (1, "Resolved"), (2, "Canceled")]))),
        (
            "statuscode",
            column(Kind::Status(vec![
                (1, "In Progress", 0),
                (2, "On Hold", 0),
                (3, "Waiting for Details", 0),
                (4, "Researching", 0),
                (5, "Problem Solved", 1),
                (1000, "Information Provided", 1),
                (6, "Cancelled", 2),
                (2000, "Merged", 2),
            ])),
        ),
        ("customerid", column(Kind::Lookup(vec!["accounts", "contacts"]))),
        (CORRELATION_FIELD, column(Kind::Text(100))),
        (CI_FIELD, column(Kind::Text(100))),
    ] {
        columns.insert(name.into(), c);
    }
    table(
        "incident",
        "incidents",
        "incidentid",
        "title",
        112,
        "Incident",
        columns,
        vec![
            ("customerid_account", "customerid", "accounts"),
            ("customerid_contact", "customerid", "contacts"),
            ("ownerid", "ownerid", "systemusers"),
        ],
    )
}

fn change_requests() -> Table {
    let mut columns = BTreeMap::new();
    common(&mut columns);
    for (name, c) in [
        ("contoso_changerequestid", column(Kind::Id)),
        ("contoso_name", column(Kind::Text(200))),
        ("contoso_number", column(Kind::Text(20))),
        ("contoso_risk", column(Kind::Choice(vec![(1, "High"), (2, "Moderate"), (3, "Low")]))),
        ("contoso_plannedstart", column(Kind::DateTime)),
        ("statecode", column(Kind::State(vec![(0, "Active"), (1, "Inactive")]))),
        (
            "statuscode",
            column(Kind::Status(vec![
                (1, "New", 0),
                (100000001, "Approved", 0),
                (100000002, "Implemented", 0),
                (2, "Closed", 1),
            ])),
        ),
    ] {
        columns.insert(name.into(), c);
    }
    table(
        "contoso_changerequest",
        CHANGE_SET,
        "contoso_changerequestid",
        "contoso_name",
        10412,
        "contoso_changerequest",
        columns,
        vec![("ownerid", "ownerid", "systemusers")],
    )
}

fn annotations() -> Table {
    let mut columns = BTreeMap::new();
    common(&mut columns);
    for (name, c) in [
        ("annotationid", column(Kind::Id)),
        ("subject", column(Kind::Text(500))),
        ("notetext", column(Kind::Text(100_000))),
        ("objectid", column(Kind::Lookup(vec!["incidents"]))),
        ("objecttypecode", platform(Kind::Text(64))),
    ] {
        columns.insert(name.into(), c);
    }
    table(
        "annotation",
        "annotations",
        "annotationid",
        "subject",
        5,
        "Note",
        columns,
        vec![("objectid_incident", "objectid", "incidents")],
    )
}

fn resolutions() -> Table {
    let mut columns = BTreeMap::new();
    common(&mut columns);
    for (name, c) in [
        ("activityid", column(Kind::Id)),
        ("subject", column(Kind::Text(200))),
        ("description", column(Kind::Text(2000))),
        ("incidentid", column(Kind::Lookup(vec!["incidents"]))),
        ("statecode", platform(Kind::State(vec![(0, "Open"), (1, "Completed"), (2, "Canceled")]))),
        ("statuscode", platform(Kind::Status(vec![(1, "Open", 0), (2, "Closed", 1), (3, "Canceled", 2)]))),
    ] {
        columns.insert(name.into(), c);
    }
    table(
        "incidentresolution",
        "incidentresolutions",
        "activityid",
        "subject",
        4206,
        "IncidentResolution",
        columns,
        vec![("incidentid", "incidentid", "incidents")],
    )
}

fn named(
    logical: &'static str,
    set: &'static str,
    id: &'static str,
    name: &'static str,
    otc: u32,
    privilege: &'static str,
) -> Table {
    let mut columns = BTreeMap::new();
    common(&mut columns);
    columns.insert(id.into(), column(Kind::Id));
    columns.insert(name.into(), column(Kind::Text(160)));
    table(logical, set, id, name, otc, privilege, columns, Vec::new())
}

#[allow(clippy::too_many_arguments)]
fn table(
    logical: &'static str,
    set: &'static str,
    id: &'static str,
    name: &'static str,
    otc: u32,
    privilege: &'static str,
    columns: BTreeMap<String, Column>,
    navigation: Vec<(&'static str, &'static str, &'static str)>,
) -> Table {
    Table { logical, set, id, name, otc, privilege, columns, navigation, records: Vec::new(), index: HashMap::new() }
}

// ---------------------------------------------------------------------------------------------
// The environment
// ---------------------------------------------------------------------------------------------

/// An application user: the app it stands for and the privileges its roles give.
#[derive(Clone, Debug)]
struct AppUser {
    app_id: String,
    user_id: String,
    privileges: Option<HashSet<String>>,
}

/// One request the emulator answered.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// The path under the Web API root, e.g. `incidents` or `CloseIncident`.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub prefer: Option<String>,
    pub if_match: Option<String>,
    pub status: u16,
    /// The app a valid token was for.
    pub app_id: Option<String>,
}

struct Org {
    url: String,
    tables: HashMap<&'static str, Table>,
    users: Vec<AppUser>,
    organization_id: String,
    business_unit_id: String,
    tokens: TokenRegistry,
    revoked: HashSet<String>,
    down: bool,
    latency: Duration,
    faults: VecDeque<(u16, Option<u64>)>,
    /// Requests answered 429 before the limit lifts, and the Retry-After given.
    throttled: Option<(u32, u64)>,
    /// Someone edits the record just before the next conditional write reaches it.
    conflict: bool,
    requests: Vec<Recorded>,
    version: u64,
    tickets: u64,
    /// The last time handed out, so writes in one millisecond still order.
    clock: i64,
    /// (entity set, id, column) answered as null though filters and orders see the value: a damaged row.
    garbled: HashSet<(String, String, String)>,
}

type Shared = Arc<Mutex<Org>>;

/// A body's raw values, and the entity set each lookup it binds points into.
type Checked = (Map<String, Value>, HashMap<String, String>);

/// A running environment with its tenant. Dropping it stops both.
pub struct ProvanceEmulator {
    org: Shared,
    server: TlsServer,
    entra: EntraEmulator,
    ca: TestCa,
}

impl ProvanceEmulator {
    /// A fresh environment on `127.0.0.1`, its own test CA and Entra tenant, the app [`APP_ID`] registered there
    /// with [`APP_SECRET`] and here as an application user with every privilege the connector needs, and the
    /// account [`ACCOUNT_ID`].
    pub fn start() -> ProvanceEmulator {
        let ca = TestCa::new();
        let tokens = TokenRegistry::default();
        let entra = EntraEmulator::start_tls(&ca, tokens.clone());
        entra.register_app(APP_ID, APP_SECRET);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the Dataverse emulator");
        let addr = listener.local_addr().expect("its address");
        let mut tables = HashMap::new();
        for table in [
            incidents(),
            change_requests(),
            annotations(),
            resolutions(),
            named("account", "accounts", "accountid", "name", 1, "Account"),
            named("contact", "contacts", "contactid", "fullname", 2, "Contact"),
            named("systemuser", "systemusers", "systemuserid", "fullname", 8, "User"),
        ] {
            tables.insert(table.set, table);
        }
        let org = Arc::new(Mutex::new(Org {
            url: format!("https://127.0.0.1:{}", addr.port()),
            tables,
            users: Vec::new(),
            organization_id: random_uuid(),
            business_unit_id: random_uuid(),
            tokens,
            revoked: HashSet::new(),
            down: false,
            latency: Duration::ZERO,
            faults: VecDeque::new(),
            throttled: None,
            conflict: false,
            requests: Vec::new(),
            version: 1_000_000,
            tickets: 1000,
            clock: 0,
            garbled: HashSet::new(),
        }));
        {
            let mut o = lock(&org);
            o.insert_plain("accounts", Some(ACCOUNT_ID), json!({ "name": ACCOUNT_NAME }));
            for person in PEOPLE {
                o.insert_plain("systemusers", None, json!({ "fullname": person }));
            }
        }
        let app = Router::new().fallback(handle).with_state(Arc::clone(&org));
        let server = super::tls::serve(listener, ca.server_config(&[]), app);
        let emulator = ProvanceEmulator { org, server, entra, ca };
        emulator.add_application_user(APP_ID, "itsmc (application user)");
        emulator
    }

    /// The environment URL, `https://127.0.0.1:PORT`, as `ITSMC_URL` takes it.
    pub fn url(&self) -> String {
        lock(&self.org).url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub fn entra(&self) -> &EntraEmulator {
        &self.entra
    }

    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// The registry Entra issues into, shared with any other resource server of a test (Logs Ingestion).
    pub fn tokens(&self) -> TokenRegistry {
        self.entra.tokens()
    }

    /// The settings of one connection to this environment, as environment variables.
    pub fn connection_settings(&self) -> Vec<(String, String)> {
        [
            ("ITSMC_PRODUCT", "provance".to_string()),
            ("ITSMC_URL", self.url()),
            ("ITSMC_CLIENT_ID", APP_ID.into()),
            ("ITSMC_CLIENT_SECRET", APP_SECRET.into()),
            ("ITSMC_PROVANCE_TENANT_ID", entra::TENANT_ID.into()),
            ("ITSMC_PROVANCE_AUTHORITY", self.entra.authority_host()),
            ("ITSMC_PROVANCE_CUSTOMER", format!("accounts({ACCOUNT_ID})")),
            ("ITSMC_PROVANCE_CORRELATION_FIELD", CORRELATION_FIELD.into()),
            ("ITSMC_PROVANCE_CI_FIELD", CI_FIELD.into()),
            ("ITSMC_PROVANCE_CHANGE_ENTITY_SET", CHANGE_SET.into()),
            ("ITSMC_CA_FILE", self.ca.ca_file().to_string_lossy().into_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Creates an application user for the app `app_id` (a systemuser named `name`) with every privilege.
    pub fn add_application_user(&self, app_id: &str, name: &str) {
        let mut org = lock(&self.org);
        let user_id = org.insert_plain("systemusers", None, json!({ "fullname": name }));
        org.users.retain(|u| !u.app_id.eq_ignore_ascii_case(app_id));
        org.users.push(AppUser { app_id: app_id.to_ascii_lowercase(), user_id, privileges: None });
    }

    /// Deletes the app's application user: its tokens are refused with "not a member of the organization".
    pub fn remove_application_user(&self, app_id: &str) {
        lock(&self.org).users.retain(|u| !u.app_id.eq_ignore_ascii_case(app_id));
    }

    /// Gives the app's application user only these privileges (`prvReadIncident`, ...); `None`: all of them.
    pub fn set_privileges(&self, app_id: &str, privileges: Option<&[&str]>) {
        let set = privileges.map(|p| p.iter().map(|s| s.to_string()).collect());
        for user in lock(&self.org).users.iter_mut().filter(|u| u.app_id.eq_ignore_ascii_case(app_id)) {
            user.privileges = set.clone();
        }
    }

    /// Every token issued so far is refused from now on (as if expired or revoked); new ones are taken.
    pub fn revoke_tokens(&self) {
        let issued = self.tokens().all();
        lock(&self.org).revoked.extend(issued);
    }

    /// Answer every request with 503 until called with `false`.
    pub fn set_down(&self, down: bool) {
        lock(&self.org).down = down;
    }

    pub fn set_latency(&self, latency: Duration) {
        lock(&self.org).latency = latency;
    }

    /// The next `times` requests get `status` (with `Retry-After` when given).
    pub fn fail_next(&self, times: u32, status: u16, retry_after: Option<u64>) {
        let mut org = lock(&self.org);
        for _ in 0..times {
            org.faults.push_back((status, retry_after));
        }
    }

    /// Service protection: the next `requests` authenticated requests get 429 with `Retry-After`.
    pub fn throttle(&self, requests: u32, retry_after: u64) {
        lock(&self.org).throttled = Some((requests, retry_after));
    }

    /// A person saves the record a moment before the next `PATCH` with an `If-Match` etag arrives: that PATCH
    /// meets a newer version (412).
    pub fn conflict_next_write(&self) {
        lock(&self.org).conflict = true;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.org).requests.clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.org).requests.clear();
    }

    /// The records of an entity set, in creation order, as JSON (raw values, dates as milliseconds).
    pub fn records(&self, set: &str) -> Vec<Map<String, Value>> {
        let org = lock(&self.org);
        org.tables.get(set).map(|t| t.records.iter().map(|r| r.values.clone()).collect()).unwrap_or_default()
    }

    pub fn record(&self, set: &str, id: &str) -> Option<Map<String, Value>> {
        lock(&self.org).tables.get(set)?.record(id).map(|r| r.values.clone())
    }

    pub fn count(&self, set: &str) -> usize {
        lock(&self.org).tables.get(set).map_or(0, |t| t.records.len())
    }

    /// The notes of a case, oldest first: (subject, text).
    pub fn notes(&self, incident: &str) -> Vec<(String, String)> {
        let org = lock(&self.org);
        let id = incident.to_ascii_lowercase();
        org.tables["annotations"]
            .records
            .iter()
            .filter(|r| r.values.get("_objectid_value").and_then(Value::as_str) == Some(id.as_str()))
            .map(|r| (text(&r.values, "subject"), text(&r.values, "notetext")))
            .collect()
    }

    /// The resolutions of a case, oldest first: (subject, description).
    pub fn resolutions(&self, incident: &str) -> Vec<(String, String)> {
        let org = lock(&self.org);
        let id = incident.to_ascii_lowercase();
        org.tables["incidentresolutions"]
            .records
            .iter()
            .filter(|r| r.values.get("_incidentid_value").and_then(Value::as_str) == Some(id.as_str()))
            .map(|r| (text(&r.values, "subject"), text(&r.values, "description")))
            .collect()
    }

    /// A person resolves the case (Problem Solved) in the app.
    pub fn resolve(&self, id: &str) {
        let mut org = lock(&self.org);
        let user = org.tables["systemusers"].records[0].id.clone();
        let resolution =
            json!({ "subject": "Fixed by the service desk", "incidentid@odata.bind": format!("/incidents({id})") });
        org.close_incident(&user, &resolution, 5).expect("the case can be resolved");
    }

    /// A person changes a record's columns (raw values; bumps `modifiedon`).
    pub fn update(&self, set: &str, id: &str, values: Value) {
        let mut org = lock(&self.org);
        let now = org.now();
        let version = org.next_version();
        let table = org.tables.get_mut(set).expect("a table");
        let i = table.index[&id.to_ascii_lowercase()];
        let record = &mut table.records[i];
        for (k, v) in values.as_object().cloned().unwrap_or_default() {
            record.values.insert(k, v);
        }
        record.values.insert("modifiedon".into(), json!(now));
        record.version = version;
    }

    /// Answers a record's column as null from now on, while filters and orders still see its value: a damaged
    /// row, which a client cannot place (the id or `modifiedon`).
    pub fn garble(&self, set: &str, id: &str, column: &str) {
        lock(&self.org).garbled.insert((set.to_string(), id.to_ascii_lowercase(), column.to_string()));
    }

    /// Deletes a record, as a person might delete a case.
    pub fn delete(&self, set: &str, id: &str) {
        lock(&self.org).delete(set, id);
    }

    /// `n` cases modified evenly between `from` and `to` (milliseconds apart within a second when they are
    /// close), with varied columns, some resolved.
    pub fn seed_incidents(&self, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) {
        let mut org = lock(&self.org);
        let owners: Vec<String> =
            org.tables["systemusers"].records.iter().take(PEOPLE.len()).map(|r| r.id.clone()).collect();
        for (i, at) in spread(n, from, to).into_iter().enumerate() {
            let resolved = i % 4 == 3;
            let values = json!({
                "title": format!("{} #{i}", TITLES[i % TITLES.len()]),
                "description": if i % 5 == 0 { Value::Null } else { json!(format!("Seeded case {i}: \"quoted\", ünïcode\nsecond line")) },
                "prioritycode": (i % 3 + 1) as i64,
                "severitycode": 1,
                "caseorigincode": ORIGINS[i % 4],
                "casetypecode": if i % 7 == 0 { Value::Null } else { json!((i % 3 + 1) as i64) },
                "isescalated": i % 11 == 0,
                "statecode": if resolved { 1 } else { 0 },
                "statuscode": if resolved { 5 } else { (i % 4 + 1) as i64 },
                "_customerid_value": ACCOUNT_ID,
                "_ownerid_value": owners[i % owners.len()],
                "_createdby_value": owners[(i + 1) % owners.len()],
                "createdon": at - 3_600_000,
                "modifiedon": at,
            });
            let id = org.seed("incidents", values);
            let ticket = org.ticket();
            let table = org.tables.get_mut("incidents").expect("incidents");
            let at = table.index[&id];
            let record = &mut table.records[at];
            record.values.insert("ticketnumber".into(), json!(ticket));
            record.targets.insert("customerid".into(), "accounts".into());
            record.targets.insert("ownerid".into(), "systemusers".into());
            record.targets.insert("createdby".into(), "systemusers".into());
        }
    }

    /// `n` change requests modified evenly between `from` and `to`.
    pub fn seed_change_requests(&self, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) {
        let mut org = lock(&self.org);
        let owners: Vec<String> =
            org.tables["systemusers"].records.iter().take(PEOPLE.len()).map(|r| r.id.clone()).collect();
        let start = org.tables[CHANGE_SET].records.len();
        for (i, at) in spread(n, from, to).into_iter().enumerate() {
            let closed = i % 5 == 4;
            let values = json!({
                "contoso_name": format!("{} ({})", CHANGES[i % CHANGES.len()], i),
                "contoso_number": format!("CHG{:07}", start + i + 1),
                "contoso_risk": if i % 6 == 0 { Value::Null } else { json!((i % 3 + 1) as i64) },
                "contoso_plannedstart": if i % 2 == 0 { json!(at + 86_400_000) } else { Value::Null },
                "statecode": if closed { 1 } else { 0 },
                "statuscode": if closed { 2 } else { CHANGE_STATUSES[i % 4] },
                "_ownerid_value": owners[i % owners.len()],
                "_createdby_value": owners[(i + 2) % owners.len()],
                "createdon": at - 7_200_000,
                "modifiedon": at,
            });
            let id = org.seed(CHANGE_SET, values);
            let table = org.tables.get_mut(CHANGE_SET).expect("change requests");
            let at = table.index[&id];
            for lookup in ["ownerid", "createdby"] {
                table.records[at].targets.insert(lookup.into(), "systemusers".into());
            }
        }
    }

    /// A record as the Web API shows it with formatted values, for comparing with a synced row.
    pub fn shown(&self, set: &str, id: &str) -> Option<Map<String, Value>> {
        let org = lock(&self.org);
        let table = org.tables.get(set)?;
        let record = table.record(id)?;
        Some(org.represent(table, record, None, true))
    }
}

const ORIGINS: [i64; 4] = [1, 2, 3, 2483];
const CHANGE_STATUSES: [i64; 4] = [1, 100000001, 100000002, 1];
const PEOPLE: [&str; 4] = ["Beth Anglin", "Ravi Kumar", "Zoë Ødegård", "David \"Dave\" Loo"];
const TITLES: [&str; 4] =
    ["Disk \"C:\" full on web01", "VPN drops every hour", "Printer jam, 3rd floor", "Mailbox quota reached"];
const CHANGES: [&str; 3] = ["Patch SQL cluster", "Rotate TLS certificates", "Upgrade core switch"];

/// `n` instants in milliseconds, evenly from `from` to `to`.
fn spread(n: usize, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<i64> {
    let (a, b) = (from.timestamp_millis(), to.timestamp_millis());
    (0..n).map(|i| if n <= 1 { a } else { a + (b - a) * i as i64 / (n as i64 - 1) }).collect()
}

/// A uniqueidentifier's sort key as SQL Server orders it: the last group first, then the fourth, third,
/// second and first.
fn guid_key(id: &str) -> String {
    let groups: Vec<&str> = id.split('-').collect();
    if groups.len() != 5 {
        return id.to_string();
    }
    format!("{}{}{}{}{}", groups[4], groups[3], groups[2], groups[1], groups[0])
}

fn text(values: &Map<String, Value>, name: &str) -> String {
    values.get(name).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn iso(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

fn formatted_time(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().map(|t| t.format("%-m/%-d/%Y %-I:%M %p").to_string()).unwrap_or_default()
}

/// An error in Dataverse's envelope.
#[derive(Debug)]
struct Failure {
    status: u16,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

fn fail(status: u16, code: &'static str, message: impl Into<String>) -> Failure {
    Failure { status, code, message: message.into(), retry_after: None }
}

impl Org {
    fn now(&mut self) -> i64 {
        let now = Utc::now().timestamp_millis().max(self.clock + 1);
        self.clock = now;
        now
    }

    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    fn ticket(&mut self) -> String {
        self.tickets += 1;
        const LETTERS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ0123456789";
        let suffix: String = (0..6).map(|_| LETTERS[rand::random_range(0..LETTERS.len())] as char).collect();
        format!("CAS-{:05}-{suffix}", self.tickets)
    }

    /// A record set up by the test (no validation); returns its id.
    fn insert_plain(&mut self, set: &str, id: Option<&str>, values: Value) -> String {
        let now = self.now();
        let mut values = values.as_object().cloned().unwrap_or_default();
        values.insert("createdon".into(), json!(now));
        values.insert("modifiedon".into(), json!(now));
        self.store(set, id.map(str::to_string), values)
    }

    fn seed(&mut self, set: &str, values: Value) -> String {
        self.store(set, None, values.as_object().cloned().unwrap_or_default())
    }

    fn store(&mut self, set: &str, id: Option<String>, mut values: Map<String, Value>) -> String {
        let version = self.next_version();
        let table = self.tables.get_mut(set).expect("a known table");
        let id = id.unwrap_or_else(random_uuid).to_ascii_lowercase();
        values.insert(table.id.into(), json!(id));
        table.index.insert(id.clone(), table.records.len());
        table.records.push(Record { id: id.clone(), values, targets: HashMap::new(), version });
        id
    }

    fn delete(&mut self, set: &str, id: &str) -> bool {
        let Some(table) = self.tables.get_mut(set) else { return false };
        let Some(at) = table.index.remove(&id.to_ascii_lowercase()) else { return false };
        table.records.remove(at);
        for (i, record) in table.records.iter().enumerate().skip(at) {
            table.index.insert(record.id.clone(), i);
        }
        true
    }

    fn primary_name(&self, set: &str, id: &str) -> Option<String> {
        let table = self.tables.get(set)?;
        table.record(id).map(|r| text(&r.values, table.name))
    }

    /// A record as the Web API returns it: the selected columns (all without `$select`), the id and the etag,
    /// with formatted values when asked.
    fn represent(
        &self,
        table: &Table,
        record: &Record,
        select: Option<&[String]>,
        formatted: bool,
    ) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("@odata.etag".into(), json!(format!("W/\"{}\"", record.version)));
        let names: Vec<String> = match select {
            Some(names) => names.to_vec(),
            None => table
                .columns
                .iter()
                .map(|(n, c)| if matches!(c.kind, Kind::Lookup(_)) { format!("_{n}_value") } else { n.clone() })
                .collect(),
        };
        for name in names.iter().chain(std::iter::once(&table.id.to_string())) {
            let Some((plain, column)) = table.column(name) else { continue };
            let key =
                if matches!(column.kind, Kind::Lookup(_)) { format!("_{plain}_value") } else { plain.to_string() };
            let raw = record.values.get(&key).cloned().unwrap_or(Value::Null);
            let (value, shown) = match (&column.kind, &raw) {
                (_, Value::Null) => (Value::Null, None),
                (Kind::DateTime, Value::Number(ms)) => {
                    let ms = ms.as_i64().unwrap_or_default();
                    (json!(iso(ms)), Some(formatted_time(ms)))
                }
                (Kind::Choice(options) | Kind::State(options), Value::Number(n)) => {
                    let label = options.iter().find(|(v, _)| Some(*v) == n.as_i64()).map(|(_, l)| l.to_string());
                    (raw.clone(), label)
                }
                (Kind::Status(options), Value::Number(n)) => {
                    let label = options.iter().find(|(v, _, _)| Some(*v) == n.as_i64()).map(|(_, l, _)| l.to_string());
                    (raw.clone(), label)
                }
                (Kind::Bool, Value::Bool(b)) => (raw.clone(), Some(if *b { "Yes" } else { "No" }.to_string())),
                (Kind::Lookup(_), Value::String(id)) => {
                    let target = record.targets.get(plain).cloned().unwrap_or_default();
                    (raw.clone(), self.primary_name(&target, id))
                }
                _ => (raw.clone(), None),
            };
            if self.garbled.contains(&(table.set.to_string(), record.id.clone(), key.clone())) {
                out.insert(key, Value::Null);
                continue;
            }
            out.insert(key.clone(), value);
            if formatted && let Some(shown) = shown {
                out.insert(format!("{key}{FORMATTED}"), json!(shown));
            }
        }
        out
    }

    /// Checks and converts a create or update body into raw values and lookup targets.
    fn values(&self, table: &Table, body: &Map<String, Value>) -> Result<Checked, Failure> {
        let mut values = Map::new();
        let mut targets = HashMap::new();
        for (key, value) in body {
            if key.starts_with('@') {
                continue;
            }
            if let Some(navigation) = key.strip_suffix("@odata.bind") {
                let Some(&(_, lookup, set)) = table.navigation.iter().find(|(n, _, _)| *n == navigation) else {
                    return Err(fail(
                        400,
                        "0x80060888",
                        format!(
                            "An undeclared property '{navigation}' which only has property annotations in the payload but \
                             no property value was found in the payload."
                        ),
                    ));
                };
                let reference = value.as_str().unwrap_or_default().trim_start_matches('/');
                let id = reference
                    .strip_prefix(set)
                    .and_then(|r| r.strip_prefix('('))
                    .and_then(|r| r.strip_suffix(')'))
                    .filter(|id| uuid_shaped(id))
                    .ok_or_else(|| {
                        fail(400, "0x80060888", format!("The reference '{reference}' is not a {set} record URL."))
                    })?;
                if self.tables[set].record(id).is_none() {
                    let logical = self.tables[set].logical;
                    return Err(fail(404, "", format!("{logical} With Id = {id} Does Not Exist")));
                }
                values.insert(format!("_{lookup}_value"), json!(id.to_ascii_lowercase()));
                targets.insert(lookup.to_string(), set.to_string());
                continue;
            }
            let Some(column) = table.columns.get(key).filter(|c| !matches!(c.kind, Kind::Lookup(_)) && !c.read_only)
            else {
                return Err(fail(
                    400,
                    "0x80060888",
                    format!(
                        "The property '{key}' does not exist on type 'Microsoft.Dynamics.CRM.{}'. Make sure to only use \
                         property names that are defined by the type.",
                        table.logical
                    ),
                ));
            };
            let checked = match (&column.kind, value) {
                (_, Value::Null) => Value::Null,
                (Kind::Text(max), Value::String(s)) => {
                    if s.chars().count() > *max {
                        return Err(fail(
                            400,
                            "0x80044331",
                            format!(
                                "A validation error occurred. The length of the '{key}' attribute of the '{}' entity \
                                 exceeded the maximum allowed length of '{max}'.",
                                table.logical
                            ),
                        ));
                    }
                    value.clone()
                }
                (Kind::Choice(options) | Kind::State(options), Value::Number(n)) => {
                    if !options.iter().any(|(v, _)| Some(*v) == n.as_i64()) {
                        return Err(out_of_range(key, table.logical, n, options.iter().map(|(v, _)| *v)));
                    }
                    value.clone()
                }
                (Kind::Status(options), Value::Number(n)) => {
                    if !options.iter().any(|(v, _, _)| Some(*v) == n.as_i64()) {
                        return Err(out_of_range(key, table.logical, n, options.iter().map(|(v, _, _)| *v)));
                    }
                    value.clone()
                }
                (Kind::Bool, Value::Bool(_)) | (Kind::Id, Value::String(_)) => value.clone(),
                (Kind::DateTime, Value::String(s)) => {
                    let time = DateTime::parse_from_rfc3339(s).map_err(|_| {
                        fail(
                            400,
                            "0x80060888",
                            format!("Cannot convert the literal '{s}' to the expected type 'Edm.DateTimeOffset'."),
                        )
                    })?;
                    json!(time.timestamp_millis())
                }
                (kind, other) => {
                    let expected = match kind {
                        Kind::Text(_) | Kind::Id => "Edm.String",
                        Kind::Bool => "Edm.Boolean",
                        Kind::DateTime => "Edm.DateTimeOffset",
                        _ => "Edm.Int32",
                    };
                    let shown = other.as_str().map(str::to_string).unwrap_or_else(|| other.to_string());
                    return Err(fail(
                        400,
                        "0x80060888",
                        format!("Cannot convert the literal '{shown}' to the expected type '{expected}'."),
                    ));
                }
            };
            values.insert(key.clone(), checked);
        }
        Ok((values, targets))
    }

    fn create(&mut self, set: &str, user: &str, body: &Map<String, Value>) -> Result<String, Failure> {
        let table = &self.tables[set];
        let (mut values, mut targets) = self.values(table, body)?;
        let id = match values.remove(table.id) {
            Some(Value::String(id)) if uuid_shaped(&id) => id.to_ascii_lowercase(),
            _ => random_uuid(),
        };
        if table.record(&id).is_some() {
            return Err(fail(412, "", "A record with matching key values already exists."));
        }
        if set == "incidents" {
            if !values.contains_key("_customerid_value") {
                return Err(fail(400, "", "A case needs a customer: bind customerid_account or customerid_contact."));
            }
            if values.contains_key("statecode") {
                return Err(fail(400, "", "statecode cannot be set when a case is created."));
            }
            values.entry("prioritycode").or_insert(json!(2));
            values.entry("severitycode").or_insert(json!(1));
            values.entry("isescalated").or_insert(json!(false));
            values.insert("statecode".into(), json!(0));
            values.insert("statuscode".into(), json!(1));
            if !values.get("ticketnumber").is_some_and(Value::is_string) {
                let ticket = self.ticket();
                values.insert("ticketnumber".into(), json!(ticket));
            }
        }
        if set == "annotations" {
            if !values.contains_key("_objectid_value") {
                return Err(fail(400, "", "A note needs the record it is about (objectid)."));
            }
            values.insert("objecttypecode".into(), json!("incident"));
        }
        let now = self.now();
        values.insert("createdon".into(), json!(now));
        values.insert("modifiedon".into(), json!(now));
        values.insert("_createdby_value".into(), json!(user));
        values.entry("_ownerid_value").or_insert(json!(user));
        targets.insert("createdby".into(), "systemusers".into());
        targets.entry("ownerid".into()).or_insert("systemusers".into());
        let id = self.store(set, Some(id), values);
        let table = self.tables.get_mut(set).expect("the table");
        let at = table.index[&id];
        table.records[at].targets = targets;
        Ok(id)
    }

    fn update(
        &mut self,
        set: &str,
        id: &str,
        if_match: Option<&str>,
        body: &Map<String, Value>,
        user: &str,
    ) -> Result<(), Failure> {
        if self.conflict && if_match.is_some_and(|etag| etag != "*") {
            self.conflict = false;
            let (now, version) = (self.now(), self.next_version());
            let table = self.tables.get_mut(set).expect("the table");
            if let Some(&at) = table.index.get(&id.to_ascii_lowercase()) {
                table.records[at].values.insert("modifiedon".into(), json!(now));
                table.records[at].version = version;
            }
        }
        let table = &self.tables[set];
        let Some(record) = table.record(id) else {
            return match if_match {
                Some(_) => Err(fail(404, "", format!("{} With Id = {id} Does Not Exist", table.logical))),
                // Without If-Match a PATCH is an upsert.
                None => {
                    let mut body = body.clone();
                    body.insert(table.id.into(), json!(id));
                    self.create(set, user, &body).map(drop)
                }
            };
        };
        if let Some(etag) = if_match
            && etag != "*"
            && etag != format!("W/\"{}\"", record.version)
        {
            return Err(fail(
                412,
                "",
                "The version of the existing record doesn't match the RowVersion property provided.",
            ));
        }
        let (values, targets) = self.values(table, body)?;
        if set == "incidents" {
            let active = record.values.get("statecode").and_then(Value::as_i64) == Some(0);
            let state = values.get("statecode").and_then(Value::as_i64);
            if state == Some(1) {
                return Err(fail(
                    400,
                    "0x80040203",
                    "This message can not be used to set the state of incident to Resolved. In order to set state of \
                     incident to Resolved, use the CloseIncidentRequest message instead.",
                ));
            }
            if !active && state != Some(0) {
                return Err(fail(400, "", "The case is resolved or canceled, and read-only until it is reactivated."));
            }
            if let Some(state) = state {
                let status = values.get("statuscode").and_then(Value::as_i64).unwrap_or(if state == 0 { 1 } else { 6 });
                if !status_of(table, status, state) {
                    return Err(fail(
                        400,
                        "",
                        format!("{status} is not a valid status code for state code {state} on incident with Id {id}."),
                    ));
                }
            }
        }
        let now = self.now();
        let version = self.next_version();
        let table = self.tables.get_mut(set).expect("the table");
        let at = table.index[&id.to_ascii_lowercase()];
        let record = &mut table.records[at];
        for (k, v) in values {
            record.values.insert(k, v);
        }
        if record.values.get("statecode").and_then(Value::as_i64) == Some(0)
            && !body.contains_key("statuscode")
            && body.contains_key("statecode")
        {
            record.values.insert("statuscode".into(), json!(1));
        }
        record.targets.extend(targets);
        record.values.insert("modifiedon".into(), json!(now));
        record.version = version;
        Ok(())
    }

    fn close_incident(&mut self, user: &str, resolution: &Value, status: i64) -> Result<(), Failure> {
        let reference = resolution.get("incidentid@odata.bind").and_then(Value::as_str).unwrap_or_default();
        let id = reference
            .trim_start_matches('/')
            .strip_prefix("incidents(")
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| fail(400, "", "IncidentResolution needs incidentid@odata.bind to the case it resolves."))?
            .to_ascii_lowercase();
        let table = &self.tables["incidents"];
        let Some(record) = table.record(&id) else {
            return Err(fail(404, "", format!("incident With Id = {id} Does Not Exist")));
        };
        if record.values.get("statecode").and_then(Value::as_i64) != Some(0) {
            return Err(fail(400, "", format!("The case {id} is not active: only an active case can be resolved.")));
        }
        if !status_of(table, status, 1) {
            return Err(fail(
                400,
                "",
                format!(
                    "{status} is not a valid status code for state code IncidentState.Resolved on incident with Id {id}."
                ),
            ));
        }
        let mut body = resolution.as_object().cloned().unwrap_or_default();
        body.retain(|k, _| !k.starts_with('@'));
        let resolution_id = self.create("incidentresolutions", user, &body)?;
        let now = self.now();
        let version = self.next_version();
        let resolutions = self.tables.get_mut("incidentresolutions").expect("resolutions");
        let at = resolutions.index[&resolution_id];
        resolutions.records[at].values.insert("statecode".into(), json!(1));
        resolutions.records[at].values.insert("statuscode".into(), json!(2));
        let incidents = self.tables.get_mut("incidents").expect("incidents");
        let at = incidents.index[&id];
        let record = &mut incidents.records[at];
        record.values.insert("statecode".into(), json!(1));
        record.values.insert("statuscode".into(), json!(status));
        record.values.insert("modifiedon".into(), json!(now));
        record.version = version;
        Ok(())
    }
}

fn status_of(table: &Table, status: i64, state: i64) -> bool {
    matches!(&table.columns["statuscode"].kind, Kind::Status(options) if options.iter().any(|(v, _, s)| *v == status && *s == state))
}

fn out_of_range(key: &str, logical: &str, n: &serde_json::Number, accepted: impl Iterator<Item = i64>) -> Failure {
    let accepted: Vec<String> = accepted.map(|v| v.to_string()).collect();
    fail(
        400,
        "0x8004431a",
        format!(
            "A validation error occurred. The value {n} of '{key}' on record of type '{logical}' is outside the valid \
             range. Accepted Values: {}",
            accepted.join(",")
        ),
    )
}

fn uuid_shaped(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

// ---------------------------------------------------------------------------------------------
// $filter and $orderby
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Literal {
    Null,
    Bool(bool),
    Int(i64),
    Text(String),
    Time(i64),
    Guid(String),
}

#[derive(Debug)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Compare(String, String, Literal),
}

fn tokens(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' || c == ')' {
            out.push(c.to_string());
            i += 1;
        } else if c == '\'' {
            let mut s = String::from("'");
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("There is an unterminated literal at position {i} in '{text}'.")),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&other) => {
                        s.push(other);
                        i += 1;
                    }
                }
            }
            out.push(s);
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '(' && chars[i] != ')' {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        }
    }
    Ok(out)
}

fn literal(token: &str) -> Result<Literal, String> {
    if let Some(text) = token.strip_prefix('\'') {
        return Ok(Literal::Text(text.to_string()));
    }
    match token {
        "null" => return Ok(Literal::Null),
        "true" => return Ok(Literal::Bool(true)),
        "false" => return Ok(Literal::Bool(false)),
        _ => {}
    }
    if uuid_shaped(token) {
        return Ok(Literal::Guid(token.to_ascii_lowercase()));
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(token) {
        return Ok(Literal::Time(time.timestamp_millis()));
    }
    token.parse::<i64>().map(Literal::Int).map_err(|_| format!("Syntax error: '{token}' is not a literal."))
}

struct Parser {
    tokens: Vec<String>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    fn next(&mut self) -> Result<String, String> {
        let token = self.tokens.get(self.at).cloned().ok_or("Syntax error at the end of the expression.")?;
        self.at += 1;
        Ok(token)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek() == Some("or") {
            self.at += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while self.peek() == Some("and") {
            self.at += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.peek() == Some("not") {
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some("(") {
            self.at += 1;
            let inner = self.or()?;
            if self.next()? != ")" {
                return Err("Syntax error: ')' expected.".into());
            }
            return Ok(inner);
        }
        let field = self.next()?;
        let op = self.next()?;
        if !["eq", "ne", "gt", "ge", "lt", "le"].contains(&op.as_str()) {
            return Err(format!("Syntax error: '{op}' is not a comparison operator."));
        }
        let value = literal(&self.next()?)?;
        Ok(Expr::Compare(field, op, value))
    }
}

fn parse_filter(text: &str, table: &Table) -> Result<Expr, Failure> {
    let syntax = |message: String| fail(400, "0x80060888", message);
    let mut parser = Parser { tokens: tokens(text).map_err(syntax)?, at: 0 };
    let expr = parser.or().map_err(syntax)?;
    if parser.at != parser.tokens.len() {
        return Err(syntax(format!("Syntax error at position {} in '{text}'.", parser.at)));
    }
    check_fields(&expr, table)?;
    Ok(expr)
}

fn check_fields(expr: &Expr, table: &Table) -> Result<(), Failure> {
    match expr {
        Expr::And(a, b) | Expr::Or(a, b) => {
            check_fields(a, table)?;
            check_fields(b, table)
        }
        Expr::Not(a) => check_fields(a, table),
        Expr::Compare(field, _, _) => table.column(field).map(drop).ok_or_else(|| not_a_property(field, table)),
    }
}

fn not_a_property(field: &str, table: &Table) -> Failure {
    fail(
        400,
        "0x80060888",
        format!("Could not find a property named '{field}' on type 'Microsoft.Dynamics.CRM.{}'.", table.logical),
    )
}

/// A value in the order Dataverse compares it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Sort {
    Null,
    Int(i64),
    Text(String),
}

fn sort_value(table: &Table, record: &Record, field: &str) -> Sort {
    let Some((plain, column)) = table.column(field) else { return Sort::Null };
    let key = if matches!(column.kind, Kind::Lookup(_)) { format!("_{plain}_value") } else { plain.to_string() };
    match (&column.kind, record.values.get(&key)) {
        (_, None | Some(Value::Null)) => Sort::Null,
        (Kind::Id | Kind::Lookup(_), Some(Value::String(id))) => Sort::Text(guid_key(id)),
        (_, Some(Value::String(s))) => Sort::Text(s.to_lowercase()),
        (_, Some(Value::Bool(b))) => Sort::Int(i64::from(*b)),
        (_, Some(Value::Number(n))) => Sort::Int(n.as_i64().unwrap_or_default()),
        _ => Sort::Null,
    }
}

fn literal_sort(table: &Table, field: &str, literal: &Literal) -> Sort {
    let is_id = table.column(field).is_some_and(|(_, c)| matches!(c.kind, Kind::Id | Kind::Lookup(_)));
    match literal {
        Literal::Null => Sort::Null,
        Literal::Bool(b) => Sort::Int(i64::from(*b)),
        Literal::Int(n) | Literal::Time(n) => Sort::Int(*n),
        Literal::Guid(g) if is_id => Sort::Text(guid_key(g)),
        Literal::Guid(g) => Sort::Text(g.clone()),
        Literal::Text(t) => Sort::Text(if is_id { guid_key(&t.to_ascii_lowercase()) } else { t.to_lowercase() }),
    }
}

fn matches(expr: &Expr, table: &Table, record: &Record) -> bool {
    match expr {
        Expr::And(a, b) => matches(a, table, record) && matches(b, table, record),
        Expr::Or(a, b) => matches(a, table, record) || matches(b, table, record),
        Expr::Not(a) => !matches(a, table, record),
        Expr::Compare(field, op, literal) => {
            let (left, right) = (sort_value(table, record, field), literal_sort(table, field, literal));
            if left == Sort::Null || right == Sort::Null {
                return match op.as_str() {
                    "eq" => left == right,
                    "ne" => left != right,
                    _ => false,
                };
            }
            match op.as_str() {
                "eq" => left == right,
                "ne" => left != right,
                "gt" => left > right,
                "ge" => left >= right,
                "lt" => left < right,
                _ => left <= right,
            }
        }
    }
}

/// The paging cookie of a page ending at `last`: its order values, typed.
fn cookie(page: usize, orders: &[(String, bool)], values: &[Sort]) -> String {
    let mut inner = format!("<cookie page=\"{page}\">");
    for ((field, _), value) in orders.iter().zip(values) {
        let typed = match value {
            Sort::Null => "n:".to_string(),
            Sort::Int(n) => format!("i:{n}"),
            Sort::Text(t) => format!("t:{}", hex::encode(t)),
        };
        inner.push_str(&format!("<{field} last=\"{typed}\" />"));
    }
    inner.push_str("</cookie>");
    let encoded: String = url::form_urlencoded::byte_serialize(inner.as_bytes()).collect();
    format!("<cookie pagenumber=\"{}\" pagingcookie=\"{encoded}\" istracking=\"False\" />", page + 1)
}

fn read_cookie(token: &str) -> Option<(usize, Vec<Sort>)> {
    let page = token.split("pagenumber=\"").nth(1)?.split('"').next()?.parse::<usize>().ok()?;
    let encoded = token.split("pagingcookie=\"").nth(1)?.split('"').next()?;
    let inner: String = url::form_urlencoded::parse(format!("x={encoded}").as_bytes()).next()?.1.into_owned();
    let values = inner
        .split("last=\"")
        .skip(1)
        .map(|part| {
            let typed = part.split('"').next().unwrap_or_default();
            match typed.split_once(':') {
                Some(("i", n)) => n.parse().map(Sort::Int).ok(),
                Some(("t", t)) => hex::decode(t).ok().and_then(|b| String::from_utf8(b).ok()).map(Sort::Text),
                Some(("n", _)) => Some(Sort::Null),
                _ => None,
            }
        })
        .collect::<Option<Vec<Sort>>>()?;
    Some((page, values))
}

// ---------------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------------

fn reply(status: u16, body: Option<Value>) -> Response {
    let json = body.is_some();
    let mut response = match body {
        Some(body) => Response::new(Body::from(body.to_string())),
        None => Response::new(Body::empty()),
    };
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert("OData-Version", HeaderValue::from_static("4.0"));
    if json {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; odata.metadata=minimal"));
    }
    response
}

fn error_reply(failure: &Failure) -> Response {
    let mut response =
        reply(failure.status, Some(json!({ "error": { "code": failure.code, "message": failure.message } })));
    if let Some(seconds) = failure.retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

struct Call<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a [(String, String)],
    prefer: &'a str,
    if_match: Option<&'a str>,
    body: &'a [u8],
}

impl Call<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn formatted(&self) -> bool {
        self.prefer.contains("OData.Community.Display.V1.FormattedValue")
            || self.prefer.contains("include-annotations=\"*\"")
    }

    fn page_size(&self) -> Option<usize> {
        self.prefer
            .split(',')
            .find_map(|p| p.trim().strip_prefix("odata.maxpagesize="))
            .and_then(|n| n.trim().parse::<usize>().ok())
    }

    fn representation(&self) -> bool {
        self.prefer.contains("return=representation")
    }

    fn json(&self) -> Result<Map<String, Value>, Failure> {
        serde_json::from_slice::<Value>(self.body)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .ok_or_else(|| fail(400, "0x80060891", "The request body is not a JSON object."))
    }
}

async fn handle(State(org): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let latency = lock(&org).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let body = axum::body::to_bytes(body, 16 << 20).await.unwrap_or_default();
    let raw_query = parts.uri.query().unwrap_or_default().to_string();
    let query: Vec<(String, String)> = url::form_urlencoded::parse(raw_query.as_bytes()).into_owned().collect();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let prefer = header("prefer").unwrap_or_default();
    let if_match = header("if-match");
    let path = parts.uri.path().strip_prefix(API).map(|p| p.trim_start_matches('/').to_string());
    let mut o = lock(&org);
    let mut record = Recorded {
        method: parts.method.to_string(),
        path: path.clone().unwrap_or_else(|| parts.uri.path().to_string()),
        query: query.clone(),
        prefer: (!prefer.is_empty()).then(|| prefer.clone()),
        if_match: if_match.clone(),
        status: 0,
        app_id: None,
    };
    let call = Call {
        method: &parts.method,
        path: path.as_deref().unwrap_or_default(),
        query: &query,
        prefer: &prefer,
        if_match: if_match.as_deref(),
        body: &body,
    };
    let response = match answer(&mut o, &parts.headers, path.is_some(), &call, &mut record) {
        Ok(response) => response,
        Err(failure) => {
            if failure.status == 401 {
                let mut response = reply(401, None);
                let value = format!(
                    "Bearer authorization_uri=https://login.microsoftonline.com/{}/oauth2/authorize, resource_id={}/",
                    entra::TENANT_ID,
                    o.url
                );
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_str(&value).expect("header"));
                response
            } else {
                error_reply(&failure)
            }
        }
    };
    record.status = response.status().as_u16();
    o.requests.push(record);
    response
}

fn answer(
    o: &mut Org,
    headers: &HeaderMap,
    in_api: bool,
    call: &Call,
    record: &mut Recorded,
) -> Result<Response, Failure> {
    if o.down {
        return Err(fail(503, "", "The service is temporarily unavailable."));
    }
    if let Some((status, retry_after)) = o.faults.pop_front() {
        let mut failure = fail(status, "", format!("The emulator was told to answer {status} to this request."));
        if status == 429 {
            failure = Failure { code: "0x80072322", ..limit() };
        }
        failure.retry_after = retry_after;
        return Err(failure);
    }
    if !in_api {
        return Err(fail(404, "", "No HTTP resource was found that matches the request URI."));
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let issued = match bearer.map(|t| (t, o.tokens.check(t, &o.url))) {
        Some((token, TokenCheck::Valid(issued))) if !o.revoked.contains(token) => issued,
        _ => return Err(fail(401, "", "")),
    };
    record.app_id = Some(issued.client_id.clone());
    let Some(user) = o.users.iter().find(|u| u.app_id.eq_ignore_ascii_case(&issued.client_id)).cloned() else {
        return Err(fail(403, "", "The user is not a member of the organization."));
    };
    if let Some((left, retry_after)) = o.throttled {
        o.throttled = (left > 1).then_some((left - 1, retry_after));
        return Err(Failure { retry_after: Some(retry_after), ..limit() });
    }
    route(o, &user, call)
}

fn limit() -> Failure {
    fail(429, "0x80072322", "Number of requests exceeded the limit of 6000 over time window of 300 seconds.")
}

fn require(o: &Org, user: &AppUser, action: &str, set: &str) -> Result<(), Failure> {
    let table = &o.tables[set];
    let privilege = format!("prv{action}{}", table.privilege);
    match &user.privileges {
        Some(held) if !held.contains(&privilege) => Err(fail(
            403,
            "0x80040220",
            format!(
                "Principal user (Id={id}, type=8, roleCount={roles}, privilegeCount={count}, accessMode=4), is missing \
                 {privilege} privilege (Id={pid}) on OTC={otc} for entity '{logical}'. context.Caller={id}",
                id = user.user_id,
                roles = usize::from(!held.is_empty()),
                count = held.len(),
                pid = random_uuid(),
                otc = table.otc,
                logical = table.logical,
            ),
        )),
        _ => Ok(()),
    }
}

/// `set` or `set(id)`.
fn resource(path: &str) -> (&str, Option<&str>) {
    match path.split_once('(') {
        Some((set, rest)) => (set, rest.strip_suffix(')')),
        None => (path, None),
    }
}

fn route(o: &mut Org, user: &AppUser, call: &Call) -> Result<Response, Failure> {
    let method = call.method.clone();
    if call.path == "WhoAmI" && method == Method::GET {
        return Ok(reply(
            200,
            Some(json!({
                "@odata.context": format!("{}{API}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse", o.url),
                "BusinessUnitId": o.business_unit_id,
                "UserId": user.user_id,
                "OrganizationId": o.organization_id,
            })),
        ));
    }
    if call.path == "CloseIncident" && method == Method::POST {
        require(o, user, "Write", "incidents")?;
        let body = call.json()?;
        let resolution = body.get("IncidentResolution").cloned().unwrap_or(Value::Null);
        let status = body
            .get("Status")
            .and_then(Value::as_i64)
            .ok_or_else(|| fail(400, "", "CloseIncident needs its Status parameter (an Int32)."))?;
        o.close_incident(&user.user_id, &resolution, status)?;
        return Ok(reply(204, None));
    }
    if call.path.starts_with("EntityDefinitions") && method == Method::GET {
        return metadata(o, call);
    }
    let (set, id) = resource(call.path);
    if !o.tables.contains_key(set) {
        return Err(fail(404, "0x80060888", format!("Resource not found for the segment '{set}'.")));
    }
    let select: Option<Vec<String>> =
        call.param("$select").map(|s| s.split(',').map(|f| f.trim().to_string()).filter(|f| !f.is_empty()).collect());
    if let Some(fields) = &select
        && let Some(bad) = fields.iter().find(|f| o.tables[set].column(f).is_none())
    {
        return Err(not_a_property(bad, &o.tables[set]));
    }
    match (method, id) {
        (Method::GET, None) => {
            require(o, user, "Read", set)?;
            list(o, set, select.as_deref(), call)
        }
        (Method::GET, Some(id)) => {
            require(o, user, "Read", set)?;
            let table = &o.tables[set];
            let record = table
                .record(id)
                .ok_or_else(|| fail(404, "", format!("{} With Id = {id} Does Not Exist", table.logical)))?;
            let mut body = o.represent(table, record, select.as_deref(), call.formatted());
            body.insert("@odata.context".into(), json!(format!("{}{API}/$metadata#{set}/$entity", o.url)));
            Ok(reply(200, Some(Value::Object(body))))
        }
        (Method::POST, None) => {
            require(o, user, "Create", set)?;
            if set == "annotations" {
                require(o, user, "AppendTo", "incidents")?;
            }
            let body = call.json()?;
            let id = o.create(set, &user.user_id, &body)?;
            created(o, set, &id, select.as_deref(), call, 201)
        }
        (Method::PATCH, Some(id)) => {
            require(o, user, "Write", set)?;
            let body = call.json()?;
            o.update(set, id, call.if_match, &body, &user.user_id)?;
            if call.representation() { created(o, set, id, select.as_deref(), call, 200) } else { Ok(reply(204, None)) }
        }
        (Method::DELETE, Some(id)) => {
            require(o, user, "Delete", set)?;
            if o.delete(set, id) {
                Ok(reply(204, None))
            } else {
                Err(fail(404, "", format!("{} With Id = {id} Does Not Exist", o.tables[set].logical)))
            }
        }
        _ => Err(fail(405, "", "The requested resource does not support this HTTP method.")),
    }
}

fn created(
    o: &Org,
    set: &str,
    id: &str,
    select: Option<&[String]>,
    call: &Call,
    status: u16,
) -> Result<Response, Failure> {
    let entity = format!("{}{API}/{set}({id})", o.url);
    let mut response = if call.representation() {
        let table = &o.tables[set];
        let record = table.record(id).expect("just written");
        let mut body = o.represent(table, record, select, call.formatted());
        body.insert("@odata.context".into(), json!(format!("{}{API}/$metadata#{set}/$entity", o.url)));
        reply(status, Some(Value::Object(body)))
    } else {
        reply(204, None)
    };
    response.headers_mut().insert("OData-EntityId", HeaderValue::from_str(&entity).expect("header"));
    Ok(response)
}

fn list(o: &Org, set: &str, select: Option<&[String]>, call: &Call) -> Result<Response, Failure> {
    let table = &o.tables[set];
    let filter = call.param("$filter").map(|f| parse_filter(f, table)).transpose()?;
    let mut orders: Vec<(String, bool)> = Vec::new();
    if let Some(raw) = call.param("$orderby") {
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut words = part.split_whitespace();
            let field = words.next().unwrap_or_default().to_string();
            let desc = match words.next() {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(other) => return Err(fail(400, "0x80060888", format!("Syntax error: '{other}' in $orderby."))),
            };
            if table.column(&field).is_none() {
                return Err(not_a_property(&field, table));
            }
            orders.push((field, desc));
        }
    }
    // The primary key ends every order, as Dataverse adds it for deterministic paging.
    if !orders.iter().any(|(f, _)| f == table.id) {
        orders.push((table.id.to_string(), false));
    }
    let key = |record: &Record| -> Vec<Sort> { orders.iter().map(|(f, _)| sort_value(table, record, f)).collect() };
    let compare = |a: &[Sort], b: &[Sort]| {
        for ((x, y), (_, desc)) in a.iter().zip(b).zip(&orders) {
            let ordering = x.cmp(y);
            if ordering != std::cmp::Ordering::Equal {
                return if *desc { ordering.reverse() } else { ordering };
            }
        }
        std::cmp::Ordering::Equal
    };
    let mut rows: Vec<(Vec<Sort>, &Record)> = table
        .records
        .iter()
        .filter(|r| filter.as_ref().is_none_or(|f| matches(f, table, r)))
        .map(|r| (key(r), r))
        .collect();
    rows.sort_by(|a, b| compare(&a.0, &b.0));
    let mut page_number = 1;
    if let Some(token) = call.param("$skiptoken") {
        let (page, last) =
            read_cookie(token).ok_or_else(|| fail(400, "0x80060888", "The $skiptoken is not a paging cookie."))?;
        page_number = page;
        rows.retain(|(k, _)| compare(k, &last) == std::cmp::Ordering::Greater);
    }
    let page_size = call.page_size();
    let limit = page_size.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    if page_size.is_none()
        && let Some(top) = call.param("$top").and_then(|t| t.parse::<usize>().ok())
    {
        rows.truncate(top);
    }
    let more = rows.len() > limit;
    rows.truncate(limit);
    let value: Vec<Value> =
        rows.iter().map(|(_, r)| Value::Object(o.represent(table, r, select, call.formatted()))).collect();
    let mut body = json!({
        "@odata.context": format!("{}{API}/$metadata#{set}", o.url),
        "value": value,
    });
    if more && let Some((last, _)) = rows.last() {
        let kept: Vec<(String, String)> = call.query.iter().filter(|(k, _)| k != "$skiptoken").cloned().collect();
        let mut link = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &kept {
            link.append_pair(k, v);
        }
        link.append_pair("$skiptoken", &cookie(page_number, &orders, last));
        body["@odata.nextLink"] = json!(format!("{}{API}/{set}?{}", o.url, link.finish()));
    }
    let mut response = reply(200, Some(body));
    if let Some(size) = page_size {
        response
            .headers_mut()
            .insert("Preference-Applied", HeaderValue::from_str(&format!("odata.maxpagesize={size}")).expect("header"));
    }
    Ok(response)
}

fn metadata(o: &Org, call: &Call) -> Result<Response, Failure> {
    if call.path == "EntityDefinitions" {
        let filter = call.param("$filter").unwrap_or_default();
        let wanted = |name: &str| {
            filter
                .split_once(" eq ")
                .filter(|(property, _)| property.trim() == name)
                .map(|(_, v)| v.trim().trim_matches('\'').to_string())
        };
        let (by_set, by_name) = (wanted("EntitySetName"), wanted("LogicalName"));
        let value: Vec<Value> = o
            .tables
            .values()
            .filter(|t| {
                by_set.as_deref().is_none_or(|s| s == t.set) && by_name.as_deref().is_none_or(|n| n == t.logical)
            })
            .map(|t| {
                json!({
                    "LogicalName": t.logical,
                    "EntitySetName": t.set,
                    "PrimaryIdAttribute": t.id,
                    "PrimaryNameAttribute": t.name,
                    "MetadataId": format!("{:08x}-0000-0000-0000-{:012x}", t.otc, t.otc),
                })
            })
            .collect();
        return Ok(reply(
            200,
            Some(json!({ "@odata.context": format!("{}{API}/$metadata#EntityDefinitions", o.url), "value": value })),
        ));
    }
    let quoted =
        |marker: &str| call.path.split(marker).nth(1).and_then(|rest| rest.split('\'').next()).map(str::to_string);
    let (Some(entity), Some(attribute)) = (quoted("(LogicalName='"), quoted("Attributes(LogicalName='")) else {
        return Err(fail(404, "0x80060888", "Resource not found for the segment."));
    };
    let table = o.tables.values().find(|t| t.logical == entity).ok_or_else(|| {
        fail(404, "0x80060888", format!("Could not find an entity with the logical name '{entity}'."))
    })?;
    let options: Vec<(i64, &str)> = match table.columns.get(&attribute).map(|c| &c.kind) {
        Some(Kind::Choice(options)) if call.path.ends_with("PicklistAttributeMetadata") => options.clone(),
        _ => {
            return Err(fail(
                404,
                "0x80060888",
                format!("Could not find a picklist attribute '{attribute}' on '{entity}'."),
            ));
        }
    };
    let options: Vec<Value> = options
        .iter()
        .map(|(value, label)| {
            let label = json!({ "Label": label, "LanguageCode": 1033 });
            json!({ "Value": value, "Label": { "LocalizedLabels": [label.clone()], "UserLocalizedLabel": label } })
        })
        .collect();
    Ok(reply(
        200,
        Some(json!({ "LogicalName": attribute, "MetadataId": random_uuid(), "OptionSet": { "Options": options } })),
    ))
}

// ---------------------------------------------------------------------------------------------
// The product-independent view
// ---------------------------------------------------------------------------------------------

impl EmulatedItsm for ProvanceEmulator {
    fn product(&self) -> &'static str {
        "provance"
    }

    fn settings(&self) -> Vec<(String, String)> {
        self.connection_settings()
    }

    fn items(&self, kind: &str) -> Vec<EmulatedItem> {
        let set = if kind == "ChangeRequest" { CHANGE_SET } else { "incidents" };
        self.records(set)
            .iter()
            .map(|record| {
                let id = text(record, if set == "incidents" { "incidentid" } else { "contoso_changerequestid" });
                EmulatedItem {
                    correlation: text(record, CORRELATION_FIELD),
                    open: record.get("statecode").and_then(Value::as_i64) == Some(0),
                    notes: self.notes(&id).into_iter().map(|(_, text)| text).collect(),
                    id,
                }
            })
            .collect()
    }

    fn set_down(&self, down: bool) {
        ProvanceEmulator::set_down(self, down);
    }

    fn close(&self, id: &str) {
        self.resolve(id);
    }

    fn seed(&self, kind: &str, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) {
        if kind == "ChangeRequest" { self.seed_change_requests(n, from, to) } else { self.seed_incidents(n, from, to) }
    }
}
