//! The origin of an `http(s)` URL (`scheme://host[:port]`): one parser for
//! the endpoint a device names (design §6) and the `url` an operator writes
//! (§5.2).
//!
//! Both are read the same way: an absolute URL whose scheme is `https` or
//! `http`, the authority running to the first `/`, `?` or `#`, and no
//! userinfo. They differ where their writers differ (§5.2, §6):
//! - a device's endpoint is untrusted, so its host must be a plain DNS name
//!   or a bracketed IPv6 literal and its port a number from 1 to 65535,
//!   so that what is checked is what `fetch` connects to; its scheme may be
//!   written in any case, and a path may follow;
//! - an operator's `url` is trusted and handed to `fetch` as written: its
//!   scheme is exactly `https` or `http`, its host and port are taken as
//!   written (anything but `/`, `?`, `#`, `@` and a space), trailing `/`s
//!   are dropped and nothing else may follow.

/// Who wrote a URL: decides how strictly its origin is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    Device,
    Operator,
}

/// Why a URL has no usable origin. Each caller words it: an endpoint's
/// error never repeats the URL (its path is a capability), an operator's
/// names the value at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `://`.
    NotAbsolute,
    /// A scheme other than `https` or `http`.
    Scheme,
    /// `user@` before the host.
    Userinfo,
    /// The operator's: nothing after `://`, or a path, query, fragment or
    /// space.
    NotAnOrigin,
    /// A device's: an empty host.
    NoHost,
    /// A device's: a host that is not a plain DNS name.
    Host,
    /// A device's: `[` without its `]`.
    UnclosedIpv6,
    /// A device's: something other than `:port` after `]`.
    AfterIpv6,
    /// A device's: characters other than hex digits, `:` and `.` in `[…]`.
    Ipv6,
    /// A device's: a port that is not a number from 1 to 65535.
    Port,
}

/// A device's endpoint origin, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceOrigin<'a> {
    /// `https` or `http`, lowercase.
    pub scheme: &'static str,
    /// As written (any case); an IPv6 literal without its brackets.
    pub host: &'a str,
    pub ipv6: bool,
    /// The port written in the URL, if any.
    pub port: Option<u16>,
}

/// The origin of an endpoint a device names, read strictly; what follows
/// the origin (path, query, fragment) is ignored.
pub fn device_origin(url: &str) -> Result<DeviceOrigin<'_>, Refusal> {
    let (scheme, authority) = split(url, Writer::Device)?;
    let (host, port) = split_host_port(authority).map_err(|e| match e {
        HostPortError::Unclosed => Refusal::UnclosedIpv6,
        HostPortError::AfterIpv6 => Refusal::AfterIpv6,
    })?;
    if host.is_empty() {
        return Err(Refusal::NoHost);
    }
    let ipv6 = authority.starts_with('[');
    if !ipv6 && !is_dns_name(host) {
        return Err(Refusal::Host);
    }
    if ipv6 && !host.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
        return Err(Refusal::Ipv6);
    }
    let port = match port {
        None => None,
        Some(p) => Some(parse_port(p).ok_or(Refusal::Port)?),
    };
    Ok(DeviceOrigin { scheme, host, ipv6, port })
}

/// An operator's origin as written, without trailing `/`s
/// (`http://127.0.0.1:9000/` gives `http://127.0.0.1:9000`).
pub fn operator_origin(raw: &str) -> Result<&str, Refusal> {
    let trimmed = raw.trim_end_matches('/');
    split(trimmed, Writer::Operator)?;
    Ok(trimmed)
}

/// The scheme (lowercase) and the authority of `url`, checked as far as
/// `writer` asks.
fn split(url: &str, writer: Writer) -> Result<(&'static str, &str), Refusal> {
    let (written_scheme, rest) = url.split_once("://").ok_or(Refusal::NotAbsolute)?;
    let scheme = ["https", "http"]
        .into_iter()
        .find(|s| match writer {
            Writer::Device => written_scheme.eq_ignore_ascii_case(s),
            Writer::Operator => written_scheme == *s,
        })
        .ok_or(Refusal::Scheme)?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(end);
    if authority.contains('@') {
        return Err(Refusal::Userinfo);
    }
    if writer == Writer::Operator && (authority.is_empty() || authority.contains(' ') || !after.is_empty()) {
        return Err(Refusal::NotAnOrigin);
    }
    Ok((scheme, authority))
}

/// Why `host[:port]` could not be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPortError {
    /// `[` without its `]`.
    Unclosed,
    /// Something other than `:port` after `]`.
    AfterIpv6,
}

impl HostPortError {
    pub fn text(self) -> &'static str {
        match self {
            Self::Unclosed => "an IPv6 literal lacks its closing ']'",
            Self::AfterIpv6 => "junk after an IPv6 literal",
        }
    }
}

/// Split `host[:port]` or `[v6][:port]`; the host comes back without
/// brackets.
pub fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), HostPortError> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or(HostPortError::Unclosed)?;
        return match after {
            "" => Ok((host, None)),
            _ => after.strip_prefix(':').map(|p| (host, Some(p))).ok_or(HostPortError::AfterIpv6),
        };
    }
    Ok(match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

fn parse_port(raw: &str) -> Option<u16> {
    if raw.is_empty() || raw.len() > 5 || !raw.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    raw.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Letters, digits and `-` in non-empty labels. A trailing dot is refused:
/// it would slip past the suffix rules and the allow-list globs.
fn is_dns_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// Both readings of the same input, side by side: where they differ is
    /// where a device and an operator are meant to differ (module docs).
    #[test]
    fn the_two_readings_differ_only_where_their_writers_do() {
        use Refusal::*;
        // (input, why a device's reading refuses it, the operator's reading)
        let cases: &[(&str, Option<Refusal>, Result<&str, Refusal>)] = &[
            ("https://push.example.net", None, Ok("https://push.example.net")),
            ("http://127.0.0.1:9000/", None, Ok("http://127.0.0.1:9000")),
            ("https://[::1]:8443", None, Ok("https://[::1]:8443")),
            ("push.example.net", Some(NotAbsolute), Err(NotAbsolute)),
            ("ftp://push.example.net", Some(Scheme), Err(Scheme)),
            ("https://user@push.example.net", Some(Userinfo), Err(Userinfo)),
            // A device's endpoint has a path; an operator's origin has none.
            ("https://push.example.net/wpush/v2/abc", None, Err(NotAnOrigin)),
            ("https://push.example.net?x=1", None, Err(NotAnOrigin)),
            // Devices' URLs come in any case; operators write the scheme as §5.2 does.
            ("HTTPS://Push.Example.NET", None, Err(Scheme)),
            // The operator's host and port go to `fetch` as written.
            ("http://fake_apns:8443", Some(Host), Ok("http://fake_apns:8443")),
            ("https://bücher.example", Some(Host), Ok("https://bücher.example")),
            ("https://push.example.net.", Some(Host), Ok("https://push.example.net.")),
            ("https://push.example.net:0", Some(Port), Ok("https://push.example.net:0")),
            ("https://:8443", Some(NoHost), Ok("https://:8443")),
            ("https://[::1", Some(UnclosedIpv6), Ok("https://[::1")),
            ("https://[::1]x", Some(AfterIpv6), Ok("https://[::1]x")),
            ("https://[::g]", Some(Ipv6), Ok("https://[::g]")),
            ("https://", Some(NoHost), Err(NotAbsolute)),
            ("https://a b.example", Some(Host), Err(NotAnOrigin)),
        ];
        for (input, device, operator) in cases {
            assert_eq!(device_origin(input).err(), *device, "device {input:?}");
            assert_eq!(operator_origin(input), *operator, "operator {input:?}");
        }
    }

    #[test]
    fn a_device_origin_keeps_its_parts() {
        let o = device_origin("HTTPS://Push.Example.NET:8443/x?y#z").unwrap();
        assert_eq!(o, DeviceOrigin { scheme: "https", host: "Push.Example.NET", ipv6: false, port: Some(8443) });
        let v6 = device_origin("http://[::1]/x").unwrap();
        assert_eq!((v6.host, v6.ipv6, v6.port), ("::1", true, None));
    }

    #[test]
    fn host_and_port_split() {
        assert_eq!(split_host_port("a.example:80"), Ok(("a.example", Some("80"))));
        assert_eq!(split_host_port("a.example"), Ok(("a.example", None)));
        assert_eq!(split_host_port("[::1]:*"), Ok(("::1", Some("*"))));
        assert_eq!(split_host_port("[::1"), Err(HostPortError::Unclosed));
        assert_eq!(split_host_port("[::1]8"), Err(HostPortError::AfterIpv6));
    }
}
