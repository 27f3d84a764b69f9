//! palisade-rate-limit in real Envoy (V8, 2 workers): many concurrent requests on many
//! connections against a limit of N, exactly N admitted; the 429 reply exact.

use std::sync::Arc;

use palisade::envoy::Filter;
use palisade::plugins;
use palisade_host_tests::envoy_harness::{EnvoyTest, Reply};

/// Admitted at once: a limit of 1 per hour with a burst of N - 1.
const N: usize = 25;
const THREADS: usize = 8;
const PER_THREAD: usize = 10;

fn config() -> String {
    format!(
        r#"{{"limits":[{{"name":"all","rate":1,"period":"1h","burst":{},"key":[{{"constant":"all"}}],"slots":64}}]}}"#,
        N - 1
    )
}

#[test]
fn concurrent_requests_on_both_workers_admit_exactly_the_limit() {
    let plugin = plugins::find("palisade-rate-limit").expect("registered");
    let test = Arc::new(EnvoyTest::start(vec![Filter::new(plugin, config())]));
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let test = Arc::clone(&test);
                scope.spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| {
                            let id = format!("r-{t}-{i}");
                            // A new connection per request, so both workers serve them.
                            test.get("/orders", &[("x-request-id", &id), ("connection", "close")])
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect()
    });
    let admitted: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(admitted.len(), N, "admitted");
    assert_eq!(refused.len(), THREADS * PER_THREAD - N, "the rest refused");
    assert_eq!(
        test.upstream.seen().len(),
        N,
        "only the admitted reach the upstream"
    );

    for reply in &admitted {
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some(format!("\"all\";q={N};w=3600").as_str())
        );
        assert!(reply
            .header("ratelimit")
            .is_some_and(|v| v.starts_with("\"all\";r=")));
    }
    for reply in &refused {
        assert_eq!(reply.header("content-type"), Some("application/json"));
        // Whole seconds, rounded up: at most one period, less the time the test took.
        let secs = |v: Option<&str>| v.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let retry = secs(reply.header("retry-after"));
        assert!((3000..=3600).contains(&retry), "retry-after {retry}");
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some(format!("\"all\";q={N};w=3600").as_str())
        );
        let reset = reply
            .header("ratelimit")
            .and_then(|v| v.strip_prefix("\"all\";r=0;t="));
        let full = (N * 3600) as u64;
        assert!((full - 600..=full).contains(&secs(reset)), "{reply:?}");
        let body: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON body");
        assert_eq!(body["error"], "rate limit exceeded");
        assert_eq!(body["status"], 429);
        assert!(body["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("r-")));
    }
    // Both workers' VMs configured and created (or found) the slots; none refused a config.
    assert!(test
        .log_lines("[palisade-rate-limit] configuration rejected")
        .is_empty());
    assert!(!test.log_lines("shared-data slots created").is_empty());
}
