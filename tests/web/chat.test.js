// Browser tests of the web client against a real server: several browser contexts, each a
// different user (or device). Run with tests/web/run.sh.

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import {
  PASSWORD,
  probeFeatures,
  PHONE,
  Server,
  convItem,
  launchBrowser,
  logIn,
  message,
  newUser,
  send,
  shot,
  signUp,
  startDirect,
  uname,
  until,
} from './lib/harness.js';

const server = await new Server().start();
const browser = await launchBrowser();
const features = await probeFeatures(server, browser);
/** @type {string[][]} */
const allProblems = [];

/** @param {Parameters<typeof newUser>[2]} [opts] */
async function user(opts) {
  const u = await newUser(browser, server, opts);
  allProblems.push(u.problems);
  return u;
}

after(async () => {
  await browser?.close();
  await server?.dispose();
});

describe('web client', () => {
  test('is served with a strict content security policy', async () => {
    const res = await fetch(server.url + '/');
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/html/);
    const csp = res.headers.get('content-security-policy') ?? '';
    assert.match(csp, /default-src 'self'/);
    assert.match(csp, /script-src 'self'(;|$)/);
    assert.match(csp, /style-src 'self'(;|$)/);
    assert.match(csp, /frame-ancestors 'none'/);
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
    const js = await fetch(server.url + '/app/main.js');
    assert.match(js.headers.get('content-type') ?? '', /^text\/javascript/);
    const etag = js.headers.get('etag') ?? '';
    const again = await fetch(server.url + '/app/main.js', { headers: { 'if-none-match': etag } });
    assert.equal(again.status, 304);
    const missing = await fetch(server.url + '/app/nope.js');
    assert.equal(missing.status, 404);
  });

  test('a bad login shows a clear error; sign-up validates', async () => {
    const { page, context } = await user();
    const name = uname('dora');
    await server.register(name);
    await logIn(page, name, 'not the password');
    const alert = page.getByRole('alert');
    await until(async () => (await alert.textContent())?.includes('Wrong username or password'));
    await shot(page, 'desktop-login-error');
    // Unknown users get the same answer.
    await logIn(page, uname('nobody'), 'whatever123');
    await until(async () => (await alert.textContent())?.includes('Wrong username or password'));
    // Sign-up: short password and taken username.
    await page.getByRole('button', { name: 'Create an account' }).click();
    await page.getByLabel('Username').fill(name);
    await page.getByLabel('Password').fill('short');
    await page.getByRole('button', { name: 'Create account' }).click();
    await until(async () => (await alert.textContent())?.includes('at least 8 characters'));
    await page.getByLabel('Password').fill(PASSWORD);
    await page.getByRole('button', { name: 'Create account' }).click();
    await until(async () => (await alert.textContent())?.includes('taken'));
    await context.close();
  });

  test('sign up, log out, log in; the session survives a reload', async () => {
    const { page, context } = await user();
    const name = uname('erin');
    await page.goto('/');
    await shot(page, 'desktop-login');
    await signUp(page, name);
    await page.locator('.list-empty').waitFor();
    await shot(page, 'desktop-empty');
    await page.reload();
    await page.locator('#me-name', { hasText: name }).waitFor();
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.getByRole('button', { name: 'Log in' }).waitFor();
    await page.reload();
    await page.getByRole('button', { name: 'Log in' }).waitFor();
    await logIn(page, name);
    await page.locator('#me-name', { hasText: name }).waitFor();
    await context.close();
  });

  test('direct conversation: live both ways, unread badges, reload keeps history', async () => {
    const alice = await user();
    const bob = await user();
    const a = uname('alice');
    const b = uname('bob');
    await signUp(alice.page, a);
    await signUp(bob.page, b);

    await startDirect(alice.page, b);
    await send(alice.page, `Hi ${b}! Are you around?`);
    await message(alice.page, 'Are you around?').waitFor();
    // Acknowledged: the pending clock becomes a check.
    await alice.page.locator('.msg.mine:not(.is-pending):not(.is-failed) .status').first().waitFor();

    // Bob: the conversation appears live, with an unread badge.
    const item = convItem(bob.page, a);
    await item.locator('.badge', { hasText: '1' }).waitFor();
    await shot(bob.page, 'desktop-unread');
    await item.click();
    await message(bob.page, 'Are you around?').waitFor();
    await until(async () => (await item.locator('.badge').count()) === 0, { message: 'badge cleared' });
    await send(bob.page, `Yes! Hello @${a} 👋`);
    await message(alice.page, 'Yes! Hello').waitFor();
    // A mention of me is highlighted.
    await message(alice.page, 'Yes! Hello').locator('.mention-me').waitFor();

    for (let i = 1; i <= 3; i++) await send(alice.page, `Message number ${i}`);
    await message(bob.page, 'Message number 3').waitFor();
    // Grouped by sender: consecutive messages join.
    assert.ok((await alice.page.locator('.msg.mine.joins-prev').count()) >= 2);
    // Never twice.
    assert.equal(await message(alice.page, 'Message number 2').count(), 1);
    assert.equal(await message(bob.page, 'Message number 2').count(), 1);

    await shot(alice.page, 'desktop-conversation');
    await bob.page.reload();
    await message(bob.page, 'Message number 3').waitFor();
    await message(bob.page, 'Are you around?').waitFor();
    assert.equal(await message(bob.page, 'Message number 1').count(), 1);
    await alice.context.close();
    await bob.context.close();
  });

  test('a user whose page was closed gets the missed messages when it opens again', async () => {
    const alice = await user();
    const bob = await user();
    const a = uname('alice');
    const b = uname('bob');
    await signUp(alice.page, a);
    await signUp(bob.page, b);
    await startDirect(alice.page, b);
    await send(alice.page, 'first, while you are here');
    await convItem(bob.page, a).waitFor();
    await bob.page.close();

    for (const text of ['missed one', 'missed two', 'missed three']) await send(alice.page, text);
    await alice.page.locator('.msg.mine:not(.is-pending):not(.is-failed) .status').nth(3).waitFor();

    const page = await bob.context.newPage();
    allProblems.push([]);
    await page.goto('/');
    const item = convItem(page, a);
    await item.locator('.badge', { hasText: '4' }).waitFor();
    await item.click();
    await message(page, 'missed three').waitFor();
    assert.equal(await message(page, 'missed two').count(), 1);
    // The "new messages" line sits above the first unread message.
    await page.locator('.unread-sep').waitFor();
    await alice.context.close();
    await bob.context.close();
  });

  test('read marks: opening a conversation clears its badge on the other devices', async () => {
    const alice = await user();
    const bob = await user();
    const a = uname('alice');
    const b = uname('bob');
    await signUp(alice.page, a);
    await signUp(bob.page, b);
    // Bob's second device (tab): same storage, same session.
    const tab2 = await bob.context.newPage();
    await tab2.goto('/');
    await tab2.locator('#me-name', { hasText: b }).waitFor();

    await startDirect(alice.page, b);
    await send(alice.page, 'ping');
    await send(alice.page, 'pong');
    await convItem(bob.page, a).locator('.badge', { hasText: '2' }).waitFor();
    await convItem(tab2, a).locator('.badge', { hasText: '2' }).waitFor();
    await convItem(bob.page, a).click();
    await message(bob.page, 'pong').waitFor();
    await until(async () => (await convItem(tab2, a).locator('.badge').count()) === 0, { message: 'read on other tab' });
    await alice.context.close();
    await bob.context.close();
  });

  test('group: create, add and remove members, leave', async () => {
    const alice = await user();
    const bob = await user();
    const carol = await user();
    const a = uname('alice');
    const b = uname('bob');
    const c = uname('carol');
    await signUp(alice.page, a);
    await signUp(bob.page, b);
    await signUp(carol.page, c);

    // Alice creates "Design team" with Bob.
    await alice.page.getByRole('button', { name: 'New conversation' }).first().click();
    const dialog = alice.page.locator('#new-conversation-dialog');
    await dialog.getByRole('tab', { name: 'Group' }).click();
    await dialog.getByLabel('Group name').fill('Design team');
    await dialog.getByLabel('Add people').fill(b);
    await dialog.getByLabel('Add people').press('Enter');
    await dialog.locator('.chip', { hasText: b }).waitFor();
    await shot(alice.page, 'desktop-new-group');
    await dialog.getByRole('button', { name: 'Create group' }).click();
    await alice.page.locator('#conv-title', { hasText: 'Design team' }).waitFor();
    await send(alice.page, 'Welcome to the design team');

    await convItem(bob.page, 'Design team').click();
    await message(bob.page, 'Welcome to the design team').waitFor();
    await send(bob.page, 'Thanks! Glad to be here.');
    await message(alice.page, 'Glad to be here').waitFor();
    // Others' messages in a group show the sender's name.
    await alice.page.locator('.msg.theirs .sender', { hasText: b }).waitFor();

    // Alice adds Carol from the details panel; Carol sees the group appear.
    await alice.page.getByRole('button', { name: 'Conversation details' }).click();
    const details = alice.page.locator('.details');
    await details.getByLabel('Username to add').fill(c);
    await details.getByRole('button', { name: 'Add', exact: true }).click();
    await details.locator('.member', { hasText: c }).waitFor();
    await convItem(carol.page, 'Design team').waitFor();
    await shot(alice.page, 'desktop-group-details');

    // Alice removes Bob; his list drops the group.
    await details.locator('.member', { hasText: b }).hover();
    await details.getByRole('button', { name: `Remove ${b} from the group` }).click();
    await alice.page.getByRole('alertdialog').getByRole('button', { name: 'Remove' }).click();
    await until(async () => (await details.locator('.member', { hasText: b }).count()) === 0, { message: 'bob removed' });
    await until(async () => (await convItem(bob.page, 'Design team').count()) === 0, { message: 'group gone for bob' });
    await bob.page.locator('.conv-notice', { hasText: 'no longer a member' }).waitFor();

    // Carol leaves.
    await convItem(carol.page, 'Design team').click();
    await carol.page.getByRole('button', { name: 'Conversation details' }).click();
    await carol.page.locator('#leave-group').click();
    await carol.page.getByRole('alertdialog').getByRole('button', { name: 'Leave group' }).click();
    await until(async () => (await convItem(carol.page, 'Design team').count()) === 0, { message: 'group gone for carol' });
    await until(async () => (await details.locator('.member', { hasText: c }).count()) === 0, { message: 'carol left' });
    await alice.context.close();
    await bob.context.close();
    await carol.context.close();
  });

  test('infinite scroll back through a long history', async () => {
    const alice = await user();
    const a = uname('alice');
    const b = uname('bob');
    await signUp(alice.page, a);
    const bob = await server.register(b);
    const me = (await server.rest('GET', `/v1/users/by-name/${a}`, undefined, bob.access_token)).body;
    const conv = (await server.rest('POST', '/v1/conversations/direct', { user_id: me.id }, bob.access_token)).body;
    for (let i = 1; i <= 130; i++) {
      await server.rest('POST', `/v1/conversations/${conv.id}/messages`, { cid: `h${i}`, text: `history line ${i}` }, bob.access_token);
    }
    await convItem(alice.page, b).locator('.badge', { hasText: '99+' }).waitFor();
    await convItem(alice.page, b).click();
    await message(alice.page, 'history line 130').waitFor();
    assert.equal(await message(alice.page, 'history line 1').filter({ hasText: /line 1$/ }).count(), 0);
    // Scroll up until the beginning of the conversation shows.
    await until(
      async () => {
        await alice.page.locator('.messages').evaluate((el) => el.scrollTo(0, 0));
        return (await alice.page.locator('.conv-start').count()) > 0;
      },
      { timeout: 20_000, message: 'reached the start' },
    );
    await alice.page.locator('.msg', { has: alice.page.locator('.text', { hasText: /^history line 1$/ }) }).waitFor();
    assert.equal(await alice.page.locator('.msg').count(), 130);
    await alice.context.close();
  });

  test('works with the keyboard alone', async () => {
    const alice = await user();
    const b = uname('bob');
    await server.register(b);
    const a = uname('alice');
    await signUp(alice.page, a);
    const page = alice.page;
    await page.locator('#new-conversation').focus();
    await page.keyboard.press('Enter');
    await page.keyboard.type(b);
    await page.keyboard.press('Enter');
    await page.locator('#conv-title', { hasText: b }).waitFor();
    // The composer has focus after opening a conversation.
    await until(async () => page.evaluate(() => document.activeElement?.id === 'composer-input'));
    await page.keyboard.type('Typed without a mouse');
    await page.keyboard.press('Enter');
    await message(page, 'Typed without a mouse').waitFor();
    // Shift+Enter makes a new line rather than sending.
    await page.keyboard.type('line one');
    await page.keyboard.press('Shift+Enter');
    await page.keyboard.type('line two');
    await page.keyboard.press('Enter');
    await message(page, 'line two').waitFor();
    assert.match((await message(page, 'line two').locator('.text').textContent()) ?? '', /line one\nline two/);
    // Reply from the keyboard: focus the timeline, arrow to a message, R.
    await page.locator('.messages').focus();
    await page.keyboard.press('ArrowUp');
    await page.keyboard.press('r');
    await page.locator('.composer-context', { hasText: 'Replying to' }).waitFor();
    await page.keyboard.press('Escape');
    await until(async () => (await page.locator('.composer-context').isHidden()));
    // Every button has an accessible name.
    const unnamed = await page.evaluate(() =>
      [...document.querySelectorAll('button, a[href], input, textarea')].filter((el) => {
        const e = /** @type {HTMLElement} */ (el);
        if (e.closest('[hidden]') || e.offsetParent === null) return false;
        const label = e.getAttribute('aria-label') || e.textContent?.trim() || (e.id && document.querySelector(`label[for="${e.id}"]`));
        return !label;
      }).map((e) => e.outerHTML.slice(0, 80)),
    );
    assert.deepEqual(unnamed, []);
    await alice.context.close();
  });

  test('phone size: list and conversation are separate screens', async () => {
    const alice = await user({ viewport: PHONE });
    const bob = await user();
    const a = uname('alice');
    const b = uname('bob');
    await signUp(bob.page, b);
    await alice.page.goto('/');
    await shot(alice.page, 'phone-login');
    await signUp(alice.page, a);
    await startDirect(bob.page, a);
    await send(bob.page, 'Hey! Lunch tomorrow? I found a great new ramen place near the office.');
    await convItem(alice.page, b).waitFor();
    await shot(alice.page, 'phone-list');
    await convItem(alice.page, b).click();
    await message(alice.page, 'ramen').waitFor();
    assert.equal(await alice.page.locator('.sidebar').isVisible(), false);
    await send(alice.page, 'Sounds great, 12:30?');
    await send(bob.page, 'Perfect 👍');
    await message(alice.page, 'Perfect').waitFor();
    await shot(alice.page, 'phone-conversation');
    await alice.page.getByRole('button', { name: 'Conversation details' }).click();
    await alice.page.locator('.details-name', { hasText: b }).waitFor();
    assert.equal(await alice.page.locator('.pane').isVisible(), false);
    await shot(alice.page, 'phone-details');
    await alice.page.getByRole('button', { name: 'Close details' }).click();
    await alice.page.locator('#composer-input').waitFor();
    await alice.page.getByRole('button', { name: 'Back to conversations' }).click();
    await alice.page.locator('.sidebar').waitFor();
    assert.equal(await alice.page.locator('.pane').isVisible(), false);
    await alice.context.close();
    await bob.context.close();
  });

  test('dark theme follows the system', async () => {
    const alice = await user({ colorScheme: 'dark' });
    const bob = await user({ colorScheme: 'dark', viewport: PHONE });
    const a = uname('alice');
    const b = uname('bob');
    await signUp(alice.page, a);
    await signUp(bob.page, b);
    await startDirect(alice.page, b);
    await send(alice.page, 'Dark mode looks calm, right?');
    await convItem(bob.page, a).click();
    await send(bob.page, `It does, @${a}. Easy on the eyes at night.`);
    await message(alice.page, 'Easy on the eyes').waitFor();
    await send(alice.page, 'Agreed 🌙');
    await message(bob.page, 'Agreed').waitFor();
    const bg = await alice.page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    assert.notEqual(bg, 'rgb(244, 245, 249)');
    await shot(alice.page, 'desktop-dark');
    await shot(bob.page, 'phone-dark');
    await alice.context.close();
    await bob.context.close();
  });

  test('session expiry asks to log in again and keeps what the user typed', async () => {
    const alice = await user();
    const b = uname('bob');
    await server.register(b);
    const a = uname('alice');
    await signUp(alice.page, a);
    await startDirect(alice.page, b);
    await alice.page.locator('#composer-input').fill('a draft I must not lose');
    // The device session is revoked behind the client's back.
    const token = await alice.page.evaluate(() => JSON.parse(localStorage.getItem('parlor.session') ?? '{}').access_token);
    const res = await server.rest('POST', '/v1/auth/logout', undefined, token);
    assert.equal(res.status, 204);
    // The server closes the socket (or the next request fails): the app asks for the
    // password, the draft stays.
    const dialog = alice.page.locator('#relogin-dialog');
    const shown = await dialog.waitFor({ timeout: 3000 }).then(() => true, () => false);
    if (!shown) await alice.page.getByRole('button', { name: 'Conversation details' }).click();
    await dialog.waitFor();
    await shot(alice.page, 'desktop-session-expired');
    assert.equal(await alice.page.locator('#composer-input').inputValue(), 'a draft I must not lose');
    await dialog.getByLabel('Password').fill(PASSWORD);
    await dialog.getByRole('button', { name: 'Log in' }).click();
    await dialog.waitFor({ state: 'detached' });
    assert.equal(await alice.page.locator('#composer-input').inputValue(), 'a draft I must not lose');
    await alice.page.locator('#composer-input').press('Enter');
    await alice.page.locator('.msg.mine:not(.is-pending):not(.is-failed) .status').first().waitFor();
    await alice.context.close();
  });

});

/** @param {boolean} have @param {string} why */
const needs = (have, why) => (have ? {} : { skip: `server has no ${why} yet` });

describe('features that depend on newer server protocol', () => {
  /** Alice and Bob in a direct conversation, both looking at it. */
  async function pair() {
    const alice = await user();
    const bob = await user();
    const a = uname('alice');
    const b = uname('bob');
    await signUp(alice.page, a);
    await signUp(bob.page, b);
    await startDirect(alice.page, b);
    await send(alice.page, 'hello there');
    await convItem(bob.page, a).click();
    await message(bob.page, 'hello there').waitFor();
    return { alice, bob, a, b, close: async () => { await alice.context.close(); await bob.context.close(); } };
  }

  test('typing indicator shows on the other side', needs(features.typing, '`typing` frames'), async () => {
    const { alice, bob, close } = await pair();
    await alice.page.locator('#composer-input').pressSequentially('I am typing', { delay: 20 });
    await bob.page.locator('.typing-line', { hasText: 'is typing' }).waitFor();
    await alice.page.locator('#composer-input').press('Enter');
    await until(async () => !(await bob.page.locator('.typing-line').textContent()), { message: 'typing cleared' });
    await close();
  });

  test('presence dot and status in the header', needs(features.presence, 'GET /v1/presence and `presence` frames'), async () => {
    const { alice, bob, a, close } = await pair();
    await bob.page.locator('#conv-subtitle', { hasText: 'Online' }).waitFor();
    await convItem(bob.page, a).locator('.presence-dot.online').waitFor();
    await shot(bob.page, 'desktop-presence');
    await alice.context.close();
    await bob.page.locator('#conv-subtitle', { hasText: /Last seen|Offline/ }).waitFor({ timeout: 60_000 });
    await close();
  });

  test('search finds a message and jumps to it', needs(features.search, 'GET /v1/search'), async () => {
    const { alice, close } = await pair();
    await send(alice.page, 'The quarterly roadmap draft is ready for review');
    for (let i = 0; i < 60; i++) await send(alice.page, `filler message ${i}`);
    await alice.page.locator('.msg.mine:not(.is-pending):not(.is-failed) .status').nth(60).waitFor();
    await alice.page.reload();
    await alice.page.getByLabel('Search messages').fill('roadmap');
    const result = alice.page.locator('.result-item', { hasText: 'roadmap' });
    await result.waitFor();
    await result.locator('mark').first().waitFor();
    await shot(alice.page, 'desktop-search');
    await result.click();
    await alice.page.locator('.msg.flash', { hasText: 'quarterly roadmap' }).waitFor();
    await close();
  });

  test('edited and deleted states', needs(features.edits, '`edit`/`delete` frames'), async () => {
    const { alice, bob, close } = await pair();
    await send(alice.page, 'helo wrld');
    await send(alice.page, 'this one goes away');
    await message(bob.page, 'this one goes away').waitFor();
    const typo = message(alice.page, 'helo wrld');
    await typo.hover();
    await typo.getByRole('button', { name: 'Edit' }).click();
    await alice.page.locator('#composer-input').fill('hello world');
    await alice.page.locator('#composer-input').press('Enter');
    await message(bob.page, 'hello world').locator('.edited').waitFor();
    const gone = message(alice.page, 'this one goes away');
    await gone.hover();
    await gone.getByRole('button', { name: 'Delete' }).click();
    await alice.page.getByRole('alertdialog').getByRole('button', { name: 'Delete' }).click();
    await bob.page.locator('.msg.is-deleted', { hasText: 'This message was deleted' }).waitFor();
    await close();
  });

  test('replies show the quoted message on the other side', needs(features.replies, '`reply_to` on messages'), async () => {
    const { alice, bob, close } = await pair();
    const original = message(bob.page, 'hello there');
    await original.hover();
    await original.getByRole('button', { name: 'Reply' }).click();
    await send(bob.page, 'General Kenobi');
    await message(alice.page, 'General Kenobi').locator('.quote', { hasText: 'hello there' }).waitFor();
    await alice.page.reload();
    await message(alice.page, 'General Kenobi').locator('.quote', { hasText: 'hello there' }).waitFor();
    await close();
  });

  test('read marks on my messages', needs(features.receipts, 'read receipts of other members'), async () => {
    const { alice, bob, close } = await pair();
    await send(alice.page, 'did you read this?');
    await message(bob.page, 'did you read this?').waitFor();
    await message(alice.page, 'did you read this?').locator('.status-read').waitFor();
    await close();
  });
});

test('no page errors, console errors or CSP violations', () => {
  assert.deepEqual(allProblems.flat(), []);
});
