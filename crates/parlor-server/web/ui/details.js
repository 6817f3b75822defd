// The details panel of a conversation: its notification settings, members with roles
// and presence, adding and removing members, admin roles, leaving a group.

import { ApiError, describeError } from '../api.js';
import { frameScheduler, h, replace } from './dom.js';
import { ago, avatar } from './format.js';
import { icon } from './icons.js';
import { go } from './route.js';
import { presenceClass } from './sidebar.js';
import { confirmDialog } from './dialogs.js';
import { muteSection } from './mute.js';

export class DetailsPanel {
  /** @param {import('./app.js').App} app */
  constructor(app) {
    this.app = app;
    /** @type {string | null} */
    this.convId = null;
    this.error = '';
    /** @type {HTMLFormElement | null} */
    this.addFormEl = null;
    this.lastSig = '';
    this.body = h('div', { class: 'details-body' });
    this.el = h(
      'aside',
      { class: 'details', 'aria-labelledby': 'details-title', hidden: true },
      h(
        'header',
        { class: 'details-header' },
        h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Close details', onclick: () => go(this.convId) }, icon('close')),
        h('h2', { id: 'details-title' }, 'Details'),
      ),
      this.body,
    );
    this.render = frameScheduler(() => this.draw());
    app.store.on('change', (c) => {
      if (this.convId && (c.conv === this.convId || c.list)) this.render();
    });
    app.mutes.on('change', (c) => {
      if (this.convId && c.conv === this.convId) this.render();
    });
  }

  /** @param {string | null} convId */
  show(convId) {
    const changed = convId !== this.convId;
    this.convId = convId;
    this.el.hidden = !convId;
    if (!convId) return;
    if (changed) {
      this.error = '';
      this.addFormEl = null;
      this.app.store.loadDetail(convId);
      this.draw();
      queueMicrotask(() => /** @type {HTMLElement | null} */ (this.el.querySelector('.details-header .icon-btn'))?.focus());
    }
  }

  draw() {
    const store = this.app.store;
    const c = this.convId ? store.convs.get(this.convId) : null;
    if (!c) {
      replace(this.body);
      this.lastSig = '';
      return;
    }
    const title = store.title(c);
    const me = store.me.id;
    const members = c.members ?? [];
    const myRole = members.find((m) => m.user.id === me)?.role;
    const group = c.info.kind === 'group';
    /** @type {Node[]} */
    const parts = [
      h(
        'div',
        { class: 'details-hero' },
        avatar(title, { size: 'lg', group }),
        h('p', { class: 'details-name' }, title),
        h('p', { class: 'muted' }, group ? `Group · ${members.length || c.info.member_count} members` : 'Direct message'),
      ),
    ];
    if (!group && c.info.peer) {
      const p = store.presence.get(c.info.peer.id);
      const line = p?.online ? 'Online now' : p?.last_seen ? `Last seen ${ago(p.last_seen)}` : null;
      if (line) parts.push(h('p', { class: 'details-line' }, line));
    }
    if (!c.left) parts.push(...muteSection(this.app, c.info.id));
    if (group) {
      const canAdd = myRole === 'owner' || myRole === 'admin';
      if (canAdd && !c.left) {
        if (!this.addFormEl) this.addFormEl = this.addForm(c.info.id);
        parts.push(this.addFormEl);
      }
      const sorted = [...members].sort((a, b) => rank(a.role) - rank(b.role) || a.user.username.localeCompare(b.user.username));
      parts.push(
        h('h3', { class: 'details-section' }, `Members`),
        h(
          'ul',
          { class: 'member-list', 'aria-label': 'Members' },
          c.members == null
            ? h('li', { class: 'muted' }, 'Loading…')
            : sorted.map((m) => {
                const self = m.user.id === me;
                const pres = presenceClass(store, m.user.id);
                const canRemove = !self && (myRole === 'owner' || (myRole === 'admin' && m.role === 'member'));
                const canPromote = myRole === 'owner' && !self && m.role !== 'owner';
                return h(
                  'li',
                  { class: 'member', dataset: { user: m.user.id } },
                  avatar(m.user.username, { size: 'sm', presence: pres === 'offline' ? null : pres }),
                  h('span', { class: 'member-name' }, self ? `${m.user.username} (you)` : m.user.username),
                  m.role !== 'member' ? h('span', { class: `role role-${m.role}` }, m.role) : null,
                  h(
                    'span',
                    { class: 'member-actions' },
                    canPromote
                      ? h(
                          'button',
                          {
                            type: 'button',
                            class: 'btn btn-small btn-ghost',
                            onclick: () => this.act(() => store.api.setRole(c.info.id, m.user.id, m.role === 'admin' ? 'member' : 'admin')),
                          },
                          m.role === 'admin' ? 'Remove admin' : 'Make admin',
                        )
                      : null,
                    canRemove
                      ? h(
                          'button',
                          {
                            type: 'button',
                            class: 'btn btn-small btn-ghost danger',
                            'aria-label': `Remove ${m.user.username} from the group`,
                            onclick: async () => {
                              const ok = await confirmDialog({
                                title: `Remove ${m.user.username}?`,
                                body: `${m.user.username} will no longer see new messages in ${title}.`,
                                confirm: 'Remove',
                                danger: true,
                              });
                              if (ok) this.act(() => store.api.removeMember(c.info.id, m.user.id));
                            },
                          },
                          'Remove',
                        )
                      : null,
                  ),
                );
              }),
        ),
      );
      if (!c.left) {
        parts.push(
          h(
            'button',
            {
              type: 'button',
              class: 'btn btn-danger-ghost btn-block',
              id: 'leave-group',
              onclick: async () => {
                const ok = await confirmDialog({
                  title: `Leave ${title}?`,
                  body: 'You will stop receiving its messages. Someone will have to add you back.',
                  confirm: 'Leave group',
                  danger: true,
                });
                if (!ok) return;
                try {
                  await store.api.leave(c.info.id);
                  c.left = true;
                  store.convs.delete(c.info.id);
                  store.changed({ list: true });
                  go(null);
                  this.app.toast(`You left ${title}.`);
                } catch (e) {
                  this.error = describeError(e);
                  this.draw();
                }
              },
            },
            icon('logout'),
            'Leave group',
          ),
        );
      }
    }
    if (this.error) parts.push(h('p', { class: 'form-error', role: 'alert' }, this.error));
    // Re-rendering detaches the buttons under the pointer (and can swallow a click):
    // only touch the DOM when something visible changed.
    const sig = parts.map((p) => (p === this.addFormEl ? '[form]' : p instanceof Element ? p.outerHTML : '')).join('');
    if (sig === this.lastSig && this.body.childNodes.length === parts.length) return;
    this.lastSig = sig;
    replace(this.body, parts);
  }

  /** @param {() => Promise<unknown>} fn */
  async act(fn) {
    this.error = '';
    try {
      await fn();
      if (this.convId) await this.app.store.loadDetail(this.convId);
    } catch (e) {
      this.error = describeError(e);
    }
    this.draw();
  }

  /** @param {string} conv */
  addForm(conv) {
    const input = h('input', {
      id: 'add-member-input',
      autocomplete: 'off',
      autocapitalize: 'none',
      spellcheck: 'false',
      placeholder: 'Username',
      'aria-label': 'Username to add',
    });
    const store = this.app.store;
    const form = h(
      'form',
      {
        class: 'add-member',
        onsubmit: async (/** @type {SubmitEvent} */ e) => {
          e.preventDefault();
          const name = input.value.trim().replace(/^@/, '');
          if (!name) return;
          this.error = '';
          try {
            const user = await store.api.userByName(name);
            store.rememberUser(user);
            await store.api.addMember(conv, user.id);
            await store.loadDetail(conv);
            this.app.toast(`${user.username} was added.`);
            input.value = '';
          } catch (err) {
            this.error = err instanceof ApiError && err.code === 'not_found' ? `No one is called “${name}”.` : describeError(err);
            this.draw();
            input.focus();
          }
        },
      },
      h('label', { for: 'add-member-input', class: 'details-section' }, 'Add people'),
      h('div', { class: 'inline-form' }, input, h('button', { type: 'submit', class: 'btn btn-primary btn-small' }, 'Add')),
    );
    return form;
  }
}

/** @param {string} role */
function rank(role) {
  return role === 'owner' ? 0 : role === 'admin' ? 1 : 2;
}
