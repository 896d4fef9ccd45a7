//! What can be checked of the deployment without Azure or AWS: the settings the binary reads and the ones
//! `infra/main.bicep` and `infra/aws/template.yaml` give it agree, the Log Analytics columns come from the
//! one file the code reads, and `infra/deploy.sh` / `destroy.sh --dry-run` print the az commands they would
//! run, in order, with no secret in them. What only a real run does (reading az's answers, the read-only
//! probes a dry run skips) runs against a stand-in `az` on PATH. (`tests/binary.rs` checks the package's
//! layout and that every `function.json` reaches a route.)

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
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
    for (name, set) in
        [("appSettings", &bicep.app_settings), ("tunables", &bicep.tunables), ("notInAzure", &bicep.not_in_azure)]
    {
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
    // The deployment attaches no user-assigned identity and grants roles to the system identity only.
    assert!(bicep.not_in_azure.contains("ITSMC_MANAGED_IDENTITY_CLIENT_ID"), "{:?}", bicep.tunables);
}

#[test]
fn every_output_deploy_sh_reads_is_an_output_of_main_bicep() {
    let deploy = read("infra/deploy.sh");
    let list = deploy.split_once("readonly OUTPUTS=(").and_then(|(_, rest)| rest.split_once(')')).unwrap().0;
    let names: Vec<&str> = list.split_whitespace().collect();
    for name in ["connectionName", "serviceNowConfigured", "oauth"] {
        assert!(names.contains(&name), "deploy.sh decides the secrets from output {name}: {names:?}");
    }
    let main = read("infra/main.bicep");
    for name in names {
        let declared = main.lines().any(|line| line.starts_with(&format!("output {name} ")));
        assert!(declared, "deploy.sh reads output {name}, which main.bicep does not declare");
    }
}

#[test]
fn the_lambda_template_sets_only_settings_the_binary_reads_and_table_storage() {
    let binary = binary_settings();
    let template = read("infra/aws/template.yaml");
    let variables = keys(block(
        &template,
        "        Variables:",
        "      # Public, because an action group cannot sign AWS requests: itsmc itself checks ITSMC_API_KEY (?code=)",
    ));
    assert!(variables.len() > 10, "{variables:?}");
    for name in &variables {
        assert!(binary.contains(name), "template.yaml sets {name}, which the binary never reads");
    }
    for needed in ["AzureWebJobsStorage__accountName", "AZURE_CLIENT_SECRET", "ITSMC_API_KEY", "ITSMC_SYNC_BUDGET_SECS"]
    {
        assert!(variables.contains(needed), "template.yaml must set {needed}: {variables:?}");
    }
    assert!(template.contains("Runtime: provided.al2023") && template.contains("Handler: bootstrap"));
    assert!(template.contains("Type: Schedule"), "the schedule runs the timer");
    // Without Key Vault the ServiceNow secrets come from NoEcho parameters, and only then.
    for (parameter, variable) in
        [("ServiceNowPassword", "ITSMC_PASSWORD"), ("ServiceNowClientSecret", "ITSMC_CLIENT_SECRET")]
    {
        let heading = format!("  {parameter}:");
        let declared: Vec<_> =
            template.lines().skip_while(|l| *l != heading).skip(1).take_while(|l| l.starts_with("    ")).collect();
        assert!(declared.contains(&"    NoEcho: true"), "{parameter} must be NoEcho: {declared:?}");
        assert!(variables.contains(variable), "template.yaml must offer {variable}: {variables:?}");
        let line = template.lines().find(|l| l.trim_start().starts_with(&format!("{variable}:"))).unwrap();
        assert!(line.contains("!If [") && line.contains(&format!("!Ref {parameter}")), "{line}");
    }
    assert!(template.contains("!Not [!Condition HasKeyVault]"), "secrets from the environment only without Key Vault");
}

#[test]
fn the_log_analytics_tables_and_the_sync_read_the_same_column_files() {
    let main = read("infra/main.bicep");
    let schema = read("src/sync/schema.rs");
    for table in ["ServiceDesk_CL", "ServiceDeskLog_CL"] {
        assert!(
            main.contains(&format!("loadJsonContent('../schema/{table}.json')")),
            "main.bicep does not load {table}"
        );
        assert!(schema.contains(&format!("include_str!(\"../../schema/{table}.json\")")), "src does not read {table}");
        let file: serde_json::Value = serde_json::from_str(&read(&format!("schema/{table}.json"))).unwrap();
        assert_eq!(file["table"], table);
        assert_eq!(file["stream"], format!("Custom-{table}"));
        let columns = file["columns"].as_array().unwrap();
        assert_eq!(columns[0]["name"], "TimeGenerated", "Log Analytics needs TimeGenerated");
        for column in columns {
            let kind = column["type"].as_str().unwrap();
            assert!(
                ["string", "datetime", "boolean", "real", "int", "long", "dynamic", "guid"].contains(&kind),
                "{column}"
            );
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
    script_with_az(name, args, None)
}

/// `script`, with the directory of a `fake_az` first on PATH.
fn script_with_az(name: &str, args: &[&str], az: Option<&Path>) -> Output {
    let mut command = Command::new("bash");
    command
        .arg(Path::new(ROOT).join("infra").join(name))
        .args(args)
        .env("ITSMC_PASSWORD", PASSWORD)
        .env("ITSMC_CLIENT_SECRET", CLIENT_SECRET)
        .stdin(std::process::Stdio::null());
    if let Some(dir) = az {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path));
        command.env("PATH", std::env::join_paths(dirs).unwrap());
    }
    command.output().expect("bash runs")
}

/// A stand-in for the Azure CLI, alone in a directory of its own (returned) to put first on PATH. A call whose
/// arguments start with one of `answers`' prefixes prints that answer, or fails for `None` (a missing
/// resource); any other call fails loudly. Each call's arguments are logged to `az.log` there.
fn fake_az(test: &str, answers: &[(&str, Option<&str>)]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fake-az-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let quote = |text: &str| format!("'{}'", text.replace('\'', r"'\''"));
    let mut stub =
        String::from("#!/usr/bin/env bash\nprintf '%s\\n' \"$*\" >>\"$(dirname \"$0\")/az.log\"\ncase \"$*\" in\n");
    for (prefix, answer) in answers {
        let action = answer.map_or("exit 3".to_string(), |text| format!("printf '%s\\n' {}", quote(text)));
        stub += &format!("    {}*) {action} ;;\n", quote(prefix));
    }
    stub += "    *) echo \"fake az: unexpected call: az $*\" >&2; exit 99 ;;\nesac\n";
    let az = dir.join("az");
    std::fs::write(&az, stub).unwrap();
    std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// stdout, stderr and the calls `fake_az` logged, after checking the script succeeded and printed no secret.
fn ran(output: &Output, az: &Path) -> (String, String, String) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    for secret in [PASSWORD, CLIENT_SECRET] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "a secret was printed:\n{stdout}\n{stderr}");
    }
    assert!(output.status.success(), "exit {}:\n{stdout}\n{stderr}", output.status);
    (stdout, stderr, std::fs::read_to_string(az.join("az.log")).unwrap_or_default())
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
            line.strip_prefix("would run: ")
                .unwrap_or_else(|| panic!("a dry run printed '{line}' on stdout"))
                .to_string()
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
    let package = position(
        &commands,
        "itsmc package --out target/itsmc.zip --binary target/x86_64-unknown-linux-musl/dist/itsmc",
    );
    let infra = position(&commands, "withActionGroup=false");
    let upload = position(
        &commands,
        "az functionapp deployment source config-zip --resource-group rg-itsmc --name <functionAppName> --src target/itsmc.zip",
    );
    let password = position(
        &commands,
        "az keyvault secret set --vault-name <keyVaultName> --name default-password --file /dev/stdin",
    );
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
    let output =
        script("deploy.sh", &["--dry-run", "--resource-group", "rg2", "--prefix", "itsmc2", "--plan", "Consumption"]);
    let commands = commands(&output);
    let upload = position(&commands, "az storage blob upload --auth-mode login --blob-url <packageBlobUrl>");
    let restart = position(&commands, "az functionapp restart --resource-group rg2 --name <functionAppName>");
    let sync = position(&commands, "/syncfunctiontriggers?api-version=");
    assert!(upload < restart && restart < sync, "{commands:#?}");
    assert!(commands.iter().any(|c| c.contains("planKind=Consumption")), "{commands:#?}");
    assert!(!commands.iter().any(|c| c.contains("keyvault secret set")), "no ServiceNow, no secrets to store");
}

#[test]
fn deploy_dry_run_with_a_parameters_file_leaves_the_connection_to_the_deployment() {
    // No ServiceNow option: the file (which sets serviceNowUrl) decides, through the deployment's outputs, so
    // the dry run shows the secrets a real run stores if the outputs say so, under the output connectionName.
    let file = Path::new(ROOT).join("infra/main.bicepparam");
    let file = file.to_str().unwrap();
    let output =
        script("deploy.sh", &["--dry-run", "--resource-group", "rg3", "--prefix", "itsmc3", "--parameters", file]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let commands = commands(&output);
    let infra = position(&commands, "withActionGroup=false");
    let password =
        position(&commands, "az keyvault secret set --vault-name <keyVaultName> --name <connectionName>-password");
    let client_secret = position(&commands, "--name <connectionName>-client-secret --file /dev/stdin");
    let action_group = position(&commands, "withActionGroup=true");
    assert!(infra < password && password < client_secret && client_secret < action_group, "{commands:#?}");
    assert!(commands[password].starts_with("printf %s <ITSMC_PASSWORD> |"), "{}", commands[password]);
    assert!(commands[client_secret].starts_with("printf %s <ITSMC_CLIENT_SECRET> |"), "{}", commands[client_secret]);
    let deployment = &commands[infra];
    assert!(deployment.contains(&format!("--parameters {file} --parameters namePrefix=itsmc3")), "{deployment}");
    for left_to_the_file in ["connectionName=", "serviceNowUrl=", "serviceNowClientId=", "planKind="] {
        assert!(!deployment.contains(left_to_the_file), "{deployment}");
    }
    assert!(stderr.contains("The parameters file decides whether itsmc connects to ServiceNow"), "{stderr}");
}

#[test]
fn deploy_dry_run_with_a_parameters_file_and_connection_names_the_secrets_by_the_option() {
    let file = Path::new(ROOT).join("infra/main.bicepparam");
    let file = file.to_str().unwrap();
    let output = script(
        "deploy.sh",
        &["--dry-run", "--resource-group", "rg3", "--prefix", "itsmc3", "--parameters", file, "--connection", "ops"],
    );
    let commands = commands(&output);
    assert!(commands[position(&commands, "withActionGroup=false")].contains("connectionName=ops"), "{commands:#?}");
    position(&commands, "<ITSMC_PASSWORD> | az keyvault secret set --vault-name <keyVaultName> --name ops-password");
}

#[test]
fn deploy_what_if_dry_run_leaves_out_the_action_group_and_builds_nothing() {
    let output = script("deploy.sh", &["--dry-run", "--what-if", "--resource-group", "rg-itsmc", "--prefix", "itsmc1"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let commands = commands(&output);
    let what_if = &commands[position(&commands, "az deployment group what-if --resource-group rg-itsmc")];
    assert!(what_if.contains("--name itsmc-itsmc1-infra") && what_if.contains("withActionGroup=false"), "{what_if}");
    assert!(
        !commands.iter().any(|c| c.contains("cargo build") || c.contains("deployment group create")),
        "{commands:#?}"
    );
    assert!(stderr.contains("az functionapp list-flexconsumption-locations"), "the plan check is named: {stderr}");
}

#[test]
fn deploy_what_if_checks_the_region_for_flex_consumption_and_the_app_for_the_action_group() {
    let account = "0000-sub\nContoso Production (EU)\nuser\nops@contoso.com\nend";
    let common = [
        ("account show --output none", Some("")),
        ("account show --query [id, name, user.type, user.name, 'end'] --output tsv", Some(account)),
        ("ad signed-in-user show --query id --output tsv", Some("11111111-2222-3333-4444-555555555555")),
        ("group exists --name rg-itsmc", Some("true")),
        ("functionapp list-flexconsumption-locations --query [].name --output tsv", Some("eastus\nWest Europe")),
        ("deployment group what-if --resource-group rg-itsmc", Some("")),
    ];
    let args = ["--what-if", "--resource-group", "rg-itsmc", "--prefix", "itsmc1"];

    // A first deployment, in a region without Flex Consumption.
    let mut answers = common.to_vec();
    answers.push(("group show --name rg-itsmc --query location --output tsv", Some("switzerlandwest")));
    answers.push(("deployment group show --resource-group rg-itsmc --name itsmc-itsmc1-infra", None));
    let az = fake_az("what-if-first", &answers);
    let (_, stderr, calls) = ran(&script_with_az("deploy.sh", &args, Some(&az)), &az);
    let what_if =
        calls.lines().find(|c| c.starts_with("deployment group what-if")).unwrap_or_else(|| panic!("{calls}"));
    for part in ["--name itsmc-itsmc1-infra", "withActionGroup=false", "planKind=Consumption"] {
        assert!(what_if.contains(part), "{part}: {what_if}");
    }
    assert!(stderr.contains("switzerlandwest does not offer Flex Consumption"), "{stderr}");
    assert!(stderr.contains("The function app does not exist yet"), "{stderr}");

    // Again, where the app exists, in a region with Flex Consumption (names compared without case or spaces).
    let mut answers = common.to_vec();
    answers.push(("group show --name rg-itsmc --query location --output tsv", Some("westeurope")));
    answers.push(("deployment group show --resource-group rg-itsmc --name itsmc-itsmc1-infra", Some("itsmc1-abc")));
    answers.push(("functionapp show --resource-group rg-itsmc --name itsmc1-abc --output none", Some("")));
    let az = fake_az("what-if-again", &answers);
    let (_, _, calls) = ran(&script_with_az("deploy.sh", &args, Some(&az)), &az);
    let what_if =
        calls.lines().find(|c| c.starts_with("deployment group what-if")).unwrap_or_else(|| panic!("{calls}"));
    assert!(
        what_if.contains("--name itsmc-itsmc1-actiongroup") && what_if.contains("withActionGroup=true"),
        "{what_if}"
    );
    assert!(!what_if.contains("planKind="), "the template's FlexConsumption stands: {what_if}");
}

#[test]
fn deploy_help_names_the_permissions_it_needs() {
    let output = script("deploy.sh", &["--help"]);
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    for needed in ["Owner on the resource group", "Contributor plus User Access Administrator", "workspace's tables"] {
        assert!(help.contains(needed), "--help should say {needed}: {help}");
    }
}

#[test]
fn the_scripts_share_one_run_from_lib_sh() {
    for name in ["deploy.sh", "destroy.sh"] {
        let text = read(&format!("infra/{name}"));
        assert!(text.contains(r#"source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh""#), "{name} must source lib.sh");
        for helper in [
            "run() {",
            "quote_arg() {",
            "say() {",
            "die() {",
            "need_value() {",
            "read_lines() {",
            "begin() {",
            "lines() {",
        ] {
            assert!(!text.contains(helper), "{name} defines {helper} again: it belongs in lib.sh");
        }
    }
    assert!(read("infra/lib.sh").contains("\nrun() {"), "lib.sh defines run");
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
fn destroy_reads_the_account_as_lines_and_keeps_only_a_workspace_of_another_group() {
    // az prints a list one value per line; the subscription name has spaces.
    let workspaces = [
        "/subscriptions/0000-sub/resourceGroups/RG-ITSMC/providers/Microsoft.OperationalInsights/workspaces/itsmc1-logs",
        "/subscriptions/0000-sub/resourceGroups/monitoring/providers/Microsoft.OperationalInsights/workspaces/ops-logs",
        "None",
    ]
    .join("\n");
    let az = fake_az(
        "destroy",
        &[
            ("account show --output none", Some("")),
            ("account show --query [id, name, 'end'] --output tsv", Some("0000-sub\nContoso Production (EU)\nend")),
            ("group exists --name rg-itsmc", Some("true")),
            ("resource list --resource-group rg-itsmc", Some("Microsoft.Web/sites\titsmc1-abc")),
            ("keyvault list --resource-group rg-itsmc", Some("kvitsmc1abc")),
            ("deployment group list --resource-group rg-itsmc", Some(&workspaces)),
            ("group delete --name rg-itsmc --yes", Some("")),
        ],
    );
    let (stdout, _, calls) =
        ran(&script_with_az("destroy.sh", &["--resource-group", "rg-itsmc", "--yes"], Some(&az)), &az);
    assert!(calls.contains("group delete --name rg-itsmc --yes"), "{calls}");
    assert!(
        stdout.contains("Log Analytics workspace itsmc1-logs went with the group"),
        "same group, any case: {stdout}"
    );
    assert!(!stdout.contains("--workspace-name itsmc1-logs"), "{stdout}");
    assert!(
        stdout.contains(
            "az monitor log-analytics workspace table delete --subscription 0000-sub --resource-group monitoring \
             --workspace-name ops-logs --name ServiceDesk_CL --yes"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("az keyvault purge --name kvitsmc1abc"), "{stdout}");
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
