//! Header operations over a header list, recording the host calls that reproduce them.

use super::Op;
use super::request::{Captures, Request};
use super::template::Template;

/// One change to a header map, in order. Applying the edits in order to the proxy's map gives
/// the same result as [`Headers`] holds. Values are bytes: a header that is not UTF-8 keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Replace every value with this one.
    Set(String, Vec<u8>),
    /// Add a value, keeping the others.
    Add(String, Vec<u8>),
    /// Remove every value.
    Remove(String),
}

/// A header list being transformed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, Vec<u8>)>,
    edits: Vec<HeaderEdit>,
}

impl Headers {
    /// Lower-cases the names.
    pub fn new(entries: Vec<(String, Vec<u8>)>) -> Self {
        let entries = entries.into_iter().map(|(n, v)| (n.to_ascii_lowercase(), v)).collect();
        Self { entries, edits: Vec::new() }
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    pub fn get_all(&self, name: &str) -> Vec<&[u8]> {
        self.entries.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_slice()).collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn set(&mut self, name: &str, value: &[u8]) {
        self.entries.retain(|(n, _)| n != name);
        self.entries.push((name.to_owned(), value.to_vec()));
        self.edits.push(HeaderEdit::Set(name.to_owned(), value.to_vec()));
    }

    pub fn add(&mut self, name: &str, value: &[u8]) {
        self.entries.push((name.to_owned(), value.to_vec()));
        self.edits.push(HeaderEdit::Add(name.to_owned(), value.to_vec()));
    }

    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(n, _)| n != name);
        self.edits.push(HeaderEdit::Remove(name.to_owned()));
    }

    /// The edits so far, in order.
    pub fn edits(&self) -> &[HeaderEdit] {
        &self.edits
    }

    pub fn into_edits(self) -> Vec<HeaderEdit> {
        self.edits
    }
}

/// Whether `value` may be sent as a header value (RFC 9110 §5.5: visible characters, obs-text,
/// space and tab). A line break or NUL would smuggle a header in (Envoy stores such a value as
/// empty), any other control byte makes the upstream refuse the request.
pub fn valid_field_value(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Applies one operation. `Err` (with the reason) when a template rendered a value that cannot
/// be a header; a template without a value skips the operation (`Ok(false)`).
pub fn apply(
    headers: &mut Headers,
    op: &Op<String, Template>,
    req: &Request,
    captures: &Captures,
) -> Result<bool, String> {
    let render = |t: &Template| -> Result<Option<Vec<u8>>, String> {
        match t.render(req, captures) {
            Some(v) if !valid_field_value(&v) => Err(format!(
                "header value `{}` has a control byte (line break, NUL or other)",
                super::shown(&v)
            )),
            other => Ok(other),
        }
    };
    match op {
        Op::Remove(name) => {
            if !headers.has(name) {
                return Ok(false);
            }
            headers.remove(name);
        }
        Op::Rename(from, to) => {
            let values: Vec<Vec<u8>> = headers.get_all(from).into_iter().map(<[u8]>::to_vec).collect();
            if values.is_empty() {
                return Ok(false);
            }
            headers.remove(from);
            headers.remove(to);
            for v in values {
                headers.add(to, &v);
            }
        }
        Op::Replace(name, t) => {
            if !headers.has(name) {
                return Ok(false);
            }
            let Some(v) = render(t)? else { return Ok(false) };
            headers.set(name, &v);
        }
        Op::Add(name, t) => {
            if headers.has(name) {
                return Ok(false);
            }
            let Some(v) = render(t)? else { return Ok(false) };
            headers.set(name, &v);
        }
        Op::Append(name, t) => {
            let Some(v) = render(t)? else { return Ok(false) };
            headers.add(name, &v);
        }
        Op::Set(name, t) => {
            let Some(v) = render(t)? else { return Ok(false) };
            headers.set(name, &v);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Template {
        Template::parse(s).unwrap()
    }

    fn run(headers: &mut Headers, op: Op<String, Template>) -> Result<bool, String> {
        let req = Request::from_headers(vec![("x-from".into(), "client".into())]);
        apply(headers, &op, &req, &Captures::default())
    }

    fn start() -> Headers {
        Headers::new(vec![("X-A".into(), "1".into()), ("x-b".into(), "2".into()), ("x-b".into(), "3".into())])
    }

    #[test]
    fn remove_and_rename() {
        let mut h = start();
        assert_eq!(run(&mut h, Op::Remove("x-a".into())), Ok(true));
        assert_eq!(run(&mut h, Op::Remove("x-a".into())), Ok(false));
        assert_eq!(h.get("x-a"), None);
        assert_eq!(run(&mut h, Op::Rename("x-b".into(), "x-c".into())), Ok(true));
        assert_eq!(h.get_all("x-c"), vec![b"2", b"3"]);
        assert!(!h.has("x-b"));
        assert_eq!(run(&mut h, Op::Rename("x-none".into(), "x-d".into())), Ok(false));
        assert_eq!(
            h.edits(),
            &[
                HeaderEdit::Remove("x-a".into()),
                HeaderEdit::Remove("x-b".into()),
                HeaderEdit::Remove("x-c".into()),
                HeaderEdit::Add("x-c".into(), b"2".to_vec()),
                HeaderEdit::Add("x-c".into(), b"3".to_vec()),
            ]
        );
    }

    #[test]
    fn replace_only_if_present_add_only_if_absent() {
        let mut h = start();
        assert_eq!(run(&mut h, Op::Replace("x-a".into(), t("new"))), Ok(true));
        assert_eq!(run(&mut h, Op::Replace("x-z".into(), t("new"))), Ok(false));
        assert_eq!(h.get("x-a"), Some(&b"new"[..]));
        assert!(!h.has("x-z"));
        assert_eq!(run(&mut h, Op::Add("x-a".into(), t("other"))), Ok(false));
        assert_eq!(run(&mut h, Op::Add("x-z".into(), t("z"))), Ok(true));
        assert_eq!((h.get("x-a"), h.get("x-z")), (Some(&b"new"[..]), Some(&b"z"[..])));
    }

    #[test]
    fn append_keeps_values_set_replaces_them() {
        let mut h = start();
        run(&mut h, Op::Append("x-b".into(), t("4"))).unwrap();
        assert_eq!(h.get_all("x-b"), vec![&b"2"[..], b"3", b"4"]);
        run(&mut h, Op::Set("x-b".into(), t("only"))).unwrap();
        assert_eq!(h.get_all("x-b"), vec![b"only"]);
        run(&mut h, Op::Set("x-new".into(), t("{header.x-from}"))).unwrap();
        assert_eq!(h.get("x-new"), Some(&b"client"[..]));
    }

    #[test]
    fn missing_template_value_skips_and_line_breaks_are_refused() {
        let mut h = start();
        assert_eq!(run(&mut h, Op::Set("x-id".into(), t("{header.absent}"))), Ok(false));
        assert!(!h.has("x-id"));
        for evil in [&b"a\r\nx-injected: 1"[..], b"a\nb", b"a\0b", b"a\x01b", b"a\x1bb", b"a\x7fb"] {
            let req = Request::from_headers(vec![("x-evil".into(), evil.to_vec())]);
            let op = Op::Set("x-id".into(), t("{header.x-evil}"));
            let e = apply(&mut h, &op, &req, &Captures::default()).unwrap_err();
            assert!(e.contains("control byte"), "{e}");
            assert!(!e.bytes().any(|b| b < 0x20), "the reason is safe to log: {e:?}");
            assert!(!h.has("x-id"));
        }
        // Tabs, spaces and bytes that are not UTF-8 are field values.
        let req = Request::from_headers(vec![("x-ok".into(), b"a\tb c\xff".to_vec())]);
        let op = Op::Set("x-id".into(), t("{header.x-ok}"));
        assert_eq!(apply(&mut h, &op, &req, &Captures::default()), Ok(true));
        assert_eq!(h.get("x-id"), Some(&b"a\tb c\xff"[..]));
    }

    #[test]
    fn rename_keeps_bytes_that_are_not_utf8() {
        let mut h = Headers::new(vec![("x-raw".into(), b"\xff\xfe".to_vec())]);
        assert_eq!(run(&mut h, Op::Rename("x-raw".into(), "x-moved".into())), Ok(true));
        assert_eq!(h.get("x-moved"), Some(&b"\xff\xfe"[..]));
        assert_eq!(h.edits().last(), Some(&HeaderEdit::Add("x-moved".into(), b"\xff\xfe".to_vec())));
    }
}
