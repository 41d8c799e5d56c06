// What the client knows: conversations, their messages (one copy per mid), unread counts,
// groups and red packets. Views render from it; it says 'change' once per burst of updates.

export function directConversation(a, b) {
  return `p:${[a, b].sort().join(':')}`;
}

export class Conversation {
  constructor(id, me) {
    this.id = id;
    this.kind = id.startsWith('g:') ? 'group' : 'direct';
    this.gid = this.kind === 'group' ? id.slice(2) : null;
    const [, a, b] = id.split(':');
    this.peer = this.kind === 'direct' ? (a === me ? b : a) : null;
    this.groupName = null;
    this.role = null; // mine, in a group
    this.members = null; // {user: role}, once asked
    this.messages = new Map(); // mid -> message
    this.lastSeq = 0;
    this.readSeq = 0;
    this.unread = 0;
    this.last = null; // the newest message known, for the list
    this.touchedAt = Date.now(); // orders conversations without messages
    this.historyDone = false; // scrolled back to the first message
    this.firstUnreadSeq = null; // where the "new messages" line goes while open
  }

  get name() {
    return this.kind === 'group' ? this.groupName || 'Group' : this.peer;
  }

  get sortKey() {
    return this.last ? this.last.sent_at_ms : this.touchedAt;
  }

  /** Messages in seq order. */
  ordered() {
    return [...this.messages.values()].sort((x, y) => x.seq - y.seq);
  }

  oldestSeq() {
    let oldest = Infinity;
    for (const message of this.messages.values()) oldest = Math.min(oldest, message.seq);
    return oldest === Infinity ? null : oldest;
  }

  newestSeq() {
    let newest = 0;
    for (const message of this.messages.values()) newest = Math.max(newest, message.seq);
    return newest;
  }
}

export class Store extends EventTarget {
  #scheduled = false;

  constructor(me) {
    super();
    this.me = me;
    this.node = null;
    this.conversations = new Map();
    this.openId = null;
    this.room = null; // the live room on show (rooms.js), instead of a conversation
    this.packets = new Map(); // mid -> red_packet.status reply
    this.changes = new Set();
  }

  /** Ask for a render of `what` ('list', 'pane', ...) once this turn of the event loop ends. */
  changed(...what) {
    for (const part of what) if (part) this.changes.add(part);
    if (this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      const parts = new Set(this.changes);
      this.changes.clear();
      this.dispatchEvent(new CustomEvent('change', { detail: parts }));
    });
  }

  conversation(id) {
    let conversation = this.conversations.get(id);
    if (!conversation) {
      conversation = new Conversation(id, this.me);
      this.conversations.set(id, conversation);
      this.changed('list');
    }
    return conversation;
  }

  get open() {
    return this.openId ? this.conversation(this.openId) : null;
  }

  get totalUnread() {
    let total = 0;
    for (const conversation of this.conversations.values()) total += conversation.unread;
    return total;
  }

  /** Conversations for the list, the most recent first. */
  sorted() {
    return [...this.conversations.values()].sort((x, y) => y.sortKey - x.sortKey);
  }

  /** Add messages, each once by mid; true for those not known before. */
  addMessages(messages) {
    const fresh = [];
    for (const message of messages) {
      const conversation = this.conversation(message.conversation);
      if (conversation.messages.has(message.mid)) continue;
      conversation.messages.set(message.mid, message);
      conversation.lastSeq = Math.max(conversation.lastSeq, message.seq);
      if (!conversation.last || message.seq > conversation.last.seq) conversation.last = message;
      fresh.push(message);
      this.changed('list', conversation.id === this.openId ? 'pane' : null);
    }
    return fresh;
  }

  /** Drop loaded messages older than a gap just below `seq`, so scrolling back fills it. */
  trimBelowGap(conversation, seq) {
    const below = [...conversation.messages.values()].filter((message) => message.seq < seq);
    if (!below.length || Math.max(...below.map((message) => message.seq)) === seq - 1) return;
    for (const message of below) conversation.messages.delete(message.mid);
    conversation.historyDone = false;
    this.changed('pane');
  }

  /** The server's word on a conversation's counts (sync, unread frames, msg pushes). */
  setUnread(id, count, readSeq = null) {
    const conversation = this.conversation(id);
    if (readSeq !== null) {
      if (readSeq < conversation.readSeq) return; // an answer to an older read: a newer one is on its way
      conversation.readSeq = readSeq;
    }
    conversation.unread = count;
    this.changed('list', 'total');
  }

  /** Counts we work out ourselves: read fan-out pushes carry none (seq - read seq). */
  deriveUnread(id) {
    const conversation = this.conversation(id);
    conversation.unread = Math.max(0, conversation.lastSeq - conversation.readSeq);
    this.changed('list', 'total');
  }

  /** We read up to `seq` (or sent it: sending marks the conversation read). */
  markReadLocally(id, seq) {
    const conversation = this.conversation(id);
    conversation.readSeq = Math.max(conversation.readSeq, seq);
    conversation.unread = Math.max(0, conversation.lastSeq - conversation.readSeq);
    this.changed('list', 'total');
  }

  applySyncStates(states) {
    for (const state of states) {
      const conversation = this.conversation(state.conversation);
      conversation.lastSeq = Math.max(conversation.lastSeq, state.last_seq);
      conversation.readSeq = state.read_seq;
      conversation.unread = state.unread;
    }
    this.changed('list', 'total');
  }

  applyGroups(groups) {
    for (const group of groups) {
      const conversation = this.conversation(group.conversation);
      conversation.groupName = group.name;
      conversation.role = group.role;
    }
    this.changed('list', 'pane');
  }

  setPacket(mid, status) {
    this.packets.set(mid, status);
    this.changed('pane');
  }
}
