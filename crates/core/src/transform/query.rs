//! Query-string operations. Names are compared percent-decoded; untouched pairs keep their
//! original encoding; new values are percent-encoded.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};

use super::Op;
use super::request::{Captures, Request};
use super::template::Template;

// `%XX` and `+` decoded to bytes; a broken escape decodes to nothing (and matches no name).
use crate::route::strict_form_decode as decode;

/// A query string as `(raw name, raw value)` pairs; a pair without `=` has value `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, Option<String>)>,
}

impl Query {
    pub fn parse(query: &str) -> Self {
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (p.to_owned(), None),
            })
            .collect();
        Self { pairs }
    }

    pub fn to_query_string(&self) -> String {
        self.pairs
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    fn is(raw: &str, name: &str) -> bool {
        decode(raw).as_deref() == Some(name.as_bytes())
    }

    pub fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(k, _)| Self::is(k, name))
    }

    fn remove(&mut self, name: &str) {
        self.pairs.retain(|(k, _)| !Self::is(k, name));
    }

    fn add(&mut self, name: &str, value: &[u8]) {
        self.pairs.push((encode(name.as_bytes()), Some(encode(value))));
    }

    /// Replaces the first value and drops the others, keeping the position.
    fn set(&mut self, name: &str, value: &[u8]) {
        match self.pairs.iter().position(|(k, _)| Self::is(k, name)) {
            Some(i) => {
                self.remove_after(name, i);
                if let Some(pair) = self.pairs.get_mut(i) {
                    pair.1 = Some(encode(value));
                }
            }
            None => self.add(name, value),
        }
    }

    fn remove_after(&mut self, name: &str, keep: usize) {
        let mut i = 0;
        self.pairs.retain(|(k, _)| {
            let drop = i > keep && Self::is(k, name);
            i += 1;
            !drop
        });
    }
}

/// The first value of `name` in a raw query string, decoded to the bytes it stands for.
pub fn first_value(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(k).as_deref() == Some(name.as_bytes()) { decode(v) } else { None }
    })
}

/// Applies one operation; `Ok(false)` when it did not apply (absent, present, no value).
pub fn apply(query: &mut Query, op: &Op<String, Template>, req: &Request, captures: &Captures) -> bool {
    match op {
        Op::Remove(name) => {
            if !query.has(name) {
                return false;
            }
            query.remove(name);
        }
        Op::Rename(from, to) => {
            if !query.has(from) {
                return false;
            }
            query.remove(to);
            let new = encode(to.as_bytes());
            for (k, _) in query.pairs.iter_mut().filter(|(k, _)| Query::is(k, from)) {
                *k = new.clone();
            }
        }
        Op::Replace(name, t) => {
            if !query.has(name) {
                return false;
            }
            let Some(v) = t.render(req, captures) else { return false };
            query.set(name, &v);
        }
        Op::Add(name, t) => {
            if query.has(name) {
                return false;
            }
            let Some(v) = t.render(req, captures) else { return false };
            query.add(name, &v);
        }
        Op::Append(name, t) => {
            let Some(v) = t.render(req, captures) else { return false };
            query.add(name, &v);
        }
        Op::Set(name, t) => {
            let Some(v) = t.render(req, captures) else { return false };
            query.set(name, &v);
        }
    }
    true
}

/// Everything but RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const RESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode(text: &[u8]) -> String {
    percent_encode(text, RESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Template {
        Template::parse(s).unwrap()
    }

    fn run(q: &str, ops: Vec<Op<String, Template>>) -> (String, Vec<bool>) {
        let req = Request::from_headers(vec![(":path".into(), "/p?user=a%20b".into())]);
        let mut query = Query::parse(q);
        let applied = ops.iter().map(|op| apply(&mut query, op, &req, &Captures::default())).collect();
        (query.to_query_string(), applied)
    }

    #[test]
    fn every_operation() {
        assert_eq!(run("a=1&debug=1&b=2&debug", vec![Op::Remove("debug".into())]).0, "a=1&b=2");
        assert_eq!(run("old%5Fname=1&x=2", vec![Op::Rename("old_name".into(), "new".into())]).0, "new=1&x=2");
        assert_eq!(run("a=1&a=2&b=3", vec![Op::Replace("a".into(), t("9"))]).0, "a=9&b=3");
        assert_eq!(run("b=3", vec![Op::Replace("a".into(), t("9"))]), ("b=3".into(), vec![false]));
        assert_eq!(run("a=1", vec![Op::Add("a".into(), t("2")), Op::Add("c".into(), t("3"))]).0, "a=1&c=3");
        assert_eq!(run("a=1", vec![Op::Append("a".into(), t("2"))]).0, "a=1&a=2");
        assert_eq!(run("", vec![Op::Set("a".into(), t("x y&z"))]).0, "a=x%20y%26z");
        assert_eq!(run("a=1&b=2&a=3", vec![Op::Set("a".into(), t("v"))]).0, "a=v&b=2");
    }

    #[test]
    fn templates_read_the_original_query_and_missing_values_skip() {
        assert_eq!(run("", vec![Op::Set("who".into(), t("{query.user}"))]).0, "who=a%20b");
        assert_eq!(run("", vec![Op::Set("x".into(), t("{query.none}"))]), (String::new(), vec![false]));
    }

    #[test]
    fn rename_replaces_an_existing_target_and_bad_encoding_never_matches() {
        assert_eq!(run("to=0&from=1", vec![Op::Rename("from".into(), "to".into())]).0, "to=1");
        assert_eq!(run("%zz=1", vec![Op::Remove("%zz".into())]).0, "%zz=1");
        assert_eq!(encode("a/é".as_bytes()), "a%2F%C3%A9");
        assert_eq!(encode(b"\xff"), "%FF");
        assert_eq!(decode("a+b%2F"), Some(b"a b/".to_vec()));
        assert_eq!(first_value("x=%FF&y=1", "x"), Some(vec![0xff]), "bytes, not text");
        assert_eq!(first_value("%78=1", "x"), Some(b"1".to_vec()));
    }

    #[test]
    fn names_and_values_decode_plus_and_escapes_to_bytes() {
        assert_eq!(first_value("a+b=c+d", "a b"), Some(b"c d".to_vec()));
        assert_eq!(first_value("a%20b=1", "a b"), Some(b"1".to_vec()));
        assert_eq!(first_value("x=%2B%2b", "x"), Some(b"++".to_vec()));
        assert_eq!(first_value("x", "x"), Some(vec![]));
        assert_eq!(first_value("x=a=b", "x"), Some(b"a=b".to_vec()));
        assert_eq!(first_value("x=%C3&x=2", "x"), Some(vec![0xc3]), "bytes need not be UTF-8");
        assert_eq!(first_value("x=\u{e9}", "x"), Some("\u{e9}".as_bytes().to_vec()));
        assert_eq!(first_value("y=1", "x"), None);
    }

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        for b in 0..=255u8 {
            let unreserved = b.is_ascii_alphanumeric() || b"-._~".contains(&b);
            let want = if unreserved { char::from(b).to_string() } else { format!("%{b:02X}") };
            assert_eq!(encode(&[b]), want);
        }
        assert_eq!(encode(b"a b+c%/~*\xc3\xa9"), "a%20b%2Bc%25%2F~%2A%C3%A9");
        assert_eq!(encode(b""), "");
    }

    #[test]
    fn a_broken_escape_decodes_to_nothing() {
        for bad in [
            "%", "%4", "a%", "%zz", "%4g", "%g4", "%%41", "%41%", "% 1", "%+1", "%+f", "%-1", "%\u{e9}",
            "%4\u{e9}",
        ] {
            assert_eq!(decode(bad), None, "{bad}");
            assert_eq!(first_value(&format!("x={bad}"), "x"), None, "{bad}");
            // The pair is skipped: a later good value is the first value.
            assert_eq!(first_value(&format!("x={bad}&x=2"), "x"), Some(b"2".to_vec()), "{bad}");
            assert_eq!(first_value(&format!("{bad}=1"), bad), None, "{bad}");
            assert_eq!(
                run(&format!("{bad}=1"), vec![Op::Remove(bad.into())]),
                (format!("{bad}=1"), vec![false])
            );
        }
        assert_eq!(run("a+b=1&a%20b=2&ab=3", vec![Op::Remove("a b".into())]).0, "ab=3");
    }
}
