// Live combat with the official @rails/actioncable client (Node, `ws`): a `psql` UPDATE of a shot
// reaches the client as one `{"encounter": …}` showing the moved combatant.
//
// Env: PGCABLE_BIN, DATABASE_URL, SECRET, USER_ID, CAMPAIGN_ID (FORBIDDEN_CAMPAIGN_ID unused).
//
// Flow: insert a started fight with two characters on shots 12 and 9 (with `pg`), start the
// relay, subscribe to the campaign with the official client, run `psql -c "UPDATE shots …"` as
// a person would, and check that exactly one message arrives: the encounter, with the shots in
// order and the moved character on its new shot.

import { execFile } from "node:child_process";
import { promisify } from "node:util";
import WebSocket from "ws";
import pg from "pg";
import { createConsumer, adapters } from "@rails/actioncable";
import {
  run, step, log, assert, assertDeepEqual, waitFor, sleep, inputs, mintJwt, freePort, Relay,
  onCleanup, fail, randomUUID,
} from "./lib.mjs";

if (typeof globalThis.addEventListener !== "function") {
  const target = new EventTarget();
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
}
adapters.WebSocket = WebSocket;

run("encounter", async () => {
  const cfg = inputs();
  const fight = randomUUID();
  const [hero, villain] = [randomUUID(), randomUUID()];
  const [heroShot, villainShot] = [randomUUID(), randomUUID()];

  step("insert a started fight with two combatants");
  const db = new pg.Client({ connectionString: cfg.databaseUrl });
  await db.connect();
  onCleanup(() => db.end());
  await db.query(
    `INSERT INTO fights (id, campaign_id, name, started_at, created_at, updated_at)
       VALUES ($1, $2, 'Docks', now(), now(), now())`,
    [fight, cfg.campaignId],
  );
  await db.query(
    `INSERT INTO characters (id, campaign_id, name, action_values, created_at, updated_at) VALUES
       ($1, $3, 'Hero', '{"Type":"PC","Speed":7}', now(), now()),
       ($2, $3, 'Villain', '{"Type":"Boss","Speed":6}', now(), now())`,
    [hero, villain, cfg.campaignId],
  );
  await db.query(
    `INSERT INTO shots (id, fight_id, character_id, shot, created_at, updated_at) VALUES
       ($1, $3, $4, 12, now(), now()), ($2, $3, $5, 9, now(), now())`,
    [heroShot, villainShot, fight, hero, villain],
  );

  step("start the relay; subscribe with the official client");
  const port = await freePort();
  const relay = new Relay({
    bin: cfg.bin,
    port,
    env: { DATABASE_URL: cfg.databaseUrl, DEVISE_JWT_SECRET_KEY: cfg.secret },
  });
  relay.start();
  await relay.waitHealthy();
  const consumer = createConsumer(`ws://${relay.addr}/cable?token=Bearer%20${mintJwt(cfg.secret, cfg.userId)}`);
  onCleanup(() => consumer.disconnect());
  const received = [];
  let connected = false;
  consumer.subscriptions.create({ channel: "CampaignChannel", id: cfg.campaignId }, {
    connected() {
      connected = true;
    },
    received(data) {
      log(`received ${JSON.stringify(data)}`);
      received.push(data);
    },
  });
  await waitFor("the subscription's connected callback", () => connected);

  step("psql: move the villain to shot 14");
  const sql = `UPDATE shots SET shot = 14 WHERE id = '${villainShot}'`;
  log(`psql ${cfg.databaseUrl} -c "${sql}"`);
  try {
    await promisify(execFile)("psql", [cfg.databaseUrl, "-X", "-q", "-c", sql]);
  } catch (e) {
    await fail(`psql failed: ${e.message}`);
  }
  await waitFor("an encounter", () => received.length >= 1, { details: () => ({ received }) });
  await sleep(500); // a duplicate would arrive right behind
  await assertDeepEqual(received.map((m) => Object.keys(m)), [["encounter"]], "messages received");
  const e = received[0].encounter;
  await assertDeepEqual(e.id, fight, "encounter id");
  await assertDeepEqual(
    Object.keys(e),
    ["id", "entity_class", "name", "sequence", "description", "shots", "started_at", "ended_at",
     "image_url", "character_ids", "vehicle_ids", "action_id"],
    "encounter keys in order",
  );
  await assertDeepEqual(
    e.shots.map((s) => [s.shot, s.characters.map((c) => c.name)]),
    [[14, ["Villain"]], [12, ["Hero"]]],
    "shots in order with the moved combatant",
  );
  await assert(e.shots[0].characters[0].current_shot === 14, "current_shot of the moved combatant");

  step("stop");
  consumer.disconnect();
  await relay.terminate();
});
