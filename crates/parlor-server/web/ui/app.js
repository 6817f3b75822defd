// The signed-in application: layout, routing (location.hash), connection status, toasts,
// keyboard shortcuts. Views subscribe to the store and re-render on change.

import { Store } from '../store.js';
import { Socket } from '../socket.js';
import { Media } from '../media.js';
import { Feed } from '../feed.js';
import { Mutes } from '../mutes.js';
import { WebPush, onOpenRequest } from '../push.js';
import { h, replace } from './dom.js';
import { icon } from './icons.js';
import { Sidebar } from './sidebar.js';
import { ConversationView } from './conversation.js';
import { DetailsPanel } from './details.js';
import { reloginDialog } from './auth.js';
import { go, parseRoute } from './route.js';

export class App {
  /**
   * @param {import('../api.js').Api} api
   * @param {HTMLElement} root
   * @param {() => void} onSignedOut
   */
  constructor(api, root, onSignedOut) {
    const me = api.user;
    if (!me) throw new Error('not signed in');
    this.api = api;
    this.root = root;
    this.onSignedOut = onSignedOut;
    this.socket = new Socket(api);
    this.store = new Store(api, this.socket, me);
    this.media = new Media(api);
    this.feed = new Feed(api, this.socket);
    this.mutes = new Mutes(api);
    this.push = new WebPush(api, me.id);
    /** @type {HTMLDialogElement | null} */
    this.relogin = null;

    this.status = h('div', { class: 'conn-status', role: 'status', 'aria-live': 'polite', hidden: true });
    this.toasts = h('div', { class: 'toasts', role: 'status', 'aria-live': 'polite' });
    this.sidebar = new Sidebar(this);
    this.conversation = new ConversationView(this);
    this.details = new DetailsPanel(this);
    this.shell = h(
      'div',
      { class: 'app', 'data-view': 'list' },
      h('a', { class: 'skip-link', href: '#composer-input' }, 'Skip to message box'),
      this.sidebar.el,
      this.conversation.el,
      this.details.el,
      this.status,
      this.toasts,
    );
    replace(root, this.shell);

    /** @type {(() => void)[]} */
    this.disposers = [
      this.store.on('toast', (t) => this.toast(t.text, t.kind)),
      this.mutes.on('change', (c) => this.store.changed({ list: true, conv: c.conv })),
      this.mutes.on('error', (text) => this.toast(text, 'error')),
      onOpenRequest((conv, seq) => this.openMessage(conv, seq)),
      this.socket.on('status', () => {
        this.renderStatus();
        this.sidebar.render();
        this.conversation.render();
      }),
      api.on('expired', (user) => this.sessionExpired(user)),
      api.on('signedOut', () => this.signOut(false)),
      api.on('session', () => {
        if (!this.socket.running) this.socket.start();
      }),
    ];
    this.onHash = () => this.route();
    window.addEventListener('hashchange', this.onHash);
    this.onKey = (/** @type {KeyboardEvent} */ e) => this.shortcuts(e);
    document.addEventListener('keydown', this.onKey);
    this.statusTimer = setInterval(() => this.renderStatus(), 1000);
    this.lastSeenTimer = setInterval(() => {
      this.conversation.render();
      this.sidebar.bell.render();
    }, 30_000);
  }

  async start() {
    this.sidebar.render();
    this.route();
    this.socket.start();
    try {
      await this.store.loadConversations();
    } catch {
      /* shown as empty; the socket's sync retries */
    }
    this.store.refreshPresence();
    this.store.probeSearch();
    this.feed.refresh();
    this.mutes.loadPreferences();
    this.push.init();
  }

  /** Shows a conversation at a message (a notification was chosen). @param {string} conv @param {number | null} seq */
  openMessage(conv, seq) {
    const r = parseRoute();
    if (seq && r.conv === conv && r.seq === seq && !r.details) this.store.jumpTo(conv, seq);
    else go(conv, seq ? { seq } : {});
  }

  route() {
    const r = parseRoute();
    this.shell.dataset.view = r.conv ? 'conv' : 'list';
    this.shell.classList.toggle('with-details', Boolean(r.conv && r.details));
    const changed = r.conv !== this.store.openId;
    if (changed) this.conversation.show(r.conv, r.seq);
    else if (r.conv && r.seq) this.store.jumpTo(r.conv, r.seq);
    this.details.show(r.conv && r.details ? r.conv : null);
    this.sidebar.render();
  }

  renderStatus() {
    const s = this.socket.status;
    const el = this.status;
    let text = '';
    /** @type {HTMLElement | null} */
    let action = null;
    let kind = 'warn';
    if (s.state === 'offline') {
      const secs = Math.max(0, Math.ceil(((s.retryAt ?? Date.now()) - Date.now()) / 1000));
      text = navigator.onLine === false ? 'You’re offline' : 'Connection lost';
      text += secs > 0 ? ` · retrying in ${secs}s` : ' · reconnecting…';
      action = h('button', { class: 'link-btn', type: 'button', onclick: () => this.socket.reconnectNow() }, 'Retry now');
    } else if (s.state === 'connecting' || s.state === 'syncing') {
      text = s.wasOnline ? 'Reconnecting…' : 'Connecting…';
      if (!s.wasOnline && this.store.listLoaded) text = '';
    } else if (s.state === 'online' && this.wasDown) {
      text = 'Back online';
      kind = 'ok';
      if (!this.okUntil) this.okUntil = Date.now() + 2500;
      if (Date.now() > this.okUntil) {
        this.wasDown = false;
        this.okUntil = 0;
        text = '';
      }
    }
    if (s.state === 'offline' || ((s.state === 'connecting' || s.state === 'syncing') && s.wasOnline)) {
      this.wasDown = true;
      this.okUntil = 0;
    }
    const key = `${kind}|${text}|${Boolean(action)}`;
    if (el.dataset.key === key) return;
    el.dataset.key = key;
    el.hidden = !text;
    el.className = `conn-status ${kind}`;
    replace(el, text ? icon(kind === 'ok' ? 'check' : 'wifiOff') : null, h('span', {}, text), action);
  }

  /** @type {boolean} */
  wasDown = false;
  okUntil = 0;

  /** @param {string} text @param {'error' | 'info'} [kind] */
  toast(text, kind = 'info') {
    const t = h('div', { class: `toast ${kind}` }, text);
    this.toasts.appendChild(t);
    setTimeout(() => t.classList.add('leaving'), 4200);
    setTimeout(() => t.remove(), 4600);
  }

  /** @param {import('../types.js').User} user */
  sessionExpired(user) {
    this.socket.stop();
    if (this.relogin) return;
    this.relogin = reloginDialog(this.api, user, {
      onDone: () => {
        this.relogin = null;
        this.socket.start();
        this.store.loadConversations().catch(() => {});
      },
      onSwitch: () => {
        this.relogin = null;
        this.signOut(true);
      },
    });
  }

  /** @param {boolean} callServer */
  async signOut(callServer) {
    this.dispose();
    if (callServer) {
      // This browser must stop receiving the user's pushes once they are signed out.
      await this.push.forget().catch(() => {});
      await this.api.logout();
    }
    this.onSignedOut();
  }

  dispose() {
    this.socket.stop();
    this.store.dispose();
    this.feed.dispose();
    this.sidebar.bell.dispose();
    this.sidebar.menu.dispose();
    for (const d of this.disposers) d();
    window.removeEventListener('hashchange', this.onHash);
    document.removeEventListener('keydown', this.onKey);
    clearInterval(this.statusTimer);
    clearInterval(this.lastSeenTimer);
    this.conversation.dispose();
    this.media.clear();
  }

  /** @param {KeyboardEvent} e */
  shortcuts(e) {
    if (document.querySelector('dialog[open]')) return;
    const target = /** @type {HTMLElement} */ (e.target);
    const typing = target.closest('input, textarea, [contenteditable]');
    if ((e.key === 'k' && (e.ctrlKey || e.metaKey)) || (e.key === '/' && !typing)) {
      e.preventDefault();
      this.sidebar.focusSearch();
    } else if (e.altKey && (e.key === 'ArrowUp' || e.key === 'ArrowDown')) {
      e.preventDefault();
      const list = this.store.sortedConversations();
      const i = list.findIndex((c) => c.info.id === this.store.openId);
      const next = list[Math.min(list.length - 1, Math.max(0, i + (e.key === 'ArrowUp' ? -1 : 1)))];
      if (next) go(next.info.id);
    } else if (e.key === 'Escape' && !typing && this.store.openId) {
      const r = parseRoute();
      if (r.details) go(r.conv);
      else if (window.matchMedia('(max-width: 760px)').matches) go(null);
    }
  }
}
