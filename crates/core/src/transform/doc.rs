//! JSON bodies edited in place.
//!
//! A body is checked against RFC 8259 once, without building a tree: any nesting depth, any
//! number (`1e400`, `18446744073709551617`), any escape (a lone surrogate `"\ud800"`) is accepted,
//! as JSON allows. Only the containers on the path of an operation are then opened, one level at
//! a time; everything else stays the bytes it was. Writing the document back copies every
//! untouched value, key and run of whitespace byte for byte: only what an operation changed
//! differs (a removed field leaves with the whitespace before it).
//!
//! An object that names a field twice is ambiguous (parsers disagree on which one counts). When
//! an operation's path goes through such a field, the earlier copies are dropped and the last one
//! kept, as most parsers read it, so whatever the upstream's parser does it sees what the
//! operation saw.

/// Why a body is not one JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotJson {
    /// Byte offset of the problem.
    pub offset: usize,
    pub reason: &'static str,
}

impl std::fmt::Display for NotJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.offset)
    }
}

use std::rc::Rc;

const BOM: &[u8] = b"\xef\xbb\xbf";

/// Checks that `text` is exactly one JSON value (RFC 8259) with optional whitespace around it
/// (and an optional leading byte order mark, which RFC 8259 lets a parser ignore). Iterative: the
/// depth of nesting is limited by nothing but the size. Returns where the value is.
pub fn validate(text: &[u8]) -> Result<std::ops::Range<usize>, NotJson> {
    if let Err(e) = std::str::from_utf8(text) {
        return Err(NotJson { offset: e.valid_up_to(), reason: "bytes that are not UTF-8" });
    }
    let mut s = Scanner { s: text, i: if text.starts_with(BOM) { BOM.len() } else { 0 } };
    s.ws();
    let start = s.i;
    s.value()?;
    let end = s.i;
    s.ws();
    if s.i != text.len() {
        return Err(s.fail("text after the JSON value"));
    }
    Ok(start..end)
}

/// Whether `text` is one JSON number (`-`, no leading zeros, no `+`, no `.5`, no `NaN`).
pub fn is_number(text: &[u8]) -> bool {
    let mut s = Scanner { s: text, i: 0 };
    text.first().is_some_and(|b| *b == b'-' || b.is_ascii_digit()) && s.number().is_ok() && s.i == text.len()
}

/// A validated JSON value's text, ready to be written into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(Vec<u8>);

impl JsonText {
    /// `text` if it is one JSON value (whitespace around it is dropped).
    pub fn parse(text: &[u8]) -> Result<Self, NotJson> {
        let range = validate(text)?;
        Ok(Self(text.get(range).unwrap_or_default().to_vec()))
    }

    /// `text` if it is one JSON number, kept digit for digit.
    pub fn number(text: &[u8]) -> Option<Self> {
        is_number(text).then(|| Self(text.to_vec()))
    }

    /// A JSON string holding `text`.
    pub fn string(text: &str) -> Self {
        Self(serde_json::Value::from(text).to_string().into_bytes())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<bool> for JsonText {
    fn from(b: bool) -> Self {
        Self(if b { b"true".to_vec() } else { b"false".to_vec() })
    }
}

struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn fail(&self, reason: &'static str) -> NotJson {
        NotJson { offset: self.i, reason }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, b: u8, reason: &'static str) -> Result<(), NotJson> {
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.fail(reason))
        }
    }

    /// One value; containers are followed with an explicit stack, never by recursion.
    fn value(&mut self) -> Result<(), NotJson> {
        let mut open: Vec<u8> = Vec::new();
        'value: loop {
            self.ws();
            match self.peek() {
                Some(b'{') => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                    } else {
                        open.push(b'}');
                        self.member_key()?;
                        continue 'value;
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                    } else {
                        open.push(b']');
                        continue 'value;
                    }
                }
                Some(b'"') => self.string()?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.word(b"true")?,
                Some(b'f') => self.word(b"false")?,
                Some(b'n') => self.word(b"null")?,
                _ => return Err(self.fail("expected a value")),
            }
            // A value is complete: close containers until one wants another value.
            loop {
                let Some(&close) = open.last() else { return Ok(()) };
                self.ws();
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        if close == b'}' {
                            self.ws();
                            self.member_key()?;
                        }
                        continue 'value;
                    }
                    Some(b) if b == close => {
                        self.i += 1;
                        open.pop();
                    }
                    _ => return Err(self.fail("expected `,` or the end of the container")),
                }
            }
        }
    }

    /// `"key" :` (the value comes next).
    fn member_key(&mut self) -> Result<(), NotJson> {
        if self.peek() != Some(b'"') {
            return Err(self.fail("expected a field name"));
        }
        self.string()?;
        self.ws();
        self.expect(b':', "expected `:`")
    }

    fn word(&mut self, word: &[u8]) -> Result<(), NotJson> {
        if self.s.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.fail("expected a value"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<(), NotJson> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.fail("bad number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.fail("bad number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.fail("bad number"));
            }
        }
        Ok(())
    }

    /// A string; the text is known to be UTF-8, so only escapes and control bytes are checked.
    fn string(&mut self) -> Result<(), NotJson> {
        self.expect(b'"', "expected a string")?;
        loop {
            match self.peek() {
                None => return Err(self.fail("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            let hex = self.s.get(self.i + 1..self.i + 5).unwrap_or_default();
                            if hex.len() != 4 || !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(self.fail("bad \\u escape"));
                            }
                            self.i += 5;
                        }
                        _ => return Err(self.fail("bad escape")),
                    }
                }
                Some(0..=0x1f) => return Err(self.fail("control byte in a string")),
                Some(_) => self.i += 1,
            }
        }
    }
}

/// Where a piece of text lives: `text` indexes the document's texts (0 is the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    text: usize,
    start: usize,
    end: usize,
}

/// Text around and between values: a span of a text, or fixed text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Span(Span),
    Lit(&'static str),
}

#[derive(Debug, Clone)]
enum Node {
    /// A value as written (in the body, or by an operation), not opened.
    Raw(Span),
    Object(Vec<Member>, Piece),
    Array(Vec<Item>, Piece),
}

/// `lead "key" mid value tail` between the object's `{`, `,` and `}`.
#[derive(Debug, Clone)]
struct Member {
    lead: Piece,
    key: Piece,
    /// The decoded name (UTF-8; a lone surrogate escape is kept as its WTF-8 bytes, which no
    /// path segment can equal).
    name: Vec<u8>,
    mid: Piece,
    value: Node,
    tail: Piece,
}

#[derive(Debug, Clone)]
struct Item {
    lead: Piece,
    value: Node,
    tail: Piece,
}

/// What a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    /// A string, number, boolean or null.
    Scalar,
}

/// A JSON body being edited. See the module documentation.
#[derive(Debug, Clone)]
pub struct Doc {
    /// Text 0 is the body; operations add the values they write. Shared, so that a copy of the
    /// document (to undo a rename that cannot finish) copies only what was opened.
    texts: Vec<Rc<[u8]>>,
    before: Piece,
    root: Node,
    after: Piece,
    changed: bool,
}

impl Doc {
    /// Checks the body and keeps it; nothing is opened yet.
    pub fn parse(body: Vec<u8>) -> Result<Self, NotJson> {
        let value = validate(&body)?;
        let span = |start, end| Piece::Span(Span { text: 0, start, end });
        let (before, after) = (span(0, value.start), span(value.end, body.len()));
        let root = Node::Raw(Span { text: 0, start: value.start, end: value.end });
        Ok(Self { texts: vec![Rc::from(body)], before, root, after, changed: false })
    }

    /// Whether an operation changed anything (a dropped duplicate field counts).
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// The document's text.
    pub fn to_bytes(&self) -> Vec<u8> {
        let texts = &self.texts;
        let mut out = Vec::with_capacity(texts.first().map_or(0, |t| t.len()));
        piece(texts, self.before, &mut out);
        emit(texts, &self.root, &mut out);
        piece(texts, self.after, &mut out);
        out
    }

    /// The text of the value at `path`, as written.
    pub fn text_at(&mut self, path: &[String]) -> Option<Vec<u8>> {
        let texts = &self.texts;
        let node = walk(texts, &mut self.root, path, &mut self.changed)?;
        let mut out = Vec::new();
        emit(texts, node, &mut out);
        Some(out)
    }

    fn add_text(&mut self, text: &[u8]) -> Span {
        let end = text.len();
        self.texts.push(Rc::from(text));
        Span { text: self.texts.len() - 1, start: 0, end }
    }

    /// The kind of the value at `path`, if there is one.
    pub fn kind_at(&mut self, path: &[String]) -> Option<Kind> {
        let texts = &self.texts;
        let mut changed = false;
        let node = walk(texts, &mut self.root, path, &mut changed);
        let kind = node.map(|n| kind_of(texts, n));
        self.changed |= changed;
        kind
    }

    /// Removes the value at `path`; whether it was there.
    pub fn remove(&mut self, path: &[String]) -> bool {
        self.take(path).is_some()
    }

    fn take(&mut self, path: &[String]) -> Option<Node> {
        let (last, parents) = path.split_last()?;
        let texts = &self.texts;
        let mut changed = false;
        let parent = walk(texts, &mut self.root, parents, &mut changed);
        let removed = parent.and_then(|p| {
            open(texts, p);
            match p {
                Node::Object(members, _) => {
                    let i = member_index(members, last.as_bytes(), &mut changed)?;
                    Some(members.remove(i).value)
                }
                Node::Array(items, _) => {
                    let i = index(last).filter(|i| *i < items.len())?;
                    Some(items.remove(i).value)
                }
                Node::Raw(_) => None,
            }
        });
        self.changed |= changed || removed.is_some();
        removed
    }

    /// Writes `value` at `path`, creating missing parent objects. A parent that is not an
    /// object or array, or an index past the end of an array, is an error and changes nothing.
    pub fn set(&mut self, path: &[String], value: &JsonText) -> Result<(), String> {
        self.check_put(path)?;
        let span = self.add_text(value.as_bytes());
        self.put(path, Node::Raw(span));
        Ok(())
    }

    /// Whether [`Doc::put`] can write at `path` (opening what it walks through).
    fn check_put(&mut self, path: &[String]) -> Result<(), String> {
        let Some((last, parents)) = path.split_last() else {
            return Err("empty path".to_owned());
        };
        let texts = &self.texts;
        let mut node = &mut self.root;
        for seg in parents {
            open(texts, node);
            node = match node {
                Node::Object(members, _) => match member_index(members, seg.as_bytes(), &mut self.changed) {
                    Some(i) => match members.get_mut(i) {
                        Some(m) => &mut m.value,
                        None => return Ok(()),
                    },
                    // The rest of the way is created.
                    None => return Ok(()),
                },
                Node::Array(items, _) => {
                    let len = items.len();
                    let i = index(seg).filter(|i| *i < len).ok_or_else(|| no_index(seg, len))?;
                    match items.get_mut(i) {
                        Some(item) => &mut item.value,
                        None => return Err(no_index(seg, len)),
                    }
                }
                Node::Raw(_) => return Err(under_scalar(seg)),
            };
        }
        open(texts, node);
        match node {
            Node::Object(..) => Ok(()),
            Node::Array(items, _) => match index(last) {
                _ if last == "-" => Ok(()),
                Some(i) if i <= items.len() => Ok(()),
                _ => Err(no_index(last, items.len())),
            },
            Node::Raw(_) => Err(under_scalar(last)),
        }
    }

    /// Writes `value` at `path`; [`Doc::check_put`] said it can.
    fn put(&mut self, path: &[String], value: Node) {
        let Some((last, parents)) = path.split_last() else { return };
        let keys: Vec<Span> =
            path.iter().map(|seg| self.add_text(JsonText::string(seg).as_bytes())).collect();
        let texts = &self.texts;
        let changed = &mut self.changed;
        *changed = true;
        let mut node = &mut self.root;
        for (seg, key) in parents.iter().zip(&keys) {
            open(texts, node);
            node = match node {
                Node::Object(members, _) => {
                    let i = match member_index(members, seg.as_bytes(), changed) {
                        Some(i) => i,
                        None => {
                            push_member(members, seg, *key, Node::Object(Vec::new(), Piece::Lit("")));
                            members.len() - 1
                        }
                    };
                    match members.get_mut(i) {
                        Some(m) => &mut m.value,
                        None => return,
                    }
                }
                Node::Array(items, _) => match index(seg).and_then(|i| items.get_mut(i)) {
                    Some(item) => &mut item.value,
                    None => return,
                },
                Node::Raw(_) => return,
            };
        }
        open(texts, node);
        match node {
            Node::Object(members, _) => match member_index(members, last.as_bytes(), changed) {
                Some(i) => {
                    if let Some(m) = members.get_mut(i) {
                        m.value = value;
                    }
                }
                None => {
                    if let Some(key) = keys.last() {
                        push_member(members, last, *key, value);
                    }
                }
            },
            Node::Array(items, _) => match index(last).filter(|_| last != "-") {
                Some(i) if i < items.len() => {
                    if let Some(item) = items.get_mut(i) {
                        item.value = value;
                    }
                }
                _ => push_item(items, value),
            },
            Node::Raw(_) => {}
        }
    }

    /// Moves the value at `from` to `to` (replacing what is there). `Ok(false)` if `from` is
    /// absent; an error leaves the document as it was.
    pub fn rename(&mut self, from: &[String], to: &[String]) -> Result<bool, String> {
        if self.kind_at(from).is_none() {
            return Ok(false);
        }
        let mut probe = self.clone();
        let Some(value) = probe.take(from) else { return Ok(false) };
        probe.check_put(to)?;
        probe.put(to, value);
        *self = probe;
        Ok(true)
    }

    /// Adds `value` to the array at `path`: a missing field becomes `[value]`, a value that is
    /// not an array `[old, value]`.
    pub fn append(&mut self, path: &[String], value: &JsonText) -> Result<(), String> {
        let span = self.add_text(value.as_bytes());
        let texts = &self.texts;
        let mut changed = false;
        let done = match walk(texts, &mut self.root, path, &mut changed) {
            Some(node) => {
                open(texts, node);
                match node {
                    Node::Array(items, _) => push_item(items, Node::Raw(span)),
                    other => {
                        let old = std::mem::replace(other, Node::Array(Vec::new(), Piece::Lit("")));
                        if let Node::Array(items, _) = other {
                            push_item(items, old);
                            push_item(items, Node::Raw(span));
                        }
                    }
                }
                true
            }
            None => false,
        };
        self.changed |= changed;
        if done {
            self.changed = true;
            return Ok(());
        }
        self.check_put(path)?;
        let item = Item { lead: Piece::Lit(""), value: Node::Raw(span), tail: Piece::Lit("") };
        self.put(path, Node::Array(vec![item], Piece::Lit("")));
        Ok(())
    }
}

fn bytes(texts: &[Rc<[u8]>], span: Span) -> &[u8] {
    texts.get(span.text).and_then(|t| t.get(span.start..span.end)).unwrap_or_default()
}

fn piece(texts: &[Rc<[u8]>], piece: Piece, out: &mut Vec<u8>) {
    match piece {
        Piece::Lit(s) => out.extend_from_slice(s.as_bytes()),
        Piece::Span(span) => out.extend_from_slice(bytes(texts, span)),
    }
}

/// Writes a value. Recursion goes only as deep as containers were opened, which the operations'
/// paths bound.
fn emit(texts: &[Rc<[u8]>], node: &Node, out: &mut Vec<u8>) {
    match node {
        Node::Raw(span) => out.extend_from_slice(bytes(texts, *span)),
        Node::Object(members, inner) => {
            out.push(b'{');
            if members.is_empty() {
                piece(texts, *inner, out);
            }
            for (i, m) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                piece(texts, m.lead, out);
                piece(texts, m.key, out);
                piece(texts, m.mid, out);
                emit(texts, &m.value, out);
                piece(texts, m.tail, out);
            }
            out.push(b'}');
        }
        Node::Array(items, inner) => {
            out.push(b'[');
            if items.is_empty() {
                piece(texts, *inner, out);
            }
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                piece(texts, item.lead, out);
                emit(texts, &item.value, out);
                piece(texts, item.tail, out);
            }
            out.push(b']');
        }
    }
}

/// Follows `path` from `node`, opening containers; `None` when a step is missing.
fn walk<'n>(
    texts: &[Rc<[u8]>],
    mut node: &'n mut Node,
    path: &[String],
    changed: &mut bool,
) -> Option<&'n mut Node> {
    for seg in path {
        open(texts, node);
        node = match node {
            Node::Object(members, _) => {
                let i = member_index(members, seg.as_bytes(), changed)?;
                &mut members.get_mut(i)?.value
            }
            Node::Array(items, _) => {
                let i = index(seg)?;
                &mut items.get_mut(i)?.value
            }
            Node::Raw(_) => return None,
        };
    }
    Some(node)
}

fn kind_of(texts: &[Rc<[u8]>], node: &Node) -> Kind {
    match node {
        Node::Object(..) => Kind::Object,
        Node::Array(..) => Kind::Array,
        Node::Raw(span) => match texts.get(span.text).and_then(|t| t.get(span.start)) {
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            _ => Kind::Scalar,
        },
    }
}

/// The one member named `name`: when several are, the earlier ones are dropped (see the module
/// documentation).
fn member_index(members: &mut Vec<Member>, name: &[u8], changed: &mut bool) -> Option<usize> {
    let count = members.iter().filter(|m| m.name == name).count();
    if count > 1 {
        let mut seen = 0;
        members.retain(|m| {
            if m.name != name {
                return true;
            }
            seen += 1;
            seen == count
        });
        *changed = true;
    }
    members.iter().position(|m| m.name == name)
}

/// A new last member, laid out like the one before it (which hands it the whitespace before `}`).
fn push_member(members: &mut Vec<Member>, name: &str, key: Span, value: Node) {
    let (lead, mid, tail) = match members.last_mut() {
        Some(prev) => (prev.lead, prev.mid, std::mem::replace(&mut prev.tail, Piece::Lit(""))),
        None => (Piece::Lit(""), Piece::Lit(":"), Piece::Lit("")),
    };
    members.push(Member { lead, key: Piece::Span(key), name: name.as_bytes().to_vec(), mid, value, tail });
}

fn push_item(items: &mut Vec<Item>, value: Node) {
    let (lead, tail) = match items.last_mut() {
        Some(prev) => (prev.lead, std::mem::replace(&mut prev.tail, Piece::Lit(""))),
        None => (Piece::Lit(""), Piece::Lit("")),
    };
    items.push(Item { lead, value, tail });
}

/// Opens a container written as text into its members or items, one level.
fn open(texts: &[Rc<[u8]>], node: &mut Node) {
    let Node::Raw(span) = *node else { return };
    let Some(text) = texts.get(span.text) else { return };
    let at = |start, end| Piece::Span(Span { text: span.text, start, end });
    let mut s = Scanner { s: text.get(..span.end).unwrap_or_default(), i: span.start };
    match s.peek() {
        Some(b'{') => {
            s.i += 1;
            let mut members = Vec::new();
            let mut inner = Piece::Lit("");
            loop {
                let lead_start = s.i;
                s.ws();
                if s.peek() == Some(b'}') {
                    if members.is_empty() {
                        inner = at(lead_start, s.i);
                    }
                    break;
                }
                let key_start = s.i;
                if s.string().is_err() {
                    return;
                }
                let key_end = s.i;
                s.ws();
                s.i += 1; // `:`
                s.ws();
                let value_start = s.i;
                let value_end = skip_value(&mut s);
                s.ws();
                let name = decode_string(text.get(key_start..key_end).unwrap_or_default());
                members.push(Member {
                    lead: at(lead_start, key_start),
                    key: at(key_start, key_end),
                    name,
                    mid: at(key_end, value_start),
                    value: Node::Raw(Span { text: span.text, start: value_start, end: value_end }),
                    tail: at(value_end, s.i),
                });
                if s.peek() == Some(b',') {
                    s.i += 1;
                } else {
                    break;
                }
            }
            *node = Node::Object(members, inner);
        }
        Some(b'[') => {
            s.i += 1;
            let mut items = Vec::new();
            let mut inner = Piece::Lit("");
            loop {
                let lead_start = s.i;
                s.ws();
                if s.peek() == Some(b']') {
                    if items.is_empty() {
                        inner = at(lead_start, s.i);
                    }
                    break;
                }
                let value_start = s.i;
                let value_end = skip_value(&mut s);
                s.ws();
                items.push(Item {
                    lead: at(lead_start, value_start),
                    value: Node::Raw(Span { text: span.text, start: value_start, end: value_end }),
                    tail: at(value_end, s.i),
                });
                if s.peek() == Some(b',') {
                    s.i += 1;
                } else {
                    break;
                }
            }
            *node = Node::Array(items, inner);
        }
        _ => {}
    }
}

/// Moves past one value of validated text; returns where it ends.
fn skip_value(s: &mut Scanner<'_>) -> usize {
    match s.peek() {
        Some(b'"') => {
            let _ = s.string();
        }
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            while let Some(b) = s.peek() {
                match b {
                    b'"' => {
                        let _ = s.string();
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            s.i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                s.i += 1;
            }
        }
        _ => {
            while s.peek().is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')) {
                s.i += 1;
            }
        }
    }
    s.i
}

/// A string's value as bytes: UTF-8, with a lone surrogate escape kept as its WTF-8 encoding.
fn decode_string(quoted: &[u8]) -> Vec<u8> {
    let inner = quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default();
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    let hex = |at: usize| -> Option<u32> {
        let h = std::str::from_utf8(inner.get(at..at + 4)?).ok()?;
        u32::from_str_radix(h, 16).ok()
    };
    while let Some(&b) = inner.get(i) {
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let esc = inner.get(i + 1).copied().unwrap_or(b'\\');
        i += 2;
        let simple = match esc {
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'u' => None,
            other => Some(other),
        };
        if let Some(c) = simple {
            out.push(c);
            continue;
        }
        let Some(unit) = hex(i) else { break };
        i += 4;
        let mut code = unit;
        if (0xd800..0xdc00).contains(&unit)
            && inner.get(i..i + 2) == Some(b"\\u")
            && let Some(low) = hex(i + 2).filter(|l| (0xdc00..0xe000).contains(l))
        {
            code = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
            i += 6;
        }
        wtf8_push(&mut out, code);
    }
    out
}

/// UTF-8 encoding extended to surrogates (WTF-8).
fn wtf8_push(out: &mut Vec<u8>, code: u32) {
    // Every shift and mask keeps the value under 256.
    let byte = |v: u32| u8::try_from(v & 0xff).unwrap_or(0);
    match code {
        0..=0x7f => out.push(byte(code)),
        0x80..=0x7ff => out.extend_from_slice(&[byte(0xc0 | (code >> 6)), byte(0x80 | (code & 0x3f))]),
        0x800..=0xffff => out.extend_from_slice(&[
            byte(0xe0 | (code >> 12)),
            byte(0x80 | ((code >> 6) & 0x3f)),
            byte(0x80 | (code & 0x3f)),
        ]),
        _ => out.extend_from_slice(&[
            byte(0xf0 | (code >> 18)),
            byte(0x80 | ((code >> 12) & 0x3f)),
            byte(0x80 | ((code >> 6) & 0x3f)),
            byte(0x80 | (code & 0x3f)),
        ]),
    }
}

/// An array index: digits without a leading zero.
fn index(seg: &str) -> Option<usize> {
    if seg.is_empty() || (seg.len() > 1 && seg.starts_with('0')) || !seg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    seg.parse().ok()
}

fn under_scalar(seg: &str) -> String {
    format!("`{}` is under a value that is not an object or array", shown(seg))
}

fn no_index(seg: &str, len: usize) -> String {
    format!("`{}` is not an index of an array of {len}", shown(seg))
}

/// Text from a request (or a config path) made safe for a log line: control bytes, quotes and
/// backslashes escaped, long text cut.
pub fn shown(text: &str) -> String {
    super::shown(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(str::to_owned).collect()
    }

    fn doc(text: &str) -> Doc {
        Doc::parse(text.as_bytes().to_vec()).unwrap()
    }

    fn text(d: &Doc) -> String {
        String::from_utf8(d.to_bytes()).unwrap()
    }

    fn s(v: &str) -> JsonText {
        JsonText::string(v)
    }

    #[test]
    fn everything_json_allows_is_accepted() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for ok in [
            "1e400",
            "-0.0e-0",
            "18446744073709551617",
            r#""\ud800""#,
            r#""\udc00\ud800x""#,
            r#"{"a":"\u0000\"\\\/\b\f\n\r\t"}"#,
            " \t\r\n{ } ",
            "null",
            "\u{feff}{}",
            &deep,
            r#"{"a":1,"a":2}"#,
            "\"caf\u{e9} \u{1f600}\"",
        ] {
            assert!(validate(ok.as_bytes()).is_ok(), "{}", ok.chars().take(40).collect::<String>());
        }
    }

    #[test]
    fn what_json_does_not_allow_is_refused() {
        for bad in [
            "",
            " ",
            "{,}",
            "[1,]",
            r#"{"a":1,}"#,
            "{'a':1}",
            "{\"a\":1} // comment",
            "NaN",
            "Infinity",
            "01",
            "1.",
            ".5",
            "+1",
            "0x1",
            "\"\u{1}\"",
            "\"a\nb\"",
            r#""\x41""#,
            r#""\u12""#,
            "[1] [2]",
            "{\"a\" 1}",
            "[",
            "\"open",
            "tru",
        ] {
            assert!(validate(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(validate(b"\"\xff\"").unwrap_err().reason, "bytes that are not UTF-8");
        let deep_open = "[".repeat(100_000);
        assert!(validate(deep_open.as_bytes()).is_err());
    }

    #[test]
    fn untouched_parts_keep_their_exact_bytes() {
        let body = "\u{feff}\n{\n  \"big\" : 18446744073709551617,\n  \"e\": 1E2,\n  \"esc\": \"\\u00e9\\ud800\\/\",\n  \"drop\": {\"x\": [1, 2]},\n  \"keep\": [ 1.50 , {\"z\":null} ]\n}\n";
        let mut d = doc(body);
        assert!(d.remove(&path("drop")));
        let expected = body.replace(",\n  \"drop\": {\"x\": [1, 2]}", "");
        assert_eq!(text(&d), expected);
        // A new field is laid out like the last one.
        d.set(&path("owner"), &s("alice")).unwrap();
        assert_eq!(
            text(&d),
            expected.replace("{\"z\":null} ]\n}", "{\"z\":null} ],\n  \"owner\": \"alice\"\n}")
        );
    }

    #[test]
    fn nothing_changed_means_the_same_bytes() {
        let body = r#"{ "a" : { "b" : [ 1 , 2 ] } , "c" : 3 }"#;
        let mut d = doc(body);
        assert!(!d.remove(&path("a.x")));
        assert!(d.kind_at(&path("a.b.1")).is_some());
        assert!(!d.changed());
        assert_eq!(text(&d), body);
        assert_eq!(d.text_at(&path("a.b")).unwrap(), b"[ 1 , 2 ]");
    }

    #[test]
    fn escaped_names_are_the_names_they_spell() {
        let mut d = doc(r#"{"\u006fwner": "mallory", "x": 1}"#);
        d.set(&path("owner"), &s("alice")).unwrap();
        assert_eq!(text(&d), r#"{"\u006fwner": "alice", "x": 1}"#);
        // A lone surrogate is never the same name as any text.
        let mut d = doc(r#"{"\ud800": 1}"#);
        assert_eq!(d.kind_at(&["\u{fffd}".to_owned()]), None);
        let mut d = doc(r#"{"\ud83d\ude00": 1}"#);
        assert_eq!(d.kind_at(&["\u{1f600}".to_owned()]), Some(Kind::Scalar));
    }

    #[test]
    fn a_name_given_twice_on_an_operation_path_is_kept_once() {
        // Whichever copy an upstream's parser reads, it sees the operation's result.
        let mut d = doc(r#"{"owner": "mallory", "x": 1, "owner": "eve"}"#);
        d.set(&path("owner"), &s("alice")).unwrap();
        assert_eq!(text(&d), r#"{ "x": 1, "owner": "alice"}"#);

        // A removal through a repeated parent: the first copy must not survive.
        let mut d = doc(r#"{"a": {"secret": 1}, "a": {"public": 2}}"#);
        assert!(!d.remove(&path("a.secret")));
        assert!(d.changed(), "the dropped copy is a change");
        assert_eq!(text(&d), r#"{ "a": {"public": 2}}"#);

        // Fields nobody touches may repeat as they like.
        let body = r#"{"t": 1, "t": 2, "u": 3}"#;
        let mut d = doc(body);
        assert!(d.remove(&path("u")));
        assert_eq!(text(&d), r#"{"t": 1, "t": 2}"#);
    }

    #[test]
    fn deep_documents_are_edited_near_the_top() {
        let depth = 200_000;
        let body = format!(r#"{{"owner": "mallory", "data": {}1{}}}"#, "[".repeat(depth), "]".repeat(depth));
        let mut d = Doc::parse(body.clone().into_bytes()).unwrap();
        d.set(&path("owner"), &s("alice")).unwrap();
        assert_eq!(text(&d), body.replace("mallory", "alice"));
        assert!(d.kind_at(&path("data.0.0.0")).is_some());
    }

    #[test]
    fn containers_open_only_where_the_path_goes_and_errors_change_nothing() {
        let body = r#"{"a": [ {"b": 1} ], "s": "x"}"#;
        let mut d = doc(body);
        assert!(d.set(&path("s.t"), &s("v")).unwrap_err().contains("not an object or array"));
        assert!(d.set(&path("a.1.b"), &s("v")).unwrap_err().contains("not an index"));
        assert!(d.set(&path("a.x"), &s("v")).is_err());
        assert!(d.append(&path("s.t"), &s("v")).is_err());
        assert!(!d.changed());
        assert_eq!(text(&d), body);
        d.set(&path("a.1"), &JsonText::parse(b" 2 ").unwrap()).unwrap();
        d.set(&path("a.-"), &JsonText::from(true)).unwrap();
        assert_eq!(text(&d), r#"{"a": [ {"b": 1}, 2, true ], "s": "x"}"#);
    }

    #[test]
    fn numbers_are_checked_against_the_grammar() {
        for ok in ["0", "-1", "1.5", "1e5", "1E+5", "-0.0e-10", "18446744073709551617"] {
            assert!(is_number(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "-", "01", "1.", ".1", "+1", "1e", "1e+", "NaN", "1 ", "0x1", "١"] {
            assert!(!is_number(bad.as_bytes()), "{bad}");
        }
    }
}
