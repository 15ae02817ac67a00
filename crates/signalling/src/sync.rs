//! The `/sync` loop and what it keeps in the state directory: the sync token (so a restart
//! neither loses nor replays signalling), the time of the last handled batch (to age the
//! backlog), and optionally the access token of a password login (so restarts reuse the session).

use crate::client::{ClientError, MatrixClient, SyncResponse};
use crate::config::MatrixConfig;
use crate::crypto::OlmMachine;
use crate::state::{CALL_MEMBER_TYPES, CALL_TYPES, ROOM_MEMBER_TYPE};
use crate::status::{Counter, Status};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

/// Server-side long-poll timeout of `/sync`.
pub const SYNC_TIMEOUT_MS: u64 = 30_000;
/// Synapse's most to-device events per `/sync`: a full page means more backlog may follow.
pub const TO_DEVICE_PAGE: usize = 100;
/// Timeline events per room per sync.
pub const TIMELINE_LIMIT: u64 = 50;

const SYNC_TOKEN_FILE: &str = "sync_token";
const LAST_SYNC_FILE: &str = "last_sync_ms";
const SESSION_FILE: &str = "session.json";

/// The filter the focus syncs with: no presence or account data, no ephemeral events, only the
/// room state types authorization needs (in `state` and the timeline), and all to-device events.
pub fn sync_filter() -> Value {
    let types: Vec<&str> = std::iter::once(ROOM_MEMBER_TYPE)
        .chain(CALL_TYPES)
        .chain(CALL_MEMBER_TYPES)
        .collect();
    json!({
        "presence": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
        "room": {
            "state": {"types": types, "lazy_load_members": false},
            "timeline": {"types": types, "limit": TIMELINE_LIMIT},
            "ephemeral": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
            "include_leave": false
        }
    })
}

/// A password login's session, cached so restarts reuse it instead of creating new sessions.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CachedSession {
    /// The homeserver the token belongs to.
    pub homeserver_url: String,
    /// The logged-in user.
    pub user_id: String,
    /// The logged-in device.
    pub device_id: String,
    /// The access token.
    pub access_token: String,
}

impl std::fmt::Debug for CachedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedSession")
            .field("homeserver_url", &self.homeserver_url)
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// The files the focus keeps in its state directory; every write is atomic (temp file + rename).
#[derive(Clone, Debug)]
pub struct SyncStore {
    dir: PathBuf,
}

impl SyncStore {
    /// Uses (and creates) `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The sync token earlier versions kept in their own file, if any (read once, to migrate
    /// to the [checkpoint](crate::checkpoint)).
    pub fn sync_token(&self) -> io::Result<Option<String>> {
        Ok(self
            .read(SYNC_TOKEN_FILE)?
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty()))
    }

    /// Wall-clock ms of the last handled sync batch as earlier versions kept it, if any.
    pub fn last_sync_ms(&self) -> io::Result<Option<u64>> {
        Ok(self
            .read(LAST_SYNC_FILE)?
            .and_then(|s| s.trim().parse().ok()))
    }

    /// Writes the token and time as earlier versions did (now they live in the checkpoint).
    #[cfg(test)]
    pub(crate) fn save_legacy(&self, sync_token: &str, last_sync_ms: u64) -> io::Result<()> {
        write_atomic(
            &self.dir.join(SYNC_TOKEN_FILE),
            sync_token.as_bytes(),
            0o600,
        )?;
        write_atomic(
            &self.dir.join(LAST_SYNC_FILE),
            last_sync_ms.to_string().as_bytes(),
            0o600,
        )
    }

    /// The cached session, if present and readable.
    pub fn cached_session(&self) -> Option<CachedSession> {
        let text = self.read(SESSION_FILE).ok()??;
        serde_json::from_str(&text).ok()
    }

    /// Caches a session (file mode 0600).
    pub fn save_session(&self, session: &CachedSession) -> io::Result<()> {
        let text = serde_json::to_vec(session).map_err(io::Error::other)?;
        write_atomic(&self.dir.join(SESSION_FILE), &text, 0o600)
    }

    /// Removes the cached session.
    pub fn clear_session(&self) {
        let _ = std::fs::remove_file(self.dir.join(SESSION_FILE));
    }

    fn read(&self, name: &str) -> io::Result<Option<String>> {
        match std::fs::read_to_string(self.dir.join(name)) {
            Ok(text) => Ok(Some(text)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }
}

/// Writes `bytes` to `path` atomically: a temp file with `mode` is written, flushed to disk and
/// renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// The longest wait between two failed syncs.
const SYNC_RETRY_MAX: Duration = Duration::from_secs(5);

/// Capped exponential backoff with a little jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    current: Option<Duration>,
}

impl Backoff {
    /// Starts at `base`, doubles up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            current: None,
        }
    }

    /// The next delay (up to 10 % over the doubled value, never over `cap`).
    pub fn next_delay(&mut self) -> Duration {
        let doubled = match self.current {
            None => self.base,
            Some(d) => d.saturating_mul(2),
        }
        .min(self.cap);
        self.current = Some(doubled);
        let jitter = rand::rng().random_range(0..=doubled.as_millis() as u64 / 10);
        (doubled + Duration::from_millis(jitter)).min(self.cap)
    }

    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.current = None;
    }
}

/// Logs in as configured: with the access token, else with a cached session (when `use_cache`),
/// else with the password (caching the new session). Checks the session is the configured
/// user and device.
pub async fn login(
    matrix: &MatrixConfig,
    store: &SyncStore,
    use_cache: bool,
) -> Result<MatrixClient, ClientError> {
    let hs = matrix.homeserver_url.as_str();
    if let Some(token) = matrix.access_token.as_deref() {
        let client = MatrixClient::with_access_token(hs, token).await?;
        return check_identity(matrix, client);
    }
    let Some(password) = matrix.password.as_deref() else {
        return Err(ClientError::InvalidInput(
            "neither password nor access_token is configured".into(),
        ));
    };
    if use_cache
        && let Some(cached) = store.cached_session()
        && cached.homeserver_url == matrix.homeserver_url
        && cached.user_id == matrix.user_id
        && cached.device_id == matrix.device_id
    {
        match MatrixClient::with_access_token(hs, &cached.access_token).await {
            Ok(client) if client.user_id() == matrix.user_id => {
                info!(user = %matrix.user_id, device = %client.device_id(), "reusing cached session");
                return check_identity(matrix, client);
            }
            Ok(_) => store.clear_session(),
            Err(err) if err.is_unknown_token() => {
                info!("cached session is no longer valid; logging in with the password");
                store.clear_session();
            }
            Err(err) => return Err(err),
        }
    }
    let client =
        MatrixClient::login_password(hs, &matrix.user_id, password, Some(&matrix.device_id))
            .await?;
    let client = check_identity(matrix, client)?;
    let session = CachedSession {
        homeserver_url: matrix.homeserver_url.clone(),
        user_id: client.user_id().to_owned(),
        device_id: client.device_id().to_owned(),
        access_token: client.access_token().to_owned(),
    };
    if let Err(err) = store.save_session(&session) {
        warn!(error = %err, "could not cache the session");
    }
    info!(user = %client.user_id(), device = %client.device_id(), "logged in with password");
    Ok(client)
}

fn check_identity(
    matrix: &MatrixConfig,
    client: MatrixClient,
) -> Result<MatrixClient, ClientError> {
    if client.user_id() != matrix.user_id || client.device_id() != matrix.device_id {
        return Err(ClientError::InvalidInput(format!(
            "logged in as {} / {}, but {} / {} is configured",
            client.user_id(),
            client.device_id(),
            matrix.user_id,
            matrix.device_id
        )));
    }
    Ok(client)
}

/// Logs in, retrying transient failures with backoff; other failures are returned.
pub(crate) async fn login_with_retry(
    matrix: &MatrixConfig,
    store: &SyncStore,
    use_cache: bool,
) -> Result<MatrixClient, ClientError> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        match login(matrix, store, use_cache).await {
            Ok(client) => return Ok(client),
            Err(err) if err.is_transient() => {
                let delay = backoff.next_delay();
                warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "login failed, retrying");
                tokio::time::sleep(delay).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// One sync response handed to the signaller; `done` is answered once it is handled and
/// committed (see [`crate::checkpoint`]).
#[derive(Debug)]
pub(crate) struct Batch {
    pub response: SyncResponse,
    /// Whether the batch is (part of) the backlog queued while the focus was not listening.
    pub backlog: bool,
    pub done: oneshot::Sender<()>,
}

/// The sync loop's inputs.
pub(crate) struct SyncLoop {
    pub matrix: MatrixConfig,
    pub store: SyncStore,
    pub filter: String,
    pub client: watch::Sender<MatrixClient>,
    pub status: Arc<Status>,
    /// Becomes `true` when the loop should stop; it interrupts waiting, never persisting.
    pub stop: watch::Receiver<bool>,
    /// The Olm machine: tops up keys and decrypts to-device events before the signaller sees them.
    pub olm: Arc<tokio::sync::Mutex<OlmMachine>>,
}

impl SyncLoop {
    /// Syncs until the receiver of `batches` goes away. The first sync after start (and the
    /// following ones while they return full pages of to-device events) use timeout 0 and are
    /// marked as backlog. It resumes from the checkpoint's token; the signaller commits each
    /// batch's token with what the batch changed, and the next sync starts after that.
    pub async fn run(mut self, batches: mpsc::Sender<Batch>) -> anyhow::Result<()> {
        let mut since = self.olm.lock().await.sync_token().map(str::to_owned);
        info!(resuming = since.is_some(), "sync loop started");
        let mut catching_up = true;
        // After a failed sync the next one does not long-poll, so readiness returns as soon as
        // the homeserver answers.
        let mut after_failure = false;
        let mut state_loaded = false;
        // At most 5 s between attempts: a homeserver back from a restart is noticed within
        // seconds (calls wait on it), and one request every 5 s costs a down server nothing.
        let mut backoff = Backoff::new(Duration::from_millis(500), SYNC_RETRY_MAX);
        loop {
            let client = self.client.borrow().clone();
            let timeout = if catching_up || after_failure {
                0
            } else {
                SYNC_TIMEOUT_MS
            };
            // The room state lives in memory only: the first sync after a start that resumes
            // from a token asks for the full state again, or members known before the restart
            // would be unknown.
            let full_state = !state_loaded && since.is_some();
            let request =
                client.sync_with_state(since.as_deref(), timeout, Some(&self.filter), full_state);
            let started = std::time::Instant::now();
            let result = tokio::select! {
                result = request => result,
                _ = self.stop.wait_for(|stop| *stop) => return Ok(()),
            };
            self.status.observe_sync(started.elapsed());
            let mut response = match result {
                Ok(response) => response,
                Err(err) if err.is_unknown_token() => {
                    self.status.set_logged_in(false);
                    if self.matrix.password.is_none() {
                        error!(error = %err, "the configured access token was rejected");
                        return Err(anyhow::anyhow!("access token rejected: {err}"));
                    }
                    warn!(error = %err, "access token rejected; logging in again");
                    self.store.clear_session();
                    let fresh = login_with_retry(&self.matrix, &self.store, false).await?;
                    self.status.set_logged_in(true);
                    self.client.send_replace(fresh);
                    continue;
                }
                Err(err) => {
                    self.status.incr(Counter::SyncErrors);
                    self.status.sync_failed(crate::now_ms());
                    after_failure = true;
                    let delay = backoff.next_delay();
                    warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "sync failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = self.stop.wait_for(|stop| *stop) => return Ok(()),
                    }
                }
            };
            backoff.reset();
            after_failure = false;
            self.status.sync_succeeded(crate::now_ms());
            if response.malformed > 0 {
                self.status
                    .add(Counter::MalformedSyncEvents, response.malformed as u64);
                warn!(
                    count = response.malformed,
                    "skipped malformed events in sync"
                );
            }
            let next = response.next_batch.clone();
            let full_page = response.to_device.len() >= TO_DEVICE_PAGE;
            self.olm.lock().await.on_sync(&client, &mut response).await;
            let has_invite = response
                .to_device
                .iter()
                .any(|e| crate::signaller::is_invite(&e.event_type));
            crate::fault::point(crate::fault::Point::Decrypted, has_invite);
            debug!(
                to_device = response.to_device.len(),
                rooms = response.joined.len(),
                backlog = catching_up,
                "sync batch"
            );
            let (done, handled) = oneshot::channel();
            let batch = Batch {
                response,
                backlog: catching_up,
                done,
            };
            if batches.send(batch).await.is_err() || handled.await.is_err() {
                return Ok(());
            }
            self.status.incr(Counter::SyncBatches);
            since = Some(next);
            state_loaded = true;
            catching_up = catching_up && full_page;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = SyncStore::open(&dir.path().join("nested")).unwrap();
        assert_eq!(store.sync_token().unwrap(), None);
        assert_eq!(store.last_sync_ms().unwrap(), None);
        store.save_legacy("s1_2_3", 1234).unwrap();
        store.save_legacy("s4_5_6", 5678).unwrap();
        assert_eq!(store.sync_token().unwrap().as_deref(), Some("s4_5_6"));
        assert_eq!(store.last_sync_ms().unwrap(), Some(5678));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_write_killed_before_its_rename_leaves_the_last_whole_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"{\"v\":1}", 0o600).unwrap();
        // What a kill between the temp file's write and the rename leaves: a partial temp file
        // (and, with O_EXCL creation, a file the next write must not trip over).
        std::fs::write(dir.path().join("state.json.tmp"), b"{\"v\":").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"v\":1}");
        write_atomic(&path, b"{\"v\":2}", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"v\":2}");
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn session_cache_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = SyncStore::open(dir.path()).unwrap();
        assert!(store.cached_session().is_none());
        let session = CachedSession {
            homeserver_url: "http://hs".into(),
            user_id: "@f:hs".into(),
            device_id: "F".into(),
            access_token: "secret".into(),
        };
        store.save_session(&session).unwrap();
        assert_eq!(store.cached_session(), Some(session.clone()));
        assert!(!format!("{session:?}").contains("secret"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SESSION_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        store.clear_session();
        assert!(store.cached_session().is_none());
    }

    #[test]
    fn garbage_files_read_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let store = SyncStore::open(dir.path()).unwrap();
        std::fs::write(dir.path().join(LAST_SYNC_FILE), "soon").unwrap();
        std::fs::write(dir.path().join(SYNC_TOKEN_FILE), "  \n").unwrap();
        std::fs::write(dir.path().join(SESSION_FILE), "{").unwrap();
        assert_eq!(store.last_sync_ms().unwrap(), None);
        assert_eq!(store.sync_token().unwrap(), None);
        assert!(store.cached_session().is_none());
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<u64> = (0..6)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        let floors = [100, 200, 400, 800, 1000, 1000];
        for (delay, floor) in delays.iter().zip(floors) {
            assert!(
                *delay >= floor && *delay <= (floor * 11 / 10).min(1000),
                "{delays:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(110));
    }

    #[test]
    fn filter_names_the_state_types() {
        let filter = sync_filter();
        let types = filter["room"]["timeline"]["types"].as_array().unwrap();
        for t in [
            "m.room.member",
            "m.call",
            "org.matrix.msc3401.call.member",
            "com.famedly.call.member",
        ] {
            assert!(types.iter().any(|v| v == t), "{t}");
        }
        assert_eq!(filter["presence"]["not_types"][0], "*");
    }
}
