// What the client knows: conversations, their messages (one copy per mid), unread counts,
// groups, red packets, and the social graph as this user sees it (profiles, contacts, requests,
// blocks, presence, privacy). Views render from it; it says 'change' once per burst of updates
// (with the parts that changed: 'list', 'pane', 'total', 'people', 'wanted').

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
    // this user's settings of the conversation (set_conversation), the same on every device
    this.pinned = false;
    this.muted = false;
    this.hiddenAtSeq = null; // hidden while no message is newer than this seq
    this.markedUnread = false; // until the next read
    this.peerReadSeq = 0; // one-to-one: how far the peer has read (receipts)
  }

  /** Hidden (archived) until its next message. */
  get hidden() {
    return this.hiddenAtSeq !== null && this.lastSeq <= this.hiddenAtSeq;
  }

  /** The server's word on the settings: a `conversation_settings` frame or a sync entry. */
  applySettings({ pinned, muted, hidden, marked_unread: markedUnread }) {
    this.pinned = Boolean(pinned);
    this.muted = Boolean(muted);
    this.hiddenAtSeq = hidden ? this.lastSeq : null; // the server un-hides at the next message, so do we
    this.markedUnread = Boolean(markedUnread);
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
    // the social graph (contacts.js keeps it up to date)
    this.profiles = new Map(); // user -> {user, status, display_name, avatar_url, custom, unknown?}
    this.wanted = new Set(); // users whose profile a view needed and nobody asked for yet
    this.contacts = new Map(); // user -> {since_ms}
    this.incoming = new Map(); // user -> {note, at_ms}: requests to me
    this.outgoing = new Map(); // user -> {note, at_ms}: my requests
    this.blocked = new Map(); // user -> at_ms: whom I block
    this.presence = new Map(); // user -> {online, last_seen_ms}, for watched contacts
    this.privacy = null; // {dm, presence}, once the server said
    this.profileUser = null; // whose profile the pane shows (instead of a conversation)
  }

  /** A user's display name, or the id while none is known (the profile is then asked for). */
  displayName(user) {
    const profile = this.profiles.get(user);
    if (!profile) this.want(user);
    return profile?.display_name || user;
  }

  /** A user's avatar URL (http(s), checked by the server) or null. */
  avatarUrl(user) {
    const profile = this.profiles.get(user);
    if (!profile) this.want(user);
    return profile?.avatar_url || null;
  }

  want(user) {
    if (this.wanted.has(user)) return;
    this.wanted.add(user);
    this.changed('wanted');
  }

  /** What the list and the pane call a conversation: the group's name, or the peer's. */
  title(conversation) {
    return conversation.kind === 'group' ? conversation.name : this.displayName(conversation.peer);
  }

  setProfiles(profiles, unknown = []) {
    for (const profile of profiles) this.profiles.set(profile.user, profile);
    for (const user of unknown) this.profiles.set(user, { user, status: null, display_name: null, avatar_url: null, custom: {}, unknown: true });
    this.changed('list', 'pane', 'people');
  }

  setPresence(states) {
    for (const state of states) this.presence.set(state.user, { online: Boolean(state.online), last_seen_ms: state.last_seen_ms ?? null });
    this.changed('list', 'pane', 'people');
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

  /** Conversations for the list: pinned ones first, then the most recent first. */
  sorted() {
    return [...this.conversations.values()].sort((x, y) => Number(y.pinned) - Number(x.pinned) || y.sortKey - x.sortKey);
  }

  /** Add messages, each once by mid; true for those not known before. A newer version of a
   * known one (edited or recalled meanwhile, from history or a sync) replaces it. */
  addMessages(messages) {
    const fresh = [];
    for (const message of messages) {
      const conversation = this.conversation(message.conversation);
      const known = conversation.messages.get(message.mid);
      if (known?.provisional && !message.provisional) { // our own send, as the server stored it
        conversation.messages.set(message.mid, message);
        if (conversation.last?.mid === message.mid) conversation.last = message;
        this.changed('list', conversation.id === this.openId ? 'pane' : null);
        continue;
      }
      if (known) {
        this.replaceMessage(message);
        continue;
      }
      conversation.messages.set(message.mid, message);
      conversation.lastSeq = Math.max(conversation.lastSeq, message.seq);
      if (!conversation.last || message.seq > conversation.last.seq) conversation.last = message;
      fresh.push(message);
      this.changed('list', conversation.id === this.openId ? 'pane' : null);
    }
    return fresh;
  }

  /** A message as changed (edited or recalled): replaces the copy we have if it is newer. */
  replaceMessage(message) {
    const conversation = this.conversations.get(message.conversation);
    const known = conversation?.messages.get(message.mid);
    if (!known || !isNewer(message, known)) return;
    conversation.messages.set(message.mid, message);
    if (conversation.last?.mid === message.mid) conversation.last = message;
    this.changed('list', conversation.id === this.openId ? 'pane' : null);
  }

  /** A `recalled` push: the message's body is gone, a tombstone stays. */
  recallMessage({ conversation: id, mid, by, at_ms: at }) {
    const known = this.conversations.get(id)?.messages.get(mid);
    if (known) this.replaceMessage({ ...known, body: {}, recalled_at_ms: at, recalled_by: by });
  }

  /** A `receipt` push, or a sync's peer_read_seq: the peer read up to `seq`. */
  setPeerRead(id, seq) {
    const conversation = this.conversation(id);
    if (!(seq > conversation.peerReadSeq)) return;
    conversation.peerReadSeq = seq;
    this.changed(id === this.openId ? 'pane' : null);
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
      if ('pinned' in state) conversation.applySettings(state);
      if (state.peer_read_seq !== undefined) conversation.peerReadSeq = Math.max(conversation.peerReadSeq, state.peer_read_seq);
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

/** Is `message` a later state of `known` (recalled since, or a higher version)? */
function isNewer(message, known) {
  if (known.recalled_at_ms) return false; // a recall is final
  if (message.recalled_at_ms) return true;
  return (message.version || 1) > (known.version || 1);
}
