// File uploads with progress. Small files go up in one request (`POST /v1/uploads?name=`);
// large ones with the tus resumable protocol, in chunks, so that a dropped connection
// resumes where the server stopped instead of starting over. XMLHttpRequest rather than
// fetch: only it reports upload progress.

import { ApiError, describeError } from './api.js';
import { Emitter, formatBytes, sleep } from './util.js';

/** @typedef {import('./types.js').Attachment} Attachment */
/** @typedef {import('./types.js').UploadView} UploadView */

/** Files larger than this use the resumable protocol. */
export const RESUMABLE_FROM = 8 * 1024 * 1024;
/** Bytes per resumable request: what a failure can cost again. */
const CHUNK = 4 * 1024 * 1024;
/** Consecutive failed chunks before giving up (with backoff: about a minute in all). */
const MAX_FAILURES = 7;
const TUS = '1.0.0';
/** Answers worth retrying: the server was busy or the network blinked. */
const TRANSIENT = new Set(['network', 'unavailable', 'rate_limited', 'internal', 'conflict']);

/**
 * `uploading`: bytes going up (or the server checking them once `loaded === size`);
 * `ready`: can be attached; `failed`: refused or unreachable (`error` says why);
 * `cancelled`: given up by the user.
 * @typedef {'uploading' | 'ready' | 'failed' | 'cancelled'} UploadState
 */

let counter = 0;

/** @extends {Emitter<{ change: Upload }>} */
export class Upload extends Emitter {
  /** @param {import('./api.js').Api} api @param {File} file */
  constructor(api, file) {
    super();
    this.api = api;
    this.file = file;
    this.key = `up${++counter}`;
    this.name = file.name || 'file';
    this.type = file.type || 'application/octet-stream';
    this.size = file.size;
    this.loaded = 0;
    /** @type {UploadState} */
    this.state = 'uploading';
    /** True while waiting to resume after a failed chunk. */
    this.resuming = false;
    this.error = '';
    /** @type {Attachment | null} */
    this.attachment = null;
    /** The server's id, once it has one (to delete it when the user gives up). @type {string | null} */
    this.id = null;
    /** @type {XMLHttpRequest | null} */
    this.xhr = null;
    this.resumable = this.size > RESUMABLE_FROM;
  }

  get busy() {
    return this.state === 'uploading';
  }

  /** A getter, so that checks after an `await` are not narrowed away by the type checker. */
  get cancelled() {
    return this.state === 'cancelled';
  }

  start() {
    this.run();
    return this;
  }

  async run() {
    try {
      const view = this.resumable ? await this.sendResumable() : await this.sendOnce();
      if (this.cancelled) return;
      if (view.state !== 'ready' || !view.attachment) throw new ApiError(500, 'internal', 'the server did not finish the upload');
      this.id = view.id;
      this.attachment = view.attachment;
      this.loaded = this.size;
      this.state = 'ready';
    } catch (e) {
      if (this.cancelled) return;
      this.state = 'failed';
      this.error = describeUploadError(e);
    }
    this.resuming = false;
    this.emit('change', this);
  }

  /** Stops the upload, or gives up a finished one that no message carries. */
  cancel() {
    if (this.cancelled) return;
    this.state = 'cancelled';
    this.xhr?.abort();
    // Unattached uploads count against the quota until collected: free it now.
    if (this.id) this.api.deleteUpload(this.id).catch(() => {});
    this.emit('change', this);
  }

  /** @param {number} loaded */
  progress(loaded) {
    if (this.state !== 'uploading') return;
    this.loaded = Math.min(this.size, loaded);
    this.emit('change', this);
  }

  /** @returns {Promise<UploadView>} */
  async sendOnce() {
    const xhr = await this.request('POST', `/v1/uploads?name=${encodeURIComponent(this.name)}`, { 'content-type': this.type }, this.file, (sent) =>
      this.progress(sent),
    );
    if (xhr.status !== 201 && xhr.status !== 200) throw errorOf(xhr);
    return JSON.parse(xhr.responseText);
  }

  /** tus 1.0: create, then PATCH chunks; after a failure, HEAD says where to go on. @returns {Promise<UploadView>} */
  async sendResumable() {
    const created = await this.request('POST', '/v1/uploads', {
      'tus-resumable': TUS,
      'upload-length': String(this.size),
      'upload-metadata': `filename ${base64(this.name)},filetype ${base64(this.type)}`,
    });
    if (created.status !== 201) throw errorOf(created);
    /** @type {UploadView} */
    const view = JSON.parse(created.responseText);
    const id = view.id;
    this.id = id;
    const url = `/v1/uploads/${encodeURIComponent(id)}`;
    let offset = view.offset;
    let failures = 0;
    for (let finishing = 0; ; ) {
      if (offset >= this.size) {
        // The request bringing the last byte answers once the upload is checked; if that
        // answer was lost, the upload tells its state. An empty PATCH at the end retries
        // a completion the server could not finish.
        const now = await this.api.upload(id);
        if (now.state === 'ready' || finishing >= 3) return now;
        finishing++;
      }
      const end = Math.min(this.size, offset + CHUNK);
      const start = offset;
      try {
        const xhr = await this.request(
          'PATCH',
          url,
          { 'tus-resumable': TUS, 'upload-offset': String(start), 'content-type': 'application/offset+octet-stream' },
          this.file.slice(start, end),
          (sent) => this.progress(start + sent),
        );
        if (xhr.status !== 204) throw errorOf(xhr);
        offset = Number(xhr.getResponseHeader('upload-offset') ?? end);
        failures = 0;
        this.resuming = false;
        this.progress(offset);
      } catch (e) {
        if (this.cancelled || !(e instanceof ApiError) || !TRANSIENT.has(e.code)) throw e;
        if (++failures > MAX_FAILURES) throw e;
        this.resuming = true;
        this.emit('change', this);
        await sleep(Math.min(30_000, 500 * 2 ** failures) * (0.5 + Math.random() / 2));
        if (this.cancelled) throw e;
        offset = await this.serverOffset(url).catch(() => start);
        this.progress(offset);
      }
    }
  }

  /** How many bytes the server holds. @param {string} url */
  async serverOffset(url) {
    const xhr = await this.request('HEAD', url, { 'tus-resumable': TUS });
    if (xhr.status !== 200) throw errorOf(xhr);
    return Number(xhr.getResponseHeader('upload-offset') ?? 0);
  }

  /**
   * One authenticated request; an expired token is refreshed once and the request repeated.
   * Resolves with the finished request whatever its status; rejects when it never got an
   * answer (network) or was cancelled.
   * @param {string} method
   * @param {string} url
   * @param {Record<string, string>} headers
   * @param {Blob | null} [body]
   * @param {(sent: number) => void} [onProgress]
   * @returns {Promise<XMLHttpRequest>}
   */
  async request(method, url, headers, body = null, onProgress) {
    for (let attempt = 0; ; attempt++) {
      const token = await this.api.token();
      if (this.cancelled) throw new ApiError(0, 'cancelled', 'cancelled');
      const xhr = await new Promise((resolve, reject) => {
        const x = new XMLHttpRequest();
        this.xhr = x;
        x.open(method, url);
        for (const [k, v] of Object.entries(headers)) x.setRequestHeader(k, v);
        x.setRequestHeader('authorization', `Bearer ${token}`);
        if (onProgress) x.upload.onprogress = (e) => onProgress(e.loaded);
        x.onload = () => resolve(x);
        x.onerror = () => reject(new ApiError(0, 'network', 'cannot reach the server'));
        x.ontimeout = x.onerror;
        x.onabort = () => reject(new ApiError(0, 'cancelled', 'cancelled'));
        x.send(body);
      });
      this.xhr = null;
      if (xhr.status === 401) {
        const err = errorOf(xhr);
        if (attempt === 0 && (err.code === 'token_expired' || err.code === 'unauthorized')) {
          await this.api.refresh();
          continue;
        }
        this.api.markExpired();
        throw new ApiError(401, 'session_expired', err.message);
      }
      return xhr;
    }
  }
}

/** The protocol error of a finished request. @param {XMLHttpRequest} xhr */
function errorOf(xhr) {
  let body = null;
  try {
    body = xhr.responseText ? JSON.parse(xhr.responseText) : null;
  } catch {
    /* not JSON */
  }
  if (body && typeof body.code === 'string') return new ApiError(xhr.status, body.code, String(body.message ?? ''), body.retry_after_ms);
  return new ApiError(xhr.status, xhr.status === 404 ? 'not_found' : 'internal', xhr.statusText || `HTTP ${xhr.status}`);
}

/** tus metadata values are base64 of UTF-8. @param {string} text */
function base64(text) {
  let binary = '';
  for (const b of new TextEncoder().encode(text)) binary += String.fromCharCode(b);
  return btoa(binary);
}

/**
 * Why an upload failed, for its chip: the server's own words for refusals (too large,
 * over quota, wrong type, undecodable image), with byte counts made readable.
 * @param {unknown} err
 */
export function describeUploadError(err) {
  if (err instanceof ApiError && err.status >= 400 && err.message && !['session_expired', 'rate_limited', 'unavailable', 'internal'].includes(err.code)) {
    const text = err.message.replace(/\b(\d{4,}) bytes\b/g, (_, n) => formatBytes(Number(n)));
    return text.charAt(0).toUpperCase() + text.slice(1) + (/[.!?]$/.test(text) ? '' : '.');
  }
  return describeError(err);
}
