//! A ready conference for end-to-end tests and the demo: a real Synapse, the focus running as a
//! real process and joined to a room, and an `m.call` in that room.

use crate::focus::{Focus, FocusOptions};
use crate::server::Synapse;
use anyhow::{Context, Result, bail};
use cascade_signalling::MatrixClient;
use cascade_simclient::{SimClient, SimConfig, signalling};
use std::path::Path;
use std::time::{Duration, Instant};

/// A device's `(user_id, device_id)`, as simulated clients name publishers.
pub fn party(matrix: &MatrixClient) -> (String, String) {
    (matrix.user_id().to_owned(), matrix.device_id().to_owned())
}

/// The focus's Matrix user's localpart.
pub const FOCUS_LOCALPART: &str = "focus";

/// A homeserver, a focus and a room with a conference in it.
pub struct Conference {
    /// The homeserver.
    pub synapse: Synapse,
    /// The focus process.
    pub focus: Focus,
    /// The user who created the room (and invites the others).
    pub owner: MatrixClient,
    /// The room.
    pub room_id: String,
    /// The conference id (state key of `m.call`).
    pub conf_id: String,
}

impl Conference {
    /// Starts Synapse and the focus binary at `focus_binary`, creates a room with a conference
    /// and waits until the focus has joined it.
    pub async fn start(focus_binary: &Path, authorization: &str) -> Result<Self> {
        Self::start_with_env(focus_binary, authorization, Vec::new()).await
    }

    /// Like [`Conference::start`], with extra `CASCADE_<SECTION>__<KEY>` variables for the focus.
    pub async fn start_with_env(
        focus_binary: &Path,
        authorization: &str,
        env: Vec<(String, String)>,
    ) -> Result<Self> {
        let synapse = Synapse::start().await?;
        let focus_account = synapse
            .register(FOCUS_LOCALPART, "focus-password", false)
            .await?;
        let mut options = FocusOptions::new(
            focus_binary,
            synapse.url(),
            &focus_account.user_id,
            "focus-password",
        );
        options.authorization = authorization.to_owned();
        options.env = env;
        let focus = Focus::start(options).await?;

        let owner_account = synapse.register("owner", "owner-password", false).await?;
        let owner = MatrixClient::with_access_token(synapse.url(), &owner_account.access_token)
            .await
            .context("owner login")?;
        let room_id =
            signalling::create_call_room(&owner, std::slice::from_ref(&focus_account.user_id))
                .await?;
        let conf_id = format!("conf-{}", cascade_simclient::random_id(8));
        signalling::create_conference(&owner, &room_id, &conf_id).await?;
        let conference = Self {
            synapse,
            focus,
            owner,
            room_id,
            conf_id,
        };
        conference
            .wait_joined(&focus_account.user_id, Duration::from_secs(30))
            .await?;
        Ok(conference)
    }

    /// Waits until `user_id`'s membership in the room is `join`.
    pub async fn wait_joined(&self, user_id: &str, timeout: Duration) -> Result<()> {
        self.wait_joined_in(&self.room_id, user_id, timeout).await
    }

    /// Waits until `user_id`'s membership in `room_id` (a room the owner is in) is `join`.
    pub async fn wait_joined_in(
        &self,
        room_id: &str,
        user_id: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.owner.room_state(room_id).await?;
            let joined = state.iter().any(|event| {
                event.event_type == "m.room.member"
                    && event.state_key.as_deref() == Some(user_id)
                    && event.content.get("membership").and_then(|m| m.as_str()) == Some("join")
            });
            if joined {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{user_id} did not join {room_id} within {timeout:?}; focus log:\n{}",
                    self.focus.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Registers a user, invites it to the room and joins it; returns its Matrix session.
    pub async fn device(&self, localpart: &str) -> Result<MatrixClient> {
        self.device_in(&self.room_id, localpart).await
    }

    /// Registers a user, invites it to `room_id` (a room the owner is in) and joins it; returns
    /// its Matrix session.
    pub async fn device_in(&self, room_id: &str, localpart: &str) -> Result<MatrixClient> {
        let account = self
            .synapse
            .register(localpart, "device-password", false)
            .await?;
        let client = MatrixClient::with_access_token(self.synapse.url(), &account.access_token)
            .await
            .with_context(|| format!("{localpart} login"))?;
        self.owner
            .invite_user(room_id, client.user_id())
            .await
            .with_context(|| format!("inviting {localpart}"))?;
        client
            .join_room(room_id)
            .await
            .with_context(|| format!("{localpart} joining"))?;
        Ok(client)
    }

    /// A call configuration for `matrix` in this conference.
    pub fn call_config(&self, matrix: &MatrixClient) -> SimConfig {
        SimConfig::new(
            matrix.clone(),
            &self.room_id,
            &self.conf_id,
            self.focus.user_id(),
            self.focus.device_id(),
        )
    }

    /// Starts another focus, as the new user `localpart` on the same homeserver, with the
    /// binary at `focus_binary`, and waits until it has joined the room (as the conference's
    /// members on that focus would have it: the second focus of a cascade).
    pub async fn add_focus(&self, focus_binary: &Path, localpart: &str) -> Result<Focus> {
        self.add_focus_with_env(focus_binary, localpart, Vec::new())
            .await
    }

    /// Like [`Conference::add_focus`], with extra `CASCADE_<SECTION>__<KEY>` variables for the
    /// new focus.
    pub async fn add_focus_with_env(
        &self,
        focus_binary: &Path,
        localpart: &str,
        env: Vec<(String, String)>,
    ) -> Result<Focus> {
        let account = self
            .synapse
            .register(localpart, "focus-password", false)
            .await?;
        let mut options = FocusOptions::new(
            focus_binary,
            self.synapse.url(),
            &account.user_id,
            "focus-password",
        );
        options.authorization = "membership".to_owned();
        options.env = env;
        let focus = Focus::start(options).await?;
        self.owner
            .invite_user(&self.room_id, &account.user_id)
            .await
            .with_context(|| format!("inviting {localpart}"))?;
        self.wait_joined(&account.user_id, Duration::from_secs(30))
            .await?;
        Ok(focus)
    }

    /// A call configuration for `matrix` in this conference, calling `focus` (and naming it as
    /// the device's active focus).
    pub fn call_config_on(&self, matrix: &MatrixClient, focus: &Focus) -> SimConfig {
        SimConfig::new(
            matrix.clone(),
            &self.room_id,
            &self.conf_id,
            focus.user_id(),
            focus.device_id(),
        )
    }

    /// Passes a test's result through, printing the focus's log tail if it failed.
    pub fn on_failure<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            eprintln!("---- focus log ----\n{}", self.focus.log_tail());
        }
        result
    }

    /// Publishes the device's membership and places its call.
    pub async fn join(&self, config: SimConfig) -> Result<SimClient> {
        config.publish_membership().await?;
        SimClient::start(config).await
    }
}
