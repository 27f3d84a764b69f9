//! One worker's bounded event buffer and its deliveries, host-free, on a clock the caller passes
//! in (milliseconds): events wait until a batch is full or its oldest event has waited
//! `max_interval`, batches go out at most `max_in_flight` at a time, failed batches are retried
//! with exponential backoff and jitter, and every event ends up counted as sent or dropped.
//!
//! The invariant the tests hold it to: `emitted == sent + dropped + buffered()`.

use std::collections::{BTreeMap, VecDeque};

use palisade_kit::random::Xoshiro256;

use crate::event::EventType;

/// Content type of the Kafka REST Proxy v2 produce API with JSON values.
pub const KAFKA_JSON_V2: &str = "application/vnd.kafka.json.v2+json";
/// What a v2 REST proxy answers with.
pub const KAFKA_V2_ACCEPT: &str = "application/vnd.kafka.v2+json";
pub const NDJSON: &str = "application/x-ndjson";

/// How batches are encoded and addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// `POST <base>/topics/<topic>`, one topic per batch.
    KafkaRest { base_path: String },
    /// `POST <path>`, events of every type in one body, one per line.
    Ndjson { path: String },
}

/// The limits of a [`DeliveryQueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub format: Format,
    pub max_events: usize,
    pub max_interval_ms: u64,
    pub max_buffered: usize,
    pub max_buffered_bytes: usize,
    pub max_in_flight: usize,
    pub max_retries: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// A batch without an answer this long after it left counts as failed (Kong before 3.9
    /// never calls back a failed dispatch).
    pub answer_deadline_ms: u64,
}

/// An event waiting for delivery, serialised once (a retry resends the same bytes and id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    pub event_type: EventType,
    pub topic: String,
    /// Kafka record key: the subject, so one principal's events stay in order on one partition;
    /// the event id when there is none.
    pub key: String,
    pub json: Vec<u8>,
    pub enqueued_ms: u64,
}

#[derive(Debug)]
struct Batch {
    events: Vec<QueuedEvent>,
    /// 0 for the first send.
    attempt: u32,
}

#[derive(Debug)]
struct InFlight {
    batch: Batch,
    sent_ms: u64,
    /// The body's length, remembered if the collector refuses it as too large.
    body_len: usize,
}

/// An HTTP request the adapter dispatches: answer it with [`DeliveryQueue::on_answer`] and the
/// same `batch_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub batch_id: u64,
    pub path: String,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub events: usize,
}

/// What became of an answered batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub batch_id: u64,
    pub sent: u64,
    pub retried: u64,
    pub dropped: u64,
    pub latency_ms: u64,
    /// Why some or all events were not sent (a status and the collector's error code), for one
    /// log line.
    pub problem: Option<String>,
}

/// What [`DeliveryQueue::abandon`] gave up, and what is still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abandoned {
    pub dropped: u64,
    pub in_flight: u64,
}

/// Running totals since the worker started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub emitted: u64,
    pub sent: u64,
    pub retried: u64,
    pub dropped: u64,
}

/// One worker's buffer and deliveries.
#[derive(Debug)]
pub struct DeliveryQueue {
    settings: Settings,
    pending: VecDeque<QueuedEvent>,
    in_flight: BTreeMap<u64, InFlight>,
    /// Failed batches waiting for their retry time.
    retrying: Vec<(u64, Batch)>,
    next_batch_id: u64,
    totals: Totals,
    /// What the held events weigh ([`weight`]): waiting, in flight and waiting for a retry.
    held_bytes: usize,
    /// Half the smallest body the collector refused as too large (413): later batches stay
    /// under it, so one refusal does not cost every batch a round of splits.
    refused_body_len: Option<usize>,
    /// The plugin is being torn down: whatever waits goes out now, not at `max_interval`.
    draining: bool,
}

/// What an event costs the worker's memory while held.
fn weight(event: &QueuedEvent) -> usize {
    std::mem::size_of::<QueuedEvent>() + event.json.len() + event.topic.len() + event.key.len()
}

fn batch_weight(batch: &Batch) -> usize {
    batch.events.iter().map(weight).sum()
}

impl DeliveryQueue {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            pending: VecDeque::new(),
            in_flight: BTreeMap::new(),
            retrying: Vec::new(),
            next_batch_id: 1,
            totals: Totals::default(),
            held_bytes: 0,
            refused_body_len: None,
            draining: false,
        }
    }

    /// How long delivering what is held can take at most: every try of a batch gets its
    /// answer deadline, and the backoffs between them; the batches go `max_in_flight` at a
    /// time. Past it, each batch has been sent or counted dropped.
    pub fn drain_bound_ms(&self) -> u64 {
        let s = &self.settings;
        let tries = u64::from(s.max_retries) + 1;
        let one_batch = tries
            .saturating_mul(s.answer_deadline_ms)
            .saturating_add(u64::from(s.max_retries).saturating_mul(s.backoff_max_ms));
        let batches = self.pending.len().div_ceil(s.max_events.max(1))
            + self.in_flight.len()
            + self.retrying.len();
        let rounds = batches.div_ceil(s.max_in_flight.max(1)).max(1);
        one_batch.saturating_mul(rounds as u64)
    }

    /// Gives up everything held, batches in flight included (counted dropped too): for a
    /// plugin whose call-outs are about to be cancelled, so their answers will never come.
    pub fn abandon_all(&mut self) -> Abandoned {
        let mut abandoned = self.abandon();
        let in_flight: u64 = std::mem::take(&mut self.in_flight)
            .values()
            .map(|f| f.batch.events.len() as u64)
            .sum();
        self.held_bytes = 0;
        self.totals.dropped += in_flight;
        abandoned.dropped += in_flight;
        abandoned.in_flight = 0;
        abandoned
    }

    /// From now on every waiting event is due (the plugin is being torn down and delivers what
    /// it holds first); retries keep their backoff.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// How much of a collector's answer to read: enough for a Kafka REST offsets list of a
    /// full batch (one entry per record, ~60 bytes, more with an error message), at least
    /// 64 KiB. A truncated answer does not parse, and its failed records would count as sent.
    pub fn answer_cap(&self) -> usize {
        const PER_RECORD: usize = 256;
        (64 * 1024).max(self.settings.max_events.saturating_mul(PER_RECORD))
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Events held: waiting, in flight or waiting for a retry.
    pub fn buffered(&self) -> usize {
        self.pending.len()
            + self
                .in_flight
                .values()
                .map(|f| f.batch.events.len())
                .sum::<usize>()
            + self
                .retrying
                .iter()
                .map(|(_, b)| b.events.len())
                .sum::<usize>()
    }

    /// Gives up everything not yet handed to the host: waiting events and failed batches
    /// waiting for a retry are counted dropped. Batches in flight stay: their answers are still
    /// counted when they come. For a plugin being torn down, so nothing goes uncounted.
    pub fn abandon(&mut self) -> Abandoned {
        let waiting = self.pending.len()
            + self
                .retrying
                .iter()
                .map(|(_, b)| b.events.len())
                .sum::<usize>();
        self.pending.clear();
        self.retrying.clear();
        self.held_bytes = self
            .in_flight
            .values()
            .map(|f| batch_weight(&f.batch))
            .sum();
        let dropped = waiting as u64;
        self.totals.dropped += dropped;
        Abandoned {
            dropped,
            in_flight: self.buffered() as u64,
        }
    }

    /// Takes an event; when the buffer is full it is dropped (and counted): `false`.
    pub fn push(&mut self, event: QueuedEvent) -> bool {
        self.totals.emitted += 1;
        let weight = weight(&event);
        if self.buffered() >= self.settings.max_buffered
            || self.held_bytes.saturating_add(weight) > self.settings.max_buffered_bytes
        {
            self.totals.dropped += 1;
            return false;
        }
        self.held_bytes += weight;
        self.pending.push_back(event);
        true
    }

    /// Is a batch due now (full, or its oldest event old enough)?
    pub fn batch_due(&self, now_ms: u64) -> bool {
        self.pending.len() >= self.settings.max_events
            || (self.draining && !self.pending.is_empty())
            || self.pending.front().is_some_and(|oldest| {
                now_ms.saturating_sub(oldest.enqueued_ms) >= self.settings.max_interval_ms
            })
    }

    /// Batches to send now: overdue answers are counted as failures first, then retries whose
    /// time has come, then new batches, while fewer than `max_in_flight` are out. Also returns
    /// the failures found overdue.
    pub fn poll(&mut self, now_ms: u64, rng: &mut Xoshiro256) -> (Vec<Send>, Vec<Answered>) {
        let overdue: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| now_ms.saturating_sub(f.sent_ms) >= self.settings.answer_deadline_ms)
            .map(|(id, _)| *id)
            .collect();
        let expired = overdue
            .into_iter()
            .filter_map(|id| self.on_answer(id, None, now_ms, rng))
            .collect();
        let mut sends = Vec::new();
        while self.in_flight.len() < self.settings.max_in_flight {
            let batch = if let Some(at) = self.retrying.iter().position(|(due, _)| *due <= now_ms) {
                self.retrying.swap_remove(at).1
            } else if self.batch_due(now_ms) {
                self.take_batch()
            } else {
                break;
            };
            sends.push(self.launch(batch, now_ms));
        }
        (sends, expired)
    }

    /// Up to `max_events` of the oldest event's topic (Kafka), or the oldest `max_events`;
    /// fewer if their body would reach one the collector refused as too large (at least one).
    fn take_batch(&mut self) -> Batch {
        let max = self.settings.max_events;
        let limit = self.refused_body_len.unwrap_or(usize::MAX);
        // What an event adds to a body, with its record's framing.
        let size = |event: &QueuedEvent| event.json.len() + event.key.len() + 32;
        let events = match &self.settings.format {
            Format::Ndjson { .. } => {
                let mut body = 0usize;
                let n = self
                    .pending
                    .iter()
                    .take(max)
                    .take_while(|event| {
                        body = body.saturating_add(size(event));
                        body < limit
                    })
                    .count()
                    .max(1)
                    .min(self.pending.len());
                self.pending.drain(..n).collect()
            }
            Format::KafkaRest { .. } => {
                let topic = self
                    .pending
                    .front()
                    .map(|e| e.topic.clone())
                    .unwrap_or_default();
                let mut taken = Vec::new();
                let mut kept = VecDeque::with_capacity(self.pending.len());
                let mut body = 0usize;
                let mut full = false;
                for event in self.pending.drain(..) {
                    if !full && taken.len() < max && event.topic == topic {
                        body = body.saturating_add(size(&event));
                        if body >= limit && !taken.is_empty() {
                            full = true;
                            kept.push_back(event);
                        } else {
                            taken.push(event);
                        }
                    } else {
                        kept.push_back(event);
                    }
                }
                self.pending = kept;
                taken
            }
        };
        Batch { events, attempt: 0 }
    }

    fn launch(&mut self, batch: Batch, now_ms: u64) -> Send {
        let batch_id = self.next_batch_id;
        self.next_batch_id += 1;
        let (path, content_type, body) = match &self.settings.format {
            Format::KafkaRest { base_path } => {
                let topic = batch.events.first().map_or("", |e| e.topic.as_str());
                let base = base_path.trim_end_matches('/');
                (
                    format!("{base}/topics/{topic}"),
                    KAFKA_JSON_V2,
                    kafka_body(&batch.events),
                )
            }
            Format::Ndjson { path } => (path.clone(), NDJSON, ndjson_body(&batch.events)),
        };
        let events = batch.events.len();
        self.in_flight.insert(
            batch_id,
            InFlight {
                batch,
                sent_ms: now_ms,
                body_len: body.len(),
            },
        );
        Send {
            batch_id,
            path,
            content_type,
            body,
            events,
        }
    }

    /// The collector's answer to a batch: `Some((status, body))`, or `None` when the call
    /// failed (refused, reset, timed out). `None` back for a batch no longer in flight (already
    /// counted overdue).
    pub fn on_answer(
        &mut self,
        batch_id: u64,
        answer: Option<(u16, &[u8])>,
        now_ms: u64,
        rng: &mut Xoshiro256,
    ) -> Option<Answered> {
        let flight = self.in_flight.remove(&batch_id)?;
        // What goes back to a retry is added again below.
        self.held_bytes = self.held_bytes.saturating_sub(batch_weight(&flight.batch));
        let latency_ms = now_ms.saturating_sub(flight.sent_ms);
        let mut batch = flight.batch;
        let n = batch.events.len() as u64;
        let mut result = Answered {
            batch_id,
            sent: 0,
            retried: 0,
            dropped: 0,
            latency_ms,
            problem: None,
        };
        let retry_all = match answer {
            None => {
                result.problem = Some("no answer (connection failed or timed out)".to_owned());
                true
            }
            Some((status, body)) if (200..300).contains(&status) => {
                let failed = match self.settings.format {
                    Format::KafkaRest { .. } => record_errors(body, batch.events.len()),
                    Format::Ndjson { .. } => Vec::new(),
                };
                if failed.is_empty() {
                    result.sent = n;
                    self.totals.sent += n;
                    return Some(result);
                }
                // Some records failed inside a 200: retry the retriable ones, drop the rest.
                let mut retry = Vec::new();
                let mut failures = failed.into_iter().peekable();
                for (index, event) in batch.events.drain(..).enumerate() {
                    match failures.peek() {
                        Some((at, retriable)) if *at == index => {
                            if *retriable {
                                retry.push(event);
                            } else {
                                result.dropped += 1;
                            }
                            failures.next();
                        }
                        _ => {
                            result.sent += 1;
                        }
                    }
                }
                self.totals.sent += result.sent;
                self.totals.dropped += result.dropped;
                result.problem = Some(format!(
                    "status {status}: {} of {n} records failed",
                    n - result.sent
                ));
                batch.events = retry;
                if batch.events.is_empty() {
                    return Some(result);
                }
                true
            }
            // Too large for the collector (a proxy's `client_max_body_size`, a REST proxy's
            // request limit): the halves may pass, so both go again at once, the attempt
            // unchanged. Halving ends at one event, which is dropped if still too large.
            Some((413, body)) if batch.events.len() > 1 => {
                // Later batches stay at half the refused body, what its halves weigh: a limit at
                // the refused size would let the next batch, one event smaller, be refused too.
                let half = flight.body_len / 2;
                let limit = self.refused_body_len.get_or_insert(half);
                *limit = (*limit).min(half);
                let second = batch.events.split_off(batch.events.len() / 2);
                result.problem = Some(format!(
                    "{}: batch of {n} split in two and sent again",
                    describe(413, body)
                ));
                for events in [std::mem::take(&mut batch.events), second] {
                    let half = Batch {
                        events,
                        attempt: batch.attempt,
                    };
                    self.held_bytes += batch_weight(&half);
                    self.retrying.push((now_ms, half));
                }
                result.retried += n;
                self.totals.retried += n;
                return Some(result);
            }
            Some((status, body)) => {
                result.problem = Some(describe(status, body));
                retriable_status(status)
            }
        };
        let n = batch.events.len() as u64;
        if retry_all && batch.attempt < self.settings.max_retries {
            batch.attempt += 1;
            let due = now_ms.saturating_add(self.backoff_ms(batch.attempt, rng));
            result.retried += n;
            self.totals.retried += n;
            self.held_bytes += batch_weight(&batch);
            self.retrying.push((due, batch));
        } else {
            result.dropped += n;
            self.totals.dropped += n;
        }
        Some(result)
    }

    /// Delay before retry `attempt` (1-based): base * 2^(attempt-1), capped, the upper half
    /// jittered so workers retrying together spread out.
    fn backoff_ms(&self, attempt: u32, rng: &mut Xoshiro256) -> u64 {
        let exp = self
            .settings
            .backoff_base_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
            .min(self.settings.backoff_max_ms);
        let half = exp / 2;
        half + rng.next_u64() % (exp - half + 1)
    }
}

/// Worth retrying: the collector is overloaded, timed out or failing, not refusing the batch.
fn retriable_status(status: u16) -> bool {
    matches!(status, 408 | 429) || status >= 500
}

/// `status 404 (error_code 40401: Topic not found)` from a REST proxy's error body.
fn describe(status: u16, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error_code: Option<i64>,
        message: Option<String>,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            error_code: Some(code),
            message,
        }) => {
            let message: String = message
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_control())
                .take(120)
                .collect();
            format!("status {status} (error_code {code}: {message})")
        }
        _ => format!("status {status}"),
    }
}

/// Records a v2 produce answer reports failed, by index, with whether each is retriable
/// ([`retriable_record_error`]). An answer without offsets (an NDJSON-style collector behind a
/// Kafka sink) counts as all delivered.
fn record_errors(body: &[u8], records: usize) -> Vec<(usize, bool)> {
    #[derive(serde::Deserialize)]
    struct Offset {
        error_code: Option<i64>,
    }
    #[derive(serde::Deserialize)]
    struct Produced {
        offsets: Vec<Offset>,
    }
    let Ok(produced) = serde_json::from_slice::<Produced>(body) else {
        return Vec::new();
    };
    produced
        .offsets
        .iter()
        .take(records)
        .enumerate()
        .filter_map(|(i, o)| o.error_code.map(|code| (i, retriable_record_error(code))))
        .collect()
}

/// Whether a record's `error_code` is worth a retry. The v2 API reference names 1 (not
/// retriable) and 2 (retriable), but Confluent's kafka-rest sends its own codes, an HTTP
/// status times 100 plus a number (`KafkaExceptionMapper`: 50003 a retriable Kafka error, 50302
/// broker not available, 42901 too many requests; 50002 a Kafka error a retry will not fix,
/// 40101/40301 not authenticated/authorized), and Strimzi's bridge sends an HTTP status (500).
/// Retried: 2, and codes whose status is 408, 429 or 5xx, except 50002.
fn retriable_record_error(code: i64) -> bool {
    let status = if code >= 10_000 { code / 100 } else { code };
    code == 2 || (code != 50_002 && matches!(status, 408 | 429 | 500..=599))
}

/// `{"records":[{"key":"...","value":{...}}]}`
fn kafka_body(events: &[QueuedEvent]) -> Vec<u8> {
    let size: usize = events.iter().map(|e| e.json.len() + e.key.len() + 32).sum();
    let mut body = Vec::with_capacity(size + 16);
    body.extend_from_slice(b"{\"records\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"key\":");
        // A string always serialises.
        body.extend(serde_json::to_vec(&event.key).unwrap_or_default());
        body.extend_from_slice(b",\"value\":");
        body.extend_from_slice(&event.json);
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    body
}

fn ndjson_body(events: &[QueuedEvent]) -> Vec<u8> {
    let mut body = Vec::with_capacity(events.iter().map(|e| e.json.len() + 1).sum());
    for event in events {
        body.extend_from_slice(&event.json);
        body.push(b'\n');
    }
    body
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn the_answer_read_fits_a_full_batchs_offsets() {
        let mut small = settings(Format::Ndjson { path: "/".into() });
        small.max_events = 100;
        assert_eq!(DeliveryQueue::new(small).answer_cap(), 64 * 1024);
        let mut large = settings(Format::Ndjson { path: "/".into() });
        large.max_events = 5_000;
        let cap = DeliveryQueue::new(large).answer_cap();
        // A Kafka REST answer for 5000 records, each with an error message.
        let entry = r#"{"partition":11,"offset":9223372036854775807,"error_code":50002,"error":"Kafka error: This server is not the leader."},"#;
        assert!(cap >= 5_000 * entry.len() + 64, "{cap}");
    }

    fn settings(format: Format) -> Settings {
        Settings {
            format,
            max_events: 3,
            max_interval_ms: 1000,
            max_buffered: 10,
            max_buffered_bytes: usize::MAX,
            max_in_flight: 2,
            max_retries: 2,
            backoff_base_ms: 100,
            backoff_max_ms: 1000,
            answer_deadline_ms: 5000,
        }
    }

    fn kafka() -> DeliveryQueue {
        DeliveryQueue::new(settings(Format::KafkaRest {
            base_path: "/".into(),
        }))
    }

    fn event(topic: &str, id: u32, at: u64) -> QueuedEvent {
        QueuedEvent {
            event_type: EventType::ApiCall,
            topic: topic.into(),
            key: format!("k{id}"),
            json: format!(r#"{{"event_id":"e{id}"}}"#).into_bytes(),
            enqueued_ms: at,
        }
    }

    fn rng() -> Xoshiro256 {
        Xoshiro256::from_seed([4; 32])
    }

    fn accounted(q: &DeliveryQueue) {
        let t = q.totals();
        assert_eq!(
            t.emitted,
            t.sent + t.dropped + q.buffered() as u64,
            "{t:?} buffered {}",
            q.buffered()
        );
    }

    #[test]
    fn held_bytes_bound_the_buffer_and_come_back_when_batches_end() {
        let mut small = settings(Format::Ndjson { path: "/".into() });
        small.max_buffered = 100;
        small.max_events = 2;
        let big = |id: u32| QueuedEvent {
            json: vec![b'x'; 10_000],
            ..event("audit", id, 0)
        };
        let per_event = weight(&big(1));
        small.max_buffered_bytes = 3 * per_event;
        let mut q = DeliveryQueue::new(small);
        let mut rng = rng();
        // Three fit; the fourth would pass the bytes though not the count: dropped, counted.
        for id in 0..3 {
            assert!(q.push(big(id)));
        }
        assert!(!q.push(big(3)));
        assert_eq!((q.held_bytes, q.totals().dropped), (3 * per_event, 1));
        accounted(&q);
        // A failed batch waiting for its retry still weighs; a delivered one no longer does.
        let (sends, _) = q.poll(1000, &mut rng);
        assert_eq!(sends.iter().map(|s| s.events).collect::<Vec<_>>(), [2, 1]);
        q.on_answer(sends[0].batch_id, None, 1010, &mut rng)
            .unwrap();
        assert_eq!(q.held_bytes, 3 * per_event);
        assert!(!q.push(big(4)));
        q.on_answer(sends[1].batch_id, Some((200, b"")), 1010, &mut rng)
            .unwrap();
        assert_eq!(q.held_bytes, 2 * per_event);
        assert!(q.push(big(5)));
        accounted(&q);
        // Given up on: nothing waiting or retrying weighs any more.
        q.abandon();
        assert_eq!(q.held_bytes, 0);
        accounted(&q);
    }

    #[test]
    fn a_full_batch_goes_at_once_in_the_v2_produce_shape() {
        let mut q = kafka();
        let mut rng = rng();
        q.push(event("audit", 1, 0));
        q.push(event("audit", 2, 0));
        assert!(q.poll(0, &mut rng).0.is_empty(), "not full, not old");
        q.push(event("audit", 3, 0));
        let (sends, _) = q.poll(0, &mut rng);
        assert_eq!(sends.len(), 1);
        let send = &sends[0];
        assert_eq!(send.path, "/topics/audit");
        assert_eq!(send.content_type, "application/vnd.kafka.json.v2+json");
        assert_eq!(
            String::from_utf8(send.body.clone()).unwrap(),
            r#"{"records":[{"key":"k1","value":{"event_id":"e1"}},{"key":"k2","value":{"event_id":"e2"}},{"key":"k3","value":{"event_id":"e3"}}]}"#
        );
        let answered = q
            .on_answer(
                send.batch_id,
                Some((
                    200,
                    br#"{"offsets":[{"partition":0,"offset":1,"error_code":null,"error":null}]}"#,
                )),
                40,
                &mut rng,
            )
            .unwrap();
        assert_eq!((answered.sent, answered.latency_ms), (3, 40));
        assert_eq!(q.totals().sent, 3);
        accounted(&q);
    }

    #[test]
    fn the_interval_sends_a_partial_batch_per_topic() {
        let mut q = kafka();
        let mut rng = rng();
        q.push(event("audit", 1, 0));
        q.push(event("security", 2, 100));
        assert!(q.poll(999, &mut rng).0.is_empty());
        let (sends, _) = q.poll(1000, &mut rng);
        let paths: Vec<&str> = sends.iter().map(|s| s.path.as_str()).collect();
        // One topic per request: the security event waits for its own interval.
        assert_eq!(paths, ["/topics/audit"]);
        let (sends, _) = q.poll(1100, &mut rng);
        assert_eq!(sends[0].path, "/topics/security");
        accounted(&q);
    }

    #[test]
    fn ndjson_mixes_types_in_one_body() {
        let mut q = DeliveryQueue::new(settings(Format::Ndjson {
            path: "/ingest".into(),
        }));
        let mut rng = rng();
        for (i, topic) in ["a", "b", "c"].into_iter().enumerate() {
            q.push(event(topic, i as u32, 0));
        }
        let (sends, _) = q.poll(0, &mut rng);
        assert_eq!(sends[0].path, "/ingest");
        assert_eq!(sends[0].content_type, "application/x-ndjson");
        assert_eq!(
            sends[0].body,
            b"{\"event_id\":\"e0\"}\n{\"event_id\":\"e1\"}\n{\"event_id\":\"e2\"}\n"
        );
    }

    #[test]
    fn failures_retry_with_growing_jittered_backoff_then_drop() {
        let mut q = kafka();
        let mut rng = rng();
        for i in 0..3 {
            q.push(event("audit", i, 0));
        }
        let (sends, _) = q.poll(0, &mut rng);
        let first = sends[0].batch_id;
        let a = q
            .on_answer(
                first,
                Some((503, b"{\"error_code\":50301,\"message\":\"down\"}")),
                10,
                &mut rng,
            )
            .unwrap();
        assert_eq!((a.retried, a.dropped), (3, 0));
        assert_eq!(
            a.problem.as_deref(),
            Some("status 503 (error_code 50301: down)")
        );
        // Retry 1 waits 50..=100 ms after the failure.
        assert!(q.poll(10 + 49, &mut rng).0.is_empty());
        let (sends, _) = q.poll(10 + 100, &mut rng);
        assert_eq!(sends.len(), 1);
        let body = sends[0].body.clone();
        let b = q.on_answer(sends[0].batch_id, None, 120, &mut rng).unwrap();
        assert_eq!(b.retried, 3);
        // Retry 2 waits 100..=200 ms; it resends the same bytes (same ids).
        assert!(q.poll(120 + 99, &mut rng).0.is_empty());
        let (sends, _) = q.poll(120 + 200, &mut rng);
        assert_eq!(sends[0].body, body);
        let c = q.on_answer(sends[0].batch_id, None, 400, &mut rng).unwrap();
        assert_eq!((c.retried, c.dropped), (0, 3), "max_retries 2: dropped");
        assert_eq!(
            q.totals(),
            Totals {
                emitted: 3,
                sent: 0,
                retried: 6,
                dropped: 3
            }
        );
        accounted(&q);
    }

    #[test]
    fn refusals_are_not_retried() {
        let mut q = kafka();
        let mut rng = rng();
        for i in 0..3 {
            q.push(event("audit", i, 0));
        }
        let (sends, _) = q.poll(0, &mut rng);
        let a = q
            .on_answer(
                sends[0].batch_id,
                Some((
                    404,
                    br#"{"error_code":40401,"message":"Topic audit not found."}"#,
                )),
                5,
                &mut rng,
            )
            .unwrap();
        assert_eq!((a.retried, a.dropped), (0, 3));
        assert_eq!(
            a.problem.as_deref(),
            Some("status 404 (error_code 40401: Topic audit not found.)")
        );
        assert!(q.on_answer(sends[0].batch_id, None, 6, &mut rng).is_none());
        accounted(&q);
    }

    #[test]
    fn a_batch_too_large_is_split_until_its_halves_pass() {
        let mut q = kafka();
        let mut rng = rng();
        for i in 0..3 {
            q.push(event("audit", i, 0));
        }
        let (sends, _) = q.poll(0, &mut rng);
        assert_eq!(sends[0].events, 3);
        let a = q
            .on_answer(sends[0].batch_id, Some((413, b"")), 5, &mut rng)
            .unwrap();
        assert_eq!((a.sent, a.retried, a.dropped), (0, 3, 0));
        assert_eq!(
            a.problem.as_deref(),
            Some("status 413: batch of 3 split in two and sent again")
        );
        accounted(&q);
        // Both halves go at once, no backoff: event 0, then events 1-2.
        let (halves, _) = q.poll(5, &mut rng);
        let body = |s: &Send| String::from_utf8(s.body.clone()).unwrap();
        assert_eq!(
            halves.iter().map(body).collect::<Vec<_>>(),
            [
                r#"{"records":[{"key":"k0","value":{"event_id":"e0"}}]}"#,
                r#"{"records":[{"key":"k1","value":{"event_id":"e1"}},{"key":"k2","value":{"event_id":"e2"}}]}"#,
            ]
        );
        // The first half passes; the second is split again into single events: one passes,
        // the other, too large alone, is dropped (a 413 on one event is not retried).
        q.on_answer(halves[0].batch_id, Some((200, b"")), 6, &mut rng);
        q.on_answer(halves[1].batch_id, Some((413, b"")), 6, &mut rng);
        let (singles, _) = q.poll(6, &mut rng);
        assert_eq!(singles.iter().map(|s| s.events).collect::<Vec<_>>(), [1, 1]);
        q.on_answer(singles[0].batch_id, Some((200, b"")), 7, &mut rng);
        let last = q
            .on_answer(singles[1].batch_id, Some((413, b"")), 7, &mut rng)
            .unwrap();
        assert_eq!((last.retried, last.dropped), (0, 1));
        assert_eq!(last.problem.as_deref(), Some("status 413"));
        assert_eq!(
            (q.totals().sent, q.totals().retried, q.totals().dropped),
            (2, 5, 1)
        );
        assert_eq!(q.buffered(), 0);
        accounted(&q);
        // Later batches stay under half the smallest body refused (two events): one event
        // each, no round of splits per batch.
        for i in 3..6 {
            q.push(event("audit", i, 8));
        }
        let (later, _) = q.poll(8 + 1000, &mut rng);
        assert_eq!(later.iter().map(|s| s.events).collect::<Vec<_>>(), [1, 1]);
        accounted(&q);
    }

    #[test]
    fn per_record_errors_in_a_200_retry_the_retriable_ones() {
        let mut q = kafka();
        let mut rng = rng();
        for i in 0..3 {
            q.push(event("audit", i, 0));
        }
        let (sends, _) = q.poll(0, &mut rng);
        let a = q
            .on_answer(
                sends[0].batch_id,
                Some((
                    200,
                    br#"{"offsets":[{"partition":0,"offset":7,"error_code":null},{"error_code":2,"error":"leader moved"},{"error_code":1,"error":"too large"}]}"#,
                )),
                5,
                &mut rng,
            )
            .unwrap();
        assert_eq!((a.sent, a.retried, a.dropped), (1, 1, 1));
        let (sends, _) = q.poll(1000, &mut rng);
        assert_eq!(
            String::from_utf8(sends[0].body.clone()).unwrap(),
            r#"{"records":[{"key":"k1","value":{"event_id":"e1"}}]}"#
        );
        accounted(&q);
    }

    /// Codes as Confluent's kafka-rest (`KafkaExceptionMapper`) and Strimzi's bridge send them.
    #[test]
    fn record_errors_are_retried_when_the_rest_proxy_says_they_may_pass() {
        for code in [2, 50_003, 50_302, 42_901, 40_801, 500, 503] {
            assert!(retriable_record_error(code), "{code}");
        }
        for code in [1, 50_002, 40_101, 40_301, 40_401, 42_202, 404, 0] {
            assert!(!retriable_record_error(code), "{code}");
        }
        // A real Confluent answer: two retriable failures and one that is not.
        let body = br#"{"offsets":[{"partition":null,"offset":null,"error_code":50003,"error":"NOT_ENOUGH_REPLICAS"},{"partition":null,"offset":null,"error_code":50003,"error":"NOT_ENOUGH_REPLICAS"},{"partition":null,"offset":null,"error_code":50002,"error":"RecordTooLargeException"}],"key_schema_id":null,"value_schema_id":null}"#;
        assert_eq!(record_errors(body, 3), [(0, true), (1, true), (2, false)]);
    }

    #[test]
    fn a_full_buffer_drops_and_counts() {
        let mut q = kafka();
        for i in 0..12 {
            q.push(event("audit", i, 0));
        }
        assert_eq!(q.buffered(), 10);
        assert_eq!(q.totals().dropped, 2);
        assert_eq!(q.totals().emitted, 12);
        accounted(&q);
    }

    #[test]
    fn in_flight_is_bounded_and_silence_counts_as_failure() {
        let mut q = kafka();
        let mut rng = rng();
        for i in 0..9 {
            q.push(event("audit", i, 0));
        }
        let (sends, _) = q.poll(0, &mut rng);
        assert_eq!(sends.len(), 2, "max_in_flight");
        let (sends, expired) = q.poll(4999, &mut rng);
        assert!(sends.is_empty() && expired.is_empty());
        let (sends, expired) = q.poll(5000, &mut rng);
        assert_eq!(expired.len(), 2);
        assert!(expired.iter().all(|e| e.retried == 3));
        assert_eq!(
            sends.len(),
            1,
            "the third batch; the retries wait out their backoff"
        );
        let (sends, _) = q.poll(5100, &mut rng);
        assert_eq!(sends.len(), 1, "one retry fills the second slot");
        assert_eq!(q.buffered(), 9);
        accounted(&q);
    }

    #[test]
    fn abandoning_counts_waiting_and_retrying_events_and_keeps_those_in_flight() {
        let mut q = kafka();
        let mut rng = rng();
        for i in 0..8 {
            q.push(event("audit", i, 0));
        }
        // Two batches of 3 go out; one fails and waits for its retry; 2 events still wait.
        let (sends, _) = q.poll(0, &mut rng);
        let [first, second] = sends.as_slice() else {
            panic!("two batches: {sends:?}")
        };
        q.on_answer(first.batch_id, Some((500, b"")), 10, &mut rng);
        let abandoned = q.abandon();
        assert_eq!(
            abandoned,
            Abandoned {
                dropped: 5,
                in_flight: 3
            }
        );
        assert_eq!(q.totals().dropped, 5);
        accounted(&q);
        // The batch in flight is still counted when its answer comes.
        q.on_answer(
            second.batch_id,
            Some((200, br#"{"offsets":[{},{},{}]}"#)),
            20,
            &mut rng,
        );
        assert_eq!(q.totals().sent, 3);
        assert_eq!(q.buffered(), 0);
        accounted(&q);
    }

    #[test]
    fn draining_sends_what_waits_at_once_and_retries_keep_their_backoff() {
        let mut q = kafka();
        let mut rng = rng();
        q.push(event("audit", 1, 0));
        q.push(event("audit", 2, 0));
        // Not full, not old: nothing goes yet.
        assert!(q.poll(10, &mut rng).0.is_empty());
        q.drain();
        let (sends, _) = q.poll(10, &mut rng);
        assert_eq!(sends.len(), 1);
        assert_eq!(q.buffered(), 2, "in flight");
        // It fails: retried after its backoff, not at once.
        q.on_answer(sends[0].batch_id, Some((500, b"")), 20, &mut rng);
        assert!(q.poll(21, &mut rng).0.is_empty());
        let (retried, _) = q.poll(20 + 200, &mut rng);
        assert_eq!(retried.len(), 1);
        q.on_answer(
            retried[0].batch_id,
            Some((200, br#"{"offsets":[{},{}]}"#)),
            230,
            &mut rng,
        );
        assert_eq!((q.totals().sent, q.buffered()), (2, 0));
        accounted(&q);
    }

    #[test]
    fn the_drain_bound_counts_rounds_and_abandoning_all_counts_what_is_in_flight() {
        let mut q = kafka();
        let mut rng = rng();
        // One try: 5 s answer deadline, 2 retries with at most 1 s of backoff: 17 s a batch.
        assert_eq!(q.drain_bound_ms(), 17_000);
        for i in 0..10 {
            q.push(event("audit", i, 0));
        }
        // 4 batches of 3, 2 at a time: two rounds.
        assert_eq!(q.drain_bound_ms(), 34_000);
        q.drain();
        let (sends, _) = q.poll(0, &mut rng);
        assert_eq!(sends.len(), 2);
        let abandoned = q.abandon_all();
        assert_eq!(
            abandoned,
            Abandoned {
                dropped: 10,
                in_flight: 0
            }
        );
        assert_eq!((q.totals().dropped, q.buffered()), (10, 0));
        accounted(&q);
    }
}
