//! A filter's stats: one list, derived from enums, as Envoy derives a filter's stats from its
//! `ALL_<FILTER>_STATS` macro.
//!
//! A filter names its counters with one enum made by [`stats!`](crate::stats!) and refuses
//! requests with one [`Denial`] enum of the core; [`Counters`] defines `<prefix>.<stat>` for every
//! stat and `<prefix>.denied.<reason>` for every refusal up front, so `/stats` shows every counter
//! from the start, and a counter that is not in the lists cannot be incremented.

use std::marker::PhantomData;

use tollgate_core::error::Denial;

use crate::Host;

/// A filter's counters other than its refusals, made by [`stats!`](crate::stats!).
pub trait Stat: Copy + 'static {
    /// Every counter, in the order they are defined.
    const ALL: &'static [Self];
    /// The counter's name under the filter's prefix.
    fn name(self) -> &'static str;
    /// The counter's position in [`Stat::ALL`].
    fn index(self) -> usize;
}

/// Declares a filter's stat enum: each variant with the counter name it stands for.
///
/// ```
/// tollgate_host::stats! {
///     /// The filter's counters, under `tollgate.example.`.
///     pub enum Stat {
///         Allowed => "allowed",
///         CacheHit => "cache_hit",
///     }
/// }
/// use tollgate_host::stats::Stat as _;
/// assert_eq!(Stat::ALL.iter().map(|s| s.name()).collect::<Vec<_>>(), ["allowed", "cache_hit"]);
/// ```
#[macro_export]
macro_rules! stats {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $crate::stats::Stat for $name {
            const ALL: &'static [Self] = &[$(Self::$variant,)*];

            fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

/// The refusals of a filter that refuses nothing on its own account (its only refusals are
/// counted as plain stats, or by rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoDenial {}

impl Denial for NoDenial {
    fn all() -> &'static [Self] {
        &[]
    }
    fn status(self) -> u32 {
        match self {}
    }
    fn code(self) -> &'static str {
        match self {}
    }
    fn message(self) -> &'static str {
        match self {}
    }
    fn reason(self) -> &'static str {
        match self {}
    }
}

/// One filter's counters (or one rule's): the stats `S` and the refusals `D`, defined once per VM.
pub struct Counters<S, D = NoDenial> {
    /// By [`Stat::index`]; `None` where the host refused to define the counter.
    stats: Vec<Option<u32>>,
    /// In the order of [`Denial::all`].
    denied: Vec<Option<u32>>,
    kinds: PhantomData<fn() -> (S, D)>,
}

impl<S, D> std::fmt::Debug for Counters<S, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("stats", &self.stats.len())
            .field("denied", &self.denied.len())
            .finish()
    }
}

impl<S: Stat, D: Denial> Counters<S, D> {
    /// Defines `<prefix>.<stat>` for every stat, then `<prefix>.denied.<reason>` for every refusal.
    pub fn define<H: Host + ?Sized>(host: &H, prefix: &str) -> Self {
        let stats = S::ALL.iter().map(|s| host.define_counter(&format!("{prefix}.{}", s.name()))).collect();
        let denied = D::all()
            .iter()
            .map(|d| host.define_counter(&format!("{prefix}.denied.{}", d.reason())))
            .collect();
        Self { stats, denied, kinds: PhantomData }
    }

    /// Every counter's name under the prefix, in the order they are defined.
    pub fn names() -> Vec<String> {
        let stats = S::ALL.iter().map(|s| s.name().to_owned());
        stats.chain(D::all().iter().map(|d| format!("denied.{}", d.reason()))).collect()
    }

    /// Adds one to `stat`.
    pub fn inc<H: Host + ?Sized>(&self, host: &H, stat: S) {
        self.add(host, stat, 1);
    }

    /// Adds `n` to `stat`.
    pub fn add<H: Host + ?Sized>(&self, host: &H, stat: S, n: u64) {
        if let Some(Some(id)) = self.stats.get(stat.index()) {
            host.increment_counter(*id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Adds one to `denied.<reason>` of `deny`.
    pub fn denied<H: Host + ?Sized>(&self, host: &H, deny: D) {
        let index = D::all().iter().position(|d| d.reason() == deny.reason());
        if let Some(Some(id)) = index.and_then(|i| self.denied.get(i)) {
            host.increment_counter(*id, 1);
        }
    }
}
