//! Container and exec ids: they become path components (bundle, state, cgroup), so only a
//! conservative character set is accepted.

use husk_protocol::io_stream::MAX_ID_LEN;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes; at most {MAX_ID_LEN} are allowed")]
    TooLong { what: &'static str, len: usize },
    #[error(
        "{what} {id:?} must start with a letter or digit and contain only letters, digits, '_', '-' and '.'"
    )]
    BadCharacters { what: &'static str, id: String },
}

pub fn validate_container_id(id: &str) -> Result<(), IdError> {
    validate("container id", id)
}

pub fn validate_exec_id(id: &str) -> Result<(), IdError> {
    validate("exec id", id)
}

fn validate(what: &'static str, id: &str) -> Result<(), IdError> {
    let mut chars = id.chars();
    let Some(first) = chars.next() else {
        return Err(IdError::Empty { what });
    };
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            what,
            len: id.len(),
        });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if !first.is_ascii_alphanumeric() || !chars.all(allowed) {
        return Err(IdError::BadCharacters {
            what,
            id: id.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_containerd_style_ids() {
        for id in [
            "c1",
            "4f1a4cb3801e",
            "pause.sandbox_1-x",
            &"a".repeat(MAX_ID_LEN),
        ] {
            assert_eq!(validate_container_id(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn rejects_path_tricks_and_empty() {
        for id in ["", ".", "..", "../x", "a/b", "-a", "a b", "é", "a\0"] {
            assert!(validate_exec_id(id).is_err(), "{id:?}");
        }
        assert!(matches!(
            validate_container_id(&"a".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong { .. })
        ));
    }
}
