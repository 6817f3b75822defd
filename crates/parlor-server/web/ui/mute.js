// The notification settings of one conversation, in its details panel: mute for a
// while or until turned back on, and whether mentions are muted too.

import { HOUR_MS } from '../mutes.js';
import { h } from './dom.js';
import { startOfDay, time } from './format.js';

const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'short', day: 'numeric', month: 'short' });

/** When something ends: "15:04", or "Tue 4 Mar, 02:00" on another day. @param {number} ts */
export function until(ts) {
  return startOfDay(ts) === startOfDay(Date.now()) ? time(ts) : `${dayFmt.format(ts)}, ${time(ts)}`;
}

/** @type {[string, number | null][]} */
const SPANS = [
  ['Mute for 1 hour', HOUR_MS],
  ['Mute for 8 hours', 8 * HOUR_MS],
  ['Mute until I turn it back on', null],
];

/**
 * @param {import('./app.js').App} app
 * @param {string} conv
 * @returns {Node[]}
 */
export function muteSection(app, conv) {
  const mutes = app.mutes;
  const settings = mutes.of(conv);
  const muted = mutes.muted(conv);
  const mentions = mutes.mentionsMuted(conv);
  const state = !settings
    ? 'Loading…'
    : !muted
      ? 'Notifications are on.'
      : settings.until != null
        ? `Muted until ${until(settings.until)}.`
        : 'Muted until you turn it back on.';
  return [
    h('h3', { class: 'details-section' }, 'Notifications'),
    h(
      'div',
      { class: 'mute', id: 'mute-settings', dataset: { muted: String(muted) } },
      h('p', { class: 'mute-state', id: 'mute-state' }, state),
      muted
        ? h('button', { type: 'button', class: 'btn btn-small btn-ghost', id: 'unmute', onclick: () => mutes.unmute(conv) }, 'Unmute')
        : h(
            'div',
            { class: 'mute-options' },
            SPANS.map(([label, span]) =>
              h(
                'button',
                { type: 'button', class: 'btn btn-small btn-ghost', disabled: !settings, onclick: () => mutes.mute(conv, { for: span, mentions }) },
                label,
              ),
            ),
          ),
      h(
        'label',
        { class: 'check' },
        h('input', {
          type: 'checkbox',
          id: 'mute-mentions',
          checked: mentions,
          disabled: !settings,
          onchange: (/** @type {Event} */ e) => mutes.setMentionsMuted(conv, /** @type {HTMLInputElement} */ (e.target).checked),
        }),
        h('span', {}, 'Mute mentions too', h('span', { class: 'check-hint' }, 'Otherwise a mention notifies you even while muted.')),
      ),
    ),
  ];
}
