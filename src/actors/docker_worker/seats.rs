//! The seats of a worker's helpers: each run's session, the runner, the
//! warm pool and (through the session) the egress sandbox are reached
//! only through `Recipient`s made by a factory. [`Seats::real`] makes the
//! real actors; an actor test puts a mock in any seat.

use crate::actors::container_session::{
    real_sandbox, Cancel, ContainerSession, SandboxFactory, SessionContext, SessionNote, WriteInput,
};
use crate::actors::runner::{self, ListLive, Runner, RunnerConfig};
use crate::actors::warm_pool::{self, PoolConfig, WarmPool};
use crate::contract::RunnerState;
use crate::planning::{RunPlan, WorkerSettings};
use crate::runtime::SharedRuntime;
use actix::prelude::*;
use std::sync::Arc;
use tokio::sync::watch;

/// One run's session as its worker reaches it.
#[derive(Clone)]
pub struct SessionSeat {
    pub cancel: Recipient<Cancel>,
    pub input: Recipient<WriteInput>,
}

/// Starts one run's session: its plan, its context, whom to tell, and
/// the warm-pool container to run in (if any).
pub type SessionFactory = Arc<
    dyn Fn(RunPlan, SessionContext, Recipient<SessionNote>, Option<String>) -> SessionSeat
        + Send
        + Sync,
>;

/// The runner as its worker reaches it.
#[derive(Clone)]
pub struct RunnerSeat {
    pub status: Recipient<runner::Status>,
    pub start: Recipient<runner::Start>,
    pub remove_all: Recipient<runner::RemoveAll>,
    pub stopped: Recipient<runner::MarkStopped>,
    /// The runner's state as it changes.
    pub state: watch::Receiver<RunnerState>,
}

/// Starts the runner (engine pings, images, the reaper).
pub type RunnerFactory =
    Arc<dyn Fn(SharedRuntime, RunnerConfig, Recipient<ListLive>) -> RunnerSeat + Send + Sync>;

/// The warm pool as its worker reaches it.
#[derive(Clone)]
pub struct PoolSeat {
    pub take: Recipient<warm_pool::Take>,
    pub idle: Recipient<warm_pool::IdleCounts>,
    pub drain: Recipient<warm_pool::Drain>,
}

/// Starts the warm pool.
pub type PoolFactory =
    Arc<dyn Fn(SharedRuntime, Arc<WorkerSettings>, PoolConfig) -> PoolSeat + Send + Sync>;

/// Every seat of a worker.
#[derive(Clone)]
pub struct Seats {
    pub session: SessionFactory,
    pub runner: RunnerFactory,
    pub pool: PoolFactory,
    /// Each sandboxed run's sandbox (handed to its session).
    pub sandbox: SandboxFactory,
}

impl Seats {
    /// The real actors, each started on the current arbiter.
    pub fn real() -> Seats {
        Seats {
            session: Arc::new(|plan, cx, notify, pooled| {
                let mut session = ContainerSession::new(plan, cx, notify);
                if let Some(container) = pooled {
                    session = session.pooled(container);
                }
                let addr = session.start();
                SessionSeat {
                    cancel: addr.clone().recipient(),
                    input: addr.recipient(),
                }
            }),
            runner: Arc::new(|runtime, config, live| {
                let (runner, state) = Runner::new(runtime, config, live);
                let addr = runner.start();
                RunnerSeat {
                    status: addr.clone().recipient(),
                    start: addr.clone().recipient(),
                    remove_all: addr.clone().recipient(),
                    stopped: addr.recipient(),
                    state,
                }
            }),
            pool: Arc::new(|runtime, settings, config| {
                let addr = WarmPool::new(runtime, settings, config).start();
                PoolSeat {
                    take: addr.clone().recipient(),
                    idle: addr.clone().recipient(),
                    drain: addr.recipient(),
                }
            }),
            sandbox: real_sandbox(),
        }
    }
}
