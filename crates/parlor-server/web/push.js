// Web Push on this device: the service worker, the browser's push subscription and the
// server's push target, kept in step. The target's id is remembered per user, so that
// turning pushes off (or signing out) removes exactly this browser's target.

import { ApiError, describeError, isMissingEndpoint } from './api.js';
import { Emitter, load, save } from './util.js';

const WORKER_URL = '/app/sw.js';
// The worker's own directory, the widest scope it may have without a
// `Service-Worker-Allowed` header. It controls no page; push needs none.
const WORKER_SCOPE = '/app/';

/**
 * `unsupported`: the browser has no Web Push; `unavailable`: the server has it off;
 * `blocked`: the user refused notifications to this site.
 * @typedef {'checking' | 'unsupported' | 'unavailable' | 'blocked' | 'off' | 'on'} PushState
 * @typedef {{ id: string, endpoint: string }} SavedTarget
 */

export function browserHasPush() {
  return 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;
}

/** @param {string} base64url @returns {Uint8Array<ArrayBuffer>} */
function decodeKey(base64url) {
  const b64 = base64url.replace(/-/g, '+').replace(/_/g, '/');
  const raw = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

/** @param {ArrayBuffer | null} a @param {Uint8Array} b */
function sameKey(a, b) {
  if (!a || a.byteLength !== b.byteLength) return false;
  const x = new Uint8Array(a);
  return x.every((v, i) => v === b[i]);
}

/** Resolves once the registration has an active worker (`subscribe` needs one). @param {ServiceWorkerRegistration} reg */
function activated(reg) {
  if (reg.active) return Promise.resolve(reg);
  return new Promise((resolve, reject) => {
    const worker = reg.installing ?? reg.waiting;
    if (!worker) {
      reject(new Error('the service worker did not install'));
      return;
    }
    worker.addEventListener('statechange', () => {
      if (worker.state === 'activated') resolve(reg);
      if (worker.state === 'redundant') reject(new Error('the service worker did not install'));
    });
  });
}

/** @extends {Emitter<{ change: PushState }>} */
export class WebPush extends Emitter {
  /** @param {import('./api.js').Api} api @param {string} userId */
  constructor(api, userId) {
    super();
    this.api = api;
    this.key = `parlor.push.${userId}`;
    /** @type {PushState} */
    this.state = 'checking';
    this.busy = false;
    this.error = '';
    /** @type {string | null} */
    this.vapid = null;
  }

  /** @param {PushState} state */
  set(state) {
    this.state = state;
    this.emit('change', state);
  }

  get saved() {
    return /** @type {SavedTarget | null} */ (load(this.key));
  }

  /** Finds out what this device can do, and re-registers a subscription that changed. */
  async init() {
    if (!browserHasPush()) return this.set('unsupported');
    try {
      this.vapid = await this.api.vapidKey();
    } catch (e) {
      if (isMissingEndpoint(e) || (e instanceof ApiError && e.code === 'provider_not_configured')) return this.set('unavailable');
      // Unreachable for now: offer the switch, enabling will tell.
    }
    if (Notification.permission === 'denied') return this.set('blocked');
    const saved = this.saved;
    const sub = await this.subscription();
    if (!saved || !sub || Notification.permission !== 'granted') return this.set('off');
    this.set('on');
    // The browser may have renewed the subscription, or the server pruned a target its
    // push service refused: registering again is idempotent and repairs both.
    try {
      await this.register(sub);
    } catch {
      /* next start tries again */
    }
  }

  async registration() {
    return (await navigator.serviceWorker.getRegistration(WORKER_SCOPE)) ?? null;
  }

  async subscription() {
    try {
      const reg = await this.registration();
      return (await reg?.pushManager.getSubscription()) ?? null;
    } catch {
      return null;
    }
  }

  /** @param {PushSubscription} sub */
  async register(sub) {
    const json = sub.toJSON();
    if (!json.endpoint || !json.keys?.p256dh || !json.keys.auth) throw new Error('the browser gave an incomplete subscription');
    const target = await this.api.addWebPushTarget({ endpoint: json.endpoint, keys: { p256dh: json.keys.p256dh, auth: json.keys.auth } });
    save(this.key, { id: target.id, endpoint: json.endpoint });
  }

  async enable() {
    await this.run(async () => {
      const permission = await Notification.requestPermission();
      if (permission !== 'granted') {
        this.set(permission === 'denied' ? 'blocked' : 'off');
        throw new Error(permission === 'denied' ? 'Notifications are blocked for this site in the browser’s settings.' : 'Notifications were not allowed.');
      }
      if (!this.vapid) this.vapid = await this.api.vapidKey();
      const key = decodeKey(this.vapid);
      const reg = await activated(await navigator.serviceWorker.register(WORKER_URL, { type: 'module', scope: WORKER_SCOPE }));
      let sub = await reg.pushManager.getSubscription();
      // Made for another server key (the server's was replaced): pushes would be refused.
      if (sub && !sameKey(sub.options.applicationServerKey, key)) {
        await sub.unsubscribe();
        sub = null;
      }
      sub ??= await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
      await this.register(sub);
      this.set('on');
    });
  }

  async disable() {
    await this.run(async () => {
      await this.forget();
      this.set(Notification.permission === 'denied' ? 'blocked' : 'off');
    });
  }

  /** Removes this device's subscription and target (turning off, signing out). */
  async forget() {
    const saved = this.saved;
    const sub = await this.subscription();
    await sub?.unsubscribe().catch(() => false);
    if (saved) {
      try {
        await this.api.removePushTarget(saved.id);
      } catch (e) {
        if (!(e instanceof ApiError && e.code === 'not_found')) throw e;
      }
    }
    save(this.key, null);
  }

  /** @param {() => Promise<void>} fn */
  async run(fn) {
    if (this.busy) return;
    this.busy = true;
    this.error = '';
    this.emit('change', this.state);
    try {
      await fn();
    } catch (e) {
      this.error = e instanceof ApiError ? describeError(e) : e instanceof Error && e.message ? e.message : 'Notifications could not be turned on.';
    } finally {
      this.busy = false;
      this.emit('change', this.state);
    }
  }
}

/**
 * Calls `open` when the service worker asks this page to show a conversation (a
 * notification was clicked). @param {(conv: string, seq: number | null) => void} open
 * @returns {() => void} stops listening
 */
export function onOpenRequest(open) {
  if (!('serviceWorker' in navigator)) return () => {};
  const handler = (/** @type {MessageEvent} */ e) => {
    const d = e.data;
    if (d && d.type === 'open' && typeof d.conv === 'string') open(d.conv, typeof d.seq === 'number' ? d.seq : null);
  };
  navigator.serviceWorker.addEventListener('message', handler);
  return () => navigator.serviceWorker.removeEventListener('message', handler);
}
