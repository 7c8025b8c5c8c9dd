//! The execution of one workflow instance as a pure state machine over a
//! checked [`Process`]: tokens move through the graph, service tasks and timers
//! block them, and the caller (the engine) persists the state, performs the
//! [`Effect`]s and reports task outcomes back. The whole state is serde, so the
//! engine stores it in PostgreSQL and resumes it after a restart: a token that
//! was `Working` when the engine died is executed again (at-least-once; the
//! engine passes [`Token::idempotency_key`] so receivers can deduplicate).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::bpmn::{NodeKind, Process, TaskAction};

/// Instance status (the seed's values plus `paused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created, not started.
    Pending,
    /// Tokens are moving or waiting.
    Running,
    /// Stopped by an operator; resumes on request.
    Paused,
    /// Every token reached an end event.
    Completed,
    /// An incident: a task exhausted its retries, or no flow could be taken.
    Failed,
    /// Cancelled by a caller.
    Cancelled,
}

/// Where a token is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TokenState {
    /// Can move now.
    Ready,
    /// A timer: moves on at `until`.
    Waiting {
        /// When.
        until: DateTime<Utc>,
    },
    /// Its service task was handed to the engine (attempt 1 = first try).
    Working {
        /// Attempt number.
        attempt: u32,
    },
    /// Its service task failed; tried again at `until`.
    Retrying {
        /// When.
        until: DateTime<Utc>,
        /// The attempt that will run.
        attempt: u32,
    },
    /// Arrived at a parallel join, waiting for the other branches.
    Joined,
}

/// A token: a position in the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Unique within the instance.
    pub id: u64,
    /// Node it is at.
    pub node: String,
    /// The flow it came through.
    pub via: Option<String>,
    /// What it is doing.
    #[serde(flatten)]
    pub state: TokenState,
}

impl Token {
    /// Key for receivers to deduplicate a service call: the same across retries
    /// of one task execution and across engine restarts.
    pub fn idempotency_key(&self, instance: &str) -> String {
        idempotency_key(instance, &self.node, self.id)
    }
}

/// The idempotency key of token `token`'s execution of `node` in `instance`.
pub fn idempotency_key(instance: &str, node: &str, token: u64) -> String {
    format!("{instance}:{node}:{token}")
}

/// A recorded failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Stable type: `task_failed`, `no_matching_flow`, `condition_error`.
    pub error_type: String,
    /// The message.
    pub error_message: String,
    /// The node.
    pub failed_step: String,
    /// Attempt it happened on.
    pub attempt: u32,
    /// When.
    pub at: DateTime<Utc>,
}

/// One entry of the instance's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The node.
    pub node: String,
    /// What happened (`entered`, `completed`, `retry`, `failed`, `timer_fired`, ...).
    pub what: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// What the engine must do after an advance.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Execute a service task for a token (persist the state first).
    Execute {
        /// The token.
        token: u64,
        /// The node.
        node: String,
        /// What to do.
        action: TaskAction,
        /// Attempt number (1 = first).
        attempt: u32,
    },
    /// Wake the instance at this time (timer or retry).
    WakeAt(DateTime<Utc>),
    /// The instance completed.
    Completed,
    /// The instance failed: an incident for the dead-letter queue.
    Failed(Failure),
}

/// The durable state of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Status.
    pub status: Status,
    /// Variables (parameters, trigger event, profile snapshot, ...).
    pub variables: Map<String, Value>,
    /// Outputs of completed service tasks, by node id.
    pub results: Map<String, Value>,
    /// Live tokens.
    pub tokens: Vec<Token>,
    /// Next token id.
    pub next_token: u64,
    /// Retries made per node.
    pub retries: BTreeMap<String, u32>,
    /// What happened, in order.
    pub history: Vec<Step>,
    /// The incident, when failed.
    pub failure: Option<Failure>,
}

/// Retry delay: `base * 2^(attempt-1)` capped at `max`, scaled by `jitter` in [0, 1) to 50–100 %.
pub fn retry_delay(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = base.num_milliseconds().saturating_mul(1_i64 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(max.num_milliseconds());
    Duration::milliseconds((capped as f64 * (0.5 + 0.5 * jitter.clamp(0.0, 1.0))) as i64)
}

/// Retry timing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// First delay.
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { base: Duration::seconds(1), max: Duration::minutes(5) }
    }
}

impl Instance {
    /// A new instance at the start event with `variables`.
    pub fn start(process: &Process, variables: Map<String, Value>, now: DateTime<Utc>) -> Self {
        Self {
            tokens: vec![Token { id: 1, node: process.start.clone(), via: None, state: TokenState::Ready }],
            next_token: 2,
            history: vec![Step { node: process.start.clone(), what: "started".into(), at: now }],
            ..Self::empty(variables)
        }
    }

    /// A running instance with no token yet (what an incident is raised on
    /// when the process cannot even start).
    pub fn empty(variables: Map<String, Value>) -> Self {
        Self {
            status: Status::Running,
            variables,
            results: Map::new(),
            tokens: vec![],
            next_token: 1,
            retries: BTreeMap::new(),
            history: vec![],
            failure: None,
        }
    }

    /// The node of the first token (for `current_step`).
    pub fn current_step(&self) -> Option<&str> {
        self.tokens.iter().find(|t| t.state != TokenState::Joined).or(self.tokens.first()).map(|t| t.node.as_str())
    }

    fn note(&mut self, node: &str, what: &str, now: DateTime<Utc>) {
        self.history.push(Step { node: node.to_owned(), what: what.to_owned(), at: now });
    }

    /// Fails the instance with an incident at `step`.
    fn fail(
        &mut self,
        error_type: &str,
        error_message: String,
        (step, attempt): (&str, u32),
        at: DateTime<Utc>,
    ) -> Vec<Effect> {
        let f = Failure { error_type: error_type.to_owned(), error_message, failed_step: step.to_owned(), attempt, at };
        self.note(step, "failed", at);
        self.status = Status::Failed;
        self.failure = Some(f.clone());
        vec![Effect::Failed(f)]
    }

    /// Raises an incident found outside the process (e.g. a definition that no
    /// longer parses) at the current step.
    pub fn raise(&mut self, error_type: &str, error_message: String, now: DateTime<Utc>) -> Vec<Effect> {
        let step = self.current_step().unwrap_or("").to_owned();
        self.fail(error_type, error_message, (&step, 0), now)
    }

    /// A new ready token at the target of `flow`.
    fn spawn(&mut self, process: &Process, flow: &str) {
        let id = self.next_token;
        self.next_token += 1;
        let node = process.flows[flow].target.clone();
        self.tokens.push(Token { id, node, via: Some(flow.to_owned()), state: TokenState::Ready });
    }

    /// Moves the token at `index` along `flow`.
    fn take(&mut self, process: &Process, index: usize, flow: &str) {
        self.tokens.remove(index);
        self.spawn(process, flow);
    }

    /// Moves the token at `index` along its node's single outgoing flow (checked
    /// by the parser for start events, tasks and timers).
    fn leave(&mut self, process: &Process, index: usize) {
        match process.nodes.get(&self.tokens[index].node).and_then(|n| n.outgoing.first()).cloned() {
            Some(flow) => self.take(process, index, &flow),
            None => {
                self.tokens.remove(index);
            }
        }
    }

    /// Moves every token as far as it can at `now`; returns what the engine must do.
    pub fn advance(&mut self, process: &Process, now: DateTime<Utc>) -> Vec<Effect> {
        if self.status != Status::Running {
            return vec![];
        }
        let mut effects = Vec::new();
        // Timers that are due move on; retries that are due run again.
        let mut fired = Vec::new();
        for t in &mut self.tokens {
            match t.state {
                TokenState::Waiting { until } if until <= now => {
                    fired.push(t.id);
                    self.history.push(Step { node: t.node.clone(), what: "timer_fired".into(), at: now });
                }
                TokenState::Retrying { until, attempt } if until <= now => {
                    t.state = TokenState::Working { attempt };
                    if let Some(NodeKind::Task { action, .. }) = process.nodes.get(&t.node).map(|n| &n.kind) {
                        effects.push(Effect::Execute {
                            token: t.id,
                            node: t.node.clone(),
                            action: action.clone(),
                            attempt,
                        });
                    }
                }
                _ => {}
            }
        }
        for id in fired {
            if let Some(i) = self.tokens.iter().position(|t| t.id == id) {
                self.leave(process, i);
            }
        }
        let vars = Value::Object(self.scope());
        let mut moves = 0;
        while let Some(i) = self.tokens.iter().position(|t| t.state == TokenState::Ready) {
            moves += 1;
            if moves > 10_000 {
                let step = self.tokens[i].node.clone();
                let message = "more than 10000 moves in one advance; the process loops without waiting";
                return self.fail("loop", message.into(), (&step, 0), now);
            }
            let token = self.tokens[i].clone();
            let Some(node) = process.nodes.get(&token.node) else {
                let message = format!("node '{}' is not in the process (changed definition?)", token.node);
                return self.fail("unknown_node", message, (&token.node, 0), now);
            };
            match &node.kind {
                NodeKind::Start => self.leave(process, i),
                NodeKind::End => {
                    self.tokens.remove(i);
                    self.note(&node.id, "ended", now);
                }
                NodeKind::Task { action, .. } => {
                    self.tokens[i].state = TokenState::Working { attempt: 1 };
                    self.note(&node.id, "entered", now);
                    effects.push(Effect::Execute {
                        token: token.id,
                        node: node.id.clone(),
                        action: action.clone(),
                        attempt: 1,
                    });
                }
                NodeKind::Timer { duration } => {
                    let until = now + Duration::from_std(*duration).unwrap_or(Duration::zero());
                    self.tokens[i].state = TokenState::Waiting { until };
                    self.note(&node.id, "waiting", now);
                }
                NodeKind::Exclusive { default } => {
                    let mut chosen = None;
                    for f in node.outgoing.iter().filter(|f| Some(*f) != default.as_ref()) {
                        match process.flows[f].condition.as_ref().map(|c| c.test(&vars)) {
                            Some(Ok(true)) | None => {
                                chosen = Some(f.clone());
                                break;
                            }
                            Some(Ok(false)) => {}
                            Some(Err(e)) => {
                                return self.fail("condition_error", format!("flow '{f}': {e}"), (&node.id, 0), now);
                            }
                        }
                    }
                    let Some(f) = chosen.or_else(|| default.clone()) else {
                        let message = "no outgoing condition holds and there is no default flow";
                        return self.fail("no_matching_flow", message.into(), (&node.id, 0), now);
                    };
                    self.note(&node.id, &format!("took {f}"), now);
                    self.take(process, i, &f);
                }
                NodeKind::Parallel => {
                    self.tokens[i].state = TokenState::Joined;
                    let arrived: Vec<usize> = node
                        .incoming
                        .iter()
                        .filter_map(|f| {
                            self.tokens.iter().position(|t| {
                                t.node == node.id && t.state == TokenState::Joined && t.via.as_deref() == Some(f)
                            })
                        })
                        .collect();
                    if arrived.len() == node.incoming.len() {
                        let mut gone = arrived;
                        gone.sort_unstable();
                        for idx in gone.into_iter().rev() {
                            self.tokens.remove(idx);
                        }
                        self.note(&node.id, "passed", now);
                        for f in &node.outgoing {
                            self.spawn(process, f);
                        }
                    }
                }
            }
        }
        if self.tokens.is_empty() {
            self.status = Status::Completed;
            effects.push(Effect::Completed);
        } else if let Some(at) = self.next_wake() {
            effects.push(Effect::WakeAt(at));
        }
        effects
    }

    /// The earliest timer or retry among the tokens.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.tokens
            .iter()
            .filter_map(|t| match t.state {
                TokenState::Waiting { until } | TokenState::Retrying { until, .. } => Some(until),
                _ => None,
            })
            .min()
    }

    /// Picks a stored instance up again (after a restart, a lost lease or a
    /// re-run): tasks that were executing run again under the same
    /// idempotency key, then everything due moves on.
    pub fn resume(&mut self, process: &Process, now: DateTime<Utc>) -> Vec<Effect> {
        if self.status != Status::Running {
            return vec![];
        }
        let mut effects: Vec<Effect> = self
            .tokens
            .iter()
            .filter_map(|t| match (&t.state, process.nodes.get(&t.node).map(|n| &n.kind)) {
                (TokenState::Working { attempt }, Some(NodeKind::Task { action, .. })) => Some(Effect::Execute {
                    token: t.id,
                    node: t.node.clone(),
                    action: action.clone(),
                    attempt: *attempt,
                }),
                _ => None,
            })
            .collect();
        effects.extend(self.advance(process, now));
        effects
    }

    /// Retries made over all nodes.
    pub fn retry_count(&self) -> u32 {
        self.retries.values().sum()
    }

    /// Variables as conditions see them: the variables plus `results`.
    pub fn scope(&self) -> Map<String, Value> {
        let mut scope = self.variables.clone();
        scope.insert("results".into(), Value::Object(self.results.clone()));
        scope
    }

    /// Reports the outcome of token `token`'s task. Success stores the output
    /// and moves on; failure schedules a retry after `retry_delay` (jitter in
    /// [0, 1)) or, past the node's retry limit, fails the instance.
    pub fn task_done(
        &mut self,
        process: &Process,
        token: u64,
        outcome: Result<Value, String>,
        (now, policy, jitter): (DateTime<Utc>, RetryPolicy, f64),
    ) -> Vec<Effect> {
        if self.status != Status::Running {
            return vec![]; // the instance failed (another branch) or was cancelled meanwhile
        }
        let Some(i) = self.tokens.iter().position(|t| t.id == token) else {
            return vec![]; // a late report for a token already gone (cancelled or re-run)
        };
        let TokenState::Working { attempt } = self.tokens[i].state else {
            return vec![];
        };
        let node = self.tokens[i].node.clone();
        match outcome {
            Ok(output) => {
                self.results.insert(node.clone(), output);
                self.note(&node, "completed", now);
                self.leave(process, i);
                self.advance(process, now)
            }
            Err(message) => {
                *self.retries.entry(node.clone()).or_default() += 1;
                if attempt <= process.retries_of(&node) {
                    let until = now + retry_delay(attempt, policy.base, policy.max, jitter);
                    self.tokens[i].state = TokenState::Retrying { until, attempt: attempt + 1 };
                    self.note(&node, &format!("retry {attempt}: {message}"), now);
                    vec![Effect::WakeAt(until)]
                } else {
                    self.fail("task_failed", message, (&node, attempt), now)
                }
            }
        }
    }

    /// A task attempt that must not be retried (its target is refused by
    /// policy): an incident at once, with `error_type` as its reason. A rerun
    /// after the cause is fixed starts the task again.
    pub fn task_refused(&mut self, token: u64, error_type: &str, message: String, now: DateTime<Utc>) -> Vec<Effect> {
        if self.status != Status::Running {
            return vec![];
        }
        let Some(t) = self.tokens.iter().find(|t| t.id == token) else { return vec![] };
        let TokenState::Working { attempt } = t.state else { return vec![] };
        let node = t.node.clone();
        *self.retries.entry(node.clone()).or_default() += 1;
        self.fail(error_type, message, (&node, attempt), now)
    }

    /// Re-runs a failed instance (an incident resolved by an operator): the
    /// failed task's token starts again with a fresh retry budget.
    pub fn rerun(&mut self, process: &Process, now: DateTime<Utc>) -> Vec<Effect> {
        if self.status != Status::Failed {
            return vec![];
        }
        for t in &mut self.tokens {
            if matches!(t.state, TokenState::Working { .. } | TokenState::Retrying { .. }) {
                let fresh = self.next_token;
                self.next_token += 1;
                t.id = fresh; // a new execution: a new idempotency key
                t.state = TokenState::Ready;
            }
        }
        self.status = Status::Running;
        self.failure = None;
        self.note("", "rerun", now);
        self.advance(process, now)
    }

    /// Cancels the instance.
    pub fn cancel(&mut self, now: DateTime<Utc>) -> bool {
        if matches!(self.status, Status::Completed | Status::Cancelled) {
            return false;
        }
        self.status = Status::Cancelled;
        self.tokens.clear();
        self.note("", "cancelled", now);
        true
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::workflow::bpmn::tests::PURCHASE_FOLLOW_UP;

    fn t(s: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_400_000 + i64::from(s), 0).unwrap_or_default()
    }

    fn executes(effects: &[Effect]) -> Vec<(u64, String, u32)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Execute { token, node, attempt, .. } => Some((*token, node.clone(), *attempt)),
                _ => None,
            })
            .collect()
    }

    fn vars(amount: f64) -> Map<String, Value> {
        json!({"amount": amount}).as_object().cloned().unwrap_or_default()
    }

    const NO_JITTER: f64 = 1.0;

    #[test]
    fn a_big_purchase_runs_gateway_task_timer_fork_and_join() -> Result<(), String> {
        let p = Process::parse(PURCHASE_FOLLOW_UP).map_err(|e| e.to_string())?;
        let mut i = Instance::start(&p, vars(150.0), t(0));
        let fx = i.advance(&p, t(0));
        assert_eq!(executes(&fx), vec![(3, "thank".into(), 1)], "gateway chose the big branch");
        assert_eq!(i.current_step(), Some("thank"));
        // The state survives a round trip (what the engine stores).
        let mut i: Instance =
            serde_json::from_value(serde_json::to_value(&i).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let fx = i.task_done(&p, 3, Ok(json!({"status": 200})), (t(1), RetryPolicy::default(), NO_JITTER));
        assert_eq!(fx, vec![Effect::WakeAt(t(3))], "the 2 s timer");
        assert!(i.advance(&p, t(2)).contains(&Effect::WakeAt(t(3))), "not yet");
        let fx = i.advance(&p, t(3));
        let mut running = executes(&fx);
        running.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(running.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(), vec!["emit", "tag"], "forked");
        let (tag, emit) = (running[1].0, running[0].0);
        assert!(i.task_done(&p, tag, Ok(json!({})), (t(4), RetryPolicy::default(), NO_JITTER)).is_empty());
        assert_eq!(i.status, Status::Running, "the join waits for the other branch");
        let fx = i.task_done(&p, emit, Ok(json!({"offset": 7})), (t(5), RetryPolicy::default(), NO_JITTER));
        assert_eq!(fx, vec![Effect::Completed]);
        assert_eq!(i.status, Status::Completed);
        assert_eq!(i.results["thank"], json!({"status": 200}));
        assert!(i.tokens.is_empty());
        Ok(())
    }

    #[test]
    fn a_resumed_instance_runs_its_in_flight_task_again_under_the_same_key() -> Result<(), String> {
        let p = Process::parse(PURCHASE_FOLLOW_UP).map_err(|e| e.to_string())?;
        let mut i = Instance::start(&p, vars(150.0), t(0));
        let first = executes(&i.advance(&p, t(0)));
        // The engine stored this state, called the service and died before recording the answer.
        let mut back: Instance =
            serde_json::from_value(serde_json::to_value(&i).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        assert_eq!(executes(&back.resume(&p, t(30))), first, "same token, same attempt: same idempotency key");
        assert!(back.advance(&p, t(31)).is_empty(), "advance alone does not re-run a working task");
        Ok(())
    }

    #[test]
    fn a_small_purchase_takes_the_default_flow() -> Result<(), String> {
        let p = Process::parse(PURCHASE_FOLLOW_UP).map_err(|e| e.to_string())?;
        let mut i = Instance::start(&p, vars(20.0), t(0));
        assert_eq!(i.advance(&p, t(0)), vec![Effect::Completed]);
        assert!(i.history.iter().any(|s| s.what == "took f_small"));
        Ok(())
    }

    #[test]
    fn failing_three_times_then_succeeding_records_three_retries() -> Result<(), String> {
        let p = Process::parse(PURCHASE_FOLLOW_UP).map_err(|e| e.to_string())?;
        let mut i = Instance::start(&p, vars(150.0), t(0));
        let mut token = executes(&i.advance(&p, t(0)))[0].0;
        let policy = RetryPolicy { base: Duration::seconds(1), max: Duration::seconds(60) };
        let mut now = 0;
        for attempt in 1..=3 {
            let fx = i.task_done(&p, token, Err("HTTP 503".into()), (t(now), policy, NO_JITTER));
            let [Effect::WakeAt(at)] = fx.as_slice() else { return Err(format!("{fx:?}")) };
            assert_eq!(*at, t(now + (1 << (attempt - 1))), "exponential backoff");
            now += 1 << (attempt - 1);
            let again = executes(&i.advance(&p, t(now)));
            assert_eq!(again, vec![(token, "thank".into(), attempt + 1)], "same token, next attempt");
            token = again[0].0;
        }
        let fx = i.task_done(&p, token, Ok(json!({"status": 200})), (t(now), policy, NO_JITTER));
        assert_eq!(fx, vec![Effect::WakeAt(t(now + 2))], "on to the timer");
        assert_eq!(i.retries["thank"], 3);
        assert_eq!(i.history.iter().filter(|s| s.what.starts_with("retry")).count(), 3);
        Ok(())
    }

    #[test]
    fn exhausted_retries_fail_and_a_rerun_completes() -> Result<(), String> {
        let p = Process::parse(PURCHASE_FOLLOW_UP).map_err(|e| e.to_string())?;
        let mut i = Instance::start(&p, vars(150.0), t(0));
        let mut token = executes(&i.advance(&p, t(0)))[0].0;
        let policy = RetryPolicy::default();
        let mut fx = vec![];
        for s in 0..=p.max_retries {
            fx = i.task_done(&p, token, Err("connection refused".into()), (t(s * 100), policy, 0.0));
            if let Some((tok, _, _)) = executes(&i.advance(&p, t(s * 100 + 99))).first() {
                token = *tok;
            }
        }
        let [Effect::Failed(f)] = fx.as_slice() else { return Err(format!("{fx:?}")) };
        assert_eq!((f.error_type.as_str(), f.failed_step.as_str(), f.attempt), ("task_failed", "thank", 5));
        assert_eq!(f.error_message, "connection refused");
        assert_eq!(i.status, Status::Failed);
        let fx = i.rerun(&p, t(1000));
        let again = executes(&fx);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].0, token, "a re-run is a new execution with a new idempotency key");
        assert_eq!(again[0].2, 1, "with a fresh retry budget");
        assert_eq!(i.status, Status::Running);
        Ok(())
    }

    #[test]
    fn a_refused_target_is_an_incident_at_once_and_a_rerun_tries_again() -> Result<(), String> {
        let p = Process::parse(PURCHASE_FOLLOW_UP).map_err(|e| e.to_string())?;
        let mut i = Instance::start(&p, vars(150.0), t(0));
        let token = executes(&i.advance(&p, t(0)))[0].0;
        let fx = i.task_refused(token, "egress_refused", "10.0.0.1 is a private address".into(), t(1));
        let [Effect::Failed(f)] = fx.as_slice() else { return Err(format!("{fx:?}")) };
        assert_eq!((f.error_type.as_str(), f.failed_step.as_str(), f.attempt), ("egress_refused", "thank", 1));
        assert_eq!(i.status, Status::Failed);
        assert!(i.task_refused(token, "egress_refused", "again".into(), t(2)).is_empty(), "reported once");
        let again = executes(&i.rerun(&p, t(3)));
        assert_eq!((again.len(), again[0].2), (1, 1), "a rerun starts the task afresh");
        Ok(())
    }

    #[test]
    fn once_failed_the_other_branch_reports_nothing_and_a_rerun_repeats_it() -> Result<(), String> {
        let p = Process::parse(PURCHASE_FOLLOW_UP).map_err(|e| e.to_string())?;
        let mut i = Instance::start(&p, vars(150.0), t(0));
        let thank = executes(&i.advance(&p, t(0)))[0].0;
        i.task_done(&p, thank, Ok(json!({})), (t(1), RetryPolicy::default(), NO_JITTER));
        let forked = executes(&i.advance(&p, t(3)));
        let id_of = |n: &str| forked.iter().find(|e| e.1 == n).map(|e| e.0).unwrap_or_default();
        let (tag, emit) = (id_of("tag"), id_of("emit"));
        // tag allows 1 retry: two failures fail the instance while emit is still running.
        i.task_done(&p, tag, Err("boom".into()), (t(4), RetryPolicy::default(), NO_JITTER));
        let again = executes(&i.advance(&p, t(10)))[0].0;
        let fx = i.task_done(&p, again, Err("boom".into()), (t(11), RetryPolicy::default(), NO_JITTER));
        assert!(matches!(fx.as_slice(), [Effect::Failed(_)]), "{fx:?}");
        assert!(i.task_done(&p, emit, Ok(json!({})), (t(12), RetryPolicy::default(), NO_JITTER)).is_empty());
        assert!(i.task_done(&p, emit, Err("x".into()), (t(12), RetryPolicy::default(), NO_JITTER)).is_empty());
        assert_eq!(i.status, Status::Failed, "one incident, not two");
        let rerun: Vec<String> = executes(&i.rerun(&p, t(20))).into_iter().map(|e| e.1).collect();
        assert_eq!(rerun.len(), 2, "both unfinished branches run again: {rerun:?}");
        Ok(())
    }

    #[test]
    fn condition_errors_and_cancel() -> Result<(), String> {
        let p = Process::parse(PURCHASE_FOLLOW_UP).map_err(|e| e.to_string())?;
        let mut i = Instance::start(&p, json!({"amount": "lots"}).as_object().cloned().unwrap_or_default(), t(0));
        let fx = i.advance(&p, t(0));
        assert!(matches!(fx.as_slice(), [Effect::Failed(f)] if f.error_type == "condition_error"), "{fx:?}");
        let mut i = Instance::start(&p, vars(150.0), t(0));
        let token = executes(&i.advance(&p, t(0)))[0].0;
        assert!(i.cancel(t(1)));
        assert_eq!(i.status, Status::Cancelled);
        assert!(
            i.task_done(&p, token, Ok(json!({})), (t(2), RetryPolicy::default(), 0.0)).is_empty(),
            "late reports are ignored"
        );
        assert!(!i.cancel(t(3)));
        Ok(())
    }

    #[test]
    fn retry_delays_grow_are_capped_and_jittered() {
        let (base, max) = (Duration::seconds(1), Duration::seconds(10));
        assert_eq!(retry_delay(1, base, max, 1.0), Duration::seconds(1));
        assert_eq!(retry_delay(3, base, max, 1.0), Duration::seconds(4));
        assert_eq!(retry_delay(9, base, max, 1.0), Duration::seconds(10));
        assert_eq!(retry_delay(3, base, max, 0.0), Duration::seconds(2), "jitter keeps at least half");
    }

    #[test]
    fn keys_are_stable_per_execution() {
        let tok = Token { id: 7, node: "thank".into(), via: None, state: TokenState::Working { attempt: 2 } };
        assert_eq!(tok.idempotency_key("i-1"), "i-1:thank:7");
    }
}
