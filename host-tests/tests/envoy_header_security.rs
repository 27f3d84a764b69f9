//! palisade-header-security's response headers in real Envoy.

use palisade::envoy::Filter;
use palisade::plugins;
use palisade_host_tests::envoy_harness::EnvoyTest;

fn header_security(config: &str) -> EnvoyTest {
    EnvoyTest::start(vec![Filter::new(
        plugins::find("header-security").unwrap(),
        config,
    )])
}

#[test]
fn api_preset_by_default_and_leaky_headers_removed() {
    let test = header_security("{}");
    for _ in 0..6 {
        let reply = test.get("/", &[]);
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("strict-transport-security"),
            Some("max-age=31536000; includeSubDomains")
        );
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(reply.header("x-frame-options"), Some("DENY"));
        assert_eq!(
            reply.header("content-security-policy"),
            Some("default-src 'none'; frame-ancestors 'none'")
        );
        assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        assert_eq!(reply.header("server"), None);
        assert_eq!(reply.header("x-powered-by"), None);
        assert_eq!(reply.header("x-envoy-upstream-service-time"), None);
        // The body is the upstream's, untouched.
        assert!(reply.body.starts_with(r#"{"headers":"#), "{}", reply.body);
    }
}

#[test]
fn strict_preset_with_overrides() {
    let test = header_security(
        r#"{"security_headers":{"preset":"strict",
            "headers":{"x-frame-options":"SAMEORIGIN","cross-origin-embedder-policy":null,"x-served-by":"palisade"},
            "remove":["x-powered-by"]}}"#,
    );
    let reply = test.get("/", &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(
        reply.header("cross-origin-opener-policy"),
        Some("same-origin")
    );
    assert_eq!(reply.header("cross-origin-embedder-policy"), None);
    assert_eq!(reply.header("x-served-by"), Some("palisade"));
    assert_eq!(
        reply.header("permissions-policy"),
        Some("camera=(), microphone=(), geolocation=(), payment=(), usb=()")
    );
    // Only x-powered-by is removed now: the upstream's server header stays.
    assert_eq!(reply.header("x-powered-by"), None);
    assert_eq!(reply.header("server"), Some("demo-upstream/1.0"));
}

#[test]
fn upstream_values_are_replaced_not_duplicated() {
    let test = header_security(
        r#"{"security_headers":{"preset":"none","headers":{"server":"edge"},"remove":[]}}"#,
    );
    let reply = test.get("/", &[]);
    let servers: Vec<_> = reply
        .headers
        .iter()
        .filter(|(n, _)| n == "server")
        .collect();
    assert_eq!(servers, [&("server".to_owned(), "edge".to_owned())]);
}

use palisade_host_tests::envoy_harness::Body;

#[test]
fn body_limit_from_content_length_and_from_streamed_bytes() {
    let test = header_security(r#"{"limits":{"max_body_bytes":1024}}"#);
    let ok = test.send("POST", "/upload", &[], Body::Bytes(vec![b'a'; 1024]));
    assert_eq!(ok.status, 200);
    let declared = test.send(
        "POST",
        "/upload",
        &[("x-request-id", "big-1")],
        Body::Bytes(vec![b'a'; 1025]),
    );
    assert_eq!(declared.status, 413);
    assert_eq!(
        declared.body,
        r#"{"error":"request body too large","status":413,"request_id":"big-1"}"#
    );
    assert_eq!(declared.header("content-type"), Some("application/json"));
    let streamed = test.send(
        "POST",
        "/upload",
        &[("x-request-id", "big-2")],
        Body::Chunked(vec![b'a'; 64 * 1024]),
    );
    assert_eq!(streamed.status, 413, "{}", streamed.body);
    assert_eq!(
        streamed.body,
        r#"{"error":"request body too large","status":413,"request_id":"big-2"}"#
    );
    let small_stream = test.send("POST", "/upload", &[], Body::Chunked(vec![b'a'; 512]));
    assert_eq!(small_stream.status, 200);
    // The declared oversize body never reached the upstream. The streamed one may have started
    // to (its headers went ahead before the body was counted), but never arrived whole.
    let seen = test.upstream.seen();
    assert!(
        seen.iter()
            .all(|r| r.header("x-request-id") != Some("big-1")),
        "{seen:?}"
    );
    let complete: Vec<u64> = seen
        .iter()
        .filter(|r| r.body_complete)
        .map(|r| r.body_len)
        .collect();
    assert_eq!(complete, [1024, 512], "{seen:?}");
}

#[test]
fn header_limits_methods_and_hosts() {
    let test = header_security(
        r#"{"limits":{"max_header_count":20,"max_header_bytes":2048,
            "allowed_methods":["GET","POST"],"allowed_hosts":["api.example.com","*.example.org"]}}"#,
    );
    let host = ("host", "api.example.com");
    assert_eq!(test.get("/", &[host]).status, 200);
    assert_eq!(test.get("/", &[("host", "a.example.org:8080")]).status, 200);

    let refused = test.get(
        "/",
        &[("host", "evil.example.com"), ("x-request-id", "host-1")],
    );
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.body,
        r#"{"error":"host not allowed","status":403,"request_id":"host-1"}"#
    );
    assert_eq!(refused.header("content-type"), Some("application/json"));

    let delete = test.send(
        "DELETE",
        "/",
        &[host, ("x-request-id", "method-1")],
        Body::None,
    );
    assert_eq!(delete.status, 405);
    assert_eq!(delete.header("allow"), Some("GET, POST"));
    assert_eq!(
        delete.body,
        r#"{"error":"method not allowed","status":405,"request_id":"method-1"}"#
    );

    let many: Vec<(String, String)> = (0..25)
        .map(|i| (format!("x-h{i}"), "v".to_owned()))
        .collect();
    let mut headers: Vec<(&str, &str)> =
        many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    headers.push(host);
    headers.push(("x-request-id", "many-1"));
    let too_many = test.get("/", &headers);
    assert_eq!(too_many.status, 431);
    assert_eq!(
        too_many.body,
        r#"{"error":"too many request headers","status":431,"request_id":"many-1"}"#
    );

    let big = "v".repeat(3000);
    let too_large = test.get("/", &[host, ("x-big", &big), ("x-request-id", "large-1")]);
    assert_eq!(too_large.status, 431);
    assert_eq!(
        too_large.body,
        r#"{"error":"request headers too large","status":431,"request_id":"large-1"}"#
    );
    assert_eq!(test.upstream.seen().len(), 2);
}

#[test]
fn request_ids_traceparent_and_transforms() {
    let test = header_security(
        r#"{"transforms":{
            "request":[{"set":{"name":"x-client","value":"${client_address}"}},{"set":{"name":"x-route","value":"${route}"}},
                       {"rename":{"from":"x-legacy-user","to":"x-user"}},{"remove":"x-debug"}],
            "response":[{"add":{"name":"x-served-by","value":"palisade ${request_id}"}},{"remove":"x-powered-by"}]},
            "trace_context":{"sampling_rate":1.0}}"#,
    );
    let reply = test.get(
        "/orders",
        &[
            ("x-legacy-user", "ada"),
            ("x-debug", "1"),
            ("tracestate", "vendor=stray"),
        ],
    );
    assert_eq!(reply.status, 200);
    let seen = &test.upstream.seen()[0];
    // A tracestate without a traceparent belongs to no trace (W3C Trace Context, 4.2).
    assert_eq!(seen.header("tracestate"), None);
    // Envoy generates x-request-id before any filter; the plugin keeps it and echoes it.
    let id = seen
        .header("x-request-id")
        .expect("upstream saw a request id");
    assert_eq!(reply.header("x-request-id"), Some(id));
    assert_eq!(
        reply.header("x-served-by"),
        Some(format!("palisade {id}").as_str())
    );
    let traceparent = seen
        .header("traceparent")
        .expect("a traceparent was created");
    assert!(
        traceparent.starts_with("00-") && traceparent.ends_with("-01"),
        "{traceparent}"
    );
    assert_eq!(seen.header("x-client"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-route"), Some("default"));
    assert_eq!(seen.header("x-user"), Some("ada"));
    assert_eq!(seen.header("x-legacy-user"), None);
    assert_eq!(seen.header("x-debug"), None);
    assert_eq!(reply.header("x-powered-by"), None);

    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    test.get(
        "/",
        &[
            ("traceparent", given),
            ("tracestate", "vendor=kept"),
            ("x-request-id", "client-id-7"),
        ],
    );
    let seen = &test.upstream.seen()[1];
    assert_eq!(seen.header("traceparent"), Some(given));
    assert_eq!(seen.header("tracestate"), Some("vendor=kept"));
    assert_eq!(seen.header("x-request-id"), Some("client-id-7"));
}

#[test]
fn cors_preflight_and_actual_requests() {
    let test = header_security(
        r#"{"cors":{"allow_origins":[{"wildcard":"https://*.example.com"}],"allow_methods":["GET","PUT"],
            "allow_headers":["authorization"],"max_age":"10m","allow_credentials":true,"disallowed_preflight":"reject"}}"#,
    );
    let preflight = test.send(
        "OPTIONS",
        "/orders",
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "PUT"),
        ],
        Body::None,
    );
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        preflight.header("access-control-allow-methods"),
        Some("GET, PUT")
    );
    assert_eq!(preflight.header("access-control-max-age"), Some("600"));
    assert_eq!(preflight.header("vary"), Some("Origin"));

    let refused = test.send(
        "OPTIONS",
        "/orders",
        &[
            ("origin", "https://evil.com"),
            ("access-control-request-method", "PUT"),
            ("x-request-id", "cors-1"),
        ],
        Body::None,
    );
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("access-control-allow-origin"), None);
    assert_eq!(
        refused.body,
        r#"{"error":"origin not allowed","status":403,"request_id":"cors-1"}"#
    );

    let actual = test.get("/orders", &[("origin", "https://app.example.com")]);
    assert_eq!(actual.status, 200);
    assert_eq!(
        actual.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        actual.header("access-control-allow-credentials"),
        Some("true")
    );
    // Only the actual request reached the upstream.
    assert_eq!(test.upstream.seen().len(), 1);
}

/// Sends one raw HTTP/1.1 request (bytes no HTTP client would send) and returns the status.
fn raw_status(test: &EnvoyTest, request: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", test.envoy.port())).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    socket.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

/// Without limits of its own the plugin reads no more than the few headers it needs: these
/// checks are Envoy's, before any filter (docs/header-security.md).
#[test]
fn envoy_enforces_header_limits_and_control_characters_the_plugin_leaves_to_it() {
    let test = header_security("{}");
    let control =
        b"GET / HTTP/1.1\r\nhost: api.example.com\r\nx-a: a\x1bb\r\nconnection: close\r\n\r\n";
    assert_eq!(raw_status(&test, control), 400);
    let delete =
        b"GET / HTTP/1.1\r\nhost: api.example.com\r\nx-a: a\x7fb\r\nconnection: close\r\n\r\n";
    assert_eq!(raw_status(&test, delete), 400);

    // max_request_headers_count: 100 by default.
    let many: Vec<(String, String)> = (0..101)
        .map(|i| (format!("x-h{i}"), "v".to_owned()))
        .collect();
    let headers: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(test.get("/", &headers).status, 431);
    // max_request_headers_kb: 60 KiB by default.
    let big = "v".repeat(61 * 1024);
    assert_eq!(test.get("/", &[("x-big", &big)]).status, 431);
    assert!(test.upstream.seen().is_empty());
    // An ordinary request still passes.
    assert_eq!(test.get("/", &[("x-a", "a\tb")]).status, 200);
}

/// Envoy hands a WebSocket's traffic to the filter as request body: past `max_body_bytes` in
/// all, a healthy long-lived connection must not be cut. Before the upstream's 101, the same
/// bytes are a body, and the limit holds.
#[test]
fn a_websockets_traffic_is_not_counted_as_a_body() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    const LIMIT: usize = 1000;
    const SENT: usize = 8 * LIMIT;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The upstream: answers the upgrade with 101, then counts what arrives.
    let upstream = std::thread::spawn(move || -> usize {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        read_head(&mut conn);
        conn.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )
        .unwrap();
        let mut got = 0;
        let mut buf = [0u8; 4096];
        while got < SENT {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        conn.write_all(format!("got {got}").as_bytes()).ok();
        got
    });
    let config = format!(r#"{{"limits":{{"max_body_bytes":{LIMIT}}}}}"#);
    let test = EnvoyTest::start_edited(
        vec![Filter::new(
            plugins::find("header-security").unwrap(),
            &config,
        )],
        |bootstrap| {
            let manager = palisade_host_tests::envoy_harness::hcm(bootstrap);
            manager["upgrade_configs"] = serde_json::json!([{"upgrade_type": "websocket"}]);
            manager["route_config"]["virtual_hosts"][0]["routes"]
                .as_array_mut()
                .unwrap()
                .insert(
                    0,
                    serde_json::json!({"match": {"prefix": "/ws"}, "route": {"cluster": "ws"}}),
                );
            bootstrap["static_resources"]["clusters"]
                .as_array_mut()
                .unwrap()
                .push(palisade_host_tests::envoy_harness::static_cluster(
                    "ws", port,
                ));
        },
    );
    let mut client = TcpStream::connect(("127.0.0.1", test.envoy.port())).unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    client
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let head = read_head(&mut client);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for _ in 0..SENT / 500 {
        client.write_all(&[b'x'; 500]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut answer = [0u8; 64];
    let n = client.read(&mut answer).unwrap_or(0);
    assert_eq!(
        String::from_utf8_lossy(&answer[..n]),
        format!("got {SENT}"),
        "the connection was cut; Envoy log:\n{}",
        test.envoy.log()
    );
    assert_eq!(upstream.join().unwrap(), SENT);
    // An ordinary streamed body past the limit is still refused.
    let streamed = test.send("POST", "/upload", &[], Body::Chunked(vec![b'a'; SENT]));
    assert_eq!(streamed.status, 413, "{}", streamed.body);
}

/// The head of an HTTP/1.1 message, up to its blank line.
fn read_head(conn: &mut impl std::io::Read) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}
