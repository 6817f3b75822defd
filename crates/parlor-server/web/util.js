// Small helpers shared by every module: storage that never throws, ids, timers, events.

/** @param {string} key @returns {unknown} */
export function load(key) {
  try {
    const raw = localStorage.getItem(key);
    return raw == null ? null : JSON.parse(raw);
  } catch {
    return null;
  }
}

/** @param {string} key @param {unknown} value */
export function save(key, value) {
  try {
    if (value == null) localStorage.removeItem(key);
    else localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // Storage full or disabled (private mode): the app works, it just forgets on reload.
  }
}

/** Removes every key that starts with `prefix`. @param {string} prefix */
export function forgetPrefix(prefix) {
  try {
    for (let i = localStorage.length - 1; i >= 0; i--) {
      const key = localStorage.key(i);
      if (key && key.startsWith(prefix)) localStorage.removeItem(key);
    }
  } catch {
    /* ignore */
  }
}

let lastCidMs = 0;
let cidsThisMs = 0;

/**
 * A client message id: 1-64 printable ASCII characters, unique per sender. Time first
 * (milliseconds, then a counter within one, both fixed-width base 36), so that one
 * device's ids increase and the server can skip its duplicate lookup; random after, so
 * that two devices never collide.
 */
export function newCid() {
  const now = Date.now();
  cidsThisMs = now === lastCidMs ? cidsThisMs + 1 : 0;
  lastCidMs = now;
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  const random = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `w-${now.toString(36).padStart(9, '0')}${cidsThisMs.toString(36).padStart(3, '0')}-${random}`;
}

/** @param {number} ms */
export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * @template {unknown[]} A
 * @param {(...args: A) => void} fn
 * @param {number} ms
 * @returns {((...args: A) => void) & { cancel: () => void }}
 */
export function debounce(fn, ms) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const wrapped = /** @type {((...args: A) => void) & { cancel: () => void }} */ (
    (/** @type {A} */ ...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    }
  );
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

/** Compares decimal id strings numerically (they exceed 2^53). @param {string} a @param {string} b */
export function cmpId(a, b) {
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** @param {string | null | undefined} a @param {string | null | undefined} b */
export function maxId(a, b) {
  if (!a) return b || null;
  if (!b) return a;
  return cmpId(a, b) >= 0 ? a : b;
}

/**
 * A tiny typed event emitter.
 * @template {Record<string, unknown>} E
 */
export class Emitter {
  constructor() {
    /** @type {Map<keyof E, Set<(value: any) => void>>} */
    this.handlers = new Map();
  }

  /**
   * @template {keyof E} K
   * @param {K} name
   * @param {(value: E[K]) => void} handler
   * @returns {() => void} unsubscribe
   */
  on(name, handler) {
    let set = this.handlers.get(name);
    if (!set) this.handlers.set(name, (set = new Set()));
    set.add(handler);
    return () => set?.delete(handler);
  }

  /** @template {keyof E} K @param {K} name @param {E[K]} value */
  emit(name, value) {
    for (const handler of this.handlers.get(name) ?? []) {
      try {
        handler(value);
      } catch (e) {
        console.error(e);
      }
    }
  }
}

// A tiny key-value store in IndexedDB. Unlike localStorage, whose copies in other tabs
// are updated asynchronously, IndexedDB reads see every committed write: tabs use it to
// hand each other the current refresh token under the refresh lock.

/** @type {Promise<IDBDatabase> | null} */
let dbPromise = null;

function db() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      const req = indexedDB.open('parlor', 1);
      req.onupgradeneeded = () => req.result.createObjectStore('kv');
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    dbPromise.catch(() => {
      dbPromise = null;
    });
  }
  return dbPromise;
}

/** @param {string} key @returns {Promise<unknown>} */
export async function sharedGet(key) {
  try {
    const d = await db();
    return await new Promise((resolve, reject) => {
      const req = d.transaction('kv', 'readonly').objectStore('kv').get(key);
      req.onsuccess = () => resolve(req.result ?? null);
      req.onerror = () => reject(req.error);
    });
  } catch {
    return load(key);
  }
}

/** @param {string} key @param {unknown} value @returns {Promise<void>} */
export async function sharedPut(key, value) {
  save(key, value);
  try {
    const d = await db();
    await new Promise((resolve, reject) => {
      const tx = d.transaction('kv', 'readwrite');
      if (value == null) tx.objectStore('kv').delete(key);
      else tx.objectStore('kv').put(value, key);
      tx.oncomplete = () => resolve(undefined);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  } catch {
    /* localStorage has it */
  }
}

/** A size for people: "812 B", "48 KB", "1.4 MB" (binary units, as file managers show). @param {number} bytes */
export function formatBytes(bytes) {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let n = Math.max(0, bytes);
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  const digits = i === 0 || n >= 10 ? 0 : 1;
  return `${n.toFixed(digits)} ${units[i]}`;
}
