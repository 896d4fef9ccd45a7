//! Configuration: invalid settings stop start-up with a message naming the setting; secrets never print.

use std::collections::HashMap;
use std::io::Write;

use itsmc::config::{Config, Product, SecretSetting, ServiceNowAuth};
use itsmc::workitem::{Grouping, OnResolve, RefireAfterClose, WorkItemType};

fn load(pairs: &[(&str, &str)]) -> Result<Config, itsmc::config::ConfigError> {
    let env: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_lookup(|name| env.get(name).cloned())
}

fn error(pairs: &[(&str, &str)]) -> String {
    load(pairs).expect_err("the configuration is refused").to_string()
}

#[test]
fn nothing_configured_is_one_dry_run_connection() {
    let config = load(&[]).unwrap();
    assert_eq!(config.connections.len(), 1);
    let c = &config.connections[0];
    assert_eq!(c.name, "default");
    assert!(matches!(c.product, Product::DryRun));
    assert_eq!(c.work_item_type, WorkItemType::Incident);
    assert_eq!(c.grouping, Grouping::Alert);
    assert_eq!(c.short_description_max, 160);
    assert_eq!(config.state, itsmc::config::StateSettings::Embedded { data_dir: "./itsmc-data".into() });
    assert_eq!(config.alert_budget.as_millis(), 5000);
}

#[test]
fn servicenow_from_the_environment() {
    let config = load(&[
        ("ITSMC_PRODUCT", "ServiceNow"),
        ("ITSMC_URL", "https://contoso.service-now.com/"),
        ("ITSMC_USERNAME", "svc"),
        ("ITSMC_PASSWORD", "hunter2-password"),
        ("ITSMC_CLIENT_ID", "cid"),
        ("ITSMC_CLIENT_SECRET", "top-secret-value"),
        ("ITSMC_GROUPING", "ci"),
        ("ITSMC_REFIRE_AFTER_CLOSE", "reopen"),
        ("ITSMC_ON_RESOLVE", "comment"),
    ])
    .unwrap();
    let c = &config.connections[0];
    let Product::ServiceNow(settings) = &c.product else { panic!("servicenow") };
    assert_eq!(settings.url, "https://contoso.service-now.com");
    assert!(matches!(settings.auth, ServiceNowAuth::OAuth { .. }));
    assert_eq!(c.grouping, Grouping::Ci);
    assert_eq!(c.policy.refire_after_close, RefireAfterClose::Reopen);
    assert_eq!(c.policy.on_resolve, OnResolve::Comment);
    let printed = format!("{config:?}");
    assert!(!printed.contains("hunter2-password") && !printed.contains("top-secret-value"), "{printed}");
}

#[test]
fn invalid_settings_name_the_setting() {
    assert!(error(&[("ITSMC_PRODUCT", "remedy")]).starts_with("ITSMC_PRODUCT: 'remedy' is not supported"));
    assert!(error(&[("ITSMC_PRODUCT", "servicenow")]).starts_with("ITSMC_URL:"));
    let e = error(&[("ITSMC_PRODUCT", "servicenow"), ("ITSMC_URL", "http://contoso.service-now.com")]);
    assert_eq!(e, "ITSMC_URL: 'http://contoso.service-now.com' must be an https:// URL");
    let e = error(&[("ITSMC_PRODUCT", "servicenow"), ("ITSMC_URL", "https://x.service-now.com")]);
    assert!(e.starts_with("ITSMC_USERNAME:"), "{e}");
    let e = error(&[
        ("ITSMC_PRODUCT", "servicenow"),
        ("ITSMC_URL", "https://x.service-now.com"),
        ("ITSMC_USERNAME", "u"),
        ("ITSMC_PASSWORD", "p"),
        ("ITSMC_CLIENT_ID", "c"),
    ]);
    assert!(e.starts_with("ITSMC_CLIENT_SECRET:"), "{e}");
    let e = error(&[("ITSMC_PRODUCT", "servicenow"), ("ITSMC_URL", "https://u:p@x.service-now.com")]);
    assert!(e.contains("credentials") && !e.contains("u:p@"), "{e}");
    assert!(error(&[("ITSMC_GROUPING", "team")]).starts_with("ITSMC_GROUPING: 'team' is not a grouping"));
    assert!(error(&[("ITSMC_WORK_ITEM_TYPE", "Problem")]).starts_with("ITSMC_WORK_ITEM_TYPE:"));
    assert!(error(&[("ITSMC_ALERT_BUDGET_MS", "20000")]).starts_with("ITSMC_ALERT_BUDGET_MS: '20000' is not"));
    assert!(error(&[("ITSMC_ASSIGNMENT_GROUP", "{{ rule ")]).starts_with("ITSMC_ASSIGNMENT_GROUP: at character"));
    assert!(
        error(&[("ITSMC_CONNECTIONS_FILE", "/nonexistent/itsmc.toml")])
            .starts_with("ITSMC_CONNECTIONS_FILE: cannot read")
    );
}

fn with_file(text: &str, extra: &[(&str, &str)]) -> Result<Config, itsmc::config::ConfigError> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    let path = file.path().display().to_string();
    let mut pairs = vec![("ITSMC_CONNECTIONS_FILE", path.as_str())];
    pairs.extend_from_slice(extra);
    load(&pairs)
}

#[test]
fn several_connections_from_a_toml_file() {
    let config = with_file(
        r#"
[[connections]]
name = "prod"
product = "servicenow"
url = "https://contoso.service-now.com"
username = "svc"
password_env = "PROD_PASSWORD"
grouping = "rule"
[connections.policy]
refire_after_close = "ignore"
close_code = "Solution provided"
[connections.severity]
Sev4 = { urgency = 3, impact = 2 }
[connections.fields]
assignment_group = "{{ customProperties.team | default(\"Ops\") }}"
[connections.templates.database]
category = "Database"

[[connections]]
name = "lab"
product = "dry-run"
"#,
        &[("PROD_PASSWORD", "from-the-environment")],
    )
    .unwrap();
    assert_eq!(config.connections.len(), 2);
    let prod = config.connection(Some("PROD")).unwrap();
    assert_eq!(prod.grouping, Grouping::Rule);
    assert_eq!(prod.policy.refire_after_close, RefireAfterClose::Ignore);
    assert_eq!(prod.policy.close_code, "Solution provided");
    assert_eq!(prod.severity.0[4].impact, 2);
    assert!(prod.templates.contains_key("database"));
    let Product::ServiceNow(settings) = &prod.product else { panic!() };
    let ServiceNowAuth::Basic { password, .. } = &settings.auth else { panic!() };
    assert_eq!(password, &SecretSetting::Value(itsmc::config::Secret::new("from-the-environment")));
    assert_eq!(config.connection(None).unwrap().name, "prod", "the first is the default");
    assert!(matches!(config.connection(Some("lab")).unwrap().product, Product::DryRun));
}

#[test]
fn toml_errors_name_the_connection_and_field() {
    let e = with_file("[[connections]]\nname = \"a\"\nproduct = \"servicenow\"\nurl = \"https://x.service-now.com\"\nusername = \"u\"\npassword_env = \"MISSING\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("connections[0] (a).password_env") && e.contains("MISSING is not set"), "{e}");
    let e = with_file("[[connections]]\nname = \"a\"\nproduct = \"dry-run\"\ncolour = \"blue\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("colour"), "{e}");
    let e = with_file(
        "[[connections]]\nname = \"a\"\nproduct = \"dry-run\"\n[[connections]]\nname = \"A\"\nproduct = \"dry-run\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("two connections have this name"), "{e}");
    let e = with_file("[[connections]]\nname = \"a\"\nproduct = \"dry-run\"\n[connections.severity]\nSev9 = { urgency = 1, impact = 1 }\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("Sev9"), "{e}");
    // A product's settings table: its own names, in lower case like every other key of the file.
    let scsm = "[[connections]]\nname = \"sm\"\nproduct = \"scsm\"\nurl = \"https://portal.contoso.com\"\nusername = \"CONTOSO\\\\itsmc\"\npassword = \"p\"\n[connections.settings]\n";
    let e = with_file(&format!("{scsm}SCSM_Language_Code = \"DEU\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("settings.SCSM_Language_Code") && e.contains("lower case: scsm_language_code"), "{e}");
    let e = with_file(&format!("{scsm}cherwell_auth_mode = \"LDAP\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("not a SCSM setting") && e.contains("scsm_language_code"), "{e}");
    assert!(with_file(&format!("{scsm}scsm_language_code = \"DEU\"\n"), &[]).is_ok());
}

#[test]
fn state_is_chosen_as_the_functions_host_chooses_its_storage() {
    use itsmc::config::StateSettings;
    let azurite = "UseDevelopmentStorage=true";
    match load(&[("AzureWebJobsStorage", azurite), ("ITSMC_DATA_DIR", "/tmp/x")]).unwrap().state {
        StateSettings::TableConnectionString { connection_string, prefix } => {
            assert_eq!(connection_string.expose(), azurite);
            assert_eq!(prefix, "itsmc");
            assert_eq!(format!("{connection_string:?}"), "***", "the connection string holds the account key");
        }
        other => panic!("expected the connection string, got {other:?}"),
    }
    let by_account = load(&[("AzureWebJobsStorage__accountName", "contosofn"), ("ITSMC_TABLE_PREFIX", "prod1")]);
    assert_eq!(
        by_account.unwrap().state,
        StateSettings::TableIdentity {
            endpoint: "https://contosofn.table.core.windows.net".parse().unwrap(),
            client_id: None,
            prefix: "prod1".into()
        }
    );
    let by_uri = load(&[
        ("AzureWebJobsStorage__tableServiceUri", "https://contosofn.table.core.windows.net/"),
        ("AzureWebJobsStorage__accountName", "ignored"),
        ("AzureWebJobsStorage__clientId", "0000-client"),
    ]);
    assert!(matches!(
        by_uri.unwrap().state,
        StateSettings::TableIdentity { client_id: Some(ref id), .. } if id == "0000-client"
    ));
    assert_eq!(
        load(&[("ITSMC_DATA_DIR", "/var/lib/itsmc")]).unwrap().state,
        StateSettings::Embedded { data_dir: "/var/lib/itsmc".into() }
    );

    assert!(
        error(&[("AzureWebJobsStorage__accountName", "Not_An_Account")]).contains("AzureWebJobsStorage__accountName")
    );
    assert!(error(&[("AzureWebJobsStorage__tableServiceUri", "http://contoso.example")]).contains("https://"));
    assert!(error(&[("ITSMC_TABLE_PREFIX", "1bad-prefix")]).contains("ITSMC_TABLE_PREFIX"));
    // Identity-based storage without a way to find the tables: refused, never the embedded store by surprise.
    let e = error(&[("AzureWebJobsStorage__blobServiceUri", "https://contosofn.blob.core.windows.net")]);
    assert!(e.contains("AzureWebJobsStorage__blobServiceUri") && e.contains("__tableServiceUri"), "{e}");
}

#[test]
fn with_key_vault_the_secrets_left_out_are_read_from_it_by_connection_name() {
    let config = load(&[
        ("ITSMC_KEY_VAULT_URL", "https://contoso-itsmc.vault.azure.net/"),
        ("ITSMC_MANAGED_IDENTITY_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
        ("ITSMC_PRODUCT", "servicenow"),
        ("ITSMC_CONNECTION_NAME", "prod"),
        ("ITSMC_URL", "https://contoso.service-now.com"),
        ("ITSMC_USERNAME", "svc"),
        ("ITSMC_CLIENT_ID", "cid"),
    ])
    .unwrap();
    let vault = config.key_vault.as_ref().expect("Key Vault configured");
    assert_eq!(vault.url, "https://contoso-itsmc.vault.azure.net/");
    assert_eq!(vault.client_id.as_deref(), Some("11111111-2222-3333-4444-555555555555"));
    let Product::ServiceNow(settings) = &config.connections[0].product else { panic!() };
    let ServiceNowAuth::OAuth { password, client_secret, refresh_token, .. } = &settings.auth else { panic!() };
    assert_eq!(password, &SecretSetting::KeyVault("prod-password".into()));
    assert_eq!(client_secret, &SecretSetting::KeyVault("prod-client-secret".into()));
    assert_eq!(refresh_token.as_deref(), Some("prod-refresh-token"));

    // A secret given in the settings wins; without Key Vault, a missing password is still an error.
    let given = load(&[
        ("ITSMC_KEY_VAULT_URL", "https://contoso-itsmc.vault.azure.net/"),
        ("ITSMC_PRODUCT", "servicenow"),
        ("ITSMC_URL", "https://contoso.service-now.com"),
        ("ITSMC_USERNAME", "svc"),
        ("ITSMC_PASSWORD", "inline"),
    ])
    .unwrap();
    let Product::ServiceNow(settings) = &given.connections[0].product else { panic!() };
    let ServiceNowAuth::Basic { password, .. } = &settings.auth else { panic!() };
    assert_eq!(password, &SecretSetting::Value(itsmc::config::Secret::new("inline")));
    let e =
        error(&[("ITSMC_PRODUCT", "servicenow"), ("ITSMC_URL", "https://x.service-now.com"), ("ITSMC_USERNAME", "u")]);
    assert!(e.contains("ITSMC_PASSWORD") && e.contains("ITSMC_KEY_VAULT_URL"), "{e}");
}

/// Key Vault secret names know no '_' and ignore case, so with Key Vault two connections whose names differ
/// only there would read each other's secrets: refused. Without Key Vault both names are fine.
#[test]
fn connections_whose_key_vault_names_collide_are_refused() {
    let file = "[[connections]]\nname = \"prod_eu\"\nproduct = \"dry-run\"\n\n[[connections]]\nname = \"Prod-EU\"\nproduct = \"dry-run\"\n";
    assert_eq!(with_file(file, &[]).unwrap().connections.len(), 2);
    let e =
        with_file(file, &[("ITSMC_KEY_VAULT_URL", "https://contoso-itsmc.vault.azure.net/")]).unwrap_err().to_string();
    assert!(
        e.contains("connections[1] (Prod-EU).name") && e.contains("prod_eu") && e.contains("prod-eu-password"),
        "{e}"
    );
}

/// Secret names can be chosen per connection: in the environment for the one connection it defines, in
/// the file under `key_vault_names`. Two connections may share a password by naming it, never a refresh
/// token (each writes its own back). A name Key Vault would refuse is an error naming the setting.
#[test]
fn key_vault_secret_names_can_be_overridden() {
    let vault = ("ITSMC_KEY_VAULT_URL", "https://contoso-itsmc.vault.azure.net/");
    let config = load(&[
        vault,
        ("ITSMC_PRODUCT", "servicenow"),
        ("ITSMC_URL", "https://contoso.service-now.com"),
        ("ITSMC_USERNAME", "svc"),
        ("ITSMC_CLIENT_ID", "cid"),
        ("ITSMC_PASSWORD_SECRET_NAME", "snow-svc-pw"),
        ("ITSMC_REFRESH_TOKEN_SECRET_NAME", "snow-rt"),
    ])
    .unwrap();
    let Product::ServiceNow(settings) = &config.connections[0].product else { panic!() };
    let ServiceNowAuth::OAuth { password, client_secret, refresh_token, .. } = &settings.auth else { panic!() };
    assert_eq!(password, &SecretSetting::KeyVault("snow-svc-pw".into()));
    assert_eq!(client_secret, &SecretSetting::KeyVault("default-client-secret".into()));
    assert_eq!(refresh_token.as_deref(), Some("snow-rt"));

    let e = error(&[
        vault,
        ("ITSMC_PRODUCT", "servicenow"),
        ("ITSMC_URL", "https://contoso.service-now.com"),
        ("ITSMC_USERNAME", "svc"),
        ("ITSMC_PASSWORD_SECRET_NAME", "snow_pw"),
    ]);
    assert!(e.starts_with("ITSMC_PASSWORD_SECRET_NAME:") && e.contains("'_'"), "{e}");

    let connection = |name: &str, names: &str| {
        format!(
            "[[connections]]\nname = \"{name}\"\nproduct = \"servicenow\"\nurl = \"https://contoso.service-now.com\"\n\
             username = \"svc\"\nclient_id = \"cid\"\nkey_vault_names = {{ {names} }}\n"
        )
    };
    let shared_password = connection("a", "password = \"svc-pw\"") + &connection("b", "password = \"svc-pw\"");
    let config = with_file(&shared_password, &[vault]).unwrap();
    for (connection, refresh) in config.connections.iter().zip(["a-refresh-token", "b-refresh-token"]) {
        let Product::ServiceNow(settings) = &connection.product else { panic!() };
        let ServiceNowAuth::OAuth { password, refresh_token, .. } = &settings.auth else { panic!() };
        assert_eq!(password, &SecretSetting::KeyVault("svc-pw".into()));
        assert_eq!(refresh_token.as_deref(), Some(refresh));
    }
    let shared_token = connection("a", "") + &connection("b", "refresh_token = \"A-Refresh-Token\"");
    let e = with_file(&shared_token, &[vault]).unwrap_err().to_string();
    assert!(e.contains("connections[1] (b).key_vault_names.refresh_token") && e.contains("'a'"), "{e}");
    let unknown = connection("a", "passwrd = \"x\"");
    assert!(with_file(&unknown, &[vault]).unwrap_err().to_string().contains("passwrd"));
}

/// The sync's settings: scope at most ITSMC's 120 days (globally or per connection), the kinds by name, the
/// Logs Ingestion endpoint and rule checked for shape, the schedule parsed as the timer trigger would.
#[test]
fn sync_settings_are_checked_at_start() {
    let config = load(&[
        ("ITSMC_SYNC_DAYS", "30"),
        ("ITSMC_SYNC_KINDS", "changerequest"),
        ("ITSMC_SYNC_SCHEDULE", "0 */5 * * * *"),
        ("ITSMC_LOGS_ENDPOINT", "https://itsmc-dce-a1b2.westeurope-1.ingest.monitor.azure.com"),
        ("ITSMC_DCR_IMMUTABLE_ID", "dcr-0123456789abcdef0123456789abcdef"),
    ])
    .unwrap();
    assert_eq!(config.sync.days, 30);
    assert_eq!(config.sync.kinds, [itsmc::sync::SyncKind::ChangeRequest]);
    let logs = config.logs.expect("Logs Ingestion configured");
    assert_eq!(logs.rule, "dcr-0123456789abcdef0123456789abcdef");
    assert!(load(&[]).unwrap().logs.is_none(), "no endpoint: rows stay local");

    for (pairs, setting) in [
        (vec![("ITSMC_SYNC_DAYS", "121")], "ITSMC_SYNC_DAYS"),
        (vec![("ITSMC_SYNC_KINDS", "Incident,Problem")], "ITSMC_SYNC_KINDS"),
        (vec![("ITSMC_SYNC_SCHEDULE", "*/5 * * * *")], "ITSMC_SYNC_SCHEDULE"),
        (vec![("ITSMC_DCR_IMMUTABLE_ID", "dcr-0123456789abcdef0123456789abcdef")], "ITSMC_LOGS_ENDPOINT"),
        (
            vec![
                ("ITSMC_LOGS_ENDPOINT", "http://ingest.example.com"),
                ("ITSMC_DCR_IMMUTABLE_ID", "dcr-0123456789abcdef0123456789abcdef"),
            ],
            "ITSMC_LOGS_ENDPOINT",
        ),
        (
            vec![
                ("ITSMC_LOGS_ENDPOINT", "https://ingest.example.com"),
                ("ITSMC_DCR_IMMUTABLE_ID", "/subscriptions/x/dataCollectionRules/y"),
            ],
            "ITSMC_DCR_IMMUTABLE_ID",
        ),
    ] {
        let e = error(&pairs);
        assert!(e.starts_with(&format!("{setting}:")), "{pairs:?}: {e}");
    }

    let file = "[[connections]]\nname = \"a\"\nproduct = \"dry-run\"\nsync_days = 7\nsync_kinds = [\"Incident\"]\n";
    let config = with_file(file, &[]).unwrap();
    assert_eq!(config.connections[0].sync_days, Some(7));
    assert_eq!(config.connections[0].sync_kinds.as_deref(), Some(&[itsmc::sync::SyncKind::Incident][..]));
    let e = with_file(&file.replace("sync_days = 7", "sync_days = 365"), &[]).unwrap_err().to_string();
    assert!(e.contains("connections[0] (a).sync_days") && e.contains("120"), "{e}");
}
