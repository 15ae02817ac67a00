//! A minimal in-process homeserver for tests: `whoami`, to-device-only `/sync` (long poll) and
//! `sendToDevice`. Fake foci read and write device inboxes directly.

#![allow(dead_code)]

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(Default)]
struct MockState {
    tokens: HashMap<String, (String, String)>,
    inbox: HashMap<(String, String), Vec<Value>>,
    batch: u64,
}

/// The mock homeserver.
#[derive(Default)]
pub struct Mock {
    state: Mutex<MockState>,
    notify: Notify,
}

type Shared = Arc<Mock>;

impl Mock {
    /// Registers an access token for a user's device.
    pub fn add_device(&self, token: &str, user: &str, device: &str) {
        self.state
            .lock()
            .unwrap()
            .tokens
            .insert(token.to_owned(), (user.to_owned(), device.to_owned()));
    }

    /// Queues a to-device event for a device.
    pub fn push(&self, user: &str, device: &str, sender: &str, event_type: &str, content: Value) {
        self.state
            .lock()
            .unwrap()
            .inbox
            .entry((user.to_owned(), device.to_owned()))
            .or_default()
            .push(json!({"type": event_type, "sender": sender, "content": content}));
        self.notify.notify_waiters();
    }

    /// Takes a device's queued to-device events.
    pub fn take(&self, user: &str, device: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .inbox
            .remove(&(user.to_owned(), device.to_owned()))
            .unwrap_or_default()
    }

    fn who(&self, headers: &HeaderMap) -> Option<(String, String)> {
        let token = headers
            .get("authorization")?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        self.state.lock().unwrap().tokens.get(token).cloned()
    }
}

fn unknown_token() -> (StatusCode, Json<Value>) {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"errcode": "M_UNKNOWN_TOKEN", "error": "unknown token"})),
    )
}

async fn whoami(State(mock): State<Shared>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    match mock.who(&headers) {
        Some((user, device)) => (
            StatusCode::OK,
            Json(json!({"user_id": user, "device_id": device})),
        ),
        None => unknown_token(),
    }
}

async fn sync(
    State(mock): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let Some(who) = mock.who(&headers) else {
        return unknown_token();
    };
    let timeout_ms: u64 = query
        .get("timeout")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.min(2_000));
    loop {
        let notified = mock.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let events = {
            let mut state = mock.state.lock().unwrap();
            state.batch += 1;
            let events = state.inbox.remove(&who).unwrap_or_default();
            if !events.is_empty() || Instant::now() >= deadline {
                let batch = state.batch;
                return (
                    StatusCode::OK,
                    Json(json!({
                        "next_batch": format!("b{batch}"),
                        "to_device": {"events": events},
                    })),
                );
            }
            events
        };
        drop(events);
        let _ = tokio::time::timeout_at(deadline.into(), notified).await;
    }
}

async fn send_to_device(
    State(mock): State<Shared>,
    headers: HeaderMap,
    Path((event_type, _txn)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let Some((sender, _)) = mock.who(&headers) else {
        return unknown_token();
    };
    if let Some(messages) = body.get("messages").and_then(Value::as_object) {
        for (user, devices) in messages {
            for (device, content) in devices.as_object().into_iter().flatten() {
                mock.push(user, device, &sender, &event_type, content.clone());
            }
        }
    }
    (StatusCode::OK, Json(json!({})))
}

/// Starts the mock; returns it and its base URL.
pub async fn start() -> (Arc<Mock>, String) {
    let mock: Shared = Arc::new(Mock::default());
    let app = Router::new()
        .route("/_matrix/client/v3/account/whoami", get(whoami))
        .route("/_matrix/client/v3/sync", get(sync))
        .route(
            "/_matrix/client/v3/sendToDevice/{event_type}/{txn}",
            put(send_to_device),
        )
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (mock, url)
}
