// The service worker: shows pushes as system notifications, sets the app badge, and
// brings the app forward on a click. A module worker (`type: 'module'`), so that it
// shares push_display.js with the page instead of a copy of it.

import { notificationFor, pageFor } from './push_display.js';

const sw = /** @type {ServiceWorkerGlobalScope} */ (/** @type {unknown} */ (self));

// A new version takes over at once: it holds no state an old one could need.
sw.addEventListener('install', () => {
  sw.skipWaiting();
});

sw.addEventListener('push', (event) => {
  let payload = null;
  try {
    payload = event.data ? event.data.json() : null;
  } catch {
    /* shown as a plain notification */
  }
  const shown = notificationFor(payload);
  event.waitUntil(
    Promise.all([
      sw.registration.showNotification(shown.title, /** @type {NotificationOptions} */ (shown.options)),
      setBadge(shown.badge),
    ]),
  );
});

/** @param {number | null} badge */
async function setBadge(badge) {
  if (badge == null || !('setAppBadge' in navigator)) return;
  try {
    await (badge > 0 ? navigator.setAppBadge(badge) : navigator.clearAppBadge());
  } catch {
    /* badges are a nicety (and need an installed app in some browsers) */
  }
}

sw.addEventListener('notificationclick', (event) => {
  event.notification.close();
  event.waitUntil(open(event.notification.data));
});

/**
 * Focuses a window of the app and tells it what to show, or opens one there.
 * @param {unknown} data the notification's data
 */
async function open(data) {
  const url = new URL(pageFor(data), sw.location.origin);
  const windows = await sw.clients.matchAll({ type: 'window', includeUncontrolled: true });
  // The app lives at `/` (other same-origin windows are e.g. an attachment opened in a tab).
  const apps = windows.filter((w) => new URL(w.url).pathname === '/');
  const app = apps.find((w) => w.focused) ?? apps.find((w) => w.visibilityState === 'visible') ?? apps[0];
  if (!app) {
    await sw.clients.openWindow(url.href);
    return;
  }
  const focused = await app.focus().catch(() => app);
  const d = /** @type {{ conv?: string, seq?: number } | null} */ (data);
  focused.postMessage({ type: 'open', conv: d?.conv ?? null, seq: d?.seq ?? null });
}
