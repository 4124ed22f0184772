//! Where a webhook may point: an `http` or `https` URL whose host resolves only to public
//! addresses, unless the service allows private ones (`--webhooks-allow-private`). The check
//! runs when an endpoint is created and again before every attempt, and the attempt connects
//! to the address that was checked, so a name that later resolves elsewhere (DNS rebinding)
//! gains nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hyper::Uri;

use crate::error::{Error, Result};

/// The longest URL accepted.
pub const MAX_URL_LEN: usize = 2_048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A parsed endpoint URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    /// The host without brackets (an IPv6 literal is bare).
    pub host: String,
    pub port: u16,
    /// The `Host` header: the URL's authority.
    pub authority: String,
    pub path_and_query: String,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::invalid("url", reason)
}

/// Parses an endpoint URL: `http` or `https`, a host, no user information, no fragment.
pub fn parse(url: &str) -> Result<Target> {
    if url.len() > MAX_URL_LEN {
        return Err(bad(format!("is longer than {MAX_URL_LEN} characters")));
    }
    if !url.contains("://") {
        return Err(bad("must start with https:// or http://"));
    }
    if url.contains('#') {
        return Err(bad("must not have a fragment"));
    }
    let uri: Uri = url.parse().map_err(|e| bad(format!("is not a URL: {e}")))?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
        Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
        Some(other) => return Err(bad(format!("scheme {other:?} is not http or https"))),
        None => return Err(bad("must start with https:// or http://")),
    };
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not carry user information"));
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    let port = authority.port_u16().unwrap_or(match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    });
    if port == 0 {
        return Err(bad("port 0 is not a port"));
    }
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let path_and_query = if path_and_query.is_empty() { "/".to_owned() } else { path_and_query };
    Ok(Target { scheme, host, port, authority: authority.as_str().to_owned(), path_and_query })
}

/// Why an address may not be a webhook target, or `None` when it may.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("cloud metadata")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if first == 0x64 && v6.segments()[1] == 0xff9b {
                // NAT64 (64:ff9b::/96) embeds an IPv4 address.
                let [.., a, b] = v6.segments();
                let embedded = Ipv4Addr::from((u32::from(a) << 16) | u32::from(b));
                forbidden_v4(embedded)
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some("cloud metadata")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_private() {
        Some("private")
    } else if a == 100 && (64..128).contains(&b) {
        Some("private (shared address space)")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("not unicast")
    } else {
        None
    }
}

/// The addresses `target` resolves to, every one of them allowed; an error naming the first
/// that is not.
pub async fn resolve(target: &Target, allow_private: bool) -> Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| bad(format!("host {:?} does not resolve: {e}", target.host)))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(bad(format!("host {:?} has no address", target.host)));
    }
    if !allow_private && let Some((addr, why)) = addrs.iter().find_map(|a| forbidden(a.ip()).map(|w| (a, w)))
    {
        return Err(bad(format!(
            "host {:?} resolves to {} ({why}); private targets are refused unless the service runs with \
             --webhooks-allow-private",
            target.host,
            addr.ip()
        )));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_or_https_with_a_host() {
        let t = parse("https://hooks.example.com/in?x=1").unwrap();
        assert_eq!((t.scheme, t.host.as_str(), t.port), (Scheme::Https, "hooks.example.com", 443));
        assert_eq!(t.path_and_query, "/in?x=1");
        let t = parse("http://[::1]:8080").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path_and_query.as_str()), ("::1", 8080, "/"));
        for (url, why) in [
            ("ftp://example.com/", "scheme \"ftp\" is not http or https"),
            ("example.com/hook", "must start with https:// or http://"),
            ("https://user:pw@example.com/", "must not carry user information"),
            ("https://example.com/#x", "must not have a fragment"),
            ("https://example.com:0/", "port 0 is not a port"),
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert_eq!(err, format!("url: {why}"), "{url}");
        }
    }

    #[test]
    fn loopback_private_link_local_and_metadata_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(forbidden(ip.parse().unwrap()).is_some(), "{ip} should be forbidden");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert_eq!(forbidden(ip.parse().unwrap()), None, "{ip} should be allowed");
        }
    }

    #[tokio::test]
    async fn a_loopback_target_is_refused_unless_private_targets_are_allowed() {
        let target = parse("http://127.0.0.1:9/hook").unwrap();
        let err = resolve(&target, false).await.unwrap_err().to_string();
        assert!(err.contains("resolves to 127.0.0.1 (loopback)"), "{err}");
        assert!(err.contains("--webhooks-allow-private"), "{err}");
        assert_eq!(resolve(&target, true).await.unwrap(), vec!["127.0.0.1:9".parse().unwrap()]);
        let named = parse("http://localhost:9/hook").unwrap();
        assert!(resolve(&named, false).await.is_err());
    }
}
