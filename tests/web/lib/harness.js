// Test harness: starts the real `parlor` binary on a free loopback port with a temporary
// data directory, drives Debian's Chromium through playwright-core, one browser context
// per user.

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, '../../..');
export const artifacts = resolve(repoRoot, 'artifacts');
export const screenshots = join(artifacts, 'screenshots');

export const PASSWORD = 'correct horse battery';
export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

const RELAXED = [
  'REGISTER_PER_IP',
  'LOGIN_PER_IP',
  'LOGIN_PER_USER',
  'CONNECT_PER_IP',
  'CONNECT_PER_USER',
  'REST_PER_USER',
  'FRAMES_PER_CONNECTION',
];

export function parlorBinary() {
  if (process.env.PARLOR_BIN) return process.env.PARLOR_BIN;
  const target = process.env.CARGO_TARGET_DIR || join(repoRoot, 'target');
  return join(target, 'debug', 'parlor');
}

/**
 * A running `parlor serve`. `restart()` starts it again on the same port and data
 * directory (the client must reconnect and resync).
 */
export class Server {
  /** @param {{ env?: Record<string, string> }} [opts] */
  constructor(opts = {}) {
    this.env = opts.env ?? {};
    this.tmp = mkdtempSync(join(tmpdir(), 'parlor-web-'));
    this.dataDir = join(this.tmp, 'data');
    mkdirSync(this.dataDir);
    /** @type {import('node:child_process').ChildProcess | null} */
    this.proc = null;
    this.url = '';
    this.listen = '127.0.0.1:0';
  }

  async start() {
    /** @type {Record<string, string>} */
    const env = { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' };
    // The server refuses unknown PARLOR_* settings (e.g. PARLOR_BIN, meant for us).
    for (const key of Object.keys(env)) if (key.startsWith('PARLOR_')) delete env[key];
    for (const rule of RELAXED) {
      env[`PARLOR_RATE__${rule}__BURST`] = '100000';
      env[`PARLOR_RATE__${rule}__PER_SECOND`] = '100000';
    }
    // Cheap password hashing: tests register many users.
    env.PARLOR_AUTH__ARGON2_MEMORY_KIB = '1024';
    env.PARLOR_AUTH__ARGON2_ITERATIONS = '1';
    Object.assign(env, this.env);
    const proc = spawn(parlorBinary(), ['serve', '--listen', this.listen, '--data-dir', this.dataDir], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    // Never leave a server behind, even when the test process dies.
    const kill = () => proc.kill('SIGKILL');
    process.once('exit', kill);
    proc.once('exit', () => process.removeListener('exit', kill));
    proc.stderr?.on('data', (d) => {
      if (process.env.WEB_TEST_VERBOSE) process.stderr.write(d);
    });
    this.url = await new Promise((resolveUrl, reject) => {
      let buf = '';
      const timer = setTimeout(() => reject(new Error('parlor did not print its address in 20 s')), 20_000);
      proc.on('exit', (code) => reject(new Error(`parlor exited with ${code} before listening`)));
      proc.stdout?.on('data', (d) => {
        buf += d.toString();
        const m = /listening on (\S+)/.exec(buf);
        if (m) {
          clearTimeout(timer);
          resolveUrl(m[1]);
        }
      });
    });
    this.listen = new URL(this.url).host;
    return this;
  }

  async stop() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(timer);
    this.proc = null;
  }

  async restart() {
    await this.stop();
    for (let i = 0; ; i++) {
      try {
        return await this.start();
      } catch (e) {
        if (i > 20) throw e;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  }

  async dispose() {
    await this.stop();
    rmSync(this.tmp, { recursive: true, force: true });
  }

  /** REST helper for setting up state quickly. @param {string} method @param {string} path @param {unknown} [body] @param {string} [token] */
  async rest(method, path, body, token) {
    /** @type {Record<string, string>} */
    const headers = {};
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (token) headers.authorization = `Bearer ${token}`;
    const res = await fetch(this.url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null, headers: res.headers };
  }

  /** Registers a user over REST and returns a token pair. @param {string} username */
  async register(username) {
    await this.rest('POST', '/v1/auth/register', { username, password: PASSWORD });
    const login = await this.rest('POST', '/v1/auth/login', { username, password: PASSWORD });
    return login.body;
  }
}

/**
 * Which of the planned protocol features this server has, so that their tests run as soon
 * as the server gains them (and are skipped, with the reason, until then).
 * @param {Server} server
 * @param {import('playwright-core').Browser} browser
 */
export async function probeFeatures(server, browser) {
  const a = await server.register(uname('probea'));
  const b = await server.register(uname('probeb'));
  const conv = (await server.rest('POST', '/v1/conversations/direct', { user_id: b.user.id }, a.access_token)).body;
  const missing = (/** @type {{ status: number, body: any }} */ r) => r.status === 404 && /no such endpoint/.test(r.body?.message ?? '');
  const search = !missing(await server.rest('GET', '/v1/search?q=hello', undefined, a.access_token));
  const presence = !missing(await server.rest('GET', `/v1/presence?users=${b.user.id}`, undefined, a.access_token));
  const first = await server.rest('POST', `/v1/conversations/${conv.id}/messages`, { cid: 'p1', text: 'probe' }, a.access_token);
  await server.rest('POST', `/v1/conversations/${conv.id}/messages`, { cid: 'p2', text: 'reply', reply_to: first.body.seq }, a.access_token);
  const history = await server.rest('GET', `/v1/conversations/${conv.id}/messages`, undefined, a.access_token);
  const replies = history.body.messages.some((/** @type {any} */ m) => m.reply_to === first.body.seq);

  // WebSocket frames: probed from a page (Node 20 has no WebSocket client).
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(server.url + '/healthz');
  const ws = await page.evaluate(
    async ({ token, conv, seq }) => {
      const socket = new WebSocket(location.origin.replace(/^http/, 'ws') + '/v1/ws');
      /** @type {any[]} */
      const frames = [];
      socket.onmessage = (e) => frames.push(JSON.parse(e.data));
      await new Promise((r) => (socket.onopen = r));
      socket.send(JSON.stringify({ type: 'hello', token }));
      await new Promise((r) => setTimeout(r, 300));
      socket.send(JSON.stringify({ type: 'typing', conv, typing: true }));
      socket.send(JSON.stringify({ type: 'edit', cid: 'probe-edit', conv, seq, text: 'probe (edited)' }));
      await new Promise((r) => setTimeout(r, 700));
      socket.close();
      return frames;
    },
    { token: a.access_token, conv: conv.id, seq: first.body.seq },
  );
  const unknown = (/** @type {string} */ type) =>
    ws.some((f) => f.type === 'error' && f.code === 'unknown_frame' && String(f.message).includes(`\`${type}\``));
  const typing = !unknown('typing');
  const edits = !unknown('edit');

  // Receipts: can Alice see how far Bob has read?
  await context.close();
  const receipts = !missing(await server.rest('GET', `/v1/conversations/${conv.id}/receipts`, undefined, a.access_token));
  return { search, presence, replies, typing, edits, receipts };
}

export async function launchBrowser() {
  const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
  return chromium.launch({
    executablePath,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-dev-shm-usage',
    ],
  });
}

let counter = 0;
/** A fresh, valid username. @param {string} base */
export function uname(base) {
  counter++;
  return `${base}${Date.now().toString(36).slice(-4)}${counter}`.slice(0, 32);
}

/**
 * A user in their own browser context (own storage = own device).
 * @param {import('playwright-core').Browser} browser
 * @param {Server} server
 * @param {{ viewport?: { width: number, height: number }, colorScheme?: 'light' | 'dark' }} [opts]
 */
export async function newUser(browser, server, opts = {}) {
  const context = await browser.newContext({
    viewport: opts.viewport ?? DESKTOP,
    colorScheme: opts.colorScheme ?? 'light',
    baseURL: server.url,
    locale: 'en-GB',
    timezoneId: 'Europe/Paris',
    deviceScaleFactor: 1,
    hasTouch: (opts.viewport ?? DESKTOP).width < 500,
    isMobile: false,
  });
  const page = await context.newPage();
  const problems = watch(page);
  return { context, page, problems };
}

/**
 * Collects page errors, CSP violations and console errors (besides failed requests,
 * which some tests cause on purpose).
 * @param {import('playwright-core').Page} page
 */
export function watch(page) {
  /** @type {string[]} */
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const text = m.text();
    if (/Failed to load resource|WebSocket connection to .* failed|ERR_CONNECTION_REFUSED|net::ERR/.test(text)) return;
    problems.push(`console: ${text}`);
  });
  return problems;
}

/** @param {import('playwright-core').Page} page @param {string} username */
export async function signUp(page, username) {
  await page.goto('/');
  await page.getByRole('button', { name: 'Create an account' }).click();
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.locator('#me-name', { hasText: username }).waitFor();
}

/** @param {import('playwright-core').Page} page @param {string} username @param {string} [password] */
export async function logIn(page, username, password = PASSWORD) {
  await page.goto('/');
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
}

/** Opens (or creates) the direct conversation with `username` through the UI. @param {import('playwright-core').Page} page @param {string} username */
export async function startDirect(page, username) {
  await page.getByRole('button', { name: 'New conversation' }).first().click();
  const dialog = page.locator('#new-conversation-dialog');
  await dialog.getByLabel('Username').fill(username);
  await dialog.getByRole('button', { name: 'Start chat' }).click();
  await dialog.waitFor({ state: 'detached' });
  await page.locator('#conv-title', { hasText: username }).waitFor();
}

/** Types and sends a message with the keyboard. @param {import('playwright-core').Page} page @param {string} text */
export async function send(page, text) {
  const input = page.locator('#composer-input');
  await input.fill(text);
  await input.press('Enter');
}

/** The conversation list item named `name`. @param {import('playwright-core').Page} page @param {string} name */
export function convItem(page, name) {
  return page.locator('.conv-item', { has: page.locator('.conv-name', { hasText: name }) });
}

/** A message bubble whose text contains `text`. @param {import('playwright-core').Page} page @param {string} text */
export function message(page, text) {
  return page.locator('.msg', { has: page.locator('.text', { hasText: text }) });
}

/**
 * Polls `fn` until it returns a truthy value.
 * @template T
 * @param {() => Promise<T> | T} fn
 * @param {{ timeout?: number, message?: string }} [opts]
 * @returns {Promise<T>}
 */
export async function until(fn, opts = {}) {
  const deadline = Date.now() + (opts.timeout ?? 10_000);
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out: ${opts.message ?? ''} (last: ${String(last)})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** @param {import('playwright-core').Page} page @param {string} name */
export async function shot(page, name) {
  mkdirSync(screenshots, { recursive: true });
  // Let animations and fonts settle.
  await page.waitForTimeout(350);
  await page.screenshot({ path: join(screenshots, `${name}.png`) });
}
