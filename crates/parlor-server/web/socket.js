// The live connection: one WebSocket, `hello` with the sync position, reconnection with
// exponential backoff and jitter, token refresh on close code 4001.

import { ApiError } from './api.js';
import { Emitter, cmpId, load, save } from './util.js';

/** @typedef {import('./types.js').ServerFrame} ServerFrame */

/**
 * `connecting`: opening or saying hello; `syncing`: receiving missed events;
 * `online`: live; `offline`: waiting to retry; `stopped`: logged out or session expired.
 * @typedef {'connecting' | 'syncing' | 'online' | 'offline' | 'stopped'} SocketState
 * @typedef {{ state: SocketState, retryAt?: number, wasOnline: boolean, reason?: string }} SocketStatus
 */

const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 30_000;

/** @extends {Emitter<{ frame: ServerFrame, status: SocketStatus, synced: { pos: string, first: boolean } }>} */
export class Socket extends Emitter {
  /** @param {import('./api.js').Api} api */
  constructor(api) {
    super();
    this.api = api;
    /** @type {WebSocket | null} */
    this.ws = null;
    /** @type {SocketStatus} */
    this.status = { state: 'stopped', wasOnline: false };
    this.attempts = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.retryTimer = undefined;
    this.running = false;
    this.syncedOnce = false;
    /** Generation counter: events of an abandoned socket are ignored. */
    this.generation = 0;
    window.addEventListener('online', () => this.reconnectNow());
    window.addEventListener('offline', () => {
      if (this.running && this.ws) this.drop('offline');
    });
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible' && this.running && this.status.state === 'offline') this.reconnectNow();
    });
  }

  get posKey() {
    const user = this.api.user;
    return user ? `parlor.pos.${user.id}` : '';
  }

  /** The position of the newest event handled, remembered per user. @returns {string | null} */
  get pos() {
    const key = this.posKey;
    return key ? /** @type {string | null} */ (load(key)) : null;
  }

  /** @param {string | undefined} pos */
  remember(pos) {
    if (!pos || !this.posKey) return;
    const current = this.pos;
    if (!current || cmpId(pos, current) > 0) save(this.posKey, pos);
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.attempts = 0;
    this.connect();
  }

  stop() {
    this.running = false;
    clearTimeout(this.retryTimer);
    this.generation++;
    if (this.ws) {
      try {
        this.ws.close(1000, 'bye');
      } catch {
        /* already closed */
      }
    }
    this.ws = null;
    this.setStatus({ state: 'stopped', wasOnline: this.status.wasOnline });
  }

  get online() {
    return this.status.state === 'online' || this.status.state === 'syncing';
  }

  /** Sends a frame if the connection is up. @param {object} frame @returns {boolean} */
  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN || !this.online) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  reconnectNow() {
    if (!this.running) return;
    if (this.status.state === 'offline') {
      clearTimeout(this.retryTimer);
      this.connect();
    }
  }

  /** Abandons the current socket (e.g. it looks dead) and reconnects. @param {string} reason */
  drop(reason) {
    if (!this.running) return;
    this.generation++;
    try {
      this.ws?.close(4000, reason);
    } catch {
      /* ignore */
    }
    this.ws = null;
    this.retry(reason);
  }

  /** @param {SocketStatus} status */
  setStatus(status) {
    this.status = status;
    this.emit('status', status);
  }

  async connect() {
    const gen = ++this.generation;
    this.setStatus({ state: 'connecting', wasOnline: this.status.wasOnline });
    let token;
    try {
      token = await this.api.token();
    } catch (e) {
      if (gen !== this.generation) return;
      if (e instanceof ApiError && e.code === 'session_expired') {
        this.stopForExpiry();
        return;
      }
      this.retry('cannot refresh the session');
      return;
    }
    if (gen !== this.generation || !this.running) return;
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/ws`;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      this.retry('cannot open the connection');
      return;
    }
    this.ws = ws;
    const since = this.pos;
    ws.onopen = () => {
      if (gen !== this.generation) return;
      /** @type {{ type: 'hello', token: string, since?: string }} */
      const hello = { type: 'hello', token };
      if (since) hello.since = since;
      ws.send(JSON.stringify(hello));
      this.setStatus({ state: 'syncing', wasOnline: this.status.wasOnline });
    };
    ws.onmessage = (e) => {
      if (gen !== this.generation || typeof e.data !== 'string') return;
      /** @type {ServerFrame} */
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        return;
      }
      if (frame.type === 'synced') {
        this.attempts = 0;
        this.remember(frame.pos);
        this.setStatus({ state: 'online', wasOnline: true });
        const first = !this.syncedOnce;
        this.syncedOnce = true;
        this.emit('synced', { pos: frame.pos, first });
        return;
      }
      this.emit('frame', frame);
      if ('pos' in frame && frame.type !== 'ack') this.remember(frame.pos);
    };
    ws.onclose = async (e) => {
      if (gen !== this.generation) return;
      this.ws = null;
      if (!this.running) return;
      if (e.code === 4001) {
        // The token was refused: refresh once, then reconnect.
        try {
          await this.api.refresh();
        } catch (err) {
          if (err instanceof ApiError && err.code === 'session_expired') {
            this.stopForExpiry();
            return;
          }
        }
        if (gen === this.generation) this.retry('token refreshed', 0);
        return;
      }
      this.retry(e.reason || 'connection closed', e.code === 4029 ? 5000 : undefined);
    };
  }

  stopForExpiry() {
    this.running = false;
    this.generation++;
    this.setStatus({ state: 'stopped', wasOnline: this.status.wasOnline, reason: 'expired' });
  }

  /** @param {string} reason @param {number} [delay] */
  retry(reason, delay) {
    clearTimeout(this.retryTimer);
    if (!this.running) return;
    const backoff = Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** this.attempts);
    const wait = delay ?? Math.round(backoff * (0.5 + Math.random() / 2));
    this.attempts++;
    const gen = ++this.generation;
    this.setStatus({ state: 'offline', retryAt: Date.now() + wait, wasOnline: this.status.wasOnline, reason });
    this.retryTimer = setTimeout(() => {
      if (gen === this.generation) this.connect();
    }, wait);
  }
}
