// A LiveKit client page for crates/server/tests/livekit_browser.rs.
//
// livekit-client's UMD bundle (window.LivekitClient) joins the room its access token names at
// the focus's LiveKit endpoint, publishes the fake camera (three simulcast layers) and the
// fake microphone, and subscribes to everyone else (auto-subscribe, as Element Call does).
// Every 500 ms it posts a report built from getStats() and the room's events to the test's
// control URL, and reads from it what to do next: `mute` mutes its microphone, `leave` leaves
// the room.
//
// Query parameters: url (the focus's LiveKit URL, ws://…), token, control.

const params = new URLSearchParams(location.search);
const cfg = {
  url: params.get('url'),
  token: params.get('token'),
  control: params.get('control'),
};
const LK = window.LivekitClient;
const TICK_MS = 500;

const state = {
  phase: 'starting',
  muted: false,
  left: false,
  events: [],
  errors: [],
};

function note(text) {
  state.events.push(`${new Date().toISOString().slice(11, 23)} ${text}`);
  if (state.events.length > 80) state.events.splice(0, state.events.length - 80);
  const status = document.getElementById('status');
  if (status) status.textContent = state.events.slice(-20).join('\n');
}

function fail(where, err) {
  const text = `${where}: ${err && err.stack ? err.stack : err}`;
  state.errors.push(text);
  if (state.errors.length > 40) state.errors.splice(0, state.errors.length - 40);
  note(`error ${text}`);
}

const room = new LK.Room({
  adaptiveStream: false,
  dynacast: false,
  videoCaptureDefaults: { resolution: LK.VideoPresets.h720.resolution },
  publishDefaults: { simulcast: true },
});
room
  .on(LK.RoomEvent.ParticipantConnected, (p) => note(`connected ${p.identity}`))
  .on(LK.RoomEvent.ParticipantDisconnected, (p) => note(`disconnected ${p.identity}`))
  .on(LK.RoomEvent.TrackSubscribed, (track, pub, p) => note(`subscribed ${p.identity} ${track.kind}`))
  .on(LK.RoomEvent.TrackUnsubscribed, (track, pub, p) => note(`unsubscribed ${p.identity} ${track.kind}`))
  .on(LK.RoomEvent.TrackSubscriptionFailed, (sid, p, err) => note(`subscription failed ${p && p.identity} ${sid} ${err}`))
  .on(LK.RoomEvent.TrackMuted, (pub, p) => note(`muted ${p.identity} ${pub.kind}`))
  .on(LK.RoomEvent.TrackUnmuted, (pub, p) => note(`unmuted ${p.identity} ${pub.kind}`))
  .on(LK.RoomEvent.Reconnecting, () => note('reconnecting'))
  .on(LK.RoomEvent.Disconnected, (reason) => note(`room disconnected ${reason}`));

async function start() {
  try {
    state.phase = 'connecting';
    await room.connect(cfg.url, cfg.token, { autoSubscribe: true });
    state.phase = 'connected';
    note(`joined as ${room.localParticipant.identity} (${room.localParticipant.sid})`);
    await room.localParticipant.enableCameraAndMicrophone();
    state.phase = 'publishing';
    note('publishing camera and microphone');
  } catch (err) {
    state.phase = 'failed';
    fail('start', err);
  }
}

// What this page receives from each other participant: decoded video frames and their
// height, received audio packets, and the publications it knows of.
async function received() {
  const out = {};
  for (const p of room.remoteParticipants.values()) {
    const entry = {
      sid: p.sid,
      framesDecoded: 0,
      frameHeight: 0,
      audioPackets: 0,
      tracks: [],
    };
    for (const pub of p.trackPublications.values()) {
      entry.tracks.push({
        sid: pub.trackSid,
        kind: pub.kind,
        muted: pub.isMuted,
        subscribed: pub.isSubscribed,
      });
      const receiver = pub.track && pub.track.receiver;
      if (!receiver) continue;
      const stats = await receiver.getStats();
      stats.forEach((s) => {
        if (s.type !== 'inbound-rtp') return;
        if (s.kind === 'video') {
          entry.framesDecoded += s.framesDecoded || 0;
          entry.frameHeight = Math.max(entry.frameHeight, s.frameHeight || 0);
        } else if (s.kind === 'audio') {
          entry.audioPackets += s.packetsReceived || 0;
        }
      });
    }
    out[p.identity] = entry;
  }
  return out;
}

async function act(control) {
  if (control.mute && !state.muted) {
    state.muted = true;
    const mic = room.localParticipant.getTrackPublication(LK.Track.Source.Microphone);
    if (mic) {
      await mic.mute();
      note('muted own microphone');
    } else {
      fail('mute', 'no microphone publication');
    }
  }
  if (control.leave && !state.left) {
    state.left = true;
    await room.disconnect();
    state.phase = 'left';
    note('left');
  }
}

async function tick() {
  try {
    const control = await (await fetch(cfg.control)).json();
    await act(control);
  } catch (err) {
    fail('control', err);
  }
  try {
    const report = {
      phase: state.phase,
      identity: room.localParticipant ? room.localParticipant.identity : null,
      sid: room.localParticipant ? room.localParticipant.sid : null,
      state: room.state,
      received: state.left ? {} : await received(),
      events: state.events,
      errors: state.errors,
    };
    await fetch(cfg.control, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(report),
    });
  } catch (err) {
    fail('report', err);
  }
  setTimeout(tick, TICK_MS);
}

start();
tick();
