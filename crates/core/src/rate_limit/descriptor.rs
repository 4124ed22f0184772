//! What a bucket is keyed by, which shared-data slot a bucket lives in, and the client IP.

use std::borrow::Cow;
use std::net::IpAddr;

use super::config::Missing;

/// One part of a rule's bucket key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// The consumer id key-auth (or another identity filter) published.
    Consumer,
    /// The key id key-auth published.
    KeyId,
    /// The client IP: the downstream address, or a trusted `x-forwarded-for` hop.
    Ip,
    /// The request path without its query string.
    Path,
    /// Envoy's route name.
    Route,
    /// A request header's value, its exact bytes (lower-case name).
    Header(String),
}

impl Part {
    /// The fields written into the bucket key before the part's value, so that `ip=1.2.3.4`,
    /// `header ip=1.2.3.4` and `path=1.2.3.4` all differ.
    fn push_tag(&self, key: &mut Vec<u8>) {
        let tag = match self {
            Self::Consumer => "consumer",
            Self::KeyId => "key_id",
            Self::Ip => "ip",
            Self::Path => "path",
            Self::Route => "route",
            Self::Header(name) => {
                push_field(key, b"header");
                name
            }
        };
        push_field(key, tag.as_bytes());
    }
}

/// Builds the bucket key of a request: the rule name and each part's value (exact bytes),
/// unambiguously joined. `value` answers each part; the first part without a value (or with an
/// empty one) is returned as `Err`.
pub fn bucket_key<'a, 'v>(
    rule: &str,
    parts: &'a [Part],
    mut value: impl FnMut(&Part) -> Option<Cow<'v, [u8]>>,
) -> Result<Vec<u8>, &'a Part> {
    let mut key = Vec::with_capacity(64);
    push_field(&mut key, rule.as_bytes());
    for part in parts {
        let v = value(part).filter(|v| !v.is_empty()).ok_or(part)?;
        part.push_tag(&mut key);
        push_field(&mut key, &v);
    }
    Ok(key)
}

/// The bucket every request of `rule` shares that has no client IP (see [`bucket_of`]): the IP
/// part with an empty value, which no request's own IP can be.
pub fn no_ip_key(rule: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(rule.len() + 8);
    push_field(&mut key, rule.as_bytes());
    Part::Ip.push_tag(&mut key);
    push_field(&mut key, b"");
    key
}

/// Which bucket a request takes its token from under a rule, or why it takes none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bucket {
    /// The request's own bucket: every part of `by` had a value, or `missing: ip` keyed it by
    /// the client IP instead.
    Key(Vec<u8>),
    /// `missing: ip` and no client IP either: the one bucket of the rule that every request
    /// without an IP shares ([`no_ip_key`]). Never unlimited: together they get what one
    /// client gets.
    NoClientIp(Vec<u8>),
    /// `missing: skip`: the rule does not apply to the request.
    Skip,
    /// `missing: deny`: the request is refused.
    Deny,
}

/// The bucket of a request under a rule keyed by `parts`, following `missing` when a part has
/// no value.
pub fn bucket_of<'v>(
    rule: &str,
    parts: &[Part],
    missing: Missing,
    mut value: impl FnMut(&Part) -> Option<Cow<'v, [u8]>>,
) -> Bucket {
    if let Ok(key) = bucket_key(rule, parts, &mut value) {
        return Bucket::Key(key);
    }
    match missing {
        Missing::Skip => Bucket::Skip,
        Missing::Deny => Bucket::Deny,
        Missing::Ip => match bucket_key(rule, &[Part::Ip], value) {
            Ok(key) => Bucket::Key(key),
            Err(_) => Bucket::NoClientIp(no_ip_key(rule)),
        },
    }
}

/// Length-prefixed, so no value can forge a field boundary.
fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(field.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(field);
}

/// FNV-1a, 64 bits: stable across builds and workers, and cheap inside the VM.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Final avalanche (from SplitMix64) so that `% slots` uses well-mixed bits.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The slot of a bucket key's hash among `slots` (at least 1).
pub fn slot(hash: u64, slots: u32) -> u32 {
    (hash % u64::from(slots.max(1))) as u32
}

/// The client IP of an address as Envoy reports `source.address` (`ip:port`, `[ipv6]:port`) or
/// an `x-forwarded-for` entry (a bare IP, sometimes with a port). `None` for anything that is
/// not an IP address, such as a pipe or an internal listener's name. The IP comes back in one
/// canonical spelling (an IPv4-mapped IPv6 address as IPv4), so one client is one bucket
/// however its address is written.
pub fn client_ip(address: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(address).ok()?.trim();
    let ip = if let Some(rest) = text.strip_prefix('[') {
        let (ip, _port) = rest.split_once(']')?;
        ip.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)?
    } else if let Ok(ip) = text.parse::<IpAddr>() {
        ip
    } else {
        // `ipv4:port` (a bare IPv6 address has several colons and parsed above).
        let (ip, port) = text.rsplit_once(':')?;
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)?
    };
    Some(ip.to_canonical())
}

/// The client IP in the `hop`-th entry from the right of an `x-forwarded-for` value (1 = the
/// rightmost). `None` when the header has fewer entries or that entry is not an IP address.
pub fn forwarded_for_hop(header: &[u8], hop: u8) -> Option<IpAddr> {
    let index = usize::from(hop).checked_sub(1)?;
    let entry = header.rsplit(|b| *b == b',').nth(index)?;
    client_ip(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: &str) -> Option<Cow<'_, [u8]>> {
        Some(Cow::Borrowed(v.as_bytes()))
    }

    #[test]
    fn bucket_keys_are_unambiguous() {
        let parts = [Part::Header("x-a".into()), Part::Header("x-b".into())];
        let one = bucket_key("r", &parts, |p| text(if *p == parts[0] { "1:2" } else { "3" }));
        let two = bucket_key("r", &parts, |p| text(if *p == parts[0] { "1" } else { "2:3" }));
        assert_ne!(one.unwrap(), two.unwrap());
        let ip = bucket_key("r", &[Part::Ip], |_| text("1.2.3.4")).unwrap();
        let path = bucket_key("r", &[Part::Path], |_| text("1.2.3.4")).unwrap();
        assert_ne!(ip, path);
        // A header named like a part is not that part.
        let header_ip = bucket_key("r", &[Part::Header("ip".into())], |_| text("1.2.3.4")).unwrap();
        assert_ne!(ip, header_ip);
        let other_rule = bucket_key("s", &[Part::Ip], |_| text("1.2.3.4")).unwrap();
        assert_ne!(ip, other_rule);
        assert_eq!(bucket_key("r", &[], |_| None), Ok(b"1:r".to_vec()));
    }

    #[test]
    fn header_bytes_key_buckets_exactly() {
        let parts = [Part::Header("x-client".into())];
        let key = |v: &'static [u8]| bucket_key("r", &parts, |_| Some(Cow::Borrowed(v))).unwrap();
        // Two different invalid sequences, and the text a lossy decoding makes of both.
        assert_ne!(key(b"\xff\xfe"), key(b"\xfe\xff"));
        assert_ne!(key(b"\xff\xfe"), key("\u{fffd}\u{fffd}".as_bytes()));
        assert_eq!(key(b"\xff\xfe"), key(b"\xff\xfe"));
    }

    #[test]
    fn a_part_without_a_value_is_reported() {
        let parts = [Part::Ip, Part::Consumer];
        let r = bucket_key("r", &parts, |p| if *p == Part::Ip { text("1.2.3.4") } else { None });
        assert_eq!(r, Err(&Part::Consumer));
        let empty = bucket_key("r", &parts, |_| text(""));
        assert_eq!(empty, Err(&Part::Ip));
    }

    #[test]
    fn missing_values_follow_the_rule() {
        let parts = [Part::Consumer];
        let with_ip = |p: &Part| if *p == Part::Ip { text("10.0.0.1") } else { None };
        let ip_key = bucket_key("r", &[Part::Ip], with_ip).unwrap();
        assert_eq!(bucket_of("r", &parts, Missing::Ip, with_ip), Bucket::Key(ip_key));
        assert_eq!(bucket_of("r", &parts, Missing::Skip, with_ip), Bucket::Skip);
        assert_eq!(bucket_of("r", &parts, Missing::Deny, with_ip), Bucket::Deny);
        let consumer = |p: &Part| if *p == Part::Consumer { text("alice") } else { None };
        let own = bucket_key("r", &parts, consumer).unwrap();
        assert_eq!(bucket_of("r", &parts, Missing::Deny, consumer), Bucket::Key(own));
    }

    #[test]
    fn requests_without_an_ip_share_one_bucket_per_rule() {
        let none = |_: &Part| None;
        for parts in [vec![Part::Ip], vec![Part::Consumer], vec![Part::Ip, Part::Header("x-t".into())]] {
            assert_eq!(bucket_of("r", &parts, Missing::Ip, none), Bucket::NoClientIp(no_ip_key("r")));
        }
        assert_ne!(no_ip_key("r"), no_ip_key("s"), "one such bucket per rule");
        // No request's own IP (never empty) lands in it.
        let ip = bucket_key("r", &[Part::Ip], |_| text("0.0.0.0")).unwrap();
        assert_ne!(ip, no_ip_key("r"));
        assert_eq!(bucket_of("r", &[Part::Ip], Missing::Skip, none), Bucket::Skip);
        assert_eq!(bucket_of("r", &[Part::Ip], Missing::Deny, none), Bucket::Deny);
    }

    #[test]
    fn slots_spread_evenly_and_stay_in_range() {
        let slots = 64u32;
        let mut counts = vec![0u32; slots as usize];
        for i in 0..64_000 {
            let s = slot(hash64(format!("10.0.{}.{}", i / 256, i % 256).as_bytes()), slots);
            assert!(s < slots);
            counts[s as usize] += 1;
        }
        // 1000 per slot on average; a decent hash keeps every slot within ±20 %.
        assert!(counts.iter().all(|c| (800..=1200).contains(c)), "{counts:?}");
        assert_eq!(slot(12345, 0), 0);
        assert_eq!(hash64(b"abc"), hash64(b"abc"));
        assert_ne!(hash64(b"abc"), hash64(b"abd"));
    }

    #[test]
    fn client_ips_are_read_from_addresses_and_forwarded_for() {
        let ip = |s: &str| client_ip(s.as_bytes()).map(|ip| ip.to_string());
        assert_eq!(ip("10.1.2.3:5555").as_deref(), Some("10.1.2.3"));
        assert_eq!(ip("[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(ip("fe80::1").as_deref(), Some("fe80::1"));
        assert_eq!(ip("10.1.2.3").as_deref(), Some("10.1.2.3"));
        assert_eq!(ip(" 10.1.2.3 ").as_deref(), Some("10.1.2.3"));
        // One client, one spelling.
        assert_eq!(ip("[::ffff:10.1.2.3]:80").as_deref(), Some("10.1.2.3"));
        assert_eq!(ip("2001:DB8:0:0::1").as_deref(), Some("2001:db8::1"));
        // Anything that is not an IP address is no IP.
        for not_ip in
            ["", "unknown", "/run/envoy.sock", "@internal", "10.1.2.3:", "10.1.2.3:x", "[::1", "1.2.3"]
        {
            assert_eq!(ip(not_ip), None, "{not_ip}");
        }
        assert_eq!(client_ip(b"\xff10.1.2.3"), None);

        let hop = |h: &str, n| forwarded_for_hop(h.as_bytes(), n).map(|ip| ip.to_string());
        let xff = "203.0.113.9, 198.51.100.7 ,10.0.0.1";
        assert_eq!(hop(xff, 1).as_deref(), Some("10.0.0.1"));
        assert_eq!(hop(xff, 2).as_deref(), Some("198.51.100.7"));
        assert_eq!(hop(xff, 3).as_deref(), Some("203.0.113.9"));
        assert_eq!(hop(xff, 4), None);
        assert_eq!(hop(xff, 0), None);
        assert_eq!(hop("a,,b", 2), None);
        assert_eq!(hop("203.0.113.9, not-an-ip", 1), None);
        assert_eq!(hop("", 1), None);
    }
}
