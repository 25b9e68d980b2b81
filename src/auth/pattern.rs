//! Room patterns: which rooms a token (or an anonymous client) may read or write.
//!
//! A pattern is a room name; a final `*` matches any rest (`team/42/*`, `*` for all);
//! `{sub}` stands for the token's own `sub` (`inbox/{sub}`). The substitution is
//! literal: a `sub` holding `*` or `{sub}` adds no wildcard (the final `*` is read from
//! the pattern as written, before the substitution). Patterns are compiled once per
//! token, so a check at join or publish is a comparison of bytes per pattern.

use unicode_normalization::UnicodeNormalization;

/// One compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Pattern {
    /// Exactly this room.
    Exact(Box<str>),
    /// Every room whose name starts with this (the pattern's final `*` dropped).
    Prefix(Box<str>),
}

/// A set of compiled patterns (the read or the write side of a grant).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Patterns {
    /// `*` is among them: every room (the common open server, checked first).
    all: bool,
    #[serde(deserialize_with = "crate::frozen::boxed_seq")]
    patterns: Box<[Pattern]>,
}

impl Patterns {
    /// No room at all.
    #[cfg(test)]
    pub(crate) fn none() -> Patterns {
        Patterns::default()
    }

    /// Compiles `patterns`, `{sub}` standing for `sub` (anonymous clients have none:
    /// a pattern with `{sub}` then matches nothing). Room names are NFC, as in paths.
    pub(crate) fn compile<'a>(patterns: impl IntoIterator<Item = &'a str>, sub: Option<&str>) -> Patterns {
        let mut all = false;
        let mut compiled = Vec::new();
        for pattern in patterns {
            let (stem, prefix) = match pattern.strip_suffix('*') {
                Some(stem) => (stem, true),
                None => (pattern, false),
            };
            let stem: String = match (stem.contains("{sub}"), sub) {
                (false, _) => stem.nfc().collect(),
                (true, Some(sub)) => stem.replace("{sub}", sub).nfc().collect(),
                (true, None) => continue,
            };
            match (prefix, stem.is_empty()) {
                (true, true) => all = true,
                (true, false) => compiled.push(Pattern::Prefix(stem.into())),
                (false, _) => compiled.push(Pattern::Exact(stem.into())),
            }
        }
        if all {
            compiled.clear();
        }
        compiled.dedup();
        Patterns { all, patterns: compiled.into() }
    }

    /// Whether `room` (an NFC room name) matches one of the patterns.
    pub(crate) fn matches(&self, room: &str) -> bool {
        self.all
            || self.patterns.iter().any(|p| match p {
                Pattern::Exact(name) => **name == *room,
                Pattern::Prefix(stem) => room.starts_with(&**stem),
            })
    }

    /// Whether every room matches (`*`).
    pub(crate) fn is_all(&self) -> bool {
        self.all
    }

    /// Whether no room matches.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        !self.all && self.patterns.is_empty()
    }
}
