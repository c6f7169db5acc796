// The Rails bridge with the official @rails/actioncable client (Node, `ws`): what the Rails app
// publishes through ActionCable's Redis adapter reaches the client through pgcable with exactly
// the bytes Rails' cable would send, what pgcable's feed sends itself is not doubled, and a
// Rails remote disconnect arrives as one.
//
// Env: PGCABLE_BIN, DATABASE_URL, SECRET, USER_ID, CAMPAIGN_ID (FORBIDDEN_CAMPAIGN_ID unused);
// optional REDIS_URL (default redis://127.0.0.1:6379/0).
//
// The Rails side is ../ruby/publisher.rb (Debian's ActionCable with the Redis adapter and a
// channel prefix of this run's own), driven one JSON command per line. For each message it
// also answers the frame Rails' cable would write for the subscription's identifier
// (ActiveSupport::JSON decode, then encode of {identifier:, message:}).

import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import WebSocket from "ws";
import { createConsumer, adapters } from "@rails/actioncable";
import {
  run, step, log, fail, assert, assertDeepEqual, waitFor, sleep, inputs, mintJwt, freePort, Relay,
  onCleanup, randomUUID,
} from "./lib.mjs";

if (typeof globalThis.addEventListener !== "function") {
  const target = new EventTarget();
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
}

// Every frame the client receives, exactly as text.
const frames = [];
let sockets = 0;
class RecordingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    sockets++;
    this.addEventListener("message", (e) => {
      const data = String(e.data);
      if (!data.startsWith('{"type":"ping"')) {
        frames.push(data);
        log(`frame <- ${data.length > 200 ? data.slice(0, 200) + "…" : data}`);
      }
    });
  }
}
adapters.WebSocket = RecordingWebSocket;

/** The Rails publisher as a child process. */
async function startRails(redisUrl, prefix) {
  const child = spawn("ruby", ["../ruby/publisher.rb"], {
    env: { ...process.env, REDIS_URL: redisUrl, CHANNEL_PREFIX: prefix, APP_NAME: "shot-server" },
    stdio: ["pipe", "pipe", "inherit"],
  });
  child.on("error", (e) =>
    fail(`cannot run ruby: ${e.message} (apt-get install ruby ruby-actioncable ruby-redis ruby-globalid)`),
  );
  onCleanup(async () => child.kill());
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const read = async () => {
    const next = await Promise.race([lines.next(), sleep(60_000).then(() => null)]);
    if (!next) await fail("publisher.rb did not answer within 60 s");
    if (next.done) await fail("publisher.rb exited (missing Ruby packages? its error is above)");
    return JSON.parse(next.value);
  };
  const ready = await read();
  await assert(ready.ready === true, "publisher.rb did not start", ready);
  log(`Rails side: ActionCable ${ready.actioncable}, redis ${ready.redis}, prefix ${prefix}`);
  return {
    async run(cmd) {
      child.stdin.write(JSON.stringify(cmd) + "\n");
      const answer = await read();
      if (!answer.ok) await fail(`publisher.rb failed ${JSON.stringify(cmd).slice(0, 200)}`, answer);
      return answer;
    },
  };
}

run("bridge", async () => {
  const cfg = inputs();
  const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379/0";
  const prefix = `pgcable_js_${randomUUID().replaceAll("-", "")}`;

  step("start the relay with the bridge; start the Rails publisher");
  const port = await freePort();
  const relay = new Relay({
    bin: cfg.bin,
    port,
    env: {
      DATABASE_URL: cfg.databaseUrl,
      DEVISE_JWT_SECRET_KEY: cfg.secret,
      PGCABLE_REDIS_URL: redisUrl,
      PGCABLE_REDIS_CHANNEL_PREFIX: prefix,
    },
  });
  relay.start();
  await relay.waitHealthy();
  await waitFor("/ready to report the bridge up", async () => {
    const r = await fetch(`http://${relay.addr}/ready`);
    const body = await r.json();
    return body.bridge === true;
  });
  const rails = await startRails(redisUrl, prefix);

  step("subscribe with the official client");
  const consumer = createConsumer(`ws://${relay.addr}/cable?token=Bearer%20${mintJwt(cfg.secret, cfg.userId)}`);
  const received = [];
  const events = { connected: [], disconnected: [] };
  const sub = consumer.subscriptions.create(
    { channel: "CampaignChannel", id: cfg.campaignId },
    {
      connected: (info) => events.connected.push(info ?? null),
      disconnected: (info) => events.disconnected.push(info ?? null),
      received: (data) => received.push(data),
    },
  );
  await waitFor("the subscription's connected callback", () => events.connected.length >= 1);
  const stream = `campaign_${cfg.campaignId}`;

  step("Rails broadcasts: each arrives with Rails' bytes");
  const big = "ü<&>\u2028".repeat(100_000);
  const messages = [
    { type: "advancement_updated", character_id: randomUUID(), advancement: { id: 7, description: "<i>Fast</i> & loose" } },
    { status: "error", error: "AI said: \"no\" <sorry>" },
    "a string \u2028 with <html>",
    12345,
    -0.5,
    null,
    { big },
  ];
  for (const message of messages) {
    const before = frames.length;
    const answer = await rails.run({ op: "broadcast", stream, message, identifier: sub.identifier });
    await waitFor("the bridged frame", () => frames.length > before);
    const got = frames[before];
    await assert(got === answer.frame, "frame differs from what Rails' cable would send", {
      pgcable: got.slice(0, 300),
      rails: answer.frame.slice(0, 300),
    });
  }
  await assertDeepEqual(received, messages, "what the client's received() callback got");

  step("messages the feed sends itself are not forwarded");
  const count = received.length;
  await rails.run({ op: "broadcast", stream, message: { character: { id: randomUUID() } } });
  await rails.run({ op: "broadcast", stream, message: { encounter: { id: randomUUID() } } });
  await rails.run({ op: "broadcast", stream, message: { type: "fight_ended", fight_id: randomUUID(), fight_name: "F" } });
  await rails.run({ op: "broadcast", stream, message: { after: "skips" } });
  await waitFor("the message after the skipped ones", () => received.length > count);
  await sleep(300);
  await assertDeepEqual(received.slice(count), [{ after: "skips" }], "messages after the skipped ones");

  step("Rails remote disconnect: the client is disconnected, then reconnects by itself");
  const answer = await rails.run({ op: "disconnect", user: cfg.userId });
  log(`Rails published to ${answer.channel}`);
  await waitFor("the disconnected callback", () => events.disconnected.length >= 1);
  await assert(
    frames.includes('{"type":"disconnect","reason":"remote","reconnect":true}'),
    "no remote disconnect frame",
    frames.slice(-5),
  );
  await assertDeepEqual(events.disconnected[0], { willAttemptReconnect: true }, "disconnected callback argument");
  await waitFor("the reconnection", () => events.connected.length >= 2, { timeoutMs: 30_000 });
  await assert(sockets >= 2, "no new WebSocket was opened");
  const before = received.length;
  await rails.run({ op: "broadcast", stream, message: { back: true } });
  await waitFor("a bridged message after the reconnect", () => received.length > before);
  await assertDeepEqual(received.at(-1), { back: true }, "message after the reconnect");

  consumer.disconnect();
  await relay.terminate();
});
