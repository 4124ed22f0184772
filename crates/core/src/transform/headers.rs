//! Header operations over a header list, recording the host calls that reproduce them.

use super::Op;
use super::request::{Captures, Request};
use super::template::Template;

/// One change to a header map, in order. Applying the edits in order to the proxy's map gives
/// the same result as [`Headers`] holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Replace every value with this one.
    Set(String, String),
    /// Add a value, keeping the others.
    Add(String, String),
    /// Remove every value.
    Remove(String),
}

/// A header list being transformed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
    edits: Vec<HeaderEdit>,
}

impl Headers {
    /// Lower-cases the names.
    pub fn new(entries: Vec<(String, String)>) -> Self {
        let entries = entries.into_iter().map(|(n, v)| (n.to_ascii_lowercase(), v)).collect();
        Self { entries, edits: Vec::new() }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.entries.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.entries.retain(|(n, _)| n != name);
        self.entries.push((name.to_owned(), value.to_owned()));
        self.edits.push(HeaderEdit::Set(name.to_owned(), value.to_owned()));
    }

    pub fn add(&mut self, name: &str, value: &str) {
        self.entries.push((name.to_owned(), value.to_owned()));
        self.edits.push(HeaderEdit::Add(name.to_owned(), value.to_owned()));
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

/// A header value must not smuggle a line break or NUL into the message.
fn safe_value(value: &str) -> bool {
    !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

/// Applies one operation. `Err` (with the reason) when a template rendered a value that cannot
/// be a header; a template without a value skips the operation (`Ok(false)`).
pub fn apply(
    headers: &mut Headers,
    op: &Op<String, Template>,
    req: &Request,
    captures: &Captures,
) -> Result<bool, &'static str> {
    let render = |t: &Template| -> Result<Option<String>, &'static str> {
        match t.render(req, captures) {
            Some(v) if !safe_value(&v) => Err("header value with a line break"),
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
            let values: Vec<String> = headers.get_all(from).into_iter().map(str::to_owned).collect();
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

    fn run(headers: &mut Headers, op: Op<String, Template>) -> Result<bool, &'static str> {
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
        assert_eq!(h.get_all("x-c"), vec!["2", "3"]);
        assert!(!h.has("x-b"));
        assert_eq!(run(&mut h, Op::Rename("x-none".into(), "x-d".into())), Ok(false));
        assert_eq!(
            h.edits(),
            &[
                HeaderEdit::Remove("x-a".into()),
                HeaderEdit::Remove("x-b".into()),
                HeaderEdit::Remove("x-c".into()),
                HeaderEdit::Add("x-c".into(), "2".into()),
                HeaderEdit::Add("x-c".into(), "3".into()),
            ]
        );
    }

    #[test]
    fn replace_only_if_present_add_only_if_absent() {
        let mut h = start();
        assert_eq!(run(&mut h, Op::Replace("x-a".into(), t("new"))), Ok(true));
        assert_eq!(run(&mut h, Op::Replace("x-z".into(), t("new"))), Ok(false));
        assert_eq!(h.get("x-a"), Some("new"));
        assert!(!h.has("x-z"));
        assert_eq!(run(&mut h, Op::Add("x-a".into(), t("other"))), Ok(false));
        assert_eq!(run(&mut h, Op::Add("x-z".into(), t("z"))), Ok(true));
        assert_eq!((h.get("x-a"), h.get("x-z")), (Some("new"), Some("z")));
    }

    #[test]
    fn append_keeps_values_set_replaces_them() {
        let mut h = start();
        run(&mut h, Op::Append("x-b".into(), t("4"))).unwrap();
        assert_eq!(h.get_all("x-b"), vec!["2", "3", "4"]);
        run(&mut h, Op::Set("x-b".into(), t("only"))).unwrap();
        assert_eq!(h.get_all("x-b"), vec!["only"]);
        run(&mut h, Op::Set("x-new".into(), t("{header.x-from}"))).unwrap();
        assert_eq!(h.get("x-new"), Some("client"));
    }

    #[test]
    fn missing_template_value_skips_and_line_breaks_are_refused() {
        let mut h = start();
        assert_eq!(run(&mut h, Op::Set("x-id".into(), t("{header.absent}"))), Ok(false));
        assert!(!h.has("x-id"));
        let req = Request::from_headers(vec![("x-evil".into(), "a\r\nx-injected: 1".into())]);
        let op = Op::Set("x-id".into(), t("{header.x-evil}"));
        assert!(apply(&mut h, &op, &req, &Captures::default()).is_err());
        assert!(!h.has("x-id"));
    }
}
