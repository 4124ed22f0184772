//! A worker's store: stored responses bounded by bytes, least recently used evicted first.
//!
//! A primary key ([`super::key::primary_key`]) holds the `Vary` names of the response stored
//! last under it and every variant stored under it, each under its full key (primary key and
//! the request's values of those names).

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use super::policy::Freshness;

/// Bytes counted for an object beyond its key, headers and body (maps, bookkeeping).
const OVERHEAD: usize = 160;

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub status: u32,
    /// The headers to answer with (hop-by-hop fields, `age` and `content-length` left out).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub freshness: Freshness,
    /// When the request went out and the response came (seconds since the epoch).
    pub request_time: i64,
    pub response_time: i64,
    /// The lower-case names the response's `Vary` lists.
    pub vary: Vec<String>,
    /// The tags the origin gave it (`Cache-Tag`, `Surrogate-Key`): what a purge by tag matches.
    pub tags: Vec<String>,
    /// When its request went out, in milliseconds: a purge applied at or after it purges it.
    pub request_ms: u64,
}

impl Object {
    /// A stored header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn size(&self, key: &str) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len() + 16).sum();
        let lists: usize = self.vary.iter().chain(&self.tags).map(|s| s.len() + 24).sum();
        key.len() + headers + lists + self.body.len() + OVERHEAD
    }
}

/// The full key of a variant.
pub fn full_key(primary: &str, vary_values: &[Option<String>]) -> String {
    let mut key = primary.to_owned();
    for value in vary_values {
        key.push('\0');
        match value {
            Some(v) => {
                key.push('=');
                key.push_str(v);
            }
            None => key.push('-'),
        }
    }
    key
}

struct Slot {
    object: Rc<Object>,
    primary: String,
    size: usize,
    used: u64,
}

/// What [`Store::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inserted {
    pub stored: bool,
    pub evicted: usize,
}

pub struct Store {
    max_bytes: usize,
    bytes: usize,
    clock: u64,
    slots: HashMap<String, Slot>,
    /// Last use → full key.
    order: BTreeMap<u64, String>,
    /// Primary key → the `Vary` names of its last stored response, and its variants' keys.
    primaries: HashMap<String, (Vec<String>, Vec<String>)>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("bytes", &self.bytes).field("objects", &self.slots.len()).finish()
    }
}

impl Store {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            bytes: 0,
            clock: 0,
            slots: HashMap::new(),
            order: BTreeMap::new(),
            primaries: HashMap::new(),
        }
    }

    /// Bytes in use.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The `Vary` names of the response stored last under `primary`, if any.
    pub fn vary_of(&self, primary: &str) -> Option<&[String]> {
        self.primaries.get(primary).map(|(names, _)| names.as_slice())
    }

    /// The object stored under `full`, marked as used.
    pub fn get(&mut self, full: &str) -> Option<Rc<Object>> {
        self.clock += 1;
        let clock = self.clock;
        let slot = self.slots.get_mut(full)?;
        self.order.remove(&slot.used);
        slot.used = clock;
        self.order.insert(clock, full.to_owned());
        Some(Rc::clone(&slot.object))
    }

    /// Stores `object` under `primary` and the request's values of its `Vary` names, evicting
    /// the least recently used objects to make room. An object larger than the whole store is
    /// not stored.
    pub fn insert(&mut self, primary: &str, vary_values: &[Option<String>], object: Object) -> Inserted {
        let full = full_key(primary, vary_values);
        let size = object.size(&full);
        if size > self.max_bytes {
            return Inserted::default();
        }
        self.remove_full(&full);
        // A response that varies on other names than the stored ones replaces every variant.
        let same_vary = self.vary_of(primary).is_none_or(|names| names == object.vary.as_slice());
        if !same_vary {
            self.invalidate(primary);
        }
        let mut evicted = 0;
        while self.bytes + size > self.max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.remove_full(&oldest);
            evicted += 1;
        }
        self.clock += 1;
        let entry =
            self.primaries.entry(primary.to_owned()).or_insert_with(|| (object.vary.clone(), Vec::new()));
        entry.1.push(full.clone());
        self.order.insert(self.clock, full.clone());
        self.bytes += size;
        self.slots.insert(
            full,
            Slot { object: Rc::new(object), primary: primary.to_owned(), size, used: self.clock },
        );
        Inserted { stored: true, evicted }
    }

    /// Drops every variant stored under `primary`; how many there were.
    pub fn invalidate(&mut self, primary: &str) -> usize {
        let Some((_, fulls)) = self.primaries.remove(primary) else {
            return 0;
        };
        let n = fulls.len();
        for full in fulls {
            if let Some(slot) = self.slots.remove(&full) {
                self.order.remove(&slot.used);
                self.bytes -= slot.size;
            }
        }
        n
    }

    /// Drops every object `gone` says is gone (given its primary key and the object); how many.
    pub fn remove_where(&mut self, mut gone: impl FnMut(&str, &Object) -> bool) -> usize {
        let doomed: Vec<String> =
            self.slots.iter().filter(|(_, s)| gone(&s.primary, &s.object)).map(|(k, _)| k.clone()).collect();
        for full in &doomed {
            self.remove_full(full);
        }
        doomed.len()
    }

    /// The object stored under `full`, without marking it used.
    pub fn peek(&self, full: &str) -> Option<&Rc<Object>> {
        self.slots.get(full).map(|s| &s.object)
    }

    fn remove_full(&mut self, full: &str) {
        let Some(slot) = self.slots.remove(full) else {
            return;
        };
        self.order.remove(&slot.used);
        self.bytes -= slot.size;
        if let Some((_, fulls)) = self.primaries.get_mut(&slot.primary) {
            fulls.retain(|f| f != full);
            if fulls.is_empty() {
                self.primaries.remove(&slot.primary);
            }
        }
    }
}
