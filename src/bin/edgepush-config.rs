//! `edgepush-config`: host-side tools for edgepush's configuration.
//!
//! ```text
//! edgepush-config import-sygnal <sygnal.yaml> [--format json|toml]
//! edgepush-config check-config [--dev-vars PATH] [--apps JSON|@FILE] [--secret NAME=PATH]...
//! ```
//!
//! Both read `APPS` with the crate's own parser, the one the worker uses.
//! The worker build (wasm32) gets an empty binary.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    host::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod host {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::Write as _;
    use std::process::ExitCode;

    use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
    use edgepush::apps::Apps;
    use edgepush::config::{AppConfig, Settings};
    use edgepush::sygnal_import::{self, Format, Import, Severity};
    use serde_json::Value;

    /// Host-side tools for edgepush's configuration. Both read APPS with the
    /// worker's own parser.
    #[derive(Parser)]
    #[command(name = "edgepush-config", after_help = "exit status: 0 all well, 1 a problem was found, 2 bad usage")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Print the APPS equivalent to Sygnal's `apps` (stdout) and, on
        /// stderr, the `wrangler secret put` command for each key file and
        /// what was not carried over.
        ImportSygnal {
            /// Sygnal's configuration file.
            #[arg(value_name = "SYGNAL_YAML")]
            path: String,
            /// How to print APPS: a JSON object, or wrangler.toml [vars.APPS] tables.
            #[arg(long, value_enum, default_value_t = FormatArg::Json)]
            format: FormatArg,
        },
        /// Load APPS and its secrets with the worker's own parser and report
        /// every problem. Without --apps and --dev-vars, ./.dev.vars is read.
        CheckConfig {
            /// A dev vars file (dotenv, as wrangler reads .dev.vars): APPS and secrets.
            #[arg(long, value_name = "PATH")]
            dev_vars: Option<String>,
            /// APPS as JSON, @file.json, or @wrangler.toml (its [vars.APPS]); wins over the dev vars file's.
            #[arg(long, value_name = "JSON|@FILE")]
            apps: Option<String>,
            /// A secret read from a file; wins over the dev vars file. Repeatable.
            #[arg(long = "secret", value_name = "NAME=PATH", value_parser = parse_secret_arg)]
            secrets: Vec<(String, String)>,
        },
    }

    #[derive(Clone, Copy, ValueEnum)]
    enum FormatArg {
        Json,
        Toml,
    }

    /// `NAME=PATH`, both non-empty.
    fn parse_secret_arg(pair: &str) -> Result<(String, String), String> {
        pair.split_once('=')
            .filter(|(name, path)| !name.is_empty() && !path.is_empty())
            .map(|(name, path)| (name.to_string(), path.to_string()))
            .ok_or_else(|| "write NAME=PATH".to_string())
    }

    /// The input or the config has a problem.
    const EXIT_PROBLEM: u8 = 1;

    pub fn main() -> ExitCode {
        // Bad usage exits 2 with clap's message; --help exits 0.
        let all_well = match Cli::parse().command {
            Command::ImportSygnal { path, format } => {
                let format = match format {
                    FormatArg::Json => Format::Json,
                    FormatArg::Toml => Format::Toml,
                };
                import_sygnal(&path, format)
            }
            Command::CheckConfig { dev_vars, apps, secrets } => check_config(dev_vars, apps, &secrets),
        };
        if all_well {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_PROBLEM)
        }
    }

    /// `true`: all well; `false`: problems were reported.
    fn import_sygnal(path: &str, format: Format) -> bool {
        let yaml = match std::fs::read_to_string(path) {
            Ok(yaml) => yaml,
            Err(e) => {
                eprintln!("error: cannot read {path}: {e}");
                return false;
            }
        };
        let mut import = match sygnal_import::convert(&yaml) {
            Ok(import) => import,
            Err(e) => {
                eprintln!("error: {path}: {e}");
                return false;
            }
        };
        sygnal_import::verify(&mut import, |file| std::fs::read_to_string(file).map_err(|e| e.to_string()));
        match sygnal_import::render(&import.apps, format) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("error: {e}");
                return false;
            }
        }
        let _ = std::io::stdout().flush();
        eprint!("{}", import_report(path, &import, format));
        !import.has_errors()
    }

    /// What `import-sygnal` tells the user on stderr, next steps first.
    fn import_report(path: &str, import: &Import, format: Format) -> String {
        let mut out = String::new();
        let converted = import.apps.len();
        out += &format!("\nConverted {converted} of {} app(s) from {path}.\n", import.sygnal_apps);
        if !import.secrets.is_empty() {
            out += "\nStore the credentials as Worker secrets:\n";
            for secret in &import.secrets {
                out += &format!("  {}\n", secret.command());
            }
        }
        let sections = [
            (Severity::Error, "Errors (fix sygnal.yaml or the files it names, then run import-sygnal again):"),
            (Severity::NotCarriedOver, "Not carried over (act on these):"),
            (Severity::Changed, "Changed on the way:"),
            (Severity::NotNeeded, "Not needed at the edge:"),
        ];
        for (severity, title) in sections {
            let notes: Vec<_> = import.notes.iter().filter(|n| n.severity == severity).collect();
            if notes.is_empty() {
                continue;
            }
            out += &format!("\n{title}\n");
            for note in notes {
                out += &format!("  {}: {}\n", note.place, note.message);
            }
        }
        let (saved_as, where_) = match format {
            Format::Json => ("@apps.json", "save the JSON above as apps.json"),
            Format::Toml => ("@wrangler.toml", "paste the tables above into wrangler.toml"),
        };
        out += &format!("\nThen check the result ({where_}):\n  cargo run --bin edgepush-config -- check-config --apps {saved_as}");
        for secret in &import.secrets {
            out += &format!(" {}", secret.check_arg());
        }
        out += "\n";
        out
    }

    fn check_config(dev_vars_path: Option<String>, apps_arg: Option<String>, secret_files: &[(String, String)]) -> bool {
        let mut dev_vars_path = dev_vars_path;
        if dev_vars_path.is_none() && apps_arg.is_none() {
            if std::path::Path::new(".dev.vars").is_file() {
                dev_vars_path = Some(".dev.vars".to_string());
            } else {
                Cli::command()
                    .error(clap::error::ErrorKind::MissingRequiredArgument, "no APPS given: pass --apps or --dev-vars (there is no ./.dev.vars)")
                    .exit();
            }
        }

        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let mut vars = BTreeMap::new();
        if let Some(path) = &dev_vars_path {
            match std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|text| parse_dotenv(&text)) {
                Ok(parsed) => vars = parsed,
                Err(e) => problems.push(format!("{path}: {e}")),
            }
            let (_, knob_warnings) = Settings::from_vars(|name| vars.get(name).cloned());
            warnings.extend(knob_warnings.into_iter().map(|w| format!("{path}: {w}")));
        }
        let apps_value = match &apps_arg {
            Some(arg) => match read_apps_arg(arg) {
                Ok(value) => Some(value),
                Err(e) => {
                    problems.push(e);
                    None
                }
            },
            None => vars.get("APPS").cloned().map(Value::String),
        };
        let mut secrets = vars.clone();
        for (name, path) in secret_files {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    secrets.insert(name.clone(), text);
                }
                Err(e) => problems.push(format!("--secret {name}: cannot read {path}: {e}")),
            }
        }
        if apps_value.is_none() && problems.is_empty() {
            problems.push("APPS is not set: add it to the dev vars file or pass --apps".into());
        }
        let mut report = String::new();
        let mut app_count = 0;
        let mut broken_apps = 0;
        if let Some(apps_value) = &apps_value {
            let apps = Apps::load(Some(apps_value), &|name: &str| secrets.get(name).cloned());
            if let Some(error) = &apps.global_error {
                problems.push(error.clone());
            }
            if apps.global_error.is_none() && apps.entries.is_empty() {
                problems.push("APPS has no apps: no push can be delivered".into());
            }
            for entry in &apps.entries {
                app_count += 1;
                match &entry.app {
                    Ok(app) => {
                        report += &format!("ok      {} ({})\n", entry.pattern, app.provider());
                        warnings.extend(app.warnings().into_iter().map(|w| format!("{}: {w}", entry.pattern)));
                        if let edgepush::providers::App::WebPush(web) = app.as_ref() {
                            // What the app's web clients subscribe with.
                            report += &format!("        applicationServerKey: {}\n", web.public_key());
                        }
                        if let edgepush::providers::App::Hms(hms) = app.as_ref() {
                            if hms.config.category.is_none() {
                                warnings.push(format!(
                                    "{}: no `category`: Huawei delivers this app's pushes at normal priority \
                                     (set the class Huawei granted the app, e.g. \"IM\")",
                                    entry.pattern
                                ));
                            }
                        }
                    }
                    Err(error) => {
                        broken_apps += 1;
                        report += &format!("BROKEN  {}: {error}\n", entry.pattern);
                    }
                }
            }
            // An app id matching two globs cannot be routed: its devices fail.
            problems.extend(apps.overlaps.iter().map(ToString::to_string));
            let named = named_secrets(apps_value);
            for (name, _) in secret_files.iter().filter(|(name, _)| !named.contains(name)) {
                warnings.push(format!("--secret {name}: no app names this secret"));
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "{report}");
        for problem in &problems {
            let _ = writeln!(out, "error: {problem}");
        }
        for warning in &warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
        let all_well = problems.is_empty() && broken_apps == 0;
        if all_well {
            let _ = writeln!(out, "all {app_count} apps OK");
        } else if broken_apps > 0 {
            let _ = writeln!(out, "{broken_apps} of {app_count} apps have problems");
        } else if app_count > 0 {
            let _ = writeln!(out, "all {app_count} apps load, but APPS has problems");
        }
        all_well
    }

    /// `--apps`: inline JSON, `@file` holding JSON, or `@wrangler.toml`
    /// whose `[vars]` holds `APPS`.
    fn read_apps_arg(arg: &str) -> Result<Value, String> {
        let Some(path) = arg.strip_prefix('@') else {
            return serde_json::from_str(arg).map_err(|e| format!("--apps is not valid JSON: {e}"));
        };
        let text = std::fs::read_to_string(path).map_err(|e| format!("--apps: cannot read {path}: {e}"))?;
        if !path.ends_with(".toml") {
            return serde_json::from_str(&text).map_err(|e| format!("{path} is not valid JSON: {e}"));
        }
        let table: toml::Table = text.parse().map_err(|e| format!("{path} is not valid TOML: {e}"))?;
        let apps = table
            .get("vars")
            .and_then(|vars| vars.get("APPS"))
            .ok_or_else(|| format!("{path} has no APPS in [vars]"))?;
        serde_json::to_value(apps).map_err(|e| format!("{path}: [vars.APPS]: {e}"))
    }

    /// The secret names the (parsable) entries of `APPS` refer to.
    fn named_secrets(apps: &Value) -> BTreeSet<String> {
        let parsed;
        let object = match apps {
            Value::String(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(o)) => {
                    parsed = o;
                    &parsed
                }
                _ => return BTreeSet::new(),
            },
            Value::Object(o) => o,
            _ => return BTreeSet::new(),
        };
        object
            .values()
            .filter_map(|v| AppConfig::parse(v).ok())
            .flat_map(|c| c.secret_names().into_iter().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }

    /// `.dev.vars` as wrangler reads it (dotenv): `NAME=value` lines, `#`
    /// comments, values in single, double or back quotes may span lines,
    /// and in double quotes `\n` / `\r` stand for line breaks.
    ///
    /// Hand-written because no Rust crate reads it as wrangler does: wrangler
    /// parses `.dev.vars` with npm's `dotenv` and expands nothing, while the
    /// Rust dotenv crates (dotenvy and its kin) expand `$NAME` in unquoted
    /// and double-quoted values, unescape `\\` and `\"`, and know no back
    /// quotes, so a PEM, a JSON `APPS` or a secret holding `$` would be read
    /// otherwise than the worker gets it. Unlike wrangler, a line that is
    /// not `NAME=value` is an error here rather than skipped: this is a checker.
    pub(crate) fn parse_dotenv(text: &str) -> Result<BTreeMap<String, String>, String> {
        let mut vars = BTreeMap::new();
        let mut lines = text.lines().enumerate();
        while let Some((index, line)) = lines.next() {
            let number = index + 1;
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (name, rest) = line.split_once('=').ok_or_else(|| format!("line {number}: expected NAME=value"))?;
            let name = name.trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
                return Err(format!("line {number}: {name:?} is not a variable name"));
            }
            let rest = rest.trim_start();
            let value = match rest.chars().next() {
                Some(quote @ ('"' | '\'' | '`')) => {
                    let mut body = rest.get(1..).unwrap_or_default().to_string();
                    let (inner, after) = loop {
                        if let Some(end) = closing_quote(&body, quote) {
                            let inner = body.get(..end).unwrap_or_default().to_string();
                            let after = body.get(end + 1..).unwrap_or_default().to_string();
                            break (inner, after);
                        }
                        let (_, next) = lines
                            .next()
                            .ok_or_else(|| format!("line {number}: {name}: the {quote} quote is never closed"))?;
                        body.push('\n');
                        body.push_str(next);
                    };
                    let after = after.trim();
                    if !after.is_empty() && !after.starts_with('#') {
                        return Err(format!("line {number}: {name}: text after the closing {quote} quote"));
                    }
                    if quote == '"' {
                        inner.replace("\\n", "\n").replace("\\r", "\r")
                    } else {
                        inner
                    }
                }
                _ => rest.split('#').next().unwrap_or_default().trim().to_string(),
            };
            vars.insert(name.to_string(), value);
        }
        Ok(vars)
    }

    /// The byte offset of the first `quote` not preceded by a backslash.
    fn closing_quote(body: &str, quote: char) -> Option<usize> {
        let mut escaped = false;
        for (offset, c) in body.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                c if c == quote && !escaped => return Some(offset),
                _ => escaped = false,
            }
        }
        None
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    mod tests {
        use super::*;

        #[test]
        fn dotenv_like_wrangler() {
            let text = "# local secrets\nAPPS='{\"a\": {\"type\": \"unifiedpush\"}}'\nexport MAX_DEVICES=5 # knob\n\
                        APNS_KEY=\"-----BEGIN PRIVATE KEY-----\\nAAA\\n-----END PRIVATE KEY-----\"\n\
                        MULTI=\"line one\nline two\"\nEMPTY=\n";
            let vars = parse_dotenv(text).unwrap();
            assert_eq!(vars["APPS"], r#"{"a": {"type": "unifiedpush"}}"#);
            assert_eq!(vars["MAX_DEVICES"], "5");
            assert_eq!(vars["APNS_KEY"], "-----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY-----");
            assert_eq!(vars["MULTI"], "line one\nline two");
            assert_eq!(vars["EMPTY"], "");
        }

        #[test]
        fn dotenv_errors_name_the_line() {
            assert!(parse_dotenv("A=1\nnonsense\n").unwrap_err().contains("line 2"));
            assert!(parse_dotenv("A=\"open\n").unwrap_err().contains("line 1"));
            assert!(parse_dotenv("A='x' y\n").unwrap_err().contains("line 1"));
        }
    }
}
