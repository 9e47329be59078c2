//! Name lookup shared by the op and scorer registries: an unknown name is an error that lists
//! the known names and the nearest one (docs/ARCHITECTURE.md "CLI contract").

use crate::error::{Error, Result};

/// The known name closest to `name` (Jaro–Winkler or edit distance), if any is close enough.
pub fn nearest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    known
        .into_iter()
        .map(|k| {
            let lev = strsim::levenshtein(&lower, k);
            let jw = strsim::jaro_winkler(&lower, k);
            (k, lev, jw)
        })
        .filter(|(k, lev, jw)| *jw >= 0.8 || *lev <= (k.len().max(3) / 3).max(2))
        .min_by(|a, b| a.1.cmp(&b.1).then(b.2.total_cmp(&a.2)))
        .map(|(k, _, _)| k.to_string())
}

/// Finds `name` among `entries` (by `key`), or builds the `UnknownName` error.
pub fn lookup<T: Copy>(
    kind: &'static str,
    name: &str,
    entries: Vec<T>,
    key: impl Fn(&T) -> &'static str,
) -> Result<T> {
    if let Some(e) = entries.iter().find(|e| key(e) == name) {
        return Ok(*e);
    }
    let known: Vec<String> = entries.iter().map(|e| key(e).to_string()).collect();
    let suggestion = nearest(name, known.iter().map(String::as_str));
    Err(Error::UnknownName {
        kind,
        name: name.to_string(),
        known,
        suggestion,
    })
}

/// Fails if two entries share a name.
pub fn check_unique<T>(kind: &'static str, entries: &[T], key: impl Fn(&T) -> &str) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for e in entries {
        if !seen.insert(key(e)) {
            return Err(Error::DuplicateName {
                kind,
                name: key(e).to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_finds_typos() {
        let known = [
            "conv1x1",
            "conv1x1_kxk",
            "conv1x1_avg",
            "identity",
            "synflow",
        ];
        assert_eq!(nearest("conv1x1_kx", known).as_deref(), Some("conv1x1_kxk"));
        assert_eq!(nearest("identiy", known).as_deref(), Some("identity"));
        assert_eq!(nearest("Synflow", known).as_deref(), Some("synflow"));
        assert_eq!(nearest("zzzzzzzzzzzz", known), None);
    }

    #[test]
    fn lookup_error_lists_names_and_suggestion() {
        let e = lookup("op", "conv1x2", vec!["conv1x1", "identity"], |e| e).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("unknown op `conv1x2`"), "{msg}");
        assert!(msg.contains("did you mean `conv1x1`"), "{msg}");
        assert!(msg.contains("known ops: conv1x1, identity"), "{msg}");
    }

    #[test]
    fn duplicates_are_found() {
        assert!(check_unique("op", &["a", "b", "a"], |s| s).is_err());
        assert!(check_unique("op", &["a", "b"], |s| s).is_ok());
    }
}
