// Who may notify the user, as the server stores it: per-conversation mutes and
// do-not-disturb. The conversation list does not carry mute settings, so each
// conversation's are fetched the first time it is shown and kept for the session.

import { describeError } from './api.js';
import { Emitter } from './util.js';

/** @typedef {import('./types.js').ConversationNotifications} ConversationNotifications */
/** @typedef {import('./types.js').NotificationPreferences} NotificationPreferences */

export const HOUR_MS = 3_600_000;

/** @param {{ until?: number }} s @param {number} [now] */
function current(s, now = Date.now()) {
  return s.until == null || s.until > now;
}

/** @extends {Emitter<{ change: { conv?: string }, error: string }>} */
export class Mutes extends Emitter {
  /** @param {import('./api.js').Api} api */
  constructor(api) {
    super();
    this.api = api;
    /** @type {Map<string, ConversationNotifications>} */
    this.convs = new Map();
    /** @type {Set<string>} */
    this.fetching = new Set();
    /** @type {NotificationPreferences | null} */
    this.prefs = null;
    /**
     * "Mute mentions too" chosen while not muted: the server keeps it only with a mute,
     * so it waits here for the next one.
     * @type {Map<string, boolean>}
     */
    this.mentionsChoice = new Map();
  }

  /** The conversation's settings, or null until they arrive. @param {string} conv */
  of(conv) {
    const known = this.convs.get(conv);
    if (!known && !this.fetching.has(conv)) this.fetch(conv);
    return known ?? null;
  }

  /** Whether ordinary messages of `conv` are muted now (as far as known). @param {string} conv */
  muted(conv) {
    const s = this.convs.get(conv);
    return Boolean(s?.muted && current(s));
  }

  /** Whether "Mute mentions too" is on for `conv`. @param {string} conv */
  mentionsMuted(conv) {
    if (this.muted(conv)) return Boolean(this.convs.get(conv)?.mute_mentions);
    return this.mentionsChoice.get(conv) ?? false;
  }

  /** @param {string} conv @param {boolean} on */
  async setMentionsMuted(conv, on) {
    this.mentionsChoice.set(conv, on);
    if (this.muted(conv)) await this.mute(conv, { mentions: on });
    else this.emit('change', { conv });
  }

  /** @param {string} conv */
  async fetch(conv) {
    this.fetching.add(conv);
    try {
      this.convs.set(conv, await this.api.conversationNotifications(conv));
      this.emit('change', { conv });
    } catch {
      /* shown as not muted; the next look asks again */
    } finally {
      this.fetching.delete(conv);
    }
  }

  /**
   * @param {string} conv
   * @param {{ for?: number | null, mentions?: boolean }} how `for`: milliseconds, null
   *   for "until turned back on"; absent keeps the mute as it is
   */
  async mute(conv, how) {
    const was = this.convs.get(conv) ?? { muted: false, mute_mentions: false };
    /** @type {ConversationNotifications} */
    const next = { muted: was.muted && current(was), mute_mentions: how.mentions ?? was.mute_mentions };
    if (was.until != null && next.muted) next.until = was.until;
    if (how.for !== undefined) {
      next.muted = true;
      delete next.until;
      if (how.for != null) next.until = Date.now() + how.for;
    }
    await this.put(conv, next);
  }

  /** @param {string} conv */
  async unmute(conv) {
    this.mentionsChoice.set(conv, this.mentionsMuted(conv));
    await this.put(conv, { muted: false, mute_mentions: false });
  }

  /** @param {string} conv @param {ConversationNotifications} next */
  async put(conv, next) {
    try {
      this.convs.set(conv, await this.api.setConversationNotifications(conv, next));
    } catch (e) {
      this.emit('error', describeError(e));
    }
    this.emit('change', { conv });
  }

  // ---- do-not-disturb

  async loadPreferences() {
    try {
      this.prefs = await this.api.notificationPreferences();
      this.emit('change', {});
    } catch {
      /* the menu offers the toggle anyway */
    }
  }

  /** Do-not-disturb is on now. */
  get doNotDisturb() {
    return Boolean(this.prefs?.do_not_disturb && current(this.prefs));
  }

  /** @param {number | null | false} span milliseconds, null until turned off, false: off */
  async setDoNotDisturb(span) {
    /** @type {NotificationPreferences} */
    const next = { do_not_disturb: span !== false };
    if (typeof span === 'number') next.until = Date.now() + span;
    try {
      this.prefs = await this.api.setNotificationPreferences(next);
    } catch (e) {
      this.emit('error', describeError(e));
    }
    this.emit('change', {});
  }
}
