// A LiveKit client page for crates/server/tests/livekit_browser.rs.
//
// livekit-client's UMD bundle (window.LivekitClient) joins the room its access token names at
// the focus's LiveKit endpoint, publishes the fake camera (three simulcast layers) and a tone
// as its microphone, and subscribes to everyone else (auto-subscribe, as Element Call does).
// Every 500 ms it posts a report built from getStats() and the room's events to the test's
// control URL, and reads from it what to do next: `mute` mutes its microphone, `leave` leaves
// the room, `video` sets how it receives each other participant's camera (`{identity:
// {subscribed: bool, quality: "low"|"high", enabled: bool}}`, sent to the focus as
// UpdateSubscription and UpdateTrackSettings).
//
// `send` lists data packets to publish (`[{id, text, reliable, to: [identity…]}]`, each once,
// with the topic `test`); every data packet received is an event `data <sender> <topic>
// <reliable|lossy> <text>`.
//
// With `e2ee` (a passphrase) it encrypts what it publishes and decrypts what it receives with
// livekit-client's end-to-end encryption (insertable streams, its worker served from
// 127.0.0.1) and that shared key.
//
// With `dynacast` it lets the focus's SubscribedQualityUpdate switch off the simulcast layers
// of its camera nobody receives (as Element Call does); its report's `sending` gives each
// layer's frames encoded and bytes sent so far.
//
// With `camera` (JSON: `{width, height, fps, bitrates: [q, h, f]}`) it captures the camera at
// that size and frame rate and publishes it as three simulcast layers of a third, two thirds
// and all of its height, whose maxBitrate (bit/s) are the three bitrates; otherwise the camera is
// 1280x720 with livekit-client's default layers. Its report's `sending` gives each layer's
// configured maxBitrate too.
//
// Query parameters: url (the focus's LiveKit URL, ws://…), token, control, e2ee, dynacast and
// camera (optional).

const params = new URLSearchParams(location.search);
const cfg = {
  url: params.get('url'),
  token: params.get('token'),
  control: params.get('control'),
  e2ee: params.get('e2ee'),
  dynacast: params.get('dynacast') === 'true',
  camera: params.has('camera') ? JSON.parse(params.get('camera')) : null,
};
const LK = window.LivekitClient;

// The capture size and the simulcast layers livekit-client publishes the camera with.
//
// Every layer keeps its size: when the machine's CPU is short (three pages encoding and
// decoding on two cores), Chromium would otherwise scale the layers down (livekit-client
// publishes cameras with 'maintain-framerate': 720, 360 and 180 lines become 540, 270 and 135),
// and the test tells the layers apart by their height. With 'maintain-resolution' Chromium
// drops frames instead.
const KEEP_SIZE = 'maintain-resolution';
function cameraOptions(camera) {
  if (!camera) {
    return {
      capture: { resolution: LK.VideoPresets.h720.resolution },
      publish: { simulcast: true, degradationPreference: KEEP_SIZE },
    };
  }
  const { width, height, fps, bitrates: [q, h, f] } = camera;
  const layer = (share, maxBitrate) =>
    new LK.VideoPreset(Math.round(width * share), Math.round(height * share), maxBitrate, fps);
  return {
    capture: { resolution: { width, height, frameRate: fps } },
    publish: {
      simulcast: true,
      degradationPreference: KEEP_SIZE,
      videoEncoding: { maxBitrate: f, maxFramerate: fps },
      videoSimulcastLayers: [layer(1 / 3, q), layer(2 / 3, h)],
    },
  };
}
const cameraSetup = cameraOptions(cfg.camera);
const TICK_MS = 500;

const state = {
  phase: 'starting',
  muted: false,
  left: false,
  applied: {},
  subscribed: {},
  sent: new Set(),
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

const keyProvider = cfg.e2ee ? new LK.ExternalE2EEKeyProvider() : null;
const room = new LK.Room({
  adaptiveStream: false,
  dynacast: cfg.dynacast,
  videoCaptureDefaults: cameraSetup.capture,
  publishDefaults: cameraSetup.publish,
  e2ee: keyProvider
    ? { keyProvider, worker: new Worker('/livekit-client.e2ee.worker.js') }
    : undefined,
});
room
  .on(LK.RoomEvent.ParticipantConnected, (p) => note(`connected ${p.identity}`))
  .on(LK.RoomEvent.ParticipantDisconnected, (p) => note(`disconnected ${p.identity}`))
  .on(LK.RoomEvent.TrackSubscribed, (track, pub, p) => note(`subscribed ${p.identity} ${track.kind}`))
  .on(LK.RoomEvent.TrackUnsubscribed, (track, pub, p) => note(`unsubscribed ${p.identity} ${track.kind}`))
  .on(LK.RoomEvent.TrackSubscriptionFailed, (sid, p, err) => note(`subscription failed ${p && p.identity} ${sid} ${err}`))
  .on(LK.RoomEvent.TrackMuted, (pub, p) => note(`muted ${p.identity} ${pub.kind}`))
  .on(LK.RoomEvent.TrackUnmuted, (pub, p) => note(`unmuted ${p.identity} ${pub.kind}`))
  .on(LK.RoomEvent.ActiveSpeakersChanged, (speakers) =>
    note(`speakers ${speakers.map((s) => s.identity).join(',')}`))
  .on(LK.RoomEvent.DataReceived, (payload, p, kind, topic) => {
    const how = kind === LK.DataPacket_Kind.RELIABLE ? 'reliable' : 'lossy';
    note(`data ${p ? p.identity : '?'} ${topic} ${how} ${new TextDecoder().decode(payload)}`);
  })
  .on(LK.RoomEvent.EncryptionError, (err) => note(`encryption error ${err}`))
  .on(LK.RoomEvent.Reconnecting, () => note('reconnecting'))
  .on(LK.RoomEvent.Disconnected, (reason) => note(`room disconnected ${reason}`));

async function start() {
  try {
    if (keyProvider) {
      await keyProvider.setKey(cfg.e2ee);
      await room.setE2EEEnabled(true);
    }
    state.phase = 'connecting';
    await room.connect(cfg.url, cfg.token, { autoSubscribe: true });
    state.phase = 'connected';
    note(`joined as ${room.localParticipant.identity} (${room.localParticipant.sid})`);
    await room.localParticipant.setCameraEnabled(true);
    // The microphone is a steady tone rather than the fake device (a short beep a second,
    // which audio processing mostly removes), so that the focus hears someone speak.
    const audio = new AudioContext();
    const tone = audio.createOscillator();
    tone.frequency.value = 440;
    const sink = audio.createMediaStreamDestination();
    tone.connect(sink);
    tone.start();
    await room.localParticipant.publishTrack(sink.stream.getAudioTracks()[0], {
      source: LK.Track.Source.Microphone,
    });
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
        encrypted: pub.isEncrypted,
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

// Each simulcast layer (rid) of our camera: frames encoded and bytes sent so far and when
// (the stats' timestamp, ms), the encoder's target bitrate and the layer's configured
// maxBitrate (bit/s), the frame height, why quality is limited, and what the encoder gives up
// first when it is (the sender's degradationPreference).
async function sending() {
  const out = {};
  const publication = room.localParticipant.getTrackPublication(LK.Track.Source.Camera);
  const sender = publication && publication.track && publication.track.sender;
  if (!sender) return out;
  const configured = {};
  const parameters = sender.getParameters();
  for (const encoding of parameters.encodings || []) {
    if (encoding.rid) configured[encoding.rid] = encoding.maxBitrate || 0;
  }
  const stats = await sender.getStats();
  stats.forEach((s) => {
    if (s.type !== 'outbound-rtp' || !s.rid) return;
    out[s.rid] = {
      frames: s.framesEncoded || 0,
      keyframes: s.keyFramesEncoded || 0,
      bytes: s.bytesSent || 0,
      at: s.timestamp,
      target: s.targetBitrate || 0,
      maxBitrate: configured[s.rid] || 0,
      height: s.frameHeight || 0,
      limitation: s.qualityLimitationReason || '',
      degradation: parameters.degradationPreference || '',
    };
  });
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
  for (const [identity, wanted] of Object.entries(control.video || {})) {
    const applied = `${wanted.quality} ${wanted.enabled} ${wanted.subscribed}`;
    if (state.applied[identity] === applied) continue;
    const other = [...room.remoteParticipants.values()].find((p) => p.identity === identity);
    const camera = other && other.getTrackPublication(LK.Track.Source.Camera);
    if (!camera) continue;
    if (state.subscribed[identity] !== wanted.subscribed) {
      state.subscribed[identity] = wanted.subscribed;
      camera.setSubscribed(wanted.subscribed);
      note(`asked to ${wanted.subscribed ? 'subscribe to' : 'unsubscribe from'} ${identity}'s camera`);
    }
    if (!wanted.subscribed) {
      state.applied[identity] = applied;
      continue;
    }
    if (!camera.isSubscribed) continue;
    camera.setEnabled(wanted.enabled);
    camera.setVideoQuality(wanted.quality === 'low' ? LK.VideoQuality.LOW : LK.VideoQuality.HIGH);
    state.applied[identity] = applied;
    note(`receive ${identity}'s camera: ${applied}`);
  }
  for (const message of control.send || []) {
    if (state.sent.has(message.id) || state.phase !== 'publishing') continue;
    state.sent.add(message.id);
    await room.localParticipant.publishData(new TextEncoder().encode(message.text), {
      reliable: message.reliable,
      destinationIdentities: message.to,
      topic: 'test',
    });
    note(`sent ${message.reliable ? 'reliable' : 'lossy'} ${message.text}`);
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
      e2ee: room.isE2EEEnabled,
      speakers: room.activeSpeakers.map((p) => p.identity),
      received: state.left ? {} : await received(),
      sending: state.left ? {} : await sending(),
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
