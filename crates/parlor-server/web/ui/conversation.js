// The conversation pane: header (name, presence, last seen, typing), the scrolling
// timeline with infinite scroll both ways, and the composer (optimistic sends, replies,
// edits, drafts kept per conversation, attachments chosen, pasted or dropped).

import { load, save } from '../util.js';
import { announce, frameScheduler, h, reconcile, replace } from './dom.js';
import { ago, avatar } from './format.js';
import { icon } from './icons.js';
import { Timeline } from './messages.js';
import { go } from './route.js';
import { presenceClass } from './sidebar.js';
import { confirmDialog, newConversationDialog } from './dialogs.js';
import { AttachTray } from './tray.js';
import { attachmentSummary } from './attachments.js';
import { until } from './mute.js';

/** Typing notices are re-sent this often while the user keeps typing. */
const TYPING_EVERY_MS = 3000;
/** ... and stop this long after the last keystroke. */
const TYPING_IDLE_MS = 4000;

export class ConversationView {
  /** @param {import('./app.js').App} app */
  constructor(app) {
    this.app = app;
    this.store = app.store;
    /** @type {string | null} */
    this.convId = null;
    /** @type {number | null} */
    this.unreadFrom = null;
    /** @type {number | null} */
    this.replyTo = null;
    /** @type {number | null} */
    this.editing = null;
    this.stickToBottom = true;
    this.lastTypingSent = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.typingIdle = undefined;
    /** @type {number | null} */
    this.pendingJump = null;
    this.announcedSeq = 0;

    this.timeline = new Timeline(this.store, {
      onReply: (seq) => this.startReply(seq),
      onEdit: (seq) => this.startEdit(seq),
      onDelete: (seq) => this.confirmDelete(seq),
      onRetry: (cid) => this.store.retry(cid),
      onDiscard: (cid) => this.store.discard(cid),
      onQuote: (seq) => this.convId && this.store.jumpTo(this.convId, seq),
    }, { media: app.media, toast: (text) => app.toast(text, 'error') });
    this.tray = new AttachTray(app.api, () => this.drawSendState());

    this.el = h('main', { class: 'pane', id: 'main', tabindex: '-1' });
    this.title = h('h2', { class: 'conv-title', id: 'conv-title' });
    this.subtitle = h('p', { class: 'conv-subtitle', id: 'conv-subtitle', 'aria-live': 'polite' });
    this.headAvatar = h('span', { class: 'head-avatar' });
    this.infoBtn = h(
      'button',
      {
        type: 'button',
        class: 'icon-btn',
        'aria-label': 'Conversation details',
        title: 'Details',
        id: 'details-button',
        onclick: () => {
          const open = this.app.shell.classList.contains('with-details');
          go(this.convId, { details: !open, replace: true });
        },
      },
      icon('info'),
    );
    this.mutedMark = h(
      'button',
      {
        type: 'button',
        class: 'icon-btn muted-mark',
        id: 'conv-muted',
        hidden: true,
        onclick: () => go(this.convId, { details: true, replace: true }),
      },
      icon('bellOff'),
    );
    this.header = h(
      'header',
      { class: 'conv-header' },
      h('button', { type: 'button', class: 'icon-btn back-btn', 'aria-label': 'Back to conversations', onclick: () => go(null) }, icon('back')),
      this.headAvatar,
      h('div', { class: 'conv-heading' }, this.title, this.subtitle),
      this.mutedMark,
      this.infoBtn,
    );

    this.topLoader = h('div', { class: 'loader-row', 'aria-hidden': 'true' });
    this.bottomLoader = h('div', { class: 'loader-row', 'aria-hidden': 'true' });
    this.items = h('div', { class: 'timeline' });
    this.scroller = h(
      'div',
      {
        class: 'messages',
        role: 'log',
        'aria-live': 'off',
        'aria-labelledby': 'conv-title',
        tabindex: '0',
        onscroll: () => this.onScroll(),
        onkeydown: (/** @type {KeyboardEvent} */ e) => this.timelineKeys(e),
      },
      this.topLoader,
      this.items,
      this.bottomLoader,
    );
    this.jumpBtn = h(
      'button',
      { type: 'button', class: 'jump-latest', hidden: true, onclick: () => this.toLatest() },
      icon('down'),
      h('span', {}, 'Latest'),
    );
    this.typingLine = h('div', { class: 'typing-line', 'aria-live': 'polite' });

    this.input = h('textarea', {
      id: 'composer-input',
      class: 'composer-input',
      rows: '1',
      placeholder: 'Write a message…',
      'aria-label': 'Message',
      maxlength: '16000',
      oninput: () => this.onInput(),
      onkeydown: (/** @type {KeyboardEvent} */ e) => this.composerKeys(e),
    });
    this.context = h('div', { class: 'composer-context', hidden: true });
    this.sendBtn = h('button', { type: 'submit', class: 'send-btn', 'aria-label': 'Send', title: 'Send (Enter)' }, icon('send'));
    this.fileInput = h('input', {
      type: 'file',
      id: 'attach-input',
      class: 'sr-only',
      multiple: true,
      tabindex: '-1',
      'aria-hidden': 'true',
      'aria-label': 'Choose files to attach',
      onchange: () => {
        this.tray.add(this.fileInput.files ?? []);
        // Cleared so that choosing the same file again fires `change` again.
        this.fileInput.value = '';
        this.input.focus();
      },
    });
    this.attachBtn = h(
      'button',
      { type: 'button', class: 'icon-btn attach-btn', id: 'attach-button', 'aria-label': 'Attach files', title: 'Attach files', onclick: () => this.fileInput.click() },
      icon('paperclip'),
    );
    this.composer = h(
      'form',
      {
        class: 'composer',
        onsubmit: (/** @type {SubmitEvent} */ e) => {
          e.preventDefault();
          this.submit();
        },
      },
      this.context,
      this.tray.el,
      h('div', { class: 'composer-row' }, this.attachBtn, this.fileInput, this.input, this.sendBtn),
    );
    this.notice = h('div', { class: 'conv-notice', hidden: true, role: 'status' });

    this.render = frameScheduler(() => this.draw());
    this.disposers = [
      this.store.on('change', (c) => {
        if (c.conv && c.conv === this.convId) this.render();
        else if (c.list && this.convId) this.render();
      }),
      this.store.on('jump', (j) => {
        if (j.conv === this.convId) {
          this.pendingJump = j.seq;
          this.render();
        }
      }),
      app.mutes.on('change', (c) => {
        if (c.conv === this.convId) this.render();
      }),
      this.store.on('removed', (r) => {
        if (r.conv === this.convId && r.self) go(null);
        else if (r.conv === this.convId) this.render();
      }),
    ];
    this.store.canMarkRead = () => this.canMarkRead();
    this.onVisible = () => {
      if (document.visibilityState === 'visible' && this.convId) this.store.maybeMarkRead(this.convId);
    };
    document.addEventListener('visibilitychange', this.onVisible);
    window.addEventListener('focus', this.onVisible);
    this.observer = new IntersectionObserver(
      (entries) => {
        if (!this.convId) return;
        for (const entry of entries) {
          if (!entry.isIntersecting) continue;
          if (entry.target === this.topLoader) this.store.loadOlder(this.convId);
          if (entry.target === this.bottomLoader) this.store.loadNewer(this.convId);
        }
      },
      { root: this.scroller, rootMargin: '400px 0px' },
    );
    this.observer.observe(this.topLoader);
    this.observer.observe(this.bottomLoader);
    this.listenForFiles();
    this.buildEmpty();
  }

  /** Whether files may be attached now: a conversation is open and we are still in it. */
  canAttach() {
    const c = this.convId ? this.store.convs.get(this.convId) : null;
    return Boolean(c && !c.left);
  }

  /**
   * Files pasted anywhere in the pane (screenshots, copied files) and files dragged onto
   * it become attachments. Capture phase: a synthetic or non-bubbling event on the text
   * box is seen too.
   */
  listenForFiles() {
    this.el.addEventListener(
      'paste',
      (e) => {
        const files = e.clipboardData?.files;
        if (!files || files.length === 0 || !this.canAttach()) return;
        // Text and files together (some apps copy both): the files win, as the text is
        // usually their name.
        e.preventDefault();
        this.tray.add(files);
      },
      { capture: true },
    );
    /** Nested elements fire enter/leave pairs: count them to know when the drag left. */
    let depth = 0;
    const hasFiles = (/** @type {DragEvent} */ e) => Boolean(e.dataTransfer && [...e.dataTransfer.types].includes('Files'));
    const highlight = (/** @type {boolean} */ on) => {
      this.el.classList.toggle('drop-active', on);
      if (!on) depth = 0;
    };
    this.el.addEventListener('dragenter', (e) => {
      if (!hasFiles(e) || !this.canAttach()) return;
      e.preventDefault();
      depth++;
      highlight(true);
    });
    this.el.addEventListener('dragover', (e) => {
      if (!hasFiles(e) || !this.canAttach()) return;
      // Without this the browser refuses the drop (or opens the file).
      e.preventDefault();
      if (e.dataTransfer) e.dataTransfer.dropEffect = 'copy';
      highlight(true);
    });
    this.el.addEventListener('dragleave', (e) => {
      if (!hasFiles(e)) return;
      depth = Math.max(0, depth - 1);
      if (depth === 0) highlight(false);
    });
    this.el.addEventListener('drop', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      highlight(false);
      if (this.canAttach() && e.dataTransfer) this.tray.add(e.dataTransfer.files);
    });
    // A file dropped elsewhere in the window must not replace the app with the file.
    this.onWindowDrop = (/** @type {DragEvent} */ e) => {
      if (hasFiles(e)) e.preventDefault();
      if (e.type === 'drop') highlight(false);
    };
    window.addEventListener('dragover', this.onWindowDrop);
    window.addEventListener('drop', this.onWindowDrop);
  }

  /** The send button waits for uploads; files alone are a message. */
  drawSendState() {
    const busy = this.tray.busy;
    this.sendBtn.disabled = busy && this.editing == null;
    this.sendBtn.title = busy ? 'Waiting for uploads to finish' : 'Send (Enter)';
    this.composer.classList.toggle('uploading', busy);
  }

  dispose() {
    for (const d of this.disposers) d();
    document.removeEventListener('visibilitychange', this.onVisible);
    window.removeEventListener('focus', this.onVisible);
    if (this.onWindowDrop) {
      window.removeEventListener('dragover', this.onWindowDrop);
      window.removeEventListener('drop', this.onWindowDrop);
    }
    this.stopTyping();
    this.tray.dispose();
  }

  /** @type {((e: DragEvent) => void) | undefined} */
  onWindowDrop = undefined;

  get draftKey() {
    return `parlor.draft.${this.store.me.id}.${this.convId}`;
  }

  buildEmpty() {
    replace(
      this.el,
      h(
        'div',
        { class: 'empty-pane' },
        h('div', { class: 'empty-art', 'aria-hidden': 'true' }, icon('chat', 'icon icon-xl')),
        h('h2', {}, 'Your conversations'),
        h('p', { class: 'muted' }, 'Pick a conversation on the left, or start a new one.'),
        h('button', { class: 'btn btn-primary', type: 'button', onclick: () => newConversationDialog(this.app) }, icon('plus'), 'New conversation'),
        h('p', { class: 'shortcut-hint muted' }, h('kbd', {}, 'Ctrl'), ' + ', h('kbd', {}, 'K'), ' search · ', h('kbd', {}, 'Alt'), ' + ', h('kbd', {}, '↑'), h('kbd', {}, '↓'), ' switch conversation'),
      ),
    );
  }

  /** @param {string | null} convId @param {number | null} [seq] a message to show */
  show(convId, seq = null) {
    this.saveDraft();
    this.stopTyping();
    this.convId = convId;
    this.replyTo = null;
    this.editing = null;
    this.timeline.reset();
    this.pendingJump = null;
    this.tray.show(convId);
    this.drawSendState();
    this.el.classList.remove('drop-active');
    if (!convId) {
      this.store.open(null);
      this.buildEmpty();
      return;
    }
    const c = this.store.convs.get(convId);
    this.unreadFrom = c && c.info.unread > 0 ? c.info.read_seq + 1 : null;
    this.announcedSeq = c?.info.last_seq ?? 0;
    this.stickToBottom = true;
    this.build();
    (seq ? this.store.jumpTo(convId, seq) : this.store.open(convId)).then(() => {
      const now = this.store.convs.get(convId);
      if (this.unreadFrom == null && now && now.info.unread > 0 && now.info.read_seq + 1 <= now.hi) {
        this.unreadFrom = now.info.read_seq + 1;
      }
      this.render();
    });
    this.render();
    if (!window.matchMedia('(max-width: 760px)').matches || document.activeElement === document.body) {
      queueMicrotask(() => this.input.focus({ preventScroll: true }));
    }
  }

  build() {
    replace(this.el, this.header, h('div', { class: 'messages-wrap' }, this.scroller, this.jumpBtn), this.typingLine, this.notice, this.composer);
    this.input.value = /** @type {string | null} */ (load(this.draftKey)) ?? '';
    this.autosize();
    replace(this.items);
    this.drawContext();
    this.jumpBtn.hidden = true;
    this.typingLine.textContent = '';
    this.title.textContent = '';
    this.subtitle.textContent = '';
  }

  draw() {
    const id = this.convId;
    if (!id) return;
    const store = this.store;
    const c = store.convs.get(id);
    if (!c) {
      this.title.textContent = 'Loading…';
      return;
    }
    // Header
    const name = store.title(c);
    this.title.textContent = name;
    const peer = c.info.kind === 'direct' ? c.info.peer : undefined;
    const pres = peer ? presenceClass(store, peer.id) : null;
    replace(this.headAvatar, avatar(name, { group: c.info.kind === 'group', presence: pres === 'offline' ? null : pres }));
    const typers = [...c.typing.keys()].map((u) => store.userName(u));
    let subtitle = '';
    if (peer && !store.socket.online) {
      subtitle = '';
    } else if (peer) {
      const p = store.presence.get(peer.id);
      if (p?.online) subtitle = p.status === 'away' ? 'Away' : p.status === 'do_not_disturb' ? 'Do not disturb' : 'Online';
      else if (p?.last_seen) subtitle = `Last seen ${ago(p.last_seen)}`;
      else if (p) subtitle = 'Offline';
      if (p?.text) subtitle += ` · ${p.text}`;
    } else {
      const count = c.members?.length ?? c.info.member_count;
      const online = store.socket.online
        ? (c.members ?? []).filter((m) => m.user.id !== store.me.id && store.presence.get(m.user.id)?.online).length
        : 0;
      subtitle = `${count} member${count === 1 ? '' : 's'}${online ? ` · ${online} online` : ''}`;
    }
    this.subtitle.textContent = subtitle;
    this.subtitle.classList.toggle('online', pres === 'online');
    const mute = this.app.mutes.of(id);
    this.mutedMark.hidden = !this.app.mutes.muted(id);
    const muteLabel = mute?.until != null ? `Muted until ${until(mute.until)}` : 'Muted';
    this.mutedMark.setAttribute('aria-label', `${muteLabel}: notification settings`);
    this.mutedMark.title = muteLabel;
    this.input.setAttribute('aria-label', `Message ${name}`);
    this.input.placeholder = `Message ${c.info.kind === 'direct' ? name : '#' + name}`;
    this.typingLine.textContent = typers.length === 0
      ? ''
      : typers.length === 1
        ? `${typers[0]} is typing…`
        : typers.length === 2
          ? `${typers[0]} and ${typers[1]} are typing…`
          : 'Several people are typing…';
    this.typingLine.classList.toggle('active', typers.length > 0);

    // Membership
    this.notice.hidden = !c.left;
    this.composer.hidden = c.left;
    if (c.left) this.notice.textContent = 'You are no longer a member of this conversation.';

    // Timeline
    const before = this.measure();
    this.topLoader.classList.toggle('loading', c.hasOlder || (c.loading && !c.loaded));
    this.topLoader.classList.toggle('start', c.loaded && !c.hasOlder);
    replace(
      this.topLoader,
      c.loaded && !c.hasOlder
        ? h(
            'div',
            { class: 'conv-start' },
            avatar(name, { size: 'lg', group: c.info.kind === 'group' }),
            h('p', { class: 'conv-start-title' }, name),
            h('p', { class: 'muted' }, c.info.kind === 'direct' ? `This is the beginning of your conversation with ${name}.` : `This is the beginning of ${name}.`),
          )
        : h('span', { class: 'spinner' }),
    );
    this.bottomLoader.classList.toggle('loading', c.hasNewer);
    replace(this.bottomLoader, c.hasNewer ? h('span', { class: 'spinner' }) : null);
    const nodes = c.loaded ? this.timeline.build(c, this.unreadFrom) : [];
    reconcile(this.items, nodes);
    this.restore(before);
    if (this.pendingJump != null) {
      const seq = this.pendingJump;
      const target = /** @type {HTMLElement | null} */ (this.items.querySelector(`[data-seq="${seq}"]`));
      if (target) {
        this.pendingJump = null;
        this.stickToBottom = false;
        target.scrollIntoView({ block: 'center' });
        target.classList.remove('flash');
        void target.offsetWidth;
        target.classList.add('flash');
        target.focus({ preventScroll: true });
      }
    }
    this.jumpBtn.hidden = !(c.hasNewer || !this.atBottom());
    this.checkLoaders();
    this.announceNew(c);
    store.maybeMarkRead(id);
  }

  /** Reads new messages from others aloud (screen readers). @param {import('../store.js').Conv} c */
  announceNew(c) {
    const store = this.store;
    const fresh = [...c.messages.values()].filter((m) => m.seq > this.announcedSeq && m.sender !== store.me.id);
    if (c.hi > this.announcedSeq) this.announcedSeq = c.hi;
    if (fresh.length === 1) announce(`${store.userName(fresh[0].sender)}: ${[fresh[0].text, attachmentSummary(fresh[0].attachments)].filter(Boolean).join(' ')}`);
    else if (fresh.length > 1) announce(`${fresh.length} new messages`);
  }

  measure() {
    const s = this.scroller;
    // Anchor: the first message at least partly visible, and its distance from the top.
    const top = s.getBoundingClientRect().top;
    /** @type {HTMLElement | null} */
    let anchor = null;
    // Messages only: separators move when older pages come in (the day line of the
    // oldest message is always on top).
    for (const child of /** @type {HTMLElement[]} */ ([...this.items.querySelectorAll('.msg')])) {
      if (child.getBoundingClientRect().bottom > top) {
        anchor = child;
        break;
      }
    }
    return { bottom: this.stickToBottom, anchor, offset: anchor ? anchor.getBoundingClientRect().top - top : 0 };
  }

  /** @param {{ bottom: boolean, anchor: HTMLElement | null, offset: number }} before */
  restore(before) {
    const s = this.scroller;
    if (before.bottom) {
      s.scrollTop = s.scrollHeight;
    } else if (before.anchor && before.anchor.isConnected) {
      const top = s.getBoundingClientRect().top;
      const delta = before.anchor.getBoundingClientRect().top - top - before.offset;
      if (Math.abs(delta) > 1) s.scrollTop += delta;
    }
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 60;
  }

  /**
   * Loads the next page when a loader row is near the viewport. The intersection observer
   * only reports changes; after a page arrives the loader may still be in view.
   */
  checkLoaders() {
    const id = this.convId;
    const c = id ? this.store.convs.get(id) : null;
    if (!id || !c || c.loading || !c.loaded) return;
    const view = this.scroller.getBoundingClientRect();
    if (c.hasOlder && this.topLoader.getBoundingClientRect().bottom > view.top - 400) {
      this.store.loadOlder(id);
    } else if (c.hasNewer && this.bottomLoader.getBoundingClientRect().top < view.bottom + 400) {
      this.store.loadNewer(id);
    }
  }

  onScroll() {
    if (!this.convId) return;
    this.checkLoaders();
    const c = this.store.convs.get(this.convId);
    this.stickToBottom = this.atBottom() && !c?.hasNewer;
    this.jumpBtn.hidden = !(c?.hasNewer || !this.atBottom());
    if (this.stickToBottom) this.store.maybeMarkRead(this.convId);
  }

  canMarkRead() {
    return Boolean(this.convId && document.visibilityState === 'visible' && this.scroller && this.stickToBottom);
  }

  toLatest() {
    if (!this.convId) return;
    const c = this.store.convs.get(this.convId);
    this.stickToBottom = true;
    if (c?.hasNewer) this.store.loadLatest(this.convId);
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.render();
    this.input.focus();
  }

  // ---- composer

  autosize() {
    const el = this.input;
    el.style.height = 'auto';
    el.style.height = `${Math.min(el.scrollHeight, 200)}px`;
  }

  onInput() {
    this.autosize();
    if (this.editing == null) this.saveDraftSoon();
    const id = this.convId;
    if (!id || this.editing != null) return;
    if (!this.input.value.trim()) {
      this.stopTyping();
      return;
    }
    const now = Date.now();
    if (now - this.lastTypingSent > TYPING_EVERY_MS) {
      this.lastTypingSent = now;
      this.store.typing(id, true);
    }
    clearTimeout(this.typingIdle);
    this.typingIdle = setTimeout(() => this.stopTyping(), TYPING_IDLE_MS);
  }

  stopTyping() {
    clearTimeout(this.typingIdle);
    if (this.lastTypingSent && this.convId) this.store.typing(this.convId, false);
    this.lastTypingSent = 0;
  }

  /** @type {ReturnType<typeof setTimeout> | undefined} */
  draftTimer = undefined;

  saveDraftSoon() {
    clearTimeout(this.draftTimer);
    this.draftTimer = setTimeout(() => this.saveDraft(), 300);
  }

  saveDraft() {
    clearTimeout(this.draftTimer);
    if (!this.convId || !this.input || this.editing != null) return;
    save(this.draftKey, this.input.value || null);
  }

  /** @param {KeyboardEvent} e */
  composerKeys(e) {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      this.submit();
    } else if (e.key === 'Escape' && (this.replyTo != null || this.editing != null)) {
      e.preventDefault();
      e.stopPropagation();
      this.cancelContext();
    } else if (e.key === 'ArrowUp' && !this.input.value && this.convId) {
      const c = this.store.convs.get(this.convId);
      const mine = [...(c?.messages.values() ?? [])].filter((m) => m.sender === this.store.me.id && !m.deleted).sort((a, b) => b.seq - a.seq)[0];
      if (mine && this.store.features.edit !== false) {
        e.preventDefault();
        this.startEdit(mine.seq);
      }
    }
  }

  submit() {
    const id = this.convId;
    if (!id) return;
    const text = this.input.value;
    if (this.editing != null) {
      if (!text.trim()) return;
      this.store.edit(id, this.editing, text.trim());
      this.cancelContext();
      return;
    }
    if (this.tray.busy) {
      announce('Wait for the uploads to finish, then send.');
      return;
    }
    const hasFiles = this.tray.ready.length > 0;
    if (!text.trim() && !hasFiles) return;
    this.stopTyping();
    // At most ten files per message: more go in further messages, the text with the first.
    let first = true;
    do {
      const attachments = this.tray.take();
      this.store.send(id, first ? (text.trim() ? text : '') : '', first ? (this.replyTo ?? undefined) : undefined, attachments);
      first = false;
    } while (this.tray.ready.length > 0);
    this.input.value = '';
    save(this.draftKey, null);
    this.replyTo = null;
    this.drawContext();
    this.autosize();
    this.stickToBottom = true;
    this.unreadFrom = null;
    this.render();
  }

  /** @param {number} seq */
  startReply(seq) {
    this.editing = null;
    this.replyTo = seq;
    this.drawContext();
    this.input.focus();
  }

  /** @param {number} seq */
  startEdit(seq) {
    const c = this.convId ? this.store.convs.get(this.convId) : null;
    const m = c?.messages.get(seq);
    if (!m) return;
    this.saveDraft();
    this.replyTo = null;
    this.editing = seq;
    this.input.value = m.text;
    this.drawContext();
    this.autosize();
    this.input.focus();
    this.input.setSelectionRange(m.text.length, m.text.length);
  }

  cancelContext() {
    const wasEditing = this.editing != null;
    this.replyTo = null;
    this.editing = null;
    if (wasEditing) this.input.value = /** @type {string | null} */ (load(this.draftKey)) ?? '';
    this.drawContext();
    this.autosize();
    this.input.focus();
  }

  drawContext() {
    this.drawSendState();
    const c = this.convId ? this.store.convs.get(this.convId) : null;
    if (!c || (this.replyTo == null && this.editing == null)) {
      this.context.hidden = true;
      replace(this.context);
      this.sendBtn.setAttribute('aria-label', 'Send');
      return;
    }
    this.context.hidden = false;
    const cancel = h('button', { type: 'button', class: 'icon-btn sm', 'aria-label': 'Cancel', onclick: () => this.cancelContext() }, icon('close'));
    if (this.editing != null) {
      this.sendBtn.setAttribute('aria-label', 'Save edit');
      replace(this.context, icon('edit', 'icon icon-xs'), h('span', { class: 'context-label' }, h('strong', {}, 'Editing message'), h('span', { class: 'muted' }, ' · Esc to cancel')), cancel);
    } else if (this.replyTo != null) {
      const m = this.store.quoted(c.info.id, this.replyTo);
      const who = m ? (m.sender === this.store.me.id ? 'yourself' : this.store.userName(m.sender)) : 'message';
      replace(
        this.context,
        icon('reply', 'icon icon-xs'),
        h('span', { class: 'context-label' }, h('strong', {}, `Replying to ${who}`), h('span', { class: 'muted context-text' }, m ? ` ${m.text}` : '')),
        cancel,
      );
    }
  }

  /** @param {number} seq */
  async confirmDelete(seq) {
    const id = this.convId;
    if (!id) return;
    const ok = await confirmDialog({
      title: 'Delete message?',
      body: 'It will be removed for everyone in this conversation. This can’t be undone.',
      confirm: 'Delete',
      danger: true,
    });
    if (ok) this.store.remove(id, seq);
  }

  /** Arrow keys move between messages; R replies, E edits, Delete deletes. @param {KeyboardEvent} e */
  timelineKeys(e) {
    const rows = /** @type {HTMLElement[]} */ ([...this.items.querySelectorAll('.msg')]);
    if (rows.length === 0) return;
    const active = /** @type {HTMLElement | null} */ (document.activeElement);
    const current = active?.closest('.msg');
    const i = current ? rows.indexOf(/** @type {HTMLElement} */ (current)) : -1;
    if (e.key === 'ArrowUp' || e.key === 'ArrowDown') {
      if (active?.closest('.msg-actions')) return;
      e.preventDefault();
      let next = i < 0 ? rows.length - 1 : i + (e.key === 'ArrowUp' ? -1 : 1);
      next = Math.max(0, Math.min(rows.length - 1, next));
      rows[next].focus();
      rows[next].scrollIntoView({ block: 'nearest' });
      return;
    }
    if (!current || active !== current) return;
    const seq = Number(/** @type {HTMLElement} */ (current).dataset.seq);
    if (!seq) return;
    const c = this.convId ? this.store.convs.get(this.convId) : null;
    const m = c?.messages.get(seq);
    if (!m || m.deleted) return;
    const mine = m.sender === this.store.me.id;
    const role = c?.members?.find((x) => x.user.id === this.store.me.id)?.role;
    const canDelete = mine || (c?.info.kind === 'group' && (role === 'owner' || role === 'admin'));
    if (e.key === 'r' || e.key === 'R') {
      e.preventDefault();
      this.startReply(seq);
    } else if ((e.key === 'e' || e.key === 'E') && mine && this.store.features.edit !== false) {
      e.preventDefault();
      this.startEdit(seq);
    } else if (e.key === 'Delete' && canDelete && this.store.features.edit !== false) {
      e.preventDefault();
      this.confirmDelete(seq);
    }
  }
}
