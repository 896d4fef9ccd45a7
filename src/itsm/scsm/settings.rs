//! An SCSM connection's settings: the Cireson portal, the user itsmc signs in as, and the SCSM ids itsmc cannot
//! guess (the incident template, the projections it reads, where the correlation key goes, the enumeration values
//! it sets). One function reads them for both ways a connection is configured: the environment
//! (`ITSMC_PRODUCT=scsm`, `ITSMC_URL`, `ITSMC_SCSM_*`) and a `[[connections]]` table of the TOML file, whose
//! `url`, `username`, `password` and `[settings]` keys `config` turns into the same names.

use crate::config::{ConfigError, Secret, SecretSetting, invalid};
use crate::workitem::WorkItemType;

/// The SCSM settings a TOML connection may give in its `settings` table (lowercased, without `ITSMC_`).
pub const SETTINGS: &[&str] = &[
    "ITSMC_SCSM_TEMPLATE_ID",
    "ITSMC_SCSM_INCIDENT_PROJECTION_ID",
    "ITSMC_SCSM_CHANGE_PROJECTION_ID",
    "ITSMC_SCSM_CORRELATION_PROPERTY",
    "ITSMC_SCSM_CORRELATION_CLASS_ID",
    "ITSMC_SCSM_LANGUAGE_CODE",
    "ITSMC_SCSM_CLASSIFICATION_ID",
    "ITSMC_SCSM_SUPPORT_GROUP_ID",
    "ITSMC_SCSM_RESOLUTION_CATEGORY_ID",
];

/// SCSM's Default Incident Template (`DefaultIncidentTemplate`), which every SCSM install has.
pub const DEFAULT_TEMPLATE_ID: &str = "a77bb0c9-e201-dd93-230c-799a66d9e8fa";
/// `System.WorkItem.Incident.ProjectionType` ("Incident (advanced)"), the projection ITSMC's templates used.
pub const INCIDENT_PROJECTION_ID: &str = "285cb0a2-f276-bccb-563e-bb721df7cdec";
/// `System.WorkItem.ChangeRequestProjection` ("Change Request (advanced)").
pub const CHANGE_PROJECTION_ID: &str = "674194d8-0246-7b90-d871-e1ea015b2ea7";
/// The class `System.WorkItem.Incident`, which declares the properties of an incident.
pub const INCIDENT_CLASS_ID: &str = "a604b942-4c7b-2fb2-28dc-61dc6f465c68";
/// `IncidentResolutionCategoryEnum.FixedByAnalyst` ("Fixed by analyst"), what the portal's own resolve task offers.
pub const FIXED_BY_ANALYST: &str = "c5f6ada9-a0df-01d6-7087-6b8500ca6c2b";
/// Where itsmc keeps the correlation key unless told otherwise: a string property the site adds to the incident
/// class (README, "SCSM").
pub const DEFAULT_CORRELATION_PROPERTY: &str = "ItsmcCorrelationKey";

/// The incident properties itsmc sets itself; the correlation key cannot go in one of them.
const OWN_PROPERTIES: [&str; 9] =
    ["Title", "Description", "Urgency", "Impact", "Status", "Classification", "TierQueue", "Id", "BaseId"];

#[derive(Debug, Clone)]
pub struct ScsmSettings {
    /// The portal's base URL without a trailing slash, e.g. `https://portal.contoso.com` (or `.../CiresonPortal`).
    pub url: String,
    /// As the portal's sign-in takes it: `DOMAIN\user` (or `user`).
    pub username: String,
    pub password: SecretSetting,
    /// `GetToken`'s `LanguageCode` (`ENU`, `DEU`, ...): the language of the display names the portal answers with.
    pub language_code: String,
    /// The incident template new incidents start from (its id, a GUID).
    pub template_id: String,
    pub incident_projection_id: String,
    pub change_projection_id: String,
    /// The incident property that holds the correlation key, and the class (or class extension) declaring it.
    pub correlation_property: String,
    pub correlation_class_id: String,
    /// `IncidentClassificationEnum` and `IncidentTierQueuesEnum` values set on new incidents; `None`: the template's.
    pub classification_id: Option<String>,
    pub support_group_id: Option<String>,
    /// `IncidentResolutionCategoryEnum` value set when itsmc resolves an incident.
    pub resolution_category_id: String,
}

impl ScsmSettings {
    /// The part of the user name after `DOMAIN\`, and the domain (empty when not given).
    pub fn user_and_domain(&self) -> (&str, &str) {
        match self.username.split_once('\\') {
            Some((domain, user)) => (user, domain),
            None => (self.username.as_str(), ""),
        }
    }
}

/// The settings of connection `name`, read through `lookup` (the environment, or a file connection turned into
/// the same names). `vault`: Key Vault is configured, and a password the settings leave out is read from it.
pub fn settings_from_lookup(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    vault: bool,
) -> Result<ScsmSettings, ConfigError> {
    for (setting, instead) in [
        ("ITSMC_CLIENT_ID", "the portal signs in with a user name and password only"),
        ("ITSMC_CLIENT_SECRET", "the portal signs in with a user name and password only"),
        ("ITSMC_CALLER_ID", "a ServiceNow field; the SCSM template sets the affected user"),
        (
            "ITSMC_ASSIGNMENT_GROUP",
            "a ServiceNow field; use ITSMC_SCSM_SUPPORT_GROUP_ID (an IncidentTierQueuesEnum id)",
        ),
        ("ITSMC_CATEGORY", "a ServiceNow field; use ITSMC_SCSM_CLASSIFICATION_ID (an IncidentClassificationEnum id)"),
        ("ITSMC_SUBCATEGORY", "a ServiceNow field; SCSM incidents have a classification only"),
        ("ITSMC_CONTACT_TYPE", "a ServiceNow field; the SCSM template sets the incident's source"),
    ] {
        if lookup(setting).is_some() {
            return Err(invalid(setting, format!("not an SCSM setting: {instead}")));
        }
    }
    if let Some(raw) = lookup("ITSMC_WORK_ITEM_TYPE")
        && let Ok(kind) = raw.parse::<WorkItemType>()
        && kind != WorkItemType::Incident
    {
        return Err(invalid(
            "ITSMC_WORK_ITEM_TYPE",
            format!("SCSM connections create incidents; '{raw}' is a ServiceNow Event Management type"),
        ));
    }
    let raw = lookup("ITSMC_URL").ok_or_else(|| invalid("ITSMC_URL", "SCSM needs the Cireson portal's URL"))?;
    let url = portal_url(&raw)?;
    let username = lookup("ITSMC_USERNAME")
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| invalid("ITSMC_USERNAME", "SCSM needs the portal user's name (DOMAIN\\user)"))?;
    let password = match (lookup("ITSMC_PASSWORD"), vault) {
        (Some(password), _) => SecretSetting::Value(Secret::new(password)),
        (None, true) => {
            let mut names = crate::secrets::SecretNames::for_connection(name);
            if let Some(given) = lookup("ITSMC_PASSWORD_SECRET_NAME") {
                crate::secrets::check_name(&given).map_err(|e| invalid("ITSMC_PASSWORD_SECRET_NAME", e.to_string()))?;
                names.password = given;
            }
            SecretSetting::KeyVault(names.password)
        }
        (None, false) => {
            return Err(invalid(
                "ITSMC_PASSWORD",
                "SCSM needs the portal user's password (or ITSMC_KEY_VAULT_URL holding it)",
            ));
        }
    };
    let guid_or = |setting: &str, default: &str| -> Result<String, ConfigError> {
        match lookup(setting) {
            Some(raw) => guid(setting, &raw),
            None => Ok(default.to_string()),
        }
    };
    let optional_guid = |setting: &str| lookup(setting).map(|raw| guid(setting, &raw)).transpose();
    let correlation_property =
        lookup("ITSMC_SCSM_CORRELATION_PROPERTY").unwrap_or_else(|| DEFAULT_CORRELATION_PROPERTY.to_string());
    let named = correlation_property.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && correlation_property.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !named {
        return Err(invalid(
            "ITSMC_SCSM_CORRELATION_PROPERTY",
            format!("'{correlation_property}' is not a property name (letters, digits and '_')"),
        ));
    }
    if OWN_PROPERTIES.iter().any(|own| own.eq_ignore_ascii_case(&correlation_property)) {
        return Err(invalid(
            "ITSMC_SCSM_CORRELATION_PROPERTY",
            format!("itsmc sets {correlation_property} itself; name a string property kept for the correlation key"),
        ));
    }
    let language_code = lookup("ITSMC_SCSM_LANGUAGE_CODE").unwrap_or_else(|| "ENU".to_string());
    if !(2..=8).contains(&language_code.len()) || !language_code.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(invalid(
            "ITSMC_SCSM_LANGUAGE_CODE",
            format!("'{language_code}' is not a portal language code (ENU, DEU, FRA, ...)"),
        ));
    }
    Ok(ScsmSettings {
        url,
        username,
        password,
        language_code: language_code.to_ascii_uppercase(),
        template_id: guid_or("ITSMC_SCSM_TEMPLATE_ID", DEFAULT_TEMPLATE_ID)?,
        incident_projection_id: guid_or("ITSMC_SCSM_INCIDENT_PROJECTION_ID", INCIDENT_PROJECTION_ID)?,
        change_projection_id: guid_or("ITSMC_SCSM_CHANGE_PROJECTION_ID", CHANGE_PROJECTION_ID)?,
        correlation_property,
        correlation_class_id: guid_or("ITSMC_SCSM_CORRELATION_CLASS_ID", INCIDENT_CLASS_ID)?,
        classification_id: optional_guid("ITSMC_SCSM_CLASSIFICATION_ID")?,
        support_group_id: optional_guid("ITSMC_SCSM_SUPPORT_GROUP_ID")?,
        resolution_category_id: guid_or("ITSMC_SCSM_RESOLUTION_CATEGORY_ID", FIXED_BY_ANALYST)?,
    })
}

/// A GUID as SCSM writes them (braces allowed), lowercased.
fn guid(setting: &str, raw: &str) -> Result<String, ConfigError> {
    crate::config::guid(setting, raw, &format!("like {DEFAULT_TEMPLATE_ID}"))
}

/// The portal's base URL: https (http only to this machine), no credentials, no trailing slash. A path is kept:
/// some sites serve the portal under one.
fn portal_url(raw: &str) -> Result<String, ConfigError> {
    let url = crate::config::base_url("ITSMC_URL", raw)?;
    if url.query().is_some() {
        return Err(invalid("ITSMC_URL", "give the portal's base URL, without a query"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(pairs: &[(&str, &str)], vault: bool) -> Result<ScsmSettings, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        settings_from_lookup(&|name: &str| map.get(name).cloned(), "prod", vault)
    }

    const BASE: [(&str, &str); 3] = [
        ("ITSMC_URL", "https://portal.contoso.com/"),
        ("ITSMC_USERNAME", "CONTOSO\\svc-itsmc"),
        ("ITSMC_PASSWORD", "p"),
    ];

    #[test]
    fn defaults_are_scsms_own_ids() {
        let settings = read(&BASE, false).unwrap();
        assert_eq!(settings.url, "https://portal.contoso.com");
        assert_eq!(settings.user_and_domain(), ("svc-itsmc", "CONTOSO"));
        assert_eq!(settings.template_id, DEFAULT_TEMPLATE_ID);
        assert_eq!(settings.incident_projection_id, INCIDENT_PROJECTION_ID);
        assert_eq!(settings.correlation_property, DEFAULT_CORRELATION_PROPERTY);
        assert_eq!(settings.language_code, "ENU");
        assert_eq!(settings.classification_id, None);
    }

    #[test]
    fn each_setting_is_checked_and_named() {
        let with = |extra: (&str, &str)| {
            let mut pairs = BASE.to_vec();
            pairs.push(extra);
            read(&pairs, false).unwrap_err().setting
        };
        assert_eq!(with(("ITSMC_SCSM_TEMPLATE_ID", "Default Incident")), "ITSMC_SCSM_TEMPLATE_ID");
        assert_eq!(with(("ITSMC_SCSM_CORRELATION_PROPERTY", "x$/y")), "ITSMC_SCSM_CORRELATION_PROPERTY");
        assert_eq!(with(("ITSMC_SCSM_CORRELATION_PROPERTY", "title")), "ITSMC_SCSM_CORRELATION_PROPERTY");
        assert_eq!(with(("ITSMC_SCSM_LANGUAGE_CODE", "en-US")), "ITSMC_SCSM_LANGUAGE_CODE");
        assert_eq!(with(("ITSMC_WORK_ITEM_TYPE", "Event")), "ITSMC_WORK_ITEM_TYPE");
        assert_eq!(with(("ITSMC_ASSIGNMENT_GROUP", "Tier 1")), "ITSMC_ASSIGNMENT_GROUP");
        let braces = read(
            &[BASE[0], BASE[1], BASE[2], ("ITSMC_SCSM_SUPPORT_GROUP_ID", "{C3264527-A501-029F-6872-31300080B3BF}")],
            false,
        );
        assert_eq!(braces.unwrap().support_group_id.as_deref(), Some("c3264527-a501-029f-6872-31300080b3bf"));
        assert_eq!(read(&BASE[..2], false).unwrap_err().setting, "ITSMC_PASSWORD");
        let from_vault = read(&BASE[..2], true).unwrap();
        assert_eq!(from_vault.password, SecretSetting::KeyVault("prod-password".into()));
        assert_eq!(
            read(&[("ITSMC_URL", "http://portal.contoso.com"), BASE[1], BASE[2]], false).unwrap_err().setting,
            "ITSMC_URL"
        );
    }
}
