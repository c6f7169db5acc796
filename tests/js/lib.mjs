// Shared helpers for the scripts that drive pgcable with the official @rails/actioncable client:
// inputs, JWT minting, the relay child process, Postgres broadcasts, waiting and failing.
//
// Every script prints what it does to stderr (prefixed), exits 0 on success, and on any failure
// prints `FAIL: <reason>` plus the relay's recent output and exits 1. The relay child is always
// killed on exit.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { createHmac, randomUUID } from "node:crypto";
import net from "node:net";
import { isDeepStrictEqual, inspect } from "node:util";
import pg from "pg";

const T0 = Date.now();
const elapsed = () => ((Date.now() - T0) / 1000).toFixed(2).padStart(6);

let scriptName = "test";
let currentStep = "(starting)";
const cleanups = [];
const failureHooks = [];
const relays = new Set();

export function log(...args) {
  process.stderr.write(`[${scriptName} ${elapsed()}s] ${args.map(fmt).join(" ")}\n`);
}

function fmt(v) {
  return typeof v === "string" ? v : inspect(v, { depth: 6, breakLength: 160 });
}

/** Marks the start of a step; failures and the global timeout name the current step. */
export function step(description) {
  currentStep = description;
  log(`-- ${description}`);
}

/** Registers an async cleanup that runs (best effort, bounded) before the process exits. */
export function onCleanup(fn) {
  cleanups.push(fn);
}

/** Registers an async hook that runs (bounded) on failure only, before the cleanups. */
export function onFailure(fn) {
  failureHooks.push(fn);
}

let finishing = false;

async function runCleanups() {
  for (const fn of cleanups.reverse()) {
    try {
      await Promise.race([fn(), sleep(5000)]);
    } catch (e) {
      log(`cleanup error: ${e?.stack || e}`);
    }
  }
  for (const relay of relays) relay.kill();
}

/** Prints a clear failure and exits 1 (after cleanup). Never returns. */
export async function fail(reason, details) {
  if (finishing) {
    log(`(also failed: ${reason})`);
    return new Promise(() => {});
  }
  finishing = true;
  const lines = [`FAIL: ${reason}`, `  during step: ${currentStep}`];
  if (details !== undefined) lines.push(`  details: ${fmt(details)}`);
  for (const relay of relays) {
    lines.push(`  last output of ${relay.name} (exit: ${relay.exitDescription()}):`);
    for (const l of relay.tail) lines.push(`    ${l}`);
  }
  process.stderr.write(lines.join("\n") + "\n");
  for (const fn of failureHooks) {
    try {
      await Promise.race([fn(), sleep(10_000)]);
    } catch (e) {
      log(`failure hook error: ${e?.stack || e}`);
    }
  }
  await runCleanups();
  process.stdout.write(`FAIL: ${reason}\n`);
  process.exit(1);
}

/** Runs main() with a global timeout, exits 0 on success and 1 on any failure. */
export function run(name, main, { timeoutMs = 60_000 } = {}) {
  scriptName = name;
  const timer = setTimeout(() => {
    fail(`global timeout of ${timeoutMs / 1000} s exceeded`);
  }, timeoutMs);
  timer.unref();
  process.on("exit", () => {
    for (const relay of relays) relay.kill();
  });
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
    process.on(sig, () => fail(`received ${sig}`));
  }
  process.on("unhandledRejection", (e) => fail(`unhandled rejection: ${e?.stack || e}`));
  process.on("uncaughtException", (e) => fail(`uncaught exception: ${e?.stack || e}`));
  main().then(
    async () => {
      if (finishing) return;
      finishing = true;
      await runCleanups();
      log("PASS");
      process.stdout.write(`PASS: ${name}\n`);
      process.exit(0);
    },
    (e) => fail(e?.message || String(e), e?.stack),
  );
}

export function requireEnv(name) {
  const v = process.env[name];
  if (!v) {
    process.stderr.write(`FAIL: environment variable ${name} is required\n`);
    process.stdout.write(`FAIL: environment variable ${name} is required\n`);
    process.exit(1);
  }
  return v;
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls an (optionally async) predicate until it is truthy; fails with `what` after timeoutMs. */
export async function waitFor(what, predicate, { timeoutMs = 10_000, intervalMs = 50, details } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await predicate();
    if (v) return v;
    if (Date.now() > deadline) {
      await fail(`timed out after ${timeoutMs / 1000} s waiting for ${what}`, details ? await details() : undefined);
    }
    await sleep(intervalMs);
  }
}

export function assert(cond, reason, details) {
  if (!cond) return fail(reason, typeof details === "function" ? details() : details);
}

export function assertDeepEqual(actual, expected, what) {
  if (!isDeepStrictEqual(actual, expected)) {
    return fail(`${what}: not equal`, { actual, expected });
  }
}

export { isDeepStrictEqual };

const b64url = (buf) => Buffer.from(buf).toString("base64url");

/** An HS256 JWT shaped like the ones devise-jwt issues (sub, scp, jti, iat, exp). */
export function mintJwt(secret, sub, { ttlSeconds = 3600 } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = b64url(
    JSON.stringify({ sub, scp: "user", aud: null, iat: now, exp: now + ttlSeconds, jti: randomUUID() }),
  );
  const sig = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}

/** A free TCP port on 127.0.0.1 (bound to port 0, then released). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** The pgcable relay as a child process: `PGCABLE_BIN serve` on a fixed 127.0.0.1 port. */
export class Relay {
  static count = 0;

  constructor({ bin, port, env }) {
    this.bin = bin;
    this.port = port;
    this.env = env;
    this.child = null;
    this.tail = [];
    this.name = "relay";
  }

  get addr() {
    return `127.0.0.1:${this.port}`;
  }

  start() {
    const n = ++Relay.count;
    this.name = `relay#${n}`;
    this.tail = [];
    this.exit = null;
    // Start from this process's environment without any relay settings it may carry, so the
    // relay runs with its defaults plus exactly what the script sets.
    const env = Object.fromEntries(
      Object.entries(process.env).filter(
        ([k]) => !k.startsWith("PGCABLE_") && k !== "ALLOWED_ORIGINS" && k !== "DEVISE_JWT_SECRET_KEY",
      ),
    );
    Object.assign(env, { PGCABLE_LISTEN: this.addr, RUST_LOG: process.env.RUST_LOG || "info" }, this.env);
    log(`starting ${this.name}: ${this.bin} serve (PGCABLE_LISTEN=${this.addr})`);
    const child = spawn(this.bin, ["serve"], { env, stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    relays.add(this);
    const onData = (stream) => {
      let buf = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        buf += chunk;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          this.#line(buf.slice(0, i));
          buf = buf.slice(i + 1);
        }
      });
      stream.on("end", () => buf && this.#line(buf));
    };
    onData(child.stdout);
    onData(child.stderr);
    this.exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        this.exit = { code, signal };
        log(`${this.name} exited (${this.exitDescription()})`);
        resolve(this.exit);
      });
      child.on("error", (e) => {
        this.exit = { code: null, signal: null, error: e.message };
        log(`${this.name} could not be started: ${e.message}`);
        resolve(this.exit);
      });
    });
    return this;
  }

  #line(l) {
    const clean = l.replace(/\x1b\[[0-9;]*m/g, "");
    this.tail.push(clean);
    if (this.tail.length > 60) this.tail.shift();
    process.stderr.write(`[${this.name}] ${clean}\n`);
  }

  exitDescription() {
    if (!this.exit) return "still running";
    if (this.exit.error) return `spawn error: ${this.exit.error}`;
    return this.exit.signal ? `signal ${this.exit.signal}` : `code ${this.exit.code}`;
  }

  /** Polls GET /health until it answers 200. */
  async waitHealthy({ timeoutMs = 20_000 } = {}) {
    const deadline = Date.now() + timeoutMs;
    let last = "no answer";
    for (;;) {
      if (this.exit) await fail(`${this.name} exited before becoming healthy (${this.exitDescription()})`);
      try {
        const res = await fetch(`http://${this.addr}/health`, { signal: AbortSignal.timeout(1000) });
        await res.arrayBuffer().catch(() => {});
        if (res.status === 200) {
          log(`${this.name} healthy at http://${this.addr}/health`);
          return;
        }
        last = `HTTP ${res.status}`;
      } catch (e) {
        last = e?.cause?.code || e?.message || String(e);
      }
      if (Date.now() > deadline) {
        await fail(`${this.name} did not answer 200 on GET /health within ${timeoutMs / 1000} s (last: ${last})`);
      }
      await sleep(100);
    }
  }

  /** Sends SIGTERM and waits for the process to exit. */
  async terminate({ timeoutMs = 10_000 } = {}) {
    if (!this.child || this.exit) return this.exit;
    log(`sending SIGTERM to ${this.name} (pid ${this.child.pid})`);
    this.child.kill("SIGTERM");
    const res = await Promise.race([this.exited, sleep(timeoutMs).then(() => null)]);
    if (!res) {
      this.kill();
      await fail(`${this.name} did not exit within ${timeoutMs / 1000} s of SIGTERM`);
    }
    relays.delete(this);
    return res;
  }

  /** SIGKILL, synchronous; safe to call at any time. */
  kill() {
    if (this.child && !this.exit) {
      try {
        this.child.kill("SIGKILL");
      } catch {}
    }
  }
}

/** A Postgres connection that calls pgcable.broadcast(stream, message jsonb). */
export async function connectPg(databaseUrl) {
  const client = new pg.Client({ connectionString: databaseUrl });
  client.on("error", (e) => log(`pg client error: ${e.message}`));
  try {
    await client.connect();
  } catch (e) {
    await fail(`cannot connect to Postgres at DATABASE_URL: ${e.message}`);
  }
  onCleanup(() => client.end());
  return {
    async broadcast(stream, message) {
      log(`SELECT pgcable.broadcast(${JSON.stringify(stream)}, ${JSON.stringify(message)}::jsonb)`);
      try {
        await client.query("SELECT pgcable.broadcast($1::text, $2::jsonb)", [stream, JSON.stringify(message)]);
      } catch (e) {
        await fail(`pgcable.broadcast failed: ${e.message}`);
      }
    },
  };
}

/**
 * A payload that exercises the relay's JSON re-encoding (Rails escaping of <, >, &, U+2028/9,
 * raw non-ASCII, short escapes) and survives jsonb: the client must decode it to exactly this.
 */
export function payload(seq, nonce) {
  return {
    hello: "world",
    seq,
    nonce,
    html: "<script>alert('x') && 1 > 0</script>",
    text: "tab\there, newline\nthere, \"quoted\" back\\slash /slash/ ünïcödé ✓ 😀 \u2028\u2029",
    nested: { list: [1, 2.5, -3, null, true, false, "", {}], empty: [] },
  };
}

/** Debian's Chromium (`apt-get install chromium`), or CHROMIUM_BIN. */
export const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/**
 * Launches headless CHROMIUM through playwright-core (no browser is ever downloaded) with a fresh
 * profile, removed on cleanup. Returns the persistent context; it is closed on cleanup.
 */
export async function launchChromium(viewport) {
  if (!existsSync(CHROMIUM)) {
    await fail(`${CHROMIUM} not found: install chromium (apt-get install chromium)`);
  }
  const { chromium } = await import("playwright-core");
  const userDataDir = mkdtempSync(path.join(os.tmpdir(), "pgcable-chromium-"));
  onCleanup(async () => rmSync(userDataDir, { recursive: true, force: true }));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 30_000,
      ...(viewport ? { viewport } : {}),
    });
  } catch (e) {
    await fail(`could not launch ${CHROMIUM}: ${e.message}`);
  }
  onCleanup(() => context.close());
  return context;
}

/** Reads the inputs every script takes from the environment. */
export function inputs() {
  return {
    bin: requireEnv("PGCABLE_BIN"),
    databaseUrl: requireEnv("DATABASE_URL"),
    secret: requireEnv("SECRET"),
    userId: requireEnv("USER_ID"),
    campaignId: requireEnv("CAMPAIGN_ID"),
    forbiddenCampaignId: requireEnv("FORBIDDEN_CAMPAIGN_ID"),
  };
}

export { randomUUID };
