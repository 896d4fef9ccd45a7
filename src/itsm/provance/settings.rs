//! A Provance connection's settings, read through one lookup for both sources: the environment
//! (`ITSMC_URL`, `ITSMC_CLIENT_ID`, `ITSMC_PROVANCE_*`) and a connections file, whose `[connections.settings]`
//! table names the same settings without `ITSMC_`, in lower case (`provance_tenant_id = "..."`); `config.rs`
//! builds the file's lookup and renames the settings in errors.

use crate::config::{ConfigError, Secret, SecretSetting, invalid};
use crate::config::{guid, is_guid};

/// Every setting of this file's own, as the environment names them (a connections file's `settings` table
/// takes them without `ITSMC_`, in lower case).
pub const SETTINGS: &[&str] = &[
    "ITSMC_PROVANCE_TENANT_ID",
    "ITSMC_PROVANCE_AUTHORITY",
    "ITSMC_PROVANCE_CUSTOMER",
    "ITSMC_PROVANCE_CORRELATION_FIELD",
    "ITSMC_PROVANCE_CI_FIELD",
    "ITSMC_PROVANCE_CHANGE_ENTITY_SET",
    "ITSMC_PROVANCE_CHANGE_COLUMNS",
    "ITSMC_PROVANCE_RESOLVED_STATUS",
];

/// Entra's public cloud; national clouds have their own (`https://login.microsoftonline.us`, ...).
pub const PUBLIC_AUTHORITY: &str = "https://login.microsoftonline.com";

#[derive(Debug, Clone)]
pub struct ProvanceSettings {
    /// The environment (organization) URL without a trailing slash, e.g. `https://contoso.crm.dynamics.com`;
    /// the Web API is under `/api/data/v9.2`, and tokens are asked for `{url}/.default`.
    pub url: String,
    pub auth: ProvanceAuth,
    /// The account or contact every incident is for (Dataverse requires a customer on a case).
    pub customer: Customer,
    /// The incident column (a text column of 40 characters or more) that carries itsmc's correlation key.
    pub correlation_field: String,
    /// A text column of the incident for the configuration item's name, when the organization has one.
    pub ci_field: Option<String>,
    /// The entity set of Provance's change requests (`None`: change requests are not synced).
    pub change_entity_set: Option<String>,
    /// `ServiceDesk_CL` columns of change requests filled from other columns than the defaults.
    pub change_columns: Vec<(String, String)>,
    /// The `statuscode` a resolve closes the incident with (`CloseIncident`'s `Status`): 5 Problem Solved.
    pub resolved_status: u32,
}

/// How itsmc signs in to Dataverse.
#[derive(Debug, Clone)]
pub enum ProvanceAuth {
    /// The connection's own app registration, with its client secret (given, or in Key Vault).
    ClientSecret { tenant_id: String, client_id: String, secret: SecretSetting, authority: String },
    /// The function app's managed identity (a user-assigned one by client id), registered in Dataverse as an
    /// application user.
    ManagedIdentity { client_id: Option<String> },
}

/// The customer lookup of a case: an account or a contact, bound as `customerid_account@odata.bind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// `accounts` or `contacts`.
    pub entity_set: String,
    pub id: String,
}

impl Customer {
    /// The single-valued navigation property and the reference, as a create binds them.
    pub fn binding(&self) -> (String, String) {
        let target = if self.entity_set == "accounts" { "account" } else { "contact" };
        (format!("customerid_{target}@odata.bind"), format!("/{}({})", self.entity_set, self.id))
    }
}

/// Settings of ServiceNow's that mean nothing to Dataverse; set, they are a mistake worth naming.
const SERVICENOW_ONLY: [&str; 7] = [
    "ITSMC_USERNAME",
    "ITSMC_PASSWORD",
    "ITSMC_CALLER_ID",
    "ITSMC_ASSIGNMENT_GROUP",
    "ITSMC_CATEGORY",
    "ITSMC_SUBCATEGORY",
    "ITSMC_CONTACT_TYPE",
];

/// A Provance connection named `connection` from `lookup`; `vault`: Key Vault is configured, and a client
/// secret the settings leave out is read from it.
pub fn settings_from_lookup(
    lookup: &impl Fn(&str) -> Option<String>,
    connection: &str,
    vault: bool,
) -> Result<ProvanceSettings, ConfigError> {
    for setting in SERVICENOW_ONLY {
        if lookup(setting).is_some() {
            return Err(invalid(
                setting,
                "is a ServiceNow setting: Provance signs in with an app registration or a managed identity, and \
                 other Dataverse columns are set in a connections file's fields",
            ));
        }
    }
    if let Some(kind) = lookup("ITSMC_WORK_ITEM_TYPE")
        && !kind.trim().eq_ignore_ascii_case("incident")
    {
        return Err(invalid(
            "ITSMC_WORK_ITEM_TYPE",
            format!("'{kind}': Provance (Dataverse) has incidents (cases) only; Event and Alert are ServiceNow's"),
        ));
    }
    let raw = lookup("ITSMC_URL").ok_or_else(|| {
        invalid("ITSMC_URL", "Provance needs the environment URL, e.g. https://contoso.crm.dynamics.com")
    })?;
    let url = organization_url(&raw)?;
    let auth = auth(lookup, connection, vault)?;
    let customer = customer(lookup)?;
    let correlation_field = lookup("ITSMC_PROVANCE_CORRELATION_FIELD").ok_or_else(|| {
        invalid(
            "ITSMC_PROVANCE_CORRELATION_FIELD",
            "name the incident's text column (40 characters or more, e.g. new_itsmccorrelationkey) that keeps \
             itsmc's correlation key",
        )
    })?;
    let correlation_field = column("ITSMC_PROVANCE_CORRELATION_FIELD", &correlation_field)?;
    let ci_field = lookup("ITSMC_PROVANCE_CI_FIELD").map(|c| column("ITSMC_PROVANCE_CI_FIELD", &c)).transpose()?;
    let change_entity_set = lookup("ITSMC_PROVANCE_CHANGE_ENTITY_SET")
        .map(|set| column("ITSMC_PROVANCE_CHANGE_ENTITY_SET", &set))
        .transpose()?;
    let synced = lookup("ITSMC_SYNC_KINDS").unwrap_or_else(|| "ChangeRequest".into());
    let syncs_changes = synced.split(',').any(|k| k.trim().eq_ignore_ascii_case("ChangeRequest"));
    if syncs_changes && change_entity_set.is_none() {
        return Err(invalid(
            "ITSMC_PROVANCE_CHANGE_ENTITY_SET",
            "the sync reads change requests: name the entity set Provance keeps them in (Advanced Settings > \
             Customizations shows it), or sync incidents only (ITSMC_SYNC_KINDS=Incident)",
        ));
    }
    let change_columns = match lookup("ITSMC_PROVANCE_CHANGE_COLUMNS") {
        Some(raw) => change_columns(&raw)?,
        None => Vec::new(),
    };
    let resolved_status = match lookup("ITSMC_PROVANCE_RESOLVED_STATUS") {
        None => 5,
        Some(raw) => raw.trim().parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
            invalid(
                "ITSMC_PROVANCE_RESOLVED_STATUS",
                format!("'{raw}' is not a status reason value of a resolved case (5 Problem Solved, 1000 Information Provided)"),
            )
        })?,
    };
    Ok(ProvanceSettings {
        url,
        auth,
        customer,
        correlation_field,
        ci_field,
        change_entity_set,
        change_columns,
        resolved_status,
    })
}

fn organization_url(raw: &str) -> Result<String, ConfigError> {
    let url = crate::config::https_url("ITSMC_URL", raw)?;
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
        return Err(invalid("ITSMC_URL", "give the environment URL alone, without credentials or a query"));
    }
    if url.path() != "/" {
        return Err(invalid(
            "ITSMC_URL",
            format!(
                "'{raw}' has a path: give the environment URL (https://contoso.crm.dynamics.com), not the Web API \
                 endpoint; itsmc adds /api/data/v9.2"
            ),
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn auth(lookup: &impl Fn(&str) -> Option<String>, connection: &str, vault: bool) -> Result<ProvanceAuth, ConfigError> {
    let client_id = lookup("ITSMC_CLIENT_ID");
    // A secret pasted from a file or a prompt often keeps its line end; Entra would refuse it as wrong.
    let secret = lookup("ITSMC_CLIENT_SECRET").map(|s| Secret::new(s.trim_end_matches(['\r', '\n'])));
    let Some(client_id) = client_id else {
        if secret.is_some() {
            return Err(invalid("ITSMC_CLIENT_ID", "the client secret needs its app registration's client id"));
        }
        return Ok(ProvanceAuth::ManagedIdentity {
            client_id: lookup(crate::secrets::MANAGED_IDENTITY_CLIENT_ID_SETTING),
        });
    };
    let client_id = guid("ITSMC_CLIENT_ID", &client_id, "the app registration's Application (client) ID")?;
    let secret = match (secret, vault) {
        (Some(secret), _) => SecretSetting::Value(secret),
        (None, true) => {
            let mut name = crate::secrets::SecretNames::for_connection(connection).client_secret;
            if let Some(given) = lookup("ITSMC_CLIENT_SECRET_SECRET_NAME") {
                crate::secrets::check_name(&given)
                    .map_err(|e| invalid("ITSMC_CLIENT_SECRET_SECRET_NAME", e.to_string()))?;
                name = given;
            }
            SecretSetting::KeyVault(name)
        }
        (None, false) => {
            return Err(invalid(
                "ITSMC_CLIENT_SECRET",
                "the app registration needs its client secret (or ITSMC_KEY_VAULT_URL holding it); leave \
                 ITSMC_CLIENT_ID out to sign in with the app's managed identity",
            ));
        }
    };
    let tenant = lookup("ITSMC_PROVANCE_TENANT_ID").ok_or_else(|| {
        invalid(
            "ITSMC_PROVANCE_TENANT_ID",
            "the app registration's Directory (tenant) ID is needed with a client secret",
        )
    })?;
    let tenant = tenant.trim().to_string();
    let domain = tenant.contains('.')
        && tenant
            .split('.')
            .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !(domain || is_guid(&tenant)) {
        return Err(invalid(
            "ITSMC_PROVANCE_TENANT_ID",
            format!("'{tenant}' is neither a tenant id (a GUID) nor a domain (contoso.onmicrosoft.com)"),
        ));
    }
    let authority = match lookup("ITSMC_PROVANCE_AUTHORITY") {
        None => PUBLIC_AUTHORITY.to_string(),
        Some(raw) => {
            let url = url::Url::parse(raw.trim())
                .map_err(|e| invalid("ITSMC_PROVANCE_AUTHORITY", format!("'{raw}' is not a URL ({e})")))?;
            // The SDK takes only https, even for a test authority on this machine.
            if url.scheme() != "https" || url.path() != "/" || url.query().is_some() {
                return Err(invalid(
                    "ITSMC_PROVANCE_AUTHORITY",
                    format!("'{raw}' must be an https:// host alone, e.g. https://login.microsoftonline.us"),
                ));
            }
            url.as_str().trim_end_matches('/').to_string()
        }
    };
    Ok(ProvanceAuth::ClientSecret { tenant_id: tenant, client_id, secret, authority })
}

fn customer(lookup: &impl Fn(&str) -> Option<String>) -> Result<Customer, ConfigError> {
    const SETTING: &str = "ITSMC_PROVANCE_CUSTOMER";
    let raw = lookup(SETTING).ok_or_else(|| {
        invalid(
            SETTING,
            "Dataverse needs a customer on every case: name the account or contact, as accounts(<accountid>) or \
             contacts(<contactid>)",
        )
    })?;
    let text = raw.trim().trim_start_matches('/');
    let parsed = text.strip_suffix(')').and_then(|t| t.split_once('(')).and_then(|(set, id)| {
        let set = set.to_ascii_lowercase();
        (set == "accounts" || set == "contacts").then_some((set, id))
    });
    let Some((entity_set, id)) = parsed else {
        return Err(invalid(SETTING, format!("'{raw}' is not accounts(<accountid>) or contacts(<contactid>)")));
    };
    let id = guid(SETTING, id, "the account's or contact's id")?;
    Ok(Customer { entity_set, id })
}

/// A Dataverse logical name (column or entity set): lower-case letters, digits and `_`, starting with a letter.
fn column(setting: &str, raw: &str) -> Result<String, ConfigError> {
    let name = raw.trim();
    let valid = (1..=100).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(invalid(
            setting,
            format!("'{raw}' is not a Dataverse logical name (lower-case letters, digits and _, e.g. new_itsmckey)"),
        ));
    }
    Ok(name.to_string())
}

/// `Column=field, Column=field`: `ServiceDesk_CL` columns of change requests and the columns they come from.
fn change_columns(raw: &str) -> Result<Vec<(String, String)>, ConfigError> {
    const SETTING: &str = "ITSMC_PROVANCE_CHANGE_COLUMNS";
    let schema = crate::sync::schema::service_desk();
    let own = ["TimeGenerated", "ServiceDeskConnectionName_s", "ServiceDeskWorkItemType_s"];
    let mut pairs = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((target, source)) = pair.split_once('=') else {
            return Err(invalid(SETTING, format!("'{pair}' is not Column=field")));
        };
        let target = target.trim();
        if own.contains(&target) || !schema.columns.iter().any(|c| c.name == target) {
            return Err(invalid(
                SETTING,
                format!("'{target}' is not a ServiceDesk_CL column itsmc fills from a field"),
            ));
        }
        pairs.push((target.to_string(), column(SETTING, source)?));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    const BASE: [(&str, &str); 5] = [
        ("ITSMC_URL", "https://contoso.crm4.dynamics.com/"),
        ("ITSMC_PROVANCE_CUSTOMER", "accounts(4C1F8A0E-2B9D-4F57-9A43-0D8E5B7C2F14)"),
        ("ITSMC_PROVANCE_CORRELATION_FIELD", "new_itsmckey"),
        ("ITSMC_PROVANCE_CHANGE_ENTITY_SET", "prov_changes"),
        ("ITSMC_SYNC_KINDS", "Incident,ChangeRequest"),
    ];

    #[test]
    fn without_an_app_registration_the_managed_identity_signs_in() {
        let settings = settings_from_lookup(&lookup(&BASE), "prod", false).unwrap();
        assert_eq!(settings.url, "https://contoso.crm4.dynamics.com");
        assert!(matches!(settings.auth, ProvanceAuth::ManagedIdentity { client_id: None }));
        assert_eq!(
            settings.customer.binding(),
            ("customerid_account@odata.bind".into(), "/accounts(4c1f8a0e-2b9d-4f57-9a43-0d8e5b7c2f14)".into())
        );
        assert_eq!(settings.resolved_status, 5);
    }

    #[test]
    fn a_client_secret_from_key_vault_needs_the_tenant() {
        let mut pairs = BASE.to_vec();
        pairs.push(("ITSMC_CLIENT_ID", "0d5f1e0e-7c3a-4b8e-9f21-6a4b3c2d1e0f"));
        let error = settings_from_lookup(&lookup(&pairs), "prod", true).unwrap_err();
        assert_eq!(error.setting, "ITSMC_PROVANCE_TENANT_ID");
        pairs.push(("ITSMC_PROVANCE_TENANT_ID", "contoso.onmicrosoft.com"));
        let settings = settings_from_lookup(&lookup(&pairs), "prod_eu", true).unwrap();
        let ProvanceAuth::ClientSecret { secret, authority, .. } = settings.auth else { panic!("a client secret") };
        assert_eq!(secret, SecretSetting::KeyVault("prod-eu-client-secret".into()));
        assert_eq!(authority, PUBLIC_AUTHORITY);
    }

    #[test]
    fn change_columns_name_real_columns() {
        assert_eq!(
            change_columns("Risk_s=prov_risk, PlannedStartDate_t = prov_start").unwrap(),
            [("Risk_s".to_string(), "prov_risk".to_string()), ("PlannedStartDate_t".into(), "prov_start".into())]
        );
        assert!(change_columns("Rsk_s=prov_risk").is_err());
        assert!(change_columns("TimeGenerated=modifiedon").is_err());
        assert!(change_columns("Risk_s=Prov Risk").is_err());
    }
}
