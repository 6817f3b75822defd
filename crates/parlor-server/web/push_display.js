// What a push looks like on screen: the service worker's payload (docs/protocol.md) turned
// into the arguments of `showNotification`, and a clicked notification into the page to
// open. Pure functions with no browser API, so that the page (and the tests) can load
// this module as well as the service worker.

export const APP_ICON = '/app/icon.svg';

/**
 * The decrypted push payload. Ids are strings; `tag` collapses a conversation's pushes
 * into one notification; `badge` is the user's unread count.
 * @typedef {{
 *   title?: string, body?: string, conv?: string, seq?: number, message?: string, sender?: string,
 *   reason?: 'message' | 'mention' | 'reply', badge?: number, ts?: number, tag?: string
 * }} PushPayload
 *
 * The options this module sets (TypeScript's `NotificationOptions` lacks `renotify` and
 * `timestamp`).
 * @typedef {{
 *   body: string, tag: string, renotify: boolean, icon: string, badge: string,
 *   timestamp?: number, data: NotificationData
 * }} DisplayOptions
 *
 * @typedef {{ conv: string | null, seq: number | null }} NotificationData
 *
 * @typedef {{ title: string, options: DisplayOptions, badge: number | null }} Display
 */

/** @param {unknown} v */
const text = (v) => (typeof v === 'string' ? v : '');

/** A decimal id, given as a string (or, leniently, a number). @param {unknown} v */
function id(v) {
  if (typeof v === 'string' && /^\d{1,20}$/.test(v)) return v;
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return String(v);
  return null;
}

/** @param {unknown} v */
const count = (v) => (typeof v === 'number' && Number.isInteger(v) && v >= 0 ? v : null);

/**
 * The notification for a push. Anything missing or malformed still gives a notification
 * (a push with `userVisibleOnly` must show one), just a plainer one.
 * @param {unknown} payload the parsed JSON, or null when it did not parse
 * @returns {Display}
 */
export function notificationFor(payload) {
  const p = /** @type {PushPayload} */ (payload && typeof payload === 'object' ? payload : {});
  const conv = id(p.conv);
  const seq = count(p.seq);
  /** @type {DisplayOptions} */
  const options = {
    body: text(p.body),
    // `renotify` needs a tag; one per conversation, as the server's collapse key.
    tag: text(p.tag) || (conv ? `conv:${conv}` : 'parlor'),
    renotify: true,
    icon: APP_ICON,
    badge: APP_ICON,
    data: { conv, seq: seq && seq > 0 ? seq : null },
  };
  if (typeof p.ts === 'number' && Number.isFinite(p.ts)) options.timestamp = p.ts;
  return { title: text(p.title) || 'Parlor', options, badge: count(p.badge) };
}

/**
 * The app's address for a clicked notification: the conversation at the message.
 * @param {unknown} data the notification's `data`
 */
export function pageFor(data) {
  const d = /** @type {Partial<NotificationData>} */ (data && typeof data === 'object' ? data : {});
  const conv = id(d.conv);
  if (!conv) return '/';
  const seq = count(d.seq);
  return `/#/c/${conv}${seq ? `/${seq}` : ''}`;
}
