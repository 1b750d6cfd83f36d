//! Each request kind as a type: [`WireRequest`] ties a request payload
//! to its kind, its reply type, the account it acts for and the worker it
//! names, and gives the static provider's answer for it. Routers, workers
//! and the API provider are generic over it where they treat kinds alike.

use super::replies::{
    DeleteRequest, Deleted, InputAccepted, InputRequest, RunFate, RunQuery, RunQueryAnswer,
    RunnerDeleted, RunnerRequest, RunnerStarted, RunnerStatusReply, StatusReply, StatusRequest,
};
use super::static_answers as answers;
use super::{Kind, Malformed, Reply, RunRequest, RunResult};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A request payload of one kind.
pub trait WireRequest:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Unpin + 'static
{
    /// What a successful reply carries.
    type Reply: Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Unpin + 'static;
    const KIND: Kind;

    /// The account the payload names (`owner_account_id`).
    fn owner(&self) -> Option<&str> {
        None
    }
    /// Stamps the effective owner.
    fn set_owner(&mut self, _owner: &str) {}
    /// The worker a per-run request is addressed to.
    fn worker_id(&self) -> Option<&str> {
        None
    }
    /// The run a per-run request is about.
    fn run_id(&self) -> Option<&str> {
        None
    }
    /// Checks a decoded reply against the request it answers (made for
    /// `owner`): `Err` says why it cannot be trusted.
    fn check_reply(_reply: &Self::Reply, _owner: &str) -> Result<(), Malformed> {
        Ok(())
    }
    /// The static provider's answer, for `owner`, as worker `worker_id`.
    fn static_answer(&self, owner: &str, worker_id: &str) -> Reply<Self::Reply>;
}

fn same_owner(got: &str, owner: &str) -> Result<(), Malformed> {
    if got != owner {
        return Err(Malformed(format!(
            "reply is for owner {got:?}, the request was for {owner:?}"
        )));
    }
    Ok(())
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

fn nonempty_str(s: &str) -> Option<&str> {
    Some(s).filter(|s| !s.is_empty())
}

impl WireRequest for RunRequest {
    type Reply = RunResult;
    const KIND: Kind = Kind::Run;

    fn owner(&self) -> Option<&str> {
        nonempty(&self.owner_account_id)
    }
    fn set_owner(&mut self, owner: &str) {
        self.owner_account_id = Some(owner.to_owned());
    }
    fn run_id(&self) -> Option<&str> {
        nonempty(&self.run_id)
    }
    fn static_answer(&self, owner: &str, worker_id: &str) -> Reply<RunResult> {
        Reply::Ok(answers::run(self, owner, worker_id))
    }
    fn check_reply(reply: &RunResult, owner: &str) -> Result<(), Malformed> {
        if reply.run_id.is_empty() {
            return Err(Malformed("reply has no run_id".into()));
        }
        same_owner(&reply.owner_account_id, owner)
    }
}

impl WireRequest for RunQuery {
    type Reply = RunQueryAnswer;
    const KIND: Kind = Kind::RunQuery;

    fn static_answer(&self, _: &str, _: &str) -> Reply<RunQueryAnswer> {
        Reply::Ok(RunQueryAnswer {
            run_id: self.run_id.clone(),
            fate: RunFate::Unknown,
            result: None,
        })
    }
    fn owner(&self) -> Option<&str> {
        nonempty_str(&self.owner_account_id)
    }
    fn set_owner(&mut self, owner: &str) {
        self.owner_account_id = owner.to_owned();
    }
    fn worker_id(&self) -> Option<&str> {
        nonempty(&self.worker_id)
    }
    fn run_id(&self) -> Option<&str> {
        nonempty_str(&self.run_id)
    }
}

impl WireRequest for InputRequest {
    type Reply = InputAccepted;
    const KIND: Kind = Kind::Input;

    fn static_answer(&self, _: &str, _: &str) -> Reply<InputAccepted> {
        Reply::Ok(answers::input(self))
    }
    fn owner(&self) -> Option<&str> {
        nonempty_str(&self.owner_account_id)
    }
    fn set_owner(&mut self, owner: &str) {
        self.owner_account_id = owner.to_owned();
    }
    fn worker_id(&self) -> Option<&str> {
        nonempty(&self.worker_id)
    }
    fn run_id(&self) -> Option<&str> {
        nonempty_str(&self.run_id)
    }
}

impl WireRequest for DeleteRequest {
    type Reply = Deleted;
    const KIND: Kind = Kind::Delete;

    fn static_answer(&self, _: &str, _: &str) -> Reply<Deleted> {
        answers::delete(self)
    }
    fn owner(&self) -> Option<&str> {
        nonempty_str(&self.owner_account_id)
    }
    fn set_owner(&mut self, owner: &str) {
        self.owner_account_id = owner.to_owned();
    }
    fn worker_id(&self) -> Option<&str> {
        nonempty(&self.worker_id)
    }
    fn run_id(&self) -> Option<&str> {
        nonempty_str(&self.run_id)
    }
    fn check_reply(reply: &Deleted, owner: &str) -> Result<(), Malformed> {
        same_owner(&reply.owner_account_id, owner)
    }
}

impl WireRequest for StatusRequest {
    type Reply = StatusReply;
    const KIND: Kind = Kind::Status;

    fn static_answer(&self, _: &str, _: &str) -> Reply<StatusReply> {
        Reply::Ok(answers::status())
    }
    fn owner(&self) -> Option<&str> {
        nonempty_str(&self.owner_account_id)
    }
    fn set_owner(&mut self, owner: &str) {
        self.owner_account_id = owner.to_owned();
    }
    fn check_reply(reply: &StatusReply, owner: &str) -> Result<(), Malformed> {
        for item in &reply.items {
            if let Some(got) = &item.owner_account_id {
                same_owner(got, owner)?;
            }
        }
        Ok(())
    }
}

/// The three runner kinds share one empty payload; each is its own type
/// so that it has its own reply type.
macro_rules! runner_request {
    ($name:ident, $kind:expr, $reply:ty, $answer:path, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
        pub struct $name(pub RunnerRequest);

        impl WireRequest for $name {
            type Reply = $reply;
            const KIND: Kind = $kind;

            fn static_answer(&self, _: &str, _: &str) -> Reply<$reply> {
                Reply::Ok($answer())
            }
        }
    };
}

runner_request!(
    RunnerStatusRequest,
    Kind::RunnerStatus,
    RunnerStatusReply,
    answers::runner_status,
    "`runner.status.request`."
);
runner_request!(
    RunnerStartRequest,
    Kind::RunnerStart,
    RunnerStarted,
    answers::runner_start,
    "`runner.start.request`: ensure the profiles' images."
);
runner_request!(
    RunnerDeleteRequest,
    Kind::RunnerDelete,
    RunnerDeleted,
    answers::runner_delete,
    "`runner.delete.request`: remove every managed container."
);
