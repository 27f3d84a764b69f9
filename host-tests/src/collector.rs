//! A loopback Kafka REST Proxy (v2 produce API) for palisade-audit's end-to-end tests. It does
//! what Confluent's REST Proxy does with JSON records:
//!
//! - `POST /topics/<topic>` with `Content-Type: application/vnd.kafka.json.v2+json`, any other
//!   content type: 415 `{"error_code":415,...}`;
//! - body `{"records":[{"key":..,"value":{..}}, ..]}`: a body that is not that shape is 422
//!   `{"error_code":42201,...}`; a topic it does not know is 404 `{"error_code":40401,...}`;
//! - success: 200 with `Content-Type: application/vnd.kafka.v2+json` and
//!   `{"offsets":[{"partition":0,"offset":N,"error_code":null,"error":null}],
//!   "key_schema_id":null,"value_schema_id":null}`;
//! - it can be told to fail with 500 `{"error_code":50001,...}`, and stopped and restarted on
//!   the same port.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use palisade::http_server::{Request, Response, Server};
use serde_json::{json, Value};

/// A record the collector accepted.
#[derive(Debug, Clone)]
pub struct Produced {
    pub topic: String,
    pub key: Value,
    pub value: Value,
}

#[derive(Debug, Default)]
struct State {
    records: Vec<Produced>,
    /// Requests answered, by status.
    answers: Vec<u16>,
    failing: bool,
}

/// The running collector. Stopped when dropped.
pub struct KafkaRestCollector {
    addr: SocketAddr,
    topics: BTreeSet<String>,
    state: Arc<Mutex<State>>,
    server: Option<Server>,
}

impl KafkaRestCollector {
    /// Listens on 127.0.0.1 (port 0: any) and accepts these topics.
    pub fn start(port: u16, topics: &[&str]) -> std::io::Result<Self> {
        let mut collector = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            state: Arc::default(),
            server: None,
        };
        collector.listen()?;
        Ok(collector)
    }

    fn listen(&mut self) -> std::io::Result<()> {
        let state = Arc::clone(&self.state);
        let topics = self.topics.clone();
        let server = Server::start(self.addr, move |request| answer(&request, &topics, &state))?;
        self.addr = server.addr();
        self.server = Some(server);
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and closes its connections: connections are refused until
    /// [`Self::restart`].
    pub fn stop(&mut self) {
        self.server = None;
    }

    /// Listens again on the same port, keeping what it received.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        self.listen()
    }

    /// Answers every produce with 500 / 50001 while `true`.
    pub fn set_failing(&self, failing: bool) {
        lock(&self.state).failing = failing;
    }

    pub fn records(&self) -> Vec<Produced> {
        lock(&self.state).records.clone()
    }

    pub fn answers(&self) -> Vec<u16> {
        lock(&self.state).answers.clone()
    }
}

impl Drop for KafkaRestCollector {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn error(status: u16, code: u32, message: &str) -> (u16, Value) {
    (status, json!({"error_code": code, "message": message}))
}

fn answer(request: &Request, topics: &BTreeSet<String>, state: &Mutex<State>) -> Response {
    let body = std::str::from_utf8(&request.body)
        .ok()
        .filter(|_| request.body_complete);
    let content_type = request.header("content-type");
    let url = request.path.as_str();
    let (status, reply) = (|| {
        if request.method != "POST" {
            return error(405, 405, "HTTP 405 Method Not Allowed");
        }
        let Some(topic) = url.strip_prefix("/topics/") else {
            return error(404, 404, "HTTP 404 Not Found");
        };
        if content_type != Some("application/vnd.kafka.json.v2+json") {
            return error(415, 415, "HTTP 415 Unsupported Media Type");
        }
        if !topics.contains(topic) {
            return error(404, 40401, &format!("Topic {topic} not found."));
        }
        let parsed: Option<Vec<Value>> = body
            .and_then(|body| serde_json::from_str::<Value>(body).ok())
            .and_then(|v| v.get("records")?.as_array().cloned())
            .filter(|records| {
                !records.is_empty()
                    && records.iter().all(|r| {
                        r.as_object().is_some_and(|o| {
                            o.contains_key("value")
                                && o.keys()
                                    .all(|k| k == "key" || k == "value" || k == "partition")
                        })
                    })
            });
        let Some(records) = parsed else {
            return error(422, 42201, "Unrecognized field or malformed records");
        };
        let mut state = lock(state);
        if state.failing {
            return error(500, 50001, "Internal Kafka error");
        }
        let mut offsets = Vec::new();
        for record in records {
            offsets.push(json!({
                "partition": 0,
                "offset": state.records.len(),
                "error_code": null,
                "error": null,
            }));
            state.records.push(Produced {
                topic: topic.to_owned(),
                key: record.get("key").cloned().unwrap_or(Value::Null),
                value: record.get("value").cloned().unwrap_or(Value::Null),
            });
        }
        (
            200,
            json!({"offsets": offsets, "key_schema_id": null, "value_schema_id": null}),
        )
    })();
    lock(state).answers.push(status);
    Response {
        status,
        headers: vec![(
            "content-type".to_owned(),
            "application/vnd.kafka.v2+json".to_owned(),
        )],
        body: reply.to_string().into_bytes(),
    }
}
