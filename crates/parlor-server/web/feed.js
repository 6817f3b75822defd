// The in-app notification feed: mentions of the user and replies to them, newest first,
// and how many are unread. Frames missed while offline are not replayed, so the first
// page is fetched again after every reconnect; live `notification` and
// `notifications_read` frames keep it current in between, and so read state follows the
// user across devices.

import { isMissingEndpoint } from './api.js';
import { Emitter, cmpId } from './util.js';

/** @typedef {import('./types.js').NotificationView} NotificationView */

const PAGE = 30;

/** @extends {Emitter<{ change: null }>} */
export class Feed extends Emitter {
  /**
   * @param {import('./api.js').Api} api
   * @param {import('./socket.js').Socket} socket
   */
  constructor(api, socket) {
    super();
    this.api = api;
    /** @type {NotificationView[]} newest first */
    this.items = [];
    this.unread = 0;
    /** @type {string | null} where the next older page starts; null on the last page */
    this.nextBefore = null;
    this.loaded = false;
    this.loadingOlder = false;
    /** False when the server has no feed (an older version). */
    this.supported = true;
    /** Ids that arrived live while a refresh was on its way: the page may predate them. */
    this.arrivedDuringRefresh = /** @type {Map<string, NotificationView> | null} */ (null);
    this.disposers = [
      socket.on('frame', (f) => {
        if (f.type === 'notification') {
          const { type: _t, ...n } = f;
          this.add(n);
        } else if (f.type === 'notifications_read') {
          this.applyRead(f.ids, f.unread);
        }
      }),
      socket.on('synced', (s) => {
        if (!s.first) this.refresh();
      }),
    ];
  }

  dispose() {
    for (const d of this.disposers) d();
  }

  get newestId() {
    return this.items[0]?.id ?? null;
  }

  async refresh() {
    if (!this.supported) return;
    const live = new Map();
    this.arrivedDuringRefresh = live;
    try {
      const page = await this.api.notifications({ limit: PAGE });
      const newest = page.notifications[0]?.id;
      const known = new Set(page.notifications.map((n) => n.id));
      const later = [...live.values()].filter((n) => !known.has(n.id) && (!newest || cmpId(n.id, newest) > 0));
      this.items = sortNewestFirst([...later, ...page.notifications]);
      this.unread = page.unread + later.filter((n) => !n.read).length;
      this.nextBefore = page.next_before ?? null;
      this.loaded = true;
    } catch (e) {
      if (isMissingEndpoint(e)) this.supported = false;
    } finally {
      if (this.arrivedDuringRefresh === live) this.arrivedDuringRefresh = null;
      this.emit('change', null);
    }
  }

  async loadOlder() {
    if (!this.nextBefore || this.loadingOlder) return;
    this.loadingOlder = true;
    this.emit('change', null);
    try {
      const page = await this.api.notifications({ before: this.nextBefore, limit: PAGE });
      const known = new Set(this.items.map((n) => n.id));
      this.items = sortNewestFirst([...this.items, ...page.notifications.filter((n) => !known.has(n.id))]);
      this.nextBefore = page.next_before ?? null;
    } finally {
      this.loadingOlder = false;
      this.emit('change', null);
    }
  }

  /** @param {NotificationView} n */
  add(n) {
    this.arrivedDuringRefresh?.set(n.id, n);
    if (this.items.some((x) => x.id === n.id)) return;
    this.items = sortNewestFirst([n, ...this.items]);
    if (!n.read) this.unread++;
    this.emit('change', null);
  }

  /** @param {string[]} ids @param {number} unread the server's count after the change */
  applyRead(ids, unread) {
    const set = new Set(ids);
    this.items = this.items.map((n) => (set.has(n.id) && !n.read ? { ...n, read: true } : n));
    this.unread = unread;
    this.emit('change', null);
  }

  /** @param {string[]} ids */
  async markRead(ids) {
    const unread = ids.filter((id) => this.items.some((n) => n.id === id && !n.read));
    if (unread.length === 0) return;
    // Shown read at once; the answer (and the frame to every device) brings the count.
    this.applyRead(unread, Math.max(0, this.unread - unread.length));
    await this.settle(this.api.markNotificationsRead({ ids: unread }));
  }

  async markAllRead() {
    const newest = this.newestId;
    if (!newest) return;
    this.applyRead(
      this.items.map((n) => n.id),
      0,
    );
    await this.settle(this.api.markNotificationsRead({ up_to: newest }));
  }

  /**
   * Applies the server's answer to a change already shown; when it failed, what the
   * server has replaces what was shown.
   * @param {Promise<import('./types.js').NotificationsRead>} request
   */
  async settle(request) {
    try {
      const answer = await request;
      this.applyRead(answer.ids, answer.unread);
    } catch (e) {
      await this.refresh();
      throw e;
    }
  }
}

/** @param {NotificationView[]} list */
function sortNewestFirst(list) {
  return list.sort((a, b) => cmpId(b.id, a.id));
}
