//! Which push endpoints edgepush may send to (WebPush's `data.endpoint`,
//! UnifiedPush's pushkey).
//!
//! docs/design.md §6 "Endpoints a device names": `allowed_endpoints`
//! entries are globs over an endpoint's origin: a bare host glob
//! (`*.push.example.net`) allows `https` on port 443 only; an entry with a
//! scheme (`http://127.0.0.1:*`) allows exactly that scheme, and the port
//! glob given or the scheme's default port. An app without
//! `allowed_endpoints` allows any public `https` host, and never `http`, an
//! IP literal, or a private or loopback host.
//!
//! Endpoint URLs come from devices, so they are untrusted: parsing is strict
//! (a host is ASCII letters, digits, `-` and `.`, or a bracketed IPv6
//! literal), so that what we check is what `fetch` will connect to.

use std::fmt;

use crate::config::glob_matches;
use crate::origin::{self, split_host_port, HostPortError, Refusal};

/// The parts of an endpoint URL that decide where a request goes.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https` or `http`, lowercase.
    pub scheme: String,
    /// Lowercase; an IPv6 literal without its brackets.
    pub host: String,
    /// The port written in the URL, if any.
    pub explicit_port: Option<u16>,
}

/// Only the origin is shown: an endpoint's path is a capability (whoever
/// knows it can push to the device).
impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({})", self.origin())
    }
}

impl Endpoint {
    /// Parse an absolute `http(s)` URL. Errors never repeat the URL, which
    /// may be a secret.
    pub fn parse(url: &str) -> Result<Self, String> {
        let origin = origin::device_origin(url).map_err(|e| refusal_text(e).to_string())?;
        Ok(Self {
            scheme: origin.scheme.to_string(),
            host: origin.host.to_ascii_lowercase(),
            explicit_port: origin.port,
        })
    }

    /// The port the request goes to.
    pub fn port(&self) -> u16 {
        self.explicit_port.unwrap_or_else(|| default_port(&self.scheme))
    }

    fn is_ipv6(&self) -> bool {
        self.host.contains(':')
    }

    /// `scheme://host[:port]`, the port only when it is not the scheme's
    /// default (RFC 6454 serialisation, as VAPID's `aud` wants it).
    pub fn origin(&self) -> String {
        let host = if self.is_ipv6() { format!("[{}]", self.host) } else { self.host.clone() };
        match self.explicit_port {
            Some(p) if p != default_port(&self.scheme) => format!("{}://{host}:{p}", self.scheme),
            _ => format!("{}://{host}", self.scheme),
        }
    }

    /// An IP literal, as the URL standard reads hosts: `[v6]`, or a host
    /// whose last label is a number (`127.0.0.1`, but also `0x7f.1` and
    /// `2130706433`, which `fetch` turns into IPv4 addresses).
    fn is_ip_literal(&self) -> bool {
        if self.is_ipv6() {
            return true;
        }
        let last = self.host.rsplit('.').find(|label| !label.is_empty()).unwrap_or_default();
        let hex = last.strip_prefix("0x").unwrap_or_else(|| last.strip_prefix("0X").unwrap_or(last));
        let is_hex = hex.len() != last.len() && hex.chars().all(|c| c.is_ascii_hexdigit());
        is_hex || (!last.is_empty() && last.chars().all(|c| c.is_ascii_digit()))
    }
}

/// An endpoint's parse error, in words that never repeat the URL.
fn refusal_text(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::NotAbsolute => "the endpoint is not an absolute URL",
        Refusal::Scheme => "the endpoint's scheme must be https or http",
        Refusal::Userinfo => "the endpoint must not carry userinfo (user@host)",
        // Only an operator's origin is refused for what follows it.
        Refusal::NotAnOrigin => "the endpoint is not an origin",
        Refusal::NoHost => "the endpoint has no host",
        Refusal::Host => "the endpoint's host is not a plain DNS name or IP literal",
        Refusal::UnclosedIpv6 => HostPortError::Unclosed.text(),
        Refusal::AfterIpv6 => HostPortError::AfterIpv6.text(),
        Refusal::Ipv6 => "the endpoint's IPv6 literal is malformed",
        Refusal::Port => "the endpoint's port is not a number from 1 to 65535",
    }
}

/// Names that never reach the public internet: loopback, mDNS, and the
/// suffixes commonly used for private networks.
const PRIVATE_SUFFIXES: &[&str] =
    &["localhost", "local", "localdomain", "internal", "intranet", "lan", "home.arpa", "corp", "private"];

/// Why the default rule refuses a host, or `None` for a public `https` host.
fn default_rule_refusal(e: &Endpoint) -> Option<&'static str> {
    if e.scheme != "https" {
        return Some("only https endpoints are allowed");
    }
    if e.is_ip_literal() {
        return Some("IP literal endpoints are not allowed");
    }
    let host = e.host.as_str();
    if !host.contains('.') {
        return Some("single-label hosts are not allowed");
    }
    let private = PRIVATE_SUFFIXES
        .iter()
        .any(|suffix| host == *suffix || host.strip_suffix(suffix).is_some_and(|rest| rest.ends_with('.')));
    private.then_some("private and loopback hosts are not allowed")
}

/// One entry of `allowed_endpoints`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    scheme: String,
    /// Lowercase; IPv6 without brackets.
    host_glob: String,
    /// `None`: the scheme's default port only.
    port_glob: Option<String>,
}

impl Rule {
    fn parse(entry: &str) -> Result<Self, String> {
        let (scheme, authority) = match entry.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => ("https".to_string(), entry),
        };
        if scheme != "https" && scheme != "http" {
            return Err("the scheme must be https or http".into());
        }
        if authority.contains(['/', '#', '@']) {
            return Err("expected an origin glob (host, or scheme://host:port), without path or userinfo".into());
        }
        let (host, port) = split_host_port(authority).map_err(|e| e.text().to_string())?;
        let host_ok = if authority.starts_with('[') {
            host.chars().all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.' | '*' | '?'))
        } else {
            host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*' | '?'))
        };
        if host.is_empty() || !host_ok {
            return Err("the host glob may hold only letters, digits, '-', '.', '*' and '?'".into());
        }
        if let Some(p) = port {
            if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit() || matches!(c, '*' | '?')) {
                return Err("the port glob may hold only digits, '*' and '?'".into());
            }
        }
        Ok(Self { scheme, host_glob: host.to_ascii_lowercase(), port_glob: port.map(str::to_string) })
    }

    fn allows(&self, e: &Endpoint) -> bool {
        let port_ok = match &self.port_glob {
            Some(glob) => glob_matches(glob, &e.port().to_string()),
            None => e.port() == default_port(&self.scheme),
        };
        self.scheme == e.scheme && port_ok && glob_matches(&self.host_glob, &e.host)
    }
}

/// Only `https` and `http` get this far.
fn default_port(scheme: &str) -> u16 {
    if scheme == "http" {
        80
    } else {
        443
    }
}

/// An app's endpoint policy, checked when the app loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedEndpoints {
    /// `None`: the default rule (public `https` hosts only).
    rules: Option<Vec<Rule>>,
}

impl AllowedEndpoints {
    /// Read `allowed_endpoints`; an error names the entry at fault
    /// (`allowed_endpoints[1]: …`).
    pub fn from_config(entries: Option<&[String]>) -> Result<Self, String> {
        let Some(entries) = entries else { return Ok(Self { rules: None }) };
        let rules = entries
            .iter()
            .enumerate()
            .map(|(i, entry)| Rule::parse(entry.trim()).map_err(|e| format!("allowed_endpoints[{i}] {entry:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { rules: Some(rules) })
    }

    /// The parsed endpoint if it may be sent to, else why not (naming the
    /// origin at most, never the path).
    pub fn check(&self, url: &str) -> Result<Endpoint, String> {
        let endpoint = Endpoint::parse(url)?;
        match &self.rules {
            None => match default_rule_refusal(&endpoint) {
                None => Ok(endpoint),
                Some(why) => Err(format!("{}: {why}", endpoint.origin())),
            },
            Some(rules) if rules.iter().any(|r| r.allows(&endpoint)) => Ok(endpoint),
            Some(_) => Err(format!("{} is not in allowed_endpoints", endpoint.origin())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> AllowedEndpoints {
        let owned: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        AllowedEndpoints::from_config(Some(&owned)).unwrap()
    }

    #[test]
    fn parses_the_parts_that_matter() {
        let e = Endpoint::parse("HTTPS://Push.Example.NET:8443/wpush/v2/abc?x=1").unwrap();
        assert_eq!((e.scheme.as_str(), e.host.as_str(), e.port()), ("https", "push.example.net", 8443));
        assert_eq!(e.origin(), "https://push.example.net:8443");
        assert_eq!(Endpoint::parse("https://a.example:443/x").unwrap().origin(), "https://a.example");
        assert_eq!(Endpoint::parse("http://[::1]:9000/x").unwrap().origin(), "http://[::1]:9000");
        assert_eq!(Endpoint::parse("https://a.example").unwrap().port(), 443);
        assert!(!format!("{:?}", Endpoint::parse("https://a.example/SECRET").unwrap()).contains("SECRET"));
    }

    #[test]
    fn malformed_urls_are_errors_not_panics() {
        for url in [
            "",
            "push.example.net/x",
            "ftp://a.example/x",
            "https://",
            "https:///x",
            "https://user:pw@a.example/x",
            "https://a.example@evil.example/x",
            "https://a.example:0/x",
            "https://a.example:65536/x",
            "https://a.example:/x",
            "https://a.example:8o/x",
            "https://[::1/x",
            "https://[::1]x/x",
            "https://a..example/x",
            "https://a.exa mple/x",
            "https://a.example\\.evil.example/x",
            "https://bücher.example/x",
            "https://a.example%2f/x",
            "https://[::g]/x",
        ] {
            let result = Endpoint::parse(url);
            assert!(result.is_err(), "{url} parsed as {result:?}");
            assert!(!result.unwrap_err().contains(url) || url.is_empty(), "error repeats the URL");
        }
    }

    #[test]
    fn default_rule_allows_public_https_only() {
        let default = AllowedEndpoints::from_config(None).unwrap();
        let cases: &[(&str, bool)] = &[
            ("https://fcm.googleapis.com/fcm/send/abc", true),
            ("https://updates.push.services.mozilla.com/wpush/v2/abc", true),
            ("https://web.push.apple.com:443/abc", true),
            ("https://push.example.net:8443/abc", true),
            ("https://ntfy.sh./up123", false),
            ("http://fcm.googleapis.com/fcm/send/abc", false),
            ("https://127.0.0.1/x", false),
            ("https://127.1/x", false),
            ("https://2130706433/x", false),
            ("https://0x7f.1/x", false),
            ("https://10.0.0.1:8443/x", false),
            ("https://[::1]/x", false),
            ("https://[2001:db8::1]:443/x", false),
            ("https://[::ffff:127.0.0.1]/x", false),
            ("https://localhost/x", false),
            ("https://LOCALHOST./x", false),
            ("https://api.localhost/x", false),
            ("https://printer.local/x", false),
            ("https://metadata.google.internal/x", false),
            ("https://router.home.arpa/x", false),
            ("https://intranet/x", false),
            ("https://user@push.example.net/x", false),
        ];
        for (url, allowed) in cases {
            assert_eq!(default.check(url).is_ok(), *allowed, "{url}: {:?}", default.check(url));
        }
    }

    #[test]
    fn bare_host_glob_allows_https_on_the_default_port_only() {
        let p = policy(&["*.push.example.net"]);
        assert!(p.check("https://eu.push.example.net/x").is_ok());
        assert!(p.check("https://eu.push.example.net:443/x").is_ok());
        assert!(p.check("https://EU.Push.Example.net/x").is_ok());
        assert!(p.check("https://eu.push.example.net:8443/x").is_err());
        assert!(p.check("http://eu.push.example.net/x").is_err());
        assert!(p.check("https://push.example.net/x").is_err(), "the glob needs a label before .push");
        assert!(p.check("https://eu.push.example.net.evil.example/x").is_err());
        assert!(p.check("https://eu.push.example.net@evil.example/x").is_err());
    }

    #[test]
    fn scheme_and_port_entries_allow_exactly_that() {
        let p = policy(&["http://127.0.0.1:*", "https://ntfy.example.net:84?3", "http://[::1]:9000"]);
        assert!(p.check("http://127.0.0.1:9000/push").is_ok());
        assert!(p.check("http://127.0.0.1:80/push").is_ok());
        assert!(p.check("http://127.0.0.1/push").is_ok(), "port 80 matches *");
        assert!(p.check("https://127.0.0.1:9000/push").is_err());
        assert!(p.check("http://127.0.0.2:9000/push").is_err());
        assert!(p.check("https://ntfy.example.net:8443/up").is_ok());
        assert!(p.check("https://ntfy.example.net:8444/up").is_err());
        assert!(p.check("https://ntfy.example.net/up").is_err());
        assert!(p.check("http://[::1]:9000/x").is_ok());
        assert!(p.check("http://[::1]:9001/x").is_err());
        let with_scheme_no_port = policy(&["http://up.example.net"]);
        assert!(with_scheme_no_port.check("http://up.example.net/x").is_ok());
        assert!(with_scheme_no_port.check("http://up.example.net:8080/x").is_err());
    }

    #[test]
    fn an_empty_list_allows_nothing() {
        let p = policy(&[]);
        assert!(p.check("https://fcm.googleapis.com/x").is_err());
    }

    #[test]
    fn refusals_name_the_origin_but_not_the_path() {
        let err = policy(&["a.example"]).check("https://b.example/SECRET-TOKEN").unwrap_err();
        assert!(err.contains("https://b.example") && !err.contains("SECRET"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn parsing_and_checking_never_panic(url in "\\PC{0,60}", tail in "[a-zA-Z0-9.:\\[\\]@/%?#*-]{0,40}") {
            let default = AllowedEndpoints::from_config(None).unwrap();
            let listed = policy(&["*.example.net", "http://127.0.0.1:*"]);
            for candidate in [url.clone(), format!("https://{tail}"), format!("http://{tail}")] {
                if let Ok(e) = default.check(&candidate) {
                    proptest::prop_assert_eq!(e.scheme.as_str(), "https");
                    proptest::prop_assert!(!e.is_ip_literal() && e.host.contains('.'));
                }
                let _ = listed.check(&candidate);
                let _ = AllowedEndpoints::from_config(Some(std::slice::from_ref(&candidate)));
            }
        }
    }

    #[test]
    fn bad_entries_are_named_when_the_app_loads() {
        for (entries, needle) in [
            (vec!["ok.example", "ftp://x.example"], "allowed_endpoints[1]"),
            (vec!["https://x.example/path"], "allowed_endpoints[0]"),
            (vec!["user@x.example"], "allowed_endpoints[0]"),
            (vec![""], "allowed_endpoints[0]"),
            (vec!["x.example:"], "allowed_endpoints[0]"),
            (vec!["x.example:https"], "allowed_endpoints[0]"),
            (vec!["x_y.example"], "allowed_endpoints[0]"),
        ] {
            let owned: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
            let err = AllowedEndpoints::from_config(Some(&owned)).unwrap_err();
            assert!(err.contains(needle), "{entries:?}: {err}");
        }
    }
}
