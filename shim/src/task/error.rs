//! Task API errors and their ttrpc status codes (containerd maps them to errdefs).

use thiserror::Error;
use ttrpc::{Code, get_status};

use crate::agent::AgentError;

/// Any error kept as the cause of a [`TaskError`].
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

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
    /// The request cannot be carried out as given; the cause says why.
    #[error("{0}")]
    BadRequest(#[source] Cause),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Internal(String),
    #[error("{context}: {source}")]
    Failed {
        context: &'static str,
        #[source]
        source: Cause,
    },
    /// The pod VM could not be started (its first container is refused).
    #[error("starting the pod VM: {0}")]
    PodStart(#[source] Cause),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl TaskError {
    pub fn code(&self) -> Code {
        match self {
            TaskError::NotFound(_) => Code::NOT_FOUND,
            TaskError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            TaskError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            TaskError::InvalidArgument(_) | TaskError::BadRequest(_) => Code::INVALID_ARGUMENT,
            TaskError::Unimplemented(_) => Code::UNIMPLEMENTED,
            TaskError::Internal(_) | TaskError::Failed { .. } => Code::INTERNAL,
            TaskError::PodStart(_) => Code::FAILED_PRECONDITION,
            TaskError::Agent(e) => e.code().unwrap_or(Code::UNAVAILABLE),
        }
    }

    /// `e` made the request invalid.
    pub fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        TaskError::BadRequest(Box::new(e))
    }

    /// `e` kept the shim from doing what `context` says.
    pub fn internal(
        context: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        TaskError::Failed {
            context,
            source: Box::new(e),
        }
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
