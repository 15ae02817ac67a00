//! `MatrixClient` and `run` against a small fake homeserver on loopback.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cascade_protocol::{FromMedia, SdpStreamMetadata, ToMedia};
use cascade_signalling::checkpoint;
use cascade_signalling::{
    ClientError, ConferenceConfig, Counter, MatrixClient, MatrixConfig, Status, run,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const USER: &str = "@focus:hs";
const PASSWORD: &str = "pw";

/// A scripted failure for `sendToDevice`: status, JSON body, `Retry-After` header.
type Failure = (u16, Value, Option<&'static str>);

#[derive(Default)]
struct Hs {
    tokens: HashMap<String, String>,
    logins: Vec<Value>,
    syncs: Vec<(Option<String>, u64)>,
    sync_queue: VecDeque<Value>,
    batch: u64,
    sent: Vec<(String, String, Value)>,
    send_failures: VecDeque<Failure>,
    joins: Vec<String>,
}

#[derive(Clone)]
struct Fake {
    hs: Arc<Mutex<Hs>>,
    url: String,
}

impl Fake {
    async fn start() -> Self {
        let hs = Arc::new(Mutex::new(Hs::default()));
        let app = Router::new()
            .route("/_matrix/client/v3/login", post(login))
            .route("/_matrix/client/v3/account/whoami", get(whoami))
            .route("/_matrix/client/v3/user/{user}/filter", post(filter))
            .route("/_matrix/client/v3/sync", get(sync))
            .route(
                "/_matrix/client/v3/sendToDevice/{event_type}/{txn}",
                put(send_to_device),
            )
            .route("/_matrix/client/v3/join/{room}", post(join))
            .route("/_matrix/client/v3/rooms/{room}/state", get(room_state))
            .with_state(hs.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { hs, url }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hs> {
        self.hs.lock().unwrap()
    }

    fn push_sync(&self, body: Value) {
        self.lock().sync_queue.push_back(body);
    }

    fn sent_of(&self, event_type: &str) -> Vec<Value> {
        self.lock()
            .sent
            .iter()
            .filter(|(t, _, _)| t == event_type)
            .map(|(_, _, body)| body.clone())
            .collect()
    }
}

fn error(status: u16, errcode: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    (status, Json(json!({"errcode": errcode, "error": errcode}))).into_response()
}

fn authorized(hs: &Hs, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| hs.tokens.contains_key(token))
}

async fn login(State(hs): State<Arc<Mutex<Hs>>>, Json(body): Json<Value>) -> Response {
    let mut hs = hs.lock().unwrap();
    hs.logins.push(body.clone());
    let user = body["identifier"]["user"].as_str().unwrap_or_default();
    if !(user == USER || user == "focus") || body["password"] != PASSWORD {
        return error(403, "M_FORBIDDEN");
    }
    let device = body["device_id"].as_str().unwrap_or("NEWDEV").to_owned();
    let token = format!("tok{}", hs.logins.len());
    hs.tokens.insert(token.clone(), device.clone());
    Json(json!({"user_id": USER, "access_token": token, "device_id": device})).into_response()
}

async fn whoami(State(hs): State<Arc<Mutex<Hs>>>, headers: HeaderMap) -> Response {
    let hs = hs.lock().unwrap();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    match hs.tokens.get(token) {
        Some(device) => Json(json!({"user_id": USER, "device_id": device})).into_response(),
        None => error(401, "M_UNKNOWN_TOKEN"),
    }
}

async fn filter(State(hs): State<Arc<Mutex<Hs>>>, headers: HeaderMap) -> Response {
    if !authorized(&hs.lock().unwrap(), &headers) {
        return error(401, "M_UNKNOWN_TOKEN");
    }
    Json(json!({"filter_id": "f1"})).into_response()
}

async fn sync(
    State(hs): State<Arc<Mutex<Hs>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let timeout: u64 = query
        .get("timeout")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    {
        let mut hs = hs.lock().unwrap();
        if !authorized(&hs, &headers) {
            return error(401, "M_UNKNOWN_TOKEN");
        }
        hs.syncs.push((query.get("since").cloned(), timeout));
    }
    // Long-poll, but never longer than 200 ms so the tests stay quick.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout.min(200));
    loop {
        {
            let mut hs = hs.lock().unwrap();
            let queued = hs.sync_queue.pop_front();
            if queued.is_some() || tokio::time::Instant::now() >= deadline {
                hs.batch += 1;
                let mut body = queued.unwrap_or_else(|| json!({}));
                body["next_batch"] = json!(format!("b{}", hs.batch));
                return Json(body).into_response();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn send_to_device(
    State(hs): State<Arc<Mutex<Hs>>>,
    Path((event_type, txn)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut hs = hs.lock().unwrap();
    if !authorized(&hs, &headers) {
        return error(401, "M_UNKNOWN_TOKEN");
    }
    hs.sent.push((event_type, txn, body));
    match hs.send_failures.pop_front() {
        None => Json(json!({})).into_response(),
        Some((status, body, retry_after)) => {
            let status = StatusCode::from_u16(status).unwrap();
            let mut response = (status, Json(body)).into_response();
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, secs.parse().unwrap());
            }
            response
        }
    }
}

async fn join(
    State(hs): State<Arc<Mutex<Hs>>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut hs = hs.lock().unwrap();
    if !authorized(&hs, &headers) {
        return error(401, "M_UNKNOWN_TOKEN");
    }
    hs.joins.push(room.clone());
    Json(json!({"room_id": room})).into_response()
}

async fn room_state(Path(room): Path<String>) -> Response {
    Json(json!([
        {"type": "m.room.create", "sender": "@a:hs", "state_key": "", "content": {"room": room}},
        {"type": "broken"}
    ]))
    .into_response()
}

/// Waits (polling) until `condition` holds, failing after 10 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn client_logs_in_and_retries_to_device() {
    let fake = Fake::start().await;
    let client = MatrixClient::login_password(&fake.url, "focus", PASSWORD, Some("FOCUS"))
        .await
        .unwrap();
    assert_eq!((client.user_id(), client.device_id()), (USER, "FOCUS"));
    assert_eq!(client.homeserver_url(), fake.url);
    let login = fake.lock().logins[0].clone();
    assert_eq!(
        login["identifier"],
        json!({"type": "m.id.user", "user": "focus"})
    );
    assert_eq!(login["device_id"], "FOCUS");

    let wrong = MatrixClient::login_password(&fake.url, USER, "nope", None).await;
    assert!(matches!(&wrong, Err(e) if e.errcode() == Some("M_FORBIDDEN") && !e.is_transient()));
    let bad_user = MatrixClient::login_password(&fake.url, "@not valid", PASSWORD, None).await;
    assert!(matches!(bad_user, Err(ClientError::InvalidInput(_))));

    let again = MatrixClient::with_access_token(&fake.url, client.access_token())
        .await
        .unwrap();
    assert_eq!(again.device_id(), "FOCUS");
    let rejected = MatrixClient::with_access_token(&fake.url, "bogus").await;
    assert!(matches!(rejected, Err(e) if e.is_unknown_token()));

    fake.lock().send_failures.extend([
        (
            429,
            json!({"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 20}),
            None,
        ),
        (502, json!({}), None),
        (429, json!({}), Some("0")),
    ]);
    let mut messages = BTreeMap::new();
    messages.insert(
        "@a:hs".to_owned(),
        BTreeMap::from([("D".to_owned(), json!({"call_id": "c"}))]),
    );
    client
        .send_to_device("m.call.hangup", &messages)
        .await
        .unwrap();
    let attempts = fake.lock().sent.clone();
    assert_eq!(attempts.len(), 4);
    assert!(
        attempts.iter().all(|(_, txn, _)| *txn == attempts[0].1),
        "retries reuse the txn id"
    );
    assert_eq!(attempts[0].2["messages"]["@a:hs"]["D"]["call_id"], "c");
    client
        .send_to_device("m.call.hangup", &messages)
        .await
        .unwrap();
    assert_ne!(
        fake.lock().sent[4].1,
        attempts[0].1,
        "a new request gets a new txn id"
    );

    fake.lock()
        .send_failures
        .push_back((403, json!({"errcode": "M_FORBIDDEN"}), None));
    let before = fake.lock().sent.len();
    assert!(
        client
            .send_to_device("m.call.hangup", &messages)
            .await
            .is_err()
    );
    assert_eq!(fake.lock().sent.len(), before + 1, "a 403 is not retried");

    assert_eq!(client.create_filter(json!({})).await.unwrap(), "f1");
    assert_eq!(client.join_room("!r:hs").await.unwrap(), "!r:hs");
    assert!(matches!(
        client.join_room("not a room").await,
        Err(ClientError::InvalidInput(_))
    ));
    let state = client.room_state("!r:hs").await.unwrap();
    assert_eq!(state.len(), 1, "the malformed event is skipped");

    fake.push_sync(json!({"to_device": {"events": [
        {"type": "m.call.invite", "sender": "@a:hs", "content": {"call_id": "c"}}, {"bad": 1}
    ]}}));
    let sync = client.sync(None, 0, Some("f1")).await.unwrap();
    assert_eq!(sync.to_device.len(), 1);
    assert_eq!(sync.malformed, 1);
    assert_eq!(sync.next_batch, "b1");
}

fn room_sync(session: &str) -> Value {
    json!({"rooms": {"join": {"!r:hs": {
        "state": {"events": [
            {"type": "m.room.member", "sender": "@a:hs", "state_key": "@a:hs", "content": {"membership": "join"}},
            {"type": "m.call", "sender": "@a:hs", "state_key": "conf", "content": {"m.intent": "m.room", "m.type": "m.video"}}
        ]},
        "timeline": {"events": [
            {"type": "org.matrix.msc3401.call.member", "sender": "@a:hs", "state_key": "@a:hs", "origin_server_ts": 1,
             "content": {"m.calls": [{"m.call_id": "conf", "m.devices": [
                 {"device_id": "D", "session_id": session, "expires_ts": cascade_signalling::now_ms() + 3_600_000, "feeds": []}]}]}}
        ]}
    }}}})
}

fn invite_sync(call_id: &str, dest_session: &str) -> Value {
    json!({"to_device": {"events": [{"type": "m.call.invite", "sender": "@a:hs", "content": {
        "call_id": call_id, "party_id": "D", "version": "1", "conf_id": "conf", "device_id": "D",
        "sender_session_id": "S1", "dest_session_id": dest_session, "seq": 0, "lifetime": 60000,
        "offer": {"type": "offer", "sdp": "v=0 offer"},
        "sdp_stream_metadata": {"stream": {"purpose": "m.usermedia"}}
    }}]}})
}

struct Running {
    to_media: mpsc::Receiver<ToMedia>,
    from_media: mpsc::Sender<FromMedia>,
    status: Arc<Status>,
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start(matrix: &MatrixConfig) -> Running {
    let (to_media_tx, to_media) = mpsc::channel(16);
    let (from_media, from_media_rx) = mpsc::channel(16);
    let status = Arc::new(Status::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(run(
        matrix.clone(),
        ConferenceConfig::default(),
        to_media_tx,
        from_media_rx,
        status.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    Running {
        to_media,
        from_media,
        status,
        stop,
        handle,
    }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.handle.await.unwrap().unwrap();
    }

    async fn next_to_media(&mut self) -> ToMedia {
        tokio::time::timeout(Duration::from_secs(10), self.to_media.recv())
            .await
            .expect("a message for the media plane")
            .expect("the channel is open")
    }
}

#[tokio::test]
async fn run_answers_an_authorized_invite_and_resumes_after_restart() {
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let matrix = MatrixConfig {
        homeserver_url: fake.url.clone(),
        user_id: USER.into(),
        device_id: "FOCUS".into(),
        password: Some(PASSWORD.into()),
        access_token: None,
        state_dir: dir.path().to_owned(),
        require_encryption: false,
        pickle_key: None,
    };

    let mut focus = start(&matrix);
    let status = focus.status.clone();
    eventually("the first sync", || status.syncing()).await;
    assert!(status.logged_in());
    assert_eq!(
        fake.lock().syncs[0],
        (None, 0),
        "the first sync only collects the backlog"
    );

    // The membership arrives together with the invite, and a room invite is accepted.
    let mut batch = room_sync("S1");
    batch["to_device"] = invite_sync("c1", status.session_id())["to_device"].clone();
    batch["rooms"]["invite"] = json!({"!new:hs": {"invite_state": {"events": [
        {"type": "m.room.member", "sender": "@b:hs", "state_key": USER, "content": {"membership": "invite"}}
    ]}}});
    fake.push_sync(batch);
    let open = focus.next_to_media().await;
    let ToMedia::Open {
        call,
        conf_id,
        offer_sdp,
        metadata,
        ..
    } = open
    else {
        panic!("expected Open, got {open:?}");
    };
    assert_eq!(
        (
            call.user_id.as_str(),
            call.device_id.as_str(),
            call.session_id.as_str()
        ),
        ("@a:hs", "D", "S1")
    );
    assert_eq!(
        (conf_id.as_str(), offer_sdp.as_str()),
        ("conf", "v=0 offer")
    );
    assert!(metadata.contains_key("stream"));
    eventually("the room join", || fake.lock().joins == ["!new:hs"]).await;

    focus
        .from_media
        .send(FromMedia::Answer {
            call: call.clone(),
            sdp: "v=0 answer".into(),
            metadata: SdpStreamMetadata::new(),
        })
        .await
        .unwrap();
    eventually("the answer", || !fake.sent_of("m.call.answer").is_empty()).await;
    let answer = &fake.sent_of("m.call.answer")[0]["messages"]["@a:hs"]["D"];
    assert_eq!(
        answer["answer"],
        json!({"type": "answer", "sdp": "v=0 answer"})
    );
    assert_eq!(answer["call_id"], "c1");
    assert_eq!(answer["party_id"], "FOCUS");
    assert_eq!(answer["device_id"], "FOCUS");
    assert_eq!(answer["conf_id"], "conf");
    assert_eq!(answer["room_id"], "!r:hs");
    assert_eq!(answer["dest_session_id"], "S1");
    assert_eq!(answer["sender_session_id"], status.session_id());
    assert_eq!(answer["seq"], 0);
    assert_eq!(answer["version"], "1");

    // The sync token is committed in the checkpoint once a batch is handled.
    let committed = || {
        checkpoint::load(dir.path())
            .ok()
            .flatten()
            .and_then(|c| c.sync_token.clone().zip(c.last_sync_ms))
    };
    eventually("the sync token", || committed().is_some()).await;
    focus.stop().await;
    assert!(!status.logged_in());
    let (token, _) = committed().unwrap();
    let open = checkpoint::load(dir.path()).unwrap().unwrap().calls;
    assert_eq!(
        open.len(),
        1,
        "the open call is in the checkpoint: {open:?}"
    );
    assert_eq!(open[0].call_id, "c1");
    assert_eq!(status.get(Counter::InvitesOpened), 1);
    assert_eq!(status.get(Counter::ToDeviceOut), 1);

    // Restart: pretend the focus was down for two minutes. The backlog's invite is void; the
    // session is reused from the cache; syncing resumes from the persisted token.
    let mut cp = checkpoint::load(dir.path()).unwrap().unwrap();
    cp.last_sync_ms = Some(cascade_signalling::now_ms() - 120_000);
    checkpoint::save(dir.path(), &cp).unwrap();
    fake.push_sync(invite_sync("c2", "sfu"));
    let syncs_before = fake.lock().syncs.len();
    let mut focus = start(&matrix);
    let status = focus.status.clone();
    eventually("the backlog", || status.get(Counter::InvitesVoid) == 1).await;
    assert_eq!(fake.lock().syncs[syncs_before], (Some(token), 0));
    // The call open when the focus stopped died with it: its device is told.
    eventually("the restart hangup", || {
        !fake.sent_of("m.call.hangup").is_empty()
    })
    .await;
    let hangup = &fake.sent_of("m.call.hangup")[0]["messages"]["@a:hs"]["D"];
    assert_eq!(
        (hangup["call_id"].as_str(), hangup["reason"].as_str()),
        (Some("c1"), Some("unknown_error"))
    );
    assert_eq!(status.get(Counter::RestartHangups), 1);
    assert_eq!(fake.lock().logins.len(), 1, "the cached session is reused");

    // A fresh invite after the backlog is answered as usual.
    fake.push_sync(room_sync("S1"));
    fake.push_sync(invite_sync("c3", "sfu"));
    let open = focus.next_to_media().await;
    assert!(
        matches!(&open, ToMedia::Open { call, .. } if call.call_id == "c3"),
        "{open:?}"
    );
    focus.stop().await;
}

#[tokio::test]
async fn run_refuses_a_non_member_after_the_hold() {
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let matrix = MatrixConfig {
        homeserver_url: fake.url.clone(),
        user_id: USER.into(),
        device_id: "FOCUS".into(),
        password: Some(PASSWORD.into()),
        access_token: None,
        state_dir: dir.path().to_owned(),
        require_encryption: false,
        pickle_key: None,
    };
    let (to_media_tx, mut to_media) = mpsc::channel(16);
    let (_from_media, from_media_rx) = mpsc::channel(16);
    let status = Arc::new(Status::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let conference = ConferenceConfig {
        hold_ms: 200,
        ..ConferenceConfig::default()
    };
    let handle = tokio::spawn(run(
        matrix,
        conference,
        to_media_tx,
        from_media_rx,
        status.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    eventually("the first sync", || status.syncing()).await;
    fake.push_sync(invite_sync("c1", "sfu"));
    eventually("the refusal", || !fake.sent_of("m.call.hangup").is_empty()).await;
    let hangup = &fake.sent_of("m.call.hangup")[0]["messages"]["@a:hs"]["D"];
    assert_eq!(hangup["reason"], "unknown_error");
    assert_eq!(hangup["call_id"], "c1");
    assert_eq!(
        status.refused(cascade_signalling::authorize::RefusalCause::NotMember),
        1
    );
    assert!(
        to_media.try_recv().is_err(),
        "nothing reached the media plane"
    );
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn run_fails_on_bad_credentials_and_config() {
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let base = MatrixConfig {
        homeserver_url: fake.url.clone(),
        user_id: USER.into(),
        device_id: "FOCUS".into(),
        password: Some("wrong".into()),
        access_token: None,
        state_dir: dir.path().to_owned(),
        require_encryption: false,
        pickle_key: None,
    };
    let cases = [
        ("wrong password", base.clone()),
        (
            "bad user id",
            MatrixConfig {
                user_id: "focus".into(),
                ..base.clone()
            },
        ),
        (
            "no credentials",
            MatrixConfig {
                password: None,
                ..base.clone()
            },
        ),
        (
            "rejected token",
            MatrixConfig {
                password: None,
                access_token: Some("bogus".into()),
                ..base.clone()
            },
        ),
    ];
    for (name, matrix) in cases {
        let (to_media, _rx) = mpsc::channel(1);
        let (_tx, from_media) = mpsc::channel(1);
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            run(
                matrix,
                ConferenceConfig::default(),
                to_media,
                from_media,
                Arc::new(Status::new()),
                std::future::pending(),
            ),
        )
        .await
        .expect(name);
        assert!(result.is_err(), "{name}");
    }
}
