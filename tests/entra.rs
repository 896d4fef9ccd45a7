//! The Secure Webhook token check (`itsmc::server::entra`) against the Entra ID emulator: the tokens
//! Entra issues to the Azure Monitor action group app are accepted, everything else is refused with
//! the right code and status, and the tenant's keys are fetched no more than they need to be.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use itsmc::http::{HttpSettings, build_client};
use itsmc::server::entra::{EntraSettings, EntraValidator, RefreshPolicy, Rejection, TokenVersion};
use serde_json::{Value, json};
use support::entra::{
    ACTION_GROUP_APP_ID, APP_ID_URI, CLIENT_ID, EntraEmulator, OTHER_TENANT_ID, TENANT_DOMAIN, TENANT_ID, TestKey,
    edit, now,
};

fn settings(emulator: &EntraEmulator, tenant: &str, require_role: bool) -> EntraSettings {
    EntraSettings::new(tenant, vec![CLIENT_ID.into(), APP_ID_URI.into()], require_role, Some(&emulator.authority()))
        .expect("valid settings")
}

fn validator(emulator: &EntraEmulator) -> EntraValidator {
    validator_with(emulator, RefreshPolicy::default())
}

fn validator_with(emulator: &EntraEmulator, policy: RefreshPolicy) -> EntraValidator {
    let http = build_client(&HttpSettings::default()).expect("HTTP client");
    EntraValidator::new(settings(emulator, TENANT_ID, false), http).with_refresh_policy(policy)
}

/// Short intervals, so that tests can wait them out.
fn quick_policy() -> RefreshPolicy {
    RefreshPolicy {
        min_interval: Duration::from_millis(300),
        retry_after_failure: Duration::from_millis(300),
        ..RefreshPolicy::default()
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn refused(validator: &EntraValidator, authorization: Option<&str>, code: &str, status: u16) -> Rejection {
    let rejection = validator.check(authorization).await.expect_err("the token should be refused");
    assert_eq!((rejection.code(), rejection.status().as_u16()), (code, status), "{rejection:?}");
    rejection
}

/// The reason is only in the debug log; its Debug form lets tests check the check that fired.
fn assert_reason(rejection: &Rejection, fragment: &str) {
    let debug = format!("{rejection:?}");
    assert!(debug.contains(fragment), "expected '{fragment}' in {debug}");
}

async fn refused_token(validator: &EntraValidator, token: &str, code: &str, status: u16) -> Rejection {
    refused(validator, Some(&bearer(token)), code, status).await
}

async fn body_of(rejection: Rejection) -> (u16, Option<String>, Value) {
    let response = rejection.into_response();
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().expect("ASCII challenge").to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024).await.expect("body");
    (status, challenge, serde_json::from_slice(&bytes).expect("JSON body"))
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap();
    serde_json::from_slice::<Value>(&header).unwrap()["kid"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Accepted
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn v1_tokens_for_the_app_id_uri_or_the_client_id_are_accepted() {
    let emulator = EntraEmulator::start();
    let validator = validator(&emulator);
    for audience in [APP_ID_URI, CLIENT_ID] {
        let caller = validator.check(Some(&bearer(&emulator.mint_v1(audience)))).await.expect("accepted");
        assert_eq!(caller.app_id, ACTION_GROUP_APP_ID);
        assert_eq!(caller.tenant_id, TENANT_ID);
        assert_eq!(caller.token_version, TokenVersion::V1);
        assert_eq!(caller.object_id.as_deref(), Some(support::entra::ACTION_GROUP_OBJECT_ID));
        assert_eq!(caller.roles, ["ActionGroupsSecureWebhook"]);
        assert!(caller.expires_at.timestamp() > now() + 3000);
    }
    // One fetch of the configuration and the keys served both.
    assert_eq!((emulator.config_fetches(), emulator.jwks_fetches()), (1, 1));
    assert_eq!(
        emulator.requests(),
        [
            format!("GET /{TENANT_ID}/v2.0/.well-known/openid-configuration"),
            format!("GET /{TENANT_ID}/discovery/v2.0/keys"),
        ]
    );
}

#[tokio::test]
async fn v2_token_is_accepted() {
    let emulator = EntraEmulator::start();
    let validator = validator(&emulator);
    let caller = validator.check(Some(&bearer(&emulator.mint_v2()))).await.expect("accepted");
    assert_eq!(caller.token_version, TokenVersion::V2);
    assert_eq!(caller.tenant_id, TENANT_ID);
}

#[tokio::test]
async fn a_tenant_given_as_a_domain_is_resolved_to_its_id() {
    let emulator = EntraEmulator::start();
    let http = build_client(&HttpSettings::default()).unwrap();
    let validator = EntraValidator::new(settings(&emulator, TENANT_DOMAIN, false), http);
    let caller = validator.check(Some(&bearer(&emulator.mint_v2()))).await.expect("accepted");
    assert_eq!(caller.tenant_id, TENANT_ID);
    assert!(emulator.requests()[0].contains(TENANT_DOMAIN), "{:?}", emulator.requests());
    // ... and a token of another tenant is still refused.
    let other = edit(&emulator.v1_claims(CLIENT_ID), |c| {
        c.insert("tid".into(), json!(OTHER_TENANT_ID));
        c.insert("iss".into(), json!(format!("https://sts.windows.net/{OTHER_TENANT_ID}/")));
    });
    refused_token(&validator, &emulator.sign(&other), "wrong_tenant", 401).await;
}

#[tokio::test]
async fn scheme_and_guids_are_compared_without_regard_to_case() {
    let emulator = EntraEmulator::start();
    let validator = validator(&emulator);
    let claims = edit(&emulator.v1_claims(&CLIENT_ID.to_uppercase()), |c| {
        c.insert("appid".into(), json!(ACTION_GROUP_APP_ID.to_uppercase()));
    });
    validator.check(Some(&format!("bearer {}", emulator.sign(&claims)))).await.expect("accepted");
}

// ---------------------------------------------------------------------------------------------
// Refused: claims
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn wrong_audience_is_refused() {
    let emulator = EntraEmulator::start();
    let validator = validator(&emulator);
    for audience in ["https://management.azure.com/", "00000003-0000-0000-c000-000000000000", "api://itsmc-test/"] {
        let rejection = refused_token(&validator, &emulator.mint_v1(audience), "wrong_audience", 401).await;
        // The answer says nothing about why beyond the code.
        let (status, challenge, body) = body_of(rejection).await;
        assert_eq!(status, 401);
        assert_eq!(challenge.as_deref(), Some("Bearer error=\"invalid_token\""));
        assert_eq!(body["error"]["code"], "wrong_audience");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(!message.contains(audience) && !message.contains(CLIENT_ID), "{message}");
    }
    let claims = edit(&emulator.v2_claims(), |c| {
        c.remove("aud");
    });
    refused_token(&validator, &emulator.sign(&claims), "wrong_audience", 401).await;
}

#[tokio::test]
async fn wrong_caller_app_is_refused() {
    let emulator = EntraEmulator::start();
    let validator = validator(&emulator);
    let other_app = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"; // the Azure CLI
    let v1 = edit(&emulator.v1_claims(CLIENT_ID), |c| {
        c.insert("appid".into(), json!(other_app));
    });
    let rejection = refused_token(&validator, &emulator.sign(&v1), "wrong_caller", 401).await;
    let (_, challenge, _) = body_of(rejection).await;
    assert_eq!(challenge.as_deref(), Some("Bearer error=\"insufficient_scope\""));
    let v2 = edit(&emulator.v2_claims(), |c| {
        c.insert("azp".into(), json!(other_app));
    });
    refused_token(&validator, &emulator.sign(&v2), "wrong_caller", 401).await;
    // A v2 token's caller is azp, not appid; a v1 token's is appid, not azp.
    let v2_with_appid = edit(&emulator.v2_claims(), |c| {
        c.remove("azp");
        c.insert("appid".into(), json!(ACTION_GROUP_APP_ID));
    });
    refused_token(&validator, &emulator.sign(&v2_with_appid), "wrong_caller", 401).await;
    let v1_with_azp = edit(&emulator.v1_claims(CLIENT_ID), |c| {
        c.remove("appid");
        c.insert("azp".into(), json!(ACTION_GROUP_APP_ID));
    });
    refused_token(&validator, &emulator.sign(&v1_with_azp), "wrong_caller", 401).await;
}

#[tokio::test]
async fn wrong_tenant_or_issuer_is_refused() {
    let emulator = EntraEmulator::start();
    let validator = validator(&emulator);
    // Entra signs every tenant's tokens with the same keys: a token of another tenant verifies.
    let other_tenant = edit(&emulator.v1_claims(CLIENT_ID), |c| {
        c.insert("tid".into(), json!(OTHER_TENANT_ID));
        c.insert("iss".into(), json!(format!("https://sts.windows.net/{OTHER_TENANT_ID}/")));
    });
    refused_token(&validator, &emulator.sign(&other_tenant), "wrong_tenant", 401).await;
    // Our issuer with another tid, and the reverse.
    let tid_only = edit(&emulator.v2_claims(), |c| {
        c.insert("tid".into(), json!(OTHER_TENANT_ID));
    });
    refused_token(&validator, &emulator.sign(&tid_only), "wrong_tenant", 401).await;
    let iss_only = edit(&emulator.v2_claims(), |c| {
        c.insert("iss".into(), json!(format!("{}{OTHER_TENANT_ID}/v2.0", emulator.authority())));
    });
    refused_token(&validator, &emulator.sign(&iss_only), "wrong_tenant", 401).await;
    for issuer in [
        json!("https://evil.example/"),
        json!(format!("https://login.microsoftonline.com/{TENANT_ID}/v2.0")), // not the configured authority
        json!(format!("https://sts.windows.net/{TENANT_ID}")),                // v1 without its slash
        json!(null),
    ] {
        let claims = edit(&emulator.v2_claims(), |c| {
            c.insert("iss".into(), issuer.clone());
        });
        refused_token(&validator, &emulator.sign(&claims), "wrong_tenant", 401).await;
    }
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused_beyond_five_minutes_of_skew() {
    let emulator = EntraEmulator::start();
    let validator = validator(&emulator);
    let token = |exp: i64, nbf: i64| {
        emulator.sign(&edit(&emulator.v2_claims(), |c| {
            c.insert("exp".into(), json!(exp));
            c.insert("nbf".into(), json!(nbf));
            c.insert("iat".into(), json!(nbf));
        }))
    };
    let now = now();
    refused_token(&validator, &token(now - 600, now - 4200), "expired", 401).await;
    refused_token(&validator, &token(now - 301 - 2, now - 3900), "expired", 401).await;
    refused_token(&validator, &token(now + 4200, now + 600), "not_yet_valid", 401).await;
    // Within the skew either way: clocks differ.
    validator.check(Some(&bearer(&token(now - 120, now - 3720)))).await.expect("expired 2 minutes ago: accepted");
    validator.check(Some(&bearer(&token(now + 3720, now + 120)))).await.expect("valid in 2 minutes: accepted");
    // exp is required; nbf is not.
    let no_exp = edit(&emulator.v2_claims(), |c| {
        c.remove("exp");
    });
    refused_token(&validator, &emulator.sign(&no_exp), "invalid_token", 401).await;
    let string_exp = edit(&emulator.v2_claims(), |c| {
        c.insert("exp".into(), json!((now + 3600).to_string()));
    });
    refused_token(&validator, &emulator.sign(&string_exp), "invalid_token", 401).await;
    let no_nbf = edit(&emulator.v2_claims(), |c| {
        c.remove("nbf");
    });
    validator.check(Some(&bearer(&emulator.sign(&no_nbf)))).await.expect("no nbf: accepted");
}

#[tokio::test]
async fn role_is_demanded_only_when_required() {
    let emulator = EntraEmulator::start();
    let http = build_client(&HttpSettings::default()).unwrap();
    let strict = EntraValidator::new(settings(&emulator, TENANT_ID, true), http.clone());
    let lenient = EntraValidator::new(settings(&emulator, TENANT_ID, false), http);
    // Entra leaves `roles` out when no app role is assigned.
    let no_role = emulator.sign(&edit(&emulator.v1_claims(APP_ID_URI), |c| {
        c.remove("roles");
    }));
    let other_role = emulator.sign(&edit(&emulator.v2_claims(), |c| {
        c.insert("roles".into(), json!(["Alerts.Write"]));
    }));
    refused_token(&strict, &no_role, "missing_role", 401).await;
    refused_token(&strict, &other_role, "missing_role", 401).await;
    strict.check(Some(&bearer(&emulator.mint_v1(APP_ID_URI)))).await.expect("role present: accepted");
    strict.check(Some(&bearer(&emulator.mint_v2()))).await.expect("role present: accepted");
    lenient.check(Some(&bearer(&no_role))).await.expect("role not required: accepted");
}

// ---------------------------------------------------------------------------------------------
// Refused: the token itself
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn missing_or_non_bearer_authorization_is_refused() {
    let emulator = EntraEmulator::start();
    let validator = validator(&emulator);
    let rejection = refused(&validator, None, "missing_token", 401).await;
    let (status, challenge, body) = body_of(rejection).await;
    assert_eq!((status, challenge.as_deref()), (401, Some("Bearer")));
    assert_eq!(body["error"]["code"], "missing_token");
    assert!(body["error"]["message"].as_str().unwrap().contains("Secure Webhook"), "{body}");
    for value in ["", "   ", "Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer   ", "garbage", "Token abc.def.ghi"] {
        refused(&validator, Some(value), "missing_token", 401).await;
    }
    let token = emulator.mint_v2();
    refused(&validator, Some(&format!("Basic {token}")), "missing_token", 401).await;
    // Nothing was worth fetching keys for.
    assert_eq!(emulator.requests(), Vec::<String>::new());
}

#[tokio::test]
async fn garbage_tokens_are_refused() {
    let emulator = EntraEmulator::start();
    let validator = validator(&emulator);
    let real = emulator.mint_v2();
    let parts: Vec<&str> = real.split('.').collect();
    let long = "a".repeat(20_000);
    for garbage in [
        "garbage",
        "a.b",
        "a.b.c.d",
        "..",
        "!!!.???.***",
        "eyJhbGciOiJSUzI1NiJ9.e30", // two parts
        &format!("{}.{}", parts[0], parts[1]),
        &format!("{}.{}.{}.{}", parts[0], parts[1], parts[2], parts[2]),
        &format!("{}.{}.", parts[0], parts[1]), // no signature
        &format!("{}.!!.{}", parts[0], parts[2]),
        &format!("e30.{}.{}", parts[1], parts[2]), // header {} : no alg
        &long,
    ] {
        refused_token(&validator, garbage, "invalid_token", 401).await;
    }
    // A header that is not JSON, and a payload that is not JSON but correctly signed.
    let not_json = format!("{}.{}.{}", "bm90IGpzb24", parts[1], parts[2]);
    refused_token(&validator, &not_json, "invalid_token", 401).await;
}

#[tokio::test]
async fn a_signature_by_another_key_under_a_published_kid_is_refused() {
    let emulator = EntraEmulator::start();
    let validator = validator(&emulator);
    let forged_key = TestKey::c().with_kid(&TestKey::a().kid);
    let claims = emulator.v1_claims(APP_ID_URI);
    let forged = forged_key.sign(&support::entra::header_for(&claims, &forged_key.kid), &claims);
    assert_reason(&refused_token(&validator, &forged, "invalid_token", 401).await, "bad signature");
    // A genuine token whose claims were changed after signing.
    let genuine = emulator.mint_v1(APP_ID_URI);
    let parts: Vec<&str> = genuine.split('.').collect();
    let other_claims = edit(&claims, |c| {
        c.insert("aud".into(), json!(CLIENT_ID));
    });
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, other_claims.to_string()),
        parts[2]
    );
    assert_reason(&refused_token(&validator, &tampered, "invalid_token", 401).await, "bad signature");
    // The keys were fetched once for all of this.
    assert_eq!(emulator.jwks_fetches(), 1);
    validator.check(Some(&bearer(&genuine))).await.expect("the genuine token still passes");
}

#[tokio::test]
async fn alg_none_is_refused_before_any_key_is_fetched() {
    let emulator = EntraEmulator::start();
    let validator = validator(&emulator);
    let claims = emulator.v2_claims();
    let kid = TestKey::a().kid;
    let rejection =
        refused_token(&validator, &support::entra::unsigned_token(&claims, &kid), "invalid_token", 401).await;
    assert_reason(&rejection, "alg 'none'");
    // With a signature part anyway, and with the other spellings of "none".
    let signed = emulator.mint_v2();
    let signature = signed.rsplit('.').next().unwrap();
    refused_token(
        &validator,
        &format!("{}{signature}", support::entra::unsigned_token(&claims, &kid)),
        "invalid_token",
        401,
    )
    .await;
    for alg in ["None", "NONE", "nOnE", ""] {
        let header = json!({ "typ": "JWT", "alg": alg, "kid": kid });
        let token = format!(
            "{}.{}.",
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header.to_string()),
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims.to_string()),
        );
        refused_token(&validator, &token, "invalid_token", 401).await;
    }
    assert_eq!(emulator.requests(), Vec::<String>::new());
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let emulator = EntraEmulator::start();
    let validator = validator(&emulator);
    validator.check(Some(&bearer(&emulator.mint_v2()))).await.expect("warm the key cache");
    let key = TestKey::a();
    let claims = emulator.v2_claims();
    // Everything an attacker can read from the key document, used as the HMAC secret.
    let certificate_pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", key.certificate);
    for secret in [certificate_pem.as_bytes(), key.certificate.as_bytes(), key.n.as_bytes()] {
        let rejection =
            refused_token(&validator, &support::entra::hs256_token(&claims, &key.kid, secret), "invalid_token", 401)
                .await;
        assert_reason(&rejection, "alg 'HS256', only RS256");
    }
    // Other algorithms too, even RSA ones.
    for alg in ["HS384", "HS512", "RS384", "RS512", "PS256", "ES256", "EdDSA"] {
        let token = key.sign(&json!({ "typ": "JWT", "alg": alg, "kid": key.kid }), &claims);
        assert_reason(&refused_token(&validator, &token, "invalid_token", 401).await, &format!("alg '{alg}'"));
    }
    assert_eq!(emulator.jwks_fetches(), 1);
}

// ---------------------------------------------------------------------------------------------
// Keys: unknown kids, rotation, outages
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_kid_refetches_the_keys_once_then_is_refused() {
    let emulator = EntraEmulator::start();
    let validator = validator_with(&emulator, quick_policy());
    validator.check(Some(&bearer(&emulator.mint_v2()))).await.expect("warm the key cache");
    assert_eq!(emulator.jwks_fetches(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;

    let unpublished = TestKey::c();
    let claims = emulator.v2_claims();
    let token = unpublished.sign(&support::entra::header_for(&claims, &unpublished.kid), &claims);
    assert_reason(
        &refused_token(&validator, &token, "invalid_token", 401).await,
        "not among the tenant's signing keys",
    );
    assert_eq!(emulator.jwks_fetches(), 2, "one refetch for the unknown kid");

    // Soon after, other unknown kids do not make another fetch.
    for kid in ["made-up-1", "made-up-2", "made-up-3"] {
        let key = TestKey::c().with_kid(kid);
        refused_token(&validator, &key.sign(&support::entra::header_for(&claims, kid), &claims), "invalid_token", 401)
            .await;
    }
    assert_eq!(emulator.jwks_fetches(), 2);
    validator.check(Some(&bearer(&emulator.mint_v2()))).await.expect("known kid still accepted");
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_five_minutes_by_default() {
    let emulator = EntraEmulator::start();
    let validator = validator(&emulator);
    validator.check(Some(&bearer(&emulator.mint_v2()))).await.expect("warm the key cache");
    let claims = emulator.v2_claims();
    for n in 0..20 {
        let key = TestKey::c().with_kid(&format!("junk-{n}"));
        refused_token(
            &validator,
            &key.sign(&support::entra::header_for(&claims, &key.kid), &claims),
            "invalid_token",
            401,
        )
        .await;
    }
    assert_eq!((emulator.config_fetches(), emulator.jwks_fetches()), (1, 1));
}

#[tokio::test]
async fn a_rotated_key_is_accepted_after_one_refetch() {
    let emulator = EntraEmulator::start();
    let validator = validator_with(&emulator, quick_policy());
    let old_token = emulator.mint_v1(APP_ID_URI);
    validator.check(Some(&bearer(&old_token))).await.expect("old key");
    tokio::time::sleep(Duration::from_millis(400)).await;

    emulator.rotate_to(TestKey::b());
    let new_token = emulator.mint_v2();
    assert_eq!(kid_of(&new_token), TestKey::b().kid);
    validator.check(Some(&bearer(&new_token))).await.expect("new key after a refetch");
    assert_eq!(emulator.jwks_fetches(), 2);
    // Tokens of the old key, still published, keep working without another fetch.
    validator.check(Some(&bearer(&old_token))).await.expect("old key still published");
    validator.check(Some(&bearer(&emulator.mint_v2()))).await.expect("new key, cached");
    assert_eq!(emulator.jwks_fetches(), 2);
}

#[tokio::test]
async fn keys_are_fetched_again_when_they_are_old() {
    let emulator = EntraEmulator::start();
    let policy = RefreshPolicy { max_age: Duration::from_millis(300), ..RefreshPolicy::default() };
    let validator = validator_with(&emulator, policy);
    validator.check(Some(&bearer(&emulator.mint_v2()))).await.expect("first fetch");
    validator.check(Some(&bearer(&emulator.mint_v2()))).await.expect("cached");
    assert_eq!(emulator.jwks_fetches(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A withdrawn key is forgotten at the refresh.
    emulator.rotate_to(TestKey::b());
    let old = TestKey::a();
    let claims = emulator.v2_claims();
    let old_token = old.sign(&support::entra::header_for(&claims, &old.kid), &claims);
    emulator.withdraw(&old.kid);
    validator.check(Some(&bearer(&emulator.mint_v2()))).await.expect("refetched");
    assert_eq!(emulator.jwks_fetches(), 2);
    refused_token(&validator, &old_token, "invalid_token", 401).await;
}

#[tokio::test]
async fn an_entra_outage_without_cached_keys_answers_503() {
    let emulator = EntraEmulator::start();
    let validator = validator_with(&emulator, quick_policy());
    emulator.set_failing(true);
    let token = emulator.mint_v2();
    let rejection = refused_token(&validator, &token, "auth_unavailable", 503).await;
    let (status, challenge, body) = body_of(rejection).await;
    assert_eq!((status, challenge), (503, None));
    assert_eq!(body["error"]["code"], "auth_unavailable");
    assert_eq!(emulator.config_fetches(), 1);
    // Requests right after a failure are answered at once, without asking Entra again.
    refused_token(&validator, &token, "auth_unavailable", 503).await;
    assert_eq!(emulator.config_fetches(), 1);
    // Once Entra is back, the next attempt after the retry interval succeeds.
    emulator.set_failing(false);
    tokio::time::sleep(Duration::from_millis(400)).await;
    validator.check(Some(&bearer(&token))).await.expect("accepted after the outage");
    assert_eq!((emulator.config_fetches(), emulator.jwks_fetches()), (2, 1));
}

#[tokio::test]
async fn a_failing_key_document_answers_503_and_the_default_retry_waits() {
    let emulator = EntraEmulator::start();
    let validator = validator(&emulator);
    emulator.set_failing(true);
    for _ in 0..5 {
        refused_token(&validator, &emulator.mint_v2(), "auth_unavailable", 503).await;
    }
    // One attempt for five requests: the next waits 10 s.
    assert_eq!(emulator.config_fetches(), 1);
}

#[tokio::test]
async fn a_slow_entra_answers_503_within_the_fetch_timeout() {
    let emulator = EntraEmulator::start();
    let policy = RefreshPolicy { fetch_timeout: Duration::from_millis(200), ..quick_policy() };
    let validator = validator_with(&emulator, policy);
    emulator.set_latency(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    refused_token(&validator, &emulator.mint_v2(), "auth_unavailable", 503).await;
    assert!(started.elapsed() < Duration::from_millis(1000), "{:?}", started.elapsed());
}

#[tokio::test]
async fn an_unreachable_authority_answers_503() {
    let emulator = EntraEmulator::start();
    let validator = validator(&emulator);
    let token = emulator.mint_v2();
    emulator.shutdown();
    refused_token(&validator, &token, "auth_unavailable", 503).await;
}

#[tokio::test]
async fn keys_in_hand_stay_in_use_while_a_refresh_fails() {
    let emulator = EntraEmulator::start();
    let policy = RefreshPolicy { max_age: Duration::from_millis(200), ..quick_policy() };
    let validator = validator_with(&emulator, policy);
    validator.check(Some(&bearer(&emulator.mint_v2()))).await.expect("first fetch");
    emulator.set_failing(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    validator.check(Some(&bearer(&emulator.mint_v2()))).await.expect("old keys still used");
    assert_eq!(emulator.config_fetches(), 2, "a refresh was attempted");
    // A kid that the failing refresh might have brought: not the caller's fault.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new_key = TestKey::b();
    let claims = emulator.v2_claims();
    let token = new_key.sign(&support::entra::header_for(&claims, &new_key.kid), &claims);
    refused_token(&validator, &token, "auth_unavailable", 503).await;
}

#[tokio::test]
async fn a_tenant_unknown_to_the_authority_answers_503() {
    let emulator = EntraEmulator::start();
    let http = build_client(&HttpSettings::default()).unwrap();
    let validator = EntraValidator::new(settings(&emulator, OTHER_TENANT_ID, false), http);
    refused_token(&validator, &emulator.mint_v2(), "auth_unavailable", 503).await;
    assert_eq!(emulator.jwks_fetches(), 0);
}

#[tokio::test]
async fn concurrent_requests_on_a_cold_cache_make_one_fetch() {
    let emulator = EntraEmulator::start();
    emulator.set_latency(Duration::from_millis(100));
    let validator = Arc::new(validator(&emulator));
    let mut tasks = Vec::new();
    for n in 0..20 {
        let validator = Arc::clone(&validator);
        let token = if n % 2 == 0 { emulator.mint_v2() } else { emulator.mint_v1(APP_ID_URI) };
        tasks.push(tokio::spawn(async move { validator.check(Some(&format!("Bearer {token}"))).await }));
    }
    for task in tasks {
        task.await.expect("task").expect("accepted");
    }
    assert_eq!((emulator.config_fetches(), emulator.jwks_fetches()), (1, 1));
}

/// Wired into the alert route: without a valid token nothing is read or created; with one the alert goes
/// through; health stays open (the Functions host and load balancers probe it without tokens).
#[tokio::test]
async fn the_alert_route_takes_only_valid_secure_webhook_calls() {
    let emulator = EntraEmulator::start();
    let authority = emulator.authority();
    let itsmc = support::harness::Itsmc::start(&[
        ("ITSMC_ENTRA_TENANT_ID", TENANT_ID),
        ("ITSMC_ENTRA_AUDIENCE", CLIENT_ID),
        ("ITSMC_ENTRA_AUTHORITY", authority.as_str()),
    ])
    .await;
    let body = support::harness::fixture("azure-monitor/cas-test-metric-static-fired.json");
    let client = reqwest::Client::new();
    let post = |token: Option<String>| {
        let mut request = client.post(format!("{}/api/alert", itsmc.url)).body(body.clone());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    let refused = post(None).await.unwrap();
    assert_eq!(refused.status(), 401);
    let answer: Value = refused.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "missing_token", "{answer}");
    let wrong = post(Some(emulator.mint_v1("api://someone-else"))).await.unwrap();
    assert_eq!(wrong.status(), 401);
    let (_, listed) = itsmc.get("/api/workitems").await;
    assert_eq!(listed["recent"].as_array().map_or(0, Vec::len), 0, "nothing was processed: {listed}");

    let accepted = post(Some(emulator.mint_v2())).await.unwrap();
    assert_eq!(accepted.status(), 200);
    let answer: Value = accepted.json().await.unwrap();
    assert_eq!(answer["action"], "created", "{answer}");
    let (status, _) = itsmc.get("/api/health").await;
    assert_eq!(status, 200, "health needs no token");
}
