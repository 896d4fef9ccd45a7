//! The README's first command, for real: the `itsmc` binary starts on embedded defaults, answers a posted
//! fixture, refuses bad configuration with a message naming the setting, and stops on SIGTERM.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::capture::CaptureExt;
use support::harness::{KillOnDrop, fixture, free_port};

#[tokio::test]
async fn serve_runs_on_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_itsmc"))
        .args(["serve", "--port", &port.to_string()])
        .current_dir(dir.path())
        .env_remove("ITSMC_PRODUCT")
        .env_remove("ITSMC_DATA_DIR")
        .env_remove("ITSMC_CONNECTIONS_FILE")
        .stderr(Stdio::null())
        .captured("serve")
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let health = loop {
        if let Ok(response) = reqwest::get(format!("{url}/")).await {
            break response.json::<serde_json::Value>().await.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "itsmc did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(health["status"], "ready");
    assert_eq!(health["connections"][0]["product"], "dry-run");

    let client = reqwest::Client::new();
    let answer: serde_json::Value = client
        .post(format!("{url}/api/alert"))
        .body(fixture("azure-monitor/cas-test-metric-static-fired.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["action"], "created", "{answer}");
    assert!(dir.path().join("itsmc-data").is_dir(), "state lives in ./itsmc-data by default");

    unsafe { libc_kill(child.id() as i32, 15) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "itsmc did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

#[test]
fn bad_configuration_stops_startup_with_the_setting_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_itsmc"))
        .args(["serve", "--port", "0"])
        .env("ITSMC_PRODUCT", "servicenow")
        .env("ITSMC_URL", "http://contoso.service-now.com")
        .env("ITSMC_USERNAME", "svc")
        .env("ITSMC_PASSWORD", "never-printed-password")
        .captured_output("bad-configuration")
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ITSMC_URL: 'http://contoso.service-now.com' must be an https:// URL"), "{stderr}");
    assert!(!stderr.contains("never-printed-password"));
}

/// Every HTTP function the Functions host exposes (`function-*/function.json`) reaches a route of the
/// router with its method: the host forwards `/api/<route>` unchanged (`enableForwardingHttpRequest`).
#[tokio::test]
async fn every_http_function_reaches_a_route() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let itsmc = support::harness::Itsmc::start(&[]).await;
    let mut routes = Vec::new();
    for entry in std::fs::read_dir(root).unwrap().filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("function-") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path().join("function.json")).unwrap();
        let function: serde_json::Value = serde_json::from_str(&text).unwrap();
        let bindings = function["bindings"].as_array().unwrap();
        let Some(trigger) = bindings.iter().find(|b| b["type"] == "httpTrigger") else { continue };
        assert_eq!(trigger["authLevel"], "function", "{name}: the function key guards every route");
        let route = trigger["route"].as_str().unwrap();
        // Route parameters as the host would fill them: the default connection, each action the router has.
        let paths: Vec<String> = match route {
            "connections/{name}/{action}" => {
                ["test", "refresh"].iter().map(|action| format!("connections/default/{action}")).collect()
            }
            "deliveries/{key}/{action}" => vec!["deliveries/0123abcd/retry".to_string()],
            _ => vec![route.to_string()],
        };
        for (method, path) in
            trigger["methods"].as_array().unwrap().iter().flat_map(|m| paths.iter().map(move |p| (m, p)))
        {
            let method = reqwest::Method::from_bytes(method.as_str().unwrap().to_uppercase().as_bytes()).unwrap();
            let response = reqwest::Client::new()
                .request(method.clone(), format!("{}/api/{path}", itsmc.url))
                .body("{}")
                .send()
                .await
                .unwrap();
            // A route answers in JSON, also when what it names does not exist (the axum fallback's `not_found`
            // is the one 404 that means "no such route").
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            assert!(status != 405 && body["error"]["code"] != "not_found", "{name}: {method} /api/{path} is routed");
        }
        routes.push(route.to_string());
    }
    routes.sort();
    assert_eq!(
        routes,
        [
            "alert",
            "connections/{name}/{action}",
            "dashboard",
            "deliveries/{key}/{action}",
            "health",
            "servicedesk",
            "workitems"
        ]
    );
}

/// `itsmc package` writes the zip a Linux Function App runs: every function folder of the repository and
/// host.json, byte for byte, and the binary with its executable bit (the host cannot start it otherwise).
/// Read back here with a reader of our own, from the zip format's central directory.
#[test]
fn the_package_holds_the_host_layout_with_the_executable_bit() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("itsmc.zip");
    let binary = env!("CARGO_BIN_EXE_itsmc");
    let status = std::process::Command::new(binary)
        .args(["package", "--out", out.to_str().unwrap(), "--binary", binary])
        .status()
        .unwrap();
    assert!(status.success());
    let entries = unzip(&out);

    let mut expected: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|name| name.starts_with("function-"))
        .map(|dir| format!("{dir}/function.json"))
        .chain(["host.json".to_string(), "itsmc".to_string()])
        .collect();
    expected.sort();
    assert_eq!(entries.keys().cloned().collect::<Vec<_>>(), expected, "every function folder, host.json, itsmc");
    for (name, (mode, content)) in &entries {
        if name == "itsmc" {
            assert_eq!(*mode, 0o100755, "the binary is executable");
            assert!(*content == std::fs::read(binary).unwrap(), "the binary, whole");
        } else {
            assert_eq!(*mode, 0o100644, "{name}");
            assert_eq!(content, &std::fs::read(root.join(name)).unwrap(), "{name} as in the repository");
        }
    }
}

type Entries = std::collections::BTreeMap<String, (u32, Vec<u8>)>;

/// A zip's entries (name -> Unix mode, content), read with a reader of our own from its central directory, each
/// checked against its size and CRC.
fn unzip(path: &std::path::Path) -> Entries {
    let zip = std::fs::read(path).unwrap();

    // The end of central directory record, then each central directory header.
    let u16_at = |at: usize| u16::from_le_bytes([zip[at], zip[at + 1]]) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(zip[at..at + 4].try_into().unwrap()) as usize;
    let end = zip.len() - 22;
    assert_eq!(u32_at(end), 0x0605_4b50, "ends with the end of central directory");
    let (count, mut at) = (u16_at(end + 10), u32_at(end + 16));
    let mut entries = std::collections::BTreeMap::new();
    for _ in 0..count {
        assert_eq!(u32_at(at), 0x0201_4b50);
        let (crc, packed, size) = (u32_at(at + 16), u32_at(at + 20), u32_at(at + 24));
        let (name_len, extra, comment) = (u16_at(at + 28), u16_at(at + 30), u16_at(at + 32));
        let mode = (u32_at(at + 38) >> 16) as u32;
        let local = u32_at(at + 42);
        let name = String::from_utf8(zip[at + 46..at + 46 + name_len].to_vec()).unwrap();
        at += 46 + name_len + extra + comment;
        // The entry's data, after its local header.
        assert_eq!(u32_at(local), 0x0403_4b50);
        let start = local + 30 + u16_at(local + 26) + u16_at(local + 28);
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(&zip[start..start + packed]), &mut content)
            .unwrap();
        assert_eq!(content.len(), size, "{name}");
        let mut check = flate2::Crc::new();
        check.update(&content);
        assert_eq!(check.sum() as usize, crc, "{name}");
        entries.insert(name, (mode, content));
    }
    entries
}

/// The package run as the Functions host runs it: unpacked, the executable host.json names started with its
/// arguments in the app's folder and `FUNCTIONS_CUSTOMHANDLER_PORT`, ready when `/` answers, an HTTP trigger's
/// request forwarded as is, the timer's invocation posted to `/function-sync` in the host's envelope. Functions
/// Core Tools cannot be downloaded here, so this is that contract without the host.
#[tokio::test]
async fn the_package_runs_as_the_functions_host_starts_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("itsmc.zip");
    let binary = env!("CARGO_BIN_EXE_itsmc");
    let packaged = Command::new(binary).args(["package", "--out", zip.to_str().unwrap()]).status().unwrap();
    assert!(packaged.success());
    let app = dir.path().join("wwwroot");
    for (name, (mode, content)) in unzip(&zip) {
        let path = app.join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o777)).unwrap();
    }
    let host: serde_json::Value = serde_json::from_slice(&std::fs::read(app.join("host.json")).unwrap()).unwrap();
    let handler = &host["customHandler"];
    assert_eq!(handler["enableForwardingHttpRequest"], true);
    let executable = app.join(handler["description"]["defaultExecutablePath"].as_str().unwrap());
    let arguments: Vec<&str> =
        handler["description"]["arguments"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();

    let port = free_port();
    let start = |extra: &[(&str, &str)]| {
        Command::new(&executable)
            .args(&arguments)
            .current_dir(&app)
            .env_clear()
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("ITSMC_DATA_DIR", dir.path().join("state"))
            .envs(extra.iter().copied())
            .capture_env()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // A key of itsmc's own would lock the host's timer out: refused at start, saying why.
    let refused = start(&[("ITSMC_API_KEY", "a-key-of-our-own-0123456789")]).wait_with_output().unwrap();
    let refused = support::capture::tee("functions-host-refused", refused);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("ITSMC_API_KEY: remove it under the Functions host"));

    let _child = KillOnDrop(support::capture::drain(start(&[]), "functions-host"));
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while !reqwest::get(format!("{url}/")).await.is_ok_and(|r| r.status() == 200) {
        assert!(started.elapsed() < Duration::from_secs(20), "the readiness probe never answered 200");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = reqwest::Client::new();
    let alert = fixture("azure-monitor/cas-test-metric-static-fired.json");
    let answer: serde_json::Value =
        client.post(format!("{url}/api/alert?code=host-key")).body(alert).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["action"], "created", "{answer}");
    let envelope = fixture("protocols/functions-customhandler-timer-request.json");
    let timer = client.post(format!("{url}/function-sync")).body(envelope).send().await.unwrap();
    assert_eq!(timer.status(), 200);
    let timer: serde_json::Value = timer.json().await.unwrap();
    assert!(timer["Outputs"].is_object() && timer["Logs"].is_array(), "{timer}");
    let returned: serde_json::Value = serde_json::from_str(timer["ReturnValue"].as_str().unwrap()).unwrap();
    assert!(returned["outbox"].is_object() && returned["sync"].is_object(), "{returned}");
}
