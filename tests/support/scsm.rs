//! A System Center Service Manager behind a Cireson portal, in a box: an axum server on `127.0.0.1` that answers
//! the portal API calls itsmc makes, so the production client runs unchanged against it; only the base URL
//! differs. Tests drive faults and look at the stored work items through [`ScsmEmulator`].
//!
//! # What it emulates, and from which public material
//!
//! Cireson publishes no API reference outside its customers' portals (each portal serves an ASP.NET Web API help
//! page at `/Help`, and one such page, `POST api/V3/Projection/Commit`, is quoted on community.cireson.com). What
//! follows comes from that page, from public clients of the API (the C# library JohnCardenas/CiresonPortalAPI,
//! the PowerShell module lazywinadmin/CiresonPortalPS) and from portal customisations published on GitHub
//! (lakam99/Cireson-Portal-Custom-Scripts, BrettMoff's and Cireson's community scripts), which call the same
//! endpoints from the portal's own pages.
//!
//! - **Sign-in**, `POST /api/V3/Authorization/GetToken` with `{"UserName", "Password", "LanguageCode"}`: the
//!   answer is the token as a JSON string (CiresonPortalAPI strips its quotes); every other call sends
//!   `Authorization: Token <token>` (CiresonPortalAPI's `PortalHttpHelper`). User names are `DOMAIN\user` or
//!   `user` and compare without case. *Assumed*: a wrong user name or password answers 401 (CiresonPortalAPI
//!   treats 401 and 403 alike as invalid credentials, and says nothing more); the body is ASP.NET Web API's
//!   `{"Message": ...}`. Tokens live [`ScsmConfig::token_lifetime`] (the library assumes 300 s client-side; the
//!   server's lifetime is not published) and [`ScsmEmulator::expire_tokens`] ends them all; a call with an unknown
//!   or expired token gets 401 `{"Message":"Authorization has been denied for this request."}` (Web API's
//!   `[Authorize]` answer).
//! - **The user**, `POST /api/V3/User/IsUserAuthorized?userName=&domain=` (CiresonPortalAPI's `GetUserRights`):
//!   the user's `Id` (its SCSM BaseId), `Name`, `Analyst` (0 or 1) and `Security.CanCreateIncident`,
//!   `CanCreateChangeRequest`...
//! - **Reading**, `POST /api/V3/Projection/GetProjectionByCriteria` with `{"Id": <type projection>, "Criteria":
//!   {"Base": {"Expression": ...}}}`, the JSON form of SCSM's criteria that CiresonPortalAPI's `QueryCriteria`
//!   writes: `SimpleExpression` (`ValueExpressionLeft` `{"Property": "$Context/Property[Type='<class id>']/Name$"}`
//!   or `{"GenericProperty": "Id"}`, `Operator` one of `Equal NotEqual Greater GreaterEqual Less LessEqual Like`,
//!   `ValueExpressionRight` `{"Value"}`), and `And`/`Or` of `{"Expression": [...]}`. The generic property `Id` is the
//!   BaseId (CiresonPortalAPI's `GetByBaseId`); `LastModified` and `TimeAdded` are the object's times. Projections
//!   known: `System.WorkItem.Incident.ProjectionType` and the portal's incident view model, and the change request
//!   projection and view model (ids from CiresonPortalAPI's `TypeProjectionConstants` and the portal scripts'
//!   `app.constants.projectionIds`). The answer is a JSON list of every match, with no paging: nothing public
//!   shows a page parameter. *Assumed*: matches come in BaseId order (so in no order of time a client could rely
//!   on); a property the class does not declare, an unknown projection or operator is a server error (500 with Web
//!   API's `ExceptionMessage`), as SCSM's criteria parser refuses them; text compares without case (SQL Server's
//!   default collation), dates as dates (ISO 8601, UTC when no offset is given).
//! - **Creating**, `GET /api/V3/Projection/CreateProjectionByTemplate?id=<template>&createdById=<user>`
//!   (CiresonPortalAPI, CiresonPortalPS, lakam99's ticket scripts): an unsaved projection of the template with a
//!   fresh `BaseId`, `Id` `IR{0}`, and `LastModified` `0001-01-01T00:00:00` (the Commit help page says a new work
//!   item has that date). Templates known: SCSM's Default Incident Template (`a77bb0c9-…`, CiresonPortalAPI's
//!   `TemplateConstants`) and any added with [`ScsmEmulator::add_template`]. *Assumed*: an unknown template answers
//!   404 with Web API's `{"Message"}`.
//! - **Saving**, `POST /api/V3/Projection/Commit` with `{"formJson": {"original", "current"}}` (the help page, and
//!   every script that saves a work item): a `current` whose BaseId is not stored yet is created (the `Id` gets the
//!   next number of SCSM's one work item sequence, `{0}` replaced: `IR1001`); otherwise what differs between
//!   `original` and `current` is applied. Enumerations are stored by `Id` and answered as `{"Id", "Name"}`; entries
//!   new in an action log (`AppliesToTroubleTicket` for incidents, `AppliesToWorkItem` for other work items, as the
//!   portal's comment scripts add them with `ActionType` `AnalystComment`) are appended. Success answers
//!   `{"success": true, "BaseId": ...}` and a refusal `{"success": false, "exception": ...}` (the fields
//!   CiresonPortalAPI reads), both with 200. *Assumed*: the `runConcurrencyCheck` the help page documents (default
//!   true) refuses a commit whose `original.LastModified` is not the stored one, with the exception SCSM's SDK
//!   throws for it (`DiscoveryDataModificationCollisionException`, Microsoft's Service Manager blog "Adding Merge
//!   Capability in Service Manager SDK") named in `exception`; an enumeration id SCSM does not know is refused
//!   with a message of its own. [`ScsmEmulator::race_commits`] has an analyst save a work item between itsmc's read
//!   and its commit. Status side effects: Resolved sets `ResolvedDate` when none is given, Closed sets
//!   `ClosedDate`. Every save sets `LastModified` to now.
//! - **Enumerations**: IncidentStatusEnum (Active, Active.Pending, Resolved, Closed), TroubleTicket Urgency and
//!   Impact, IncidentSourceEnum and IncidentResolutionCategoryEnum.FixedByAnalyst, ChangeStatusEnum and the change
//!   request Category, Priority, Impact, Risk and Area values, with the ids SCSM ships (CiresonPortalAPI's
//!   `EnumerationConstants`, the portal scripts' constants, and ScsmClient's `WellKnown`). *Made up here*: the
//!   incident classifications and support groups (tier queues) a site defines ([`CLASSIFICATION_HARDWARE`],
//!   [`SUPPORT_GROUP_TIER1`]...), since SCSM's built-in ones are not published with their ids.
//! - **The correlation property**: SCSM classes are sealed, so a site adds a property through a class extension;
//!   the emulator declares [`CORRELATION_PROPERTY`] on the extension class [`EXTENSION_CLASS_ID`] (made up), and a
//!   criteria names it through that class, as SCSM wants for extension properties (*assumed* from SCSM's criteria
//!   rules; the incident class itself answers its own and inherited properties).
//! - **Projections that lack a property**: [`ScsmEmulator::hide`] leaves a property out of one work item's answers
//!   (a view-model projection, or a record an import left without it), while criteria still find it.
//! - **Faults**: [`ScsmEmulator::set_down`] (every call 503 with Web API's body), [`ScsmEmulator::fail_next`]
//!   (the next calls answer a status, with `Retry-After` when given: 429 stands for a proxy's or gateway's rate
//!   limit, since the portal has none of its own that is published), [`ScsmEmulator::set_latency`].
//!
//! # What it leaves out
//!
//! Windows authentication (portals that only take Negotiate), the portal's other APIs (`GetProjection`, views,
//! `WorkItem/Update`, attachments), relationships beyond what a projection carries as JSON, SCSM workflows
//! (notifications, auto-close of resolved incidents), templates' own field values beyond the default ones, user
//! roles and scoping (a user is an analyst or not), and class schemas beyond property names for criteria.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use chrono::{DateTime, NaiveDateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use super::itsm::{EmulatedItem, EmulatedItsm};
use super::serve::{Server, lock};

/// The user [`ScsmConfig::default`] knows, as the portal's sign-in takes it.
pub const USERNAME: &str = "CONTOSO\\svc-itsmc";
pub const PASSWORD: &str = "Portal-pa55-never-logged";
/// A user who may sign in but is no analyst.
pub const END_USER: &str = "CONTOSO\\jdoe";
pub const END_USER_PASSWORD: &str = "end-user-pa55";

pub const INCIDENT_PROJECTION: &str = "285cb0a2-f276-bccb-563e-bb721df7cdec";
pub const INCIDENT_VIEW_PROJECTION: &str = "2d460edd-d5db-bc8c-5be7-45b050cba652";
pub const CHANGE_PROJECTION: &str = "674194d8-0246-7b90-d871-e1ea015b2ea7";
pub const CHANGE_VIEW_PROJECTION: &str = "4c8f4f06-4c8f-a1b6-c104-89cfb7b593fa";
pub const INCIDENT_CLASS: &str = "a604b942-4c7b-2fb2-28dc-61dc6f465c68";
pub const CHANGE_CLASS: &str = "e6c9cf6e-d7fe-1b5d-216c-c3f5d2c7670c";
pub const DEFAULT_INCIDENT_TEMPLATE: &str = "a77bb0c9-e201-dd93-230c-799a66d9e8fa";
/// The site's class extension that declares the correlation property (made up).
pub const EXTENSION_CLASS_ID: &str = "6b2b9a8e-4f1d-4c3e-9a7b-1e2d3c4b5a69";
pub const CORRELATION_PROPERTY: &str = "ItsmcCorrelationKey";

pub const STATUS_ACTIVE: &str = "5e2d3932-ca6d-1515-7310-6f58584df73e";
pub const STATUS_PENDING: &str = "b6679968-e84e-96fa-1fec-8cd4ab39c3de";
pub const STATUS_RESOLVED: &str = "2b8830b6-59f0-f574-9c2a-f4b4682f1681";
pub const STATUS_CLOSED: &str = "bd0ae7c4-3315-2eb3-7933-82dfc482dbaf";
pub const URGENCY_HIGH: &str = "2f8f0747-b6cb-7996-fd4a-84d09743f218";
pub const URGENCY_MEDIUM: &str = "02625c30-08c6-4181-b2ed-222fa473280e";
pub const URGENCY_LOW: &str = "725a4cad-088c-4f55-a845-000db8872e01";
pub const IMPACT_HIGH: &str = "d2b5e816-2d24-8e7d-a61f-2cceaeac2664";
pub const IMPACT_MEDIUM: &str = "80cc222b-2653-2f68-8cee-3a7dd3b723c1";
pub const IMPACT_LOW: &str = "8f1a713e-53aa-9d8a-31b9-a9540074f305";
pub const FIXED_BY_ANALYST: &str = "c5f6ada9-a0df-01d6-7087-6b8500ca6c2b";
pub const CLASSIFICATION_HARDWARE: &str = "1d0f6b9a-7c2e-4e51-9b0a-3f5e2d1c0b01";
pub const CLASSIFICATION_NETWORK: &str = "1d0f6b9a-7c2e-4e51-9b0a-3f5e2d1c0b02";
pub const SUPPORT_GROUP_TIER1: &str = "2e1a7c8b-6d3f-4a62-8c1b-4a6f3e2d1c01";
pub const SUPPORT_GROUP_CLOUD_OPS: &str = "2e1a7c8b-6d3f-4a62-8c1b-4a6f3e2d1c02";
pub const CHANGE_IN_PROGRESS: &str = "6d6c64dd-07ac-aaf5-f812-6a7cceb5154d";
pub const CHANGE_COMPLETED: &str = "68277330-a0d3-cfdd-298d-d5c31d1d126f";
pub const CHANGE_CLOSED: &str = "f228d50b-2b5a-010f-b1a4-5c7d95703a9b";

/// `(id, name, the property it is a value of)`.
const ENUMERATIONS: &[(&str, &str, &str)] = &[
    (STATUS_ACTIVE, "Active", "Status"),
    (STATUS_PENDING, "Pending", "Status"),
    (STATUS_RESOLVED, "Resolved", "Status"),
    (STATUS_CLOSED, "Closed", "Status"),
    (URGENCY_HIGH, "High", "Urgency"),
    (URGENCY_MEDIUM, "Medium", "Urgency"),
    (URGENCY_LOW, "Low", "Urgency"),
    (IMPACT_HIGH, "High", "Impact"),
    (IMPACT_MEDIUM, "Medium", "Impact"),
    (IMPACT_LOW, "Low", "Impact"),
    ("76480d55-a19d-7cef-4446-0f1ccaef11ce", "Console", "Source"),
    ("92b68e4f-c5bf-52ec-9bda-f55b43a9f4b5", "E-Mail", "Source"),
    ("7b417fee-0516-a75a-c62c-426905fda768", "Phone", "Source"),
    ("6ef191ce-3124-2974-94fb-020c677f4017", "Portal", "Source"),
    ("564c1afc-6453-4b25-5564-b46d84155545", "Operations Manager", "Source"),
    ("615778d5-485a-752f-3c5d-f412f806e624", "System", "Source"),
    (FIXED_BY_ANALYST, "Fixed by analyst", "ResolutionCategory"),
    (CLASSIFICATION_HARDWARE, "Hardware Problems", "Classification"),
    (CLASSIFICATION_NETWORK, "Networking Problems", "Classification"),
    (SUPPORT_GROUP_TIER1, "Tier 1", "TierQueue"),
    (SUPPORT_GROUP_CLOUD_OPS, "Cloud Operations", "TierQueue"),
    ("a87c003e-8c19-a25f-f8b2-151b56670e5c", "New", "Status"),
    ("504f294c-ae38-2a65-f395-bff4f085698b", "Submitted", "Status"),
    (CHANGE_IN_PROGRESS, "In Progress", "Status"),
    ("dd6b0870-bcea-1520-993d-9f1337e39d4d", "On Hold", "Status"),
    (CHANGE_COMPLETED, "Completed", "Status"),
    ("85f00ead-2603-6c68-dfec-531c83bf900f", "Failed", "Status"),
    ("877defb6-0d21-7d19-89d5-a1107d621270", "Cancelled", "Status"),
    (CHANGE_CLOSED, "Closed", "Status"),
    ("02d2f92f-d925-5ad6-eb1f-67020701697a", "Standard", "Category"),
    ("c0126730-ab4a-4c62-26e0-7706bc176413", "Minor", "Category"),
    ("e9ee7044-3a42-a34b-1237-ec0d32f2377a", "Major", "Category"),
    ("357662a7-451c-df62-ed68-3147bdff324e", "Emergency", "Category"),
    ("ff5fd035-4d4e-42d4-f076-7412257b88ac", "Immediate", "Priority"),
    ("32ee0157-fdc5-67c4-7971-c6b1fe8dfc66", "High", "Priority"),
    ("3a96f7dc-4469-ed8b-48a1-517f7ccf6189", "Medium", "Priority"),
    ("ab51007f-65a3-845b-a8f4-2896c9da9f5f", "Low", "Priority"),
    ("70ca6737-6f4d-ea78-c392-2cfc61eaadfc", "Significant", "Impact"),
    ("312b4612-6b0e-63e9-e9c4-0a4d04d7363a", "Standard", "Impact"),
    ("7b30147f-3820-733e-55ee-0885aceb60f4", "Major", "Impact"),
    ("e90e735e-959b-eb5b-41be-1fd07c30a740", "Minor", "Impact"),
    ("13b87263-844c-833f-2fae-30939de58244", "Low", "Risk"),
    ("d92ca060-fd52-27dc-8268-9b0f5fd4ffda", "Medium", "Risk"),
    ("978b7e07-10c5-25c1-e6f4-e1df0579fc82", "High", "Risk"),
    ("1fbd7d66-be43-d48d-8ea8-2367f6039697", "Not Assessed", "Risk"),
    ("b60f4a7b-35bc-3ea6-480c-976da3946d63", "Server", "Area"),
    ("5da666cc-0c8b-2e01-e4eb-dd6d791b2699", "Network", "Area"),
    ("45dc9909-5ea5-e70e-fddc-c621c4acd9aa", "Operating System", "Area"),
];

/// Properties a criteria may name through the incident class (its own and System.WorkItem's).
const INCIDENT_PROPERTIES: &[&str] = &[
    "Id",
    "Title",
    "Description",
    "Status",
    "Urgency",
    "Impact",
    "Priority",
    "Source",
    "Classification",
    "TierQueue",
    "ResolutionCategory",
    "ResolutionDescription",
    "ResolvedDate",
    "ClosedDate",
    "CreatedDate",
    "LastModified",
    "Escalated",
    "ContactMethod",
    "DisplayName",
];
const CHANGE_PROPERTIES: &[&str] = &[
    "Id",
    "Title",
    "Description",
    "Status",
    "Impact",
    "Priority",
    "Risk",
    "Category",
    "Area",
    "CreatedDate",
    "ClosedDate",
    "LastModified",
    "ScheduledStartDate",
    "ScheduledEndDate",
    "ActualStartDate",
    "ActualEndDate",
    "DisplayName",
];
/// What the server keeps for itself: a commit cannot set these.
const SERVER_PROPERTIES: &[&str] =
    &["BaseId", "Id", "LastModified", "CreatedDate", "ClassName", "ClassTypeId", "FullClassName", "TimeAdded"];

#[derive(Clone, Debug)]
pub struct User {
    /// `DOMAIN\user` or `user`.
    pub name: String,
    pub password: String,
    pub display_name: String,
    pub analyst: bool,
}

#[derive(Clone, Debug)]
pub struct ScsmConfig {
    pub users: Vec<User>,
    pub token_lifetime: Duration,
    pub latency: Duration,
}

impl Default for ScsmConfig {
    fn default() -> Self {
        ScsmConfig {
            users: vec![
                User {
                    name: USERNAME.into(),
                    password: PASSWORD.into(),
                    display_name: "itsmc service account".into(),
                    analyst: true,
                },
                User {
                    name: END_USER.into(),
                    password: END_USER_PASSWORD.into(),
                    display_name: "Jane Doe".into(),
                    analyst: false,
                },
            ],
            token_lifetime: Duration::from_secs(3600),
            latency: Duration::ZERO,
        }
    }
}

/// One request as the emulator saw it, with the status it answered.
#[derive(Clone, Debug)]
pub struct RequestLog {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    pub body: String,
}

/// A running emulated portal; it serves until dropped.
pub struct ScsmEmulator {
    addr: SocketAddr,
    state: Arc<Mutex<Portal>>,
    _server: Server,
}

struct Portal {
    users: Vec<(User, String)>,
    token_lifetime: Duration,
    latency: Duration,
    tokens: BTreeMap<String, (usize, Instant)>,
    down: bool,
    failures: VecDeque<(u16, Option<u64>)>,
    /// BaseId → the work item, with its class name. Changed only through [`Portal::put`].
    objects: BTreeMap<String, Map<String, Value>>,
    /// The correlation property's value (lower case) → the BaseIds that have it: SCSM's index on the column.
    correlated: BTreeMap<String, Vec<String>>,
    /// BaseIds in creation order.
    order: Vec<String>,
    /// SCSM numbers every work item from one sequence.
    sequence: u64,
    templates: BTreeMap<String, (String, Map<String, Value>)>,
    requests: Vec<RequestLog>,
    sign_ins: u32,
    /// How many more commits of a stored work item find it saved by an analyst since itsmc read it.
    races: u32,
    /// BaseId → properties left out of that work item's answers.
    hidden: BTreeMap<String, Vec<String>>,
    rng: StdRng,
}

impl ScsmEmulator {
    /// Binds `127.0.0.1:0` and serves on its own thread and runtime, so it works from any test.
    pub fn start(config: ScsmConfig) -> ScsmEmulator {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("scsm emulator: bind");
        let addr = listener.local_addr().expect("scsm emulator: address");
        let mut rng = StdRng::seed_from_u64(0x5c5e_c1e5_0f7a_1234);
        config.users.iter().for_each(|u| super::serve::capture::secret("scsm password", &u.password));
        let users = config.users.into_iter().map(|u| (u, guid(&mut rng))).collect();
        let mut portal = Portal {
            users,
            token_lifetime: config.token_lifetime,
            latency: config.latency,
            tokens: BTreeMap::new(),
            down: false,
            failures: VecDeque::new(),
            objects: BTreeMap::new(),
            correlated: BTreeMap::new(),
            order: Vec::new(),
            sequence: 1000,
            templates: BTreeMap::new(),
            requests: Vec::new(),
            sign_ins: 0,
            races: 0,
            hidden: BTreeMap::new(),
            rng,
        };
        portal
            .templates
            .insert(DEFAULT_INCIDENT_TEMPLATE.into(), ("Default Incident Template".into(), incident_defaults()));
        let state = Arc::new(Mutex::new(portal));
        let app = Router::new().fallback(handle).with_state(Arc::clone(&state));
        let server = Server::http("scsm-emulator", listener, app);
        ScsmEmulator { addr, state, _server: server }
    }

    /// `http://127.0.0.1:PORT`, the portal URL to give itsmc.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, Portal> {
        lock(&self.state)
    }

    /// While down, every call answers 503.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// The next `times` calls, whatever they are, answer `status` (with `Retry-After` when given) and do nothing.
    pub fn fail_next(&self, times: u32, status: u16, retry_after: Option<u64>) {
        let mut portal = self.lock();
        for _ in 0..times {
            portal.failures.push_back((status, retry_after));
        }
    }

    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Every token issued so far is refused from now on.
    pub fn expire_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// An administrator changes a user's password.
    pub fn set_password(&self, name: &str, password: &str) {
        super::serve::capture::secret("scsm password", password);
        for (user, _) in self.lock().users.iter_mut() {
            if user.name.eq_ignore_ascii_case(name) {
                user.password = password.into();
            }
        }
    }

    /// How many sign-ins (`GetToken`, successful or not) the portal has answered.
    pub fn sign_ins(&self) -> u32 {
        self.lock().sign_ins
    }

    pub fn requests(&self) -> Vec<RequestLog> {
        self.lock().requests.clone()
    }

    /// An incident template, as an administrator makes one in the console; returns its id.
    pub fn add_template(&self, name: &str, values: Value) -> String {
        let mut portal = self.lock();
        let id = guid(&mut portal.rng);
        let mut defaults = incident_defaults();
        if let Value::Object(values) = values {
            defaults.extend(values);
        }
        portal.templates.insert(id.clone(), (name.into(), defaults));
        id
    }

    /// The work items of a class (`System.WorkItem.Incident`, `System.WorkItem.ChangeRequest`), in creation order,
    /// as stored (enumerations `{"Id", "Name"}`).
    pub fn work_items(&self, class_name: &str) -> Vec<Map<String, Value>> {
        let portal = self.lock();
        portal
            .order
            .iter()
            .filter_map(|id| portal.objects.get(id))
            .filter(|o| o.get("ClassName").and_then(Value::as_str) == Some(class_name))
            .cloned()
            .collect()
    }

    /// One work item by its number (`IR1001`) or BaseId.
    pub fn work_item(&self, id: &str) -> Option<Map<String, Value>> {
        let portal = self.lock();
        portal.find(id).and_then(|base| portal.objects.get(&base)).cloned()
    }

    /// An analyst changes a work item in the console: `values` set as given (enumerations by `{"Id"}`),
    /// `LastModified` now.
    pub fn update(&self, id: &str, values: Value) {
        let mut portal = self.lock();
        let Some(base) = portal.find(id) else { return };
        let now = now_text();
        let Value::Object(values) = values else { return };
        let mut object = portal.objects[&base].clone();
        for (name, value) in values {
            object.insert(name.clone(), normalize(&name, value).unwrap_or(Value::Null));
        }
        status_effects(&mut object, &now);
        object.insert("LastModified".into(), json!(now));
        portal.put(base, object);
    }

    /// The next `times` commits of a stored work item each find that an analyst saved it after itsmc read it (its
    /// `LastModified` moves on just before the commit is checked), so SCSM's concurrency check refuses them.
    pub fn race_commits(&self, times: u32) {
        self.lock().races = times;
    }

    /// Answers of the work item `id` (number or BaseId) leave `property` out.
    pub fn hide(&self, id: &str, property: &str) {
        let mut portal = self.lock();
        let Some(base) = portal.find(id) else { return };
        portal.hidden.entry(base).or_default().push(property.to_string());
    }

    /// `n` work items of `kind` ("Incident" or "ChangeRequest"), last modified evenly over `[from, to)`, with
    /// varied statuses, people, classifications and texts; deterministic for the same arguments.
    pub fn seed(&self, kind: &str, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) {
        let mut portal = self.lock();
        let span = (to - from).num_milliseconds().max(1);
        let mut rng = StdRng::seed_from_u64(n as u64 ^ from.timestamp() as u64 ^ portal.order.len() as u64);
        let people = ["Beth Anglin", "Ravi Kumar", "Zoë Müller", "O'Brien, Pat"];
        for i in 0..n {
            let modified = from + chrono::Duration::milliseconds(span * i as i64 / n.max(1) as i64);
            let created = modified - chrono::Duration::hours(rng.random_range(0..72));
            let base = guid(&mut portal.rng);
            portal.sequence += 1;
            let person = people[rng.random_range(0..people.len())];
            let mut object = if kind == "ChangeRequest" {
                let status = [CHANGE_IN_PROGRESS, CHANGE_COMPLETED, CHANGE_CLOSED][rng.random_range(0..3)];
                let mut object = Map::new();
                object.insert("ClassName".into(), json!("System.WorkItem.ChangeRequest"));
                object.insert("ClassTypeId".into(), json!(CHANGE_CLASS));
                object.insert("FullClassName".into(), json!("Change Request"));
                object.insert("Id".into(), json!(format!("CR{}", portal.sequence)));
                object.insert("Title".into(), json!(format!("Patch \"web\" tier, wave {i}")));
                object.insert("Description".into(), json!("Apply the monthly patches.\r\nRoll back on failure."));
                object.insert("Status".into(), enumeration(status));
                object.insert("Category".into(), enumeration("02d2f92f-d925-5ad6-eb1f-67020701697a"));
                object.insert("Priority".into(), enumeration("3a96f7dc-4469-ed8b-48a1-517f7ccf6189"));
                object.insert("Risk".into(), enumeration("13b87263-844c-833f-2fae-30939de58244"));
                object.insert("Area".into(), enumeration("b60f4a7b-35bc-3ea6-480c-976da3946d63"));
                object.insert("Impact".into(), enumeration("312b4612-6b0e-63e9-e9c4-0a4d04d7363a"));
                object.insert("ScheduledStartDate".into(), json!(time_text(created + chrono::Duration::days(1))));
                object.insert("ScheduledEndDate".into(), json!(time_text(created + chrono::Duration::days(2))));
                object.insert("AppliesToWorkItem".into(), json!([]));
                object
            } else {
                let status = [STATUS_ACTIVE, STATUS_PENDING, STATUS_RESOLVED, STATUS_CLOSED][rng.random_range(0..4)];
                let mut object = incident_defaults();
                object.insert("Id".into(), json!(format!("IR{}", portal.sequence)));
                object.insert("Title".into(), json!(format!("Disk \"C:\" full on web{:02}", i % 40)));
                object.insert("Description".into(), json!(format!("Free space below 5 %.\nSeen by {person}.")));
                object.insert("Status".into(), enumeration(status));
                object.insert("Urgency".into(), enumeration([URGENCY_HIGH, URGENCY_MEDIUM, URGENCY_LOW][i % 3]));
                object.insert("Impact".into(), enumeration([IMPACT_HIGH, IMPACT_MEDIUM, IMPACT_LOW][i % 3]));
                object.insert("Priority".into(), json!(1 + i % 9));
                object.insert("Classification".into(), enumeration(CLASSIFICATION_HARDWARE));
                object.insert("AboutConfigItem".into(), json!([{ "DisplayName": format!("web{:02}", i % 40) }]));
                if status == STATUS_RESOLVED || status == STATUS_CLOSED {
                    object.insert("ResolvedDate".into(), json!(time_text(modified)));
                    object.insert("RelatesToTroubleTicket".into(), json!({ "DisplayName": person }));
                }
                object
            };
            object.insert("BaseId".into(), json!(base));
            object.insert("AssignedWorkItem".into(), json!({ "DisplayName": person }));
            object.insert("CreatedWorkItem".into(), json!({ "DisplayName": "System" }));
            object.insert("CreatedDate".into(), json!(time_text(created)));
            object.insert("LastModified".into(), json!(time_text(modified)));
            portal.order.push(base.clone());
            portal.put(base, object);
        }
    }
}

impl EmulatedItsm for ScsmEmulator {
    fn product(&self) -> &'static str {
        "scsm"
    }

    fn settings(&self) -> Vec<(String, String)> {
        [
            ("ITSMC_PRODUCT", "scsm".to_string()),
            ("ITSMC_URL", self.url()),
            ("ITSMC_USERNAME", USERNAME.to_string()),
            ("ITSMC_PASSWORD", PASSWORD.to_string()),
            ("ITSMC_SCSM_CORRELATION_CLASS_ID", EXTENSION_CLASS_ID.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn items(&self, kind: &str) -> Vec<EmulatedItem> {
        let (class, log) = if kind == "ChangeRequest" {
            ("System.WorkItem.ChangeRequest", "AppliesToWorkItem")
        } else {
            ("System.WorkItem.Incident", "AppliesToTroubleTicket")
        };
        self.work_items(class)
            .iter()
            .map(|object| {
                let text = |name: &str| object.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
                let status = object.get("Status").and_then(|s| s.get("Id")).and_then(Value::as_str).unwrap_or_default();
                let notes = object
                    .get(log)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|e| e.get("ActionType").and_then(Value::as_str) == Some("AnalystComment"))
                    .filter_map(|e| e.get("Description").and_then(Value::as_str).map(str::to_string))
                    .collect();
                EmulatedItem {
                    id: text("BaseId"),
                    correlation: text(CORRELATION_PROPERTY),
                    open: ![STATUS_RESOLVED, STATUS_CLOSED, CHANGE_COMPLETED, CHANGE_CLOSED].contains(&status),
                    notes,
                }
            })
            .collect()
    }

    fn set_down(&self, down: bool) {
        ScsmEmulator::set_down(self, down);
    }

    fn close(&self, id: &str) {
        let class = self.work_item(id).and_then(|o| o.get("ClassName").and_then(Value::as_str).map(str::to_string));
        let status =
            if class.as_deref() == Some("System.WorkItem.ChangeRequest") { CHANGE_CLOSED } else { STATUS_CLOSED };
        self.update(id, json!({ "Status": { "Id": status } }));
    }

    fn seed(&self, kind: &str, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) {
        ScsmEmulator::seed(self, kind, n, from, to);
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

type Shared = Arc<Mutex<Portal>>;

struct Reply {
    status: StatusCode,
    body: Value,
    retry_after: Option<u64>,
}

impl Reply {
    fn ok(body: Value) -> Reply {
        Reply { status: StatusCode::OK, body, retry_after: None }
    }
    /// ASP.NET Web API's error body.
    fn message(status: StatusCode, message: &str) -> Reply {
        Reply { status, body: json!({ "Message": message }), retry_after: None }
    }
    /// An unhandled exception, as Web API reports it.
    fn exception(message: &str) -> Reply {
        Reply {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: json!({
                "Message": "An error has occurred.",
                "ExceptionMessage": message,
                "ExceptionType": "System.ArgumentException",
                "StackTrace": null,
            }),
            retry_after: None,
        }
    }
}

async fn handle(State(state): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024).await.unwrap_or_default();
    let latency = lock(&state).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let query = parts.uri.query().unwrap_or_default().to_string();
    let mut portal = lock(&state);
    let reply = portal.answer(&parts.method, parts.uri.path(), &query, &parts.headers, &body);
    portal.requests.push(RequestLog {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query,
        status: reply.status.as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    drop(portal);
    let mut response =
        Response::builder().status(reply.status).header(header::CONTENT_TYPE, "application/json; charset=utf-8");
    if let Some(seconds) = reply.retry_after {
        response = response.header(header::RETRY_AFTER, seconds.to_string());
    }
    response.body(Body::from(reply.body.to_string())).expect("a response")
}

fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.into_owned())
}

impl Portal {
    fn answer(&mut self, method: &Method, path: &str, query: &str, headers: &HeaderMap, body: &[u8]) -> Reply {
        if self.down {
            return Reply::message(StatusCode::SERVICE_UNAVAILABLE, "The service is unavailable.");
        }
        if let Some((status, retry_after)) = self.failures.pop_front() {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut reply = Reply::message(status, status.canonical_reason().unwrap_or("Error"));
            reply.retry_after = retry_after;
            return reply;
        }
        let path = path.trim_end_matches('/').to_ascii_lowercase();
        if path == "/api/v3/authorization/gettoken" && method == Method::POST {
            return self.sign_in(body);
        }
        if !path.starts_with("/api/") {
            return Reply::message(StatusCode::NOT_FOUND, "No HTTP resource was found that matches the request URI.");
        }
        let Some(user) = self.authenticate(headers) else {
            return Reply::message(StatusCode::UNAUTHORIZED, "Authorization has been denied for this request.");
        };
        let parsed = || serde_json::from_slice::<Value>(body).ok();
        match (method.as_str(), path.as_str()) {
            ("POST", "/api/v3/user/isuserauthorized") => self.rights(query),
            ("GET", "/api/v3/projection/createprojectionbytemplate") => self.projection_by_template(query, user),
            ("POST", "/api/v3/projection/getprojectionbycriteria") => match parsed() {
                Some(criteria) => self.by_criteria(&criteria),
                None => Reply::message(StatusCode::BAD_REQUEST, "The request is invalid."),
            },
            ("POST", "/api/v3/projection/commit") => match parsed() {
                Some(form) => self.commit(&form),
                None => Reply::message(StatusCode::BAD_REQUEST, "The request is invalid."),
            },
            _ => Reply::message(StatusCode::NOT_FOUND, "No HTTP resource was found that matches the request URI."),
        }
    }

    fn sign_in(&mut self, body: &[u8]) -> Reply {
        self.sign_ins += 1;
        let form: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let name = form.get("UserName").and_then(Value::as_str).unwrap_or_default();
        let password = form.get("Password").and_then(Value::as_str).unwrap_or_default();
        let known = self.users.iter().position(|(u, _)| same_user(&u.name, name) && u.password == password);
        let Some(index) = known else {
            return Reply::message(StatusCode::UNAUTHORIZED, "The user name or password is incorrect.");
        };
        let token: String = (0..48)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[self.rng.random_range(0..36)]))
            .collect();
        self.tokens.insert(token.clone(), (index, Instant::now() + self.token_lifetime));
        super::serve::capture::secret("scsm token", &token);
        Reply::ok(Value::String(token))
    }

    fn authenticate(&self, headers: &HeaderMap) -> Option<usize> {
        let raw = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = raw.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("Token") {
            return None;
        }
        let (index, until) = self.tokens.get(token.trim())?;
        (Instant::now() < *until).then_some(*index)
    }

    fn rights(&self, query: &str) -> Reply {
        let name = query_param(query, "userName").unwrap_or_default();
        let domain = query_param(query, "domain").unwrap_or_default();
        let wanted = if domain.is_empty() { name } else { format!("{domain}\\{name}") };
        let Some((user, id)) = self.users.iter().find(|(u, _)| same_user(&u.name, &wanted)) else {
            return Reply::message(StatusCode::NOT_FOUND, "The user was not found.");
        };
        let (domain, user_name) = user.name.split_once('\\').unwrap_or(("", &user.name));
        Reply::ok(json!({
            "Id": id,
            "Name": user.display_name,
            "UserName": user_name,
            "Domain": domain,
            "Analyst": i32::from(user.analyst),
            "IsAdmin": false,
            "Security": {
                "CanCreateIncident": user.analyst,
                "CanCreateServiceRequest": true,
                "CanCreateChangeRequest": user.analyst,
                "CanCreateProblem": user.analyst,
            },
            "LanguageCode": "ENU",
        }))
    }

    fn projection_by_template(&mut self, query: &str, user: usize) -> Reply {
        let id = query_param(query, "id").unwrap_or_default().to_ascii_lowercase();
        let created_by = query_param(query, "createdById").unwrap_or_default();
        let Some((_, defaults)) = self.templates.get(&id) else {
            return Reply::message(StatusCode::NOT_FOUND, &format!("No template with id '{id}'."));
        };
        let mut projection = defaults.clone();
        projection.insert("BaseId".into(), json!(guid(&mut self.rng)));
        projection.insert("Id".into(), json!("IR{0}"));
        projection.insert("LastModified".into(), json!("0001-01-01T00:00:00"));
        projection.insert("CreatedDate".into(), json!("0001-01-01T00:00:00"));
        let name = &self.users[user].0.display_name;
        projection.insert("CreatedWorkItem".into(), json!({ "BaseId": created_by, "DisplayName": name }));
        Reply::ok(Value::Object(projection))
    }

    fn by_criteria(&self, criteria: &Value) -> Reply {
        let projection = criteria.get("Id").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
        let class = match projection.as_str() {
            INCIDENT_PROJECTION | INCIDENT_VIEW_PROJECTION => "System.WorkItem.Incident",
            CHANGE_PROJECTION | CHANGE_VIEW_PROJECTION => "System.WorkItem.ChangeRequest",
            _ => return Reply::exception(&format!("Type projection '{projection}' was not found.")),
        };
        let Some(expression) = criteria.pointer("/Criteria/Base/Expression") else {
            return Reply::exception("The criteria has no expression.");
        };
        // SCSM parses the criteria before it reads anything: a wrong one fails on an empty store too.
        let criteria = match Criteria::parse(expression) {
            Ok(criteria) => criteria,
            Err(message) => return Reply::exception(&message),
        };
        let candidates: Box<dyn Iterator<Item = &Map<String, Value>>> = match criteria.key() {
            Some(("BaseId", base)) => Box::new(self.objects.get(base).into_iter()),
            Some((_, key)) => Box::new(self.correlated.get(key).into_iter().flatten().map(|base| &self.objects[base])),
            None => Box::new(self.objects.values()),
        };
        let mut found = Vec::new();
        for object in candidates {
            if object.get("ClassName").and_then(Value::as_str) != Some(class) || !criteria.matches(object) {
                continue;
            }
            let mut answered = object.clone();
            let base = object.get("BaseId").and_then(Value::as_str).unwrap_or_default();
            for property in self.hidden.get(base).into_iter().flatten() {
                answered.remove(property);
            }
            found.push(Value::Object(answered));
        }
        Reply::ok(Value::Array(found))
    }

    fn commit(&mut self, form: &Value) -> Reply {
        let form = form.get("formJson").or_else(|| form.get("formJSON"));
        let Some(current) = form.and_then(|f| f.get("current")).and_then(Value::as_object) else {
            return Reply::message(StatusCode::BAD_REQUEST, "The request is invalid.");
        };
        let original = form.and_then(|f| f.get("original")).and_then(Value::as_object);
        let base = current.get("BaseId").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
        if base.is_empty() {
            return refused("The projection has no BaseId.");
        }
        let now = now_text();
        if self.races > 0 && self.objects.contains_key(&base) {
            self.races -= 1;
            let stored = self.objects.get_mut(&base).expect("stored");
            let before = stored.get("LastModified").and_then(Value::as_str).and_then(parse_time);
            let later = before.map_or_else(Utc::now, |t| t + chrono::Duration::milliseconds(1)).max(Utc::now());
            stored.insert("LastModified".into(), json!(time_text(later)));
        }
        if let Some(stored) = self.objects.get(&base) {
            let Some(original) = original else { return refused("An existing object needs its original.") };
            if original.get("LastModified") != stored.get("LastModified") {
                return refused(&format!(
                    "Microsoft.EnterpriseManagement.Common.DiscoveryDataModificationCollisionException: {} was \
                     changed by another user since it was read; reload it and try again.",
                    stored.get("Id").and_then(Value::as_str).unwrap_or_default()
                ));
            }
            let mut changed = stored.clone();
            for (name, value) in current {
                if SERVER_PROPERTIES.contains(&name.as_str()) || original.get(name) == Some(value) {
                    continue;
                }
                if name == "AppliesToTroubleTicket" || name == "AppliesToWorkItem" {
                    let before = original.get(name).and_then(Value::as_array).cloned().unwrap_or_default();
                    let added: Vec<Value> =
                        value.as_array().into_iter().flatten().filter(|e| !before.contains(e)).cloned().collect();
                    let log = changed.entry(name.clone()).or_insert_with(|| json!([]));
                    if let Value::Array(log) = log {
                        for mut entry in added {
                            if let Value::Object(fields) = &mut entry {
                                fields.insert("Id".into(), json!(guid(&mut self.rng)));
                            }
                            log.push(entry);
                        }
                    }
                    continue;
                }
                match normalize(name, value.clone()) {
                    Ok(value) => {
                        changed.insert(name.clone(), value);
                    }
                    Err(message) => return refused(&message),
                }
            }
            status_effects(&mut changed, &now);
            changed.insert("LastModified".into(), json!(now));
            self.put(base.clone(), changed);
            return Reply::ok(json!({ "success": true, "BaseId": base }));
        }
        // New: the class from the projection, the number from the sequence.
        let class = current.get("ClassName").and_then(Value::as_str).unwrap_or_default();
        if class != "System.WorkItem.Incident" && class != "System.WorkItem.ChangeRequest" {
            return refused(&format!("Cannot create an object of class '{class}'."));
        }
        let mut object = Map::new();
        for (name, value) in current {
            match normalize(name, value.clone()) {
                Ok(value) => {
                    object.insert(name.clone(), value);
                }
                Err(message) => return refused(&message),
            }
        }
        self.sequence += 1;
        let pattern = current.get("Id").and_then(Value::as_str).unwrap_or("IR{0}");
        object.insert("Id".into(), json!(pattern.replace("{0}", &self.sequence.to_string())));
        object.insert("BaseId".into(), json!(base));
        object.insert("CreatedDate".into(), json!(now));
        status_effects(&mut object, &now);
        object.insert("LastModified".into(), json!(now));
        self.order.push(base.clone());
        self.put(base.clone(), object);
        Reply::ok(json!({ "success": true, "BaseId": base }))
    }

    /// Stores a work item, keeping the correlation index.
    fn put(&mut self, base: String, object: Map<String, Value>) {
        let key = |object: &Map<String, Value>| {
            object.get(CORRELATION_PROPERTY).and_then(Value::as_str).map(str::to_ascii_lowercase)
        };
        if let Some(bases) = self.objects.get(&base).and_then(key).and_then(|old| self.correlated.get_mut(&old)) {
            bases.retain(|b| *b != base);
        }
        if let Some(new) = key(&object) {
            self.correlated.entry(new).or_default().push(base.clone());
        }
        self.objects.insert(base, object);
    }

    fn find(&self, id: &str) -> Option<String> {
        if self.objects.contains_key(&id.to_ascii_lowercase()) {
            return Some(id.to_ascii_lowercase());
        }
        self.objects
            .iter()
            .find(|(_, o)| o.get("Id").and_then(Value::as_str).is_some_and(|n| n.eq_ignore_ascii_case(id)))
            .map(|(base, _)| base.clone())
    }
}

fn refused(message: &str) -> Reply {
    Reply::ok(json!({ "success": false, "exception": message }))
}

fn same_user(known: &str, given: &str) -> bool {
    let split = |n: &str| match n.split_once('\\') {
        Some((domain, user)) => (domain.to_ascii_lowercase(), user.to_ascii_lowercase()),
        None => (String::new(), n.to_ascii_lowercase()),
    };
    let (known_domain, known_user) = split(known);
    let (given_domain, given_user) = split(given);
    known_user == given_user && (given_domain.is_empty() || given_domain == known_domain)
}

// ---------------------------------------------------------------------------------------------
// Work items
// ---------------------------------------------------------------------------------------------

fn enumeration(id: &str) -> Value {
    let name = ENUMERATIONS.iter().find(|(known, _, _)| *known == id).map(|(_, name, _)| *name);
    json!({ "Id": id, "Name": name })
}

/// An enumeration as stored: by a known id, with its name; `{"Id": null}` clears it.
fn normalize(property: &str, value: Value) -> Result<Value, String> {
    let is_enum = ENUMERATIONS.iter().any(|(_, _, p)| *p == property);
    let Value::Object(fields) = &value else { return Ok(value) };
    if !is_enum || !fields.contains_key("Id") {
        return Ok(value);
    }
    match fields.get("Id") {
        None | Some(Value::Null) => Ok(json!({ "Id": null, "Name": null })),
        Some(Value::String(id)) if id.is_empty() => Ok(json!({ "Id": null, "Name": null })),
        Some(Value::String(id)) => {
            let id = id.trim_matches(|c| c == '{' || c == '}').to_ascii_lowercase();
            if ENUMERATIONS.iter().any(|(known, _, p)| *known == id && *p == property) {
                Ok(enumeration(&id))
            } else {
                Err(format!("'{id}' is not a value of the enumeration of {property}."))
            }
        }
        Some(other) => Err(format!("{property}: {other} is not an enumeration id.")),
    }
}

fn status_effects(object: &mut Map<String, Value>, now: &str) {
    let status = object.get("Status").and_then(|s| s.get("Id")).and_then(Value::as_str).unwrap_or_default().to_string();
    let empty = |object: &Map<String, Value>, name: &str| {
        object.get(name).and_then(Value::as_str).and_then(parse_time).is_none()
    };
    if status == STATUS_RESOLVED && empty(object, "ResolvedDate") {
        object.insert("ResolvedDate".into(), json!(now));
    }
    if (status == STATUS_CLOSED || status == CHANGE_CLOSED) && empty(object, "ClosedDate") {
        object.insert("ClosedDate".into(), json!(now));
    }
}

/// What SCSM's Default Incident Template gives a new incident.
fn incident_defaults() -> Map<String, Value> {
    let Value::Object(defaults) = json!({
        "ClassName": "System.WorkItem.Incident",
        "ClassTypeId": INCIDENT_CLASS,
        "FullClassName": "Incident",
        "Title": "",
        "Description": "",
        "Status": enumeration(STATUS_ACTIVE),
        "Urgency": enumeration(URGENCY_MEDIUM),
        "Impact": enumeration(IMPACT_MEDIUM),
        "Priority": 5,
        "Source": enumeration("615778d5-485a-752f-3c5d-f412f806e624"),
        "Classification": { "Id": null, "Name": null },
        "TierQueue": { "Id": null, "Name": null },
        "ResolutionCategory": { "Id": null, "Name": null },
        "ResolutionDescription": null,
        "ResolvedDate": null,
        "ClosedDate": null,
        "Escalated": false,
        "AppliesToTroubleTicket": [],
        "AssignedWorkItem": { "BaseId": null, "DisplayName": null },
    }) else {
        unreachable!("an object")
    };
    defaults
}

// ---------------------------------------------------------------------------------------------
// Criteria
// ---------------------------------------------------------------------------------------------

/// A criteria expression, parsed once per query (as SCSM's criteria parser does before it reads anything) and
/// then tried on each work item.
enum Criteria {
    Simple { left: Left, operator: Operator, right: String, right_time: Option<DateTime<Utc>> },
    All(Vec<Criteria>),
    Any(Vec<Criteria>),
}

/// What a simple expression compares: a property of the work item, by the name it is stored under.
enum Left {
    /// A generic property (`Id`, `LastModified`...), stored as a plain value.
    Generic(&'static str),
    /// A class property; an enumeration compares by its id.
    Property(String),
}

#[derive(Clone, Copy, PartialEq)]
enum Operator {
    Equal,
    NotEqual,
    Greater,
    GreaterEqual,
    Less,
    LessEqual,
    Like,
}

impl Criteria {
    fn parse(expression: &Value) -> Result<Criteria, String> {
        if let Some(simple) = expression.get("SimpleExpression") {
            return Criteria::simple(simple);
        }
        for (group, all) in [("And", true), ("Or", false)] {
            if let Some(inner) = expression.get(group) {
                let items = match inner.get("Expression") {
                    Some(Value::Array(items)) => items.iter().map(Criteria::parse).collect::<Result<_, _>>()?,
                    Some(single) => vec![Criteria::parse(single)?],
                    None => return Err(format!("{group} has no Expression.")),
                };
                return Ok(if all { Criteria::All(items) } else { Criteria::Any(items) });
            }
        }
        Err(format!("The criteria expression {expression} is not valid."))
    }

    fn simple(simple: &Value) -> Result<Criteria, String> {
        let left = simple.get("ValueExpressionLeft").ok_or("ValueExpressionLeft is missing.")?;
        let operator = simple.get("Operator").and_then(Value::as_str).ok_or("Operator is missing.")?;
        let right = simple.pointer("/ValueExpressionRight/Value").and_then(Value::as_str).ok_or("Value is missing.")?;
        let left = if let Some(generic) = left.get("GenericProperty").and_then(Value::as_str) {
            Left::Generic(match generic {
                "Id" => "BaseId",
                "LastModified" => "LastModified",
                "TimeAdded" => "CreatedDate",
                "Name" | "DisplayName" => "Id",
                other => return Err(format!("'{other}' is not a generic property.")),
            })
        } else if let Some(path) = left.get("Property").and_then(Value::as_str) {
            let (type_id, name) = property_path(path).ok_or_else(|| format!("'{path}' is not a property path."))?;
            let declared = match type_id.as_str() {
                INCIDENT_CLASS => INCIDENT_PROPERTIES.contains(&name.as_str()),
                CHANGE_CLASS => CHANGE_PROPERTIES.contains(&name.as_str()),
                EXTENSION_CLASS_ID => name == CORRELATION_PROPERTY,
                other => return Err(format!("The type '{other}' was not found.")),
            };
            if !declared {
                return Err(format!("The property '{name}' is not defined on type '{type_id}'."));
            }
            Left::Property(name)
        } else {
            return Err("ValueExpressionLeft names no property.".into());
        };
        let operator = match operator {
            "Equal" => Operator::Equal,
            "NotEqual" => Operator::NotEqual,
            "Greater" => Operator::Greater,
            "GreaterEqual" => Operator::GreaterEqual,
            "Less" => Operator::Less,
            "LessEqual" => Operator::LessEqual,
            "Like" => Operator::Like,
            other => return Err(format!("'{other}' is not an operator.")),
        };
        Ok(Criteria::Simple { left, operator, right: right.to_ascii_lowercase(), right_time: parse_time(right) })
    }

    /// Where the criteria is one equality on an indexed column (the BaseId, or the correlation property), that
    /// column and the value: SCSM seeks the index rather than scanning.
    fn key(&self) -> Option<(&str, &str)> {
        match self {
            Criteria::Simple { left: Left::Generic("BaseId"), operator: Operator::Equal, right, .. } => {
                Some(("BaseId", right))
            }
            Criteria::Simple { left: Left::Property(name), operator: Operator::Equal, right, .. }
                if name == CORRELATION_PROPERTY =>
            {
                Some((CORRELATION_PROPERTY, right))
            }
            _ => None,
        }
    }

    fn matches(&self, object: &Map<String, Value>) -> bool {
        let (left, operator, right, right_time) = match self {
            Criteria::All(items) => return items.iter().all(|c| c.matches(object)),
            Criteria::Any(items) => return items.iter().any(|c| c.matches(object)),
            Criteria::Simple { left, operator, right, right_time } => (left, *operator, right, right_time),
        };
        let value = match left {
            Left::Generic(name) => object.get(*name),
            Left::Property(name) => match object.get(name) {
                Some(Value::Object(enumeration)) => enumeration.get("Id"),
                value => value,
            },
        };
        let text = match value {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(std::borrow::Cow::Borrowed(s.as_str())),
            Some(other) => Some(std::borrow::Cow::Owned(other.to_string())),
        };
        let ordering = match (&text, right_time) {
            (Some(t), Some(r)) if parse_time(t).is_some() => parse_time(t).map(|t| t.cmp(r)),
            (Some(t), _) => Some(t.bytes().map(|b| b.to_ascii_lowercase()).cmp(right.bytes())),
            (None, _) => None,
        };
        use std::cmp::Ordering::*;
        match operator {
            Operator::Equal => ordering == Some(Equal),
            Operator::NotEqual => ordering != Some(Equal),
            Operator::Greater => ordering == Some(Greater),
            Operator::GreaterEqual => matches!(ordering, Some(Greater | Equal)),
            Operator::Less => ordering == Some(Less),
            Operator::LessEqual => matches!(ordering, Some(Less | Equal)),
            Operator::Like => text.is_some_and(|t| like(&t.to_ascii_lowercase(), right)),
        }
    }
}

/// `$Context/Property[Type='<id>']/Name$` → (id, name).
fn property_path(path: &str) -> Option<(String, String)> {
    let rest = path.trim().strip_prefix("$Context/Property[Type='")?;
    let (type_id, rest) = rest.split_once("']/")?;
    let name = rest.strip_suffix('$')?;
    Some((type_id.trim_matches(|c| c == '{' || c == '}').to_ascii_lowercase(), name.to_string()))
}

/// SQL's LIKE with `%` only.
fn like(text: &str, pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('%').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return text == pattern;
    }
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Times and ids
// ---------------------------------------------------------------------------------------------

fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    let time = DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(raw.trim(), "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc()))
        .ok()?;
    (time.timestamp() > -2_208_988_800).then_some(time)
}

fn time_text(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn now_text() -> String {
    time_text(Utc::now())
}

fn guid(rng: &mut StdRng) -> String {
    let n: u128 = rng.random();
    let hex = format!("{n:032x}");
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}
