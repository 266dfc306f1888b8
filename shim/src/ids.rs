//! Identifiers that become host path components or socket names (container ids, the
//! sandbox id, exec ids) must be plain names: containerd's own identifier rule
//! (`[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`, at most 76 characters). Anything else is refused
//! before it reaches a path: no `/`, no `..`, no NUL, no leading dot, no control text.

use thiserror::Error;

/// containerd's `identifiers.Validate` bound.
pub const MAX_ID_LEN: usize = 76;

#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "invalid {what} {id:?}: it must be 1 to {MAX_ID_LEN} letters and digits, separated by single '.', '_' or '-' (containerd's identifier rule)"
)]
pub struct InvalidId {
    pub what: &'static str,
    pub id: String,
}

/// Checks `id` (named `what` in the error) against containerd's identifier rule.
pub fn validate(what: &'static str, id: &str) -> Result<(), InvalidId> {
    let invalid = || InvalidId {
        what,
        id: id.chars().take(MAX_ID_LEN + 8).collect(),
    };
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(invalid());
    }
    let mut previous_separator = true;
    for c in id.chars() {
        let separator = matches!(c, '.' | '_' | '-');
        if separator && previous_separator || !(separator || c.is_ascii_alphanumeric()) {
            return Err(invalid());
        }
        previous_separator = separator;
    }
    if previous_separator {
        return Err(invalid());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_containerd_and_cri_ids() {
        for id in [
            "c1",
            "a",
            "6f1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
            "husk-test.pod_1",
            &"x".repeat(MAX_ID_LEN),
        ] {
            validate("container id", id).unwrap();
        }
    }

    #[test]
    fn refuses_what_could_escape_a_path() {
        for id in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/abs",
            ".hidden",
            "a..b",
            "a-",
            "-a",
            "a\0b",
            "a b",
            "a\nb",
            "ä",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            let err = validate("sandbox id", id).unwrap_err();
            assert!(err.to_string().contains("sandbox id"), "{err}");
        }
    }
}
