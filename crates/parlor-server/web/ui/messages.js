// Builds the message timeline: day separators, the "new messages" line, messages grouped
// by sender, reply quotes, attachments, edited/deleted states, pending/failed/sent/
// delivered/read marks. Nodes are cached by key and rebuilt only when what they show
// changed (so images are not reloaded by a re-render).

import { attachmentSummary, renderAttachments } from './attachments.js';
import { h } from './dom.js';
import { avatar, dayLabel, fullTime, richText, startOfDay, time } from './format.js';
import { icon } from './icons.js';

/** @typedef {import('../types.js').Message} Message */
/** @typedef {import('../types.js').Outgoing} Outgoing */
/** @typedef {import('../store.js').Store} Store */
/** @typedef {import('../store.js').Conv} Conv */

/** Messages closer than this from the same sender are grouped. */
const GROUP_GAP_MS = 5 * 60_000;

/**
 * @typedef {{
 *   key: string, seq: number | null, sender: string, ts: number, text: string,
 *   message: Message | null, pending: Outgoing | null,
 * }} Row
 *
 * @typedef {{
 *   onReply: (seq: number) => void,
 *   onEdit: (seq: number) => void,
 *   onDelete: (seq: number) => void,
 *   onRetry: (cid: string) => void,
 *   onDiscard: (cid: string) => void,
 *   onQuote: (seq: number) => void,
 * }} Actions
 */

export class Timeline {
  /** @param {Store} store @param {Actions} actions @param {import('./attachments.js').Env} env */
  constructor(store, actions, env) {
    this.store = store;
    this.actions = actions;
    this.env = env;
    /** @type {Map<string, { sig: string, node: HTMLElement }>} */
    this.cache = new Map();
  }

  reset() {
    this.cache.clear();
  }

  /**
   * @param {Conv} c
   * @param {number | null} unreadFrom first unread seq when the conversation was opened
   * @returns {HTMLElement[]}
   */
  build(c, unreadFrom) {
    const store = this.store;
    /** @type {Row[]} */
    const rows = [];
    for (const m of [...c.messages.values()].sort((a, b) => a.seq - b.seq)) {
      rows.push({ key: `m${m.seq}`, seq: m.seq, sender: m.sender, ts: m.ts, text: m.text, message: m, pending: null });
    }
    if (!c.hasNewer) {
      for (const p of store.pendingFor(c.info.id)) {
        rows.push({ key: `p${p.cid}`, seq: null, sender: store.me.id, ts: p.ts, text: p.text, message: null, pending: p });
      }
    }
    const names = new Set((c.members ?? []).map((m) => m.user.username.toLowerCase()));
    if (c.info.peer) names.add(c.info.peer.username.toLowerCase());
    names.add(store.me.username.toLowerCase());
    const ctx = { me: store.me.username.toLowerCase(), names };
    const receipts = this.receipts(c);

    /** @type {HTMLElement[]} */
    const out = [];
    /** @type {Set<string>} */
    const used = new Set();
    let lastDay = -1;
    for (let i = 0; i < rows.length; i++) {
      const row = rows[i];
      const prev = rows[i - 1];
      const next = rows[i + 1];
      const day = startOfDay(row.ts);
      if (day !== lastDay) {
        lastDay = day;
        out.push(this.cached(`d${day}`, dayLabel(row.ts), () => h('div', { class: 'day-sep', role: 'separator' }, h('span', {}, dayLabel(row.ts)))));
        used.add(`d${day}`);
      }
      if (unreadFrom != null && row.seq === unreadFrom && row.sender !== store.me.id) {
        out.push(this.cached('unread', '', () => h('div', { class: 'unread-sep', role: 'separator' }, h('span', {}, 'New messages'))));
        used.add('unread');
      }
      const joinsPrev = Boolean(
        prev && prev.sender === row.sender && startOfDay(prev.ts) === day && row.ts - prev.ts < GROUP_GAP_MS && !(unreadFrom != null && row.seq === unreadFrom),
      );
      const joinsNext = Boolean(
        next && next.sender === row.sender && startOfDay(next.ts) === day && next.ts - row.ts < GROUP_GAP_MS && !(unreadFrom != null && next.seq === unreadFrom),
      );
      const node = this.row(c, row, joinsPrev, joinsNext, ctx, receipts);
      out.push(node);
      used.add(row.key);
    }
    for (const key of [...this.cache.keys()]) if (!used.has(key)) this.cache.delete(key);
    return out;
  }

  /** @param {string} key @param {string} sig @param {() => HTMLElement} make */
  cached(key, sig, make) {
    const hit = this.cache.get(key);
    if (hit && hit.sig === sig) return hit.node;
    const node = make();
    node.dataset.key = key;
    this.cache.set(key, { sig, node });
    return node;
  }

  /** Highest seq read / delivered by every other member, when the server tells us. @param {Conv} c */
  receipts(c) {
    const store = this.store;
    if (!store.features.receipts && c.readBy.size === 0 && c.deliveredTo.size === 0) return null;
    const others = c.info.kind === 'direct' && c.info.peer
      ? [c.info.peer.id]
      : (c.members ?? []).map((m) => m.user.id).filter((id) => id !== store.me.id);
    if (others.length === 0) return null;
    const read = Math.min(...others.map((id) => c.readBy.get(id) ?? 0));
    const delivered = Math.max(read, Math.min(...others.map((id) => c.deliveredTo.get(id) ?? 0)));
    return { read, delivered };
  }

  /**
   * @param {Conv} c
   * @param {Row} row
   * @param {boolean} joinsPrev
   * @param {boolean} joinsNext
   * @param {{ me: string, names: Set<string> }} ctx
   * @param {{ read: number, delivered: number } | null} receipts
   */
  row(c, row, joinsPrev, joinsNext, ctx, receipts) {
    const store = this.store;
    const mine = row.sender === store.me.id;
    const m = row.message;
    const p = row.pending;
    const group = c.info.kind === 'group';
    const senderName = mine ? 'You' : store.userName(row.sender);
    /** @type {'pending' | 'failed' | 'sent' | 'delivered' | 'read' | null} */
    let status = null;
    if (p) status = p.state;
    else if (mine && m) {
      status = 'sent';
      if (receipts && receipts.read >= m.seq) status = 'read';
      else if (receipts && receipts.delivered >= m.seq) status = 'delivered';
    }
    const replyTo = m?.reply_to ?? p?.reply_to;
    const quoted = replyTo ? store.quoted(c.info.id, replyTo) : null;
    const mentionsMe = Boolean(
      m && !mine && (m.mention_all || m.mentions?.includes(store.me.id) || new RegExp(`(^|[^\\w@])@(${escapeRe(ctx.me)}|all|here|everyone)\\b`, 'i').test(m.text)),
    );
    const editable = Boolean(mine && m && !m.deleted && store.features.edit !== false);
    const myRole = c.members?.find((x) => x.user.id === store.me.id)?.role;
    const deletable = Boolean(m && !m.deleted && store.features.edit !== false && (mine || (group && (myRole === 'owner' || myRole === 'admin'))));
    const attachments = m?.deleted ? [] : (m?.attachments ?? p?.attachments ?? []);
    const sig = JSON.stringify([
      attachments.map((a) => a.id),
      row.text, m?.edited_at, m?.deleted, status, p?.error, joinsPrev, joinsNext, senderName,
      quoted?.text, quoted?.deleted, quoted ? store.userName(quoted.sender) : '', replyTo, editable, deletable, mentionsMe, [...ctx.names].length,
    ]);
    return this.cached(row.key, sig, () => {
      const bubbleBody = m?.deleted
        ? [h('span', { class: 'deleted-text' }, icon('trash', 'icon icon-xs'), ' This message was deleted')]
        : richText(row.text, ctx);
      const hasText = Boolean(m?.deleted || row.text);
      const files = attachments.length ? renderAttachments(attachments, this.env) : null;
      const meta = h(
        'span',
        { class: 'meta' },
        m?.edited_at && !m.deleted ? h('span', { class: 'edited', title: `Edited ${fullTime(m.edited_at)}` }, 'edited') : null,
        h('time', { datetime: new Date(row.ts).toISOString(), title: fullTime(row.ts) }, time(row.ts)),
        status ? statusIcon(status) : null,
      );
      const quote = replyTo
        ? h(
            'button',
            {
              type: 'button',
              class: 'quote',
              'aria-label': `Reply to ${quoted ? (quoted.sender === store.me.id ? 'your message' : store.userName(quoted.sender)) : 'a message'}. Show it.`,
              onclick: () => this.actions.onQuote(replyTo),
            },
            h('span', { class: 'quote-name' }, quoted ? (quoted.sender === store.me.id ? 'You' : store.userName(quoted.sender)) : 'Message'),
            h('span', { class: 'quote-text' }, quoted ? (quoted.deleted ? 'Deleted message' : quoted.text) : 'Original message'),
          )
        : null;
      const actions = m && !m.deleted
        ? h(
            'div',
            { class: 'msg-actions', role: 'toolbar', 'aria-label': 'Message actions' },
            h('button', { type: 'button', class: 'icon-btn sm', 'aria-label': 'Reply', title: 'Reply (R)', onclick: () => this.actions.onReply(m.seq) }, icon('reply')),
            editable
              ? h('button', { type: 'button', class: 'icon-btn sm', 'aria-label': 'Edit', title: 'Edit (E)', onclick: () => this.actions.onEdit(m.seq) }, icon('edit'))
              : null,
            deletable
              ? h('button', { type: 'button', class: 'icon-btn sm danger', 'aria-label': 'Delete', title: 'Delete', onclick: () => this.actions.onDelete(m.seq) }, icon('trash'))
              : null,
          )
        : null;
      const failed = p?.state === 'failed'
        ? h(
            'div',
            { class: 'failed-note', role: 'alert' },
            icon('alert', 'icon icon-xs'),
            h('span', {}, p.error || 'Not sent.'),
            h('button', { type: 'button', class: 'link-btn', onclick: () => this.actions.onRetry(p.cid) }, 'Retry'),
            h('button', { type: 'button', class: 'link-btn', onclick: () => this.actions.onDiscard(p.cid) }, 'Delete'),
          )
        : null;
      const cls = [
        'msg',
        mine ? 'mine' : 'theirs',
        joinsPrev ? 'joins-prev' : 'first',
        joinsNext ? 'joins-next' : 'last',
        p ? `is-${p.state}` : '',
        m?.deleted ? 'is-deleted' : '',
        mentionsMe ? 'mentions-me' : '',
        files ? 'has-attachments' : '',
      ].filter(Boolean).join(' ');
      const said = m?.deleted ? 'deleted message' : [row.text, attachmentSummary(attachments)].filter(Boolean).join(' ');
      const label = `${senderName}, ${time(row.ts)}: ${said}${status && status !== 'sent' ? `, ${status}` : ''}`;
      return h(
        'div',
        {
          class: cls,
          tabindex: '-1',
          role: 'article',
          'aria-label': label,
          dataset: m ? { seq: String(m.seq) } : { cid: p?.cid ?? '' },
        },
        !mine && group ? (joinsNext ? h('span', { class: 'avatar-spacer' }) : avatar(senderName, { size: 'sm' })) : null,
        h(
          'div',
          { class: 'msg-col' },
          !mine && group && !joinsPrev ? h('div', { class: 'sender' }, senderName) : null,
          quote,
          h(
            'div',
            { class: `bubble${files ? ' with-files' : ''}${hasText ? '' : ' files-only'}` },
            files,
            hasText ? h('span', { class: 'text' }, bubbleBody) : null,
            meta,
          ),
          failed,
        ),
        actions,
      );
    });
  }
}

/** @param {'pending' | 'failed' | 'sent' | 'delivered' | 'read'} status */
function statusIcon(status) {
  const labels = { pending: 'Sending', failed: 'Not sent', sent: 'Sent', delivered: 'Delivered', read: 'Read' };
  const name = status === 'pending' ? 'clock' : status === 'failed' ? 'alert' : status === 'sent' ? 'check' : 'checks';
  return h('span', { class: `status status-${status}`, title: labels[status], role: 'img', 'aria-label': labels[status] }, icon(name, 'icon icon-xs'));
}

/** @param {string} s */
function escapeRe(s) {
  return s.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&');
}
