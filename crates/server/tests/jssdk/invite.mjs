// A released matrix-js-sdk with its legacy (libolm) crypto, as group calls used it: sends the
// focus an Olm-encrypted m.call.invite the way MatrixCall.sendVoipEvent does for to-device
// calls (client.encryptAndSendToDevices with {type, content}), then waits for the focus's
// m.call.answer to arrive and decrypt. Prints one JSON line to stdout; exit 0 iff answered.
//
// Environment: HOMESERVER_URL, ACCESS_TOKEN, USER_ID, DEVICE_ID (the caller's device),
// FOCUS_USER_ID, FOCUS_DEVICE_ID, ROOM_ID, CONF_ID, SESSION_ID, OFFER_SDP_FILE,
// TIMEOUT_MS (default 30000).

import Olm from "@matrix-org/olm";
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";
import { readFileSync } from "node:fs";

function env(name) {
    const value = process.env[name];
    if (!value) {
        throw new Error(`missing environment variable ${name}`);
    }
    return value;
}

function result(fields) {
    process.stdout.write(JSON.stringify(fields) + "\n");
}

// The SDK logs to the console: keep stdout for the result.
logger.setLevel(process.env.JSSDK_LOG_LEVEL || "info");
for (const method of ["log", "info", "debug", "trace", "warn"]) {
    console[method] = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
}

const timeoutMs = Number(process.env.TIMEOUT_MS || "30000");
const focusUser = env("FOCUS_USER_ID");
const focusDevice = env("FOCUS_DEVICE_ID");
const sessionId = env("SESSION_ID");
const callId = `jscall-${Math.random().toString(36).slice(2, 12)}`;

async function main() {
    await Olm.init();
    globalThis.Olm = Olm;

    const client = sdk.createClient({
        baseUrl: env("HOMESERVER_URL"),
        accessToken: env("ACCESS_TOKEN"),
        userId: env("USER_ID"),
        deviceId: env("DEVICE_ID"),
        store: new sdk.MemoryStore(),
        cryptoStore: new sdk.MemoryCryptoStore(),
        useE2eForGroupCall: true,
    });
    await client.initCrypto();
    // initCrypto uploads the device keys in the background; the focus checks the invite's
    // sender keys against them, so wait for them to be on the server.
    await client.crypto.uploadDeviceKeys();

    const answered = new Promise((resolve) => {
        client.on(sdk.ClientEvent.ToDeviceEvent, async (event) => {
            try {
                if (event.isEncrypted()) {
                    await client.decryptEventIfNeeded(event);
                }
            } catch (e) {
                process.stderr.write(`decrypting a to-device event failed: ${e}\n`);
            }
            const content = event.getContent();
            process.stderr.write(
                `to-device ${event.getType()} from ${event.getSender()} encrypted=${event.isEncrypted()}` +
                    ` call_id=${content.call_id}\n`,
            );
            if (event.getType() === "m.call.answer" && content.call_id === callId) {
                resolve({ event, content });
            }
        });
    });

    await client.startClient({ initialSyncLimit: 1 });
    await new Promise((resolve) => {
        if (client.isInitialSyncComplete()) return resolve();
        client.once(sdk.ClientEvent.Sync, () => resolve());
    });

    // As MatrixCall.initOpponentCrypto does.
    const devices = await client.crypto.deviceList.downloadKeys([focusUser], false);
    const deviceInfo = devices.get(focusUser)?.get(focusDevice);
    if (!deviceInfo) {
        throw new Error(`no device keys for ${focusUser} ${focusDevice}`);
    }

    const content = {
        call_id: callId,
        party_id: client.getDeviceId(),
        version: "1",
        conf_id: env("CONF_ID"),
        device_id: client.getDeviceId(),
        sender_session_id: sessionId,
        dest_session_id: "sfu",
        seq: 0,
        lifetime: 60000,
        invitee: focusUser,
        offer: { type: "offer", sdp: readFileSync(env("OFFER_SDP_FILE"), "utf8") },
        capabilities: { "m.call.transferee": false, "m.call.dtmf": false },
    };
    await client.encryptAndSendToDevices([{ userId: focusUser, deviceInfo }], {
        type: "m.call.invite",
        content,
    });
    process.stderr.write(`sent an encrypted m.call.invite ${callId} to ${focusUser} ${focusDevice}\n`);

    let timer;
    const timeout = new Promise((resolve) => {
        timer = setTimeout(() => resolve(null), timeoutMs);
    });
    const answer = await Promise.race([answered, timeout]);
    clearTimeout(timer);
    client.stopClient();
    if (!answer) {
        result({ ok: false, call_id: callId, error: `no m.call.answer within ${timeoutMs} ms` });
        return 1;
    }
    const { event, content: answerContent } = answer;
    result({
        ok: true,
        call_id: callId,
        encrypted: event.isEncrypted(),
        sender: event.getSender(),
        sender_curve25519: event.getSenderKey(),
        focus_curve25519: deviceInfo.getIdentityKey(),
        answer_type: answerContent.answer?.type,
        answer_sdp_length: answerContent.answer?.sdp?.length ?? 0,
        dest_session_id: answerContent.dest_session_id,
        olm_version: Olm.get_library_version().join("."),
    });
    return 0;
}

main().then(
    (code) => process.exit(code),
    (error) => {
        result({ ok: false, call_id: callId, error: String(error?.stack || error) });
        process.exit(1);
    },
);
