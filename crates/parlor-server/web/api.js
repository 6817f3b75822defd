// REST client: the session (tokens in localStorage), single-flight token refresh shared by
// every tab of the browser, JSON requests with the protocol's error bodies.

import { Emitter, load, newCid, save, sharedGet, sharedPut, sleep } from './util.js';

/** @typedef {import('./types.js').Session} Session */
/** @typedef {import('./types.js').TokenPair} TokenPair */
/** @typedef {import('./types.js').User} User */
/** @typedef {import('./types.js').ConversationSummary} ConversationSummary */
/** @typedef {import('./types.js').ConversationDetail} ConversationDetail */
/** @typedef {import('./types.js').ConversationInfo} ConversationInfo */
/** @typedef {import('./types.js').History} History */
/** @typedef {import('./types.js').Presence} Presence */
/** @typedef {import('./types.js').SearchResult} SearchResult */

const SESSION_KEY = 'parlor.session';
const LOCK_KEY = 'parlor.refresh-lock';
/** Refresh this long before the access token expires. */
const REFRESH_MARGIN_MS = 60_000;

export class ApiError extends Error {
  /**
   * @param {number} status HTTP status, 0 when the server could not be reached
   * @param {string} code protocol error code, or `network` / `session_expired`
   * @param {string} message
   * @param {number} [retryAfterMs]
   */
  constructor(status, code, message, retryAfterMs) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

/** A sentence for a person, from an error of any kind. @param {unknown} err */
export function describeError(err) {
  if (!(err instanceof ApiError)) return 'Something went wrong. Please try again.';
  switch (err.code) {
    case 'network':
      return 'Can’t reach the server. Check your connection and try again.';
    case 'invalid_credentials':
      return 'Wrong username or password.';
    case 'invalid_username':
      return 'Usernames are 3–32 characters: letters a–z, digits, “_”, “.” or “-”, starting with a letter or digit.';
    case 'weak_password':
      return 'Passwords need at least 8 characters.';
    case 'username_taken':
      return 'That username is taken. Try another one.';
    case 'rate_limited': {
      const secs = Math.max(1, Math.ceil((err.retryAfterMs ?? 1000) / 1000));
      return `Too many attempts. Try again in ${secs} second${secs === 1 ? '' : 's'}.`;
    }
    case 'session_expired':
    case 'token_revoked':
    case 'unauthorized':
      return 'Your session has ended. Please log in again.';
    case 'not_found':
      return 'Not found.';
    case 'not_member':
      return 'You are not a member of this conversation.';
    case 'forbidden':
      return 'You are not allowed to do that.';
    case 'conflict':
      return 'That’s you! Pick someone else.';
    case 'member_limit':
      return 'This group is full.';
    case 'message_too_large':
      return 'This message is too long.';
    case 'unavailable':
      return 'The server is busy. Please try again in a moment.';
    default:
      return err.message ? err.message.charAt(0).toUpperCase() + err.message.slice(1) + '.' : 'Something went wrong.';
  }
}

/** @template T @param {() => Promise<T>} fn @returns {Promise<T>} */
async function withRefreshLock(fn) {
  if (typeof navigator !== 'undefined' && navigator.locks) {
    return navigator.locks.request('parlor-refresh', fn);
  }
  // Insecure contexts (plain HTTP on a LAN address) have no Web Locks: a best-effort lease
  // in localStorage keeps two tabs from spending the same refresh token.
  const owner = newCid();
  for (let attempt = 0; attempt < 60; attempt++) {
    const lease = /** @type {{ owner: string, until: number } | null} */ (load(LOCK_KEY));
    if (!lease || lease.until < Date.now()) {
      save(LOCK_KEY, { owner, until: Date.now() + 10_000 });
      await sleep(40);
      const now = /** @type {{ owner: string } | null} */ (load(LOCK_KEY));
      if (now && now.owner === owner) {
        try {
          return await fn();
        } finally {
          save(LOCK_KEY, null);
        }
      }
    }
    await sleep(80 + Math.random() * 120);
  }
  return fn();
}

/**
 * @extends {Emitter<{ session: Session | null, expired: User, signedOut: null }>}
 */
export class Api extends Emitter {
  constructor() {
    super();
    /** @type {Session | null} */
    this.session = /** @type {Session | null} */ (load(SESSION_KEY));
    /** True once the refresh token was refused: requests fail until the user logs in again. */
    this.expired = false;
    /** @type {Promise<void> | null} */
    this.refreshing = null;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.refreshTimer = undefined;
    this.schedule();
    window.addEventListener('storage', (e) => {
      if (e.key !== SESSION_KEY) return;
      const next = /** @type {Session | null} */ (e.newValue ? JSON.parse(e.newValue) : null);
      const mine = this.session;
      if (!next) {
        if (mine && !this.expired) {
          this.session = null;
          this.emit('signedOut', null);
        }
      } else if (!mine || next.user.id === mine.user.id) {
        // Another tab logged in or refreshed: use its tokens.
        const wasExpired = this.expired;
        this.session = next;
        this.expired = false;
        this.schedule();
        if (wasExpired || !mine) this.emit('session', next);
      } else {
        location.reload();
      }
    });
  }

  get user() {
    return this.session?.user ?? null;
  }

  /** @param {TokenPair} pair */
  adopt(pair) {
    this.session = {
      access_token: pair.access_token,
      refresh_token: pair.refresh_token,
      expires_at: Date.now() + pair.expires_in * 1000,
      user: pair.user,
      device_id: pair.device_id,
    };
    this.expired = false;
    sharedPut(SESSION_KEY, this.session);
    this.schedule();
    this.emit('session', this.session);
  }

  schedule() {
    clearTimeout(this.refreshTimer);
    const s = this.session;
    if (!s) return;
    const left = s.expires_at - Date.now();
    // A minute early, or a quarter of the lifetime early for short-lived tokens.
    const wait = Math.max(1000, left - Math.min(REFRESH_MARGIN_MS, left / 4));
    this.refreshTimer = setTimeout(() => {
      this.refresh().catch(() => {
        /* retried on next use */
      });
    }, Math.min(wait, 2 ** 31 - 1));
  }

  /** Gets new tokens, once for all callers and all tabs. */
  refresh() {
    if (!this.refreshing) {
      this.refreshing = this.doRefresh().finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  async doRefresh() {
    const before = this.session;
    if (!before) throw new ApiError(401, 'session_expired', 'not logged in');
    await withRefreshLock(async () => {
      // Another tab may have refreshed while we waited for the lock: its tokens are in
      // the shared store, and ours is spent.
      const stored = /** @type {Session | null} */ (await sharedGet(SESSION_KEY));
      const mine = this.session;
      if (stored && mine && stored.user.id === mine.user.id && stored.refresh_token !== mine.refresh_token) {
        this.session = stored;
        this.expired = false;
        save(SESSION_KEY, stored);
        this.schedule();
      }
      if (this.session && this.session.refresh_token !== before.refresh_token && this.session.expires_at - Date.now() > 1_000) {
        return;
      }
      const current = this.session;
      if (!current) throw new ApiError(401, 'session_expired', 'not logged in');
      let res;
      try {
        res = await fetch('/v1/auth/refresh', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ refresh_token: current.refresh_token }),
        });
      } catch {
        throw new ApiError(0, 'network', 'cannot reach the server');
      }
      if (res.ok) {
        this.adopt(/** @type {TokenPair} */ (await res.json()));
        // Published before the lock is released, so the next tab reads it.
        await sharedPut(SESSION_KEY, this.session);
        return;
      }
      const body = await errorBody(res);
      if (res.status === 401) {
        this.markExpired();
        throw new ApiError(401, 'session_expired', body.message);
      }
      throw new ApiError(res.status, body.code, body.message, body.retry_after_ms);
    });
  }

  markExpired() {
    if (this.expired || !this.session) return;
    this.expired = true;
    clearTimeout(this.refreshTimer);
    this.emit('expired', this.session.user);
  }

  /** A valid access token, refreshed first when it is about to expire. */
  async token() {
    if (!this.session || this.expired) throw new ApiError(401, 'session_expired', 'not logged in');
    if (this.session.expires_at - Date.now() < 2_000) await this.refresh();
    if (!this.session) throw new ApiError(401, 'session_expired', 'not logged in');
    return this.session.access_token;
  }

  /**
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @param {{ auth?: boolean }} [opts]
   * @returns {Promise<any>}
   */
  async request(method, path, body, opts = {}) {
    const auth = opts.auth ?? true;
    for (let attempt = 0; ; attempt++) {
      /** @type {Record<string, string>} */
      const headers = {};
      if (body !== undefined) headers['content-type'] = 'application/json';
      if (auth) headers.authorization = `Bearer ${await this.token()}`;
      let res;
      try {
        res = await fetch(path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch {
        throw new ApiError(0, 'network', 'cannot reach the server');
      }
      if (res.ok) {
        if (res.status === 204) return null;
        const text = await res.text();
        return text ? JSON.parse(text) : null;
      }
      const err = await errorBody(res);
      if (auth && res.status === 401 && attempt === 0 && (err.code === 'token_expired' || err.code === 'unauthorized')) {
        await this.refresh();
        continue;
      }
      if (auth && res.status === 401) {
        this.markExpired();
        throw new ApiError(401, 'session_expired', err.message);
      }
      throw new ApiError(res.status, err.code, err.message, err.retry_after_ms);
    }
  }

  /**
   * Downloads an authenticated resource (an upload's content or thumbnail) as a blob:
   * media endpoints need the bearer token, so `<img src>` cannot load them directly.
   * @param {string} path
   * @param {AbortSignal} [signal]
   * @returns {Promise<Blob>}
   */
  async blob(path, signal) {
    for (let attempt = 0; ; attempt++) {
      let res;
      try {
        res = await fetch(path, { headers: { authorization: `Bearer ${await this.token()}` }, signal });
      } catch (e) {
        if (signal?.aborted) throw e;
        throw new ApiError(0, 'network', 'cannot reach the server');
      }
      if (res.ok) return res.blob();
      const err = await errorBody(res);
      if (res.status === 401 && attempt === 0 && (err.code === 'token_expired' || err.code === 'unauthorized')) {
        await this.refresh();
        continue;
      }
      if (res.status === 401) {
        this.markExpired();
        throw new ApiError(401, 'session_expired', err.message);
      }
      throw new ApiError(res.status, err.code, err.message, err.retry_after_ms);
    }
  }

  // Uploads (the bytes themselves go up with XMLHttpRequest, in uploads.js, for progress)

  /** @param {string} id @returns {Promise<import('./types.js').UploadView>} */
  upload(id) {
    return this.request('GET', `/v1/uploads/${encodeURIComponent(id)}`);
  }

  /** Gives up an upload no message carries (frees the quota). @param {string} id */
  deleteUpload(id) {
    return this.request('DELETE', `/v1/uploads/${encodeURIComponent(id)}`);
  }

  // Accounts

  /** @param {string} username @param {string} password */
  async login(username, password) {
    const device = navigator.userAgent.includes('Mobile') ? 'Web (phone)' : 'Web browser';
    const pair = /** @type {TokenPair} */ (
      await this.request('POST', '/v1/auth/login', { username, password, device_name: device }, { auth: false })
    );
    this.adopt(pair);
    return pair.user;
  }

  /** @param {string} username @param {string} password */
  async register(username, password) {
    await this.request('POST', '/v1/auth/register', { username, password }, { auth: false });
    return this.login(username, password);
  }

  async logout() {
    const session = this.session;
    clearTimeout(this.refreshTimer);
    if (session && !this.expired) {
      try {
        await fetch('/v1/auth/logout', {
          method: 'POST',
          headers: { authorization: `Bearer ${session.access_token}` },
        });
      } catch {
        /* the session ends locally anyway */
      }
    }
    this.session = null;
    this.expired = false;
    await sharedPut(SESSION_KEY, null);
  }

  /** @param {string} username @returns {Promise<User>} */
  userByName(username) {
    return this.request('GET', `/v1/users/by-name/${encodeURIComponent(username.trim().toLowerCase())}`);
  }

  /** @param {string} id @returns {Promise<User>} */
  userById(id) {
    return this.request('GET', `/v1/users/${encodeURIComponent(id)}`);
  }

  // Conversations

  /** @returns {Promise<ConversationSummary[]>} */
  async conversations() {
    const body = await this.request('GET', '/v1/conversations');
    return body.conversations;
  }

  /** @param {string} id @returns {Promise<ConversationDetail>} */
  conversation(id) {
    return this.request('GET', `/v1/conversations/${id}`);
  }

  /** @param {string} userId @returns {Promise<ConversationInfo>} */
  openDirect(userId) {
    return this.request('POST', '/v1/conversations/direct', { user_id: userId });
  }

  /** @param {string} name @param {string[]} members @returns {Promise<ConversationInfo>} */
  createGroup(name, members) {
    return this.request('POST', '/v1/conversations', { name, members });
  }

  /** @param {string} conv @param {string} userId */
  addMember(conv, userId) {
    return this.request('POST', `/v1/conversations/${conv}/members`, { user_id: userId });
  }

  /** @param {string} conv @param {string} userId */
  removeMember(conv, userId) {
    return this.request('DELETE', `/v1/conversations/${conv}/members/${userId}`);
  }

  /** @param {string} conv @param {string} userId @param {'admin' | 'member'} role */
  setRole(conv, userId, role) {
    return this.request('PUT', `/v1/conversations/${conv}/members/${userId}/role`, { role });
  }

  /** @param {string} conv */
  leave(conv) {
    return this.request('POST', `/v1/conversations/${conv}/leave`);
  }

  /**
   * @param {string} conv
   * @param {{ before?: number, after?: number, limit?: number }} page
   * @returns {Promise<History>}
   */
  history(conv, page) {
    const q = new URLSearchParams();
    if (page.before != null) q.set('before', String(page.before));
    if (page.after != null) q.set('after', String(page.after));
    q.set('limit', String(page.limit ?? 50));
    return this.request('GET', `/v1/conversations/${conv}/messages?${q}`);
  }

  /** @param {string} conv @param {number} seq */
  markRead(conv, seq) {
    return this.request('POST', `/v1/conversations/${conv}/read`, { seq });
  }

  // Features that not every server has yet: callers treat `not_found` as "unsupported".

  /**
   * @param {string} query
   * @param {{ conv?: string, limit?: number, cursor?: string }} [opts]
   * @returns {Promise<{ results: SearchResult[], next_cursor?: string }>}
   */
  search(query, opts = {}) {
    const q = new URLSearchParams({ q: query, limit: String(opts.limit ?? 20) });
    if (opts.conv) q.set('conv', opts.conv);
    if (opts.cursor) q.set('cursor', opts.cursor);
    return this.request('GET', `/v1/search?${q}`);
  }

  /**
   * @param {string} conv
   * @returns {Promise<{ conv: string, last_seq: number, receipts: { user: string, delivered_seq: number, read_seq: number }[] }>}
   */
  receipts(conv) {
    return this.request('GET', `/v1/conversations/${conv}/receipts`);
  }

  /** @param {import('./types.js').Availability} status @returns {Promise<Presence>} */
  setStatus(status) {
    return this.request('PUT', '/v1/me/status', { status });
  }

  /** @param {string[]} users @returns {Promise<Presence[]>} */
  async presence(users) {
    const body = await this.request('GET', `/v1/presence?users=${users.map(encodeURIComponent).join(',')}`);
    return body.presence ?? [];
  }

  // Notifications

  /**
   * The in-app feed, newest first. @param {{ before?: string, limit?: number }} [page]
   * @returns {Promise<import('./types.js').NotificationPage>}
   */
  notifications(page = {}) {
    const q = new URLSearchParams({ limit: String(page.limit ?? 30) });
    if (page.before) q.set('before', page.before);
    return this.request('GET', `/v1/notifications?${q}`);
  }

  /**
   * @param {{ ids?: string[], up_to?: string }} which
   * @returns {Promise<import('./types.js').NotificationsRead>}
   */
  markNotificationsRead(which) {
    return this.request('POST', '/v1/notifications/read', which);
  }

  /** @param {string} conv @returns {Promise<import('./types.js').ConversationNotifications>} */
  conversationNotifications(conv) {
    return this.request('GET', `/v1/conversations/${conv}/notifications`);
  }

  /**
   * @param {string} conv @param {import('./types.js').ConversationNotifications} settings
   * @returns {Promise<import('./types.js').ConversationNotifications>}
   */
  setConversationNotifications(conv, settings) {
    return this.request('PUT', `/v1/conversations/${conv}/notifications`, settings);
  }

  /** @returns {Promise<import('./types.js').NotificationPreferences>} */
  notificationPreferences() {
    return this.request('GET', '/v1/notifications/preferences');
  }

  /**
   * @param {import('./types.js').NotificationPreferences} prefs
   * @returns {Promise<import('./types.js').NotificationPreferences>}
   */
  setNotificationPreferences(prefs) {
    return this.request('PUT', '/v1/notifications/preferences', prefs);
  }

  /** The application server key for `pushManager.subscribe`. @returns {Promise<string>} */
  async vapidKey() {
    const body = await this.request('GET', '/v1/push/vapid');
    return body.public_key;
  }

  /**
   * Registers a browser's push subscription (again: the same endpoint keeps its id).
   * @param {{ endpoint: string, keys: { p256dh: string, auth: string } }} subscription
   * @returns {Promise<import('./types.js').PushTarget>}
   */
  addWebPushTarget(subscription) {
    return this.request('POST', '/v1/push/targets', { kind: 'web_push', endpoint: subscription.endpoint, keys: subscription.keys });
  }

  /** @param {string} id */
  removePushTarget(id) {
    return this.request('DELETE', `/v1/push/targets/${encodeURIComponent(id)}`);
  }
}

/** @param {Response} res @returns {Promise<import('./types.js').ErrorBody>} */
async function errorBody(res) {
  try {
    const body = await res.json();
    if (body && typeof body.code === 'string') return body;
  } catch {
    /* not JSON */
  }
  return { code: res.status === 404 ? 'not_found' : 'internal', message: res.statusText || `HTTP ${res.status}` };
}

/** True when the error says the endpoint does not exist on this server (an older one). */
export function isMissingEndpoint(/** @type {unknown} */ err) {
  return err instanceof ApiError && err.status === 404 && /no such endpoint/i.test(err.message);
}
