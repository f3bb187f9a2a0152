//! `edgepush-config`, run as a user runs it: `import-sygnal` on a realistic
//! `sygnal.yaml`, `check-config` on its result, and broken inputs.
//!
//! Paths are relative to the package root, where `cargo test` runs; the key
//! files under `tests/sygnal/keys/` are test-only keys.

#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

const SYGNAL_YAML: &str = "tests/sygnal/sygnal.yaml";
const EXPECTED_APPS: &str = "tests/sygnal/expected-apps.json";

/// The secret commands for `tests/sygnal/sygnal.yaml`: the sandbox build
/// shares the production build's key, so it shares its secret.
const EXPECTED_SECRET_COMMANDS: &[&str] = &[
    "npx wrangler secret put FCM_SERVICE_ACCOUNT_CHAT_FLUFFY_FLUFFYCHAT < tests/sygnal/keys/test-only-fluffychat-service-account.json",
    "npx wrangler secret put FCM_SERVICE_ACCOUNT_COM_EXAMPLE_CHAT_ANDROID < tests/sygnal/keys/test-only-chat-service-account.json",
    "npx wrangler secret put APNS_KEY_COM_EXAMPLE_CHAT_IOS < tests/sygnal/keys/test-only-apns-key.p8",
    "npx wrangler secret put VAPID_KEY_COM_EXAMPLE_CHAT_WEB < tests/sygnal/keys/test-only-vapid-key.pem",
];

const SECRET_FILES: &[(&str, &str)] = &[
    ("FCM_SERVICE_ACCOUNT_CHAT_FLUFFY_FLUFFYCHAT", "tests/sygnal/keys/test-only-fluffychat-service-account.json"),
    ("FCM_SERVICE_ACCOUNT_COM_EXAMPLE_CHAT_ANDROID", "tests/sygnal/keys/test-only-chat-service-account.json"),
    ("APNS_KEY_COM_EXAMPLE_CHAT_IOS", "tests/sygnal/keys/test-only-apns-key.p8"),
    ("VAPID_KEY_COM_EXAMPLE_CHAT_WEB", "tests/sygnal/keys/test-only-vapid-key.pem"),
];

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Run {
    let Output { status, stdout, stderr } =
        Command::new(env!("CARGO_BIN_EXE_edgepush-config")).args(args).output().expect("run edgepush-config");
    Run {
        code: status.code().expect("exit code"),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

/// A scratch directory of this test's own.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgepush-config-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn expected_apps() -> Value {
    serde_json::from_str(&std::fs::read_to_string(EXPECTED_APPS).unwrap()).unwrap()
}

fn secret_args() -> Vec<String> {
    SECRET_FILES.iter().flat_map(|(name, path)| ["--secret".to_string(), format!("{name}={path}")]).collect()
}

fn check(extra: &[&str]) -> Run {
    let secrets = secret_args();
    let mut args: Vec<&str> = vec!["check-config"];
    args.extend_from_slice(extra);
    args.extend(secrets.iter().map(String::as_str));
    run(&args)
}

#[test]
fn sygnal_yaml_converts_to_the_expected_apps() {
    let out = run(&["import-sygnal", SYGNAL_YAML]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let apps: Value = serde_json::from_str(&out.stdout).expect("stdout is the APPS JSON alone");
    assert_eq!(apps, expected_apps());
}

#[test]
fn expected_apps_spells_out_every_mapped_key() {
    let apps = expected_apps();
    assert_eq!(
        apps["com.example.chat.ios.dev"],
        json!({
            "type": "apns", "platform": "sandbox", "topic": "com.example.chat.dev",
            "team_id": "TEAM123456", "key_id": "ABC123DEFG", "key_secret": "APNS_KEY_COM_EXAMPLE_CHAT_IOS",
            "convert_device_token_to_hex": false
        })
    );
    assert_eq!(apps["com.example.chat.ios"]["push_type"], "alert");
    assert_eq!(apps["com.example.chat.android"]["fcm_options"]["apns"]["payload"]["aps"]["mutable-content"], 1);
    assert_eq!(apps["com.example.chat.android"]["send_badge_counts"], false, "Sygnal 0.17's switch carries over");
    assert_eq!(apps["com.example.chat.web"]["vapid_contact"], "mailto:ops@example.com");
    assert_eq!(apps["com.example.chat.web"]["ttl"], 3600);
    assert_eq!(apps["com.example.chat.web"]["allowed_endpoints"][3], "https://push.example.net:8443");
    assert!(apps.get("chat.fluffy.fluffychat.*").is_some(), "glob app ids carry over unchanged");
    for dropped in ["com.example.legacy.ios", "com.example.legacy.android", "org.example.custom"] {
        assert!(apps.get(dropped).is_none(), "{dropped} has no edgepush equivalent");
    }
}

#[test]
fn secret_commands_are_printed_once_per_key_file() {
    let out = run(&["import-sygnal", SYGNAL_YAML]);
    let commands: Vec<&str> =
        out.stderr.lines().map(str::trim).filter(|l| l.starts_with("npx wrangler secret put")).collect();
    assert_eq!(commands, EXPECTED_SECRET_COMMANDS);
    let check_line = out.stderr.lines().find(|l| l.contains("check-config")).unwrap();
    for (name, path) in SECRET_FILES {
        assert!(check_line.contains(&format!("--secret {name}={path}")), "{check_line}");
    }
}

#[test]
fn what_cannot_carry_over_is_named_with_what_to_do() {
    let out = run(&["import-sygnal", SYGNAL_YAML]);
    let line = |needle: &str| {
        out.stderr.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in\n{}", out.stderr))
    };
    assert!(line(r#"apps."com.example.legacy.ios".certfile"#).contains(".p8"));
    assert!(line(r#"apps."com.example.legacy.android".api_version"#).contains("service account"));
    assert!(line(r#"apps."org.example.custom".type"#).contains("custom pushkin class"));
    assert!(line(r#"apps."com.example.chat.ios".inflight_request_limit"#).contains("MAX_DEVICES"));
    assert!(line(r#"apps."com.example.chat.android".max_connections"#).contains("connections"));
    for section in ["log", "http", "metrics", "proxy"] {
        assert!(out.stderr.lines().any(|l| l.trim_start().starts_with(&format!("{section}: "))), "{section}");
    }
    assert!(out.stderr.contains("Converted 5 of 8 app(s)"), "{}", out.stderr);
    assert!(!out.stdout.contains("test-only-legacy-server-key"), "nothing of a dropped key reaches the output");
}

#[test]
fn toml_output_is_a_wrangler_vars_table_with_the_same_apps() {
    let out = run(&["import-sygnal", SYGNAL_YAML, "--format", "toml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(r#"[vars.APPS."chat.fluffy.fluffychat.*"]"#), "{}", out.stdout);
    let table: toml::Table = out.stdout.parse().expect("valid TOML");
    let apps = serde_json::to_value(&table["vars"]["APPS"]).unwrap();
    assert_eq!(apps, expected_apps());
}

#[test]
fn converted_apps_pass_check_config() {
    let out = check(&["--apps", &format!("@{EXPECTED_APPS}")]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("all 5 apps OK"), "{}", out.stdout);
}

#[test]
fn converted_toml_passes_check_config() {
    let dir = scratch("toml");
    let toml = run(&["import-sygnal", SYGNAL_YAML, "--format", "toml"]).stdout;
    let wrangler = write(&dir, "wrangler.toml", &format!("name = \"edgepush\"\n\n[vars]\nMAX_DEVICES = \"20\"\n\n{toml}"));
    let out = check(&["--apps", &format!("@{wrangler}")]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("all 5 apps OK"));
}

/// `.dev.vars` as a user writes it: JSON (APPS, a service account) on one
/// line in single quotes, a PEM on one line in double quotes with `\n`.
#[test]
fn check_config_reads_dev_vars() {
    let dir = scratch("dev-vars");
    let apps = serde_json::to_string(&expected_apps()).unwrap();
    let mut text = format!("# local\nAPPS='{apps}'\n");
    for (name, path) in SECRET_FILES {
        let content = std::fs::read_to_string(path).unwrap();
        text += &match serde_json::from_str::<Value>(&content) {
            Ok(json) => format!("{name}='{json}'\n"),
            Err(_) => format!("{name}=\"{}\"\n", content.trim_end().replace('\n', "\\n")),
        };
    }
    let dev_vars = write(&dir, ".dev.vars", &text);
    let out = run(&["check-config", "--dev-vars", &dev_vars]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("all 5 apps OK"));
}

#[test]
fn check_config_names_each_problem_by_app_and_field() {
    let apps = json!({
        "good.web": {"type": "webpush", "vapid_private_key_secret": "VAPID_KEY_COM_EXAMPLE_CHAT_WEB", "vapid_contact": "mailto:a@example.com"},
        "no.secret": {"type": "apns", "topic": "t", "team_id": "T", "key_id": "K", "key_secret": "MISSING_KEY"},
        "bad.key": {"type": "fcm", "project_id": "p", "service_account_secret": "APNS_KEY_COM_EXAMPLE_CHAT_IOS"},
        "odd.type": {"type": "gcm"},
        "bad.field": {"type": "unifiedpush", "allowed_endpoint": []},
        "*.up": {"type": "unifiedpush"},
        "chat.*": {"type": "unifiedpush"}
    });
    let out = check(&["--apps", &apps.to_string()]);
    assert_eq!(out.code, 1);
    let line = |app: &str| out.stdout.lines().find(|l| l.contains(app)).unwrap_or_else(|| panic!("{app}:\n{}", out.stdout));
    assert!(line("ok      good.web").starts_with("ok"));
    assert!(line("no.secret").contains("key_secret") && line("no.secret").contains("MISSING_KEY"));
    assert!(line("bad.key:").contains("service_account_secret"), "{}", line("bad.key:"));
    assert!(line("odd.type").contains("unknown type"));
    assert!(line("bad.field").contains("allowed_endpoint"));
    assert!(out.stdout.contains(r#"globs "*.up" and "chat.*" overlap"#) || out.stdout.contains(r#"globs "chat.*" and "*.up" overlap"#), "{}", out.stdout);
    assert!(out.stdout.contains("4 of 7 apps have problems"), "{}", out.stdout);
    assert!(!out.stdout.contains("PRIVATE KEY"), "no key material in the report");
}

#[test]
fn check_config_reports_overlapping_globs_as_an_error_naming_both() {
    let apps = json!({"chat.*": {"type": "unifiedpush"}, "*.ios": {"type": "unifiedpush"}, "*.android": {"type": "unifiedpush"}});
    let out = run(&["check-config", "--apps", &apps.to_string()]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let errors: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 2, "{}", out.stdout);
    for glob in ["\"*.ios\"", "\"*.android\""] {
        let line = errors.iter().find(|l| l.contains(glob)).unwrap_or_else(|| panic!("{glob}:\n{}", out.stdout));
        assert!(line.contains("\"chat.*\"") && line.contains("overlap") && line.contains("e.g."), "{line}");
    }
    assert!(out.stdout.contains("all 3 apps load, but APPS has problems"), "{}", out.stdout);
    assert!(!out.stdout.contains("apps OK"), "{}", out.stdout);
}

#[test]
fn check_config_warns_of_auto_with_url_and_no_sandbox_url() {
    let apns = |extra: Value| {
        let mut app = json!({"type": "apns", "topic": "t", "team_id": "T", "key_id": "K", "key_secret": "APNS_KEY_COM_EXAMPLE_CHAT_IOS"});
        app.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        app
    };
    let apps = json!({
        "one.host": apns(json!({"platform": "auto", "url": "http://127.0.0.1:9000"})),
        "two.hosts": apns(json!({"platform": "auto", "url": "http://127.0.0.1:9000", "sandbox_url": "http://127.0.0.1:9001"})),
    });
    let out = check(&["--apps", &apps.to_string()]);
    assert_eq!(out.code, 0, "a warning, not a problem: {}", out.stdout);
    let warnings: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("warning: ") && l.contains("sandbox_url")).collect();
    assert_eq!(warnings.len(), 1, "{}", out.stdout);
    assert!(warnings[0].starts_with("warning: one.host: url:") && warnings[0].contains("auto"), "{}", warnings[0]);
}

#[test]
fn check_config_refuses_bad_apps_json_and_unreadable_secrets() {
    let out = check(&["--apps", "{\"a\": "]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("--apps is not valid JSON"), "{}", out.stdout);
    let out = run(&["check-config", "--apps", "{}", "--secret", "X=tests/sygnal/keys/absent.p8"]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("--secret X: cannot read tests/sygnal/keys/absent.p8"), "{}", out.stdout);
}

#[test]
fn a_missing_key_file_is_an_error_naming_the_place() {
    let dir = scratch("missing-key");
    let yaml = write(
        &dir,
        "sygnal.yaml",
        "apps:\n  com.example.app:\n    type: apns\n    keyfile: /nonexistent/AuthKey_ABC.p8\n    key_id: ABC\n    team_id: T\n    topic: com.example.app\n",
    );
    let out = run(&["import-sygnal", &yaml]);
    assert_eq!(out.code, 1);
    let error = out.stderr.lines().find(|l| l.contains(r#"apps."com.example.app".keyfile"#)).expect(&out.stderr);
    assert!(error.contains("cannot read \"/nonexistent/AuthKey_ABC.p8\""), "{error}");
    assert!(out.stdout.contains("APNS_KEY_COM_EXAMPLE_APP"), "the config is still printed");
}

#[test]
fn a_key_file_that_is_not_a_key_is_refused_by_the_worker_parser() {
    let dir = scratch("bad-key");
    let key = write(&dir, "AuthKey.p8", "this is not a key\n");
    let yaml = write(
        &dir,
        "sygnal.yaml",
        &format!("apps:\n  com.example.app:\n    type: apns\n    keyfile: {key}\n    key_id: ABC\n    team_id: T\n    topic: t\n"),
    );
    let out = run(&["import-sygnal", &yaml]);
    assert_eq!(out.code, 1);
    let error = out.stderr.lines().find(|l| l.contains(r#"apps."com.example.app""#)).expect(&out.stderr);
    assert!(error.contains("key_secret"), "{error}");
}

#[test]
fn an_unknown_type_is_an_error_naming_the_place() {
    let dir = scratch("unknown-type");
    let yaml = write(&dir, "sygnal.yaml", "apps:\n  com.example.app:\n    type: fcm\n    project_id: p\n");
    let out = run(&["import-sygnal", &yaml]);
    assert_eq!(out.code, 1);
    let error = out.stderr.lines().find(|l| l.contains(r#"apps."com.example.app".type"#)).expect(&out.stderr);
    assert!(error.contains("unknown type \"fcm\""), "{error}");
}

#[test]
fn bad_yaml_is_an_error_naming_the_line() {
    let dir = scratch("bad-yaml");
    let yaml = write(&dir, "sygnal.yaml", "apps:\n  com.example.app:\n    type: apns\n   keyfile: [\n");
    let out = run(&["import-sygnal", &yaml]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains(&yaml) && out.stderr.contains("line 4"), "{}", out.stderr);
}

#[test]
fn an_unreadable_file_and_bad_usage_fail_clearly() {
    let out = run(&["import-sygnal", "tests/sygnal/absent.yaml"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("cannot read tests/sygnal/absent.yaml"));
    assert_eq!(run(&["import-sygnal"]).code, 2);
    assert_eq!(run(&["import-sygnal", SYGNAL_YAML, "--format", "yaml"]).code, 2);
    assert_eq!(run(&["frobnicate"]).code, 2);
    assert_eq!(run(&["--help"]).code, 0);
}

#[test]
fn check_config_validates_hms_apps() {
    let dir = scratch("hms");
    let secret_value = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let secret = write(&dir, "hms-app-secret.txt", &format!("{secret_value}\n"));
    let hms = |app_id: Value, extra: Value| {
        let mut entry = json!({"type": "hms", "hms_app_id": app_id, "app_secret_secret": "HMS_APP_SECRET"});
        entry.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        entry
    };
    let apps = json!({
        "good.huawei": hms(json!(104123456), json!({"category": "IM"})),
        "plain.huawei": hms(json!("104123457"), json!({})),
        "no.secret": hms(json!("104123458"), json!({"app_secret_secret": "HMS_MISSING"})),
        "bad.category": hms(json!("104123459"), json!({"category": "im"})),
        "bad.appid": hms(json!("104/123"), json!({"category": "IM"})),
    });
    let out = run(&["check-config", "--apps", &apps.to_string(), "--secret", &format!("HMS_APP_SECRET={secret}")]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let line = |app: &str| out.stdout.lines().find(|l| l.contains(app)).unwrap_or_else(|| panic!("{app}:\n{}", out.stdout));
    assert!(line("good.huawei").starts_with("ok      good.huawei (hms)"), "{}", out.stdout);
    assert!(line("ok      plain.huawei").contains("(hms)"));
    assert!(line("warning: plain.huawei").contains("category"), "{}", out.stdout);
    assert!(!out.stdout.contains("warning: good.huawei"), "{}", out.stdout);
    assert!(line("no.secret").starts_with("BROKEN") && line("no.secret").contains("HMS_MISSING"));
    assert!(line("bad.category").starts_with("BROKEN") && line("bad.category").contains("category"));
    assert!(line("bad.appid").starts_with("BROKEN") && line("bad.appid").contains("hms_app_id"));
    assert!(out.stdout.contains("3 of 5 apps have problems"), "{}", out.stdout);
    assert!(!out.stdout.contains(secret_value), "no secret in the report");
}
