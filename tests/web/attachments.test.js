// Attachments in the web client, against a real server: files chosen with the picker,
// pasted and dropped upload at once with progress; refused ones say why on their chip;
// the other side sees images inline (thumbnail, full-size viewer) and downloads files
// intact; large files go up resumably and survive a dropped connection.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { deflateSync } from 'node:zlib';
import { Server, convItem, launchBrowser, message, newUser, send, shot, signUp, startDirect, uname, until } from './lib/harness.js';

const server = await new Server().start();
const browser = await launchBrowser();
/** @type {string[][]} */
const allProblems = [];

after(async () => {
  await browser?.close();
  await server?.dispose();
});

// Until the server has uploads, these tests are skipped (with the reason).
const probe = await server.register(uname('probe'));
const hasUploads = (await server.rest('GET', '/v1/uploads', undefined, probe.access_token)).status === 200;
const needsUploads = hasUploads ? {} : { skip: 'server has no uploads yet' };

// ---- test files, made here without dependencies

const CRC_TABLE = new Uint32Array(256).map((_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

/** @param {Buffer} buf */
function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** @param {string} type @param {Buffer} data */
function pngChunk(type, data) {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  data.copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

/** A valid RGB PNG with a colourful pattern. @param {number} width @param {number} height */
function makePng(width, height) {
  const stride = width * 3 + 1;
  const raw = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    raw[y * stride] = 0; // filter: none
    for (let x = 0; x < width; x++) {
      const i = y * stride + 1 + x * 3;
      raw[i] = Math.round((x / width) * 255);
      raw[i + 1] = Math.round((y / height) * 200) + 30;
      raw[i + 2] = (x ^ y) & 0xff;
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type: RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', deflateSync(raw)),
    pngChunk('IEND', Buffer.alloc(0)),
  ]);
}

/** A small valid PDF (one empty page). */
function makePdf() {
  const objects = [
    '<< /Type /Catalog /Pages 2 0 R >>',
    '<< /Type /Pages /Kids [3 0 R] /Count 1 >>',
    '<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>',
  ];
  let body = '%PDF-1.4\n';
  const offsets = [];
  objects.forEach((o, i) => {
    offsets.push(body.length);
    body += `${i + 1} 0 obj\n${o}\nendobj\n`;
  });
  const xref = body.length;
  body += `xref\n0 ${objects.length + 1}\n0000000000 65535 f \n`;
  for (const off of offsets) body += `${String(off).padStart(10, '0')} 00000 n \n`;
  body += `trailer\n<< /Size ${objects.length + 1} /Root 1 0 R >>\nstartxref\n${xref}\n%%EOF\n`;
  return Buffer.from(body, 'latin1');
}

/**
 * A one-second MP4 made by ffmpeg when it is installed (the server then makes a poster
 * frame too); otherwise only the header of one, which the server still takes for a video.
 */
function makeMp4() {
  const dir = mkdtempSync(join(tmpdir(), 'parlor-mp4-'));
  try {
    const out = join(dir, 'clip.mp4');
    const run = spawnSync('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=10', '-t', '1', '-pix_fmt', 'yuv420p', '-movflags', '+faststart', '-y', out]);
    if (run.status === 0) return { bytes: Buffer.from(readFileSync(out)), real: true };
  } catch {
    /* no ffmpeg */
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const header = Buffer.alloc(24);
  header.writeUInt32BE(24, 0);
  header.write('ftypisom', 4, 'latin1');
  header.writeUInt32BE(0x200, 12);
  header.write('isomiso2', 16, 'latin1');
  return { bytes: header, real: false };
}

const sha256 = (/** @type {Buffer} */ b) => createHash('sha256').update(b).digest('hex');

// ---- helpers

/** @param {Parameters<typeof newUser>[2]} [opts] */
async function user(opts) {
  const u = await newUser(browser, server, opts);
  allProblems.push(u.problems);
  return u;
}

/** Alice and Bob in a direct conversation, both looking at it. */
async function pair() {
  const alice = await user();
  const bob = await user();
  const a = uname('alice');
  const b = uname('bob');
  await signUp(alice.page, a);
  await signUp(bob.page, b);
  await startDirect(alice.page, b);
  await send(alice.page, 'I have something to show you');
  await convItem(bob.page, a).click();
  await message(bob.page, 'something to show you').waitFor();
  return {
    alice,
    bob,
    a,
    b,
    close: async () => {
      await alice.context.close();
      await bob.context.close();
    },
  };
}

/** @param {import('playwright-core').Page} page */
const tokenOf = (page) => page.evaluate(() => JSON.parse(localStorage.getItem('parlor.session') ?? '{}').access_token);

/** The newest message of the open conversation, as the server has it. @param {import('playwright-core').Page} page */
async function lastMessage(page) {
  const conv = await page.evaluate(() => location.hash.split('/')[2]);
  const res = await server.rest('GET', `/v1/conversations/${conv}/messages?limit=1`, undefined, await tokenOf(page));
  return res.body.messages[0];
}

/** Slows this page's uploads down (Chromium network emulation), or lifts the limit. @param {import('playwright-core').Page} page @param {number} bytesPerSecond -1 for none */
async function throttleUploads(page, bytesPerSecond) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: bytesPerSecond });
  return cdp;
}

/** The composer chip of a file. @param {import('playwright-core').Page} page @param {string} name */
const chip = (page, name) => page.locator('.upload-chip', { has: page.locator('.upload-name', { hasText: name }) });

/** Clicks a Download button and returns what the browser saved. @param {import('playwright-core').Page} page @param {import('playwright-core').Locator} button */
async function download(page, button) {
  const [saved] = await Promise.all([page.waitForEvent('download'), button.click()]);
  const path = await saved.path();
  return { name: saved.suggestedFilename(), bytes: await readFile(path) };
}

describe('attachments', () => {
  test('an image: progress, then ready; the other side sees it inline and full size', needsUploads, async () => {
    const { alice, bob, a, close } = await pair();
    const png = makePng(960, 640);
    // Slow enough to watch the progress bar move.
    const cdp = await throttleUploads(alice.page, 400 * 1024);
    await alice.page.locator('#attach-input').setInputFiles({ name: 'sunset.png', mimeType: 'image/png', buffer: png });
    const c = chip(alice.page, 'sunset.png');
    await c.locator('.upload-status', { hasText: /\d+% · [\d.]+ MB/ }).waitFor();
    assert.ok(await c.evaluate((el) => el.classList.contains('is-uploading')));
    // Sending waits for uploads: the button is disabled and Enter does nothing.
    assert.equal(await alice.page.locator('.send-btn').isDisabled(), true);
    await alice.page.locator('#composer-input').press('Enter');
    await until(async () => Number(await c.locator('.upload-bar').getAttribute('aria-valuenow')) > 10, { message: 'progress moves' });
    await shot(alice.page, 'desktop-attach-uploading');
    await c.and(alice.page.locator('.is-ready')).waitFor({ timeout: 30_000 });
    await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
    assert.equal(await alice.page.locator('.msg.has-attachments').count(), 0, 'nothing was sent while uploading');
    assert.equal(await alice.page.locator('.send-btn').isDisabled(), false);
    await c.locator('.upload-thumb img').waitFor();
    await shot(alice.page, 'desktop-attach-ready');

    // A message of only a file: the text may be empty.
    await alice.page.locator('#composer-input').press('Enter');
    await until(async () => (await alice.page.locator('.upload-chip').count()) === 0, { message: 'chip taken by the message' });
    await alice.page.locator('.msg.mine.has-attachments:not(.is-pending) .status').waitFor();
    const sent = await lastMessage(alice.page);
    assert.equal(sent.text, '');
    assert.equal(sent.attachments.length, 1);
    const att = sent.attachments[0];
    assert.equal(att.type, 'image/png');
    assert.deepEqual([att.width, att.height], [960, 640]);

    // Bob: the thumbnail inline, its space reserved from the dimensions.
    const tile = bob.page.locator('.msg.theirs .att-image');
    await tile.and(bob.page.locator('.loaded')).waitFor();
    const img = tile.locator('img');
    const shown = await img.evaluate((el) => {
      const i = /** @type {HTMLImageElement} */ (el);
      return { size: i.dataset.size, natural: [i.naturalWidth, i.naturalHeight], attrs: [i.width, i.height], src: i.src };
    });
    const thumb = att.thumbnails.find((/** @type {any} */ t) => t.size === shown.size);
    assert.ok(thumb, `the inline image is a listed thumbnail (${shown.size})`);
    assert.equal(shown.size, 'medium');
    assert.deepEqual(shown.natural, [thumb.width, thumb.height]);
    assert.deepEqual(shown.attrs, [320, 213]);
    assert.match(shown.src, /^blob:/);
    // The conversation list says what came.
    await convItem(bob.page, a).locator('.conv-preview', { hasText: '📎 sunset.png' }).waitFor();
    await shot(bob.page, 'desktop-attach-image');

    // Full size viewer: the original image; Escape closes it and focus goes back.
    await tile.click();
    const viewer = bob.page.locator('#image-viewer');
    await viewer.locator('img[data-full="true"]').waitFor();
    const full = await viewer.locator('img').evaluate((el) => [/** @type {HTMLImageElement} */ (el).naturalWidth, /** @type {HTMLImageElement} */ (el).naturalHeight]);
    assert.deepEqual(full, [960, 640]);
    await shot(bob.page, 'desktop-attach-viewer');
    await bob.page.keyboard.press('Escape');
    await viewer.waitFor({ state: 'detached' });
    assert.equal(await tile.evaluate((el) => el === document.activeElement), true);
    // A click anywhere also closes it; the image comes from the cache, not the network.
    let fetched = 0;
    bob.page.on('request', (r) => {
      if (r.url().includes('/v1/uploads/')) fetched++;
    });
    await tile.click();
    await viewer.locator('img[data-full="true"]').waitFor();
    await viewer.locator('.viewer-stage').click();
    await viewer.waitFor({ state: 'detached' });
    assert.equal(fetched, 0, 'blob URLs are cached per upload and size');

    // After a reload the image is still there (from history).
    await bob.page.reload();
    await bob.page.locator('.msg.theirs .att-image.loaded').waitFor();
    await close();
  });

  test('files pasted and dropped; the other side downloads them intact', needsUploads, async () => {
    const { alice, bob, a, close } = await pair();
    const notes = 'Agenda\n1. Budget 💶\n2. Launch date\n';
    // Paste: a file on the clipboard (a screenshot, a copied file) becomes an attachment.
    await alice.page.locator('#composer-input').evaluate((el, text) => {
      const dt = new DataTransfer();
      dt.items.add(new File([text], 'notes.txt', { type: 'text/plain' }));
      el.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
    }, notes);
    await chip(alice.page, 'notes.txt').and(alice.page.locator('.is-ready')).waitFor();
    await send(alice.page, 'Notes for tomorrow');
    await message(bob.page, 'Notes for tomorrow').locator('.att-file', { hasText: 'notes.txt' }).waitFor();

    // Drag and drop onto the conversation: highlighted while over it.
    const pdf = makePdf();
    await alice.page.evaluate((b64) => {
      const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], 'report.pdf', { type: 'application/pdf' }));
      /** @type {any} */ (window).dropped = dt;
      const zone = /** @type {HTMLElement} */ (document.querySelector('.messages'));
      zone.dispatchEvent(new DragEvent('dragenter', { dataTransfer: dt, bubbles: true, cancelable: true }));
      zone.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
    }, pdf.toString('base64'));
    await alice.page.locator('.pane.drop-active').waitFor();
    await shot(alice.page, 'desktop-attach-drop');
    await alice.page.evaluate(() => {
      const dt = /** @type {any} */ (window).dropped;
      const zone = /** @type {HTMLElement} */ (document.querySelector('.messages'));
      zone.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    });
    assert.equal(await alice.page.locator('.pane.drop-active').count(), 0);
    await chip(alice.page, 'report.pdf').and(alice.page.locator('.is-ready')).waitFor();
    await alice.page.locator('#composer-input').press('Enter');

    // Bob: two file cards with name and size; downloads match what was sent.
    const card = bob.page.locator('.msg.theirs .att-file', { hasText: 'report.pdf' });
    await card.waitFor();
    assert.match((await card.locator('.att-size').textContent()) ?? '', /^\d+ B$/);
    await convItem(bob.page, a).locator('.conv-preview', { hasText: '📎 report.pdf' }).waitFor();
    await shot(bob.page, 'desktop-attach-files');
    const gotPdf = await download(bob.page, card.getByRole('button', { name: 'Download report.pdf' }));
    assert.equal(gotPdf.name, 'report.pdf');
    assert.equal(sha256(gotPdf.bytes), sha256(pdf));
    const notesCard = bob.page.locator('.msg.theirs .att-file', { hasText: 'notes.txt' });
    const gotNotes = await download(bob.page, notesCard.getByRole('button', { name: 'Download notes.txt' }));
    assert.equal(gotNotes.name, 'notes.txt');
    assert.equal(gotNotes.bytes.toString('utf8'), notes);
    // The sender can download their own file too.
    const mine = alice.page.locator('.msg.mine .att-file', { hasText: 'report.pdf' });
    const again = await download(alice.page, mine.getByRole('button', { name: 'Download report.pdf' }));
    assert.equal(sha256(again.bytes), sha256(pdf));
    await close();
  });

  test('a video: poster frame, play (or download where the page may not play it), download', needsUploads, async () => {
    const { alice, bob, close } = await pair();
    const clip = makeMp4();
    await alice.page.locator('#attach-input').setInputFiles({ name: 'clip.mp4', mimeType: 'video/mp4', buffer: clip.bytes });
    await chip(alice.page, 'clip.mp4').and(alice.page.locator('.is-ready')).waitFor();
    await send(alice.page, 'a short clip');
    const tile = message(bob.page, 'a short clip').locator('.att-video');
    await tile.waitFor();
    const att = (await lastMessage(bob.page)).attachments[0];
    assert.equal(att.type, 'video/mp4');
    const poster = (att.thumbnails ?? []).find((/** @type {any} */ t) => t.size === 'poster');
    if (clip.real) assert.ok(poster, 'ffmpeg made a poster frame');
    if (poster) {
      await tile.locator('.att-play.loaded').waitFor();
      const natural = await tile.locator('.att-play img').evaluate((el) => [/** @type {HTMLImageElement} */ (el).naturalWidth, /** @type {HTMLImageElement} */ (el).naturalHeight]);
      assert.deepEqual(natural, [poster.width, poster.height]);
    }
    await shot(bob.page, 'desktop-attach-video');
    const got = await download(bob.page, tile.getByRole('button', { name: 'Download clip.mp4' }));
    assert.equal(sha256(got.bytes), sha256(clip.bytes));

    // Play: inline where the page's security policy lets media come from blob: URLs,
    // otherwise the file is downloaded for the system's player.
    const csp = (await fetch(server.url + '/')).headers.get('content-security-policy') ?? '';
    const mediaBlob = /media-src[^;]*blob:/.test(csp);
    if (mediaBlob && clip.real) {
      await tile.getByRole('button', { name: 'Play video clip.mp4' }).click();
      await until(() => tile.locator('video').evaluate((v) => /** @type {HTMLVideoElement} */ (v).readyState >= 2), { message: 'video plays' });
    } else if (!mediaBlob) {
      const [saved] = await Promise.all([
        bob.page.waitForEvent('download'),
        tile.getByRole('button', { name: 'Play video clip.mp4' }).click(),
      ]);
      assert.equal(saved.suggestedFilename(), 'clip.mp4');
      // The policy's refusal is logged by the browser: expected here.
      const expected = (/** @type {string} */ p) => /media-src|Loading media from/.test(p);
      bob.problems.splice(0, bob.problems.length, ...bob.problems.filter((p) => !expected(p)));
    }
    await close();
  });

  test('a refused upload shows the server’s reason on its chip; it can be removed', needsUploads, async () => {
    const alice = await user();
    const b = uname('bob');
    await server.register(b);
    await signUp(alice.page, uname('alice'));
    await startDirect(alice.page, b);
    // Declared a PNG, but it is not one: 415 type_mismatch.
    await alice.page.locator('#attach-input').setInputFiles({ name: 'holiday.png', mimeType: 'image/png', buffer: Buffer.from('definitely not an image, just text') });
    const bad = chip(alice.page, 'holiday.png');
    await bad.and(alice.page.locator('.is-failed')).waitFor();
    assert.match((await bad.locator('.upload-status').textContent()) ?? '', /^Declared as image\/png but the content is/);
    assert.equal(await bad.locator('[role="alert"]').count(), 1);
    // A failed file does not hold the message back, and is not sent with it.
    assert.equal(await alice.page.locator('.send-btn').isDisabled(), false);
    await shot(alice.page, 'desktop-attach-refused');
    await send(alice.page, 'text still goes');
    await message(alice.page, 'text still goes').locator('.status').waitFor();
    assert.equal(await alice.page.locator('.msg.has-attachments').count(), 0);
    await bad.getByRole('button', { name: 'Remove holiday.png' }).click();
    await bad.waitFor({ state: 'detached' });
    assert.equal(await alice.page.locator('.attach-tray').isHidden(), true);

    // Cancelling an upload in flight removes it.
    const cdp = await throttleUploads(alice.page, 100 * 1024);
    await alice.page.locator('#attach-input').setInputFiles({ name: 'big.png', mimeType: 'image/png', buffer: makePng(600, 600) });
    const big = chip(alice.page, 'big.png');
    await big.locator('.upload-status', { hasText: /%/ }).waitFor();
    await big.getByRole('button', { name: 'Cancel upload of big.png' }).click();
    await big.waitFor({ state: 'detached' });
    assert.equal(await alice.page.locator('.send-btn').isDisabled(), false);
    await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
    await alice.context.close();
  });

  test('too large for the server: 413 with its limit on the chip', needsUploads, async () => {
    const small = await new Server({ env: { PARLOR_UPLOADS__MAX_BYTES: '4096' } }).start();
    try {
      const u = await newUser(browser, small);
      allProblems.push(u.problems);
      const b = uname('bob');
      await small.register(b);
      await signUp(u.page, uname('alice'));
      await startDirect(u.page, b);
      await u.page.locator('#attach-input').setInputFiles({ name: 'huge.bin', mimeType: 'application/octet-stream', buffer: randomBytes(20_000) });
      const c = chip(u.page, 'huge.bin');
      await c.and(u.page.locator('.is-failed')).waitFor();
      assert.match((await c.locator('.upload-status').textContent()) ?? '', /limited to 4\.0 KB/);
      await u.context.close();
    } finally {
      await small.dispose();
    }
  });

  test('a large file goes up resumably and survives a dropped connection', needsUploads, async () => {
    const { alice, bob, close } = await pair();
    const big = randomBytes(9 * 1024 * 1024 + 12_345);
    // `/v1/uploads`, `/v1/uploads?…` and `/v1/uploads/{id}`, not downloads.
    const UPLOAD_CALLS = /\/v1\/uploads(\/\d+)?(\?.*)?$/;
    // The second chunk's connection breaks: the client asks the server where it stopped
    // (HEAD) and goes on from there.
    /** @type {string[]} */
    const calls = [];
    await alice.page.route(UPLOAD_CALLS, (route) => {
      const r = route.request();
      const method = r.method();
      calls.push(`${method} ${r.headers()['upload-offset'] ?? ''}`.trim());
      if (method === 'PATCH' && calls.filter((x) => x.startsWith('PATCH')).length === 2) return route.abort('connectionreset');
      return route.continue();
    });
    await alice.page.locator('#attach-input').setInputFiles({ name: 'archive.bin', mimeType: 'application/octet-stream', buffer: big });
    await chip(alice.page, 'archive.bin').and(alice.page.locator('.is-ready')).waitFor({ timeout: 60_000 });
    await alice.page.unroute(UPLOAD_CALLS);
    const chunk = 4 * 1024 * 1024;
    assert.deepEqual(
      calls.filter((c) => !c.startsWith('GET')),
      ['POST', 'PATCH 0', `PATCH ${chunk}`, 'HEAD', `PATCH ${chunk}`, `PATCH ${2 * chunk}`],
    );
    await send(alice.page, 'the whole archive');
    const card = message(bob.page, 'the whole archive').locator('.att-file', { hasText: 'archive.bin' });
    await card.locator('.att-size', { hasText: '9.0 MB' }).waitFor();
    const got = await download(bob.page, card.getByRole('button', { name: 'Download archive.bin' }));
    assert.equal(got.bytes.length, big.length);
    assert.equal(sha256(got.bytes), sha256(big));
    await close();
  });
});

test('no page errors, console errors or CSP violations', () => {
  assert.deepEqual(allProblems.flat(), []);
});
