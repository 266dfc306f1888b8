//! How agent errors become ttrpc statuses: the codes the shim acts on.

use ttrpc::Code;

use crate::container::ContainerError;
use crate::container::freezer::FreezerError;
use crate::container::volume_mirror::MirrorError;
use crate::helper::{FailureKind, HelperError};
use crate::network::NetworkError;
use crate::sandbox::SandboxError;
use crate::stdio::{RegistryError, StdioError};

/// A ttrpc error carrying `code` and `message`.
pub fn rpc_error(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

pub fn container_code(e: &ContainerError) -> Code {
    use ContainerError as E;
    match e {
        E::NotFound(_) | E::ExecNotFound { .. } => Code::NOT_FOUND,
        E::AlreadyExists(_) | E::ExecAlreadyExists { .. } => Code::ALREADY_EXISTS,
        E::Busy(_)
        | E::AlreadyStarted(_)
        | E::NotStarted(_)
        | E::Stopped(_)
        | E::Paused(_)
        | E::RootfsMissing(_)
        | E::Freezer(FreezerError::Unsupported(_)) => Code::FAILED_PRECONDITION,
        E::Freezer(FreezerError::Timeout { .. }) => Code::DEADLINE_EXCEEDED,
        E::InvalidSignal(_)
        | E::InvalidSize { .. }
        | E::InvalidId(_)
        | E::InvalidSpec(_)
        | E::Sysctl(_)
        | E::Volume(MirrorError::UnknownSource(_))
        | E::MemoryTooSmall { .. } => Code::INVALID_ARGUMENT,
        E::Stdio(StdioError::StderrWithTerminal) => Code::INVALID_ARGUMENT,
        E::Stdio(StdioError::NoTerminal) => Code::FAILED_PRECONDITION,
        E::Streams(RegistryError::NotAttached(_)) => Code::FAILED_PRECONDITION,
        E::Helper(h) => helper_code(h),
        E::Stdio(_)
        | E::Streams(_)
        | E::Cgroup(_)
        | E::Freezer(_)
        | E::Stats(_)
        | E::Update(_)
        | E::Volume(_)
        | E::Signal(_)
        | E::Io { .. }
        | E::Libcontainer(_)
        | E::ExitLost(_)
        | E::Join(_) => Code::INTERNAL,
    }
}

fn helper_code(e: &HelperError) -> Code {
    match e {
        HelperError::Failed {
            kind: FailureKind::InvalidSpec,
            ..
        } => Code::INVALID_ARGUMENT,
        HelperError::Failed {
            kind: FailureKind::AlreadyExists,
            ..
        } => Code::ALREADY_EXISTS,
        HelperError::Failed {
            kind: FailureKind::WrongState,
            ..
        } => Code::FAILED_PRECONDITION,
        HelperError::Timeout(_) => Code::DEADLINE_EXCEEDED,
        _ => Code::INTERNAL,
    }
}

pub fn sandbox_code(e: &SandboxError) -> Code {
    match e {
        SandboxError::MissingId | SandboxError::HostnameTooLong(_) | SandboxError::BadTag(_) => {
            Code::INVALID_ARGUMENT
        }
        SandboxError::AlreadyExists(_) => Code::ALREADY_EXISTS,
        SandboxError::Hostname(_) | SandboxError::CreateDir { .. } | SandboxError::Mount { .. } => {
            Code::INTERNAL
        }
    }
}

impl From<ContainerError> for ttrpc::Error {
    fn from(e: ContainerError) -> Self {
        rpc_error(container_code(&e), e)
    }
}

impl From<NetworkError> for ttrpc::Error {
    fn from(e: NetworkError) -> Self {
        let code = match &e {
            NetworkError::Invalid(_) => Code::INVALID_ARGUMENT,
            NetworkError::NoDevice(_) => Code::FAILED_PRECONDITION,
            NetworkError::Netlink { .. } | NetworkError::Connect(_) => Code::INTERNAL,
            NetworkError::Timeout(_) => Code::DEADLINE_EXCEEDED,
        };
        rpc_error(code, e)
    }
}

impl From<SandboxError> for ttrpc::Error {
    fn from(e: SandboxError) -> Self {
        rpc_error(sandbox_code(&e), e)
    }
}

#[cfg(test)]
mod tests {
    use husk_protocol::io_stream::StreamKind;

    use super::*;
    use crate::container::ids::IdError;
    use crate::stdio::StreamKey;

    #[test]
    fn container_errors_map_to_precise_codes() {
        let cases = [
            (ContainerError::NotFound("c".into()), Code::NOT_FOUND),
            (
                ContainerError::ExecNotFound {
                    container_id: "c".into(),
                    exec_id: "e".into(),
                },
                Code::NOT_FOUND,
            ),
            (
                ContainerError::AlreadyExists("c".into()),
                Code::ALREADY_EXISTS,
            ),
            (
                ContainerError::AlreadyStarted("c".into()),
                Code::FAILED_PRECONDITION,
            ),
            (
                ContainerError::Stopped("c".into()),
                Code::FAILED_PRECONDITION,
            ),
            (ContainerError::InvalidSignal(99), Code::INVALID_ARGUMENT),
            (
                ContainerError::InvalidId(IdError::Empty { what: "id" }),
                Code::INVALID_ARGUMENT,
            ),
            (
                ContainerError::Stdio(StdioError::StderrWithTerminal),
                Code::INVALID_ARGUMENT,
            ),
            (
                ContainerError::Stdio(StdioError::NoTerminal),
                Code::FAILED_PRECONDITION,
            ),
            (
                ContainerError::Streams(RegistryError::NotAttached(StreamKey {
                    container_id: "c".into(),
                    exec_id: String::new(),
                    kind: StreamKind::Stdout,
                })),
                Code::FAILED_PRECONDITION,
            ),
            (
                ContainerError::Helper(HelperError::Failed {
                    kind: FailureKind::InvalidSpec,
                    message: "bad".into(),
                }),
                Code::INVALID_ARGUMENT,
            ),
            (
                ContainerError::Helper(HelperError::Timeout(std::time::Duration::from_secs(1))),
                Code::DEADLINE_EXCEEDED,
            ),
            (
                ContainerError::Libcontainer(libcontainer::error::LibcontainerError::NoDirectory),
                Code::INTERNAL,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(container_code(&error), code, "{error}");
        }
    }

    #[test]
    fn statuses_carry_code_and_message() {
        let err: ttrpc::Error = ContainerError::NotFound("c9".into()).into();
        let ttrpc::Error::RpcStatus(status) = err else {
            panic!("not a status")
        };
        assert_eq!(status.code(), Code::NOT_FOUND);
        assert_eq!(status.message(), "container c9 not found");

        let err: ttrpc::Error = SandboxError::AlreadyExists("s".into()).into();
        let ttrpc::Error::RpcStatus(status) = err else {
            panic!("not a status")
        };
        assert_eq!(status.code(), Code::ALREADY_EXISTS);
        assert_eq!(
            sandbox_code(&SandboxError::MissingId),
            Code::INVALID_ARGUMENT
        );
    }
}
