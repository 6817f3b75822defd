// The connection drops and comes back: the client says so discreetly, keeps unsent
// messages pending, reconnects with backoff, catches up through offline sync and sends
// each pending message exactly once. Access tokens expire and are refreshed by one tab
// for all tabs. Each test here restarts or reconfigures its own server.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Server, convItem, launchBrowser, message, newUser, send, shot, signUp, startDirect, uname, until } from './lib/harness.js';

const browser = await launchBrowser();
test.after(async () => {
  await browser.close();
});

test('connection drop: status shown, pending messages sent once after reconnect, missed ones synced', async () => {
  const server = await new Server().start();
  try {
    const alice = await newUser(browser, server);
    const bob = await newUser(browser, server);
    const a = uname('alice');
    const b = uname('bob');
    await signUp(alice.page, a);
    await signUp(bob.page, b);
    await startDirect(alice.page, b);
    await send(alice.page, 'before the outage');
    await convItem(bob.page, a).click();
    await message(bob.page, 'before the outage').waitFor();

    await server.stop();
    const status = alice.page.locator('.conn-status');
    await status.filter({ hasText: /Connection lost|Reconnecting/ }).waitFor();
    await send(alice.page, 'written while offline');
    await alice.page.locator('.msg.is-pending', { hasText: 'written while offline' }).waitFor();
    await shot(alice.page, 'desktop-offline');

    await server.restart();
    // Bob's page also reconnects; he sends before Alice is back.
    await bob.page.locator('.conn-status', { hasText: 'Back online' }).waitFor({ timeout: 40_000 });
    await send(bob.page, 'are you back?');
    await alice.page.locator('.msg.mine:not(.is-pending):not(.is-failed) .status').nth(1).waitFor({ timeout: 40_000 });
    await message(alice.page, 'are you back?').waitFor();
    await message(bob.page, 'written while offline').waitFor();
    assert.equal(await message(alice.page, 'written while offline').count(), 1);
    assert.equal(await message(bob.page, 'written while offline').count(), 1);
    await until(async () => (await status.isHidden()), { timeout: 10_000, message: 'status hides' });
    // After a reload, still once.
    await alice.page.reload();
    await message(alice.page, 'written while offline').waitFor();
    assert.equal(await message(alice.page, 'written while offline').count(), 1);
    assert.deepEqual([...alice.problems, ...bob.problems], []);
    await alice.context.close();
    await bob.context.close();
  } finally {
    await server.dispose();
  }
});

test('short-lived access tokens are refreshed once for all tabs; the session lives on', async () => {
  const server = await new Server({ env: { PARLOR_AUTH__ACCESS_TTL_SECS: '3' } }).start();
  try {
    const alice = await newUser(browser, server);
    const bob = await newUser(browser, server);
    const a = uname('alice');
    const b = uname('bob');
    await signUp(alice.page, a);
    await signUp(bob.page, b);
    const tab2 = await alice.context.newPage();
    await tab2.goto('/');
    await tab2.locator('#me-name', { hasText: a }).waitFor();
    await startDirect(alice.page, b);
    for (let i = 0; i < 4; i++) {
      await send(alice.page, `tick ${i}`);
      await new Promise((r) => setTimeout(r, 2500));
      // REST calls after expiry must work (refresh on demand or ahead of time).
      await tab2.reload();
      await tab2.locator('#me-name', { hasText: a }).waitFor();
    }
    await convItem(tab2, b).click();
    await message(tab2, 'tick 3').waitFor();
    await send(tab2, 'from the second tab');
    await convItem(bob.page, a).click();
    await message(bob.page, 'from the second tab').waitFor();
    // Neither tab was asked to log in again (a reused refresh token revokes the session).
    assert.equal(await alice.page.locator('#relogin-dialog').count(), 0);
    assert.equal(await tab2.locator('#relogin-dialog').count(), 0);
    assert.equal(await alice.page.getByRole('button', { name: 'Log in' }).count(), 0);
    await alice.context.close();
    await bob.context.close();
  } finally {
    await server.dispose();
  }
});
