// Modal dialogs (native <dialog>: focus is trapped, Escape closes): new conversation,
// confirmation.

import { ApiError, describeError } from '../api.js';
import { h, replace } from './dom.js';
import { icon } from './icons.js';
import { go } from './route.js';

/** @param {HTMLDialogElement} dialog */
function mount(dialog) {
  document.body.appendChild(dialog);
  dialog.addEventListener('close', () => dialog.remove());
  dialog.addEventListener('click', (e) => {
    // A click on the backdrop (outside the body) closes the dialog.
    if (e.target === dialog) dialog.close();
  });
  dialog.showModal();
}

/** @param {unknown} err @param {string} name */
function userError(err, name) {
  if (err instanceof ApiError && err.code === 'not_found') return `No one is called “${name}”.`;
  return describeError(err);
}

/**
 * Looks up a user by name. @param {import('./app.js').App} app @param {string} name
 * @returns {Promise<import('../types.js').User>}
 */
async function lookup(app, name) {
  const user = await app.api.userByName(name);
  app.store.rememberUser(user);
  return user;
}

/** @param {import('./app.js').App} app @param {'direct' | 'group'} [initial] */
export function newConversationDialog(app, initial = 'direct') {
  let mode = initial;
  const dialog = h('dialog', { class: 'dialog', 'aria-labelledby': 'new-conv-title', id: 'new-conversation-dialog' });

  // Direct
  const directName = h('input', { id: 'direct-username', autocomplete: 'off', autocapitalize: 'none', spellcheck: 'false', required: true, 'aria-describedby': 'direct-error' });
  const directError = h('p', { class: 'form-error', role: 'alert', id: 'direct-error' });
  const directSubmit = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Start chat');
  const directForm = h(
    'form',
    {
      class: 'dialog-form',
      onsubmit: async (/** @type {SubmitEvent} */ e) => {
        e.preventDefault();
        const name = directName.value.trim().replace(/^@/, '');
        if (!name) {
          directError.textContent = 'Enter a username.';
          return;
        }
        directError.textContent = '';
        directSubmit.disabled = true;
        try {
          const user = await lookup(app, name);
          if (user.id === app.store.me.id) throw new ApiError(409, 'conflict', 'yourself');
          const conv = await app.api.openDirect(user.id);
          app.store.ensureConv(conv).info.peer = user;
          dialog.close();
          go(conv.id);
          app.store.loadConversations().catch(() => {});
        } catch (err) {
          directError.textContent = userError(err, name);
          directName.select();
        } finally {
          directSubmit.disabled = false;
        }
      },
    },
    h('div', { class: 'field' }, h('label', { for: 'direct-username' }, 'Username'), directName),
    directError,
    h('div', { class: 'dialog-actions' }, h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => dialog.close() }, 'Cancel'), directSubmit),
  );

  // Group
  /** @type {import('../types.js').User[]} */
  const picked = [];
  const groupName = h('input', { id: 'group-name', autocomplete: 'off', maxlength: '100', required: true });
  const memberInput = h('input', {
    id: 'group-member',
    autocomplete: 'off',
    autocapitalize: 'none',
    spellcheck: 'false',
    placeholder: 'Username, then Enter',
    'aria-describedby': 'group-error',
    onkeydown: (/** @type {KeyboardEvent} */ e) => {
      if (e.key === 'Enter' || e.key === ',') {
        e.preventDefault();
        addPicked();
      } else if (e.key === 'Backspace' && !memberInput.value && picked.length) {
        picked.pop();
        drawChips();
      }
    },
  });
  const chips = h('ul', { class: 'chips', 'aria-label': 'People to add' });
  const groupError = h('p', { class: 'form-error', role: 'alert', id: 'group-error' });
  const groupSubmit = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Create group');

  function drawChips() {
    replace(
      chips,
      picked.map((u, i) =>
        h(
          'li',
          { class: 'chip' },
          u.username,
          h(
            'button',
            {
              type: 'button',
              class: 'chip-x',
              'aria-label': `Remove ${u.username}`,
              onclick: () => {
                picked.splice(i, 1);
                drawChips();
                memberInput.focus();
              },
            },
            icon('close', 'icon icon-xs'),
          ),
        ),
      ),
    );
  }

  async function addPicked() {
    const name = memberInput.value.trim().replace(/^@/, '').replace(/,$/, '');
    if (!name) return true;
    groupError.textContent = '';
    try {
      const user = await lookup(app, name);
      if (user.id === app.store.me.id) {
        groupError.textContent = 'You are in the group already.';
        return false;
      }
      if (!picked.some((u) => u.id === user.id)) picked.push(user);
      memberInput.value = '';
      drawChips();
      return true;
    } catch (err) {
      groupError.textContent = userError(err, name);
      return false;
    }
  }

  const groupForm = h(
    'form',
    {
      class: 'dialog-form',
      onsubmit: async (/** @type {SubmitEvent} */ e) => {
        e.preventDefault();
        const name = groupName.value.trim();
        if (!name) {
          groupError.textContent = 'Give the group a name.';
          groupName.focus();
          return;
        }
        groupSubmit.disabled = true;
        try {
          if (!(await addPicked())) return;
          const conv = await app.api.createGroup(name, picked.map((u) => u.id));
          const c = app.store.ensureConv(conv);
          c.info.member_count = picked.length + 1;
          dialog.close();
          go(conv.id);
          app.store.loadConversations().catch(() => {});
        } catch (err) {
          groupError.textContent = describeError(err);
        } finally {
          groupSubmit.disabled = false;
        }
      },
    },
    h('div', { class: 'field' }, h('label', { for: 'group-name' }, 'Group name'), groupName),
    h('div', { class: 'field' }, h('label', { for: 'group-member' }, 'Add people'), h('div', { class: 'chip-input' }, chips, memberInput)),
    groupError,
    h('div', { class: 'dialog-actions' }, h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => dialog.close() }, 'Cancel'), groupSubmit),
  );

  const tabDirect = h('button', { type: 'button', role: 'tab', id: 'tab-direct', class: 'seg', 'aria-controls': 'panel-direct' }, icon('user', 'icon icon-sm'), 'Direct message');
  const tabGroup = h('button', { type: 'button', role: 'tab', id: 'tab-group', class: 'seg', 'aria-controls': 'panel-group' }, icon('users', 'icon icon-sm'), 'Group');
  const panelDirect = h('div', { role: 'tabpanel', id: 'panel-direct', 'aria-labelledby': 'tab-direct' }, directForm);
  const panelGroup = h('div', { role: 'tabpanel', id: 'panel-group', 'aria-labelledby': 'tab-group' }, groupForm);

  function setMode(/** @type {'direct' | 'group'} */ next, focus = true) {
    mode = next;
    for (const [tab, panel, on] of /** @type {[HTMLElement, HTMLElement, boolean][]} */ ([
      [tabDirect, panelDirect, mode === 'direct'],
      [tabGroup, panelGroup, mode === 'group'],
    ])) {
      tab.setAttribute('aria-selected', String(on));
      tab.tabIndex = on ? 0 : -1;
      panel.hidden = !on;
    }
    if (focus) (mode === 'direct' ? directName : groupName).focus();
  }
  tabDirect.addEventListener('click', () => setMode('direct'));
  tabGroup.addEventListener('click', () => setMode('group'));
  const tabs = h(
    'div',
    {
      class: 'segmented',
      role: 'tablist',
      'aria-label': 'Conversation type',
      onkeydown: (/** @type {KeyboardEvent} */ e) => {
        if (e.key === 'ArrowLeft' || e.key === 'ArrowRight') {
          e.preventDefault();
          setMode(mode === 'direct' ? 'group' : 'direct', false);
          (mode === 'direct' ? tabDirect : tabGroup).focus();
        }
      },
    },
    tabDirect,
    tabGroup,
  );

  replace(
    dialog,
    h(
      'div',
      { class: 'dialog-body' },
      h(
        'div',
        { class: 'dialog-head' },
        h('h2', { id: 'new-conv-title' }, 'New conversation'),
        h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Close', onclick: () => dialog.close() }, icon('close')),
      ),
      tabs,
      panelDirect,
      panelGroup,
    ),
  );
  mount(dialog);
  setMode(mode);
}

/**
 * @param {{ title: string, body: string, confirm: string, danger?: boolean }} opts
 * @returns {Promise<boolean>}
 */
export function confirmDialog(opts) {
  return new Promise((resolve) => {
    let answer = false;
    const ok = h('button', { type: 'button', class: `btn ${opts.danger ? 'btn-danger' : 'btn-primary'}`, onclick: () => { answer = true; dialog.close(); } }, opts.confirm);
    const dialog = h(
      'dialog',
      { class: 'dialog dialog-sm', role: 'alertdialog', 'aria-labelledby': 'confirm-title', 'aria-describedby': 'confirm-body' },
      h(
        'div',
        { class: 'dialog-body' },
        h('h2', { id: 'confirm-title' }, opts.title),
        h('p', { id: 'confirm-body', class: 'muted' }, opts.body),
        h('div', { class: 'dialog-actions' }, h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => dialog.close() }, 'Cancel'), ok),
      ),
    );
    dialog.addEventListener('close', () => resolve(answer));
    mount(dialog);
    ok.focus();
  });
}
