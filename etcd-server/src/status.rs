//! The one place where engine errors become gRPC statuses: etcd's code and
//! etcd's exact message (clients such as etcdctl and Go's clientv3 match
//! errors by message).

use etcd_core::{Code, Error};
use tonic::Status;

/// Translates an engine error into the status etcd would send.
pub fn to_status(e: Error) -> Status {
    let code = match e.code() {
        Code::Unknown => tonic::Code::Unknown,
        Code::InvalidArgument => tonic::Code::InvalidArgument,
        Code::NotFound => tonic::Code::NotFound,
        Code::ResourceExhausted => tonic::Code::ResourceExhausted,
        Code::FailedPrecondition => tonic::Code::FailedPrecondition,
        Code::OutOfRange => tonic::Code::OutOfRange,
        Code::Unimplemented => tonic::Code::Unimplemented,
        Code::Internal => tonic::Code::Internal,
        Code::Unavailable => tonic::Code::Unavailable,
        Code::DataLoss => tonic::Code::DataLoss,
        Code::PermissionDenied => tonic::Code::PermissionDenied,
        Code::Unauthenticated => tonic::Code::Unauthenticated,
    };
    Status::new(code, e.to_string())
}

/// The status of a Lock or Election error: etcd serves those APIs through
/// an in-process client, so its clients see code Unknown with the text.
pub fn concurrency_status(e: Error) -> Status {
    match e {
        Error::Stopped | Error::NoLeader | Error::Timeout => to_status(e),
        other => Status::unknown(other.to_string()),
    }
}

/// The status for an API this build does not serve yet: says what is
/// missing instead of pretending.
pub fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!(
        "etcdserver: {what} is not supported by this server yet"
    ))
}

/// etcd's learner rule (`isRPCSupportedForLearner`): a learner answers
/// only Status and serializable Range; everything else fails with
/// "etcdserver: rpc not supported for learner".
pub(crate) fn learner_guard(etcd: &etcd_core::Etcd) -> Result<(), tonic::Status> {
    if etcd.is_learner() {
        return Err(to_status(etcd_core::Error::NotSupportedForLearner));
    }
    Ok(())
}

/// A response stream that ends with etcd's "server stopped" (Unavailable,
/// which clients retry on another member) once the member begins
/// stopping, so that a graceful stop never waits on an endless stream
/// (watch, lease keep-alive, election observe). Whatever produced the
/// items sees its receiver dropped and ends too.
pub(crate) fn until_stopping<T: Send + 'static>(
    etcd: &etcd_core::Etcd,
    stream: impl futures::Stream<Item = Result<T, Status>> + Send + 'static,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>> {
    use futures::StreamExt as _;
    let state = (Box::pin(stream), Box::pin(etcd.stopping()), false);
    Box::pin(futures::stream::unfold(
        state,
        |(mut stream, mut stopping, ended)| async move {
            if ended {
                return None;
            }
            tokio::select! {
                biased;
                () = &mut stopping => Some((Err(to_status(Error::Stopped)), (stream, stopping, true))),
                item = stream.next() => item.map(|i| (i, (stream, stopping, false))),
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacted_maps_to_out_of_range_with_etcds_message() {
        let s = to_status(Error::Compacted);
        assert_eq!(s.code(), tonic::Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = to_status(Error::EmptyKey);
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "etcdserver: key is not provided");
    }
}
