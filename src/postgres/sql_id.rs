//! Execution and tenant ids as PostgreSQL `text`.
//!
//! Ids may hold any UTF-8, NUL included (the contract's "precise point"), but
//! PostgreSQL's `text` cannot hold NUL. So ids are stored escaped: `\` becomes `\\`
//! and NUL becomes `\0`; every other id, the common case, is stored as it is and reads
//! the same in SQL. The escape is injective, so equality, uniqueness and the primary
//! keys keep their meaning.

use std::borrow::Cow;

/// The stored form of an id.
pub(crate) fn escape(id: &str) -> Cow<'_, str> {
    if !id.contains(['\\', '\0']) {
        return Cow::Borrowed(id);
    }
    let mut out = String::with_capacity(id.len() + 4);
    for c in id.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The id a stored form stands for; `None` if it is not one [`escape`] writes.
pub(crate) fn unescape(stored: &str) -> Option<Cow<'_, str>> {
    if !stored.contains('\\') {
        return Some(Cow::Borrowed(stored));
    }
    let mut out = String::with_capacity(stored.len());
    let mut chars = stored.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            '0' => out.push('\0'),
            _ => return None,
        }
    }
    Some(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_round_trips_and_leaves_plain_ids_alone() {
        for id in ["plain", "a\\b", "\0", "\\0", "ü/\0/🚀", "\\\\\0\\", ""] {
            let stored = escape(id);
            assert!(!stored.contains('\0'));
            assert_eq!(unescape(&stored).as_deref(), Some(id));
        }
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(escape("a\\0"), "a\\\\0");
        assert_ne!(escape("\0"), escape("\\0"));
        assert_eq!(unescape("bad\\x"), None);
        assert_eq!(unescape("trailing\\"), None);
    }
}
