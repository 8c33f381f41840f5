//! Azure Storage Queues as the job broker: every call zerobatch makes to the storage account, in
//! one place, through the official Azure SDK for Rust (`azure_storage_queue`,
//! `azure_storage_blob`, `azure_identity`).
//!
//! What lives where, for a queue `Q` (`--queue azure-queue://ACCOUNT/Q`):
//! - queue `Q`: the jobs, one message each holding the JSON envelope (raw, or base64 as the
//!   older SDKs and Azure Functions write it);
//! - queue `Q-dead`: the dead letters (`job`, `error`, `message_id`, `deliveries`);
//! - blob container `Q`, blob `jobs/ID.json`: each job's record (state, route, and once ended
//!   its HTTP status and answer). Queues cannot be read by key, so the state that `/v1/jobs`
//!   serves, and the write-once result, live in a blob per job id. Results have no size limit
//!   there (a queue message holds 64 KiB);
//! - queue `R` when the URL says `results=R`: a notification per finished job (`id`, `state`,
//!   `status`, and `result` when it fits in a message), for producers that consume results as
//!   a stream.
//!
//! How the delivery guarantees map onto Azure (docs/queue.md explains them for users):
//! - a received message is invisible for `--queue-visibility-timeout-ms` (rounded up to whole
//!   seconds, as the service counts); a running job pushes its visibility out every third of
//!   that, which renews its pop receipt; a replica that dies simply stops renewing, and the
//!   message comes back for any replica;
//! - `DequeueCount` is the delivery count: past `--queue-max-deliveries` the message goes to
//!   `Q-dead`;
//! - a job's record changes only by conditional writes (`If-None-Match: *` to create,
//!   `If-Match: ETAG` to change), so a result is written once per job id even when two
//!   deliveries of one message race, and a cancel cannot overwrite a start;
//! - the message is deleted only after the record holds the result.
//!
//! Azure queues have no blocking read: an idle replica asks again after a pause that doubles
//! from 50 ms to 1 s, and returns to asking at once after a read that found work
//! ([`IdlePolling`]).

use std::time::{Duration, SystemTime};

use azure_core::http::{Etag, RequestContent, StatusCode};
use azure_storage_blob::models::BlockBlobClientUploadOptions;
use azure_storage_blob::{BlobContainerClient, BlobContainerClientOptions};
use azure_storage_queue::models::{
    QueueClientGetPropertiesResultHeaders, QueueClientReceiveMessagesOptions, QueueMessage,
};
use azure_storage_queue::{QueueClient, QueueClientOptions};
use base64::Engine;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::azure_auth::Auth;
use super::idle_polling::{IdlePolling, Next};
use super::job::{Backlog, BrokerError, Cancel, Delivery, Health, JobRecord, Start};
use crate::config::{AzureCredentials, AzureTarget};

/// Most messages one receive may return (the service's limit).
const MAX_RECEIVE: usize = 32;
/// The largest message the service takes, in bytes of message text.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Attempts at a conditional record write that keeps meeting a concurrent change.
const RECORD_ATTEMPTS: usize = 5;

/// A job's record as stored in its blob.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    state: String,
    route: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<String>,
}

/// What reading a job's record found.
enum Found {
    /// No record.
    Nothing,
    /// An ended record older than the result TTL: treated as gone, overwritten by a new run.
    Expired(Etag),
    /// The record and its version.
    Live(Record, Etag),
}

fn ended(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

/// An Azure storage queue with its dead-letter queue, records container and optional results
/// queue.
pub struct AzureQueue {
    target: AzureTarget,
    consumer: String,
    result_ttl: Duration,
    jobs: QueueClient,
    dead: QueueClient,
    results: Option<QueueClient>,
    records: BlobContainerClient,
    /// Whether the account answers.
    health: Health,
    /// Whether the queues and the container are known to exist.
    created: tokio::sync::Mutex<bool>,
    /// When to read the queue next while it is empty.
    polling: Mutex<IdlePolling>,
}

impl AzureQueue {
    /// Clients for `target`, signed in with `credentials` (see [`Auth::new`]); no call is
    /// made until the first use.
    pub fn new(
        target: AzureTarget,
        consumer: String,
        result_ttl: Duration,
        credentials: &AzureCredentials,
    ) -> Result<Self, BrokerError> {
        let (auth, auth_kind) = Auth::new(&target, credentials)?;
        tracing::info!(
            queue = target.display,
            auth = auth_kind,
            "Azure Storage queue configured"
        );
        let sdk = |e: azure_core::Error| BrokerError::BadUrl(format!("{}: {e}", target.display));
        let queue = |name: &str| -> Result<QueueClient, BrokerError> {
            let o = QueueClientOptions {
                client_options: auth.client_options(),
                ..Default::default()
            };
            QueueClient::new(
                auth.url(&target.queue_endpoint, name)?,
                auth.credential(),
                Some(o),
            )
            .map_err(sdk)
        };
        let jobs = queue(&target.queue)?;
        let dead = queue(&target.dead_queue())?;
        let results = target.results.as_deref().map(queue).transpose()?;
        let o = BlobContainerClientOptions {
            client_options: auth.client_options(),
            ..Default::default()
        };
        let records = BlobContainerClient::new(
            auth.url(&target.blob_endpoint, &target.queue)?,
            auth.credential(),
            Some(o),
        )
        .map_err(sdk)?;
        Ok(Self {
            target,
            consumer,
            result_ttl,
            jobs,
            dead,
            results,
            records,
            health: Health::default(),
            created: tokio::sync::Mutex::new(false),
            polling: Mutex::new(IdlePolling::default()),
        })
    }

    /// The queue's URL (no secret is ever part of it).
    pub fn display(&self) -> &str {
        &self.target.display
    }

    /// This replica's name in logs.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The dead-letter queue's name.
    pub fn dead_key(&self) -> String {
        self.target.dead_queue()
    }

    /// Whether the storage account answers.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Maps an SDK result, keeping the up/down state current.
    fn note<T>(&self, r: azure_core::Result<T>) -> Result<T, BrokerError> {
        self.health.note(r.map_err(|e| classify(&e)))
    }

    /// Creates the queues and the records container if they do not exist (once per process).
    async fn ensure_created(&self) -> Result<(), BrokerError> {
        let mut created = self.created.lock().await;
        if *created {
            return Ok(());
        }
        let mut queues = vec![&self.jobs, &self.dead];
        queues.extend(self.results.as_ref());
        for q in queues {
            match q.create(None).await {
                Ok(_) => {}
                Err(e) if e.http_status() == Some(StatusCode::Conflict) => {}
                Err(e) => return self.note(Err(e)),
            }
        }
        match self.records.create(None).await {
            Ok(_) => {}
            Err(e) if e.http_status() == Some(StatusCode::Conflict) => {}
            Err(e) => return self.note(Err(e)),
        }
        self.note(Ok(()))?;
        *created = true;
        Ok(())
    }

    /// Takes up to `count` messages, each invisible to other replicas for `visibility`; when
    /// the queue is empty, asks again after a growing pause until `wait` has passed (the
    /// pause carries over to the next pull).
    pub async fn pull(
        &self,
        count: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let r = self.pull_created(count, wait, visibility).await;
        if let Err(BrokerError::Refused(e)) = &r {
            // The queue or the container went away (deleted, or an emulator restarted empty):
            // create them again on the next pull.
            if e.contains("QueueNotFound") || e.contains("ContainerNotFound") {
                *self.created.lock().await = false;
            }
        }
        r
    }

    async fn pull_created(
        &self,
        count: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        self.ensure_created().await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = self.polling.lock().next(deadline);
            match next {
                Next::ReadAt(at) => tokio::time::sleep_until(at).await,
                Next::GiveUpAt(at) => {
                    tokio::time::sleep_until(at).await;
                    return Ok(Vec::new());
                }
            }
            let options = QueueClientReceiveMessagesOptions {
                number_of_messages: Some(count.clamp(1, MAX_RECEIVE) as i32),
                visibility_timeout: Some(visibility_secs(visibility)),
                ..Default::default()
            };
            let response = self.note(self.jobs.receive_messages(Some(options)).await)?;
            let messages = self.note(response.into_model())?.items.unwrap_or_default();
            if !messages.is_empty() {
                self.polling.lock().found_work();
                return Ok(messages
                    .into_iter()
                    .filter_map(|m| {
                        Some(Delivery::with_receipt(
                            m.message_id?,
                            m.message_text.map(decode_message_text),
                            m.dequeue_count.unwrap_or(1).max(1) as u64,
                            m.insertion_time.map(SystemTime::from),
                            m.pop_receipt?,
                        ))
                    })
                    .collect());
            }
            self.polling
                .lock()
                .found_nothing(tokio::time::Instant::now());
        }
    }

    /// Pushes the visibility of messages running here out by `visibility` (renewing each pop
    /// receipt).
    pub async fn extend(
        &self,
        deliveries: &[Delivery],
        visibility: Duration,
    ) -> Result<(), BrokerError> {
        let secs = visibility_secs(visibility);
        let mut failed = None;
        for d in deliveries {
            let mut lease = d.lease.lock().await;
            if lease.pop_receipt.is_empty() {
                continue; // deleted meanwhile
            }
            match self
                .jobs
                .update_message(&d.entry, &lease.pop_receipt, secs, None)
                .await
            {
                Ok(response) => {
                    self.note(Ok(()))?;
                    if let Some(new) = response.headers().get_optional_str(
                        &azure_core::http::headers::HeaderName::from_static("x-ms-popreceipt"),
                    ) {
                        lease.pop_receipt = new.to_string();
                    }
                }
                // Gone (its visibility ran out and another replica holds it, or it was
                // deleted): nothing to extend; the others still are.
                Err(e)
                    if matches!(
                        e.http_status(),
                        Some(StatusCode::NotFound | StatusCode::BadRequest)
                    ) => {}
                Err(e) => failed = self.note::<()>(Err(e)).err(),
            }
        }
        failed.map_or(Ok(()), Err)
    }

    fn record_name(id: &str) -> String {
        format!("jobs/{id}.json")
    }

    /// Job `id`'s record and its ETag, or None when there is none (or it expired).
    async fn read_record(&self, id: &str) -> Result<Found, BrokerError> {
        let blob = self.records.blob_client(&Self::record_name(id));
        let download = match blob.download(None).await {
            Ok(d) => d,
            Err(e) if e.http_status() == Some(StatusCode::NotFound) => {
                self.note(Ok(()))?;
                return Ok(Found::Nothing);
            }
            Err(e) => return self.note(Err(e)),
        };
        let Some(etag) = download.properties.etag.clone() else {
            return Err(BrokerError::Refused(format!("job record {id} has no ETag")));
        };
        let modified = download.properties.last_modified;
        let bytes = self.note(download.body.collect().await)?;
        let record: Record = serde_json::from_slice(&bytes)
            .map_err(|e| BrokerError::Refused(format!("job record {id}: {e}")))?;
        // Records have no expiry in Blob Storage (a lifecycle rule deletes them for real):
        // past the result TTL an ended job is treated as gone, as its Redis hash would be.
        let expired = ended(&record.state)
            && modified.is_some_and(|m| SystemTime::from(m) + self.result_ttl < SystemTime::now());
        Ok(if expired {
            Found::Expired(etag)
        } else {
            Found::Live(record, etag)
        })
    }

    /// Writes `record` for job `id`: only if there is none (`etag` None) or only over the
    /// version `etag`. Returns the new ETag, or None when the condition failed.
    async fn write_record(
        &self,
        id: &str,
        record: &Record,
        etag: Option<&Etag>,
    ) -> Result<Option<Etag>, BrokerError> {
        let body = serde_json::to_vec(record).expect("a record serializes");
        let options = BlockBlobClientUploadOptions {
            if_match: etag.cloned(),
            if_none_match: etag.is_none().then(|| Etag::from("*")),
            blob_content_type: Some("application/json".into()),
            ..Default::default()
        };
        let blob = self.records.blob_client(&Self::record_name(id));
        match blob.upload(RequestContent::from(body), Some(options)).await {
            Ok(r) => {
                self.note(Ok(()))?;
                Ok(Some(r.etag.unwrap_or_else(|| Etag::from("*"))))
            }
            Err(e)
                if matches!(
                    e.http_status(),
                    Some(StatusCode::PreconditionFailed | StatusCode::Conflict)
                ) =>
            {
                Ok(None)
            }
            Err(e) => self.note(Err(e)),
        }
    }

    /// Marks job `id` running (creating its record for a job a producer put on the queue
    /// directly), unless it has ended.
    pub async fn start(
        &self,
        id: &str,
        route: &str,
        delivery: &Delivery,
    ) -> Result<Start, BrokerError> {
        let running = Record {
            state: "running".into(),
            route: route.into(),
            message_id: Some(delivery.entry.clone()),
            status: None,
            result: None,
        };
        // Most jobs come straight from a producer and have no record yet: one request.
        let mut over = None;
        for _ in 0..RECORD_ATTEMPTS {
            if let Some(new) = self.write_record(id, &running, over.as_ref()).await? {
                delivery.lease.lock().await.record_etag = Some(new.to_string());
                return Ok(Start::Run);
            }
            over = match self.read_record(id).await? {
                Found::Live(r, _) if ended(&r.state) => return Ok(Start::Ended(r.state)),
                Found::Live(_, etag) | Found::Expired(etag) => Some(etag),
                Found::Nothing => None,
            };
        }
        Err(BrokerError::Refused(format!(
            "job {id}: its record kept changing under {RECORD_ATTEMPTS} attempts to start it"
        )))
    }

    /// Writes the ended `state` of job `id` with its answer, unless the job already ended.
    /// Returns whether this call wrote it.
    async fn end_record(
        &self,
        id: &str,
        delivery: &Delivery,
        state: &str,
        route: &str,
        status: u16,
        result: &[u8],
    ) -> Result<bool, BrokerError> {
        let record = Record {
            state: state.into(),
            route: route.into(),
            message_id: Some(delivery.entry.clone()),
            status: Some(status),
            result: Some(String::from_utf8_lossy(result).into_owned()),
        };
        // First over the version this delivery wrote at its start: one request in the usual case.
        let mut etag = delivery
            .lease
            .lock()
            .await
            .record_etag
            .clone()
            .map(Etag::from);
        for _ in 0..RECORD_ATTEMPTS {
            if let Some(e) = &etag {
                if self.write_record(id, &record, Some(e)).await?.is_some() {
                    return Ok(true);
                }
            }
            match self.read_record(id).await? {
                Found::Live(r, _) if ended(&r.state) => return Ok(false),
                Found::Live(_, e) | Found::Expired(e) => etag = Some(e),
                Found::Nothing => {
                    if self.write_record(id, &record, None).await?.is_some() {
                        return Ok(true);
                    }
                }
            }
        }
        Err(BrokerError::Refused(format!(
            "job {id}: its record kept changing under {RECORD_ATTEMPTS} attempts to end it"
        )))
    }

    /// Deletes a message this replica holds. A receipt that no longer matches means the
    /// message became visible again and another replica holds it: that replica will find the
    /// job ended and delete it.
    async fn delete(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        let mut lease = delivery.lease.lock().await;
        let r = self
            .jobs
            .delete_message(&delivery.entry, &lease.pop_receipt, None)
            .await;
        lease.pop_receipt.clear();
        match r {
            Ok(_) => self.note(Ok(())),
            Err(e)
                if matches!(
                    e.http_status(),
                    Some(StatusCode::NotFound | StatusCode::BadRequest)
                ) =>
            {
                self.note(Ok(()))
            }
            Err(e) => self.note(Err(e)),
        }
    }

    /// Ends job `id` with its answer: the results notification (when configured), then the
    /// record (written once per job id), then the message is deleted. Returns whether the
    /// record was written here. A crash between the steps repeats the notification, never
    /// the record.
    pub async fn finish(
        &self,
        id: &str,
        route: &str,
        delivery: &Delivery,
        status: u16,
        result: &[u8],
    ) -> Result<bool, BrokerError> {
        self.notify(id, route, "succeeded", status, result).await?;
        let wrote = self
            .end_record(id, delivery, "succeeded", route, status, result)
            .await?;
        self.delete(delivery).await?;
        Ok(wrote)
    }

    /// Sends the notification of an ended job to the results queue, when there is one. A
    /// result too large for a message is left out (the record holds it).
    async fn notify(
        &self,
        id: &str,
        route: &str,
        state: &str,
        status: u16,
        result: &[u8],
    ) -> Result<(), BrokerError> {
        let Some(results) = &self.results else {
            return Ok(());
        };
        let mut note = serde_json::json!({
            "id": id, "route": route, "state": state, "status": status,
        });
        note["result"] = serde_json::from_slice(result)
            .unwrap_or_else(|_| String::from_utf8_lossy(result).into());
        let mut text = note.to_string();
        if text.len() > MAX_MESSAGE - 1024 {
            note.as_object_mut().expect("an object").remove("result");
            note["record"] = format!("{}/{}", self.target.queue, Self::record_name(id)).into();
            text = note.to_string();
        }
        self.send(results, text).await
    }

    /// Deletes a message whose job already ended (cancelled, or finished by another delivery).
    pub async fn acknowledge(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        self.delete(delivery).await
    }

    /// Moves a message to the dead-letter queue with `error` (an error body), marks its job
    /// failed with `status` when its id is known, and deletes the message.
    pub async fn dead_letter(
        &self,
        id: Option<&str>,
        delivery: &Delivery,
        error: &[u8],
        status: u16,
    ) -> Result<(), BrokerError> {
        let error_json: serde_json::Value =
            serde_json::from_slice(error).unwrap_or_else(|_| String::from_utf8_lossy(error).into());
        let mut letter = serde_json::json!({
            "job": delivery.job.as_deref().unwrap_or(""),
            "error": error_json,
            "status": status,
            "message_id": delivery.entry,
            "deliveries": delivery.deliveries,
        });
        if letter.to_string().len() > MAX_MESSAGE - 1024 {
            // The job itself filled the message: keep its start, say so.
            let job = delivery.job.as_deref().unwrap_or("");
            letter["job"] = super::job::prefix_within(job, MAX_MESSAGE / 2).into();
            letter["job_truncated"] = true.into();
        }
        self.send(&self.dead, letter.to_string()).await?;
        if let Some(id) = id {
            let route = delivery
                .job
                .as_deref()
                .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
                .and_then(|v| v.get("route").and_then(|r| r.as_str()).map(String::from))
                .unwrap_or_default();
            self.notify(id, &route, "failed", status, error).await?;
            self.end_record(id, delivery, "failed", &route, status, error)
                .await?;
        }
        self.delete(delivery).await
    }

    async fn send(&self, queue: &QueueClient, text: String) -> Result<(), BrokerError> {
        let message = QueueMessage {
            message_text: Some(text),
        };
        let content: RequestContent<QueueMessage, _> = self.note(message.try_into())?;
        self.note(queue.send_message(content, None).await)
            .map(|_| ())
    }

    /// Adds a job (`POST /v1/jobs`): its record in state `queued`, then its message. Returns
    /// the new job's id.
    pub async fn create(
        &self,
        route: &str,
        body: &serde_json::Value,
    ) -> Result<String, BrokerError> {
        self.ensure_created().await?;
        let id = new_job_id();
        let record = Record {
            state: "queued".into(),
            route: route.into(),
            message_id: None,
            status: None,
            result: None,
        };
        if self.write_record(&id, &record, None).await?.is_none() {
            return Err(BrokerError::Refused(format!("job id {id} already exists")));
        }
        let text = serde_json::json!({ "id": id, "route": route, "body": body }).to_string();
        if text.len() > MAX_MESSAGE {
            let _ = self
                .records
                .blob_client(&Self::record_name(&id))
                .delete(None)
                .await;
            return Err(BrokerError::TooLarge(format!(
                "the job is {} bytes; an Azure queue message holds at most {MAX_MESSAGE}",
                text.len()
            )));
        }
        if let Err(e) = self.send(&self.jobs, text).await {
            let _ = self
                .records
                .blob_client(&Self::record_name(&id))
                .delete(None)
                .await;
            return Err(e);
        }
        Ok(id)
    }

    /// Job `id`'s record, or None when there is no such job.
    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>, BrokerError> {
        Ok(match self.read_record(id).await? {
            Found::Live(r, _) => Some(JobRecord {
                state: r.state,
                route: Some(r.route),
                status: r.status,
                result: r.result,
            }),
            Found::Expired(_) | Found::Nothing => None,
        })
    }

    /// Cancels job `id` if it has not started.
    pub async fn cancel(&self, id: &str) -> Result<Cancel, BrokerError> {
        for _ in 0..RECORD_ATTEMPTS {
            let Found::Live(mut r, etag) = self.read_record(id).await? else {
                return Ok(Cancel::Unknown);
            };
            if r.state != "queued" {
                return Ok(Cancel::Not(r.state));
            }
            r.state = "cancelled".into();
            if self.write_record(id, &r, Some(&etag)).await?.is_some() {
                return Ok(Cancel::Cancelled);
            }
        }
        Err(BrokerError::Refused(format!(
            "job {id}: its record kept changing under {RECORD_ATTEMPTS} attempts to cancel it"
        )))
    }

    /// The queue's approximate length (visible and invisible messages), as KEDA's
    /// `azure-queue` scaler reads it.
    pub async fn backlog(&self) -> Result<Backlog, BrokerError> {
        let r = self.note(self.jobs.get_properties(None).await)?;
        let count = self.note(r.approximate_messages_count())?;
        Ok(Backlog {
            lag: count.map(|c| c.max(0) as u64),
            pending: 0,
        })
    }
}

/// The visibility timeout in whole seconds, as the service takes it (1 s to 7 days).
fn visibility_secs(d: Duration) -> i32 {
    d.as_secs_f64().ceil().clamp(1.0, 604_800.0) as i32
}

/// A message's job text: the JSON itself, or its base64 (as older SDKs and Azure Functions
/// encode messages); anything else is kept as it came, to be refused with a clear error.
fn decode_message_text(text: String) -> String {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return text;
    }
    match base64::engine::general_purpose::STANDARD.decode(trimmed.trim_end()) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(s) if s.trim_start().starts_with('{') => s,
            _ => text,
        },
        Err(_) => text,
    }
}

/// A new job id: a random (v4) UUID, 32 hex digits.
fn new_job_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// What an SDK error means for the ingress: unreachable (retry with backoff) or refused.
fn classify(e: &azure_core::Error) -> BrokerError {
    use azure_core::error::ErrorKind;
    let text = describe(e);
    // The SDK wraps the last attempt's error once its retries are spent: judge by that one.
    let mut kind = e.kind();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if let Some(inner) = inner.downcast_ref::<azure_core::Error>() {
            kind = inner.kind();
        }
        source = inner.source();
    }
    match kind {
        ErrorKind::Connection | ErrorKind::Io => BrokerError::Unreachable(text),
        ErrorKind::HttpResponse { status, .. }
            if u16::from(*status) >= 500
                || matches!(
                    *status,
                    StatusCode::RequestTimeout | StatusCode::TooManyRequests
                ) =>
        {
            BrokerError::Unreachable(text)
        }
        ErrorKind::Credential => BrokerError::Unreachable(format!("signing in: {text}")),
        // Signed in, but refused (a wrong key, an expired SAS, a missing role): the account
        // cannot be used until the credential is fixed; said by /readyz, retried with backoff.
        ErrorKind::HttpResponse { status, .. }
            if matches!(*status, StatusCode::Unauthorized | StatusCode::Forbidden) =>
        {
            BrokerError::Unreachable(format!("access denied: {text}"))
        }
        // Retries spent on something that never answered.
        ErrorKind::Other if text.contains("retr") => BrokerError::Unreachable(text),
        _ => BrokerError::Refused(text),
    }
}

/// An SDK error with its causes ("retries spent: connecting: connection refused"), on one
/// line; the service's XML error bodies are cut to their code.
fn describe(e: &azure_core::Error) -> String {
    let mut parts = vec![one_line(&e.to_string())];
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let line = one_line(&inner.to_string());
        if !line.is_empty() && !parts.iter().any(|p| p.contains(&line)) {
            parts.push(line);
        }
        source = inner.source();
    }
    parts.join(": ")
}

/// The first line of an error's text, or `STATUS CODE` for a service error in XML.
fn one_line(text: &str) -> String {
    let first = text.lines().next().unwrap_or("").trim();
    match text
        .split_once("<Code>")
        .and_then(|(_, r)| r.split_once("</Code>"))
    {
        Some((code, _)) => {
            let status = first.split_once(':').map_or("", |(s, _)| s.trim());
            format!("{status} {code}").trim().to_string()
        }
        None => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_as_json_or_base64_json() {
        let json = r#"{"route":"/embed","body":{"inputs":"a"}}"#.to_string();
        assert_eq!(decode_message_text(json.clone()), json);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&json);
        assert_eq!(decode_message_text(b64), json);
        assert_eq!(decode_message_text("hello".into()), "hello");
    }

    #[test]
    fn visibility_is_whole_seconds_within_the_service_limits() {
        assert_eq!(visibility_secs(Duration::from_millis(1)), 1);
        assert_eq!(visibility_secs(Duration::from_millis(1500)), 2);
        assert_eq!(visibility_secs(Duration::from_secs(60)), 60);
        assert_eq!(visibility_secs(Duration::from_secs(10_000_000)), 604_800);
    }

    #[test]
    fn service_errors_are_cut_to_one_line_with_their_code() {
        let xml = "404: <?xml version=\"1.0\"?>\n<Error>\n  <Code>MessageNotFound</Code>\n  \
                   <Message>The specified message does not exist.</Message></Error>";
        assert_eq!(one_line(xml), "404 MessageNotFound");
        assert_eq!(one_line("connection refused\nmore"), "connection refused");
    }

    #[test]
    fn job_ids_are_valid_and_distinct() {
        let a = new_job_id();
        assert!(crate::broker::job::valid_job_id(&a));
        assert_ne!(a, new_job_id());
    }
}
