//! The subset of RFC 8941 structured fields that HTTP message signatures need: dictionaries
//! whose members are items or inner lists, lists, parameters, and the bare item types
//! integer, decimal, string, token, byte sequence and boolean. Parsing is strict; the
//! serializer produces the canonical form that signature bases are built from.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A bare item.
#[derive(Debug, Clone, PartialEq)]
pub enum BareItem {
    Integer(i64),
    /// Kept as the thousandths it was written with, so it serializes back exactly.
    Decimal(i64),
    String(String),
    Token(String),
    ByteSeq(Vec<u8>),
    Boolean(bool),
}

/// Parameters in the order they were written.
pub type Params = Vec<(String, BareItem)>;

/// A bare item with parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub value: BareItem,
    pub params: Params,
}

/// A list member or dictionary value.
#[derive(Debug, Clone, PartialEq)]
pub enum Member {
    Item(Item),
    InnerList(Vec<Item>, Params),
}

/// A dictionary in the order it was written (a repeated key keeps its first position and
/// the last value, as RFC 8941 section 4.2.2 says).
pub type Dictionary = Vec<(String, Member)>;

/// Why a field did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub &'static str);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid structured field: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

type Result<T> = std::result::Result<T, ParseError>;

/// Looks a parameter up by name.
pub fn param<'a>(params: &'a Params, name: &str) -> Option<&'a BareItem> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Self { input: text.as_bytes(), pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn key(&mut self) -> Result<String> {
        let start = self.pos;
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == b'*' => self.pos += 1,
            _ => return Err(ParseError("a key must start with a lowercase letter or `*`")),
        }
        while let Some(c) = self.peek() {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(&c) {
                self.pos += 1;
            } else {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&self.input[start..self.pos]).into_owned())
    }

    fn params(&mut self) -> Result<Params> {
        let mut params: Params = Vec::new();
        while self.peek() == Some(b';') {
            self.pos += 1;
            self.skip_sp();
            let key = self.key()?;
            let value = if self.peek() == Some(b'=') {
                self.pos += 1;
                self.bare_item()?
            } else {
                BareItem::Boolean(true)
            };
            if let Some(slot) = params.iter_mut().find(|(k, _)| *k == key) {
                slot.1 = value;
            } else {
                params.push((key, value));
            }
        }
        Ok(params)
    }

    fn bare_item(&mut self) -> Result<BareItem> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'"') => self.string(),
            Some(b':') => self.byte_seq(),
            Some(b'?') => self.boolean(),
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => Ok(self.token()),
            _ => Err(ParseError("expected a bare item")),
        }
    }

    fn number(&mut self) -> Result<BareItem> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let start = self.pos;
        let mut dot = None;
        while let Some(c) = self.peek() {
            if c.is_ascii_digit() {
                self.pos += 1;
            } else if c == b'.' && dot.is_none() {
                dot = Some(self.pos);
                self.pos += 1;
            } else {
                break;
            }
        }
        let text = std::str::from_utf8(&self.input[start..self.pos]).map_err(|_| ParseError("number"))?;
        let sign = if negative { -1 } else { 1 };
        match dot {
            None => {
                if text.is_empty() || text.len() > 15 {
                    return Err(ParseError("an integer has 1 to 15 digits"));
                }
                let n: i64 = text.parse().map_err(|_| ParseError("integer"))?;
                Ok(BareItem::Integer(sign * n))
            }
            Some(_) => {
                let (int, frac) = text.split_once('.').ok_or(ParseError("decimal"))?;
                if int.is_empty() || int.len() > 12 || frac.is_empty() || frac.len() > 3 {
                    return Err(ParseError("a decimal has 1-12 integer and 1-3 fraction digits"));
                }
                let int: i64 = int.parse().map_err(|_| ParseError("decimal"))?;
                let mut thousandths: i64 = frac.parse().map_err(|_| ParseError("decimal"))?;
                for _ in frac.len()..3 {
                    thousandths *= 10;
                }
                Ok(BareItem::Decimal(sign * (int * 1000 + thousandths)))
            }
        }
    }

    fn string(&mut self) -> Result<BareItem> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let c = self.peek().ok_or(ParseError("unterminated string"))?;
            self.pos += 1;
            match c {
                b'"' => return Ok(BareItem::String(out)),
                b'\\' => {
                    let next = self.peek().ok_or(ParseError("unterminated string"))?;
                    if next != b'"' && next != b'\\' {
                        return Err(ParseError("bad escape in string"));
                    }
                    self.pos += 1;
                    out.push(char::from(next));
                }
                0x20..=0x7e => out.push(char::from(c)),
                _ => return Err(ParseError("a string holds only printable ASCII")),
            }
        }
    }

    fn token(&mut self) -> BareItem {
        let start = self.pos;
        self.pos += 1;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c) {
                self.pos += 1;
            } else {
                break;
            }
        }
        BareItem::Token(String::from_utf8_lossy(&self.input[start..self.pos]).into_owned())
    }

    fn byte_seq(&mut self) -> Result<BareItem> {
        self.pos += 1;
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c == b':' {
                break;
            }
            if !(c.is_ascii_alphanumeric() || b"+/=".contains(&c)) {
                return Err(ParseError("a byte sequence holds only base64"));
            }
            self.pos += 1;
        }
        if self.peek() != Some(b':') {
            return Err(ParseError("unterminated byte sequence"));
        }
        let bytes = STANDARD
            .decode(&self.input[start..self.pos])
            .map_err(|_| ParseError("a byte sequence holds only base64"))?;
        self.pos += 1;
        Ok(BareItem::ByteSeq(bytes))
    }

    fn boolean(&mut self) -> Result<BareItem> {
        self.pos += 1;
        let value = match self.peek() {
            Some(b'1') => true,
            Some(b'0') => false,
            _ => return Err(ParseError("a boolean is ?0 or ?1")),
        };
        self.pos += 1;
        Ok(BareItem::Boolean(value))
    }

    fn item(&mut self) -> Result<Item> {
        let value = self.bare_item()?;
        let params = self.params()?;
        Ok(Item { value, params })
    }

    fn member(&mut self) -> Result<Member> {
        if self.peek() == Some(b'(') {
            self.pos += 1;
            let mut items = Vec::new();
            loop {
                self.skip_sp();
                if self.peek() == Some(b')') {
                    self.pos += 1;
                    let params = self.params()?;
                    return Ok(Member::InnerList(items, params));
                }
                items.push(self.item()?);
                match self.peek() {
                    Some(b' ' | b')') => {}
                    _ => return Err(ParseError("inner list members are separated by spaces")),
                }
            }
        }
        Ok(Member::Item(self.item()?))
    }

    /// After a member: end of input, or a comma and another member.
    fn next_member(&mut self) -> Result<bool> {
        self.skip_ows();
        if self.done() {
            return Ok(false);
        }
        if self.peek() != Some(b',') {
            return Err(ParseError("members are separated by commas"));
        }
        self.pos += 1;
        self.skip_ows();
        if self.done() {
            return Err(ParseError("trailing comma"));
        }
        Ok(true)
    }
}

/// Parses a dictionary field value.
pub fn parse_dictionary(text: &str) -> Result<Dictionary> {
    let mut p = Parser::new(text);
    p.skip_sp();
    let mut dict: Dictionary = Vec::new();
    if p.done() {
        return Ok(dict);
    }
    loop {
        let key = p.key()?;
        let member = if p.peek() == Some(b'=') {
            p.pos += 1;
            p.member()?
        } else {
            Member::Item(Item { value: BareItem::Boolean(true), params: p.params()? })
        };
        if let Some(slot) = dict.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = member;
        } else {
            dict.push((key, member));
        }
        if !p.next_member()? {
            return Ok(dict);
        }
    }
}

/// Parses a list field value.
pub fn parse_list(text: &str) -> Result<Vec<Member>> {
    let mut p = Parser::new(text);
    p.skip_sp();
    let mut list = Vec::new();
    if p.done() {
        return Ok(list);
    }
    loop {
        list.push(p.member()?);
        if !p.next_member()? {
            return Ok(list);
        }
    }
}

/// Parses an item field value.
pub fn parse_item(text: &str) -> Result<Item> {
    let mut p = Parser::new(text);
    p.skip_sp();
    let item = p.item()?;
    p.skip_sp();
    if !p.done() {
        return Err(ParseError("trailing characters after the item"));
    }
    Ok(item)
}

/// Canonical serialization of a bare item.
pub fn serialize_bare(item: &BareItem, out: &mut String) {
    match item {
        BareItem::Integer(n) => out.push_str(&n.to_string()),
        BareItem::Decimal(t) => {
            let sign = if *t < 0 { "-" } else { "" };
            let abs = t.unsigned_abs();
            let (int, frac) = (abs / 1000, abs % 1000);
            let mut frac = format!("{frac:03}");
            while frac.len() > 1 && frac.ends_with('0') {
                frac.pop();
            }
            out.push_str(&format!("{sign}{int}.{frac}"));
        }
        BareItem::String(s) => {
            out.push('"');
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        BareItem::Token(t) => out.push_str(t),
        BareItem::ByteSeq(b) => {
            out.push(':');
            out.push_str(&STANDARD.encode(b));
            out.push(':');
        }
        BareItem::Boolean(b) => out.push_str(if *b { "?1" } else { "?0" }),
    }
}

/// Canonical serialization of parameters.
pub fn serialize_params(params: &Params, out: &mut String) {
    for (key, value) in params {
        out.push(';');
        out.push_str(key);
        if *value != BareItem::Boolean(true) {
            out.push('=');
            serialize_bare(value, out);
        }
    }
}

/// Canonical serialization of an item.
pub fn serialize_item(item: &Item, out: &mut String) {
    serialize_bare(&item.value, out);
    serialize_params(&item.params, out);
}

/// Canonical serialization of a list member or dictionary value.
pub fn serialize_member(member: &Member, out: &mut String) {
    match member {
        Member::Item(item) => serialize_item(item, out),
        Member::InnerList(items, params) => {
            out.push('(');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                serialize_item(item, out);
            }
            out.push(')');
            serialize_params(params, out);
        }
    }
}

/// Canonical serialization of a dictionary.
pub fn serialize_dictionary(dict: &Dictionary) -> String {
    let mut out = String::new();
    for (i, (key, member)) in dict.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(key);
        match member {
            Member::Item(Item { value: BareItem::Boolean(true), params }) => {
                serialize_params(params, &mut out)
            }
            other => {
                out.push('=');
                serialize_member(other, &mut out);
            }
        }
    }
    out
}

/// Canonical serialization of a list.
pub fn serialize_list(list: &[Member]) -> String {
    let mut out = String::new();
    for (i, member) in list.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        serialize_member(member, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_with_inner_list_and_params_round_trips() {
        let text = r#"sig-b22=("@authority" "content-digest" "@query-param";name="Pet");created=1618884473;keyid="test-key-rsa-pss";tag="header-example""#;
        let dict = parse_dictionary(text).unwrap();
        assert_eq!(dict.len(), 1);
        assert_eq!(serialize_dictionary(&dict), text);
    }

    #[test]
    fn byte_sequences_integers_decimals_and_booleans_parse() {
        let dict = parse_dictionary("a=:AQID:, b=-42, c=1.50, d, e=?0, f=tok/en").unwrap();
        assert_eq!(dict[0].1, Member::Item(Item { value: BareItem::ByteSeq(vec![1, 2, 3]), params: vec![] }));
        assert_eq!(dict[1].1, Member::Item(Item { value: BareItem::Integer(-42), params: vec![] }));
        assert_eq!(serialize_dictionary(&dict), "a=:AQID:, b=-42, c=1.5, d, e=?0, f=tok/en");
    }

    #[test]
    fn malformed_fields_are_rejected() {
        for bad in ["A=1", "a=1,", "a=(1 2", "a=\"x", "a=:!!:", "a=1 b=2", "a=1234567890123456", "a=?2"] {
            assert!(parse_dictionary(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn whitespace_between_members_is_normalized() {
        let dict = parse_dictionary("a=1 ,\tb=2").unwrap();
        assert_eq!(serialize_dictionary(&dict), "a=1, b=2");
    }

    #[test]
    fn lists_and_items_parse() {
        assert_eq!(serialize_list(&parse_list("1, (a b);x, \"s\"").unwrap()), "1, (a b);x, \"s\"");
        assert!(parse_item("1 2").is_err());
        assert_eq!(parse_item(" \"a\\\"b\" ").unwrap().value, BareItem::String("a\"b".into()));
    }
}
