// The protocol work behind the views: resync after every (re)connect, pushes, reads, acks,
// history pages, groups, red packets, conversation settings (pin, mute, hide, mark unread),
// images and files, recalls and edits, and one-to-one read receipts.
// Views call these; the store tells them what changed.

import { RequestError } from './connection.js';
import { SHOWN_IMAGES } from './attachments.js';
import { directConversation } from './store.js';

const SYNC_PAGE = 200;
const SYNC_PAGES_MAX = 10; // 2000 messages: more than an inbox holds (1000)
const HISTORY_PAGE = 40;
const ACK_DELAY_MS = 300;
const OLDER_RETRY_MS = 3000;
const PREVIEWS_AT_ONCE = 20; // history requests in flight for the list's previews

export class Chat {
  #acks = new Set();
  #ackTimer = null;
  #loadingOlder = new Set();
  #olderPausedUntil = new Map(); // conversation -> when scrolling back may ask again after a failure
  #groupsTimer = null;

  constructor(connection, store, outbox) {
    this.connection = connection;
    this.store = store;
    this.outbox = outbox;
    this.paneVisible = () => true; // the view says whether the open conversation can be seen
    connection.addEventListener('welcome', (event) => this.#welcome(event.detail));
    connection.addEventListener('frame', (event) => this.#frame(event.detail));
    connection.addEventListener('status', (event) => {
      if (event.detail.status !== 'online') outbox.offline();
    });
  }

  // -- after each welcome: the state as the server has it, then what waits to be sent

  async #welcome(frame) {
    this.store.node = frame.node;
    try {
      await this.#catchUp();
    } catch (error) {
      console.warn('sync failed; it runs again after the next reconnect', error);
    }
    this.outbox.resendAll(); // after the sync: sends that were stored meanwhile are settled by it
    try {
      await this.#refresh();
    } catch (error) {
      console.warn('refresh failed; it runs again after the next reconnect', error);
    }
  }

  /** Every sync page: the counts, and the messages that waited in the inbox. */
  async #catchUp() {
    let page = await this.connection.request({ op: 'sync', limit: SYNC_PAGE });
    this.store.applySyncStates(page.conversations || []);
    const received = [...page.messages];
    for (let pages = 1; page.next_before_mid !== null && pages < SYNC_PAGES_MAX; pages += 1) {
      page = await this.connection.request({ op: 'sync', limit: SYNC_PAGE, before_mid: page.next_before_mid });
      received.push(...page.messages);
    }
    this.#receive(received);
  }

  /** Group names, the open conversation's newest page, and a preview for each listed one. */
  async #refresh() {
    const { store } = this;
    await this.refreshGroups();
    if (store.openId) await this.loadLatest(store.openId);
    this.markOpenRead();
    const unseen = [...store.conversations.values()].filter((conversation) => !conversation.last && conversation.lastSeq > 0);
    for (let i = 0; i < unseen.length; i += PREVIEWS_AT_ONCE) {
      const batch = unseen.slice(i, i + PREVIEWS_AT_ONCE);
      await Promise.all(batch.map((conversation) => this.#history(conversation.id, null, 1).catch(() => null)));
    }
  }

  /** Messages from a sync or a push: stored once, acked, and our own settle their sends. */
  #receive(messages) {
    for (const message of messages) this.#ack(message.mid);
    this.#settleOwn(messages);
    const fresh = this.store.addMessages(messages);
    if (fresh.some((message) => message.conversation.startsWith('g:') && !this.store.conversation(message.conversation).groupName)) {
      this.#refreshGroupsSoon(); // added to a group we have not heard of
    }
    return fresh;
  }

  /** Our own messages found stored (their 'sent' frame was lost with a connection). */
  #settleOwn(messages) {
    for (const message of messages) if (message.sender === this.store.me) this.outbox.settle(message.client_msg_id);
  }

  #frame(frame) {
    const { store } = this;
    switch (frame.op) {
      case 'msg': {
        const { message, unread } = frame;
        const conversation = store.conversation(message.conversation);
        const gap = conversation.id === store.openId && conversation.newestSeq() > 0 && message.seq > conversation.newestSeq() + 1;
        this.#receive([message]);
        if (unread && unread.conversation === message.conversation) store.setUnread(message.conversation, unread.count);
        else store.deriveUnread(message.conversation); // read fan-out groups send no count
        if (gap) this.loadLatest(conversation.id).catch(() => null); // a push went missing
        this.markOpenRead();
        break;
      }
      case 'sent': { // stored: the bubble becomes a message with its mid and seq
        const entry = this.outbox.settle(frame.cmid);
        if (entry) {
          const { type, meta } = entry; // an attachment's name and size: the server's push has them too
          const body = { ...(meta || {}), ...entry.body };
          // provisional: the copy the server stored replaces it when it comes (history, sync)
          store.addMessages([{ mid: frame.mid, seq: frame.seq, conversation: frame.conversation, sender: store.me, client_msg_id: frame.cmid, type, body, sent_at_ms: Date.now(), provisional: true }]);
          // an attachment's body as the server recorded it (an image's size and thumbnail)
          if (type === 'image' || type === 'file') this.#history(frame.conversation, frame.seq + 1, 1).catch(() => null);
        }
        const conversation = store.conversation(frame.conversation);
        conversation.lastSeq = Math.max(conversation.lastSeq, frame.seq);
        store.markReadLocally(frame.conversation, frame.seq); // sending marks the conversation read
        break;
      }
      case 'unread': // a read, here or on another device: it clears "marked unread" on the server too
        store.conversation(frame.conversation).markedUnread = false;
        store.setUnread(frame.conversation, frame.count, frame.read_seq);
        break;
      case 'conversation_settings': // changed on another device
        this.#applySettings(frame);
        break;
      case 'recalled': // by its sender (any of their devices) or a group's owner or admin
        store.recallMessage(frame);
        break;
      case 'edited':
        store.replaceMessage(frame.message);
        break;
      case 'receipt': // the peer of a one-to-one conversation read up to read_seq
        store.setPeerRead(frame.conversation, frame.read_seq);
        break;
      case 'error':
        if (frame.cmid !== undefined || this.outbox.entries.has(frame.ref)) this.outbox.refused(frame.cmid ?? frame.ref, frame);
        else console.warn('server error', frame);
        break;
      default:
        break;
    }
  }

  // -- reading

  open(id) {
    const { store } = this;
    store.openId = id;
    if (!id) {
      store.changed('pane', 'list');
      return;
    }
    const conversation = store.conversation(id);
    conversation.firstUnreadSeq = conversation.unread > 0 ? conversation.readSeq + 1 : null;
    store.changed('pane', 'list');
    if (this.connection.online) {
      this.loadLatest(id).catch(() => null).finally(() => this.markOpenRead());
      if (conversation.kind === 'group') this.loadMembers(conversation).catch(() => null);
    }
  }

  /** Report the open conversation read up to its last message, when it can be seen. */
  markOpenRead() {
    const conversation = this.store.open;
    if (!conversation || !this.connection.online || !this.paneVisible() || document.visibilityState !== 'visible') return;
    const seq = Math.max(conversation.lastSeq, conversation.newestSeq());
    if (seq === 0 || (seq <= conversation.readSeq && conversation.unread === 0 && !conversation.markedUnread)) return;
    this.store.markReadLocally(conversation.id, seq);
    conversation.markedUnread = false; // the read clears it on the server
    this.connection
      .request({ op: 'read', conversation: conversation.id, seq })
      .then((reply) => this.store.setUnread(reply.conversation, reply.count, reply.read_seq))
      .catch(() => null); // read again after the next resync
  }

  /** The newest page of a conversation; older loaded messages stay only if no gap parts them. */
  async loadLatest(id) {
    const conversation = this.store.conversation(id);
    const messages = await this.#history(id, null, HISTORY_PAGE);
    if (messages.length) this.store.trimBelowGap(conversation, Math.min(...messages.map((message) => message.seq)));
  }

  /** The page before the oldest loaded message (scrolling back). */
  async loadOlder(id) {
    const conversation = this.store.conversation(id);
    const oldest = conversation.oldestSeq();
    if (conversation.historyDone || this.#loadingOlder.has(id) || oldest === null) return;
    if (Date.now() < (this.#olderPausedUntil.get(id) || 0)) return;
    this.#loadingOlder.add(id);
    this.store.changed('pane');
    try {
      await this.#history(id, oldest, HISTORY_PAGE);
    } catch (error) {
      this.#olderPausedUntil.set(id, Date.now() + OLDER_RETRY_MS); // no tight loop of failing requests
      throw error;
    } finally {
      this.#loadingOlder.delete(id);
      this.store.changed('pane');
    }
  }

  loadingOlder(id) {
    return this.#loadingOlder.has(id);
  }

  async #history(id, beforeSeq, limit) {
    const frame = { op: 'history', conversation: id, limit };
    if (beforeSeq !== null) frame.before_seq = beforeSeq;
    let reply;
    try {
      reply = await this.connection.request(frame);
    } catch (error) {
      if (!(error instanceof RequestError) || error.code !== 'not_found') throw error;
      this.store.conversation(id).historyDone = true; // nothing sent yet, or no longer ours
      return [];
    }
    const conversation = this.store.conversation(id);
    if (reply.next_before_seq === null && limit > 1) conversation.historyDone = true;
    this.#settleOwn(reply.messages);
    this.store.addMessages(reply.messages);
    this.store.changed('pane');
    return reply.messages;
  }

  #ack(mid) {
    this.#acks.add(mid);
    if (this.#ackTimer) return;
    this.#ackTimer = setTimeout(() => {
      this.#ackTimer = null;
      const mids = [...this.#acks];
      this.#acks.clear();
      for (let i = 0; i < mids.length; i += 1000) {
        // an ack lost on the way costs nothing: the message comes again in a sync, once by mid
        this.connection.request({ op: 'ack', mids: mids.slice(i, i + 1000) }).catch(() => null);
      }
    }, ACK_DELAY_MS);
  }

  // -- sending

  sendText(id, text) {
    return this.outbox.submit({ conversation: id, type: 'text', body: { text } });
  }

  /** Upload a File, then send it as an image (one a browser shows) or a file. Refusals reject
   * (RequestError with the code); once uploaded, the message goes through the outbox. */
  async sendAttachment(id, file, attachments) {
    const object = await attachments.upload(id, file);
    const contentType = (file.type || 'application/octet-stream').toLowerCase();
    const type = SHOWN_IMAGES.has(contentType) ? 'image' : 'file';
    const meta = { name: file.name || 'file', size: file.size, content_type: contentType };
    return this.outbox.submit({ conversation: id, type, body: { object }, meta });
  }

  // -- recall and edit (the recall_edit plugin): the reply is the message as stored now

  async recall(message) {
    const reply = await this.connection.request({ op: 'message.recall', conversation: message.conversation, seq: message.seq });
    this.store.replaceMessage(reply.message);
    return reply.message;
  }

  async edit(message, text) {
    const reply = await this.connection.request({ op: 'message.edit', conversation: message.conversation, seq: message.seq, body: { text } });
    this.store.replaceMessage(reply.message);
    return reply.message;
  }

  sendRedPacket(id, totalCents, count, greeting) {
    return this.outbox.submit({ conversation: id, type: 'red_packet', body: { total_cents: totalCents, count, greeting } });
  }

  startDirect(user) {
    const id = directConversation(this.store.me, user);
    this.store.conversation(id).touchedAt = Date.now();
    return id;
  }

  // -- groups

  async refreshGroups() {
    const reply = await this.connection.request({ op: 'my_groups' });
    this.store.applyGroups(reply.groups);
  }

  #refreshGroupsSoon() {
    clearTimeout(this.#groupsTimer);
    this.#groupsTimer = setTimeout(() => this.refreshGroups().catch(() => null), 200);
  }

  async createGroup(name, members) {
    const reply = await this.connection.request({ op: 'create_group', name, members });
    const conversation = this.store.conversation(reply.conversation);
    conversation.groupName = reply.name;
    conversation.role = reply.members[this.store.me];
    conversation.members = reply.members;
    conversation.touchedAt = Date.now();
    this.store.changed('list');
    return reply.conversation;
  }

  async loadMembers(conversation) {
    const reply = await this.connection.request({ op: 'group_members', gid: conversation.gid });
    conversation.members = reply.members;
    conversation.role = reply.members[this.store.me] || conversation.role;
    this.store.changed('pane');
    return reply.members;
  }

  async addMembers(conversation, users) {
    const reply = await this.connection.request({ op: 'add_members', gid: conversation.gid, users });
    await this.loadMembers(conversation);
    return reply.added;
  }

  // -- conversation settings

  /** Pin, mute, hide or mark unread (`changes`: some of {pinned, muted, hidden, marked_unread}). */
  async setConversation(id, changes) {
    const reply = await this.connection.request({ op: 'set_conversation', conversation: id, ...changes });
    this.#applySettings(reply);
    return reply;
  }

  #applySettings(frame) {
    this.store.conversation(frame.conversation).applySettings(frame);
    this.store.changed('list', 'pane', 'total');
  }

  // -- red packets

  async packetStatus(conversation, mid) {
    const status = await this.connection.request({ op: 'red_packet.status', conversation, mid });
    this.store.setPacket(mid, status);
    return status;
  }

  /** Grab a share; a packet already grabbed, empty or expired just shows its status. */
  async grab(conversation, mid) {
    let share = null;
    try {
      share = await this.connection.request({ op: 'red_packet.grab', conversation, mid });
    } catch (error) {
      const settled = ['red_packet.already_grabbed', 'red_packet.empty', 'red_packet.expired'];
      if (!(error instanceof RequestError) || !settled.includes(error.code)) throw error;
    }
    const status = await this.packetStatus(conversation, mid);
    return { share, status };
  }
}
