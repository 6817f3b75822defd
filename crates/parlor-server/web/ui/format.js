// Formatting: times, days, "last seen", avatars, and message text (links, mentions).

import { h } from './dom.js';

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
const weekdayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long' });
const shortWeekdayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'short' });
const dateFmt = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short' });
const longDateFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', day: 'numeric', month: 'long' });
const yearDateFmt = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short', year: 'numeric' });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'short' });

/** @param {number} ts */
export function startOfDay(ts) {
  const d = new Date(ts);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

/** @param {number} ts */
export function time(ts) {
  return timeFmt.format(ts);
}

/** @param {number} ts */
export function fullTime(ts) {
  return fullFmt.format(ts);
}

/** Day separator label. @param {number} ts */
export function dayLabel(ts) {
  const today = startOfDay(Date.now());
  const day = startOfDay(ts);
  const diff = Math.round((today - day) / 86_400_000);
  if (diff === 0) return 'Today';
  if (diff === 1) return 'Yesterday';
  if (diff < 7 && diff > 0) return weekdayFmt.format(ts);
  if (new Date(ts).getFullYear() === new Date().getFullYear()) return longDateFmt.format(ts);
  return yearDateFmt.format(ts);
}

/** Compact time for the conversation list. @param {number} ts */
export function listTime(ts) {
  const today = startOfDay(Date.now());
  const day = startOfDay(ts);
  const diff = Math.round((today - day) / 86_400_000);
  if (diff === 0) return time(ts);
  if (diff === 1) return 'Yesterday';
  if (diff < 7 && diff > 0) return shortWeekdayFmt.format(ts);
  return dateFmt.format(ts);
}

/** "5 minutes ago". @param {number} ts */
export function ago(ts) {
  const secs = Math.max(0, Math.round((Date.now() - ts) / 1000));
  if (secs < 60) return 'just now';
  const mins = Math.round(secs / 60);
  if (mins < 60) return `${mins} minute${mins === 1 ? '' : 's'} ago`;
  const hours = Math.round(mins / 60);
  if (hours < 24) return `${hours} hour${hours === 1 ? '' : 's'} ago`;
  return `${listTime(ts).toLowerCase() === 'yesterday' ? 'yesterday' : 'on ' + dateFmt.format(ts)} at ${time(ts)}`;
}

/** A stable hue per name. @param {string} seed */
function hue(seed) {
  let x = 0;
  for (const ch of seed) x = (x * 31 + (ch.codePointAt(0) ?? 0)) % 360;
  return x;
}

const HUES = 8;

/**
 * A round avatar with initials; colour chosen from a fixed palette (classes in CSS, since
 * the policy forbids inline styles).
 * @param {string} name
 * @param {{ size?: 'sm' | 'md' | 'lg', group?: boolean, presence?: string | null }} [opts]
 */
export function avatar(name, opts = {}) {
  const initials = (opts.group ? name.split(/\s+/).slice(0, 2).map((w) => w[0] ?? '').join('') : name.slice(0, 2))
    .toUpperCase();
  const el = h('span', { class: `avatar avatar-${opts.size ?? 'md'} hue-${hue(name) % HUES}`, 'aria-hidden': 'true' }, initials || '?');
  if (opts.presence) el.appendChild(h('span', { class: `presence-dot ${opts.presence}` }));
  return el;
}

const URL_RE = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/g;
const MENTION_RE = /(^|[^\w@])@([a-z0-9][a-z0-9_.-]{1,31})/gi;

/**
 * Message text as nodes: links become anchors, @mentions of known names are highlighted
 * (more strongly when they name the reader).
 * @param {string} text
 * @param {{ me: string, names: Set<string> }} ctx lower-case usernames that exist here
 * @returns {Node[]}
 */
export function richText(text, ctx) {
  /** @type {Node[]} */
  const out = [];
  /** @type {{ start: number, end: number, node: Node }[]} */
  const spans = [];
  for (const m of text.matchAll(URL_RE)) {
    const start = m.index ?? 0;
    spans.push({
      start,
      end: start + m[0].length,
      node: h('a', { href: m[0], target: '_blank', rel: 'noopener noreferrer nofollow' }, m[0]),
    });
  }
  for (const m of text.matchAll(MENTION_RE)) {
    const start = (m.index ?? 0) + m[1].length;
    const name = m[2].toLowerCase().replace(/[.-]+$/, '');
    const end = start + 1 + name.length;
    if (spans.some((s) => start < s.end && end > s.start)) continue;
    const everyone = name === 'all' || name === 'here' || name === 'everyone';
    if (!everyone && !ctx.names.has(name)) continue;
    const self = everyone || name === ctx.me;
    spans.push({ start, end, node: h('span', { class: self ? 'mention mention-me' : 'mention' }, text.slice(start, end)) });
  }
  spans.sort((a, b) => a.start - b.start);
  let at = 0;
  for (const s of spans) {
    if (s.start > at) out.push(document.createTextNode(text.slice(at, s.start)));
    out.push(s.node);
    at = s.end;
  }
  if (at < text.length) out.push(document.createTextNode(text.slice(at)));
  return out;
}

/**
 * Search snippet with highlighted ranges (character offsets into `snippet`).
 * @param {string} snippet
 * @param {[number, number][] | undefined} ranges
 * @param {string} query used when the server gives no ranges
 */
export function highlighted(snippet, ranges, query) {
  /** @type {[number, number][]} */
  let spans = ranges ? [...ranges] : [];
  if (!ranges) {
    const lower = snippet.toLowerCase();
    for (const word of query.toLowerCase().split(/\s+/).filter(Boolean)) {
      let i = lower.indexOf(word);
      while (i >= 0) {
        spans.push([i, i + word.length]);
        i = lower.indexOf(word, i + word.length);
      }
    }
  }
  spans = spans.sort((a, b) => a[0] - b[0]);
  /** @type {Node[]} */
  const out = [];
  let at = 0;
  const chars = [...snippet];
  for (const [s, e] of spans) {
    if (s < at) continue;
    out.push(document.createTextNode(chars.slice(at, s).join('')));
    out.push(h('mark', {}, chars.slice(s, e).join('')));
    at = e;
  }
  out.push(document.createTextNode(chars.slice(at).join('')));
  return out;
}
