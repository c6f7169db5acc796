// Live authorization with the official @rails/actioncable client (Node, `ws`): for each change
// that takes access away, the client gets the disconnect, reconnects by itself, the forbidden
// subscription is rejected and the other one confirmed again, and nothing committed at or after
// the revocation reaches the forbidden one. And the grant side: a subscription rejected a moment
// ago is confirmed right after a membership is added.
//
// Env: PGCABLE_BIN, DATABASE_URL, SECRET (USER_ID etc. unused: each case makes its own users).
// The cases run at once, each with its own users, campaigns and consumer, so the client's
// reconnect delay (several seconds) is paid once.

import WebSocket from "ws";
import pg from "pg";
import { createConsumer, adapters } from "@rails/actioncable";
import {
  run, step, log, assert, assertDeepEqual, waitFor, sleep, requireEnv, mintJwt, freePort, Relay,
  onCleanup, randomUUID,
} from "./lib.mjs";

if (typeof globalThis.addEventListener !== "function") {
  const target = new EventTarget();
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
}
adapters.WebSocket = WebSocket;

// Each case: who watches (`player` or `owner`), which channel is taken away (`campaign` or
// `fight`), and the SQL that takes it (run in one transaction that then broadcasts to the
// forbidden stream: that broadcast must not arrive).
const CASES = [
  { name: "membership deleted", watcher: "player", channel: "campaign",
    sql: (x) => `DELETE FROM campaign_memberships WHERE user_id = '${x.player}'` },
  { name: "membership moved to another user", watcher: "player", channel: "campaign",
    sql: (x) => `UPDATE campaign_memberships SET user_id = '${x.owner}' WHERE user_id = '${x.player}'` },
  { name: "ownership transferred", watcher: "owner", channel: "campaign",
    sql: (x) => `UPDATE campaigns SET user_id = '${x.player}' WHERE id = '${x.campaign}'` },
  { name: "campaign deleted", watcher: "owner", channel: "campaign",
    sql: (x) => `DELETE FROM fights WHERE id = '${x.fight}'; DELETE FROM campaign_memberships WHERE campaign_id = '${x.campaign}'; DELETE FROM campaigns WHERE id = '${x.campaign}'` },
  { name: "admin no longer admin", watcher: "admin", channel: "campaign",
    sql: (x) => `UPDATE users SET admin = false WHERE id = '${x.admin}'` },
  { name: "fight moved to another campaign", watcher: "player", channel: "fight",
    sql: (x) => `UPDATE fights SET campaign_id = '${x.elsewhere}' WHERE id = '${x.fight}'` },
];

async function setup(db) {
  const x = {
    owner: randomUUID(), player: randomUUID(), admin: randomUUID(),
    campaign: randomUUID(), own: randomUUID(), adminOwn: randomUUID(), ownerOwn: randomUUID(),
    elsewhere: randomUUID(), fight: randomUUID(),
  };
  await db.query(
    `INSERT INTO users (id, first_name, last_name, email, jti, admin, created_at, updated_at)
     SELECT id, 'T', 'U', id::text || '@example.com', id::text, id = $3, now(), now()
       FROM unnest(ARRAY[$1, $2, $3]::uuid[]) id`,
    [x.owner, x.player, x.admin],
  );
  await db.query(
    `INSERT INTO campaigns (id, user_id, name, created_at, updated_at) VALUES
       ($1, $4, 'C', now(), now()), ($2, $5, 'Own', now(), now()), ($3, $4, 'Elsewhere', now(), now()),
       ($6, $7, 'Admin own', now(), now()), ($8, $4, 'Owner own', now(), now())`,
    [x.campaign, x.own, x.elsewhere, x.owner, x.player, x.adminOwn, x.admin, x.ownerOwn],
  );
  await db.query(`INSERT INTO campaign_memberships (user_id, campaign_id) VALUES ($1, $2)`, [x.player, x.campaign]);
  await db.query(
    `INSERT INTO fights (id, campaign_id, name, created_at, updated_at) VALUES ($1, $2, 'F', now(), now())`,
    [x.fight, x.campaign],
  );
  return x;
}

function track(consumer, params) {
  const s = { connected: 0, rejected: 0, disconnected: 0, received: [] };
  s.subscription = consumer.subscriptions.create(params, {
    connected() { s.connected++; },
    rejected() { s.rejected++; },
    disconnected() { s.disconnected++; },
    received(data) { s.received.push(data); },
  });
  return s;
}

run("live_auth", async () => {
  const cfg = { bin: requireEnv("PGCABLE_BIN"), databaseUrl: requireEnv("DATABASE_URL"), secret: requireEnv("SECRET") };
  const db = new pg.Client({ connectionString: cfg.databaseUrl });
  await db.connect();
  onCleanup(() => db.end());

  step("start the relay");
  const relay = new Relay({
    bin: cfg.bin,
    port: await freePort(),
    env: { DATABASE_URL: cfg.databaseUrl, DEVISE_JWT_SECRET_KEY: cfg.secret },
  });
  relay.start();
  await relay.waitHealthy();
  const url = (user) => `ws://${relay.addr}/cable?token=Bearer%20${mintJwt(cfg.secret, user)}`;

  step("each case: a consumer holding the channel to be taken away and one that stays");
  const runs = [];
  for (const c of CASES) {
    const x = await setup(db);
    const watcher = x[c.watcher];
    const consumer = createConsumer(url(watcher));
    onCleanup(() => consumer.disconnect());
    const goneParams = c.channel === "fight"
      ? { channel: "FightChannel", fight_id: x.fight }
      : { channel: "CampaignChannel", id: x.campaign };
    const stays = { owner: x.ownerOwn, player: x.own, admin: x.adminOwn }[c.watcher];
    const gone = track(consumer, goneParams);
    const kept = track(consumer, { channel: "CampaignChannel", id: stays });
    runs.push({ c, x, consumer, gone, kept, stream: c.channel === "fight" ? `fight_${x.fight}` : `campaign_${x.campaign}` });
  }
  await waitFor("every subscription confirmed", () => runs.every((r) => r.gone.connected === 1 && r.kept.connected === 1));

  step("commit each revocation, with a broadcast to the forbidden stream after it");
  for (const r of runs) {
    r.before = r.gone.received.length; // FightChannel's presence list arrives on subscribe
    const sql = `BEGIN; ${r.c.sql(r.x)}; SELECT pgcable.broadcast('${r.stream}', '{"after":"revocation"}'); COMMIT;`;
    log(`${r.c.name}: ${sql}`);
    await db.query(sql);
  }
  await waitFor("every consumer disconnected", () => runs.every((r) => r.kept.disconnected >= 1), {
    timeoutMs: 5_000,
    details: () => runs.map((r) => ({ name: r.c.name, kept: r.kept.disconnected, gone: r.gone.disconnected })),
  });

  step("each client reconnects by itself: the forbidden subscription is rejected, the other confirmed");
  await waitFor("reconnects", () => runs.every((r) => r.kept.connected >= 2 && r.gone.rejected >= 1), {
    timeoutMs: 30_000,
    intervalMs: 100,
    details: () => runs.map((r) => ({ name: r.c.name, kept: r.kept.connected, goneRejected: r.gone.rejected, goneConnected: r.gone.connected })),
  });
  for (const r of runs) {
    await assert(r.gone.connected === 1, `${r.c.name}: the forbidden subscription was confirmed again`);
    await assertDeepEqual(r.gone.received.slice(r.before), [], `${r.c.name}: messages the forbidden subscription received after the revocation`);
  }

  step("grant: a subscription rejected a moment ago is confirmed after a membership is added");
  const g = await setup(db);
  const stranger = randomUUID();
  await db.query(
    `INSERT INTO users (id, email, jti, created_at, updated_at) VALUES ($1, $2, $3, now(), now())`,
    [stranger, `${stranger}@example.com`, stranger],
  );
  const consumer = createConsumer(url(stranger));
  onCleanup(() => consumer.disconnect());
  const first = track(consumer, { channel: "CampaignChannel", id: g.campaign });
  await waitFor("the rejection", () => first.rejected === 1);
  await db.query(`INSERT INTO campaign_memberships (user_id, campaign_id) VALUES ($1, $2)`, [stranger, g.campaign]);
  const second = track(consumer, { channel: "CampaignChannel", id: g.campaign });
  await waitFor("the confirmation after the grant", () => second.connected === 1 || second.rejected === 1);
  await assert(second.connected === 1, "the subscription was rejected after the membership was added");
  await sleep(100);

  step("stop");
  for (const r of runs) r.consumer.disconnect();
  consumer.disconnect();
  await relay.terminate();
});
