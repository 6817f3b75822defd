// Routing through location.hash: `#/c/<conv>`, `#/c/<conv>/<seq>` (jump to a message),
// `#/c/<conv>/info` (details panel).

/**
 * @typedef {{ conv: string | null, seq: number | null, details: boolean }} Route
 */

/** @returns {Route} */
export function parseRoute() {
  const m = /^#\/c\/(\d+)(?:\/(\d+))?(\/info)?$/.exec(location.hash);
  if (!m) return { conv: null, seq: null, details: false };
  return { conv: m[1], seq: m[2] ? Number(m[2]) : null, details: Boolean(m[3]) };
}

/** @param {string | null} conv @param {{ seq?: number, details?: boolean, replace?: boolean }} [opts] */
export function go(conv, opts = {}) {
  const hash = conv ? `#/c/${conv}${opts.seq ? '/' + opts.seq : ''}${opts.details ? '/info' : ''}` : '#/';
  if (location.hash === hash) return;
  if (opts.replace) history.replaceState(null, '', hash);
  else location.hash = hash;
  if (opts.replace) window.dispatchEvent(new HashChangeEvent('hashchange'));
}
