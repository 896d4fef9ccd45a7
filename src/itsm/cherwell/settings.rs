//! A Cherwell connection's settings, read by one parser from the environment (`ITSMC_URL`, `ITSMC_CHERWELL_*`)
//! and from a connections file (whose `settings` table names the same settings without `ITSMC_`, lowercased):
//! [`settings_from_lookup`].

use crate::config::{ConfigError, Secret, SecretSetting, invalid};
use crate::sync::schema;

/// How CSM checks the user's credentials (the token request's `auth_mode`); it must be a mode the CSM
/// Browser Client is configured for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// CSM's own user names and passwords (CSM's default).
    Internal,
    Ldap,
    Saml,
    Windows,
    /// Whichever modes CSM has enabled.
    Auto,
}

impl AuthMode {
    /// As the token request spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Internal => "Internal",
            AuthMode::Ldap => "LDAP",
            AuthMode::Saml => "SAML",
            AuthMode::Windows => "Windows",
            AuthMode::Auto => "Auto",
        }
    }

    fn parse(raw: &str) -> Option<AuthMode> {
        [AuthMode::Internal, AuthMode::Ldap, AuthMode::Saml, AuthMode::Windows, AuthMode::Auto]
            .into_iter()
            .find(|mode| mode.as_str().eq_ignore_ascii_case(raw.trim()))
    }
}

/// Everything a Cherwell connection needs beyond the product-neutral connection settings.
#[derive(Debug, Clone)]
pub struct CherwellSettings {
    /// The REST API's base, without a trailing slash: `https://host/CherwellAPI`.
    pub url: String,
    pub username: String,
    pub password: SecretSetting,
    /// The REST API client key made in CSM Administrator (the token request's `client_id`).
    pub client_id: String,
    pub auth_mode: AuthMode,
    /// Business object names: the work items itsmc creates, and the change requests the sync reads.
    pub incident_object: String,
    pub change_object: String,
    /// The Incident field that holds itsmc's correlation key (a text field the administrator adds).
    pub correlation_field: String,
    pub status_field: String,
    /// The status a resolve sets.
    pub resolved_status: String,
    /// The status a reopen sets.
    pub reopen_status: String,
    /// Statuses in which an incident is no longer active (the resolved status among them).
    pub closed_statuses: Vec<String>,
    /// Where a resolve's close notes go.
    pub close_description_field: String,
    /// Where a resolve's close code goes; `None`: the close code is not sent.
    pub close_code_field: Option<String>,
    /// The Incident relationship whose Journal - Note records hold itsmc's notes.
    pub journal_relationship: String,
    /// How the API user's culture writes date-times (chrono's `strftime` syntax): CSM sends and reads them so.
    pub date_format: String,
    /// `ServiceDesk_CL` columns filled from other fields than the defaults, as (column, field).
    pub sync_fields: Vec<(String, String)>,
}

/// The `ITSMC_CHERWELL_*` settings, as the connections file's `settings` table may name them.
pub const SETTINGS: &[&str] = &[
    "ITSMC_CHERWELL_AUTH_MODE",
    "ITSMC_CHERWELL_INCIDENT_OBJECT",
    "ITSMC_CHERWELL_CHANGE_OBJECT",
    "ITSMC_CHERWELL_CORRELATION_FIELD",
    "ITSMC_CHERWELL_STATUS_FIELD",
    "ITSMC_CHERWELL_RESOLVED_STATUS",
    "ITSMC_CHERWELL_REOPEN_STATUS",
    "ITSMC_CHERWELL_CLOSED_STATUSES",
    "ITSMC_CHERWELL_CLOSE_DESCRIPTION_FIELD",
    "ITSMC_CHERWELL_CLOSE_CODE_FIELD",
    "ITSMC_CHERWELL_JOURNAL_RELATIONSHIP",
    "ITSMC_CHERWELL_DATE_FORMAT",
    "ITSMC_CHERWELL_SYNC_FIELDS",
];

/// The field itsmc keeps its correlation key in unless told otherwise; the administrator adds it to Incident.
pub const DEFAULT_CORRELATION_FIELD: &str = "ItsmcCorrelationKey";
/// The US English culture's general date and long time pattern, as CSM writes date-times for such a user.
pub const DEFAULT_DATE_FORMAT: &str = "%m/%d/%Y %I:%M:%S %p";

/// Reads one Cherwell connection named `connection` through `lookup` (the environment, or a connections file's
/// entry); with `vault`, a password the settings leave out is read from Key Vault.
pub fn settings_from_lookup(
    lookup: &impl Fn(&str) -> Option<String>,
    connection: &str,
    vault: bool,
) -> Result<CherwellSettings, ConfigError> {
    if let Some(raw) = lookup("ITSMC_WORK_ITEM_TYPE") {
        let kind: crate::workitem::WorkItemType =
            raw.parse().map_err(|e: String| invalid("ITSMC_WORK_ITEM_TYPE", e))?;
        if kind != crate::workitem::WorkItemType::Incident {
            return Err(invalid(
                "ITSMC_WORK_ITEM_TYPE",
                format!("Cherwell has no {} work items; itsmc creates Incidents there", kind.as_str()),
            ));
        }
    }
    let url = api_url(&lookup("ITSMC_URL").ok_or_else(|| {
        invalid("ITSMC_URL", "Cherwell needs the REST API's address, e.g. https://cherwell.contoso.com/CherwellAPI")
    })?)?;
    let username = lookup("ITSMC_USERNAME").ok_or_else(|| invalid("ITSMC_USERNAME", "Cherwell needs a user name"))?;
    let password = match lookup("ITSMC_PASSWORD") {
        Some(password) => SecretSetting::Value(Secret::new(password)),
        None if vault => {
            let mut name = crate::secrets::SecretNames::for_connection(connection).password;
            if let Some(given) = lookup("ITSMC_PASSWORD_SECRET_NAME") {
                crate::secrets::check_name(&given).map_err(|e| invalid("ITSMC_PASSWORD_SECRET_NAME", e.to_string()))?;
                name = given;
            }
            SecretSetting::KeyVault(name)
        }
        None => {
            return Err(invalid(
                "ITSMC_PASSWORD",
                "Cherwell needs the user's password (or ITSMC_KEY_VAULT_URL holding it)",
            ));
        }
    };
    let client_id = lookup("ITSMC_CLIENT_ID").filter(|id| !id.trim().is_empty()).ok_or_else(|| {
        invalid(
            "ITSMC_CLIENT_ID",
            "Cherwell needs the REST API client key (CSM Administrator: Security, REST API client settings)",
        )
    })?;
    let auth_mode = match lookup("ITSMC_CHERWELL_AUTH_MODE") {
        None => AuthMode::Internal,
        Some(raw) => AuthMode::parse(&raw).ok_or_else(|| {
            invalid("ITSMC_CHERWELL_AUTH_MODE", format!("'{raw}' is not Internal, LDAP, SAML, Windows or Auto"))
        })?,
    };
    let name = |setting: &str, default: &str| -> Result<String, ConfigError> {
        let value = lookup(setting).unwrap_or_else(|| default.to_string());
        let value = value.trim().to_string();
        if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(setting, format!("'{value}' is not a Cherwell name (letters, digits and _)")));
        }
        Ok(value)
    };
    let status = |setting: &str, default: &str| -> Result<String, ConfigError> {
        let value = lookup(setting).unwrap_or_else(|| default.to_string()).trim().to_string();
        if value.is_empty() || value.contains(',') {
            return Err(invalid(setting, "name one status (no commas)"));
        }
        Ok(value)
    };
    let resolved_status = status("ITSMC_CHERWELL_RESOLVED_STATUS", "Resolved")?;
    let reopen_status = status("ITSMC_CHERWELL_REOPEN_STATUS", "Reopened")?;
    let closed_statuses: Vec<String> = lookup("ITSMC_CHERWELL_CLOSED_STATUSES")
        .unwrap_or_else(|| "Resolved,Closed".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let is_closed = |status: &str| closed_statuses.iter().any(|s| s.eq_ignore_ascii_case(status));
    if !is_closed(&resolved_status) {
        return Err(invalid(
            "ITSMC_CHERWELL_CLOSED_STATUSES",
            format!(
                "'{}' leaves out the resolved status '{resolved_status}' (ITSMC_CHERWELL_RESOLVED_STATUS): an \
                 incident itsmc resolved would count as active",
                closed_statuses.join(",")
            ),
        ));
    }
    if is_closed(&reopen_status) {
        return Err(invalid(
            "ITSMC_CHERWELL_REOPEN_STATUS",
            format!(
                "'{reopen_status}' is one of ITSMC_CHERWELL_CLOSED_STATUSES: a reopened incident would stay closed"
            ),
        ));
    }
    let journal_relationship = lookup("ITSMC_CHERWELL_JOURNAL_RELATIONSHIP")
        .unwrap_or_else(|| "Incident Owns Journals".into())
        .trim()
        .to_string();
    if journal_relationship.is_empty() {
        return Err(invalid(
            "ITSMC_CHERWELL_JOURNAL_RELATIONSHIP",
            "name the relationship (e.g. Incident Owns Journals)",
        ));
    }
    let date_format = lookup("ITSMC_CHERWELL_DATE_FORMAT").unwrap_or_else(|| DEFAULT_DATE_FORMAT.into());
    check_date_format(&date_format).map_err(|e| invalid("ITSMC_CHERWELL_DATE_FORMAT", e))?;
    let sync_fields = match lookup("ITSMC_CHERWELL_SYNC_FIELDS") {
        None => Vec::new(),
        Some(raw) => sync_fields(&raw).map_err(|e| invalid("ITSMC_CHERWELL_SYNC_FIELDS", e))?,
    };
    Ok(CherwellSettings {
        url,
        username,
        password,
        client_id: client_id.trim().to_string(),
        auth_mode,
        incident_object: name("ITSMC_CHERWELL_INCIDENT_OBJECT", "Incident")?,
        change_object: name("ITSMC_CHERWELL_CHANGE_OBJECT", "ChangeRequest")?,
        correlation_field: name("ITSMC_CHERWELL_CORRELATION_FIELD", DEFAULT_CORRELATION_FIELD)?,
        status_field: name("ITSMC_CHERWELL_STATUS_FIELD", "Status")?,
        resolved_status,
        reopen_status,
        closed_statuses,
        close_description_field: name("ITSMC_CHERWELL_CLOSE_DESCRIPTION_FIELD", "CloseDescription")?,
        close_code_field: match lookup("ITSMC_CHERWELL_CLOSE_CODE_FIELD") {
            Some(_) => Some(name("ITSMC_CHERWELL_CLOSE_CODE_FIELD", "")?),
            None => None,
        },
        journal_relationship,
        date_format,
        sync_fields,
    })
}

/// The REST API's base URL: https (http only to this machine), no credentials, no trailing slash; a bare host
/// gets CSM's default path, `/CherwellAPI`.
fn api_url(raw: &str) -> Result<String, ConfigError> {
    let url = crate::config::base_url("ITSMC_URL", raw)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("ITSMC_URL", format!("'{raw}' has a query or fragment; give the REST API's base only")));
    }
    let base = url.as_str().trim_end_matches('/').to_string();
    Ok(if url.path() == "/" { format!("{base}/CherwellAPI") } else { base })
}

/// A date format must hold a whole date and time to the minute, and read back what it writes.
fn check_date_format(format: &str) -> Result<(), String> {
    use chrono::TimeZone;
    let has = |spec: &[&str]| spec.iter().any(|s| format.contains(s));
    let complete = has(&["%Y", "%y", "%F", "%D"])
        && has(&["%m", "%b", "%B", "%F", "%D"])
        && has(&["%d", "%e", "%F", "%D"])
        && has(&["%H", "%I", "%k", "%l", "%R", "%T"])
        && has(&["%M", "%R", "%T"]);
    if !complete {
        return Err(format!(
            "'{format}' does not give the year, month, day, hour and minute (chrono's strftime syntax, e.g. {DEFAULT_DATE_FORMAT})"
        ));
    }
    let sample = chrono::Utc.with_ymd_and_hms(2026, 11, 25, 21, 7, 9).single().ok_or("no sample time")?;
    let mut written = String::new();
    std::fmt::Write::write_fmt(&mut written, format_args!("{}", sample.format(format)))
        .map_err(|_| format!("'{format}' is not a valid strftime format"))?;
    match chrono::NaiveDateTime::parse_from_str(&written, format) {
        Ok(read) if read.date() == sample.date_naive() && read.format("%H:%M").to_string() == "21:07" => Ok(()),
        _ => Err(format!("'{format}' writes '{written}', which it cannot read back")),
    }
}

/// `Column=Field` pairs, comma-separated: each column one of `ServiceDesk_CL`'s that a field fills.
fn sync_fields(raw: &str) -> Result<Vec<(String, String)>, String> {
    let schema = schema::service_desk();
    let own = ["TimeGenerated", "ServiceDeskConnectionName_s", "ServiceDeskWorkItemType_s"];
    let mut pairs = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (column, field) = pair.split_once('=').ok_or_else(|| format!("'{pair}' is not Column=Field"))?;
        let (column, field) = (column.trim(), field.trim());
        if !schema.columns.iter().any(|c| c.name == column) || own.contains(&column) {
            return Err(format!("'{column}' is not a ServiceDesk_CL column a Cherwell field fills"));
        }
        if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("'{field}' is not a Cherwell field name"));
        }
        pairs.push((column.to_string(), field.to_string()));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_formats_must_read_back_what_they_write() {
        assert!(check_date_format(DEFAULT_DATE_FORMAT).is_ok());
        assert!(check_date_format("%d/%m/%Y %H:%M").is_ok());
        assert!(check_date_format("%d.%m.%Y %H:%M:%S").is_ok());
        assert!(check_date_format("%m/%d/%Y").is_err());
        assert!(check_date_format("%Y-%m-%d %I:%M:%S").is_err(), "12-hour clock without AM/PM");
    }

    #[test]
    fn a_bare_host_gets_the_default_path() {
        assert_eq!(api_url("https://csm.contoso.com").unwrap(), "https://csm.contoso.com/CherwellAPI");
        assert_eq!(api_url("https://csm.contoso.com/CherwellAPI/").unwrap(), "https://csm.contoso.com/CherwellAPI");
        assert!(api_url("http://csm.contoso.com/CherwellAPI").is_err());
        assert_eq!(api_url("http://127.0.0.1:8080/CherwellAPI").unwrap(), "http://127.0.0.1:8080/CherwellAPI");
    }
}
