// A Matrix call device in a browser page, for crates/server/tests/browser.rs.
//
// It speaks the client-server API with fetch and the focus protocol of shared/PROTOCOL.md:
// publishes its m.call.member, sends m.call.invite / m.call.candidates to the focus as
// to-device messages, applies the focus's m.call.answer / m.call.candidates from /sync, and then
// talks to the focus on the "datachannel" data channel (stream metadata, track subscriptions,
// renegotiation, ping/pong). Every 500 ms it reads the desired render size from the test's
// control URL (GET) and posts a report built from getStats() to it (POST).
//
// Query parameters: hs, token, user, device, room, conf, focus_user, focus_device,
// role (publisher|subscriber|both: publishes its camera and microphone, subscribes to the
// others, or both), capture (camera size, default 1280x720), control. When the control URL's
// answer carries `leave: true`, the page hangs up and closes its peer connection.

const params = new URLSearchParams(location.search);
const cfg = {
  hs: params.get('hs'),
  token: params.get('token'),
  user: params.get('user'),
  device: params.get('device'),
  room: params.get('room'),
  conf: params.get('conf'),
  focusUser: params.get('focus_user'),
  focusDevice: params.get('focus_device'),
  role: params.get('role') || 'subscriber',
  control: params.get('control'),
  capture: (params.get('capture') || '1280x720').split('x').map(Number),
};
const publishes = cfg.role === 'publisher' || cfg.role === 'both';
const subscribes = cfg.role === 'subscriber' || cfg.role === 'both';

const MEMBERSHIP_LIFETIME_MS = 3600 * 1000;
const INVITE_LIFETIME_MS = 60000;
const SYNC_TIMEOUT_MS = 10000;
const TICK_MS = 500;
const FILTER = JSON.stringify({
  room: { rooms: [] },
  presence: { types: [] },
  account_data: { types: [] },
});

function randomId(length) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('');
}

const sessionId = `sess-${randomId(12)}`;
const callId = `call-${randomId(16)}`;

// What the page reports besides the statistics.
const state = {
  phase: 'starting',
  answered: false,
  hangup: null,
  pings: 0,
  negotiations: 0,
  subscriptionsSent: 0,
  dataChannel: 'none',
  speaker: null,
  desired: null,
  available: {},
  subscribed: {},
  errors: [],
  events: [],
};

function note(text) {
  state.events.push(`${new Date().toISOString().slice(11, 23)} ${text}`);
  if (state.events.length > 60) state.events.splice(0, state.events.length - 60);
  const status = document.getElementById('status');
  if (status) status.textContent = state.events.slice(-20).join('\n');
}

function fail(where, err) {
  const text = `${where}: ${err && err.stack ? err.stack : err}`;
  state.errors.push(text);
  if (state.errors.length > 40) state.errors.splice(0, state.errors.length - 40);
  note(`error ${text}`);
}

window.onerror = (message, source, line, column, error) => {
  fail('window.onerror', error || `${message} at ${source}:${line}:${column}`);
};
window.addEventListener('unhandledrejection', (event) => fail('unhandledrejection', event.reason));

// ---- Matrix client-server API ----

async function matrix(method, path, body) {
  const response = await fetch(cfg.hs + path, {
    method,
    headers: {
      Authorization: `Bearer ${cfg.token}`,
      'Content-Type': 'application/json',
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) {
    const error = new Error(`${method} ${path.split('?')[0]}: ${response.status} ${text}`);
    error.status = response.status;
    throw error;
  }
  return text ? JSON.parse(text) : {};
}

const enc = encodeURIComponent;

// Our m.call.member entry merged into the user's existing content, as simclient's
// publish_membership does: expired devices and our earlier entry dropped, other calls kept.
async function publishMembership() {
  const now = Date.now();
  const own = {
    device_id: cfg.device,
    session_id: sessionId,
    expires_ts: now + MEMBERSHIP_LIFETIME_MS,
    feeds: [{ purpose: 'm.usermedia' }],
    'org.matrix.msc3898.foci.active': [{ user_id: cfg.focusUser, device_id: cfg.focusDevice }],
  };
  const path = `/_matrix/client/v3/rooms/${enc(cfg.room)}/state/m.call.member/${enc(cfg.user)}`;
  let existing = {};
  try {
    existing = await matrix('GET', path);
  } catch (err) {
    if (err.status !== 404) throw err;
  }
  const calls = Array.isArray(existing['m.calls']) ? existing['m.calls'] : [];
  let placed = false;
  for (const call of calls) {
    let devices = Array.isArray(call['m.devices']) ? call['m.devices'] : [];
    devices = devices.filter((d) => d.device_id !== cfg.device && (d.expires_ts || 0) > now);
    if (call['m.call_id'] === cfg.conf && !placed) {
      devices.push(own);
      placed = true;
    }
    call['m.devices'] = devices;
  }
  const kept = calls.filter((c) => c['m.devices'].length > 0);
  if (!placed) kept.push({ 'm.call_id': cfg.conf, 'm.devices': [own] });
  await matrix('PUT', path, { 'm.calls': kept });
  note('m.call.member published');
}

async function sync(since, timeout) {
  let query = `filter=${enc(FILTER)}&timeout=${timeout}`;
  if (since) query += `&since=${enc(since)}`;
  return matrix('GET', `/_matrix/client/v3/sync?${query}`);
}

// ---- to-device call events to the focus, sent one at a time in seq order ----

let seq = 0;
let txn = 0;
let sendChain = Promise.resolve();

function callEvent(extra) {
  return {
    call_id: callId,
    party_id: cfg.device,
    version: '1',
    conf_id: cfg.conf,
    device_id: cfg.device,
    sender_session_id: sessionId,
    dest_session_id: 'sfu',
    seq: seq++,
    room_id: cfg.room,
    ...extra,
  };
}

function sendToFocus(type, extra) {
  const content = callEvent(extra);
  const path = `/_matrix/client/v3/sendToDevice/${enc(type)}/${enc(`${callId}.${txn++}`)}`;
  const body = { messages: { [cfg.focusUser]: { [cfg.focusDevice]: content } } };
  sendChain = sendChain
    .then(() => matrix('PUT', path, body))
    .then(() => note(`sent ${type} seq ${content.seq}`))
    .catch((err) => fail(`sending ${type}`, err));
  return sendChain;
}

// ---- the peer connection ----

const pc = new RTCPeerConnection({ iceServers: [] });
let localStream = new MediaStream();
const channel = pc.createDataChannel('datachannel');
let inviteSent = false;
let pendingLocalCandidates = [];
let candidateFlush = null;
const pendingRemoteCandidates = [];

function metadata() {
  const tracks = localStream.getTracks();
  const entry = {
    purpose: 'm.usermedia',
    audio_muted: !tracks.some((t) => t.kind === 'audio'),
    video_muted: !tracks.some((t) => t.kind === 'video'),
  };
  return { [localStream.id]: entry };
}

function flushCandidates() {
  candidateFlush = null;
  if (!inviteSent || pendingLocalCandidates.length === 0) return;
  const candidates = pendingLocalCandidates;
  pendingLocalCandidates = [];
  sendToFocus('m.call.candidates', { candidates });
}

pc.onicecandidate = (event) => {
  const c = event.candidate;
  if (c && c.candidate) {
    pendingLocalCandidates.push({
      candidate: c.candidate,
      sdpMid: c.sdpMid,
      sdpMLineIndex: c.sdpMLineIndex,
      usernameFragment: c.usernameFragment,
    });
  } else if (!c) {
    pendingLocalCandidates.push({ candidate: '', sdpMid: '0', sdpMLineIndex: 0 });
  }
  if (!candidateFlush) candidateFlush = setTimeout(flushCandidates, 100);
};
pc.onconnectionstatechange = () => note(`connection ${pc.connectionState}`);
pc.oniceconnectionstatechange = () => note(`ice ${pc.iceConnectionState}`);
pc.ontrack = (event) => {
  note(`track ${event.track.kind} ${event.track.id} mid ${event.transceiver.mid}`);
  const element = document.createElement(event.track.kind === 'video' ? 'video' : 'audio');
  element.autoplay = true;
  element.muted = true;
  element.playsInline = true;
  element.srcObject = new MediaStream([event.track]);
  document.getElementById('videos').appendChild(element);
  element.play().catch((err) => note(`play: ${err}`));
};

// Remote descriptions and our answers are applied one at a time.
let negotiationChain = Promise.resolve();

function negotiate(task) {
  negotiationChain = negotiationChain.then(task).catch((err) => fail('negotiation', err));
  return negotiationChain;
}

async function addRemoteCandidate(candidate) {
  if (!candidate.candidate) return;
  try {
    await pc.addIceCandidate({
      candidate: candidate.candidate,
      sdpMid: candidate.sdpMid ?? null,
      sdpMLineIndex: candidate.sdpMLineIndex ?? null,
      usernameFragment: candidate.usernameFragment ?? undefined,
    });
    note(`remote candidate ${candidate.candidate}`);
  } catch (err) {
    fail(`addIceCandidate ${candidate.candidate}`, err);
  }
}

// ---- the data channel protocol ----

function sendChannel(type, content) {
  if (channel.readyState !== 'open') return false;
  channel.send(JSON.stringify({ type, content }));
  return true;
}

channel.onopen = () => {
  state.dataChannel = 'open';
  note('data channel open');
  updateSubscriptions();
};
channel.onclose = () => {
  state.dataChannel = 'closed';
  note('data channel closed');
};
channel.onerror = (event) => fail('data channel', event.error || 'error');
channel.onmessage = (event) => {
  let message;
  try {
    message = JSON.parse(event.data);
  } catch (err) {
    fail('data channel message', err);
    return;
  }
  const content = message.content || {};
  switch (message.type) {
    case 'm.call.ping':
      state.pings += 1;
      sendChannel('m.call.pong', {});
      break;
    case 'm.call.sdp_stream_metadata_changed':
    case 'org.matrix.call.sdp_stream_metadata_changed':
      state.available = content.sdp_stream_metadata || {};
      note(`metadata: ${JSON.stringify(state.available)}`);
      updateSubscriptions();
      break;
    case 'm.call.negotiate':
      onNegotiate(content.description, (answer) =>
        sendChannel('m.call.negotiate', { description: answer, sdp_stream_metadata: metadata() }),
      );
      break;
    case 'm.call.hangup':
      state.hangup = content.reason || 'user_hangup';
      note(`hangup on the data channel: ${state.hangup}`);
      break;
    case 'cascade.active_speaker':
      state.speaker = content.user_id || null;
      note(`active speaker ${state.speaker}`);
      break;
    default:
      note(`data channel: unhandled ${message.type}`);
  }
};

function onNegotiate(description, reply) {
  if (!description) return;
  negotiate(async () => {
    note(`negotiate ${description.type}`);
    await pc.setRemoteDescription(description);
    if (description.type === 'offer') {
      await pc.setLocalDescription(await pc.createAnswer());
      state.negotiations += 1;
      reply({ type: 'answer', sdp: pc.localDescription.sdp });
    }
  });
}

// The subscriber asks for every track of every other device's streams, video at the desired
// size; when the desired size changes it subscribes again to its video tracks with the new one.
function updateSubscriptions() {
  if (!subscribes || channel.readyState !== 'open' || !state.desired) return;
  const subscribe = [];
  for (const [streamId, stream] of Object.entries(state.available)) {
    const own =
      streamId === localStream.id || (stream.user_id === cfg.user && stream.device_id === cfg.device);
    if (own) continue;
    for (const [trackId, info] of Object.entries(stream.tracks || {})) {
      const key = `${streamId} ${trackId}`;
      const request = { stream_id: streamId, track_id: trackId };
      if (info.kind === 'video') {
        request.width = state.desired.width;
        request.height = state.desired.height;
      }
      const previous = state.subscribed[key];
      if (previous && previous.width === request.width && previous.height === request.height) {
        continue;
      }
      subscribe.push(request);
    }
  }
  if (subscribe.length === 0) return;
  if (sendChannel('m.call.track_subscription', { subscribe, unsubscribe: [] })) {
    for (const request of subscribe) {
      state.subscribed[`${request.stream_id} ${request.track_id}`] = request;
    }
    state.subscriptionsSent += 1;
    note(`subscribed ${JSON.stringify(subscribe)}`);
  }
}

// ---- to-device events from the focus ----

function onToDevice(events) {
  const ours = events
    .filter((e) => e.sender === cfg.focusUser && e.content)
    .filter((e) => e.content.call_id === callId)
    .filter((e) => e.content.dest_session_id === undefined || e.content.dest_session_id === sessionId)
    .sort((a, b) => (a.content.seq ?? 0) - (b.content.seq ?? 0));
  for (const event of ours) {
    const content = event.content;
    note(`received ${event.type} seq ${content.seq}`);
    switch (event.type) {
      case 'm.call.answer':
        if (state.answered) break;
        state.answered = true;
        negotiate(async () => {
          await pc.setRemoteDescription(content.answer);
          note('answer applied');
          for (const candidate of pendingRemoteCandidates.splice(0)) {
            await addRemoteCandidate(candidate);
          }
        });
        break;
      case 'm.call.candidates':
        for (const candidate of content.candidates || []) {
          if (state.answered) {
            negotiate(() => addRemoteCandidate(candidate));
          } else {
            pendingRemoteCandidates.push(candidate);
          }
        }
        break;
      case 'm.call.negotiate':
        onNegotiate(content.description, (answer) =>
          sendToFocus('m.call.negotiate', {
            description: answer,
            lifetime: INVITE_LIFETIME_MS,
            sdp_stream_metadata: metadata(),
            'org.matrix.msc3077.sdp_stream_metadata': metadata(),
          }),
        );
        break;
      case 'm.call.sdp_stream_metadata_changed':
      case 'org.matrix.call.sdp_stream_metadata_changed':
        state.available =
          content.sdp_stream_metadata || content['org.matrix.msc3077.sdp_stream_metadata'] || {};
        updateSubscriptions();
        break;
      case 'm.call.hangup':
      case 'm.call.reject':
        state.hangup = content.reason || event.type;
        note(`hangup: ${state.hangup}`);
        break;
      default:
        break;
    }
  }
}

async function syncLoop(since) {
  for (;;) {
    try {
      const response = await sync(since, SYNC_TIMEOUT_MS);
      since = response.next_batch;
      onToDevice((response.to_device && response.to_device.events) || []);
    } catch (err) {
      fail('/sync', err);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

// ---- statistics and the control URL ----

async function statistics() {
  const report = await pc.getStats();
  const codecs = {};
  report.forEach((s) => {
    if (s.type === 'codec') codecs[s.id] = s.mimeType;
  });
  const inbound = [];
  const outbound = [];
  let transport = null;
  const pairs = {};
  report.forEach((s) => {
    if (s.type === 'inbound-rtp') {
      inbound.push({
        kind: s.kind,
        totalSamplesReceived: s.totalSamplesReceived,
        concealedSamples: s.concealedSamples,
        ssrc: s.ssrc,
        mid: s.mid,
        trackIdentifier: s.trackIdentifier,
        codec: codecs[s.codecId] || null,
        packetsReceived: s.packetsReceived,
        packetsLost: s.packetsLost,
        bytesReceived: s.bytesReceived,
        framesReceived: s.framesReceived,
        framesDecoded: s.framesDecoded,
        keyFramesDecoded: s.keyFramesDecoded,
        framesDropped: s.framesDropped,
        frameWidth: s.frameWidth,
        frameHeight: s.frameHeight,
        pliCount: s.pliCount,
        nackCount: s.nackCount,
        decoderImplementation: s.decoderImplementation,
      });
    } else if (s.type === 'outbound-rtp') {
      outbound.push({
        kind: s.kind,
        rid: s.rid,
        ssrc: s.ssrc,
        active: s.active,
        codec: codecs[s.codecId] || null,
        packetsSent: s.packetsSent,
        bytesSent: s.bytesSent,
        framesEncoded: s.framesEncoded,
        frameWidth: s.frameWidth,
        frameHeight: s.frameHeight,
        targetBitrate: s.targetBitrate,
        qualityLimitationReason: s.qualityLimitationReason,
        encoderImplementation: s.encoderImplementation,
      });
    } else if (s.type === 'transport') {
      transport = {
        dtlsState: s.dtlsState,
        srtpCipher: s.srtpCipher,
        dtlsCipher: s.dtlsCipher,
        iceState: s.iceState,
        selectedCandidatePairId: s.selectedCandidatePairId,
      };
    } else if (s.type === 'candidate-pair') {
      pairs[s.id] = { state: s.state, local: s.localCandidateId, remote: s.remoteCandidateId };
    }
  });
  const selected = transport && pairs[transport.selectedCandidatePairId];
  const candidate = (id) => {
    const c = id && report.get(id);
    return c ? `${c.candidateType} ${c.address}:${c.port}` : null;
  };
  const selectedPair = selected
    ? { state: selected.state, local: candidate(selected.local), remote: candidate(selected.remote) }
    : null;
  return { inbound, outbound, transport, selectedPair };
}

async function tick() {
  try {
    const response = await fetch(cfg.control, { cache: 'no-store' });
    if (response.ok) {
      const desired = await response.json();
      const changed =
        !state.desired ||
        state.desired.width !== desired.width ||
        state.desired.height !== desired.height;
      if (desired.leave && !state.left) leave();
      if (changed) {
        state.desired = { width: desired.width, height: desired.height };
        note(`desired size ${desired.width}x${desired.height}`);
        updateSubscriptions();
      }
    }
  } catch (err) {
    fail('control GET', err);
  }
  let stats = {};
  try {
    stats = await statistics();
  } catch (err) {
    fail('getStats', err);
  }
  const report = {
    role: cfg.role,
    user: cfg.user,
    device: cfg.device,
    callId,
    sessionId,
    time: Date.now(),
    phase: state.phase,
    left: !!state.left,
    answered: state.answered,
    hangup: state.hangup,
    connectionState: pc.connectionState,
    iceConnectionState: pc.iceConnectionState,
    signalingState: pc.signalingState,
    dataChannel: channel.readyState,
    pings: state.pings,
    negotiations: state.negotiations,
    subscriptionsSent: state.subscriptionsSent,
    speaker: state.speaker,
    desired: state.desired,
    subscribed: Object.values(state.subscribed),
    available: state.available,
    ...stats,
    errors: state.errors,
    events: state.events.slice(-30),
  };
  try {
    await fetch(cfg.control, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(report),
    });
  } catch (err) {
    fail('control POST', err);
  }
  setTimeout(tick, TICK_MS);
}

// ---- leaving ----

function leave() {
  state.left = true;
  state.phase = 'left';
  sendToFocus('m.call.hangup', { reason: 'user_hangup' });
  channel.close();
  pc.close();
  note('left the call');
}

// ---- joining ----

async function main() {
  tick();
  state.phase = 'membership';
  await publishMembership();

  if (publishes) {
    state.phase = 'getUserMedia';
    localStream = await navigator.mediaDevices.getUserMedia({
      video: { width: cfg.capture[0], height: cfg.capture[1] },
    });
    // The microphone is a steady tone rather than the fake device (a short beep a second,
    // which audio processing mostly removes), so that the focus hears someone speak.
    const context = new AudioContext();
    const tone = context.createOscillator();
    tone.frequency.value = 440;
    const sink = context.createMediaStreamDestination();
    tone.connect(sink);
    tone.start();
    const [audio] = sink.stream.getAudioTracks();
    localStream.addTrack(audio);
    const [video] = localStream.getVideoTracks();
    note(`camera ${JSON.stringify(video.getSettings())}`);
    const camera = pc.addTransceiver(video, {
      direction: 'sendonly',
      streams: [localStream],
      sendEncodings: [
        { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
        { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
        { rid: 'f', maxBitrate: 1700000 },
      ],
    });
    // Every layer keeps its size when the machine's CPU is short (Chromium would otherwise
    // scale them all down, and the test tells layers apart by their height): frames are
    // dropped instead.
    const parameters = camera.sender.getParameters();
    parameters.degradationPreference = 'maintain-resolution';
    await camera.sender.setParameters(parameters);
    if (audio) pc.addTransceiver(audio, { direction: 'sendonly', streams: [localStream] });
  }

  // The sync token from before the invite, so the answer cannot be missed.
  state.phase = 'initial sync';
  const initial = await sync(null, 0);

  state.phase = 'offer';
  await pc.setLocalDescription(await pc.createOffer());
  state.phase = 'invite';
  sendToFocus('m.call.invite', {
    offer: { type: 'offer', sdp: pc.localDescription.sdp },
    lifetime: INVITE_LIFETIME_MS,
    invitee: cfg.focusUser,
    capabilities: { 'm.call.transferee': false, 'm.call.dtmf': false },
    sdp_stream_metadata: metadata(),
    'org.matrix.msc3077.sdp_stream_metadata': metadata(),
  });
  inviteSent = true;
  flushCandidates();
  state.phase = 'in call';
  await syncLoop(initial.next_batch);
}

main().catch((err) => {
  state.phase = `failed: ${state.phase}`;
  fail('main', err);
});
