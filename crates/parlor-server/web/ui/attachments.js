// Attachments inside messages: images inline (their thumbnail, with the space reserved
// from the known dimensions so the timeline does not jump, and a placeholder while it
// loads), a full-size viewer, videos, and a card with a Download button for other files.

import { blurhashUrl } from '../blurhash.js';
import { formatBytes } from '../util.js';
import { h, replace } from './dom.js';
import { icon } from './icons.js';

/** @typedef {import('../types.js').Attachment} Attachment */
/** @typedef {import('../media.js').Media} Media */
/** @typedef {import('../media.js').MediaSize} MediaSize */

/** Image types every browser shows (and the server labels as what they are). */
const IMAGE_TYPES = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp']);
/** Inline images fit this box (CSS pixels). */
const MAX_W = 320;
const MAX_H = 320;
/** Several images in one message are shown smaller, side by side. */
const MAX_MULTI = 200;

/**
 * Whether videos can play from blob: URLs here. The page's content security policy
 * decides (`media-src`); once it has refused one, videos are downloaded instead.
 */
let inlineVideo = true;
document.addEventListener('securitypolicyviolation', (e) => {
  if (e.effectiveDirective === 'media-src' && e.blockedURI.startsWith('blob')) inlineVideo = false;
});

/** @param {Attachment} att */
export function isImage(att) {
  return IMAGE_TYPES.has(att.type);
}

/** @param {Attachment} att */
export function isVideo(att) {
  return att.type.startsWith('video/');
}

/**
 * What to show inline: the medium thumbnail, else the small one, else the file itself,
 * with the size it has in pixels (when known).
 * @param {Attachment} att
 * @returns {{ size: MediaSize, width?: number, height?: number }}
 */
export function inlineSource(att) {
  const thumbs = att.thumbnails ?? [];
  const t = thumbs.find((x) => x.size === 'medium') ?? thumbs.find((x) => x.size === 'small');
  if (t) return { size: t.size, width: t.width, height: t.height };
  return { size: 'content', width: att.width, height: att.height };
}

/** The size to draw `w × h` at inside `box`, never enlarged. @param {number} w @param {number} h @param {number} maxW @param {number} maxH */
function fit(w, h, maxW, maxH) {
  const scale = Math.min(1, maxW / w, maxH / h);
  return { width: Math.max(1, Math.round(w * scale)), height: Math.max(1, Math.round(h * scale)) };
}

/** "PDF", "TXT": the extension, for the file icon. @param {string} name */
function extension(name) {
  const m = /\.([a-z0-9]{1,5})$/i.exec(name);
  return m ? m[1].toUpperCase() : '';
}

/**
 * A one-line summary for previews and screen readers: "📎 cat.png", "📎 cat.png and 2 more".
 * @param {Attachment[] | undefined} atts
 */
export function attachmentSummary(atts) {
  if (!atts || atts.length === 0) return '';
  const more = atts.length - 1;
  return `📎 ${atts[0].name}${more ? ` and ${more} more` : ''}`;
}

/**
 * @typedef {{ media: Media, toast: (text: string) => void }} Env
 */

/**
 * The attachments of one message.
 * @param {Attachment[]} atts
 * @param {Env} env
 */
export function renderAttachments(atts, env) {
  const images = atts.filter(isImage);
  const multi = images.length > 1;
  return h(
    'div',
    { class: `attachments${multi ? ' multi' : ''}` },
    atts.map((att) => (isImage(att) ? imageTile(att, env, multi) : isVideo(att) ? videoTile(att, env) : fileCard(att, env))),
  );
}

/** Sets a placeholder behind `el`: the blurhash when there is one, else a neutral colour (CSS). @param {HTMLElement} el @param {Attachment} att */
function placeholder(el, att) {
  const url = att.blurhash ? blurhashUrl(att.blurhash) : null;
  // CSSOM, not a style attribute: the content security policy forbids inline styles.
  if (url) el.style.backgroundImage = `url("${url}")`;
}

/** @param {Attachment} att @param {Env} env @param {boolean} multi */
function imageTile(att, env, multi) {
  const src = inlineSource(att);
  const w = src.width ?? att.width ?? 240;
  const hgt = src.height ?? att.height ?? 180;
  const box = multi ? fit(w, hgt, MAX_MULTI, MAX_MULTI) : fit(w, hgt, MAX_W, MAX_H);
  const img = h('img', {
    class: 'att-img',
    alt: att.name,
    width: box.width,
    height: box.height,
    decoding: 'async',
    draggable: 'false',
    dataset: { size: src.size },
  });
  const tile = h(
    'button',
    {
      type: 'button',
      class: 'att-image',
      'aria-label': `Open image ${att.name}`,
      title: att.name,
      dataset: { attachment: att.id },
      onclick: () => openViewer(att, env, tile),
    },
    img,
  );
  placeholder(tile, att);
  img.addEventListener('load', () => tile.classList.add('loaded'), { once: true });
  const ready = env.media.peek(att.id, src.size);
  if (ready) {
    // Cached: show it at once (no fade on re-render).
    tile.classList.add('loaded', 'instant');
    img.src = ready;
  }
  env.media.show(img, att.id, src.size).catch(() => tile.classList.add('broken'));
  return tile;
}

/** @param {Attachment} att @param {Env} env */
function videoTile(att, env) {
  const poster = (att.thumbnails ?? []).find((t) => t.size === 'poster');
  const w = poster?.width ?? att.width ?? 320;
  const hgt = poster?.height ?? att.height ?? 180;
  const box = fit(w, hgt, MAX_W, MAX_H);
  const frame = h('div', { class: 'att-video-frame' });
  const posterImg = poster ? h('img', { class: 'att-img', alt: '', width: box.width, height: box.height, decoding: 'async' }) : null;
  const play = h(
    'button',
    { type: 'button', class: 'att-play', 'aria-label': `Play video ${att.name}`, onclick: () => start() },
    posterImg ?? h('span', { class: 'att-video-blank' }),
    h('span', { class: 'att-play-badge', 'aria-hidden': 'true' }, icon('play')),
  );
  if (posterImg) {
    placeholder(play, att);
    posterImg.addEventListener('load', () => play.classList.add('loaded'), { once: true });
    env.media.show(posterImg, att.id, 'poster').catch(() => {});
  }
  // Sized up front like images: the timeline must not jump when the video appears.
  frame.style.width = `${box.width}px`;
  frame.style.aspectRatio = `${box.width} / ${box.height}`;
  replace(frame, play);

  async function start() {
    play.classList.add('busy');
    play.disabled = true;
    const done = () => {
      play.classList.remove('busy');
      play.disabled = false;
    };
    /** Plays it outside the page: saved, for the system's player. */
    const fallback = async () => {
      replace(frame, play);
      done();
      env.toast(`Videos can’t play in the page on this server: ${att.name} is downloaded instead.`);
      await env.media.download(att).catch(() => env.toast(`Couldn’t download ${att.name}. Please try again.`));
    };
    if (!inlineVideo) {
      await fallback();
      return;
    }
    try {
      const video = h('video', { class: 'att-video-el', controls: true, playsinline: true, preload: 'auto' });
      video.addEventListener('error', () => {
        // Refused by the security policy (its report may come just after), or not
        // playable in this browser.
        setTimeout(() => {
          if (!inlineVideo) fallback();
        }, 100);
      });
      if (poster) env.media.show(video, att.id, 'poster', 'poster').catch(() => {});
      await env.media.show(video, att.id, 'content');
      replace(frame, video);
      done();
      video.play().catch(() => {
        /* the user presses play */
      });
    } catch {
      done();
      env.toast(`Couldn’t load ${att.name}. Please try again.`);
    }
  }

  return h('div', { class: 'att-video', dataset: { attachment: att.id } }, frame, caption(att, env));
}

/** Name, size and a Download button (under videos; the whole card for files). @param {Attachment} att @param {Env} env */
function caption(att, env) {
  return h(
    'div',
    { class: 'att-caption' },
    h('span', { class: 'att-name', title: att.name }, att.name),
    h('span', { class: 'att-size' }, formatBytes(att.size)),
    downloadButton(att, env, true),
  );
}

/** @param {Attachment} att @param {Env} env @param {boolean} [compact] */
function downloadButton(att, env, compact = false) {
  const btn = h(
    'button',
    {
      type: 'button',
      class: compact ? 'icon-btn sm att-download' : 'btn btn-small att-download',
      'aria-label': `Download ${att.name}`,
      title: `Download ${att.name}`,
      onclick: async (/** @type {MouseEvent} */ e) => {
        e.stopPropagation();
        if (btn.classList.contains('busy')) return;
        btn.classList.add('busy');
        btn.setAttribute('aria-busy', 'true');
        try {
          await env.media.download(att);
        } catch {
          env.toast(`Couldn’t download ${att.name}. Please try again.`);
        } finally {
          btn.classList.remove('busy');
          btn.removeAttribute('aria-busy');
        }
      },
    },
    icon('download', 'icon icon-sm'),
    compact ? null : h('span', {}, 'Download'),
  );
  return btn;
}

/** @param {Attachment} att @param {Env} env */
function fileCard(att, env) {
  const ext = extension(att.name);
  return h(
    'div',
    { class: 'att-file', dataset: { attachment: att.id } },
    h('span', { class: 'att-file-icon', 'aria-hidden': 'true' }, icon('file'), ext ? h('span', { class: 'att-ext' }, ext) : null),
    h(
      'span',
      { class: 'att-file-info' },
      h('span', { class: 'att-name', title: att.name }, att.name),
      h('span', { class: 'att-size' }, formatBytes(att.size)),
    ),
    downloadButton(att, env),
  );
}

/**
 * The full-size viewer: the thumbnail on screen first, then the full image. Escape, a
 * click anywhere but its buttons, or the close button closes it; focus returns.
 * @param {Attachment} att
 * @param {Env} env
 * @param {HTMLElement} [from]
 */
export function openViewer(att, env, from) {
  const w = att.width ?? inlineSource(att).width ?? 800;
  const hgt = att.height ?? inlineSource(att).height ?? 600;
  const img = h('img', { class: 'viewer-img', alt: att.name, width: w, height: hgt, dataset: { full: 'false' } });
  const thumb = inlineSource(att);
  const early = env.media.peek(att.id, thumb.size);
  if (early) img.src = early;
  const stage = h('div', { class: 'viewer-stage' }, img);
  const close = h('button', { type: 'button', class: 'icon-btn viewer-close', 'aria-label': 'Close viewer', onclick: () => dialog.close() }, icon('close'));
  const dialog = h(
    'dialog',
    { class: 'viewer', 'aria-label': att.name, id: 'image-viewer' },
    h(
      'div',
      { class: 'viewer-bar' },
      h('span', { class: 'viewer-name' }, att.name),
      h('span', { class: 'viewer-size' }, `${att.width && att.height ? `${att.width} × ${att.height} · ` : ''}${formatBytes(att.size)}`),
      downloadButton(att, env, true),
      close,
    ),
    stage,
  );
  dialog.addEventListener('click', (e) => {
    if (!(/** @type {Element} */ (e.target).closest('button'))) dialog.close();
  });
  dialog.addEventListener('close', () => {
    dialog.remove();
    from?.focus({ preventScroll: true });
  });
  document.body.appendChild(dialog);
  dialog.showModal();
  close.focus();
  env.media
    .url(att.id, 'content')
    .then((url) => {
      if (!dialog.isConnected) return;
      img.addEventListener('load', () => (img.dataset.full = 'true'), { once: true });
      img.src = url;
    })
    .catch(() => {
      if (dialog.isConnected) env.toast(`Couldn’t load ${att.name}.`);
    });
}
