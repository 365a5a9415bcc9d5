//! The one check of a job spec, alone or in a batch: kind, queue, fields, payload, callback.

use std::collections::HashMap;

use super::{Engine, EngineError};
use crate::domain::{
    FieldError, JobSpec, NewJob, OnConflict, QueueConfig, SpecContext, Timestamp, TraceContext,
    job_pointer,
};

/// One thing wrong with a job spec. An unknown kind or queue is told apart:
/// a single job is refused with a code of its own for it (`unknown_kind`,
/// `unknown_queue`), a batch lists it among its jobs' field errors.
#[derive(Debug)]
pub(super) enum Problem {
    UnknownKind { at: String, kind: String },
    UnknownQueue { at: String, queue: String },
    Field(FieldError),
}

/// Checks the job specs of one request: a single job, or each job of a
/// batch in turn (which may not repeat a key another job of it holds).
pub(super) struct SpecCheck<'a> {
    engine: &'a Engine,
    tenant: &'a str,
    now: Timestamp,
    trace: Option<TraceContext>,
    /// Queues looked up so far: a batch's jobs mostly share one.
    queues: HashMap<String, Option<QueueConfig>>,
    /// The index of the last job of the batch with each key.
    keys: HashMap<String, usize>,
    /// Rate limits the specs name, each with the pointer of its first
    /// mention: whether they exist is a read of the store, made once for
    /// the whole request by `unknown_limits`.
    limits: HashMap<String, String>,
}

impl<'a> SpecCheck<'a> {
    pub(super) fn new(
        engine: &'a Engine,
        tenant: &'a str,
        now: Timestamp,
        trace: Option<TraceContext>,
    ) -> Self {
        Self {
            engine,
            tenant,
            now,
            trace,
            queues: HashMap::new(),
            keys: HashMap::new(),
            limits: HashMap::new(),
        }
    }

    /// The rate limits named by the specs checked that do not exist. A
    /// queue's default limit is not checked here: `PUT /v1/queues` did, and
    /// a limit deleted since holds nothing back.
    pub(super) async fn unknown_limits(&self) -> Result<Vec<FieldError>, EngineError> {
        let mut errors = Vec::new();
        for (name, pointer) in &self.limits {
            if self.engine.inner.store.get_limit(name).await?.is_none() {
                errors.push(FieldError::new(
                    pointer.clone(),
                    format!("no rate limit `{name}`: create it with PUT /v1/limits/{name}"),
                ));
            }
        }
        errors.sort_by(|a, b| a.pointer.cmp(&b.pointer));
        Ok(errors)
    }

    /// The job `spec` describes and its queue, or all that is wrong with it
    /// in the order checked. Pointers start with the job's place in the
    /// body: none alone, `/jobs/3` as the fourth job of a batch (`ctx.batch`).
    /// The payload and the callback are checked only once all else holds.
    pub(super) fn check(
        &mut self,
        spec: JobSpec,
        ctx: SpecContext<'_>,
    ) -> Result<(NewJob, QueueConfig), Vec<Problem>> {
        let at = ctx
            .batch
            .map_or_else(String::new, |(_, index, _)| job_pointer(index));
        let kinds = &self.engine.inner.kinds;
        let mut problems = Vec::new();
        if !kinds.contains(&spec.kind) {
            problems.push(Problem::UnknownKind {
                at: at.clone(),
                kind: spec.kind.clone(),
            });
        }
        let queue_name = spec
            .queue
            .clone()
            .unwrap_or_else(|| QueueConfig::DEFAULT_NAME.to_owned());
        let queue = self
            .queues
            .entry(queue_name.clone())
            .or_insert_with(|| self.engine.queue_config(&queue_name))
            .clone();
        if queue.is_none() {
            problems.push(Problem::UnknownQueue {
                at: at.clone(),
                queue: queue_name,
            });
        }
        if let Some((_, index, _)) = ctx.batch {
            problems.extend(self.batch_rules(&spec, index).map(Problem::Field));
        }
        if let Some(limit) = &spec.rate_limit
            && !self.limits.contains_key(&limit.name)
        {
            self.limits
                .insert(limit.name.clone(), format!("{at}/rate_limit/name"));
        }
        let Some(queue) = queue else {
            return Err(problems);
        };
        let mut job = match spec.validate(self.tenant, &queue, self.now, ctx) {
            Ok(job) if problems.is_empty() => job,
            Ok(_) => return Err(problems),
            Err(errors) => {
                problems.extend(errors.into_iter().map(Problem::Field));
                return Err(problems);
            }
        };
        job.trace = self.trace.clone();
        // A single job's pointers are constants: a valid job builds none.
        let payload_at = if at.is_empty() {
            std::borrow::Cow::Borrowed("/payload")
        } else {
            std::borrow::Cow::Owned(format!("{at}/payload"))
        };
        let mut errors = kinds.validate_payload(&job.kind, &job.payload, &payload_at);
        if job.callback_url.is_some() {
            errors.extend(
                self.engine
                    .check_callback(job.callback_url.as_deref(), format!("{at}/callback_url")),
            );
        }
        if errors.is_empty() {
            Ok((job, queue))
        } else {
            Err(errors.into_iter().map(Problem::Field).collect())
        }
    }

    /// What a job of a batch may not do that a single job may: a batch is
    /// stored whole, so no job of it can defer to a holder of its key, and
    /// two of its jobs cannot both hold one.
    fn batch_rules(&mut self, spec: &JobSpec, index: usize) -> impl Iterator<Item = FieldError> {
        let at = job_pointer(index);
        let existing = (spec.on_conflict == Some(OnConflict::Existing)).then(|| {
            FieldError::new(
                format!("{at}/on_conflict"),
                "`existing` is not available inside a batch (a batch is stored whole)",
            )
        });
        let repeated = spec.key.as_ref().and_then(|key| {
            let first = self.keys.insert(key.clone(), index)?;
            Some(FieldError::new(
                format!("{at}/key"),
                format!("the same key as {}", job_pointer(first)),
            ))
        });
        existing.into_iter().chain(repeated)
    }
}

impl Problem {
    /// The problem as a field error, as a batch lists it.
    pub(super) fn into_field(self, engine: &Engine) -> FieldError {
        match self {
            Problem::UnknownKind { at, kind } => FieldError::new(
                format!("{at}/kind"),
                format!(
                    "unknown kind `{kind}`; known: {}",
                    engine.inner.kinds.names().join(", ")
                ),
            ),
            Problem::UnknownQueue { at, queue } => FieldError::new(
                format!("{at}/queue"),
                format!(
                    "unknown queue `{queue}`; known: {}",
                    engine.queue_names().join(", ")
                ),
            ),
            Problem::Field(error) => error,
        }
    }
}

impl Engine {
    /// A single job's refusal: the first problem decides whether it is an
    /// unknown kind, an unknown queue or invalid fields.
    pub(super) fn refusal(&self, problems: Vec<Problem>) -> EngineError {
        let mut problems = problems.into_iter();
        match problems.next() {
            Some(Problem::UnknownKind { kind, .. }) => EngineError::UnknownKind {
                kind,
                known: self.inner.kinds.names(),
            },
            Some(Problem::UnknownQueue { queue, .. }) => EngineError::UnknownQueue {
                queue,
                known: self.queue_names(),
            },
            first => EngineError::Validation(
                first
                    .into_iter()
                    .chain(problems)
                    .map(|problem| problem.into_field(self))
                    .collect(),
            ),
        }
    }

    /// Checks a submitted `callback_url` against the outbound rules (where
    /// that can be done before a lookup), and that webhooks are on at all.
    pub(super) fn check_callback(&self, url: Option<&str>, pointer: String) -> Option<FieldError> {
        let url = url?;
        let problem = match &self.inner.webhooks {
            None => "webhooks are off on this service: it needs SPOOL_WEBHOOK_SECRET to sign them"
                .to_owned(),
            Some(webhooks) => webhooks.check_url(url).err()?,
        };
        Some(FieldError::new(pointer, problem))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Value, json};

    use super::*;
    use crate::domain::{BatchId, JobId};
    use crate::engine::EngineSettings;
    use crate::kinds::KindRegistry;
    use crate::store::SqliteStore;

    async fn engine() -> (Engine, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("validation.db").display());
        let store = SqliteStore::open(&url).await.expect("the store opens");
        let kinds = KindRegistry::new(KindRegistry::builtin()).expect("the built-in kinds");
        let engine = Engine::start(
            Arc::new(store),
            kinds,
            EngineSettings::default(),
            vec![],
            None,
        )
        .await
        .expect("the engine starts");
        (engine, dir)
    }

    fn spec(body: &Value) -> JobSpec {
        serde_json::from_value(body.clone()).expect("a job spec")
    }

    /// How `body` is refused as a single job (`None`: it is not).
    fn alone(engine: &Engine, body: &Value) -> Option<EngineError> {
        let ctx = SpecContext {
            id: JobId::new(),
            batch: None,
        };
        let mut check = SpecCheck::new(engine, "t", Timestamp::now(), None);
        check
            .check(spec(body), ctx)
            .err()
            .map(|problems| engine.refusal(problems))
    }

    /// The pointers of the field errors of `bodies` as the jobs of a batch.
    fn in_batch(engine: &Engine, bodies: &[Value]) -> Vec<String> {
        let ids: Vec<JobId> = bodies.iter().map(|_| JobId::new()).collect();
        let batch = BatchId::new();
        let mut check = SpecCheck::new(engine, "t", Timestamp::now(), None);
        let mut pointers = Vec::new();
        for (index, body) in bodies.iter().enumerate() {
            let ctx = SpecContext {
                id: ids[index],
                batch: Some((batch, index, &ids)),
            };
            if let Err(problems) = check.check(spec(body), ctx) {
                pointers.extend(problems.into_iter().map(|p| p.into_field(engine).pointer));
            }
        }
        pointers
    }

    fn pointers(refusal: Option<EngineError>) -> Vec<String> {
        match refusal {
            Some(EngineError::Validation(errors)) => {
                errors.into_iter().map(|e| e.pointer).collect()
            }
            other => panic!("not invalid fields: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_job_spec_is_checked_alike_alone_and_in_a_batch_but_for_its_pointers() {
        let (engine, _dir) = engine().await;
        let ok = json!({"kind": "noop"});
        // The payload is checked only once the fields hold.
        let body = json!({"kind": "sleep", "priority": 500, "payload": {"ms": "soon"}});
        assert_eq!(pointers(alone(&engine, &body)), ["/priority"]);
        assert_eq!(in_batch(&engine, &[ok.clone(), body]), ["/jobs/1/priority"]);
        // Webhooks are off here, so any callback is refused.
        let body = json!({
            "kind": "sleep",
            "payload": {"ms": "soon"},
            "callback_url": "https://example.com/",
        });
        assert_eq!(
            pointers(alone(&engine, &body)),
            ["/payload/ms", "/callback_url"]
        );
        assert_eq!(
            in_batch(&engine, &[ok, body]),
            ["/jobs/1/payload/ms", "/jobs/1/callback_url"]
        );
        engine.shutdown().await;
    }

    #[tokio::test]
    async fn an_unknown_kind_or_queue_has_an_error_of_its_own_alone_and_is_a_field_in_a_batch() {
        let (engine, _dir) = engine().await;
        let body = json!({"kind": "nope", "queue": "nowhere", "priority": 500});
        assert!(matches!(
            alone(&engine, &body),
            Some(EngineError::UnknownKind { kind, .. }) if kind == "nope"
        ));
        assert_eq!(
            in_batch(&engine, &[body]),
            ["/jobs/0/kind", "/jobs/0/queue"]
        );
        let body = json!({"kind": "noop", "queue": "nowhere"});
        assert!(matches!(
            alone(&engine, &body),
            Some(EngineError::UnknownQueue { queue, .. }) if queue == "nowhere"
        ));
        engine.shutdown().await;
    }

    #[tokio::test]
    async fn inside_a_batch_keys_are_distinct_and_on_conflict_existing_is_refused() {
        let (engine, _dir) = engine().await;
        let first = json!({"kind": "noop", "key": "k"});
        let again = json!({"kind": "noop", "key": "k", "on_conflict": "existing"});
        assert!(alone(&engine, &again).is_none());
        assert_eq!(
            in_batch(&engine, &[first, again]),
            ["/jobs/1/on_conflict", "/jobs/1/key"]
        );
        engine.shutdown().await;
    }
}
