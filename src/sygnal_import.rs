//! `edgepush-config import-sygnal`: turn a Sygnal `sygnal.yaml` into `APPS`.
//!
//! Host only (the worker never reads YAML). The result is checked with the
//! crate's own parser (`apps::Apps::load`), so the conversion cannot drift
//! from what the worker accepts.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{json, Map, Value};

use crate::apps::Apps;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The input is broken (Sygnal would refuse it too): exit non-zero.
    Error,
    /// A Sygnal setting with no edgepush equivalent: the user must act.
    NotCarriedOver,
    /// Carried over, but written differently.
    Changed,
    /// Has no meaning at the edge: dropped on purpose.
    NotNeeded,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::NotCarriedOver => "not carried over",
            Severity::Changed => "changed",
            Severity::NotNeeded => "not needed at the edge",
        })
    }
}

/// One finding, with the place in `sygnal.yaml` it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub severity: Severity,
    /// E.g. `apps."com.example.ios".keyfile`.
    pub place: String,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.severity, self.place, self.message)
    }
}

/// What a credential file holds, which decides its secret's name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CredentialKind {
    ApnsKey,
    FcmServiceAccount,
    VapidKey,
}

impl CredentialKind {
    fn prefix(self) -> &'static str {
        match self {
            CredentialKind::ApnsKey => "APNS_KEY",
            CredentialKind::FcmServiceAccount => "FCM_SERVICE_ACCOUNT",
            CredentialKind::VapidKey => "VAPID_KEY",
        }
    }

    /// The Sygnal key that names such a file.
    pub fn sygnal_key(self) -> &'static str {
        match self {
            CredentialKind::ApnsKey => "keyfile",
            CredentialKind::FcmServiceAccount => "service_account_file",
            CredentialKind::VapidKey => "vapid_private_key",
        }
    }
}

/// A credential file and the secret that will hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    pub name: String,
    pub kind: CredentialKind,
    /// As written in `sygnal.yaml` (relative paths are read from the current
    /// directory, as Sygnal does).
    pub path: String,
    /// The app ids whose entries name this secret.
    pub apps: Vec<String>,
}

impl SecretFile {
    /// The command that stores the file as a Worker secret.
    pub fn command(&self) -> String {
        format!("npx wrangler secret put {} < {}", self.name, shell_quote(&self.path))
    }

    /// The `check-config` argument that reads the file directly.
    pub fn check_arg(&self) -> String {
        format!("--secret {}", shell_quote(&format!("{}={}", self.name, self.path)))
    }

    fn place(&self) -> String {
        let app = self.apps.first().map_or("?", String::as_str);
        format!("{}.{}", app_place(app), self.kind.sygnal_key())
    }
}

/// The outcome of converting one `sygnal.yaml`.
#[derive(Debug, Clone, Default)]
pub struct Import {
    /// The `APPS` object, keyed by app id or glob exactly as in Sygnal.
    pub apps: Map<String, Value>,
    /// How many apps `sygnal.yaml` has, converted or not.
    pub sygnal_apps: usize,
    /// One per distinct credential file, in order of first use.
    pub secrets: Vec<SecretFile>,
    pub notes: Vec<Note>,
}

impl Import {
    pub fn has_errors(&self) -> bool {
        self.notes.iter().any(|n| n.severity == Severity::Error)
    }
}

/// The output formats of `import-sygnal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The `APPS` object as JSON (for `.dev.vars` or a JSON config).
    Json,
    /// `[vars.APPS."<app id>"]` tables to paste into `wrangler.toml`.
    Toml,
}

/// Why a Sygnal top-level section has no place at the edge.
const SECTION_REASONS: &[(&str, &str)] = &[
    ("log", "the Worker writes one JSON line per notify; read them with `npx wrangler tail` or Workers Logs ([observability] in wrangler.toml)"),
    ("http", "the Worker answers on its workers.dev address or route; there is no address or port to bind"),
    ("metrics", "outcome counters go to Analytics Engine when the METRICS binding is set; there is no Prometheus, OpenTracing or Sentry endpoint"),
    ("proxy", "Workers reach Apple, Google and push services directly; outbound requests take no proxy"),
    ("database", "edgepush keeps no database; access tokens are cached in the TOKENS KV namespace"),
];

/// Per-app Sygnal keys that only tune the Sygnal process.
const APP_KEY_REASONS: &[(&str, &str)] = &[
    ("inflight_request_limit", "each notify runs in its own Worker invocation; MAX_DEVICES caps the work of one request"),
    ("max_connections", "the Workers runtime manages outbound connections (at most 6 open at once per request)"),
    ("http_proxy", "Workers reach providers directly; outbound requests take no proxy"),
    ("proxy", "Workers reach providers directly; outbound requests take no proxy"),
];

const APNS_KEYS: &[&str] = &[
    "type", "platform", "certfile", "team_id", "key_id", "keyfile", "topic", "push_type", "convert_device_token_to_hex",
    "send_badge_counts",
];
const GCM_KEYS: &[&str] =
    &["type", "api_key", "api_version", "fcm_options", "project_id", "service_account_file", "send_badge_counts"];
const WEBPUSH_KEYS: &[&str] =
    &["type", "vapid_private_key", "vapid_contact_email", "allowed_endpoints", "ttl", "send_badge_counts"];

/// Sygnal's accepted `push_type` values (`ApnsPushkin.APNS_PUSH_TYPES`).
const APNS_PUSH_TYPES: &[&str] = &["alert", "background", "voip", "complication", "fileprovider", "mdm"];

/// The fields of an FCM v1 `Message`: `fcm_options` is the base of one.
const FCM_V1_MESSAGE_FIELDS: &[&str] =
    &["name", "data", "notification", "android", "webpush", "apns", "fcm_options", "token", "topic", "condition"];
/// Fields edgepush sets on every message: its values win over `fcm_options`.
const FCM_FIELDS_SET_BY_EDGEPUSH: &[&str] = &["data", "token"];

/// Parse a `sygnal.yaml` and convert its `apps` section.
///
/// `Err` only when the file as a whole is unusable (not YAML, not a mapping,
/// no `apps`); problems with single apps are notes, and the other apps
/// still convert.
pub fn convert(yaml: &str) -> Result<Import, String> {
    let root: Value = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
    let Value::Object(root) = root else {
        return Err("the file is not a YAML mapping of sections (log, http, apps, …)".into());
    };
    let mut import = Import::default();
    for section in root.keys().filter(|k| k.as_str() != "apps") {
        let reason = SECTION_REASONS
            .iter()
            .find(|(name, _)| name == section)
            .map_or("not a Sygnal section; ignored", |(_, reason)| reason);
        import.note(Severity::NotNeeded, section.clone(), reason);
    }
    let apps = match root.get("apps") {
        Some(Value::Object(apps)) => apps,
        Some(Value::Null) | None => return Err("no `apps` section: there is nothing to convert".into()),
        Some(_) => return Err("`apps` must be a mapping of app id to its settings".into()),
    };
    if apps.is_empty() {
        return Err("the `apps` section is empty: there is nothing to convert".into());
    }
    import.sygnal_apps = apps.len();
    for (app_id, settings) in apps {
        if let Some(entry) = convert_app(&mut import, app_id, settings) {
            import.apps.insert(app_id.clone(), entry);
        }
    }
    Ok(import)
}

/// Read each credential file with `read` and load the converted `APPS` with
/// the worker's own parser; every problem becomes an error note.
pub fn verify(import: &mut Import, read: impl Fn(&str) -> Result<String, String>) {
    let mut contents = BTreeMap::new();
    let mut problems = Vec::new();
    for secret in &import.secrets {
        match read(&secret.path) {
            Ok(text) => {
                contents.insert(secret.name.clone(), text);
            }
            Err(e) => problems.push((
                secret.place(),
                format!(
                    "cannot read {:?}: {e} (relative paths are read from the current directory, as Sygnal does)",
                    secret.path
                ),
            )),
        }
    }
    let apps = Apps::load(Some(&Value::Object(import.apps.clone())), &|name: &str| contents.get(name).cloned());
    if let Some(error) = &apps.global_error {
        problems.push(("apps".into(), format!("the converted APPS is refused: {error}")));
    }
    for entry in &apps.entries {
        let Err(error) = &entry.app else { continue };
        let uses_unreadable_file = import.secrets.iter().any(|s| s.apps.contains(&entry.pattern) && !contents.contains_key(&s.name));
        if !uses_unreadable_file {
            problems.push((app_place(&entry.pattern), format!("the converted entry is refused: {error}")));
        }
    }
    for (place, message) in problems {
        import.note(Severity::Error, place, message);
    }
    for overlap in &apps.overlaps {
        import.note(
            Severity::NotCarriedOver,
            "apps",
            format!(
                "{overlap}. Sygnal rejected the pushkeys of such an app id, which made the homeserver delete \
                 their pushers; edgepush refuses to guess, and check-config reports it as an error"
            ),
        );
    }
}

/// The converted `APPS` in the chosen format.
pub fn render(apps: &Map<String, Value>, format: Format) -> Result<String, String> {
    match format {
        Format::Json => serde_json::to_string_pretty(apps).map(|s| s + "\n").map_err(|e| e.to_string()),
        Format::Toml => {
            let wrapped = json!({ "vars": { "APPS": apps } });
            toml::to_string(&wrapped).map_err(|e| format!("cannot write APPS as TOML ({e}); use --format json"))
        }
    }
}

impl Import {
    fn note(&mut self, severity: Severity, place: impl Into<String>, message: impl Into<String>) {
        self.notes.push(Note { severity, place: place.into(), message: message.into() });
    }

    /// The secret that will hold `path`: one per distinct file, so apps
    /// sharing a key (e.g. a production and a sandbox build) share a secret.
    fn secret_for(&mut self, kind: CredentialKind, path: &str, app_id: &str) -> String {
        if let Some(existing) = self.secrets.iter_mut().find(|s| s.kind == kind && s.path == path) {
            existing.apps.push(app_id.to_string());
            return existing.name.clone();
        }
        let base = secret_name(kind, app_id);
        let mut name = base.clone();
        let mut n = 2;
        while self.secrets.iter().any(|s| s.name == name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        self.secrets.push(SecretFile { name: name.clone(), kind, path: path.to_string(), apps: vec![app_id.to_string()] });
        name
    }
}

/// `APNS_KEY_COM_EXAMPLE_APP`: the kind's prefix and the app id in upper
/// case, each run of other characters (dots, dashes, glob signs) one `_`.
pub fn secret_name(kind: CredentialKind, app_id: &str) -> String {
    let mut name = kind.prefix().to_string();
    let mut gap = true;
    for c in app_id.chars() {
        if c.is_ascii_alphanumeric() {
            if gap {
                name.push('_');
                gap = false;
            }
            name.push(c.to_ascii_uppercase());
        } else {
            gap = true;
        }
    }
    name
}

/// `apps."<app id>"`: app ids hold dots, so they are quoted.
pub fn app_place(app_id: &str) -> String {
    format!("apps.{}", Value::String(app_id.to_string()))
}

fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '=' | ':' | '+' | ','));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// One app's settings, read with the place of each key at hand.
struct AppReader<'a> {
    app_id: &'a str,
    settings: &'a Map<String, Value>,
    errors: Vec<(String, String)>,
}

impl<'a> AppReader<'a> {
    fn place(&self, key: &str) -> String {
        format!("{}.{key}", app_place(self.app_id))
    }

    fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push((self.place(key), message.into()));
    }

    /// A string setting; Sygnal type-checks its settings, and so do we.
    fn string(&mut self, key: &str) -> Option<String> {
        match self.settings.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.error(key, format!("must be a string, not {other} (quote it in sygnal.yaml)"));
                None
            }
        }
    }

    fn required(&mut self, key: &str, why: &str) -> Option<String> {
        let value = self.string(key);
        if value.is_none() && !self.errors.iter().any(|(place, _)| *place == self.place(key)) {
            self.error(key, format!("missing: {why}"));
        }
        value
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        match self.settings.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                self.error(key, format!("must be true or false, not {other}"));
                None
            }
        }
    }

    fn seconds(&mut self, key: &str) -> Option<u64> {
        match self.settings.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(secs) => Some(secs),
                None => {
                    self.error(key, format!("must be a whole number of seconds, not {v}"));
                    None
                }
            },
        }
    }

    fn strings(&mut self, key: &str) -> Option<Vec<String>> {
        match self.settings.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => {
                let strings: Vec<String> = items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect();
                if strings.len() == items.len() {
                    Some(strings)
                } else {
                    self.error(key, "must be a list of strings");
                    None
                }
            }
            Some(other) => {
                self.error(key, format!("must be a list of strings, not {other}"));
                None
            }
        }
    }
}

fn convert_app(import: &mut Import, app_id: &str, settings: &Value) -> Option<Value> {
    let here = app_place(app_id);
    let Value::Object(settings) = settings else {
        import.note(Severity::Error, here, "must be a mapping of settings (type, …)");
        return None;
    };
    let kind = match settings.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(other) => {
            import.note(Severity::Error, format!("{here}.type"), format!("must be a string, not {other}"));
            return None;
        }
        None => {
            import.note(Severity::Error, format!("{here}.type"), "missing: one of apns, gcm, webpush");
            return None;
        }
    };
    let known: &[&str] = match kind {
        "apns" => APNS_KEYS,
        "gcm" => GCM_KEYS,
        "webpush" => WEBPUSH_KEYS,
        custom if custom.contains('.') => {
            import.note(
                Severity::NotCarriedOver,
                format!("{here}.type"),
                format!(
                    "{custom:?} is a custom pushkin class; edgepush runs no Python. Configure the app as \
                     apns, fcm, hms (Huawei Push Kit), webpush or unifiedpush if its provider is one of those, \
                     or keep Sygnal running for it"
                ),
            );
            return None;
        }
        unknown => {
            import.note(
                Severity::Error,
                format!("{here}.type"),
                format!(
                    "unknown type {unknown:?} (Sygnal knows apns, gcm, webpush, or a Python class such as \
                     mymodule.MyPushkin)"
                ),
            );
            return None;
        }
    };
    for key in settings.keys().filter(|k| !known.contains(&k.as_str())) {
        let place = format!("{here}.{key}");
        match APP_KEY_REASONS.iter().find(|(name, _)| name == key) {
            Some((_, reason)) => import.note(Severity::NotNeeded, place, *reason),
            None => import.note(
                Severity::NotCarriedOver,
                place,
                format!("not a {kind} setting Sygnal understands (it ignored it too); dropped"),
            ),
        }
    }
    let mut reader = AppReader { app_id, settings, errors: Vec::new() };
    let mut entry = match kind {
        "apns" => convert_apns(import, &mut reader),
        "gcm" => convert_gcm(import, &mut reader),
        _ => convert_webpush(import, &mut reader),
    };
    // Sygnal 0.17: `send_badge_counts: false` leaves every count out; the
    // same name and meaning in every edgepush app type.
    let send_badge_counts = reader.boolean("send_badge_counts");
    if let Some(entry) = &mut entry {
        insert_some(entry, "send_badge_counts", send_badge_counts.map(Value::Bool));
    }
    let failed = !reader.errors.is_empty();
    for (place, message) in reader.errors {
        import.note(Severity::Error, place, message);
    }
    if failed {
        None
    } else {
        entry
    }
}

fn convert_apns(import: &mut Import, app: &mut AppReader<'_>) -> Option<Value> {
    // Always written, and never `auto`: the app keeps the environment Sygnal
    // sent it to. `auto` is the operator's choice to make afterwards.
    let platform = match app.string("platform").as_deref() {
        None | Some("production" | "prod") => "production",
        Some("sandbox") => "sandbox",
        Some(other) => {
            app.error("platform", format!("{other:?} is neither production nor sandbox"));
            "production"
        }
    };
    let certfile = app.string("certfile");
    let keyfile = app.string("keyfile");
    let keyfile = match (certfile, keyfile) {
        (Some(_), None) => {
            import.note(
                Severity::NotCarriedOver,
                format!("{}.certfile", app_place(app.app_id)),
                "certificate auth: edgepush signs with an APNs auth key instead. Create one at \
                 developer.apple.com → Certificates, Identifiers & Profiles → Keys (enable Apple Push \
                 Notifications service), download the .p8, then set keyfile, key_id, team_id and topic \
                 (the bundle id) for this app in sygnal.yaml and run import-sygnal again",
            );
            return None;
        }
        (Some(_), Some(keyfile)) => {
            import.note(
                Severity::Changed,
                format!("{}.certfile", app_place(app.app_id)),
                "Sygnal used the certificate when both certfile and keyfile are set; edgepush uses the key \
                 (token auth) and drops the certificate",
            );
            keyfile
        }
        (None, Some(keyfile)) => keyfile,
        (None, None) => {
            app.error("keyfile", "missing: an APNs app needs keyfile (token auth) with key_id, team_id and topic");
            return None;
        }
    };
    let key_id = app.required("key_id", "token auth needs the key's id (10 characters)");
    let team_id = app.required("team_id", "token auth needs the Apple developer team id");
    let topic = app.required("topic", "token auth needs the topic (the app's bundle id)");
    let push_type = app.string("push_type");
    if let Some(push_type) = &push_type {
        if !APNS_PUSH_TYPES.contains(&push_type.as_str()) {
            app.error("push_type", format!("{push_type:?} is not one of {}", APNS_PUSH_TYPES.join(", ")));
        }
    }
    let hex = app.boolean("convert_device_token_to_hex");
    let (key_id, team_id, topic) = (key_id?, team_id?, topic?);
    let mut entry = json!({
        "type": "apns",
        "platform": platform,
        "topic": topic,
        "team_id": team_id,
        "key_id": key_id,
        "key_secret": import.secret_for(CredentialKind::ApnsKey, &keyfile, app.app_id),
    });
    insert_some(&mut entry, "push_type", push_type.map(Value::String));
    insert_some(&mut entry, "convert_device_token_to_hex", hex.map(Value::Bool));
    Some(entry)
}

fn convert_gcm(import: &mut Import, app: &mut AppReader<'_>) -> Option<Value> {
    let here = app_place(app.app_id);
    let api_version = app.string("api_version");
    let project_id = app.string("project_id");
    let service_account_file = app.string("service_account_file");
    let api_key = app.string("api_key");
    match api_version.as_deref() {
        Some("v1") => {
            if api_key.is_some() {
                import.note(Severity::NotNeeded, format!("{here}.api_key"), "FCM v1 authenticates with the service account; the server key is unused");
            }
        }
        None | Some("legacy") => {
            let (Some(_), Some(_)) = (&project_id, &service_account_file) else {
                import.note(
                    Severity::NotCarriedOver,
                    format!("{here}.api_version"),
                    "the legacy FCM API (api_key) was shut down by Google in 2024. Create a service account \
                     key in the Firebase console → Project settings → Service accounts → Generate new \
                     private key, then set api_version: v1, project_id and service_account_file for this \
                     app in sygnal.yaml and run import-sygnal again",
                );
                return None;
            };
            import.note(
                Severity::Changed,
                format!("{here}.api_version"),
                "Sygnal used the legacy FCM API here; edgepush speaks FCM v1 only and uses project_id and \
                 service_account_file (check that fcm_options is a v1 message)",
            );
        }
        Some(other) => {
            app.error("api_version", format!("{other:?} is neither v1 nor legacy"));
            return None;
        }
    }
    let project_id = app.required("project_id", "FCM v1 sends to a Firebase project id");
    let service_account_file = app.required("service_account_file", "FCM v1 needs the service account key file");
    let fcm_options = match app.settings.get("fcm_options") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(options)) => options.clone(),
        Some(other) => {
            app.error("fcm_options", format!("must be a mapping, not {other}"));
            return None;
        }
    };
    for key in fcm_options.keys() {
        let place = format!("{here}.fcm_options.{key}");
        if FCM_FIELDS_SET_BY_EDGEPUSH.contains(&key.as_str()) {
            import.note(Severity::Changed, place, "edgepush sets this field on every message; its value wins over fcm_options");
        } else if !FCM_V1_MESSAGE_FIELDS.contains(&key.as_str()) {
            import.note(
                Severity::Changed,
                place,
                "not a field of an FCM v1 message (a legacy option?): FCM will refuse the message; move it \
                 under android, apns or webpush",
            );
        }
    }
    let (project_id, service_account_file) = (project_id?, service_account_file?);
    let mut entry = json!({
        "type": "fcm",
        "project_id": project_id,
        "service_account_secret": import.secret_for(CredentialKind::FcmServiceAccount, &service_account_file, app.app_id),
    });
    if !fcm_options.is_empty() {
        insert_some(&mut entry, "fcm_options", Some(Value::Object(fcm_options)));
    }
    Some(entry)
}

fn convert_webpush(import: &mut Import, app: &mut AppReader<'_>) -> Option<Value> {
    let here = app_place(app.app_id);
    let key_file = app.required("vapid_private_key", "the path of the VAPID private key (PEM)");
    let contact = app.required("vapid_contact_email", "push services need a contact for the VAPID claims");
    let ttl = app.seconds("ttl");
    let allowed = app.strings("allowed_endpoints").map(|entries| {
        entries
            .into_iter()
            .enumerate()
            .map(|(i, entry)| {
                let converted = allowed_endpoint(&entry);
                if converted != entry {
                    import.note(
                        Severity::Changed,
                        format!("{here}.allowed_endpoints[{i}]"),
                        format!("{entry:?} is written {converted:?}: an entry with a port names its scheme"),
                    );
                }
                Value::String(converted)
            })
            .collect::<Vec<_>>()
    });
    let (key_file, contact) = (key_file?, contact?);
    // Sygnal always prefixed `mailto:`; keep a contact that already has a scheme.
    let contact = if contact.starts_with("mailto:") || contact.starts_with("https:") {
        contact
    } else {
        format!("mailto:{contact}")
    };
    let mut entry = json!({
        "type": "webpush",
        "vapid_private_key_secret": import.secret_for(CredentialKind::VapidKey, &key_file, app.app_id),
        "vapid_contact": contact,
    });
    insert_some(&mut entry, "allowed_endpoints", allowed.map(Value::Array));
    insert_some(&mut entry, "ttl", ttl.map(Value::from));
    Some(entry)
}

/// Sygnal matched its globs against the endpoint's `host[:port]`; edgepush
/// reads a bare host glob as https on the default port, and wants the scheme
/// written when a port is named.
fn allowed_endpoint(entry: &str) -> String {
    if entry.contains("://") || !entry.contains(':') {
        entry.to_string()
    } else {
        format!("https://{entry}")
    }
}

fn insert_some(entry: &mut Value, key: &str, value: Option<Value>) {
    if let (Value::Object(map), Some(value)) = (entry, value) {
        map.insert(key.to_string(), value);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn convert_one(yaml_app: &str) -> Import {
        convert(&format!("apps:\n  com.example.app:\n{yaml_app}")).unwrap()
    }

    fn places(import: &Import, severity: Severity) -> Vec<String> {
        import.notes.iter().filter(|n| n.severity == severity).map(|n| n.place.clone()).collect()
    }

    #[test]
    fn secret_names_are_stable_and_shell_safe() {
        assert_eq!(secret_name(CredentialKind::ApnsKey, "com.example.app"), "APNS_KEY_COM_EXAMPLE_APP");
        assert_eq!(secret_name(CredentialKind::FcmServiceAccount, "chat.fluffy.fluffychat.*"), "FCM_SERVICE_ACCOUNT_CHAT_FLUFFY_FLUFFYCHAT");
        assert_eq!(secret_name(CredentialKind::VapidKey, "*.web--app"), "VAPID_KEY_WEB_APP");
    }

    #[test]
    fn distinct_files_with_one_derived_name_get_suffixes() {
        let import = convert(
            "apps:\n  a.b:\n    type: webpush\n    vapid_private_key: one.pem\n    vapid_contact_email: a@b\n  \
             a-b:\n    type: webpush\n    vapid_private_key: two.pem\n    vapid_contact_email: a@b\n",
        )
        .unwrap();
        let names: Vec<&str> = import.secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["VAPID_KEY_A_B", "VAPID_KEY_A_B_2"]);
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("keys/a.p8"), "keys/a.p8");
        assert_eq!(shell_quote("my keys/it's.p8"), r"'my keys/it'\''s.p8'");
    }

    #[test]
    fn unknown_type_and_wrong_types_are_errors_naming_the_place() {
        let import = convert_one("    type: fcm\n");
        assert_eq!(places(&import, Severity::Error), [r#"apps."com.example.app".type"#]);
        let import = convert_one("    type: apns\n    keyfile: k.p8\n    key_id: 1234567890\n    team_id: T\n    topic: t\n");
        assert_eq!(places(&import, Severity::Error), [r#"apps."com.example.app".key_id"#]);
        assert!(import.apps.is_empty());
        let import = convert_one("    type: webpush\n    vapid_private_key: k.pem\n");
        assert_eq!(places(&import, Severity::Error), [r#"apps."com.example.app".vapid_contact_email"#]);
    }

    #[test]
    fn apns_keeps_sygnals_platform_written_out() {
        let apns = |platform: &str| {
            convert_one(&format!("    type: apns\n    keyfile: k.p8\n    key_id: ABC1234567\n    team_id: T\n    topic: t\n{platform}"))
        };
        for (line, expected) in [("", "production"), ("    platform: prod\n", "production"), ("    platform: sandbox\n", "sandbox")] {
            assert_eq!(apns(line).apps["com.example.app"]["platform"], expected, "{line:?}");
        }
        let auto = apns("    platform: auto\n");
        assert_eq!(places(&auto, Severity::Error), [r#"apps."com.example.app".platform"#], "Sygnal refuses it too");
    }

    #[test]
    fn overlapping_globs_are_reported() {
        let mut import = convert(
            "apps:\n  '*.up':\n    type: webpush\n    vapid_private_key: k.pem\n    vapid_contact_email: a@b\n  \
             'im.*':\n    type: webpush\n    vapid_private_key: k.pem\n    vapid_contact_email: a@b\n",
        )
        .unwrap();
        verify(&mut import, |_| Err("absent".into()));
        let note = import.notes.iter().find(|n| n.severity == Severity::NotCarriedOver).unwrap();
        assert_eq!(note.place, "apps");
        assert!(note.message.contains(r#"globs "*.up" and "im.*" overlap"#), "{}", note.message);
    }

    #[test]
    fn legacy_gcm_with_a_service_account_converts_to_v1() {
        let import = convert_one("    type: gcm\n    project_id: p\n    service_account_file: sa.json\n    api_key: k\n");
        assert_eq!(import.apps["com.example.app"]["type"], "fcm");
        assert_eq!(places(&import, Severity::Changed), [r#"apps."com.example.app".api_version"#]);
    }

    #[test]
    fn send_badge_counts_carries_over_for_every_type() {
        let apps = [
            "    type: apns\n    keyfile: k.p8\n    key_id: K\n    team_id: T\n    topic: t\n",
            "    type: gcm\n    api_version: v1\n    project_id: p\n    service_account_file: sa.json\n",
            "    type: webpush\n    vapid_private_key: k.pem\n    vapid_contact_email: a@b\n",
        ];
        for app in apps {
            let import = convert_one(&format!("{app}    send_badge_counts: false\n"));
            assert!(import.notes.iter().all(|n| !n.place.ends_with("send_badge_counts")), "{:?}", import.notes);
            assert_eq!(import.apps["com.example.app"]["send_badge_counts"], false, "{app}");
            let import = convert_one(app);
            assert!(import.apps["com.example.app"].get("send_badge_counts").is_none(), "left to the default when unset");
        }
        let import = convert_one(&format!("{}    send_badge_counts: no_thanks\n", apps[0]));
        assert_eq!(places(&import, Severity::Error), [r#"apps."com.example.app".send_badge_counts"#]);
        assert!(import.apps.is_empty());
    }

    #[test]
    fn whole_file_errors() {
        assert!(convert("apps: [").unwrap_err().contains("line 1"));
        assert!(convert("- a\n").is_err());
        assert!(convert("http: {port: 5000}\n").unwrap_err().contains("apps"));
        assert!(convert("apps: {}\n").is_err());
    }

    #[test]
    fn toml_quotes_dotted_and_glob_app_ids() {
        let import = convert(
            "apps:\n  '*.web':\n    type: webpush\n    vapid_private_key: k.pem\n    vapid_contact_email: a@b\n",
        )
        .unwrap();
        let text = render(&import.apps, Format::Toml).unwrap();
        assert!(text.contains(r#"[vars.APPS."*.web"]"#), "{text}");
        let back: toml::Table = text.parse().unwrap();
        assert_eq!(back["vars"]["APPS"]["*.web"]["vapid_contact"].as_str(), Some("mailto:a@b"));
    }
}
