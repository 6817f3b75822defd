// The bell in the sidebar header: how many notifications are unread, and the panel that
// lists them (who, where, what, when). A click on one opens its conversation at the
// message and marks it read.

import { describeError } from '../api.js';
import { frameScheduler, h, reconcile, replace } from './dom.js';
import { ago, avatar } from './format.js';
import { icon } from './icons.js';

/** @typedef {import('../types.js').NotificationView} NotificationView */

export class Bell {
  /** @param {import('./app.js').App} app */
  constructor(app) {
    this.app = app;
    this.open = false;
    /** @type {Map<string, HTMLElement>} */
    this.itemCache = new Map();
    this.count = h('span', { class: 'bell-count', 'aria-hidden': 'true', hidden: true });
    this.glyph = h('span', { class: 'bell-glyph' }, icon('bell'));
    this.button = h(
      'button',
      {
        type: 'button',
        class: 'icon-btn bell-btn',
        id: 'notifications-button',
        'aria-haspopup': 'dialog',
        'aria-expanded': 'false',
        'aria-controls': 'notifications-panel',
        onclick: () => this.toggle(),
      },
      this.glyph,
      this.count,
    );
    this.markAll = h(
      'button',
      {
        type: 'button',
        class: 'link-btn',
        id: 'mark-all-read',
        onclick: () => app.feed.markAllRead().catch((e) => app.toast(describeError(e), 'error')),
      },
      'Mark all read',
    );
    this.list = h('ul', { class: 'notif-list', role: 'list' });
    this.empty = h('p', { class: 'list-note notif-empty' }, 'Nothing yet. When someone mentions you or replies to you, it shows up here.');
    this.more = h(
      'button',
      { type: 'button', class: 'btn btn-ghost btn-small btn-block', id: 'notifications-older', onclick: () => this.loadOlder() },
      'Load older',
    );
    this.panel = h(
      'section',
      {
        class: 'notif-panel',
        id: 'notifications-panel',
        role: 'dialog',
        'aria-labelledby': 'notifications-title',
        hidden: true,
      },
      h('header', { class: 'notif-head' }, h('h2', { id: 'notifications-title' }, 'Notifications'), this.markAll),
      h('div', { class: 'notif-scroll' }, this.list, this.empty, this.more),
    );
    this.el = h(
      'div',
      {
        class: 'bell',
        onkeydown: (/** @type {KeyboardEvent} */ e) => {
          if (e.key !== 'Escape' || !this.open) return;
          // Not the app's Escape (which leaves the conversation).
          e.stopPropagation();
          this.close(true);
        },
      },
      this.button,
      this.panel,
    );
    this.render = frameScheduler(() => this.draw());
    app.feed.on('change', () => this.render());
    app.mutes.on('change', () => this.render());
    app.store.on('change', (c) => {
      // Names of senders and conversations arrive later than the notifications.
      if (this.open && c.list) this.render();
    });
    this.onOutside = (/** @type {PointerEvent} */ e) => {
      if (this.open && !this.el.contains(/** @type {Node} */ (e.target))) this.close(false);
    };
    document.addEventListener('pointerdown', this.onOutside);
  }

  dispose() {
    document.removeEventListener('pointerdown', this.onOutside);
  }

  toggle() {
    if (this.open) this.close(true);
    else this.show();
  }

  show() {
    this.open = true;
    this.panel.hidden = false;
    this.button.setAttribute('aria-expanded', 'true');
    this.draw();
    queueMicrotask(() => (/** @type {HTMLElement | null} */ (this.panel.querySelector('.notif-item')) ?? this.button).focus());
  }

  /** @param {boolean} refocus */
  close(refocus) {
    if (!this.open) return;
    this.open = false;
    this.panel.hidden = true;
    this.button.setAttribute('aria-expanded', 'false');
    if (refocus) this.button.focus();
  }

  async loadOlder() {
    try {
      await this.app.feed.loadOlder();
    } catch (e) {
      this.app.toast(describeError(e), 'error');
    }
  }

  draw() {
    const { feed, mutes } = this.app;
    this.el.hidden = !feed.supported;
    const n = feed.unread;
    this.count.hidden = n === 0;
    this.count.textContent = n > 99 ? '99+' : String(n);
    const quiet = mutes.doNotDisturb;
    replace(this.glyph, icon(quiet ? 'bellOff' : 'bell'));
    const label = `Notifications${n ? `, ${n} unread` : ''}${quiet ? ', do not disturb is on' : ''}`;
    this.button.setAttribute('aria-label', label);
    this.button.title = quiet ? 'Notifications (do not disturb is on)' : 'Notifications';
    if (!this.open) return;
    this.markAll.hidden = n === 0;
    this.empty.hidden = !feed.loaded || feed.items.length > 0;
    this.more.hidden = !feed.nextBefore;
    this.more.disabled = feed.loadingOlder;
    this.more.textContent = feed.loadingOlder ? 'Loading…' : 'Load older';
    // Keep the nodes of unchanged items: a click in progress must not lose its target.
    /** @type {Map<string, HTMLElement>} */
    const next = new Map();
    const items = feed.items.map((item) => {
      const fresh = this.item(item);
      const old = this.itemCache.get(item.id);
      const node = old && old.outerHTML === fresh.outerHTML ? old : fresh;
      next.set(item.id, node);
      return node;
    });
    this.itemCache = next;
    reconcile(this.list, items);
  }

  /** @param {NotificationView} n */
  item(n) {
    const store = this.app.store;
    const who = store.userName(n.sender);
    const c = store.convs.get(n.conv);
    const where = c && c.info.kind === 'group' ? store.title(c) : null;
    const what = n.kind === 'reply' ? 'replied to you' : 'mentioned you';
    const when = ago(n.ts);
    return h(
      'li',
      {},
      h(
        'button',
        {
          type: 'button',
          class: `notif-item${n.read ? '' : ' unread'}`,
          dataset: { id: n.id, conv: n.conv, kind: n.kind },
          'aria-label': `${who} ${what}${where ? ` in ${where}` : ''}: ${n.preview}. ${when}${n.read ? '' : '. Unread'}`,
          onclick: () => this.choose(n),
        },
        avatar(who, { size: 'sm' }),
        h(
          'span',
          { class: 'notif-main' },
          h('span', { class: 'notif-line' }, h('strong', {}, who), ` ${what}`, where ? [' in ', h('strong', {}, where)] : null),
          h('span', { class: 'notif-preview' }, n.preview),
          h('span', { class: 'notif-time' }, when),
        ),
        n.read ? null : h('span', { class: 'notif-dot', 'aria-hidden': 'true' }),
      ),
    );
  }

  /** @param {NotificationView} n */
  choose(n) {
    this.close(false);
    this.app.openMessage(n.conv, n.seq);
    this.app.feed.markRead([n.id]).catch((e) => this.app.toast(describeError(e), 'error'));
  }
}
