// The client's state: conversations, the loaded window of each conversation's messages,
// the outbox of optimistic sends, presence and typing. It applies server frames
// idempotently (by seq and cid), so offline sync and live events can overlap freely.

import { ApiError, describeError, isMissingEndpoint } from './api.js';
import { Emitter, load, newCid, save } from './util.js';

/** @typedef {import('./types.js').User} User */
/** @typedef {import('./types.js').Message} Message */
/** @typedef {import('./types.js').ConversationSummary} ConversationSummary */
/** @typedef {import('./types.js').ConversationInfo} ConversationInfo */
/** @typedef {import('./types.js').Member} Member */
/** @typedef {import('./types.js').Presence} Presence */
/** @typedef {import('./types.js').Outgoing} Outgoing */
/** @typedef {import('./types.js').ServerFrame} ServerFrame */

const PAGE = 50;
/** A send with no answer for this long on a live connection means the connection is dead. */
const ACK_TIMEOUT_MS = 15_000;
const RETRYABLE = new Set(['unavailable', 'rate_limited', 'internal']);

/**
 * @typedef {{
 *   info: ConversationSummary,
 *   messages: Map<number, Message>,
 *   lo: number, hi: number,
 *   loaded: boolean, loading: boolean, hasOlder: boolean, hasNewer: boolean,
 *   members: Member[] | null,
 *   typing: Map<string, number>,
 *   readBy: Map<string, number>,
 *   deliveredTo: Map<string, number>,
 *   extra: Map<number, Message | null>,
 *   left: boolean,
 *   gapFilling: boolean,
 * }} Conv
 *
 * @typedef {{ presence: boolean | null, search: boolean | null, typing: boolean | null, edit: boolean | null, receipts: boolean | null }} Features
 */

/** @param {ConversationSummary} info @returns {Conv} */
function newConv(info) {
  return {
    info,
    messages: new Map(),
    lo: 0,
    hi: 0,
    loaded: false,
    loading: false,
    hasOlder: false,
    hasNewer: false,
    members: null,
    typing: new Map(),
    readBy: new Map(),
    deliveredTo: new Map(),
    extra: new Map(),
    left: false,
    gapFilling: false,
  };
}

/**
 * @extends {Emitter<{
 *   change: { list?: boolean, conv?: string },
 *   jump: { conv: string, seq: number },
 *   toast: { text: string, kind?: 'error' | 'info' },
 *   removed: { conv: string, by: string, self: boolean },
 * }>}
 */
export class Store extends Emitter {
  /**
   * @param {import('./api.js').Api} api
   * @param {import('./socket.js').Socket} socket
   * @param {User} me
   */
  constructor(api, socket, me) {
    super();
    this.api = api;
    this.socket = socket;
    this.me = me;
    /** @type {Map<string, Conv>} */
    this.convs = new Map();
    /** @type {Map<string, User>} */
    this.users = new Map([[me.id, me]]);
    /** @type {Map<string, Presence>} */
    this.presence = new Map();
    /** @type {Features} */
    this.features = { presence: null, search: null, typing: null, edit: null, receipts: null };
    /** @type {Outgoing[]} */
    this.outbox = [];
    /** @type {Map<string, number>} cid → when it was last written to the socket */
    this.sentAt = new Map();
    /** @type {string | null} */
    this.openId = null;
    this.listLoaded = false;
    /** @type {Set<string>} */
    this.userFetches = new Set();
    this.disposers = [
      socket.on('frame', (f) => this.onFrame(f)),
      socket.on('synced', () => this.onSynced()),
    ];
    this.watchdog = setInterval(() => this.checkAcks(), 5000);
    this.typingSweep = setInterval(() => this.sweepTyping(), 1000);
    const saved = /** @type {Outgoing[] | null} */ (load(this.outboxKey));
    if (Array.isArray(saved)) this.outbox = saved.filter((o) => o.kind === 'send').map((o) => ({ ...o, state: 'pending' }));
  }

  dispose() {
    for (const d of this.disposers) d();
    clearInterval(this.watchdog);
    clearInterval(this.typingSweep);
  }

  get outboxKey() {
    return `parlor.outbox.${this.me.id}`;
  }

  persistOutbox() {
    save(
      this.outboxKey,
      this.outbox.filter((o) => o.kind === 'send'),
    );
  }

  /** @param {{ list?: boolean, conv?: string }} what */
  changed(what) {
    this.emit('change', what);
  }

  // ---- users and presence

  /** @param {string} id */
  userName(id) {
    const user = this.users.get(id);
    if (user) return user.username;
    this.fetchUser(id);
    return '…';
  }

  /** @param {string} id */
  async fetchUser(id) {
    if (this.userFetches.has(id)) return;
    this.userFetches.add(id);
    try {
      const user = await this.api.userById(id);
      this.users.set(user.id, user);
      this.changed({ list: true, conv: this.openId ?? undefined });
    } catch {
      /* shown as … */
    }
  }

  /** @param {User} user */
  rememberUser(user) {
    this.users.set(user.id, user);
  }

  /** Users whose presence matters now: direct peers and the open group's members. */
  presenceTargets() {
    /** @type {Set<string>} */
    const ids = new Set();
    for (const c of this.convs.values()) if (c.info.peer) ids.add(c.info.peer.id);
    const open = this.openId ? this.convs.get(this.openId) : null;
    for (const m of open?.members ?? []) ids.add(m.user.id);
    ids.add(this.me.id);
    return [...ids];
  }

  async refreshPresence() {
    if (this.features.presence === false) return;
    const ids = this.presenceTargets();
    if (ids.length === 0) return;
    try {
      for (let i = 0; i < ids.length; i += 100) {
        const list = await this.api.presence(ids.slice(i, i + 100));
        for (const p of list) this.presence.set(p.user, p);
      }
      this.features.presence = true;
      this.changed({ list: true, conv: this.openId ?? undefined });
    } catch (e) {
      if (isMissingEndpoint(e)) this.features.presence = false;
    }
  }

  async probeSearch() {
    try {
      await this.api.search('a', { limit: 1 });
      this.features.search = true;
    } catch (e) {
      this.features.search = !isMissingEndpoint(e);
    }
    this.changed({ list: true });
  }

  // ---- conversations

  sortedConversations() {
    return [...this.convs.values()]
      .filter((c) => !c.left)
      .sort((a, b) => activity(b) - activity(a) || (a.info.id < b.info.id ? 1 : -1));
  }

  /** @param {Conv} c */
  title(c) {
    if (c.info.kind === 'direct') return c.info.peer?.username ?? 'Direct message';
    return c.info.name || 'Group';
  }

  /** Pending and failed sends of a conversation, oldest first. @param {string} conv */
  pendingFor(conv) {
    return this.outbox.filter((o) => o.conv === conv && o.kind === 'send');
  }

  async loadConversations() {
    const list = await this.api.conversations();
    const seen = new Set();
    for (const s of list) {
      seen.add(s.id);
      if (s.peer) this.users.set(s.peer.id, s.peer);
      const c = this.convs.get(s.id);
      if (!c) {
        this.convs.set(s.id, newConv(s));
        continue;
      }
      const local = c.info;
      const merged = { ...s };
      if (local.last_seq > s.last_seq) {
        merged.last_seq = local.last_seq;
        merged.last_message = local.last_message;
      }
      merged.read_seq = Math.max(local.read_seq, s.read_seq);
      merged.unread = Math.max(0, merged.last_seq - merged.read_seq);
      c.info = merged;
      c.left = false;
    }
    for (const [id, c] of this.convs) {
      if (!seen.has(id) && this.listLoaded) {
        // No longer a member (removed while we were away).
        c.left = true;
        if (id !== this.openId) this.convs.delete(id);
      }
    }
    this.listLoaded = true;
    this.changed({ list: true });
  }

  /** @param {ConversationInfo} info */
  ensureConv(info) {
    let c = this.convs.get(info.id);
    if (!c) {
      c = newConv({ ...info, member_count: 0, last_seq: 0, read_seq: 0, unread: 0 });
      this.convs.set(info.id, c);
    }
    return c;
  }

  /** @param {string} id */
  async loadDetail(id) {
    const c = this.convs.get(id);
    if (!c) return;
    // Only the newest answer counts: an older one may arrive last with stale members.
    const ticket = (this.detailTickets.get(id) ?? 0) + 1;
    this.detailTickets.set(id, ticket);
    try {
      const d = await this.api.conversation(id);
      if (this.detailTickets.get(id) !== ticket) return;
      c.members = d.members;
      for (const m of d.members) {
        this.users.set(m.user.id, m.user);
        if (m.read_seq != null && m.user.id !== this.me.id) c.readBy.set(m.user.id, m.read_seq);
        if (m.delivered_seq != null && m.user.id !== this.me.id) c.deliveredTo.set(m.user.id, m.delivered_seq);
      }
      c.info.member_count = d.members.length;
      if (d.name) c.info.name = d.name;
      if (c.info.kind === 'direct' && !c.info.peer) {
        const peer = d.members.find((m) => m.user.id !== this.me.id);
        if (peer) c.info.peer = peer.user;
      }
      this.changed({ list: true, conv: id });
      this.refreshPresence();
      this.loadReceipts(id);
    } catch (e) {
      if (e instanceof ApiError && (e.code === 'not_member' || e.code === 'not_found')) {
        c.left = true;
        this.changed({ list: true, conv: id });
      }
    }
  }

  /** @type {Map<string, number>} */
  detailTickets = new Map();

  /** Other members' delivered and read markers. @param {string} id */
  async loadReceipts(id) {
    const c = this.convs.get(id);
    if (!c || this.features.receipts === false) return;
    try {
      const r = await this.api.receipts(id);
      for (const m of r.receipts) {
        if (m.user === this.me.id) continue;
        c.readBy.set(m.user, Math.max(c.readBy.get(m.user) ?? 0, m.read_seq));
        c.deliveredTo.set(m.user, Math.max(c.deliveredTo.get(m.user) ?? 0, m.delivered_seq, m.read_seq));
      }
      this.features.receipts = true;
      this.changed({ conv: id });
    } catch (e) {
      if (isMissingEndpoint(e)) this.features.receipts = false;
    }
  }

  /** @type {Map<string, number>} highest seq reported delivered, per conversation */
  deliveredSent = new Map();
  /** @type {Map<string, number>} */
  deliveredQueue = new Map();
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  deliveredTimer = undefined;

  /** Tells the other members this device has received `seq`. @param {string} conv @param {number} seq */
  delivered(conv, seq) {
    if ((this.deliveredSent.get(conv) ?? 0) >= seq || (this.deliveredQueue.get(conv) ?? 0) >= seq) return;
    this.deliveredQueue.set(conv, seq);
    if (this.deliveredTimer) return;
    this.deliveredTimer = setTimeout(() => {
      this.deliveredTimer = undefined;
      for (const [c, s] of this.deliveredQueue) {
        if (this.socket.send({ type: 'delivered', conv: c, seq: s })) this.deliveredSent.set(c, s);
      }
      this.deliveredQueue.clear();
    }, 300);
  }

  /** @param {string | null} id */
  async open(id) {
    this.openId = id;
    if (!id) return;
    let c = this.convs.get(id);
    if (!c) {
      try {
        const d = await this.api.conversation(id);
        c = this.ensureConv(d);
        c.info.last_seq = d.last_seq;
        c.info.member_count = d.members.length;
      } catch (e) {
        this.emit('toast', { text: describeError(e), kind: 'error' });
        return;
      }
    }
    if (!c.loaded && !c.loading) await this.loadLatest(id);
    if (!c.members) this.loadDetail(id);
  }

  /** @param {Conv} c @param {Message[]} messages */
  addMessages(c, messages) {
    for (const m of messages) {
      const existing = c.messages.get(m.seq);
      c.messages.set(m.seq, existing ? { ...existing, ...m } : m);
      if (m.sender === this.me.id && m.cid) this.settle(m.cid);
    }
  }

  /** @param {string} id */
  async loadLatest(id) {
    const c = this.convs.get(id);
    if (!c) return;
    c.loading = true;
    try {
      const page = await this.api.history(id, { limit: PAGE });
      c.messages.clear();
      this.addMessages(c, page.messages);
      c.lo = page.messages[0]?.seq ?? c.info.last_seq + 1;
      c.hi = page.messages.at(-1)?.seq ?? c.info.last_seq;
      if (page.messages.length === 0) c.lo = c.hi + 1;
      c.hasOlder = page.has_more;
      c.hasNewer = false;
      c.loaded = true;
      const last = page.messages.at(-1);
      if (last && last.seq >= c.info.last_seq) {
        c.info.last_seq = last.seq;
        c.info.last_message = last;
        c.info.unread = Math.max(0, c.info.last_seq - c.info.read_seq);
      }
    } catch (e) {
      if (e instanceof ApiError && e.code === 'not_member') c.left = true;
      else this.emit('toast', { text: describeError(e), kind: 'error' });
    } finally {
      c.loading = false;
      this.changed({ conv: id, list: true });
    }
  }

  /** @param {string} id */
  async loadOlder(id) {
    const c = this.convs.get(id);
    if (!c || c.loading || !c.hasOlder) return;
    c.loading = true;
    try {
      const page = await this.api.history(id, { before: c.lo, limit: PAGE });
      this.addMessages(c, page.messages);
      if (page.messages.length) c.lo = page.messages[0].seq;
      c.hasOlder = page.has_more && page.messages.length > 0;
    } catch (e) {
      this.emit('toast', { text: describeError(e), kind: 'error' });
    } finally {
      c.loading = false;
      this.changed({ conv: id });
    }
  }

  /** @param {string} id */
  async loadNewer(id) {
    const c = this.convs.get(id);
    if (!c || c.loading || !c.hasNewer) return;
    c.loading = true;
    try {
      const page = await this.api.history(id, { after: c.hi, limit: PAGE });
      this.addMessages(c, page.messages);
      if (page.messages.length) c.hi = page.messages.at(-1)?.seq ?? c.hi;
      c.hasNewer = page.has_more && page.messages.length > 0;
    } catch (e) {
      this.emit('toast', { text: describeError(e), kind: 'error' });
    } finally {
      c.loading = false;
      this.changed({ conv: id });
    }
  }

  /** Fetches what is missing between the window and the conversation's last message. @param {Conv} c */
  async fillGap(c) {
    if (c.gapFilling || !c.loaded || c.hasNewer) return;
    c.gapFilling = true;
    try {
      for (let i = 0; i < 20 && c.hi < c.info.last_seq; i++) {
        const page = await this.api.history(c.info.id, { after: c.hi, limit: 200 });
        this.addMessages(c, page.messages);
        if (!page.messages.length) break;
        c.hi = Math.max(c.hi, page.messages.at(-1)?.seq ?? c.hi);
        if (!page.has_more) break;
      }
    } catch {
      /* next sync tries again */
    } finally {
      c.gapFilling = false;
      this.changed({ conv: c.info.id });
      this.maybeMarkRead(c.info.id);
    }
  }

  /** Loads the messages around `seq` (from search) and asks the view to show it. @param {string} id @param {number} seq */
  async jumpTo(id, seq) {
    await this.open(id);
    const c = this.convs.get(id);
    if (!c) return;
    if (!c.messages.has(seq)) {
      c.loading = true;
      try {
        const [older, newer] = await Promise.all([
          this.api.history(id, { before: seq + 1, limit: 25 }),
          this.api.history(id, { after: seq, limit: 25 }),
        ]);
        c.messages.clear();
        this.addMessages(c, [...older.messages, ...newer.messages]);
        const all = [...older.messages, ...newer.messages];
        c.lo = all[0]?.seq ?? seq;
        c.hi = all.at(-1)?.seq ?? seq;
        c.hasOlder = older.has_more;
        c.hasNewer = newer.has_more;
        c.loaded = true;
      } catch (e) {
        this.emit('toast', { text: describeError(e), kind: 'error' });
      } finally {
        c.loading = false;
      }
    }
    this.changed({ conv: id });
    this.emit('jump', { conv: id, seq });
  }

  /** The replied-to message, from the window or fetched once. @param {string} id @param {number} seq */
  quoted(id, seq) {
    const c = this.convs.get(id);
    if (!c) return null;
    const m = c.messages.get(seq);
    if (m) return m;
    if (c.extra.has(seq)) return c.extra.get(seq) ?? null;
    c.extra.set(seq, null);
    this.api
      .history(id, { after: seq - 1, limit: 1 })
      .then((page) => {
        const found = page.messages.find((x) => x.seq === seq);
        if (found) {
          c.extra.set(seq, found);
          this.changed({ conv: id });
        }
      })
      .catch(() => {});
    return null;
  }

  // ---- frames

  /** @param {ServerFrame} f */
  onFrame(f) {
    switch (f.type) {
      case 'message': {
        const { type: _t, pos: _p, ...m } = f;
        this.applyMessage(m);
        break;
      }
      case 'ack':
        this.onAck(f);
        break;
      case 'error':
        this.onError(f);
        break;
      case 'member':
        this.onMember(f);
        break;
      case 'read': {
        const c = this.convs.get(f.conv);
        if (!c) break;
        if (f.user === this.me.id) {
          c.info.read_seq = Math.max(c.info.read_seq, f.seq);
          c.info.unread = Math.max(0, c.info.last_seq - c.info.read_seq);
        } else {
          this.features.receipts = true;
          c.readBy.set(f.user, Math.max(c.readBy.get(f.user) ?? 0, f.seq));
          c.deliveredTo.set(f.user, Math.max(c.deliveredTo.get(f.user) ?? 0, f.seq));
        }
        this.changed({ list: true, conv: f.conv });
        break;
      }
      case 'delivered': {
        const c = this.convs.get(f.conv);
        if (!c || f.user === this.me.id) break;
        this.features.receipts = true;
        c.deliveredTo.set(f.user, Math.max(c.deliveredTo.get(f.user) ?? 0, f.seq));
        this.changed({ conv: f.conv });
        break;
      }
      case 'presence': {
        const { type: _t, ...p } = f;
        this.features.presence = true;
        this.presence.set(p.user, { ...this.presence.get(p.user), ...p });
        if (p.online) {
          const prev = this.presence.get(p.user);
          if (prev) delete prev.last_seen;
        }
        this.changed({ list: true, conv: this.openId ?? undefined });
        break;
      }
      case 'typing': {
        if (f.user === this.me.id) break;
        this.features.typing = true;
        const c = this.convs.get(f.conv);
        if (!c) break;
        if (f.typing) c.typing.set(f.user, Date.now() + (f.expires_in_ms ?? 6000));
        else c.typing.delete(f.user);
        this.changed({ conv: f.conv, list: true });
        break;
      }
      case 'edited': {
        this.features.edit = true;
        this.settleChange(f.conv, f.seq, 'edit');
        this.patchMessage(f.conv, f.seq, { text: f.text, edited_at: f.edited_at });
        break;
      }
      case 'deleted': {
        this.features.edit = true;
        this.settleChange(f.conv, f.seq, 'delete');
        this.patchMessage(f.conv, f.seq, { text: '', deleted: true });
        break;
      }
      default:
        break;
    }
  }

  /** An edit or delete took effect (they are not acknowledged otherwise). @param {string} conv @param {number} seq @param {'edit' | 'delete'} kind */
  settleChange(conv, seq, kind) {
    for (const o of this.outbox.filter((x) => x.conv === conv && x.seq === seq && (x.kind === kind || kind === 'delete'))) {
      this.settle(o.cid);
    }
  }

  /** @param {string} conv @param {number} seq @param {Partial<Message>} patch */
  patchMessage(conv, seq, patch) {
    const c = this.convs.get(conv);
    if (!c) return;
    const m = c.messages.get(seq);
    if (m) c.messages.set(seq, { ...m, ...patch });
    const extra = c.extra.get(seq);
    if (extra) c.extra.set(seq, { ...extra, ...patch });
    if (c.info.last_message?.seq === seq) c.info.last_message = { ...c.info.last_message, ...patch };
    this.changed({ conv, list: true });
  }

  /** @param {Message} m */
  applyMessage(m) {
    let c = this.convs.get(m.conv);
    if (!c) {
      // A conversation we have not seen yet (someone started it): load the list.
      this.scheduleListReload();
      return;
    }
    const info = c.info;
    if (m.seq >= info.last_seq) {
      info.last_seq = m.seq;
      info.last_message = m;
    }
    if (m.sender === this.me.id) {
      info.read_seq = Math.max(info.read_seq, m.seq);
      if (m.cid) this.settle(m.cid);
    }
    info.unread = Math.max(0, info.last_seq - info.read_seq);
    c.typing.delete(m.sender);
    if (m.sender !== this.me.id) this.delivered(m.conv, m.seq);
    if (c.loaded && !c.hasNewer) {
      if (m.seq <= c.hi || m.seq === c.hi + 1) {
        if (m.seq >= c.lo || c.messages.size === 0) {
          this.addMessages(c, [m]);
          c.hi = Math.max(c.hi, m.seq);
          if (c.messages.size === 1) c.lo = m.seq;
        }
      } else {
        this.fillGap(c);
      }
    }
    this.changed({ list: true, conv: m.conv });
    this.maybeMarkRead(m.conv);
  }

  scheduleListReload() {
    if (this.listTimer) return;
    this.listTimer = setTimeout(() => {
      this.listTimer = undefined;
      this.loadConversations()
        .then(() => this.refreshPresence())
        .catch(() => {});
    }, 150);
  }

  /** @type {ReturnType<typeof setTimeout> | undefined} */
  listTimer = undefined;

  /** @param {import('./types.js').AckFrame} f */
  onAck(f) {
    const entry = this.outbox.find((o) => o.cid === f.cid);
    if (!entry) return;
    if (entry.kind === 'send') {
      /** @type {Message} */
      const m = { conv: f.conv, id: f.id, seq: f.seq, sender: this.me.id, text: entry.text, ts: f.ts, cid: f.cid };
      if (entry.reply_to) m.reply_to = entry.reply_to;
      if (entry.mentions) m.mentions = entry.mentions;
      if (entry.mention_all) m.mention_all = true;
      if (entry.attachments?.length) m.attachments = entry.attachments;
      const c = this.convs.get(f.conv);
      const existing = c?.messages.get(f.seq);
      this.applyMessage(existing ?? m);
    } else {
      this.features.edit = true;
    }
    this.settle(f.cid);
  }

  /** Removes a committed entry from the outbox. @param {string} cid */
  settle(cid) {
    const i = this.outbox.findIndex((o) => o.cid === cid);
    if (i < 0) return;
    const [entry] = this.outbox.splice(i, 1);
    this.sentAt.delete(cid);
    if (entry.kind === 'send') this.persistOutbox();
    this.changed({ conv: entry.conv });
  }

  /** @param {import('./types.js').ErrorFrame} f */
  onError(f) {
    if (f.cid) {
      const entry = this.outbox.find((o) => o.cid === f.cid);
      if (!entry) return;
      this.sentAt.delete(f.cid);
      if (RETRYABLE.has(f.code)) {
        setTimeout(() => this.write(entry), Math.max(500, f.retry_after_ms ?? 2000));
        return;
      }
      if (entry.kind === 'send') {
        entry.state = 'failed';
        entry.error = entry.attachments?.length && (f.code === 'not_found' || f.code === 'conflict')
          ? 'An attached file is no longer available. Delete this message and attach the file again.'
          : describeError(new ApiError(0, f.code, f.message));
        this.persistOutbox();
        this.changed({ conv: entry.conv, list: true });
      } else {
        this.revert(entry, describeError(new ApiError(0, f.code, f.message)));
      }
      return;
    }
    if (f.code === 'unknown_frame') {
      if (/`typing`/.test(f.message)) this.features.typing = false;
      if (/`(edit|delete)`/.test(f.message)) {
        this.features.edit = false;
        for (const entry of this.outbox.filter((o) => o.kind !== 'send')) {
          this.revert(entry, 'Editing and deleting messages is not available on this server yet.');
        }
      }
    }
  }

  /** Undoes an optimistic edit or delete. @param {Outgoing} entry @param {string} why */
  revert(entry, why) {
    this.outbox = this.outbox.filter((o) => o !== entry);
    const c = this.convs.get(entry.conv);
    const original = /** @type {Outgoing & { original?: Message }} */ (entry).original;
    if (c && entry.seq != null && original) c.messages.set(entry.seq, original);
    this.emit('toast', { text: why, kind: 'error' });
    this.changed({ conv: entry.conv });
  }

  /** @param {import('./types.js').MemberFrame} f */
  onMember(f) {
    const mine = f.user === this.me.id;
    if (mine && f.change === 'added') {
      this.ensureConv(f.conversation);
      this.scheduleListReload();
      this.changed({ list: true });
      return;
    }
    const c = this.convs.get(f.conv);
    if (!c) {
      if (mine) return;
      this.scheduleListReload();
      return;
    }
    if (mine && (f.change === 'removed' || f.change === 'left')) {
      c.left = true;
      if (f.conv !== this.openId) this.convs.delete(f.conv);
      this.emit('removed', { conv: f.conv, by: f.by, self: f.change === 'left' });
      this.changed({ list: true, conv: f.conv });
      return;
    }
    if (f.change === 'added') {
      c.info.member_count += c.members && !c.members.some((m) => m.user.id === f.user) ? 1 : 0;
      if (c.members && !c.members.some((m) => m.user.id === f.user)) {
        const user = this.users.get(f.user);
        if (user) c.members.push({ user, role: f.role ?? 'member' });
        else this.loadDetail(f.conv);
      }
      if (!c.members) c.info.member_count += 1;
    } else if (f.change === 'removed' || f.change === 'left') {
      if (c.members) c.members = c.members.filter((m) => m.user.id !== f.user);
      c.info.member_count = Math.max(1, c.info.member_count - 1);
      c.readBy.delete(f.user);
      c.typing.delete(f.user);
      if (f.conv === this.openId) this.loadDetail(f.conv);
    } else if (f.change === 'role' && c.members) {
      const m = c.members.find((x) => x.user.id === f.user);
      if (m && f.role) m.role = f.role;
    }
    this.changed({ list: true, conv: f.conv });
  }

  async onSynced() {
    try {
      await this.loadConversations();
    } catch {
      /* the socket retries */
    }
    for (const c of this.convs.values()) {
      if (c.loaded && !c.hasNewer && c.hi < c.info.last_seq) this.fillGap(c);
    }
    this.flushOutbox();
    this.refreshPresence();
    for (const c of this.convs.values()) {
      if (c.info.unread > 0 && c.info.last_message && c.info.last_message.sender !== this.me.id) this.delivered(c.info.id, c.info.last_seq);
    }
    if (this.openId) {
      this.maybeMarkRead(this.openId);
      this.loadReceipts(this.openId);
    }
  }

  // ---- sending

  /**
   * @param {string} conv
   * @param {string} text may be empty when there are attachments
   * @param {number} [replyTo]
   * @param {import('./types.js').Attachment[]} [attachments] ready uploads
   */
  send(conv, text, replyTo, attachments) {
    /** @type {Outgoing} */
    const entry = { kind: 'send', cid: newCid(), conv, text, ts: Date.now(), state: 'pending' };
    if (replyTo) entry.reply_to = replyTo;
    // The whole attachment, not only its id: the pending message shows it.
    if (attachments?.length) entry.attachments = attachments;
    const mentions = this.mentionsIn(conv, text);
    if (mentions.ids.length) entry.mentions = mentions.ids;
    if (mentions.all) entry.mention_all = true;
    this.outbox.push(entry);
    this.persistOutbox();
    const c = this.convs.get(conv);
    if (c?.hasNewer) this.loadLatest(conv);
    this.write(entry);
    this.changed({ conv, list: true });
  }

  /**
   * Members named with `@username` in `text` (only members: the server refuses others),
   * and `@all` / `@everyone` / `@here` in groups.
   * @param {string} conv @param {string} text
   */
  mentionsIn(conv, text) {
    const c = this.convs.get(conv);
    /** @type {Map<string, string>} */
    const byName = new Map();
    for (const m of c?.members ?? []) byName.set(m.user.username.toLowerCase(), m.user.id);
    if (c?.info.peer) byName.set(c.info.peer.username.toLowerCase(), c.info.peer.id);
    /** @type {Set<string>} */
    const ids = new Set();
    let all = false;
    for (const m of text.matchAll(/(^|[^\w@])@([a-z0-9][a-z0-9_.-]{1,31})/gi)) {
      const name = m[2].toLowerCase().replace(/[.-]+$/, '');
      if (name === 'all' || name === 'everyone' || name === 'here') {
        if (c?.info.kind === 'group') all = true;
        continue;
      }
      const id = byName.get(name);
      if (id && id !== this.me.id) ids.add(id);
    }
    return { ids: [...ids].slice(0, 100), all };
  }

  /** @param {import('./types.js').Availability} status */
  async setStatus(status) {
    try {
      const p = await this.api.setStatus(status);
      this.presence.set(this.me.id, p);
      this.changed({ list: true });
    } catch (e) {
      this.emit('toast', { text: describeError(e), kind: 'error' });
    }
  }

  /** @param {Outgoing} entry */
  write(entry) {
    if (!this.outbox.includes(entry)) return;
    entry.state = 'pending';
    /** @type {Record<string, unknown>} */
    let frame;
    if (entry.kind === 'send') {
      frame = { type: 'send', cid: entry.cid, conv: entry.conv, text: entry.text };
      if (entry.reply_to) frame.reply_to = entry.reply_to;
      if (entry.mentions?.length) frame.mentions = entry.mentions;
      if (entry.mention_all) frame.mention_all = true;
      if (entry.attachments?.length) frame.attachments = entry.attachments.map((a) => a.id);
    } else if (entry.kind === 'edit') {
      frame = { type: 'edit', cid: entry.cid, conv: entry.conv, seq: entry.seq, text: entry.text };
    } else {
      frame = { type: 'delete', cid: entry.cid, conv: entry.conv, seq: entry.seq };
    }
    if (this.socket.send(frame)) this.sentAt.set(entry.cid, Date.now());
  }

  flushOutbox() {
    for (const entry of this.outbox) if (entry.state === 'pending') this.write(entry);
  }

  checkAcks() {
    if (!this.socket.online) return;
    const now = Date.now();
    for (const [, at] of this.sentAt) {
      if (now - at > ACK_TIMEOUT_MS) {
        this.sentAt.clear();
        this.socket.drop('no answer from the server');
        return;
      }
    }
  }

  /** @param {string} cid */
  retry(cid) {
    const entry = this.outbox.find((o) => o.cid === cid);
    if (entry) {
      entry.state = 'pending';
      delete entry.error;
      this.persistOutbox();
      this.write(entry);
      this.changed({ conv: entry.conv });
    }
  }

  /** @param {string} cid */
  discard(cid) {
    const entry = this.outbox.find((o) => o.cid === cid);
    this.outbox = this.outbox.filter((o) => o.cid !== cid);
    this.persistOutbox();
    if (entry) this.changed({ conv: entry.conv, list: true });
  }

  /** @param {string} conv @param {number} seq @param {string} text */
  edit(conv, seq, text) {
    const c = this.convs.get(conv);
    const original = c?.messages.get(seq);
    if (!c || !original || original.text === text) return;
    const entry = /** @type {Outgoing & { original: Message }} */ ({
      kind: 'edit', cid: newCid(), conv, seq, text, ts: Date.now(), state: 'pending', original,
    });
    c.messages.set(seq, { ...original, text, edited_at: Date.now() });
    this.outbox.push(entry);
    this.write(entry);
    this.changed({ conv });
  }

  /** @param {string} conv @param {number} seq */
  remove(conv, seq) {
    const c = this.convs.get(conv);
    const original = c?.messages.get(seq);
    if (!c || !original) return;
    const entry = /** @type {Outgoing & { original: Message }} */ ({
      kind: 'delete', cid: newCid(), conv, seq, text: '', ts: Date.now(), state: 'pending', original,
    });
    c.messages.set(seq, { ...original, text: '', deleted: true });
    this.outbox.push(entry);
    this.write(entry);
    this.changed({ conv });
  }

  /** @param {string} conv @param {boolean} typing */
  typing(conv, typing) {
    if (this.features.typing === false) return;
    this.socket.send({ type: 'typing', conv, typing });
  }

  sweepTyping() {
    const now = Date.now();
    for (const c of this.convs.values()) {
      let changed = false;
      for (const [user, until] of c.typing) {
        if (until <= now) {
          c.typing.delete(user);
          changed = true;
        }
      }
      if (changed) this.changed({ conv: c.info.id, list: true });
    }
  }

  /** Whether the view can mark read; set by the conversation view. */
  canMarkRead = () => false;

  /** Marks the open conversation read up to its newest loaded message. @param {string} id */
  maybeMarkRead(id) {
    if (id !== this.openId || !this.canMarkRead()) return;
    const c = this.convs.get(id);
    if (!c || !c.loaded || c.hasNewer) return;
    const seq = Math.min(c.hi, c.info.last_seq);
    if (seq <= c.info.read_seq) return;
    c.info.read_seq = seq;
    c.info.unread = Math.max(0, c.info.last_seq - seq);
    if (!this.socket.send({ type: 'read', conv: id, seq })) {
      this.api.markRead(id, seq).catch(() => {});
    }
    this.changed({ list: true });
  }
}

/** @param {Conv} c */
function activity(c) {
  return c.info.last_message?.ts ?? c.info.created_at ?? 0;
}
