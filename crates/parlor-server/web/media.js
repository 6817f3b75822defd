// Attachment media for the page. The content and thumbnail endpoints need the bearer
// token, which `<img src>` cannot send: media are fetched with it and shown through
// blob: URLs. Those are cached per (upload, size), since what an id names never changes,
// so re-renders and scrolling back fetch nothing; past a memory budget the least
// recently used are revoked, unless something on the page still shows them.

/** @typedef {'small' | 'medium' | 'poster' | 'content'} MediaSize */

/**
 * @typedef {{
 *   promise: Promise<string>, url: string | null, bytes: number, users: Set<Element>,
 * }} Entry
 */

/** Decoded images cost more than this in memory; thumbnails are small, contents not. */
const BUDGET_BYTES = 48 * 1024 * 1024;
/** Blob URLs of downloads live this long: the browser reads them after the click. */
const DOWNLOAD_URL_MS = 60_000;

export class Media {
  /** @param {import('./api.js').Api} api */
  constructor(api) {
    this.api = api;
    /** In least recently used order. @type {Map<string, Entry>} */
    this.entries = new Map();
    this.bytes = 0;
  }

  /** @param {string} id @param {MediaSize} size */
  static path(id, size) {
    const base = `/v1/uploads/${encodeURIComponent(id)}`;
    return size === 'content' ? `${base}/content` : `${base}/thumbnails/${size}`;
  }

  /** The blob: URL of an upload's content or thumbnail, fetched once. @param {string} id @param {MediaSize} size */
  url(id, size) {
    const key = `${id}:${size}`;
    const hit = this.entries.get(key);
    if (hit) {
      this.entries.delete(key);
      this.entries.set(key, hit);
      return hit.promise;
    }
    /** @type {Entry} */
    const entry = { promise: Promise.resolve(''), url: null, bytes: 0, users: new Set() };
    entry.promise = this.api.blob(Media.path(id, size)).then(
      (blob) => {
        const url = URL.createObjectURL(blob);
        if (this.entries.get(key) !== entry) {
          // Cleared meanwhile (signed out): nobody may see it.
          URL.revokeObjectURL(url);
          throw new Error('media cache cleared');
        }
        entry.url = url;
        entry.bytes = blob.size;
        this.bytes += blob.size;
        this.trim(key);
        return url;
      },
      (err) => {
        // Not cached: the next render tries again.
        if (this.entries.get(key) === entry) this.entries.delete(key);
        throw err;
      },
    );
    this.entries.set(key, entry);
    return entry.promise;
  }

  /** The URL if it is loaded already (to show it without a flash on re-render). @param {string} id @param {MediaSize} size */
  peek(id, size) {
    return this.entries.get(`${id}:${size}`)?.url ?? null;
  }

  /**
   * Shows the media in `el` (`src` of an image or video, `poster` of a video) and keeps it
   * from being revoked while `el` is on the page.
   * @param {HTMLImageElement | HTMLVideoElement} el
   * @param {string} id
   * @param {MediaSize} size
   * @param {'src' | 'poster'} [attr]
   */
  async show(el, id, size, attr = 'src') {
    const url = await this.url(id, size);
    this.entries.get(`${id}:${size}`)?.users.add(el);
    if (attr === 'poster' && el instanceof HTMLVideoElement) el.poster = url;
    else el.src = url;
  }

  /** Revokes the oldest URLs until the cache fits its budget. @param {string} [keep] the entry just loaded */
  trim(keep) {
    if (this.bytes <= BUDGET_BYTES) return;
    for (const [key, entry] of this.entries) {
      if (this.bytes <= BUDGET_BYTES) break;
      if (key === keep || !entry.url) continue;
      for (const el of entry.users) if (!el.isConnected) entry.users.delete(el);
      if (entry.users.size > 0) continue;
      URL.revokeObjectURL(entry.url);
      this.bytes -= entry.bytes;
      this.entries.delete(key);
    }
  }

  /**
   * Saves an upload's content under its name: fetched with the token, then handed to the
   * browser through a temporary `<a download>`.
   * @param {import('./types.js').Attachment} att
   */
  async download(att) {
    const cached = this.peek(att.id, 'content');
    const url = cached ?? URL.createObjectURL(await this.api.blob(Media.path(att.id, 'content')));
    const a = document.createElement('a');
    a.href = url;
    a.download = att.name;
    a.hidden = true;
    document.body.appendChild(a);
    a.click();
    a.remove();
    if (!cached) setTimeout(() => URL.revokeObjectURL(url), DOWNLOAD_URL_MS);
  }

  /** Forgets everything (sign-out: the next user must not see this one's files). */
  clear() {
    for (const entry of this.entries.values()) if (entry.url) URL.revokeObjectURL(entry.url);
    this.entries.clear();
    this.bytes = 0;
  }
}
