//! What this controller is right now, shared with the API: the leader (with
//! its scheduler for the current term) or a follower (knowing the leader's
//! address, when there is one).

use baton_common::error::ApiError;
use baton_common::time::Micros;
use tokio_util::sync::CancellationToken;

use crate::election::LeaderInfo;
use crate::scheduler::SchedulerHandle;

/// One term of leadership on this controller.
#[derive(Clone)]
pub struct LeaderTerm {
    pub scheduler: SchedulerHandle,
    /// The fencing token (0 on the embedded store).
    pub term: i64,
    pub since: Micros,
    /// Cancelled when the term ends (step-down or shutdown): streams tied to
    /// it (worker streams, log follows) end then.
    pub ended: CancellationToken,
}

#[derive(Clone)]
pub enum Role {
    Leader(LeaderTerm),
    Follower { leader: Option<LeaderInfo> },
}

impl Role {
    /// The current term, or the error that sends the caller to the leader.
    pub fn leader(&self) -> Result<LeaderTerm, ApiError> {
        match self {
            Role::Leader(term) => Ok(term.clone()),
            Role::Follower { leader } => Err(ApiError::NotLeader {
                leader: leader.as_ref().map(|info| info.address.clone()),
            }),
        }
    }

    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader(_))
    }
}
