// Sign-in and sign-up screen, and the "session expired" dialog that keeps the app (and
// whatever the user was typing) in place while they log in again.

import { describeError } from '../api.js';
import { h } from './dom.js';
import { icon } from './icons.js';

/**
 * @param {import('../api.js').Api} api
 * @param {() => void} onDone called once logged in
 * @returns {HTMLElement}
 */
export function authScreen(api, onDone) {
  let mode = /** @type {'login' | 'register'} */ ('login');
  const error = h('p', { class: 'form-error', role: 'alert', id: 'auth-error' });
  const username = h('input', {
    id: 'auth-username',
    name: 'username',
    autocomplete: 'username',
    autocapitalize: 'none',
    spellcheck: 'false',
    required: true,
    minlength: '3',
    maxlength: '32',
    'aria-describedby': 'auth-error',
  });
  const password = h('input', {
    id: 'auth-password',
    name: 'password',
    type: 'password',
    autocomplete: 'current-password',
    required: true,
    minlength: '8',
    'aria-describedby': 'auth-error auth-password-hint',
  });
  const hint = h('p', { class: 'field-hint', id: 'auth-password-hint', hidden: true }, 'At least 8 characters.');
  const userHint = h(
    'p',
    { class: 'field-hint', id: 'auth-username-hint', hidden: true },
    '3–32 characters: a–z, 0–9, “_”, “.” or “-”.',
  );
  const submit = h('button', { class: 'btn btn-primary btn-block', type: 'submit' }, 'Log in');
  const title = h('h1', { class: 'auth-title' }, 'Welcome back');
  const subtitle = h('p', { class: 'auth-subtitle' }, 'Log in to continue to Parlor.');
  const switchText = h('span', {}, 'New here?');
  const switchBtn = h('button', { type: 'button', class: 'link-btn' }, 'Create an account');

  function setMode(/** @type {'login' | 'register'} */ next) {
    mode = next;
    const reg = mode === 'register';
    title.textContent = reg ? 'Create your account' : 'Welcome back';
    subtitle.textContent = reg ? 'Pick a username and a password. That’s all.' : 'Log in to continue to Parlor.';
    submit.textContent = reg ? 'Create account' : 'Log in';
    switchText.textContent = reg ? 'Already have an account?' : 'New here?';
    switchBtn.textContent = reg ? 'Log in' : 'Create an account';
    password.autocomplete = reg ? 'new-password' : 'current-password';
    hint.hidden = !reg;
    userHint.hidden = !reg;
    username.setAttribute('aria-describedby', reg ? 'auth-error auth-username-hint' : 'auth-error');
    error.textContent = '';
    username.focus();
  }
  switchBtn.addEventListener('click', () => setMode(mode === 'login' ? 'register' : 'login'));

  const form = h(
    'form',
    {
      class: 'auth-form',
      novalidate: true,
      onsubmit: async (/** @type {SubmitEvent} */ e) => {
        e.preventDefault();
        error.textContent = '';
        const name = username.value.trim();
        if (!name || !password.value) {
          error.textContent = 'Enter your username and password.';
          (name ? password : username).focus();
          return;
        }
        if (mode === 'register' && password.value.length < 8) {
          error.textContent = 'Passwords need at least 8 characters.';
          password.focus();
          return;
        }
        submit.disabled = true;
        submit.classList.add('busy');
        try {
          if (mode === 'register') await api.register(name, password.value);
          else await api.login(name, password.value);
          onDone();
        } catch (err) {
          error.textContent = describeError(err);
          password.select();
          password.focus();
        } finally {
          submit.disabled = false;
          submit.classList.remove('busy');
        }
      },
    },
    h('div', { class: 'field' }, h('label', { for: 'auth-username' }, 'Username'), username, userHint),
    h('div', { class: 'field' }, h('label', { for: 'auth-password' }, 'Password'), password, hint),
    error,
    submit,
  );

  const screen = h(
    'main',
    { class: 'auth-screen' },
    h(
      'div',
      { class: 'auth-card' },
      h('div', { class: 'brand brand-lg' }, h('span', { class: 'brand-mark' }, icon('chat')), 'Parlor'),
      title,
      subtitle,
      form,
      h('p', { class: 'auth-switch' }, switchText, ' ', switchBtn),
    ),
    h('p', { class: 'auth-footer' }, 'Self-hosted chat. Your server, your messages.'),
  );
  queueMicrotask(() => username.focus());
  return screen;
}

/**
 * Modal dialog shown when the session cannot be refreshed. The app stays mounted behind
 * it, so drafts and pending messages are kept.
 * @param {import('../api.js').Api} api
 * @param {import('../types.js').User} user
 * @param {{ onDone: () => void, onSwitch: () => void }} handlers
 */
export function reloginDialog(api, user, handlers) {
  const error = h('p', { class: 'form-error', role: 'alert' });
  const password = h('input', {
    id: 'relogin-password',
    type: 'password',
    autocomplete: 'current-password',
    required: true,
  });
  const submit = h('button', { class: 'btn btn-primary', type: 'submit' }, 'Log in');
  const dialog = h(
    'dialog',
    { class: 'dialog', 'aria-labelledby': 'relogin-title', id: 'relogin-dialog' },
    h(
      'form',
      {
        method: 'dialog',
        class: 'dialog-body',
        onsubmit: async (/** @type {SubmitEvent} */ e) => {
          e.preventDefault();
          error.textContent = '';
          submit.disabled = true;
          try {
            await api.login(user.username, password.value);
            dialog.close();
            dialog.remove();
            handlers.onDone();
          } catch (err) {
            error.textContent = describeError(err);
            password.select();
          } finally {
            submit.disabled = false;
          }
        },
      },
      h('h2', { id: 'relogin-title' }, 'Session expired'),
      h(
        'p',
        { class: 'muted' },
        'For your security, please log in again as ',
        h('strong', {}, user.username),
        '. Your unsent messages and drafts are kept.',
      ),
      h('input', { type: 'text', autocomplete: 'username', value: user.username, hidden: true, readonly: true }),
      h('div', { class: 'field' }, h('label', { for: 'relogin-password' }, 'Password'), password),
      error,
      h(
        'div',
        { class: 'dialog-actions' },
        h(
          'button',
          {
            type: 'button',
            class: 'btn btn-ghost',
            onclick: () => {
              dialog.close();
              dialog.remove();
              handlers.onSwitch();
            },
          },
          'Use another account',
        ),
        submit,
      ),
    ),
  );
  // Escape must not dismiss it: nothing works until the user logs in again.
  dialog.addEventListener('cancel', (e) => e.preventDefault());
  document.body.appendChild(dialog);
  dialog.showModal();
  password.focus();
  return dialog;
}
