//! The loaded apps: every `APPS` entry parsed (`config.rs`) and loaded
//! with its credentials (`providers`) once per isolate, beside what the
//! isolate has seen of its sends (`evidence.rs`); how a device's `app_id`
//! finds its entry; and what `/health` says of each.

use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::Value;

use crate::config::{glob_matches, glob_overlaps, is_glob, AppConfig, GlobOverlap};
use crate::evidence::AppRecord;
use crate::providers::{App, Secrets};

/// A configured app id or glob, and what it resolved to.
pub struct AppEntry {
    pub pattern: String,
    /// The usable app, or why this entry is broken (naming the field).
    pub app: Result<Rc<App>, String>,
    /// What this isolate has seen of the app's sends, per app id.
    pub record: AppRecord,
}

/// Where a device's `app_id` leads.
pub enum Lookup<'a> {
    Found { entry: &'a AppEntry, app: &'a Rc<App> },
    /// The app's entry is broken: its devices are `Failed`, never `Rejected`.
    Broken { pattern: &'a str, error: &'a str },
    NoMatch,
    /// Two globs matched and no exact entry exists: a configuration error,
    /// so the device is `Failed`, never `Rejected`.
    Ambiguous { first: &'a str, second: &'a str },
}

/// All configured apps, parsed once per isolate, and what the isolate has
/// seen of them since.
pub struct Apps {
    pub entries: Vec<AppEntry>,
    /// A problem with `APPS` as a whole (absent, not JSON, not an object).
    pub global_error: Option<String>,
    /// Pairs of globs some app id matches both: found at load, so the
    /// mistake shows before a device is ever ambiguous.
    pub overlaps: Vec<GlobOverlap>,
}

impl Apps {
    /// Parse `APPS` (a JSON object, or a string holding one) and load each
    /// app's credentials from `secrets`.
    pub fn load(apps: Option<&Value>, secrets: &dyn Secrets) -> Self {
        let parsed;
        let object = match apps {
            None => return Self::broken("APPS is not set: add it to wrangler.toml [vars] or .dev.vars"),
            Some(Value::Object(o)) => o,
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(o)) => {
                    parsed = o;
                    &parsed
                }
                Ok(_) => return Self::broken("APPS must be a JSON object keyed by app id"),
                Err(e) => return Self::broken(&format!("APPS is not valid JSON: {e}")),
            },
            Some(_) => return Self::broken("APPS must be a JSON object keyed by app id"),
        };
        let entries: Vec<AppEntry> = object
            .iter()
            .map(|(pattern, value)| AppEntry {
                pattern: pattern.clone(),
                app: AppConfig::parse(value)
                    .and_then(|config| App::load(config, secrets))
                    .map(Rc::new),
                record: AppRecord::new(is_glob(pattern)),
            })
            .collect();
        let patterns: Vec<&str> = entries.iter().map(|e| e.pattern.as_str()).collect();
        let overlaps = glob_overlaps(&patterns);
        Self { entries, global_error: None, overlaps }
    }

    fn broken(error: &str) -> Self {
        Self { entries: Vec::new(), global_error: Some(error.to_string()), overlaps: Vec::new() }
    }

    fn found(entry: &AppEntry) -> Lookup<'_> {
        match &entry.app {
            Ok(app) => Lookup::Found { entry, app },
            Err(error) => Lookup::Broken { pattern: &entry.pattern, error },
        }
    }

    /// Exact id first, then globs; two matching globs are ambiguous.
    pub fn find(&self, app_id: &str) -> Lookup<'_> {
        if let Some(exact) = self.entries.iter().find(|e| e.pattern == app_id) {
            return Self::found(exact);
        }
        let mut globs = self.entries.iter().filter(|e| is_glob(&e.pattern) && glob_matches(&e.pattern, app_id));
        match (globs.next(), globs.next()) {
            (Some(only), None) => Self::found(only),
            (Some(first), Some(second)) => Lookup::Ambiguous { first: &first.pattern, second: &second.pattern },
            (None, _) => Lookup::NoMatch,
        }
    }

    /// Per-app status for `/health`: `"ok"`, the entry's error, or why its
    /// sends look misconfigured (as of `now_ms`).
    pub fn health(&self, now_ms: u64) -> BTreeMap<String, String> {
        self.entries
            .iter()
            .map(|e| {
                let status = match &e.app {
                    Err(error) => error.clone(),
                    Ok(_) => e.record.suspect(now_ms).unwrap_or_else(|| "ok".to_string()),
                };
                (e.pattern.clone(), status)
            })
            .collect()
    }

    /// Every app loaded, no globs overlap, and no app looks misconfigured.
    pub fn is_healthy(&self, now_ms: u64) -> bool {
        self.global_error.is_none()
            && self.overlaps.is_empty()
            && self.entries.iter().all(|e| e.app.is_ok() && e.record.suspect(now_ms).is_none())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overlapping_globs_are_found_at_load_and_ambiguous_ids_name_both() {
        let apps = Apps::load(
            Some(&json!({"*.up": {"type": "unifiedpush"}, "im.*": {"type": "unifiedpush"}, "im.exact.up": {"type": "unifiedpush"}})),
            &|_: &str| None,
        );
        assert_eq!(apps.overlaps.len(), 1);
        assert!(!apps.is_healthy(0));
        assert!(matches!(apps.find("im.x.up"), Lookup::Ambiguous { first: "*.up", second: "im.*" }));
        assert!(matches!(apps.find("im.exact.up"), Lookup::Found { .. }), "an exact entry settles it");
        assert!(matches!(apps.find("other.up"), Lookup::Found { .. }));
        assert!(matches!(apps.find("nothing"), Lookup::NoMatch));
        let fine = Apps::load(Some(&json!({"*.up": {"type": "unifiedpush"}, "*.ios": {"type": "unifiedpush"}})), &|_: &str| None);
        assert!(fine.overlaps.is_empty() && fine.is_healthy(0));
    }
}
