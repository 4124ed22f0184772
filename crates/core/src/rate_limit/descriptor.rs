//! What a bucket is keyed by, and which shared-data slot a bucket lives in.

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
    /// A request header's value (lower-case name).
    Header(String),
}

impl Part {
    /// The tag written into the bucket key, so `ip=1.2.3.4` and `header=1.2.3.4` differ.
    fn tag(&self) -> &str {
        match self {
            Self::Consumer => "consumer",
            Self::KeyId => "key_id",
            Self::Ip => "ip",
            Self::Path => "path",
            Self::Route => "route",
            Self::Header(name) => name,
        }
    }
}

/// Builds the bucket key of a request: the rule name and each part's value, unambiguously
/// joined. `value` answers each part; the first part without a value is returned as `Err`.
pub fn bucket_key<'a>(
    rule: &str,
    parts: &'a [Part],
    mut value: impl FnMut(&Part) -> Option<String>,
) -> Result<String, &'a Part> {
    let mut key = String::with_capacity(64);
    push_field(&mut key, rule);
    for part in parts {
        let v = value(part).filter(|v| !v.is_empty()).ok_or(part)?;
        push_field(&mut key, part.tag());
        push_field(&mut key, &v);
    }
    Ok(key)
}

/// Length-prefixed, so no value can forge a field boundary.
fn push_field(out: &mut String, field: &str) {
    out.push_str(&field.len().to_string());
    out.push(':');
    out.push_str(field);
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

/// The IP of an `ip:port` or `[ipv6]:port` address as Envoy reports `source.address`.
pub fn ip_of_address(address: &str) -> Option<&str> {
    let address = address.trim();
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map(|(ip, _)| ip).filter(|ip| !ip.is_empty());
    }
    match address.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            Some(ip).filter(|ip| !ip.is_empty())
        }
        _ => Some(address).filter(|a| !a.is_empty()),
    }
}

/// The `hop`-th address from the right of an `x-forwarded-for` value (1 = the rightmost, the
/// one the proxy in front of Envoy appended). `None` when the header has fewer entries.
pub fn forwarded_for_hop(header: &str, hop: u8) -> Option<&str> {
    let index = usize::from(hop).checked_sub(1)?;
    header.rsplit(',').map(str::trim).nth(index).filter(|ip| !ip.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_keys_are_unambiguous() {
        let parts = [Part::Header("x-a".into()), Part::Header("x-b".into())];
        let one = bucket_key("r", &parts, |p| Some(if *p == parts[0] { "1:2" } else { "3" }.to_owned()));
        let two = bucket_key("r", &parts, |p| Some(if *p == parts[0] { "1" } else { "2:3" }.to_owned()));
        assert_ne!(one.unwrap(), two.unwrap());
        let ip = bucket_key("r", &[Part::Ip], |_| Some("1.2.3.4".into())).unwrap();
        let path = bucket_key("r", &[Part::Path], |_| Some("1.2.3.4".into())).unwrap();
        assert_ne!(ip, path);
        let other_rule = bucket_key("s", &[Part::Ip], |_| Some("1.2.3.4".into())).unwrap();
        assert_ne!(ip, other_rule);
        assert_eq!(bucket_key("r", &[], |_| None), Ok("1:r".to_owned()));
    }

    #[test]
    fn a_part_without_a_value_is_reported() {
        let parts = [Part::Ip, Part::Consumer];
        let r = bucket_key("r", &parts, |p| (*p == Part::Ip).then(|| "1.2.3.4".to_owned()));
        assert_eq!(r, Err(&Part::Consumer));
        let empty = bucket_key("r", &parts, |_| Some(String::new()));
        assert_eq!(empty, Err(&Part::Ip));
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
        assert_eq!(ip_of_address("10.1.2.3:5555"), Some("10.1.2.3"));
        assert_eq!(ip_of_address("[::1]:8080"), Some("::1"));
        assert_eq!(ip_of_address("fe80::1"), Some("fe80::1"));
        assert_eq!(ip_of_address("10.1.2.3"), Some("10.1.2.3"));
        assert_eq!(ip_of_address(""), None);
        let xff = "203.0.113.9, 198.51.100.7 ,10.0.0.1";
        assert_eq!(forwarded_for_hop(xff, 1), Some("10.0.0.1"));
        assert_eq!(forwarded_for_hop(xff, 2), Some("198.51.100.7"));
        assert_eq!(forwarded_for_hop(xff, 3), Some("203.0.113.9"));
        assert_eq!(forwarded_for_hop(xff, 4), None);
        assert_eq!(forwarded_for_hop(xff, 0), None);
        assert_eq!(forwarded_for_hop("a,,b", 2), None);
    }
}
