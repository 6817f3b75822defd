// The composer's attachments: files chosen, pasted or dropped start uploading at once and
// show as chips (preview, name, progress, the server's reason when refused, a button to
// cancel or remove). Each conversation keeps its own chips, like its draft.

import { Upload } from '../uploads.js';
import { formatBytes } from '../util.js';
import { announce, h, reconcile, replace } from './dom.js';
import { icon } from './icons.js';

/** The server takes at most this many attachments per message. */
export const MAX_PER_MESSAGE = 10;
/** Local previews for images the browser can show. */
const PREVIEWABLE = /^image\/(png|jpeg|gif|webp|avif|bmp)$/;

/**
 * @typedef {{
 *   upload: Upload, node: HTMLElement, thumb: HTMLElement, status: HTMLElement, bar: HTMLElement,
 *   fill: HTMLElement, remove: HTMLButtonElement, preview: string | null,
 * }} Chip
 */

export class AttachTray {
  /**
   * @param {import('../api.js').Api} api
   * @param {() => void} onChange called when what can be sent changes
   */
  constructor(api, onChange) {
    this.api = api;
    this.onChange = onChange;
    /** @type {Map<string, Chip[]>} per conversation */
    this.lists = new Map();
    /** @type {string | null} */
    this.convId = null;
    this.el = h('ul', { class: 'attach-tray', 'aria-label': 'Attachments', hidden: true });
  }

  /** @param {string | null} convId */
  show(convId) {
    this.convId = convId;
    this.draw();
  }

  get chips() {
    return (this.convId && this.lists.get(this.convId)) || [];
  }

  /** Uploads still going up: the message must wait for them. */
  get busy() {
    return this.chips.some((c) => c.upload.busy);
  }

  /** Finished uploads, ready to go with the next message. */
  get ready() {
    return this.chips.filter((c) => c.upload.state === 'ready');
  }

  /** Starts uploading `files` for the open conversation. @param {Iterable<File>} files */
  add(files) {
    const convId = this.convId;
    if (!convId) return;
    let list = this.lists.get(convId);
    if (!list) this.lists.set(convId, (list = []));
    let count = 0;
    for (const file of files) {
      const upload = new Upload(this.api, file);
      const chip = this.chip(upload);
      list.push(chip);
      upload.on('change', () => this.update(chip, convId));
      upload.start();
      count++;
    }
    if (count === 0) return;
    announce(count === 1 ? 'Uploading 1 file' : `Uploading ${count} files`);
    this.draw();
    this.onChange();
  }

  /**
   * Takes the ready uploads (at most `MAX_PER_MESSAGE`) off the tray for a message; the
   * chips of failed ones stay, with their reason.
   * @returns {import('../types.js').Attachment[]}
   */
  take() {
    const list = this.convId ? this.lists.get(this.convId) : null;
    if (!list) return [];
    const taken = list.filter((c) => c.upload.state === 'ready' && c.upload.attachment).slice(0, MAX_PER_MESSAGE);
    this.lists.set(
      /** @type {string} */ (this.convId),
      list.filter((c) => !taken.includes(c)),
    );
    for (const c of taken) this.release(c);
    this.draw();
    this.onChange();
    return taken.map((c) => /** @type {import('../types.js').Attachment} */ (c.upload.attachment));
  }

  /** @param {Upload} upload @returns {Chip} */
  chip(upload) {
    const preview = PREVIEWABLE.test(upload.type) ? URL.createObjectURL(upload.file) : null;
    const status = h('span', { class: 'upload-status' });
    const fill = h('span', { class: 'upload-fill' });
    const bar = h('span', { class: 'upload-bar', role: 'progressbar', 'aria-label': `Uploading ${upload.name}`, 'aria-valuemin': '0', 'aria-valuemax': '100' }, fill);
    const remove = h(
      'button',
      { type: 'button', class: 'chip-x upload-remove', onclick: () => this.remove(upload) },
      icon('close', 'icon icon-xs'),
    );
    const kind = upload.type.startsWith('image/') ? 'image' : 'file';
    const thumb = h(
      'span',
      { class: 'upload-thumb', 'aria-hidden': 'true' },
      // Not an image after all (or one the browser cannot show): the plain icon.
      preview ? h('img', { src: preview, alt: '', onerror: () => replace(thumb, icon(kind)) }) : icon(kind),
    );
    const node = h(
      'li',
      { class: 'upload-chip', dataset: { key: upload.key, name: upload.name } },
      thumb,
      h('span', { class: 'upload-info' }, h('span', { class: 'upload-name', title: upload.name }, upload.name), status, bar),
      remove,
    );
    /** @type {Chip} */
    const chip = { upload, node, thumb, status, bar, fill, remove, preview };
    this.paint(chip);
    return chip;
  }

  /** @param {Chip} chip */
  paint(chip) {
    const u = chip.upload;
    const pct = u.size ? Math.floor((u.loaded / u.size) * 100) : 100;
    chip.node.classList.toggle('is-uploading', u.state === 'uploading');
    chip.node.classList.toggle('is-ready', u.state === 'ready');
    chip.node.classList.toggle('is-failed', u.state === 'failed');
    chip.bar.hidden = u.state !== 'uploading';
    chip.bar.setAttribute('aria-valuenow', String(pct));
    chip.fill.style.width = `${pct}%`;
    let text = '';
    if (u.state === 'uploading') {
      text = u.resuming ? `Connection lost · resuming at ${pct}%` : u.loaded >= u.size ? 'Processing…' : `${pct}% · ${formatBytes(u.size)}`;
    } else if (u.state === 'ready') {
      text = formatBytes(u.size);
    } else if (u.state === 'failed') {
      text = u.error;
      if (!chip.node.classList.contains('shown-failed')) {
        chip.node.classList.add('shown-failed');
        replace(chip.thumb, icon('alert'));
      }
    }
    if (chip.status.textContent !== text) chip.status.textContent = text;
    chip.status.setAttribute('role', u.state === 'failed' ? 'alert' : 'status');
    const label = u.state === 'uploading' ? `Cancel upload of ${u.name}` : `Remove ${u.name}`;
    chip.remove.setAttribute('aria-label', label);
    chip.remove.title = u.state === 'uploading' ? 'Cancel upload' : 'Remove';
  }

  /** @param {Chip} chip @param {string} convId */
  update(chip, convId) {
    const wasState = chip.node.className;
    this.paint(chip);
    if (convId !== this.convId) return;
    if (chip.node.className !== wasState) {
      if (chip.upload.state === 'ready') announce(`${chip.upload.name} is ready to send`);
      if (chip.upload.state === 'failed') announce(`${chip.upload.name} was not uploaded: ${chip.upload.error}`);
      this.onChange();
    }
  }

  /** @param {Upload} upload */
  remove(upload) {
    for (const [convId, list] of this.lists) {
      const chip = list.find((c) => c.upload === upload);
      if (!chip) continue;
      upload.cancel();
      this.release(chip);
      this.lists.set(
        convId,
        list.filter((c) => c !== chip),
      );
    }
    this.draw();
    this.onChange();
  }

  /** @param {Chip} chip */
  release(chip) {
    if (chip.preview) URL.revokeObjectURL(chip.preview);
    chip.preview = null;
  }

  draw() {
    const chips = this.chips;
    this.el.hidden = chips.length === 0;
    reconcile(
      this.el,
      chips.map((c) => c.node),
    );
  }

  /** Cancels everything (sign-out). */
  dispose() {
    for (const list of this.lists.values()) {
      for (const c of list) {
        c.upload.cancel();
        this.release(c);
      }
    }
    this.lists.clear();
    this.draw();
  }
}
