//! Task API errors and their ttrpc status codes (containerd maps them to errdefs).

use thiserror::Error;
use ttrpc::{Code, get_status};

use crate::agent::AgentError;

#[derive(Debug, Error)]
pub enum TaskError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl TaskError {
    pub fn code(&self) -> Code {
        match self {
            TaskError::NotFound(_) => Code::NOT_FOUND,
            TaskError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            TaskError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            TaskError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            TaskError::Unimplemented(_) => Code::UNIMPLEMENTED,
            TaskError::Internal(_) => Code::INTERNAL,
            TaskError::Agent(e) => e.code().unwrap_or(Code::UNAVAILABLE),
        }
    }

    pub fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        TaskError::Internal(format!("{context}: {e}"))
    }
}

impl From<TaskError> for ttrpc::Error {
    fn from(e: TaskError) -> Self {
        ttrpc::Error::RpcStatus(get_status(e.code(), e.to_string()))
    }
}

pub type TaskResult<T> = Result<T, TaskError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_survive_conversion() {
        let e: ttrpc::Error = TaskError::NotFound("container c1 not found".into()).into();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::NOT_FOUND);
                assert_eq!(s.message(), "container c1 not found");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
