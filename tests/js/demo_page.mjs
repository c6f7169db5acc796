// The live page of `pgcable dev` (/demo) in real headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core), as a person uses it: open the printed URL, run the printed `psql`
// commands one by one, and look at the page after each.
//
// Env (tests/dev.rs starts `pgcable dev` and passes what it printed):
//   PAGE_URL      the page URL pgcable dev printed (with the demo token)
//   RENAME, MOVE, END   the three printed psql commands, run as printed with `sh -c`
//   DATABASE_URL  the demo database (for one more UPDATE: a name with HTML in it)
//   ARTIFACTS     directory for the screenshot taken on failure
//   SCREENSHOT    optional: also save a screenshot here after the shot moved (and one named
//                 <SCREENSHOT without .png>-end.png at the end)
//
// Flow: the cards and the shot counter show the seeded campaign before any message; the "try this"
// box lists the printed commands; RENAME changes Johnny's card (highlighted); MOVE moves Johnny
// below Big Bruiser on the counter; END marks the fight ended; a name with HTML shows as text.

import { execFile } from "node:child_process";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import {
  run, step, log, fail, assert, assertDeepEqual, waitFor, requireEnv, onCleanup, onFailure,
  CHROMIUM, launchChromium,
} from "./lib.mjs";

const JOHNNY = "00000000-0000-4000-8000-000000000101";
const BRUISER = "00000000-0000-4000-8000-000000000102";
const FIGHT = "00000000-0000-4000-8000-000000000301";

const sh = promisify(execFile);

async function runPrinted(command) {
  log(`$ ${command}`);
  try {
    const { stdout, stderr } = await sh("sh", ["-c", command], { timeout: 15_000 });
    log(`psql said: ${(stdout + stderr).trim()}`);
  } catch (e) {
    await fail(`the printed command failed: ${command}`, e.stderr || e.message);
  }
}

run("demo-page", async () => {
  const pageUrl = requireEnv("PAGE_URL");
  const commands = { rename: requireEnv("RENAME"), move: requireEnv("MOVE"), end: requireEnv("END") };
  const databaseUrl = requireEnv("DATABASE_URL");
  const artifacts = requireEnv("ARTIFACTS");

  step(`launch headless ${CHROMIUM} with a fresh profile`);
  const context = await launchChromium({ width: 1280, height: 900 });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => log(`[page ${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => fail(`uncaught error in the page: ${e.stack || e.message}`));
  page.on("crash", () => fail("the page crashed"));
  onFailure(async () => {
    mkdirSync(artifacts, { recursive: true });
    const file = path.join(artifacts, `demo-page-${new Date().toISOString().replace(/[:.]/g, "-")}.png`);
    await page.screenshot({ path: file, fullPage: true });
    log(`screenshot of the page: ${file}`);
    process.stdout.write(`screenshot: ${file}\n`);
  });

  // What a person sees, read from the page.
  const look = () =>
    page.evaluate(
      ({ fight }) => {
        const texts = (nodes) => Array.from(nodes, (n) => n.textContent);
        const box = document.querySelector(`#fights .fight[data-id="${fight}"]`);
        return {
          loaded: document.body.dataset.state === "loaded",
          characters: texts(document.querySelectorAll('#characters .card [data-field="name"]')),
          vehicles: texts(document.querySelectorAll('#vehicles .card [data-field="name"]')),
          commands: texts(document.querySelectorAll("#commands code")),
          fight: box && {
            ended: box.classList.contains("ended"),
            badge: box.querySelector(".badge")?.textContent,
            counter: Array.from(box.querySelectorAll(".shot"), (row) => ({
              shot: row.querySelector(".shot-value").textContent,
              names: texts(row.querySelectorAll(".combatant .name")),
            })),
          },
        };
      },
      { fight: FIGHT },
    );
  const card = (id) =>
    page.evaluate((id) => {
      const c = document.querySelector(`#characters .card[data-id="${id}"]`);
      const name = c && c.querySelector('[data-field="name"]');
      return c && {
        name: name.textContent,
        nameChildren: name.children.length,
        highlighted: name.classList.contains("changed"),
        note: c.querySelector(".note").textContent,
        elements: Array.from(c.querySelectorAll("*"), (e) => e.tagName.toLowerCase()),
      };
    }, id);

  step("open the printed URL; the seeded campaign shows before any change");
  await page.goto(pageUrl);
  await waitFor("the page to load /demo/state", async () => (await look()).loaded, {
    timeoutMs: 15_000,
    details: look,
  });
  let seen = await look();
  await assertDeepEqual(seen.characters, ["Johnny Tso", "Big Bruiser", "Ninja"], "character cards");
  await assertDeepEqual(seen.vehicles, ["Yellow Taxi", "Black Sedan"], "vehicle cards");
  await assertDeepEqual(seen.commands, [commands.rename, commands.move, commands.end], "the try-this box");
  await assert(seen.fight, "no shot counter for the active fight", seen);
  await assertDeepEqual(
    seen.fight.counter,
    [
      { shot: "14", names: ["Johnny Tso", "Yellow Taxi"] },
      { shot: "12", names: ["Big Bruiser"] },
      { shot: "8", names: ["Ninja"] },
    ],
    "the shot counter",
  );

  step("run the printed rename command; Johnny's card shows the new name, highlighted");
  await runPrinted(commands.rename);
  await waitFor("the new name on Johnny's card", async () => (await card(JOHNNY))?.name === "Johnny Tso (edited)", {
    details: async () => ({ card: await card(JOHNNY), page: await look() }),
  });
  const johnny = await card(JOHNNY);
  await assert(johnny.highlighted, "the changed name is not highlighted", johnny);
  await assert(/\bname\b/.test(johnny.note), "the card does not say what changed", johnny);

  step("run the printed move command; Johnny moves from 14 to 11, below Big Bruiser");
  await runPrinted(commands.move);
  const moved = [
    { shot: "14", names: ["Yellow Taxi"] },
    { shot: "12", names: ["Big Bruiser"] },
    { shot: "11", names: ["Johnny Tso (edited)"] },
    { shot: "8", names: ["Ninja"] },
  ];
  await waitFor("the new order on the shot counter", async () => {
    const c = (await look()).fight?.counter;
    return JSON.stringify(c) === JSON.stringify(moved);
  }, { details: look });
  if (process.env.SCREENSHOT) {
    await page.waitForTimeout(300);
    await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    log(`screenshot: ${process.env.SCREENSHOT}`);
  }

  step("run the printed end command; the fight shows as ended");
  await runPrinted(commands.end);
  await waitFor("the fight marked ended", async () => (await look()).fight?.ended, { details: look });
  seen = await look();
  await assertDeepEqual(seen.fight.badge, "ended", "the fight's badge");
  await assertDeepEqual(seen.fight.counter, moved, "the last counter of the ended fight");

  step("a name with HTML in it shows as text");
  const db = new pg.Client({ connectionString: databaseUrl });
  await db.connect();
  onCleanup(() => db.end());
  const html = `<b>Big</b> & <img src=x onerror="document.title='owned'">`;
  await db.query("UPDATE characters SET name = $1 WHERE id = $2", [html, BRUISER]);
  await waitFor("the HTML name as text on the card", async () => (await card(BRUISER))?.name === html, {
    details: async () => card(BRUISER),
  });
  const bruiser = await card(BRUISER);
  await assert(bruiser.nameChildren === 0, "the name was rendered as HTML", bruiser);
  await assert(!bruiser.elements.includes("b") && !bruiser.elements.includes("img"), "HTML elements from the name", bruiser);
  await assert((await page.title()) === "pgcable live demo", "the page title changed");
  if (process.env.SCREENSHOT) {
    const end = process.env.SCREENSHOT.replace(/\.png$/, "") + "-end.png";
    await page.screenshot({ path: end, fullPage: true });
    log(`screenshot: ${end}`);
  }
});
