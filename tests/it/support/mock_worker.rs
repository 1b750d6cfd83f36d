//! A mock worker actor in the Docker worker's seat: it speaks the worker
//! side of the container-events contract on a prefix, with switchable
//! misbehaviour (silence, malformed or duplicate replies, delays).

use actix::prelude::*;
use bus_containers::actors::bus::requester::BusIdentity;
use bus_containers::actors::bus::subscription::{Delivered, Subscription};
use bus_containers::broker::{SharedBroker, SubscribeSpec};
use bus_containers::contract::Publication;
use bus_containers::contract::{Kind, WORKER_GROUP};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the mock answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    Normal,
    Silent,
    /// Reply with this payload instead.
    Reply(Value),
    /// Answer run requests for another owner.
    WrongOwner,
    /// Answer, then the same reply again after 100 ms.
    Duplicate,
    /// Answer after this long.
    Delay(Duration),
}

/// What the mock saw and did, readable from the test.
#[derive(Debug, Default)]
pub struct Log {
    pub received: HashMap<&'static str, usize>,
    pub acted: HashMap<&'static str, usize>,
}

pub struct MockWorker {
    pub id: String,
    prefix: String,
    broker: SharedBroker,
    me: BusIdentity,
    behaviour: Behaviour,
    /// run id → owner
    runs: HashMap<String, String>,
    log: Arc<Mutex<Log>>,
    subs: Vec<Addr<Subscription>>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SetBehaviour(pub Behaviour);

#[derive(Message)]
#[rtype(result = "()")]
pub struct Hold {
    pub run_id: String,
    pub owner: String,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Subs(Vec<Addr<Subscription>>);

impl MockWorker {
    pub async fn start(
        broker: SharedBroker,
        id: &str,
        prefix: &str,
    ) -> (Addr<MockWorker>, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let addr = MockWorker {
            id: id.into(),
            prefix: prefix.into(),
            broker: broker.clone(),
            me: BusIdentity::service(format!("worker-{id}")),
            behaviour: Behaviour::Normal,
            runs: HashMap::new(),
            log: log.clone(),
            subs: Vec::new(),
        }
        .start();
        let mut subs = Vec::new();
        for k in Kind::ALL {
            let spec = if k == Kind::Run {
                SubscribeSpec::unicast(k.request(prefix), WORKER_GROUP)
            } else {
                SubscribeSpec::broadcast(k.request(prefix))
            };
            subs.push(
                Subscription::start(broker.clone(), spec.consumer(id), addr.clone().recipient())
                    .await
                    .unwrap(),
            );
        }
        addr.do_send(Subs(subs));
        (addr, log)
    }

    fn heartbeat(&self) {
        let payload = json!({"worker_id": self.id, "provider": "docker", "state": "ready", "runs": self.runs.len(), "capacity": 100});
        let env = self.me.envelope(Publication::new(
            format!("{}.worker.heartbeat", self.prefix),
            payload,
        ));
        let broker = self.broker.clone();
        actix_rt::spawn(async move {
            let _ = broker.publish(env).await;
        });
    }

    fn reply(&self, kind: Kind, correlation_id: String, payload: Value, ctx: &mut Context<Self>) {
        let env = self.me.envelope(
            Publication::new(kind.response(&self.prefix), payload).with_correlation(correlation_id),
        );
        let broker = self.broker.clone();
        let (delay, twice) = match &self.behaviour {
            Behaviour::Delay(d) => (*d, false),
            Behaviour::Duplicate => (Duration::ZERO, true),
            _ => (Duration::ZERO, false),
        };
        ctx.spawn(
            async move {
                if !delay.is_zero() {
                    actix_rt::time::sleep(delay).await;
                }
                let _ = broker.publish(env.clone()).await;
                if twice {
                    actix_rt::time::sleep(Duration::from_millis(100)).await;
                    let mut again = env;
                    again.id = bus_containers::contract::new_event_id();
                    let _ = broker.publish(again).await;
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for MockWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.heartbeat();
        ctx.run_interval(Duration::from_millis(500), |act, _| act.heartbeat());
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for s in self.subs.drain(..) {
            s.do_send(bus_containers::actors::bus::subscription::Stop);
        }
    }
}

impl Handler<Subs> for MockWorker {
    type Result = ();
    fn handle(&mut self, msg: Subs, _: &mut Self::Context) {
        self.subs = msg.0;
    }
}

impl Handler<SetBehaviour> for MockWorker {
    type Result = ();
    fn handle(&mut self, msg: SetBehaviour, _: &mut Self::Context) {
        self.behaviour = msg.0;
    }
}

impl Handler<Hold> for MockWorker {
    type Result = ();
    fn handle(&mut self, msg: Hold, _: &mut Self::Context) {
        self.runs.insert(msg.run_id, msg.owner);
    }
}

impl Handler<Delivered> for MockWorker {
    type Result = ();

    fn handle(&mut self, Delivered(event): Delivered, ctx: &mut Self::Context) {
        let Some(kind) = Kind::of_request(&self.prefix, &event.name) else {
            return;
        };
        let seg = kind.segment();
        self.log
            .lock()
            .unwrap()
            .received
            .entry(seg)
            .and_modify(|n| *n += 1)
            .or_insert(1);
        let Some(corr) = event.correlation_id.clone() else {
            return;
        };
        let p = &event.payload;
        let owner = p["owner_account_id"].as_str().unwrap_or("").to_owned();
        let run_id = p["run_id"].as_str().unwrap_or("").to_owned();
        // Per-run requests: only the worker holding the run acts.
        if matches!(kind, Kind::Input | Kind::Delete | Kind::RunQuery) {
            let addressed = p["worker_id"]
                .as_str()
                .map(|w| w == self.id)
                .unwrap_or(true);
            if !addressed || !self.runs.contains_key(&run_id) {
                return;
            }
        }
        self.log
            .lock()
            .unwrap()
            .acted
            .entry(seg)
            .and_modify(|n| *n += 1)
            .or_insert(1);
        let payload = match &self.behaviour {
            Behaviour::Silent => return,
            Behaviour::Reply(v) => v.clone(),
            _ => match kind {
                Kind::Run => {
                    let owner = if self.behaviour == Behaviour::WrongOwner {
                        "someone-else".to_owned()
                    } else {
                        owner
                    };
                    json!({"run_id": run_id, "owner_account_id": owner, "worker_id": self.id, "runner_name": "mock", "image": "mock", "args": p["command"], "exit_code": 0, "state": "succeeded", "stdout": format!("ran {run_id}"), "stderr": "", "stdout_truncated": false, "stderr_truncated": false, "duration_ms": 1, "runtime": {"provider": "mock"}})
                }
                Kind::Input => {
                    json!({"accepted": true, "run_id": run_id, "bytes": p["data"].as_str().map(str::len).unwrap_or(0), "worker_id": self.id})
                }
                Kind::Delete => {
                    self.runs.remove(&run_id);
                    json!({"deleted": true, "run_id": run_id, "owner_account_id": owner, "worker_id": self.id})
                }
                Kind::Status => {
                    let items: Vec<Value> = self
                        .runs
                        .iter()
                        .filter(|(_, o)| **o == owner)
                        .map(|(r, o)| json!({"id": r, "state": "running", "owner_account_id": o, "details": {"worker_id": self.id}}))
                        .collect();
                    json!({"items": items, "worker_id": self.id})
                }
                Kind::RunnerStatus => {
                    json!({"status": {"state": "ready", "provider": "docker", "details": {}}, "worker_id": self.id})
                }
                Kind::RunnerStart => {
                    json!({"accepted": true, "action": "start", "worker_id": self.id})
                }
                Kind::RunnerDelete => json!({"deleted": true, "worker_id": self.id}),
                Kind::RunQuery => {
                    json!({"run_id": run_id, "fate": "running", "worker_id": self.id})
                }
            },
        };
        self.reply(kind, corr, payload, ctx);
    }
}
