// The official @rails/actioncable client in real headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core; no browser is ever downloaded) against pgcable.
//
// Env: PGCABLE_BIN, DATABASE_URL, SECRET, USER_ID, CAMPAIGN_ID, FORBIDDEN_CAMPAIGN_ID
// (optional: RUST_LOG for the relay, CHROMIUM_BIN to override /usr/bin/chromium).
//
// A node http server on 127.0.0.1 serves a tiny page that imports the client's ESM build
// (app/assets/javascripts/actioncable.esm.js, the package's "module" entry, which is what
// bundlers give the frontend) and the browser's native WebSocket. The page exposes `window.harness`;
// this script drives broadcasts through pg and polls the page with page.evaluate.
// The relay runs with ALLOWED_ORIGINS set to the page's origin (a cross-origin page, as in
// production), so the browser's real Origin header goes through the allow-list.
//
// Flow as in official_client.mjs: connect, subscribe {id, client_id} and {id} at once, broadcast
// received by both, unsubscribe one, forbidden campaign rejected, broadcast received only by the
// remaining one, SIGTERM (server_restart disconnect), restart on the same port, the client
// reconnects by itself and receives a new broadcast.

import { readFileSync } from "node:fs";
import http from "node:http";
import { createRequire } from "node:module";
import path from "node:path";
import {
  run, step, log, fail, assert, assertDeepEqual, waitFor, sleep, inputs, mintJwt, freePort,
  Relay, connectPg, payload, randomUUID, onCleanup, CHROMIUM, launchChromium,
} from "./lib.mjs";

const require = createRequire(import.meta.url);
const pkgDir = path.dirname(require.resolve("@rails/actioncable/package.json"));
const pkg = JSON.parse(readFileSync(path.join(pkgDir, "package.json"), "utf8"));
const ACTIONCABLE_ESM = readFileSync(path.join(pkgDir, pkg.module || "app/assets/javascripts/actioncable.esm.js"), "utf8");

const PAGE_HTML = `<!doctype html>
<html><head><meta charset="utf-8"><title>pgcable browser test</title></head>
<body><p>pgcable browser test</p><script type="module" src="/harness.mjs"></script></body></html>
`;

// Runs in the page. Records frames in both directions through a subclass of the native WebSocket
// (keeps the readyState constants the client enumerates; changes nothing else).
const HARNESS_JS = `
import { createConsumer, adapters, logger } from "/actioncable.esm.js";
logger.enabled = true;

const frames = [];
let connections = 0;
const NativeWebSocket = adapters.WebSocket;
function record(conn, dir, data) {
  let json;
  try { json = JSON.parse(data); } catch {}
  frames.push({ conn, dir, data: String(data), json });
  if (!json || json.type !== "ping") console.log("frame #" + conn + " " + (dir === "in" ? "<-" : "->") + " " + data);
}
class RecordingWebSocket extends NativeWebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    const conn = ++connections;
    this.conn = conn;
    console.log("client opens WebSocket #" + conn);
    this.addEventListener("open", () => console.log("WebSocket #" + conn + " open, protocol " + JSON.stringify(this.protocol)));
    this.addEventListener("message", (e) => record(conn, "in", e.data));
    this.addEventListener("close", (e) => console.log("WebSocket #" + conn + " closed, code " + e.code + " reason " + JSON.stringify(e.reason)));
  }
  send(data) {
    record(this.conn, "out", data);
    return super.send(data);
  }
}
adapters.WebSocket = RecordingWebSocket;

const subs = {};
window.harness = {
  connect(url) {
    this.consumer = createConsumer(url);
  },
  subscribe(key, params) {
    const s = { identifier: null, connected: [], disconnected: [], rejected: 0, received: [] };
    subs[key] = s;
    s.subscription = this.consumer.subscriptions.create(params, {
      connected(info) { console.log("[" + key + "] connected " + JSON.stringify(info ?? null)); s.connected.push(info ?? null); },
      disconnected(info) { console.log("[" + key + "] disconnected " + JSON.stringify(info ?? null)); s.disconnected.push(info ?? null); },
      rejected() { console.log("[" + key + "] rejected"); s.rejected++; },
      received(data) { console.log("[" + key + "] received " + JSON.stringify(data)); s.received.push(data); },
    });
    s.identifier = s.subscription.identifier;
    return s.identifier;
  },
  unsubscribe(key) {
    subs[key].subscription.unsubscribe();
  },
  disconnect() {
    this.consumer.disconnect();
  },
  state() {
    const c = this.consumer && this.consumer.connection;
    const out = {
      connections,
      frameCount: frames.length,
      protocol: c ? c.getProtocol() ?? null : null,
      connectionState: c ? c.getState() : null,
      visibilityState: document.visibilityState,
      userAgent: navigator.userAgent,
      subs: {},
    };
    for (const [k, s] of Object.entries(subs)) {
      out.subs[k] = { identifier: s.identifier, connected: s.connected, disconnected: s.disconnected, rejected: s.rejected, received: s.received };
    }
    return out;
  },
  frames(from = 0) {
    return frames.slice(from).map(({ conn, dir, data }) => ({ conn, dir, data }));
  },
};
window.harnessReady = true;
`;

function startPageServer(port) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    const send = (type, body) => {
      res.writeHead(200, { "Content-Type": type, "Cache-Control": "no-store" });
      res.end(body);
    };
    if (url.pathname === "/") return send("text/html; charset=utf-8", PAGE_HTML);
    if (url.pathname === "/harness.mjs") return send("text/javascript; charset=utf-8", HARNESS_JS);
    if (url.pathname === "/actioncable.esm.js") return send("text/javascript; charset=utf-8", ACTIONCABLE_ESM);
    if (url.pathname === "/favicon.ico") {
      res.writeHead(204);
      return res.end();
    }
    res.writeHead(404, { "Content-Type": "text/plain" });
    res.end("not found");
  });
  return new Promise((resolve, reject) => {
    server.on("error", reject);
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}

run("browser", async () => {
  const cfg = inputs();

  step("serve the test page");
  const pagePort = await freePort();
  const pageServer = await startPageServer(pagePort);
  onCleanup(() => new Promise((r) => pageServer.close(r)));
  const pageOrigin = `http://127.0.0.1:${pagePort}`;

  step("start the relay and wait for /health");
  const port = await freePort();
  const relay = new Relay({
    bin: cfg.bin,
    port,
    env: { DATABASE_URL: cfg.databaseUrl, DEVISE_JWT_SECRET_KEY: cfg.secret, ALLOWED_ORIGINS: pageOrigin },
  });
  relay.start();
  await relay.waitHealthy();

  step(`launch headless ${CHROMIUM} with a fresh profile`);
  const context = await launchChromium();
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => log(`[page ${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => fail(`uncaught error in the page: ${e.stack || e.message}`));
  page.on("crash", () => fail("the page crashed"));

  await page.goto(`${pageOrigin}/`);
  await page.waitForFunction(() => window.harnessReady === true, null, { timeout: 10_000 });
  const state = () => page.evaluate(() => window.harness.state());
  const frames = (from = 0) => page.evaluate((f) => window.harness.frames(f), from);
  const recentFrames = async () => (await frames()).slice(-25).map((f) => `#${f.conn} ${f.dir} ${f.data}`);
  const ua = (await state()).userAgent;
  log(`page ready: ${ua}`);

  step("connect with the official client and subscribe twice at once");
  const jwt = mintJwt(cfg.secret, cfg.userId);
  const url = `ws://${relay.addr}/cable?token=Bearer%20${jwt}`;
  const stream = `campaign_${cfg.campaignId}`;
  const clientId = `browser-${randomUUID()}`;
  await page.evaluate(
    ({ url, campaignId, clientId }) => {
      window.harness.connect(url);
      window.harness.subscribe("A", { channel: "CampaignChannel", id: campaignId, client_id: clientId });
      window.harness.subscribe("B", { channel: "CampaignChannel", id: campaignId });
    },
    { url, campaignId: cfg.campaignId, clientId },
  );
  await waitFor(
    "both subscriptions' connected callbacks",
    async () => {
      const s = await state();
      return s.subs.A.connected.length >= 1 && s.subs.B.connected.length >= 1;
    },
    {
      timeoutMs: 10_000,
      details: async () => ({
        state: await state(),
        hint: `the relay must accept Origin ${pageOrigin} (ALLOWED_ORIGINS) and answer Sec-WebSocket-Protocol: actioncable-v1-json`,
        frames: await recentFrames(),
      }),
    },
  );
  let s = await state();
  await assert(s.protocol === "actioncable-v1-json", `negotiated subprotocol is ${JSON.stringify(s.protocol)}, expected "actioncable-v1-json"`);
  await assert(s.subs.A.rejected === 0 && s.subs.B.rejected === 0, "an allowed subscription was rejected");
  const idA = s.subs.A.identifier;
  const idB = s.subs.B.identifier;

  step("broadcast via pgcable.broadcast; both subscriptions receive it");
  const pg = await connectPg(cfg.databaseUrl);
  const nonce = randomUUID();
  const msg1 = payload(1, nonce);
  await pg.broadcast(stream, msg1);
  await waitFor(
    "the broadcast on both subscriptions",
    async () => {
      const s = await state();
      return s.subs.A.received.length >= 1 && s.subs.B.received.length >= 1;
    },
    { details: async () => ({ state: await state(), frames: await recentFrames() }) },
  );
  await sleep(300);
  s = await state();
  await assertDeepEqual(s.subs.A.received, [msg1], "messages received by A {id, client_id}");
  await assertDeepEqual(s.subs.B.received, [msg1], "messages received by B {id}");

  step("unsubscribe A; subscribe to a forbidden campaign and expect `rejected`");
  const unsubscribedAt = (await state()).frameCount;
  await page.evaluate((forbiddenId) => {
    window.harness.unsubscribe("A");
    window.harness.subscribe("F", { channel: "CampaignChannel", id: forbiddenId });
  }, cfg.forbiddenCampaignId);
  await waitFor(
    "the rejected callback for the forbidden campaign",
    async () => {
      const f = (await state()).subs.F;
      return f.rejected >= 1 || f.connected.length > 0;
    },
    { details: async () => ({ state: await state(), frames: await recentFrames() }) },
  );
  s = await state();
  await assert(s.subs.F.connected.length === 0, "the forbidden subscription was also confirmed");

  step("broadcast again; only B receives it");
  const msg2 = payload(2, nonce);
  await pg.broadcast(stream, msg2);
  await waitFor("the second broadcast on B", async () => (await state()).subs.B.received.length >= 2, {
    details: async () => ({ state: await state(), frames: await recentFrames() }),
  });
  await sleep(500);
  s = await state();
  await assertDeepEqual(s.subs.B.received, [msg1, msg2], "messages received by B {id}");
  await assertDeepEqual(s.subs.A.received, [msg1], "messages received by unsubscribed A");
  const leaked = (await frames(unsubscribedAt)).filter((f) => {
    if (f.dir !== "in") return false;
    const j = JSON.parse(f.data);
    return j.identifier === idA && j.message !== undefined;
  });
  await assert(leaked.length === 0, "the relay still sent data frames for the unsubscribed identifier", leaked);

  step("SIGTERM the relay; the client gets a server_restart disconnect");
  const connBefore = (await state()).connections;
  const termination = relay.terminate();
  await waitFor("B's disconnected callback", async () => (await state()).subs.B.disconnected.length >= 1, {
    details: async () => ({ state: await state(), frames: await recentFrames() }),
  });
  s = await state();
  await assertDeepEqual(s.subs.B.disconnected[0], { willAttemptReconnect: true }, "disconnected callback argument");
  const disconnectFrame = (await frames()).filter((f) => f.dir === "in" && JSON.parse(f.data).type === "disconnect").at(-1);
  await assertDeepEqual(
    disconnectFrame?.data,
    '{"type":"disconnect","reason":"server_restart","reconnect":true}',
    "disconnect frame on SIGTERM",
  );
  await termination;

  step("restart the relay on the same port; the client reconnects by itself");
  relay.start();
  await relay.waitHealthy();
  await waitFor("B's connected callback after the restart", async () => (await state()).subs.B.connected.length >= 2, {
    timeoutMs: 35_000,
    intervalMs: 200,
    details: async () => ({ state: await state(), frames: await recentFrames() }),
  });
  s = await state();
  await assertDeepEqual(s.subs.B.connected[1], { reconnected: true }, "connected callback argument after reconnect");
  await assert(s.connections > connBefore, "no new WebSocket was opened");
  const resubscribed = (await frames())
    .filter((f) => f.conn > connBefore && f.dir === "out")
    .map((f) => JSON.parse(f.data))
    .filter((j) => j.command === "subscribe")
    .map((j) => j.identifier);
  await assert(
    !resubscribed.includes(idA) && !resubscribed.includes(s.subs.F.identifier),
    "the client resubscribed an unsubscribed or rejected identifier",
    resubscribed,
  );
  await assert(resubscribed.includes(idB), "the client did not resubscribe B", resubscribed);

  step("broadcast after the reconnect; B receives it");
  const msg3 = payload(3, nonce);
  await pg.broadcast(stream, msg3);
  await waitFor("the third broadcast on B", async () => (await state()).subs.B.received.length >= 3, {
    details: async () => ({ state: await state(), frames: await recentFrames() }),
  });
  await sleep(300);
  s = await state();
  await assertDeepEqual(s.subs.B.received, [msg1, msg2, msg3], "messages received by B {id}");
  await assertDeepEqual(s.subs.A.received, [msg1], "messages received by unsubscribed A");
  await assertDeepEqual(s.subs.F.received, [], "messages received by the rejected subscription");

  step("disconnect, close the browser and stop the relay");
  await page.evaluate(() => window.harness.disconnect());
  await context.close();
  await relay.terminate();
});
