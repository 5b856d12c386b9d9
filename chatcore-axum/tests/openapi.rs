//! The OpenAPI description against the router it describes: the router's own route table and
//! answers compared with the description's paths and methods (both ways), every body with an
//! example, every reference resolvable, the message schema against a real message, and the
//! description the router serves.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use chatcore::{ChatConfig, ChatService, LocalNotifier, MemoryStore, SendRequest};
use chatcore_axum::{ChatApi, OPENAPI_PATH, SessionAuthenticator, SessionConfig};
use http::{Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

fn api() -> (ChatApi, ChatService) {
    let store = Arc::new(MemoryStore::new());
    let chat = ChatService::new(
        store.clone(),
        Arc::new(LocalNotifier::default()),
        ChatConfig::default(),
    );
    let auth = SessionAuthenticator::new(store, SessionConfig::default()).unwrap();
    (
        ChatApi::new(chat.clone(), auth.clone()).with_auth_routes(auth),
        chat,
    )
}

fn description(api: &ChatApi) -> Value {
    serde_json::to_value(api.openapi()).unwrap()
}

/// The paths axum routes, from its route table. axum shows that table only in its `Debug`
/// output (`Router { path_router: PathRouter { .. node: Node { paths: {RouteId(0):
/// "/api/v1/user/", ...} } }, fallback_router: .. }`; the fallback router's table holds only
/// the fallback); if that ever changes, this fails loudly instead of comparing nothing.
fn routed_paths(router: &Router) -> BTreeSet<String> {
    const TABLE: &str = "Node { paths: {";
    let debug = format!("{router:?}");
    let (path_router, _) = debug
        .split_once("fallback_router")
        .expect("axum's Router Debug output names its fallback router");
    let start = path_router
        .find(TABLE)
        .expect("axum's route table in its Debug output");
    let mut rest = &path_router[start + TABLE.len()..];
    let mut paths = BTreeSet::new();
    // Entries are `RouteId(N): "/path"`, separated by ", ", until the closing brace.
    while let Some(entry) = rest.strip_prefix("RouteId(") {
        let (_, quoted) = entry
            .split_once(": \"")
            .expect("a quoted path in axum's route table");
        let (path, after) = quoted.split_once('"').expect("the end of a quoted path");
        paths.insert(path.to_owned());
        rest = after.strip_prefix(", ").unwrap_or(after);
    }
    assert!(
        rest.starts_with('}'),
        "unexpected route table entry: {:.80}",
        rest
    );
    assert!(
        !paths.is_empty(),
        "could not read the route table from axum's Debug output"
    );
    paths
}

fn toggle_slash(path: &str) -> String {
    match path.strip_suffix('/') {
        Some(trimmed) => trimmed.to_owned(),
        None => format!("{path}/"),
    }
}

/// The keys of an OpenAPI path item that are operations.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The described operations: (path, upper-case method).
fn described_operations(description: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in description["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                operations.insert((path.clone(), method.to_ascii_uppercase()));
            }
        }
    }
    operations
}

/// A concrete URL for a described path (its parameters filled in).
fn concrete(path: &str) -> String {
    path.replace("{id}", "1").replace("{peer}", "bob")
}

/// Every path the router serves is described (or is the trailing-slash alias of one that
/// is), and every described path is routed.
#[test]
fn the_router_serves_exactly_the_described_paths() {
    let (api, _) = api();
    let description = description(&api);
    let router: Router = api.router();
    let described: BTreeSet<String> = description["paths"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let expected: BTreeSet<String> = described
        .iter()
        .flat_map(|path| [path.clone(), toggle_slash(path)])
        .collect();
    let routed = routed_paths(&router);
    // The reader sees an extra route, so an undescribed one cannot slip past it.
    let extra = router
        .clone()
        .route("/extra/{id}", axum::routing::get(|| async { "" }));
    let mut with_extra = routed.clone();
    with_extra.insert("/extra/{id}".to_owned());
    assert_eq!(routed_paths(&extra), with_extra);
    let undescribed: Vec<_> = routed.difference(&expected).collect();
    let unrouted: Vec<_> = expected.difference(&routed).collect();
    assert!(
        undescribed.is_empty(),
        "routes the description lacks: {undescribed:?}"
    );
    assert!(
        unrouted.is_empty(),
        "described paths the router lacks: {unrouted:?}"
    );
    for path in [
        "/api/v1/user/",
        "/api/v1/message/",
        "/api/v1/message/{id}/",
        "/api/v1/conversation/",
        "/api/v1/conversation/{peer}/read",
        "/api/v1/auth/session",
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/logout",
        "/ws",
        "/healthz",
        "/readyz",
        OPENAPI_PATH,
    ] {
        assert!(described.contains(path), "{path} is not described");
    }
}

/// On every routed path (and its alias), a described method reaches a handler and any other
/// method is 405: the router takes exactly the described methods.
#[tokio::test]
async fn the_router_takes_exactly_the_described_methods() {
    let (api, _) = api();
    let description = description(&api);
    let operations = described_operations(&description);
    let router: Router = api.router();
    let paths: BTreeSet<&String> = operations.iter().map(|(path, _)| path).collect();
    for path in paths {
        for url in [concrete(path), concrete(&toggle_slash(path))] {
            for method in [
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ] {
                let request = Request::builder()
                    .method(method.clone())
                    .uri(&url)
                    .body(Body::empty())
                    .unwrap();
                let response = router.clone().oneshot(request).await.unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
                let described = operations.contains(&(path.clone(), method.to_string()));
                if described {
                    assert_ne!(
                        status,
                        StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {url} is described"
                    );
                    assert!(
                        !String::from_utf8_lossy(&body).contains("no such path"),
                        "{method} {url} is described but unrouted"
                    );
                } else {
                    assert_eq!(
                        status,
                        StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {url} is not described, yet answered {status}"
                    );
                }
            }
        }
    }
}

/// Collects every `$ref` in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("$ref", Value::String(target)) => out.push(target),
                    _ => refs(item, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
        _ => {}
    }
}

fn schema_of<'a>(description: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(target) => {
            let name = target.trim_start_matches("#/components/schemas/");
            &description["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// Whether a media type (or the schema it points to, or its array items') carries an example.
fn has_example(description: &Value, media: &Value) -> bool {
    if media.get("example").is_some() || media.get("examples").is_some() {
        return true;
    }
    let schema = schema_of(description, &media["schema"]);
    schema.get("example").is_some()
        || schema.get("examples").is_some()
        || schema
            .get("items")
            .is_some_and(|items| schema_of(description, items).get("example").is_some())
}

#[test]
fn every_body_has_an_example_and_every_reference_resolves() {
    let (api, _) = api();
    let description = description(&api);
    assert_eq!(description["openapi"], "3.1.0");
    let mut missing = Vec::new();
    for (path, item) in description["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let bodies = operation["requestBody"]["content"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(media, content)| (format!("request {media}"), content));
            let answers =
                operation["responses"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .flat_map(|(status, response)| {
                        response["content"]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(move |(media, content)| (format!("{status} {media}"), content))
                    });
            for (what, content) in bodies.chain(answers) {
                if !has_example(&description, content) {
                    missing.push(format!("{method} {path}: {what}"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "bodies without an example: {missing:#?}");

    let mut targets = Vec::new();
    refs(&description, &mut targets);
    assert!(!targets.is_empty());
    for target in targets {
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {target}"));
        assert!(
            description["components"]["schemas"].get(name).is_some(),
            "{target} does not resolve"
        );
    }
    let schemes = &description["components"]["securitySchemes"];
    assert_eq!(schemes["session_cookie"]["in"], "cookie");
    assert_eq!(schemes["session_cookie"]["name"], "chatcore_session");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
}

/// The `Message` schema is written beside `chatcore::Message` (the core stays free of
/// utoipa): it must name exactly the fields a real message serializes to.
#[tokio::test]
async fn the_message_schema_matches_a_real_message() {
    let (api, chat) = api();
    let alice = chat.create_user("alice").await.unwrap();
    chat.create_user("bob").await.unwrap();
    let sent = chat
        .send(
            &alice,
            SendRequest {
                recipient: "bob".into(),
                body: "hi".into(),
                idempotency_key: None,
            },
        )
        .await
        .unwrap();
    let real = serde_json::to_value(&*sent.message).unwrap();
    let real_fields: BTreeSet<&String> = real.as_object().unwrap().keys().collect();
    let tombstone = chat.delete_message(&alice, sent.message.id).await.unwrap();
    let tombstone = serde_json::to_value(&tombstone).unwrap();
    let tombstone_fields: BTreeSet<&String> = tombstone.as_object().unwrap().keys().collect();
    let description = description(&api);
    let schema = &description["components"]["schemas"]["Message"];
    let described: BTreeSet<&String> = schema["properties"].as_object().unwrap().keys().collect();
    assert_eq!(
        described,
        real_fields.union(&tombstone_fields).copied().collect(),
        "a message's fields, and a tombstone's"
    );
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|field| field.as_str().unwrap())
        .collect();
    assert_eq!(
        required,
        real_fields.iter().map(|field| field.as_str()).collect(),
        "every field of a message is always present (`deleted` only on tombstones)"
    );
}

/// The router serves its own description, also when nested under a prefix.
#[tokio::test]
async fn the_router_serves_its_description() {
    let (api, _) = api();
    let expected = description(&api);
    let app: Router = Router::new().nest("/chat", api.router());
    for path in [format!("/chat{OPENAPI_PATH}"), format!("/chat{OPENAPI_PATH}/")] {
        let response = app
            .clone()
            .oneshot(Request::get(&path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let served: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(served, expected, "{path}");
    }
}

/// A route's own 403 (a refusal of the service: a block, the wrong password) is what the
/// description says, not only the cross-site refusal every cookie-authenticated body route
/// shares: the shared responses must not replace a route's own entry for the same status.
#[test]
fn a_routes_own_refusal_is_described() {
    let (api, _) = api();
    let description = description(&api);
    for (path, method, words) in [
        ("/api/v1/message/", "post", "A block stands between"),
        ("/api/v1/message/{id}/", "patch", "only its sender may change it"),
        ("/api/v1/auth/account", "delete", "The wrong password"),
    ] {
        let forbidden = &description["paths"][path][method]["responses"]["403"]["description"];
        let text = forbidden
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: no 403 described"));
        assert!(text.contains(words), "{method} {path}: 403 says {text:?}");
        assert!(
            text.contains("another site"),
            "{method} {path}: 403 says {text:?}"
        );
    }
}
