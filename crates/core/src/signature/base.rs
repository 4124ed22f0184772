//! Signature bases (RFC 9421 section 2): component identifiers, component values and the
//! `@signature-params` line.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};

use super::sf::{self, BareItem, Item, Member, Params};
use crate::route::form_decode;

/// The parts of an HTTP message a signature can cover. Header names may be in any case;
/// repeated headers appear once per field line, in order. Header values are the bytes received:
/// a value need not be UTF-8 (HTTP allows obs-text), and two different byte sequences never
/// become the same value.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub method: String,
    /// `https` or `http`.
    pub scheme: String,
    /// The request's authority (`:authority` / `Host`).
    pub authority: String,
    /// The request target in origin form: path and query (`/foo?a=b`).
    pub target: String,
    /// Set for a response; `None` for a request.
    pub status: Option<u16>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Message {
    /// The values of a header, one per field line, in order.
    pub fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice()).collect()
    }

    /// The combined field value of a header (RFC 9110 section 5.3): every field line, trimmed,
    /// joined with `", "`; `None` when the header is absent.
    pub fn field_value(&self, name: &str) -> Option<Vec<u8>> {
        let values = self.header_values(name);
        (!values.is_empty()).then(|| combine(&values))
    }

    fn path_and_query(&self) -> (&str, Option<&str>) {
        match self.target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (self.target.as_str(), None),
        }
    }
}

/// Field lines trimmed of surrounding whitespace and joined with `", "`.
fn combine(values: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.iter().map(|v| v.len() + 2).sum());
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(trim_ows(v));
    }
    out
}

/// A field value without leading and trailing spaces and tabs.
fn trim_ows(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |i| i + 1);
    &value[start..end]
}

/// Why a component could not be put in a signature base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseError {
    /// The covered component is absent from the message.
    Missing(String),
    /// The identifier or its parameters are not supported or malformed.
    Unsupported(String),
    /// The same identifier is listed twice.
    Duplicate(String),
}

impl std::fmt::Display for BaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(c) => write!(f, "covered component {c} is not in the message"),
            Self::Unsupported(c) => write!(f, "covered component {c} is not supported"),
            Self::Duplicate(c) => write!(f, "covered component {c} is listed twice"),
        }
    }
}

/// Fields whose structured type is known, for the `sf` and `key` parameters.
const DICTIONARY_FIELDS: &[&str] = &[
    "accept-signature",
    "content-digest",
    "repr-digest",
    "signature",
    "signature-input",
    "want-content-digest",
    "want-repr-digest",
    "priority",
    "example-dict",
];
const LIST_FIELDS: &[&str] = &["accept-ch", "example-list"];
const ITEM_FIELDS: &[&str] = &["example-item"];

/// The serialized form of a component identifier (`"@query-param";name="Pet"`).
pub fn identifier_text(item: &Item) -> String {
    let mut out = String::new();
    sf::serialize_item(item, &mut out);
    out
}

/// The name of a component identifier (`@method`, `content-digest`).
pub fn identifier_name(item: &Item) -> Option<&str> {
    match &item.value {
        BareItem::String(name) => Some(name.as_str()),
        _ => None,
    }
}

/// A component identifier without parameters.
pub fn component(name: &str) -> Item {
    Item { value: BareItem::String(name.to_owned()), params: Vec::new() }
}

/// A component identifier with parameters (e.g. `@query-param` with `name`).
pub fn component_with(name: &str, params: Params) -> Item {
    Item { value: BareItem::String(name.to_owned()), params }
}

/// The value of one covered component (RFC 9421 sections 2.1 and 2.2), as bytes.
///
/// A header field's value is the combined field value, byte for byte: the signature base is a
/// sequence of bytes (RFC 9421 section 1.1), so a value holding obs-text (bytes 0x80 to 0xff) is
/// carried as received, never decoded and re-encoded. With `bs` each field line is base64 of
/// its exact bytes (section 2.1.3). `sf` and `key` parse the value as a structured field, which
/// holds only ASCII: a value that is not is refused.
pub fn component_value(message: &Message, item: &Item) -> Result<Vec<u8>, BaseError> {
    let text = identifier_text(item);
    let unsupported = || BaseError::Unsupported(text.clone());
    let name = identifier_name(item).ok_or_else(unsupported)?;
    for (key, _) in &item.params {
        let allowed = match key.as_str() {
            "name" => name == "@query-param",
            "sf" | "key" | "bs" => !name.starts_with('@'),
            _ => false, // `req` and `tr` are not supported; unknown parameters are errors
        };
        if !allowed {
            return Err(unsupported());
        }
    }
    if let Some(derived) = name.strip_prefix('@') {
        return derived_value(message, derived, item).map(String::into_bytes).ok_or_else(|| match derived {
            "method" | "target-uri" | "authority" | "scheme" | "request-target" | "path" | "query"
            | "query-param" | "status" => BaseError::Missing(text.clone()),
            _ => BaseError::Unsupported(text.clone()),
        });
    }
    if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(unsupported());
    }
    let values = message.header_values(name);
    if values.is_empty() {
        return Err(BaseError::Missing(text));
    }
    let has = |p: &str| sf::param(&item.params, p).is_some();
    if has("bs") {
        if has("sf") || has("key") {
            return Err(unsupported());
        }
        let list: Vec<Member> = values
            .iter()
            .map(|v| {
                Member::Item(Item { value: BareItem::ByteSeq(trim_ows(v).to_vec()), params: Vec::new() })
            })
            .collect();
        return Ok(sf::serialize_list(&list).into_bytes());
    }
    let combined = combine(&values);
    if !has("key") && !has("sf") {
        return Ok(combined);
    }
    let combined = std::str::from_utf8(&combined).map_err(|_| unsupported())?;
    if let Some(key) = sf::param(&item.params, "key") {
        let BareItem::String(key) = key else { return Err(unsupported()) };
        if !DICTIONARY_FIELDS.contains(&name) {
            return Err(unsupported());
        }
        let dict = sf::parse_dictionary(combined).map_err(|_| unsupported())?;
        let member = dict.iter().find(|(k, _)| k == key).map(|(_, m)| m);
        let member = member.ok_or_else(|| BaseError::Missing(text.clone()))?;
        let mut out = String::new();
        sf::serialize_member(member, &mut out);
        return Ok(out.into_bytes());
    }
    if DICTIONARY_FIELDS.contains(&name) {
        let dict = sf::parse_dictionary(combined).map_err(|_| unsupported())?;
        return Ok(sf::serialize_dictionary(&dict).into_bytes());
    }
    if LIST_FIELDS.contains(&name) {
        let list = sf::parse_list(combined).map_err(|_| unsupported())?;
        return Ok(sf::serialize_list(&list).into_bytes());
    }
    if ITEM_FIELDS.contains(&name) {
        let item = sf::parse_item(combined).map_err(|_| unsupported())?;
        return Ok(identifier_text(&item).into_bytes());
    }
    Err(unsupported())
}

fn default_port(scheme: &str) -> &'static str {
    if scheme.eq_ignore_ascii_case("http") { ":80" } else { ":443" }
}

/// `@authority`: lowercased, default port removed.
pub fn normalized_authority(message: &Message) -> String {
    let authority = message.authority.to_ascii_lowercase();
    match authority.strip_suffix(default_port(&message.scheme)) {
        Some(bare) => bare.to_owned(),
        None => authority,
    }
}

fn derived_value(message: &Message, name: &str, item: &Item) -> Option<String> {
    let request = message.status.is_none();
    let (path, query) = message.path_and_query();
    match name {
        "method" if request && !message.method.is_empty() => Some(message.method.clone()),
        "authority" if request && !message.authority.is_empty() => Some(normalized_authority(message)),
        "scheme" if request && !message.scheme.is_empty() => Some(message.scheme.to_ascii_lowercase()),
        "target-uri" if request && !message.authority.is_empty() => Some(format!(
            "{}://{}{}",
            message.scheme.to_ascii_lowercase(),
            normalized_authority(message),
            message.target
        )),
        "request-target" if request && !message.target.is_empty() => Some(message.target.clone()),
        "path" if request => Some(if path.is_empty() { "/".to_owned() } else { path.to_owned() }),
        "query" if request => Some(format!("?{}", query.unwrap_or(""))),
        "query-param" if request => {
            let Some(BareItem::String(wanted)) = sf::param(&item.params, "name") else {
                return None;
            };
            let mut found = None;
            for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if query_encode(&form_decode(k)) == *wanted {
                    if found.is_some() {
                        return None; // a repeated parameter is ambiguous: refuse it
                    }
                    found = Some(query_encode(&form_decode(v)));
                }
            }
            found
        }
        "status" => message.status.map(|s| format!("{s:03}")),
        _ => None,
    }
}

/// The `application/x-www-form-urlencoded` percent-encode set: all but ASCII letters, digits
/// and `*-._`.
const FORM_URLENCODED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'*').remove(b'-').remove(b'.').remove(b'_');

/// Percent-encoding with the `application/x-www-form-urlencoded` set, space as `%20`
/// (RFC 9421 section 2.2.8).
fn query_encode(bytes: &[u8]) -> String {
    percent_encode(bytes, FORM_URLENCODED).to_string()
}

/// Signature parameters: the inner list of covered components and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SignatureParams {
    pub components: Vec<Item>,
    pub params: Params,
}

impl SignatureParams {
    /// Reads the parameters of a `Signature-Input` member.
    pub fn from_member(member: &Member) -> Option<Self> {
        match member {
            Member::InnerList(items, params) => {
                Some(Self { components: items.clone(), params: params.clone() })
            }
            Member::Item(_) => None,
        }
    }

    /// The serialized value of `@signature-params` (and of the `Signature-Input` member).
    pub fn serialize(&self) -> String {
        let mut out = String::new();
        sf::serialize_member(&Member::InnerList(self.components.clone(), self.params.clone()), &mut out);
        out
    }

    pub fn integer(&self, name: &str) -> Option<i64> {
        match sf::param(&self.params, name) {
            Some(BareItem::Integer(n)) => Some(*n),
            _ => None,
        }
    }

    pub fn string(&self, name: &str) -> Option<&str> {
        match sf::param(&self.params, name) {
            Some(BareItem::String(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    /// Whether the covered components include `name` (without parameters, or with any).
    pub fn covers(&self, text: &str) -> bool {
        self.components.iter().any(|c| identifier_text(c) == text || identifier_name(c) == Some(text))
    }
}

/// Builds the signature base (RFC 9421 section 2.5): bytes, since a header value may hold
/// obs-text. A component value holding CR, LF or NUL is refused.
pub fn signature_base(message: &Message, params: &SignatureParams) -> Result<Vec<u8>, BaseError> {
    let mut out = Vec::new();
    let mut seen: Vec<String> = Vec::with_capacity(params.components.len());
    for item in &params.components {
        let text = identifier_text(item);
        if seen.contains(&text) {
            return Err(BaseError::Duplicate(text));
        }
        let value = component_value(message, item)?;
        if value.iter().any(|b| matches!(b, b'\n' | b'\r' | 0)) {
            return Err(BaseError::Unsupported(text));
        }
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&value);
        out.push(b'\n');
        seen.push(text);
    }
    out.extend_from_slice(b"\"@signature-params\": ");
    out.extend_from_slice(params.serialize().as_bytes());
    Ok(out)
}
