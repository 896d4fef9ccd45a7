//! What can be checked of the deployment without Azure or AWS: the settings the binary reads and the ones
//! `infra/main.bicep` and `infra/aws/template.yaml` give it agree, the Log Analytics columns come from the
//! one file the code reads, and `infra/deploy.sh` / `destroy.sh --dry-run` print the az commands they would
//! run, in order, with no secret in them. (`tests/binary.rs` checks the package's layout and that every
//! `function.json` reaches a route.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn is_setting(name: &str) -> bool {
    let prefixed = ["ITSMC_", "AZURE_", "AzureWebJobsStorage"].iter().any(|p| name.starts_with(p));
    (prefixed && !name.ends_with('_')) || name == "RUST_LOG"
}

/// Every string literal in `text` that is exactly a setting name.
fn setting_literals(text: &str, into: &mut BTreeSet<String>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(start) = text[i..].find('"').map(|at| i + at + 1) {
        let end = start + bytes[start..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
        if bytes.get(end) == Some(&b'"') && is_setting(&text[start..end]) {
            into.insert(text[start..end].to_string());
        }
        i = start;
    }
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The settings the binary reads: every setting name written as a literal in `src/`.
fn binary_settings() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&Path::new(ROOT).join("src"), &mut files);
    let mut names = BTreeSet::new();
    for file in files {
        setting_literals(&std::fs::read_to_string(file).unwrap(), &mut names);
    }
    // config.rs builds these three with format!("ITSMC_{}_SECRET_NAME", kind).
    for kind in ["PASSWORD", "CLIENT_SECRET", "REFRESH_TOKEN"] {
        names.insert(format!("ITSMC_{kind}_SECRET_NAME"));
    }
    names
}

/// The lines of `text` from the one starting with `opening` to the next that is exactly `closing`.
fn block<'a>(text: &'a str, opening: &str, closing: &str) -> Vec<&'a str> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(opening));
    assert!(lines.next().is_some(), "no block '{opening}'");
    lines.take_while(|l| *l != closing).collect()
}

/// `KEY:` at the start of a line (after indentation), for a setting-like key.
fn keys<'a>(lines: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    lines
        .into_iter()
        .filter_map(|line| line.trim_start().split_once(':').map(|(key, _)| key.trim()))
        .filter(|key| is_setting(key))
        .map(str::to_string)
        .collect()
}

struct Bicep {
    app_settings: BTreeSet<String>,
    tunables: BTreeSet<String>,
    not_in_azure: BTreeSet<String>,
}

fn bicep() -> Bicep {
    let text = read("infra/main.bicep");
    let app_settings = keys(block(&text, "var appSettings = union(", ")"));
    let tunables = keys(block(&text, "type tunables = {", "}"));
    let not_in_azure = block(&text, "var notInAzure = [", "]")
        .iter()
        .filter_map(|line| line.trim().strip_prefix('\'').and_then(|rest| rest.split_once('\'')).map(|(name, _)| name))
        .map(str::to_string)
        .collect();
    Bicep { app_settings, tunables, not_in_azure }
}

#[test]
fn every_setting_the_binary_reads_is_set_offered_or_excluded_in_the_bicep() {
    let binary = binary_settings();
    let bicep = bicep();
    assert!(binary.len() > 40 && binary.contains("ITSMC_SYNC_SCHEDULE"), "the source scan found {binary:?}");
    assert!(bicep.app_settings.contains("AzureWebJobsStorage__accountName"), "{:?}", bicep.app_settings);
    assert!(bicep.tunables.contains("ITSMC_GROUPING"), "{:?}", bicep.tunables);

    let mut everywhere = BTreeSet::new();
    for (name, set) in [("appSettings", &bicep.app_settings), ("tunables", &bicep.tunables), ("notInAzure", &bicep.not_in_azure)] {
        for setting in set {
            assert!(everywhere.insert(setting.clone()), "{setting} appears twice in main.bicep (again in {name})");
            assert!(binary.contains(setting), "main.bicep's {name} has {setting}, which the binary never reads");
        }
    }
    let missing: Vec<_> = binary.difference(&everywhere).collect();
    assert!(missing.is_empty(), "the binary reads {missing:?}, which main.bicep neither sets, offers nor excludes");
    for secret in ["ITSMC_PASSWORD", "ITSMC_CLIENT_SECRET", "AzureWebJobsStorage", "AZURE_CLIENT_SECRET"] {
        assert!(bicep.not_in_azure.contains(secret), "{secret} must never be an app setting");
    }
}

#[test]
fn the_lambda_template_sets_only_settings_the_binary_reads_and_table_storage() {
    let binary = binary_settings();
    let template = read("infra/aws/template.yaml");
    let variables = keys(block(&template, "        Variables:", "      # Public, because an action group cannot sign AWS requests: itsmc itself checks ITSMC_API_KEY (?code=)"));
    assert!(variables.len() > 10, "{variables:?}");
    for name in &variables {
        assert!(binary.contains(name), "template.yaml sets {name}, which the binary never reads");
    }
    for needed in ["AzureWebJobsStorage__accountName", "AZURE_CLIENT_SECRET", "ITSMC_API_KEY", "ITSMC_SYNC_BUDGET_SECS"] {
        assert!(variables.contains(needed), "template.yaml must set {needed}: {variables:?}");
    }
    assert!(template.contains("Runtime: provided.al2023") && template.contains("Handler: bootstrap"));
    assert!(template.contains("Type: Schedule"), "the schedule runs the timer");
}

#[test]
fn the_log_analytics_tables_and_the_sync_read_the_same_column_files() {
    let main = read("infra/main.bicep");
    let schema = read("src/sync/schema.rs");
    for table in ["ServiceDesk_CL", "ServiceDeskLog_CL"] {
        assert!(main.contains(&format!("loadJsonContent('../schema/{table}.json')")), "main.bicep does not load {table}");
        assert!(schema.contains(&format!("include_str!(\"../../schema/{table}.json\")")), "src does not read {table}");
        let file: serde_json::Value = serde_json::from_str(&read(&format!("schema/{table}.json"))).unwrap();
        assert_eq!(file["table"], table);
        assert_eq!(file["stream"], format!("Custom-{table}"));
        let columns = file["columns"].as_array().unwrap();
        assert_eq!(columns[0]["name"], "TimeGenerated", "Log Analytics needs TimeGenerated");
        for column in columns {
            let kind = column["type"].as_str().unwrap();
            assert!(["string", "datetime", "boolean", "real", "int", "long", "dynamic", "guid"].contains(&kind), "{column}");
        }
    }
    // The tables' module and the rule both take the column lists as loaded, not copies.
    let monitoring = read("infra/modules/monitoring.bicep");
    let workspace = read("infra/modules/workspace.bicep");
    assert!(monitoring.contains(".columns") && workspace.contains(".columns"));
}

const PASSWORD: &str = "hunter2-Pa55-never-printed";
const CLIENT_SECRET: &str = "cs-9f8e7d-never-printed";

fn script(name: &str, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(Path::new(ROOT).join("infra").join(name))
        .args(args)
        .env("ITSMC_PASSWORD", PASSWORD)
        .env("ITSMC_CLIENT_SECRET", CLIENT_SECRET)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("bash runs")
}

fn commands(output: &Output) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for secret in [PASSWORD, CLIENT_SECRET] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "a secret was printed:\n{stdout}\n{stderr}");
    }
    assert!(output.status.success(), "exit {}:\n{stdout}\n{stderr}", output.status);
    stdout
        .lines()
        .map(|line| {
            line.strip_prefix("would run: ").unwrap_or_else(|| panic!("a dry run printed '{line}' on stdout")).to_string()
        })
        .collect()
}

fn position(commands: &[String], wanted: &str) -> usize {
    commands.iter().position(|c| c.contains(wanted)).unwrap_or_else(|| panic!("no '{wanted}' in {commands:#?}"))
}

#[test]
fn deploy_dry_run_prints_the_commands_in_order_without_secrets() {
    let output = script(
        "deploy.sh",
        &[
            "--dry-run",
            "--resource-group",
            "rg-itsmc",
            "--prefix",
            "itsmc1",
            "--servicenow-url",
            "https://contoso.service-now.com",
            "--username",
            "itsmc.integration",
            "--client-id",
            "oauth-app",
        ],
    );
    let commands = commands(&output);
    let build = position(&commands, "cargo build --locked --profile dist --target x86_64-unknown-linux-musl");
    let package = position(&commands, "itsmc package --out target/itsmc.zip --binary target/x86_64-unknown-linux-musl/dist/itsmc");
    let infra = position(&commands, "withActionGroup=false");
    let upload = position(&commands, "az functionapp deployment source config-zip --resource-group rg-itsmc --name <functionAppName> --src target/itsmc.zip");
    let password = position(&commands, "az keyvault secret set --vault-name <keyVaultName> --name default-password --file /dev/stdin");
    let client_secret = position(&commands, "--name default-client-secret --file /dev/stdin");
    let action_group = position(&commands, "withActionGroup=true");
    assert!(build < package && package < infra && infra < upload && upload < action_group, "{commands:#?}");
    assert!(infra < password && password < action_group && client_secret < action_group, "{commands:#?}");
    let deployment = &commands[infra];
    for part in [
        "az deployment group create --resource-group rg-itsmc",
        "--template-file infra/main.bicep",
        "namePrefix=itsmc1",
        "serviceNowUrl=https://contoso.service-now.com",
        "serviceNowClientId=oauth-app",
    ] {
        assert!(deployment.contains(part), "{deployment}");
    }
    assert!(commands[password].starts_with("printf %s <ITSMC_PASSWORD> |"), "{}", commands[password]);
}

#[test]
fn deploy_dry_run_on_consumption_uploads_to_the_blob_and_syncs_triggers() {
    let output = script("deploy.sh", &["--dry-run", "--resource-group", "rg2", "--prefix", "itsmc2", "--plan", "Consumption"]);
    let commands = commands(&output);
    let upload = position(&commands, "az storage blob upload --auth-mode login --blob-url <packageBlobUrl>");
    let restart = position(&commands, "az functionapp restart --resource-group rg2 --name <functionAppName>");
    let sync = position(&commands, "/syncfunctiontriggers?api-version=");
    assert!(upload < restart && restart < sync, "{commands:#?}");
    assert!(commands.iter().any(|c| c.contains("planKind=Consumption")), "{commands:#?}");
    assert!(!commands.iter().any(|c| c.contains("keyvault secret set")), "no ServiceNow, no secrets to store");
}

#[test]
fn destroy_dry_run_deletes_the_group_and_purges_the_vault() {
    let output = script("destroy.sh", &["--dry-run", "--resource-group", "rg-itsmc", "--purge-key-vault"]);
    let commands = commands(&output);
    let delete = position(&commands, "az group delete --name rg-itsmc --yes");
    let purge = position(&commands, "az keyvault purge --name");
    assert!(delete < purge, "the vault is purged after the group is gone: {commands:#?}");
}

#[test]
fn the_scripts_refuse_bad_arguments_with_exit_2_and_the_reason() {
    for (name, args, reason) in [
        ("deploy.sh", vec!["--dry-run", "--prefix", "itsmc1"], "--resource-group"),
        ("deploy.sh", vec!["--dry-run", "--resource-group", "rg", "--prefix", "Bad_Prefix"], "--prefix"),
        ("deploy.sh", vec!["--dry-run", "--resource-group", "rg", "--prefix", "itsmc1", "--plan", "Premium"], "--plan"),
        ("destroy.sh", vec!["--dry-run"], "--resource-group"),
    ] {
        let output = script(name, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name} {args:?}: {stderr}");
        assert!(stderr.contains(reason), "{name} {args:?} should name {reason}: {stderr}");
        assert!(output.stdout.is_empty(), "nothing would run");
    }
}
