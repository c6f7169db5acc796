// The official @rails/actioncable client (Node, `ws` as its WebSocket) against pgcable.
//
// Env: PGCABLE_BIN, DATABASE_URL, SECRET, USER_ID, CAMPAIGN_ID, FORBIDDEN_CAMPAIGN_ID
// (optional: RUST_LOG for the relay).
//
// Flow: start the relay, connect with ?token=Bearer%20<jwt>, subscribe to CampaignChannel with
// {id, client_id} and {id} at once, broadcast through pgcable.broadcast and check that both get
// it; unsubscribe one; subscribe to a campaign the user may not see and check `rejected` (the
// rejection doubles as a barrier: commands are handled in order, so the unsubscribe is done
// before the next broadcast); broadcast again and check that only the remaining subscription
// gets it (also at the frame level); SIGTERM the relay, expect the server_restart disconnect;
// restart it on the same port and check that the client reconnects and resubscribes by itself
// and receives a new broadcast.

import WebSocket from "ws";
import { createConsumer, adapters, logger } from "@rails/actioncable";
import {
  run, step, log, fail, assert, assertDeepEqual, waitFor, sleep, inputs, mintJwt, freePort,
  Relay, connectPg, payload, randomUUID,
} from "./lib.mjs";

// The client's ConnectionMonitor calls the global addEventListener("visibilitychange", …), which
// Node does not have. This is the only shim it needs (document is only touched when that event
// fires, or for non-ws:// URLs, neither of which happens here).
if (typeof globalThis.addEventListener !== "function") {
  const target = new EventTarget();
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
}

// Record every frame in both directions (diagnostics and frame-level assertions). A subclass keeps
// the readyState constants the client enumerates, and changes nothing else.
const frames = []; // { conn, dir: "in" | "out", data, json }
let connections = 0;
class RecordingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    const conn = ++connections;
    this.conn = conn;
    log(`client opens WebSocket #${conn} (subprotocols ${JSON.stringify(protocols)})`);
    this.addEventListener("open", () => log(`WebSocket #${conn} open, protocol "${this.protocol}"`));
    this.addEventListener("message", (e) => record(conn, "in", e.data));
    this.addEventListener("close", (e) => log(`WebSocket #${conn} closed, code ${e.code} reason "${e.reason}"`));
    this.addEventListener("error", (e) => log(`WebSocket #${conn} error: ${e.message}`));
  }
  send(data, ...rest) {
    record(this.conn, "out", data);
    return super.send(data, ...rest);
  }
}
function record(conn, dir, data) {
  let json;
  try {
    json = JSON.parse(data);
  } catch {}
  frames.push({ conn, dir, data: String(data), json });
  if (json?.type !== "ping") log(`frame #${conn} ${dir === "in" ? "<-" : "->"} ${data}`);
}
adapters.WebSocket = RecordingWebSocket;
logger.enabled = true; // its lines go to stdout: shown by the Rust test on failure

const recentFrames = () => frames.slice(-25).map((f) => `#${f.conn} ${f.dir} ${f.data}`);

function track(consumer, name, params) {
  const state = { name, connected: [], disconnected: [], rejected: 0, received: [] };
  state.subscription = consumer.subscriptions.create(params, {
    initialized() {
      log(`[${name}] initialized`);
    },
    connected(info) {
      log(`[${name}] connected ${JSON.stringify(info ?? null)}`);
      state.connected.push(info ?? null);
    },
    disconnected(info) {
      log(`[${name}] disconnected ${JSON.stringify(info ?? null)}`);
      state.disconnected.push(info ?? null);
    },
    rejected() {
      log(`[${name}] rejected`);
      state.rejected++;
    },
    received(data) {
      log(`[${name}] received ${JSON.stringify(data)}`);
      state.received.push(data);
    },
  });
  state.identifier = state.subscription.identifier;
  return state;
}

run("official_client", async () => {
  const cfg = inputs();
  const port = await freePort();
  const relayEnv = { DATABASE_URL: cfg.databaseUrl, DEVISE_JWT_SECRET_KEY: cfg.secret };
  const relay = new Relay({ bin: cfg.bin, port, env: relayEnv });

  step("start the relay and wait for /health");
  relay.start();
  await relay.waitHealthy();

  step("connect with the official client and subscribe twice at once");
  const jwt = mintJwt(cfg.secret, cfg.userId);
  const url = `ws://${relay.addr}/cable?token=Bearer%20${jwt}`;
  const consumer = createConsumer(url);
  const stream = `campaign_${cfg.campaignId}`;
  const withClientId = track(consumer, "A {id, client_id}", {
    channel: "CampaignChannel",
    id: cfg.campaignId,
    client_id: `node-${randomUUID()}`,
  });
  const plain = track(consumer, "B {id}", { channel: "CampaignChannel", id: cfg.campaignId });
  await waitFor(
    "both subscriptions' connected callbacks",
    () => withClientId.connected.length >= 1 && plain.connected.length >= 1,
    {
      timeoutMs: 10_000,
      details: () => ({
        protocol: consumer.connection.getProtocol(),
        state: consumer.connection.getState(),
        hint: "the relay must answer Sec-WebSocket-Protocol: actioncable-v1-json, or the client closes silently",
        frames: recentFrames(),
      }),
    },
  );
  await assert(
    consumer.connection.getProtocol() === "actioncable-v1-json",
    `negotiated subprotocol is "${consumer.connection.getProtocol()}", expected "actioncable-v1-json"`,
  );
  await assertDeepEqual(frames.find((f) => f.dir === "in")?.data, '{"type":"welcome"}', "first frame");
  await assert(
    withClientId.rejected === 0 && plain.rejected === 0,
    "an allowed subscription was rejected",
  );

  step("broadcast via pgcable.broadcast; both subscriptions receive it");
  const pg = await connectPg(cfg.databaseUrl);
  const nonce = randomUUID();
  const msg1 = payload(1, nonce);
  await pg.broadcast(stream, msg1);
  await waitFor(
    "the broadcast on both subscriptions",
    () => withClientId.received.length >= 1 && plain.received.length >= 1,
    { details: () => ({ A: withClientId.received, B: plain.received, frames: recentFrames() }) },
  );
  await sleep(300); // duplicates would arrive right behind
  await assertDeepEqual(withClientId.received, [msg1], "messages received by A {id, client_id}");
  await assertDeepEqual(plain.received, [msg1], "messages received by B {id}");
  // At the frame level: exactly one data frame per identifier, echoing it exactly.
  for (const s of [withClientId, plain]) {
    const data = frames.filter((f) => f.dir === "in" && f.json?.message !== undefined && f.json.identifier === s.identifier);
    await assert(data.length === 1, `expected exactly 1 data frame for ${s.identifier}, got ${data.length}`, recentFrames);
    await assertDeepEqual(Object.keys(data[0].json), ["identifier", "message"], "data frame key order");
  }

  step("unsubscribe A; subscribe to a forbidden campaign and expect `rejected`");
  withClientId.subscription.unsubscribe();
  const unsubscribedAt = frames.length;
  const forbidden = track(consumer, "F forbidden", { channel: "CampaignChannel", id: cfg.forbiddenCampaignId });
  await waitFor("the rejected callback for the forbidden campaign", () => forbidden.rejected >= 1 || forbidden.connected.length > 0, {
    details: () => ({ frames: recentFrames() }),
  });
  await assert(forbidden.connected.length === 0, "the forbidden subscription was also confirmed");
  await assert(
    frames.some((f) => f.dir === "in" && f.data === JSON.stringify({ identifier: forbidden.identifier, type: "reject_subscription" })),
    "no byte-exact reject_subscription frame seen",
    recentFrames,
  );

  step("broadcast again; only B receives it");
  const msg2 = payload(2, nonce);
  await pg.broadcast(stream, msg2);
  await waitFor("the second broadcast on B", () => plain.received.length >= 2, {
    details: () => ({ B: plain.received, frames: recentFrames() }),
  });
  await sleep(500);
  await assertDeepEqual(plain.received, [msg1, msg2], "messages received by B {id}");
  await assertDeepEqual(withClientId.received, [msg1], "messages received by unsubscribed A");
  const leaked = frames
    .slice(unsubscribedAt)
    .filter((f) => f.dir === "in" && f.json?.identifier === withClientId.identifier && f.json.message !== undefined);
  await assert(leaked.length === 0, "the relay still sent data frames for the unsubscribed identifier", leaked);

  step("SIGTERM the relay; the client gets a server_restart disconnect");
  const connBefore = connections;
  const termination = relay.terminate();
  await waitFor("B's disconnected callback", () => plain.disconnected.length >= 1, {
    details: () => ({ frames: recentFrames() }),
  });
  await assertDeepEqual(plain.disconnected[0], { willAttemptReconnect: true }, "disconnected callback argument");
  const disconnectFrame = frames.filter((f) => f.dir === "in" && f.json?.type === "disconnect").at(-1);
  await assertDeepEqual(
    disconnectFrame?.data,
    '{"type":"disconnect","reason":"server_restart","reconnect":true}',
    "disconnect frame on SIGTERM",
  );
  await termination;

  step("restart the relay on the same port; the client reconnects by itself");
  relay.start();
  await relay.waitHealthy();
  await waitFor("B's connected callback after the restart", () => plain.connected.length >= 2, {
    timeoutMs: 35_000,
    intervalMs: 100,
    details: () => ({ state: consumer.connection.getState(), connections, frames: recentFrames() }),
  });
  await assertDeepEqual(plain.connected[1], { reconnected: true }, "connected callback argument after reconnect");
  await assert(connections > connBefore, "no new WebSocket was opened");
  const resubscribed = frames
    .filter((f) => f.conn > connBefore && f.dir === "out" && f.json?.command === "subscribe")
    .map((f) => f.json.identifier);
  await assert(
    !resubscribed.includes(withClientId.identifier) && !resubscribed.includes(forbidden.identifier),
    "the client resubscribed an unsubscribed or rejected identifier",
    resubscribed,
  );
  await assert(resubscribed.includes(plain.identifier), "the client did not resubscribe B", resubscribed);

  step("broadcast after the reconnect; B receives it");
  const msg3 = payload(3, nonce);
  await pg.broadcast(stream, msg3);
  await waitFor("the third broadcast on B", () => plain.received.length >= 3, {
    details: () => ({ B: plain.received, frames: recentFrames() }),
  });
  await sleep(300);
  await assertDeepEqual(plain.received, [msg1, msg2, msg3], "messages received by B {id}");
  await assertDeepEqual(withClientId.received, [msg1], "messages received by unsubscribed A");
  await assertDeepEqual(forbidden.received, [], "messages received by the rejected subscription");

  step("disconnect and stop the relay");
  consumer.disconnect();
  await relay.terminate();
});
