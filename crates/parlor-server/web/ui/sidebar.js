// The sidebar: who I am, search, the conversation list (by activity, with unread badges,
// presence dots and typing), and the button to start a conversation.

import { describeError } from '../api.js';
import { debounce } from '../util.js';
import { frameScheduler, h, reconcile, replace } from './dom.js';
import { avatar, highlighted, listTime } from './format.js';
import { icon } from './icons.js';
import { go } from './route.js';
import { newConversationDialog } from './dialogs.js';
import { attachmentSummary } from './attachments.js';
import { Bell } from './bell.js';
import { UserMenu } from './usermenu.js';

/** @typedef {import('../store.js').Conv} Conv */

/** Presence class for a user: `online`, `away`, `dnd` or null when unknown/offline. @param {import('../store.js').Store} store @param {string} user */
export function presenceClass(store, user) {
  const p = store.presence.get(user);
  // While we are disconnected, what we knew may be stale: show nothing rather than a lie.
  if (!p || !store.socket.online) return null;
  if (!p.online) return 'offline';
  if (p.status === 'away') return 'away';
  if (p.status === 'do_not_disturb') return 'dnd';
  return 'online';
}

export class Sidebar {
  /** @param {import('./app.js').App} app */
  constructor(app) {
    this.app = app;
    const store = app.store;
    const me = store.me;
    /** @type {import('../types.js').SearchResult[] | null} */
    this.results = null;
    this.query = '';
    this.searchError = '';
    this.searching = false;
    /** @type {Map<string, HTMLElement>} */
    this.itemCache = new Map();
    this.listUl = h('ul', { class: 'conv-list', role: 'list' });
    this.listNav = h('nav', { 'aria-label': 'Conversation list' }, this.listUl);
    /** @type {HTMLSelectElement} */
    this.statusSelect = h('select');
    /** @type {HTMLElement} */
    this.meAvatar = h('span');
    this.bell = new Bell(app);
    this.menu = new UserMenu(app);

    this.search = h('input', {
      type: 'search',
      class: 'search-input',
      id: 'search-input',
      placeholder: 'Search messages',
      'aria-label': 'Search messages',
      autocomplete: 'off',
      oninput: () => this.onSearchInput(),
      onkeydown: (/** @type {KeyboardEvent} */ e) => {
        if (e.key === 'Escape') {
          this.clearSearch();
        } else if (e.key === 'ArrowDown') {
          e.preventDefault();
          /** @type {HTMLElement | null} */ (this.list.querySelector('a, button'))?.focus();
        }
      },
    });
    this.searchBox = h('div', { class: 'search', role: 'search' }, icon('search', 'icon search-icon'), this.search);
    this.list = h('div', { class: 'conv-scroll', onkeydown: (/** @type {KeyboardEvent} */ e) => this.listKeys(e) });
    this.el = h(
      'aside',
      { class: 'sidebar', 'aria-label': 'Conversations' },
      h(
        'header',
        { class: 'sidebar-header' },
        h('div', { class: 'brand' }, h('span', { class: 'brand-mark' }, icon('chat')), 'Parlor'),
        h(
          'div',
          { class: 'sidebar-actions' },
          this.bell.el,
          h(
            'button',
            {
              class: 'icon-btn primary',
              type: 'button',
              id: 'new-conversation',
              'aria-label': 'New conversation',
              title: 'New conversation',
              onclick: () => newConversationDialog(app),
            },
            icon('plus'),
          ),
        ),
      ),
      this.searchBox,
      this.list,
      h(
        'footer',
        { class: 'sidebar-footer' },
        this.meAvatar = h('span', { class: 'me-avatar' }, avatar(me.username, { size: 'sm' })),
        h(
          'span',
          { class: 'me-info' },
          h('span', { class: 'me-name', id: 'me-name' }, me.username),
          (this.statusSelect = h(
            'select',
            {
              class: 'status-select',
              id: 'status-select',
              'aria-label': 'Your status',
              onchange: () => store.setStatus(/** @type {import('../types.js').Availability} */ (this.statusSelect.value)),
            },
            h('option', { value: 'available' }, 'Available'),
            h('option', { value: 'away' }, 'Away'),
            h('option', { value: 'do_not_disturb' }, 'Do not disturb'),
          )),
        ),
        this.menu.button,
        h(
          'button',
          {
            class: 'icon-btn',
            type: 'button',
            'aria-label': 'Log out',
            title: 'Log out',
            id: 'logout',
            onclick: () => app.signOut(true),
          },
          icon('logout'),
        ),
      ),
      this.menu.panel,
    );
    this.render = frameScheduler(() => this.draw());
    store.on('change', (c) => {
      if (c.list || c.conv) this.render();
    });
    this.runSearch = debounce(() => this.doSearch(), 250);
  }

  focusSearch() {
    if (this.searchBox.hidden) return;
    if (this.app.shell.dataset.view === 'conv' && window.matchMedia('(max-width: 760px)').matches) go(null);
    this.search.focus();
    this.search.select();
  }

  clearSearch() {
    this.search.value = '';
    this.query = '';
    this.results = null;
    this.searchError = '';
    this.runSearch.cancel();
    this.draw();
  }

  onSearchInput() {
    this.query = this.search.value.trim();
    if (!this.query) {
      this.clearSearch();
      return;
    }
    this.searching = true;
    this.runSearch();
    this.draw();
  }

  async doSearch() {
    const q = this.query;
    if (!q) return;
    try {
      const res = await this.app.api.search(q, { limit: 30 });
      if (q !== this.query) return;
      this.results = res.results;
      this.searchError = '';
    } catch (e) {
      if (q !== this.query) return;
      this.results = [];
      this.searchError = describeError(e);
    }
    this.searching = false;
    this.draw();
  }

  /** Arrow keys move between items. @param {KeyboardEvent} e */
  listKeys(e) {
    if (e.key !== 'ArrowDown' && e.key !== 'ArrowUp' && e.key !== 'Home' && e.key !== 'End') return;
    const items = /** @type {HTMLElement[]} */ ([...this.list.querySelectorAll('.conv-item, .result-item')]);
    const i = items.indexOf(/** @type {HTMLElement} */ (document.activeElement));
    if (i < 0) return;
    e.preventDefault();
    let next = i;
    if (e.key === 'ArrowDown') next = Math.min(items.length - 1, i + 1);
    if (e.key === 'ArrowUp') {
      if (i === 0 && !this.searchBox.hidden) {
        this.search.focus();
        return;
      }
      next = Math.max(0, i - 1);
    }
    if (e.key === 'Home') next = 0;
    if (e.key === 'End') next = items.length - 1;
    items[next]?.focus();
  }

  draw() {
    const store = this.app.store;
    this.searchBox.hidden = store.features.search === false;
    const mine = store.presence.get(store.me.id);
    this.statusSelect.hidden = store.features.presence !== true;
    if (mine?.status && document.activeElement !== this.statusSelect) this.statusSelect.value = mine.status;
    const dot = mine ? presenceClass(store, store.me.id) : null;
    replace(this.meAvatar, avatar(store.me.username, { size: 'sm', presence: dot === 'offline' ? null : dot }));
    const focused = /** @type {HTMLElement | null} */ (document.activeElement)?.dataset?.key;
    if (this.query) this.drawResults();
    else this.drawList();
    if (focused && this.list.contains(document.activeElement) === false) {
      /** @type {HTMLElement | null} */ (this.list.querySelector(`[data-key="${CSS.escape(focused)}"]`))?.focus();
    }
  }

  drawList() {
    const store = this.app.store;
    const convs = store.sortedConversations();
    if (!store.listLoaded && convs.length === 0) {
      replace(this.list, h('div', { class: 'list-skeleton', 'aria-hidden': 'true' }, [1, 2, 3, 4].map(() => h('div', { class: 'skeleton-row' }))));
      return;
    }
    if (convs.length === 0) {
      replace(
        this.list,
        h(
          'div',
          { class: 'list-empty' },
          h('p', { class: 'list-empty-title' }, 'No conversations yet'),
          h('p', {}, 'Start a chat with someone by their username, or create a group.'),
          h('button', { class: 'btn btn-primary', type: 'button', onclick: () => newConversationDialog(this.app) }, 'Start a conversation'),
        ),
      );
      return;
    }
    // Keep the nodes of unchanged items (focus, hover and a click in progress survive).
    /** @type {Map<string, HTMLElement>} */
    const next = new Map();
    const items = convs.map((c) => {
      const fresh = this.item(c);
      const old = this.itemCache.get(c.info.id);
      const node = old && old.outerHTML === fresh.outerHTML ? old : fresh;
      next.set(c.info.id, node);
      return node;
    });
    this.itemCache = next;
    if (!this.listNav.isConnected || this.list.firstChild !== this.listNav) replace(this.list, this.listNav);
    reconcile(this.listUl, items);
  }

  /** @param {Conv} c */
  item(c) {
    const store = this.app.store;
    const info = c.info;
    const title = store.title(c);
    const last = info.last_message;
    const active = store.openId === info.id;
    const pending = store.pendingFor(info.id);
    const typingUsers = [...c.typing.keys()];
    /** @type {(Node | string)[]} */
    let preview = [];
    if (typingUsers.length) {
      preview = [h('span', { class: 'typing-text' }, info.kind === 'direct' ? 'typing…' : `${store.userName(typingUsers[0])} is typing…`)];
    } else if (pending.some((p) => p.state === 'failed')) {
      preview = [h('span', { class: 'failed-text' }, icon('alert', 'icon icon-xs'), ' Not sent')];
    } else if (pending.length) {
      const p = pending[pending.length - 1];
      preview = [h('span', { class: 'muted' }, icon('clock', 'icon icon-xs'), ' ', previewText(p.text, p.attachments))];
    } else if (last) {
      const who = last.sender === store.me.id ? 'You: ' : info.kind === 'group' ? `${store.userName(last.sender)}: ` : '';
      preview = [who, last.deleted ? h('em', {}, 'Message deleted') : previewText(last.text, last.attachments)];
    } else {
      preview = [h('span', { class: 'muted' }, info.kind === 'group' ? `${info.member_count || ''} members`.trim() : 'Say hello 👋')];
    }
    const presence = info.kind === 'direct' && info.peer ? presenceClass(store, info.peer.id) : null;
    const unread = active ? 0 : info.unread;
    const muted = this.app.mutes.muted(info.id);
    const label = `${title}${unread ? `, ${unread} unread message${unread === 1 ? '' : 's'}` : ''}${
      presence === 'online' ? ', online' : ''
    }${muted ? ', muted' : ''}`;
    return h(
      'li',
      {},
      h(
        'a',
        {
          class: `conv-item${active ? ' active' : ''}${unread ? ' unread' : ''}${muted ? ' is-muted' : ''}`,
          href: `#/c/${info.id}`,
          'aria-current': active ? 'page' : null,
          'aria-label': label,
          dataset: { key: `c${info.id}`, conv: info.id },
        },
        avatar(title, { group: info.kind === 'group', presence: presence === 'offline' ? null : presence }),
        h(
          'span',
          { class: 'conv-main' },
          h(
            'span',
            { class: 'conv-top' },
            h('span', { class: 'conv-name' }, title),
            muted ? icon('bellOff', 'icon icon-xs conv-muted') : null,
            h('span', { class: 'conv-time' }, last ? listTime(last.ts) : ''),
          ),
          h(
            'span',
            { class: 'conv-bottom' },
            h('span', { class: 'conv-preview' }, preview),
            unread ? h('span', { class: 'badge', 'aria-hidden': 'true' }, unread > 99 ? '99+' : String(unread)) : null,
          ),
        ),
      ),
    );
  }

  drawResults() {
    const store = this.app.store;
    if (this.results == null || (this.searching && this.results.length === 0)) {
      replace(this.list, h('p', { class: 'list-note', role: 'status' }, 'Searching…'));
      return;
    }
    if (this.searchError) {
      replace(this.list, h('p', { class: 'list-note', role: 'alert' }, this.searchError));
      return;
    }
    if (this.results.length === 0) {
      replace(this.list, h('p', { class: 'list-note', role: 'status' }, `No messages match “${this.query}”.`));
      return;
    }
    const items = this.results.map((r) => {
      const m = r.message;
      const c = store.convs.get(m.conv);
      const where = c ? store.title(c) : 'Conversation';
      return h(
        'li',
        {},
        h(
          'button',
          {
            type: 'button',
            class: 'result-item',
            dataset: { key: `r${m.id}` },
            onclick: () => {
              if (location.hash === `#/c/${m.conv}/${m.seq}`) this.app.store.jumpTo(m.conv, m.seq);
              else go(m.conv, { seq: m.seq });
            },
          },
          h(
            'span',
            { class: 'conv-top' },
            h('span', { class: 'conv-name' }, where),
            h('span', { class: 'conv-time' }, listTime(m.ts)),
          ),
          h(
            'span',
            { class: 'result-snippet' },
            h('strong', {}, m.sender === store.me.id ? 'You' : store.userName(m.sender)),
            ': ',
            highlighted(r.snippet || m.text, r.snippet ? r.highlights : undefined, this.query),
          ),
        ),
      );
    });
    replace(
      this.list,
      h('p', { class: 'list-note', role: 'status' }, `${this.results.length} result${this.results.length === 1 ? '' : 's'}`),
      h('ul', { class: 'conv-list', role: 'list', 'aria-label': 'Search results' }, items),
    );
  }
}

/**
 * A message in one line: its text, or what it carries when it is only files
 * ("📎 cat.png"); a clip in front of text that comes with files.
 * @param {string} text
 * @param {import('../types.js').Attachment[] | undefined} attachments
 */
function previewText(text, attachments) {
  if (!attachments?.length) return text;
  return text.trim() ? `📎 ${text}` : attachmentSummary(attachments);
}
