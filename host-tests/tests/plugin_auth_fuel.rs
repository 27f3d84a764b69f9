//! Fuel (wasmtime's deterministic instruction count) of one verified request per algorithm: the
//! cold-verification cost, with keys prepared at configuration time. Run with `--nocapture` for
//! the table.

use palisade_host_tests::auth_tokens::{claims, config, Signer, HMAC_SECRET};
use palisade_host_tests::wasm_host::{
    Callback, Failure, Host, Outcome, Plugin, Profile, Request, START_UNIX_SECS,
};
use serde_json::json;

fn fuel_of(config: &str, alg: &str, token: &str) -> Result<u64, Failure> {
    let host = Host::new(Profile::Envoy);
    let vms = host.load(Plugin::Auth, config)?;
    assert!(vms.is_accepted(), "{:?}", vms.logs());
    let mut stream = vms.http_request(
        Request::get("/api/orders")
            .header("authorization", format!("Bearer {token}"))
            .header("user-agent", "palisade-bench/1"),
    )?;
    assert_eq!(
        stream.send_request_headers(true)?,
        Outcome::Continue,
        "{alg}"
    );
    Ok(stream
        .fuel_by_callback()
        .iter()
        .filter(|(callback, _)| *callback == Callback::RequestHeaders)
        .map(|(_, fuel)| fuel)
        .sum())
}

#[test]
fn fuel_per_verified_request_by_algorithm() -> Result<(), Failure> {
    let public = config(json!({}));
    let hmac = config(json!({"algorithms": ["HS256"], "jwks": null, "hmac_secret": HMAC_SECRET}));
    let mut table = String::from("alg      request_headers fuel\n");
    let mut fuel = Vec::new();
    for alg in ["RS256", "PS256", "ES256", "ES384", "EdDSA", "HS256"] {
        let config = if alg == "HS256" { &hmac } else { &public };
        // One token per algorithm: PSS and ECDSA signatures are randomised, and the cost of a
        // check depends a little on the signature's bytes.
        let token = Signer::for_alg(alg).sign(&claims(START_UNIX_SECS));
        let cost = fuel_of(config, alg, &token)?;
        // Deterministic: the same request on a fresh host costs the same.
        assert_eq!(cost, fuel_of(config, alg, &token)?, "{alg}");
        table.push_str(&format!("{alg:<8} {cost:>20}\n"));
        fuel.push((alg, cost));
    }
    println!("{table}");
    let of = |name: &str| fuel.iter().find(|(a, _)| *a == name).map_or(0, |(_, f)| *f);
    // An HMAC is far cheaper than any public-key check; a signature check dominates the rest.
    assert!(of("HS256") * 10 < of("RS256"), "{table}");
    assert!(of("HS256") * 10 < of("ES256"), "{table}");
    Ok(())
}
