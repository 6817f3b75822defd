// The notification settings in the sidebar footer: push notifications on this device
// (shown only when the browser and the server both have Web Push) and do-not-disturb.

import { HOUR_MS } from '../mutes.js';
import { frameScheduler, h, replace } from './dom.js';
import { icon } from './icons.js';
import { until } from './mute.js';

/** @typedef {'off' | 'hour' | 'on'} DndChoice */

/** @type {[DndChoice, string][]} */
const DND_CHOICES = [
  ['off', 'Off'],
  ['hour', 'For 1 hour'],
  ['on', 'Until I turn it off'],
];

export class UserMenu {
  /** @param {import('./app.js').App} app */
  constructor(app) {
    this.app = app;
    this.open = false;
    this.button = h(
      'button',
      {
        type: 'button',
        class: 'icon-btn',
        id: 'notification-settings',
        'aria-label': 'Notification settings',
        title: 'Notification settings',
        'aria-haspopup': 'dialog',
        'aria-expanded': 'false',
        'aria-controls': 'notification-menu',
        onclick: () => (this.open ? this.close(true) : this.show()),
        onkeydown: (/** @type {KeyboardEvent} */ e) => this.escape(e),
      },
      icon('sliders'),
    );
    this.pushPart = h('div', { class: 'menu-part' });
    this.dndPart = h('div', { class: 'menu-part' });
    this.panel = h(
      'section',
      {
        class: 'user-menu',
        id: 'notification-menu',
        role: 'dialog',
        'aria-label': 'Notification settings',
        hidden: true,
        onkeydown: (/** @type {KeyboardEvent} */ e) => this.escape(e),
      },
      this.pushPart,
      this.dndPart,
    );
    this.render = frameScheduler(() => this.draw());
    app.push.on('change', () => this.render());
    app.mutes.on('change', () => this.render());
    this.onOutside = (/** @type {PointerEvent} */ e) => {
      const t = /** @type {Node} */ (e.target);
      if (this.open && !this.panel.contains(t) && !this.button.contains(t)) this.close(false);
    };
    document.addEventListener('pointerdown', this.onOutside);
  }

  dispose() {
    document.removeEventListener('pointerdown', this.onOutside);
  }

  /** @param {KeyboardEvent} e */
  escape(e) {
    if (e.key !== 'Escape' || !this.open) return;
    // Not the app's Escape (which leaves the conversation).
    e.stopPropagation();
    this.close(true);
  }

  show() {
    this.open = true;
    this.panel.hidden = false;
    this.button.setAttribute('aria-expanded', 'true');
    this.app.mutes.loadPreferences();
    this.draw();
    queueMicrotask(() => {
      const first = this.pushPart.hidden ? this.dndPart.querySelector('input:checked') : this.pushPart.querySelector('button');
      /** @type {HTMLElement | null} */ (first)?.focus();
    });
  }

  /** @param {boolean} refocus */
  close(refocus) {
    if (!this.open) return;
    this.open = false;
    this.panel.hidden = true;
    this.button.setAttribute('aria-expanded', 'false');
    if (refocus) this.button.focus();
  }

  draw() {
    if (!this.open) return;
    this.drawPush();
    this.drawDnd();
  }

  drawPush() {
    const push = this.app.push;
    const s = push.state;
    this.pushPart.hidden = s === 'checking' || s === 'unsupported' || s === 'unavailable';
    if (this.pushPart.hidden) return;
    const on = s === 'on';
    const line =
      s === 'on'
        ? 'This browser shows a notification when a message arrives while Parlor is closed.'
        : s === 'blocked'
          ? 'Notifications are blocked for this site. Allow them in the browser’s site settings, then try again.'
          : 'Get a notification when a message arrives while Parlor is closed.';
    replace(
      this.pushPart,
      h('h3', { class: 'details-section' }, 'Notifications on this device'),
      h('p', { class: 'menu-note', id: 'push-state' }, line),
      h(
        'button',
        {
          type: 'button',
          class: `btn btn-small ${on ? 'btn-ghost' : 'btn-primary'}${push.busy ? ' busy' : ''}`,
          id: 'push-toggle',
          disabled: push.busy,
          onclick: () => (on ? push.disable() : push.enable()),
        },
        on ? 'Disable notifications' : 'Enable notifications',
      ),
      push.error ? h('p', { class: 'form-error', role: 'alert' }, push.error) : null,
    );
  }

  drawDnd() {
    const mutes = this.app.mutes;
    const prefs = mutes.prefs;
    /** @type {DndChoice} */
    const chosen = !mutes.doNotDisturb ? 'off' : prefs?.until != null ? 'hour' : 'on';
    const note = mutes.doNotDisturb
      ? prefs?.until != null
        ? `No push notifications until ${until(prefs.until)}.`
        : 'No push notifications until you turn this off.'
      : 'Pauses push notifications on every device; mentions and replies still appear under the bell.';
    // Kept while the user moves between the radios with the arrow keys.
    const focused = this.dndPart.contains(document.activeElement) ? /** @type {HTMLInputElement} */ (document.activeElement).value : null;
    replace(
      this.dndPart,
      h(
        'fieldset',
        { class: 'dnd', id: 'dnd' },
        h('legend', { class: 'details-section' }, 'Do not disturb'),
        DND_CHOICES.map(([value, label]) =>
          h(
            'label',
            { class: 'radio' },
            h('input', {
              type: 'radio',
              name: 'dnd',
              value,
              checked: value === chosen,
              onchange: () => mutes.setDoNotDisturb(value === 'off' ? false : value === 'hour' ? HOUR_MS : null),
            }),
            label,
          ),
        ),
        h('p', { class: 'menu-note', id: 'dnd-state' }, note),
      ),
    );
    if (focused) /** @type {HTMLElement | null} */ (this.dndPart.querySelector(`input[value="${focused}"]`))?.focus();
  }
}
