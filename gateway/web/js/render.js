// Rendering: the conversation list (pinned first; hidden ones on request), the total, and the
// open conversation's pane with its settings (pin, mute, hide, mark unread). Message elements
// are kept by key and rebuilt only when what they show changes, so scrolling, selection and
// the scroll position survive the frequent re-renders. People's names, pictures and presence
// come from the store (contacts.js); a profile shows in the pane instead (people.js).

import { byteSize } from './attachments.js';
import { $, avatar, clockTime, dayLabel, h, icon, money, presenceText, shortWhen } from './dom.js';
import { showRefusal } from './refusals.js';

export const LOAD_OLDER_PX = 150; // this close to the top, the next older page loads
const STATE_LABEL = { sending: 'Sending…', retrying: 'Not sent yet · retrying', failed: 'Not sent', sent: 'Sent' };
const STATE_ICON = { sending: 'clock', retrying: 'retry', failed: 'alert', sent: 'check' };
// the recall_edit plugin's windows (IMFLOW_RECALL_EDIT_*): past them the buttons go (the server decides)
const RECALL_WINDOW_MS = 120_000;
const EDIT_WINDOW_MS = 900_000;

export class View {
  #items = new Map(); // key -> {el, signature}
  #shownId = null;
  #showHidden = false; // the list shows hidden (archived) conversations too
  #settingsRefusal = null; // {id, error}: the last refused set_conversation, shown while its conversation is

  constructor(store, outbox, chat, actions) {
    this.store = store;
    this.outbox = outbox;
    this.chat = chat;
    this.actions = actions; // open, back, retry, discard, packet, members, packetStatus, profile, url, recall, edit
    $('#hidden-toggle').addEventListener('click', () => {
      this.#showHidden = !this.#showHidden;
      this.renderList();
    });
  }

  render(parts) {
    if (parts.has('list') || parts.has('total')) this.renderList();
    if (parts.has('pane')) this.renderPane();
  }

  // -- the list and the total

  renderList() {
    const { store } = this;
    const list = $('#conversation-list');
    const all = store.sorted();
    const hidden = all.filter((conversation) => conversation.hidden && conversation.id !== store.openId).length;
    const shown = this.#showHidden ? all : all.filter((conversation) => !conversation.hidden || conversation.id === store.openId);
    const items = shown.map((conversation) => this.#listItem(conversation));
    list.replaceChildren(...items);
    $('#list-empty').hidden = items.length > 0 || hidden > 0;
    const toggle = $('#hidden-toggle');
    toggle.hidden = hidden === 0;
    toggle.textContent = this.#showHidden ? 'Leave hidden chats out' : `Show hidden chats (${hidden})`;
    const total = store.totalUnread;
    const badge = $('#total-unread');
    badge.hidden = total === 0;
    badge.textContent = total > 99 ? '99+' : String(total);
    badge.dataset.count = String(total);
    badge.title = `${total} unread`;
    document.title = total ? `(${total}) imflow` : 'imflow';
  }

  #listItem(conversation) {
    const pending = this.outbox.in(conversation.id).at(-1);
    const last = conversation.last;
    let preview = '';
    let when = conversation.sortKey;
    if (pending && (!last || pending.createdAt >= last.sent_at_ms)) {
      preview = `You: ${describe(pending)}`;
      when = pending.createdAt;
    } else if (last) {
      const who = last.sender === this.store.me ? 'You' : conversation.kind === 'group' ? last.sender : null;
      preview = `${who ? `${who}: ` : ''}${describe(last)}`;
    } else {
      preview = conversation.kind === 'group' ? 'Group created' : 'No messages yet';
    }
    const unread = conversation.unread;
    const flags = { pinned: conversation.pinned, muted: conversation.muted, hidden: conversation.hidden, markedUnread: conversation.markedUnread };
    return h(
      `li.conversation${conversation.muted ? '.is-muted' : ''}`,
      {
        dataset: { conversation: conversation.id, unread: String(unread), ...Object.fromEntries(Object.entries(flags).map(([k, v]) => [k, String(v)])) },
        'aria-current': conversation.id === this.store.openId ? 'true' : null,
      },
      h(
        'button.conversation-button',
        { type: 'button', onclick: () => this.actions.open(conversation.id) },
        this.#avatarOf(conversation),
        h(
          'span.conversation-main',
          {},
          h('span.conversation-top', {},
            h('span.conversation-name', {}, this.store.title(conversation)),
            conversation.muted ? h('span.flag.muted-flag', { title: 'Muted' }, icon('mute')) : null,
            conversation.pinned ? h('span.flag.pinned-flag', { title: 'Pinned' }, icon('pin')) : null,
            h('span.when', {}, last || pending ? shortWhen(when) : '')),
          h(
            'span.conversation-bottom',
            {},
            h('span.preview', {}, pending ? icon(pending.state === 'failed' ? 'alert' : 'clock') : null, preview),
            h('span.marked-unread', { hidden: !conversation.markedUnread || unread > 0, title: 'Marked unread', 'aria-label': 'marked unread' }),
            h('span.badge', { hidden: unread === 0, dataset: { count: String(unread) }, 'aria-label': `${unread} unread` }, unread > 99 ? '99+' : String(unread)),
          ),
        ),
      ),
    );
  }

  /** A group's square, or the peer's picture with a presence dot while they are a watched contact. */
  #avatarOf(conversation) {
    const { store } = this;
    if (conversation.kind === 'group') return avatar(store.title(conversation), 'group');
    const presence = store.contacts.has(conversation.peer) ? store.presence.get(conversation.peer) : null;
    return avatar(store.title(conversation), 'user', { url: store.avatarUrl(conversation.peer), presence });
  }

  // -- the pane

  renderPane() {
    const conversation = this.store.open;
    const room = Boolean(this.store.room); // a live room shows instead (rooms.js draws it)
    const profile = Boolean(this.store.profileUser) && !conversation && !room; // or a profile (people.js)
    document.body.classList.toggle('has-open', Boolean(conversation) || room || profile);
    $('#pane-empty').hidden = Boolean(conversation) || room || profile;
    $('#room-view').hidden = !room || Boolean(conversation);
    for (const id of ['#pane-header', '#messages', '#composer']) $(id).hidden = !conversation;
    if (!conversation) {
      $('#conversation-notice').hidden = true;
      this.#shownId = null;
      return;
    }
    const switched = this.#shownId !== conversation.id;
    if (switched) {
      this.#items.clear();
      $('#message-list').replaceChildren();
      this.#shownId = conversation.id;
      $('#composer-text').value = '';
      if (this.#settingsRefusal?.id !== conversation.id) this.#settingsRefusal = null; // another conversation's
    }
    this.#renderHeader(conversation);
    this.#renderNotice(conversation);
    this.#renderMessages(conversation, switched);
  }

  #renderHeader(conversation) {
    const { store } = this;
    const members = conversation.members ? Object.keys(conversation.members).length : null;
    const peer = conversation.peer;
    const presence = peer && store.contacts.has(peer) ? store.presence.get(peer) : null;
    let subtitle = 'Direct message';
    if (conversation.kind === 'group') subtitle = members ? `${members} members` : 'Group';
    else if (store.blocked.has(peer)) subtitle = 'Blocked';
    else if (presence) subtitle = presenceText(presence);
    const title = h('div.pane-title', {}, h('h2', { id: 'pane-title' }, store.title(conversation)),
      h('span.muted', { id: 'pane-subtitle', dataset: { online: presence ? String(presence.online) : '' } }, subtitle));
    // a direct conversation's name and picture lead to the peer's profile
    const who = conversation.kind === 'group'
      ? [this.#avatarOf(conversation), title]
      : [h('button.pane-who', { type: 'button', id: 'profile-link', title: 'Profile', onclick: () => this.actions.profile(peer) }, this.#avatarOf(conversation), title)];
    const toggle = (id, name, on, label, offLabel, changes) => h('button.icon-button.setting-button', {
      type: 'button', id, title: on ? offLabel : label, 'aria-label': on ? offLabel : label, 'aria-pressed': String(on),
      onclick: () => this.#setting(conversation, changes),
    }, icon(name));
    const header = [
      h('button.icon-button.back-button', { type: 'button', title: 'Back to chats', 'aria-label': 'Back to chats', onclick: () => this.actions.back() }, icon('back')),
      ...who,
      toggle('pin-button', 'pin', conversation.pinned, 'Pin to the top', 'Unpin', { pinned: !conversation.pinned }),
      toggle('mute-button', 'mute', conversation.muted, 'Mute notifications', 'Unmute', { muted: !conversation.muted }),
      toggle('hide-button', 'archive', conversation.hidden, 'Hide until the next message', 'Show in the list', { hidden: !conversation.hidden }),
      toggle('mark-unread-button', 'unread', conversation.markedUnread, 'Mark unread', 'Marked unread', { marked_unread: !conversation.markedUnread }),
      conversation.kind === 'group'
        ? h('button.icon-button', { type: 'button', id: 'members-button', title: 'Members', 'aria-label': 'Members', onclick: () => this.actions.members() }, icon('group'))
        : null,
    ];
    $('#pane-header').replaceChildren(...header.filter(Boolean));
  }

  /** Change a setting of the open conversation. Hiding it or marking it unread closes it
   * first: a read sent after the mark would clear it again (a refusal opens it again, to show). */
  async #setting(conversation, changes) {
    this.#settingsRefusal = null;
    const closes = Boolean(changes.hidden || changes.marked_unread);
    if (closes) this.actions.back();
    try {
      await this.chat.setConversation(conversation.id, changes);
    } catch (error) {
      this.#settingsRefusal = { id: conversation.id, error };
      if (closes) this.actions.open(conversation.id);
    }
    this.store.changed('pane');
  }

  /** Above the composer: that I block the peer (nothing goes either way), or a refused setting. */
  #renderNotice(conversation) {
    const notice = $('#conversation-notice');
    const blocked = conversation.peer && this.store.blocked.has(conversation.peer);
    const refusal = this.#settingsRefusal?.error ?? null;
    showRefusal(notice, refusal);
    if (!refusal && blocked) {
      const peer = conversation.peer;
      notice.replaceChildren(`You blocked ${this.store.displayName(peer)}: messages cannot go either way. `,
        h('button.link', { type: 'button', onclick: () => this.actions.profile(peer) }, 'Profile'));
    }
    notice.hidden = !notice.textContent;
  }

  #renderMessages(conversation, switched) {
    const scroller = $('#messages');
    const list = $('#message-list');
    const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 60;
    const anchor = !switched && !atBottom ? firstVisible(scroller, list) : null;

    const wanted = [];
    let previous = null;
    let day = null;
    // one-to-one: the newest of my messages the peer has read gets a "Read" caption
    const lastRead = conversation.kind === 'direct'
      ? conversation.ordered().filter((m) => m.sender === this.store.me && m.seq <= conversation.peerReadSeq).at(-1)?.mid ?? null
      : null;
    const entries = [
      ...conversation.ordered().map((message) => ({ message, state: message.sender === this.store.me ? 'sent' : null })),
      ...this.outbox.in(conversation.id).map((entry) => ({ entry, state: entry.state })),
    ];
    for (const item of entries) {
      const at = item.message ? item.message.sent_at_ms : item.entry.createdAt;
      const thisDay = new Date(at).toDateString();
      if (thisDay !== day) {
        day = thisDay;
        previous = null;
        wanted.push(this.#keep(`day:${thisDay}`, dayLabel(at), () => h('li.day', {}, h('span', {}, dayLabel(at)))));
      }
      if (item.message && item.message.seq === conversation.firstUnreadSeq) {
        wanted.push(this.#keep('unread-line', '', () => h('li.unread-line', {}, h('span', {}, 'New messages'))));
        previous = null;
      }
      const sender = item.message ? item.message.sender : this.store.me;
      const runStart = !previous || previous.sender !== sender || at - previous.at > 5 * 60e3;
      previous = { sender, at };
      wanted.push(this.#messageItem(conversation, item, runStart, item.message && item.message.mid === lastRead));
    }
    list.replaceChildren(...wanted);

    const status = $('#history-status');
    if (this.chat.loadingOlder(conversation.id)) status.textContent = 'Loading earlier messages…';
    else if (conversation.historyDone) status.textContent = entries.length ? 'This is the beginning of the conversation.' : '';
    else status.textContent = '';
    list.classList.toggle('empty', entries.length === 0);
    if (!entries.length) list.replaceChildren(h('li.empty-chat', {}, conversation.kind === 'group' ? 'No messages in this group yet.' : `Say hello to ${this.store.title(conversation)}.`));

    if (switched || atBottom) scroller.scrollTop = scroller.scrollHeight;
    else if (anchor) {
      const el = this.#items.get(anchor.key)?.el; // maybe rebuilt: a message above it changes how it looks
      if (el?.isConnected) scroller.scrollTop += el.getBoundingClientRect().top - anchor.top;
    }
    // near the top (or too short to scroll at all): the next older page, until none are left
    if (scroller.scrollTop < LOAD_OLDER_PX && !conversation.historyDone && entries.length && this.chat.connection.online) {
      this.actions.older();
    }
  }

  #keep(key, signature, build) {
    const kept = this.#items.get(key);
    if (kept && kept.signature === signature) return kept.el;
    const el = build();
    el.dataset.key = key;
    this.#items.set(key, { el, signature });
    return el;
  }

  #messageItem(conversation, { message, entry, state }, runStart, lastRead = false) {
    const mine = message ? message.sender === this.store.me : true;
    const type = message ? message.type : entry.type;
    const body = message ? message.body : entry.body;
    const packet = message && type === 'red_packet' ? this.store.packets.get(message.mid) : null;
    const key = message ? `m:${message.mid}` : `c:${entry.cmid}`;
    const senderName = message && !mine && conversation.kind === 'group' ? this.store.displayName(message.sender) : null;
    const recalled = Boolean(message?.recalled_at_ms);
    const edited = Boolean(message?.version) && !recalled;
    // one-to-one: my message was read by the peer (a receipt)
    const read = Boolean(message && mine && conversation.kind === 'direct' && message.seq <= conversation.peerReadSeq);
    const urls = !recalled && message && (type === 'image' || type === 'file') ? this.#attachmentUrls(type, body) : null;
    const actions = message && !recalled ? this.#allowedActions(conversation, message, mine) : [];
    const signature = JSON.stringify([state, runStart, packet, entry?.error, body, senderName, recalled, message?.version, read, lastRead, urls, actions]);
    return this.#keep(key, signature, () => {
      const showSender = runStart && !mine && conversation.kind === 'group';
      // time and tick sit inside a text bubble; a card has them below it
      const stamp = h('span.stamp', {}, edited ? h('span.edited', { title: `Edited at ${clockTime(message.edited_at_ms)}` }, 'edited') : null,
        h('time', {}, clockTime(message ? message.sent_at_ms : entry.createdAt)),
        mine && state ? h(`span.state.state-${state}`, { title: read ? 'Read' : STATE_LABEL[state] }, icon(read ? 'read' : STATE_ICON[state])) : null);
      const shown = { type, body: message ? body : { ...(entry.meta || {}), ...body } };
      let content;
      if (recalled) {
        const who = message.recalled_by === this.store.me ? 'You' : message.recalled_by === message.sender ? (mine ? 'You' : this.store.displayName(message.sender)) : this.store.displayName(message.recalled_by);
        content = [h('div.bubble.recalled', {}, h('span.text.recalled-text', {}, `${who} recalled a message`), stamp)];
      } else if (type === 'red_packet') content = [this.#packetCard(message, body, packet, state), h('div.meta', {}, stamp)];
      else if (type === 'image' && urls) content = [this.#imageCard(body, urls), h('div.meta', {}, stamp)];
      else if (type === 'file' && urls) content = [this.#fileCard(body, urls), h('div.meta', {}, stamp)];
      else content = [h('div.bubble', {}, h('span.text', {}, describe(shown)), stamp)];
      const tools = actions.length ? h('div.message-actions', {}, actions.map((action) => h(`button.link.${action}-button`, {
        type: 'button', onclick: () => this.actions[action](message),
      }, action === 'edit' ? 'Edit' : 'Recall'))) : null;
      let trouble = null; // what a person must know about a send that has not gone through
      if (state === 'retrying') trouble = h('div.trouble.state-retrying', {}, icon('retry'), h('span.state-label', {}, STATE_LABEL.retrying));
      if (state === 'failed') {
        trouble = h(
          'div.trouble.state-failed', {}, icon('alert'),
          h('span.failure', { dataset: { code: entry.code || '' } }, `${STATE_LABEL.failed}${entry.error ? `: ${entry.error}` : ''}.`),
          h('button.link.retry-button', { type: 'button', onclick: () => this.actions.retry(entry.cmid) }, 'Retry'),
          h('button.link.discard-button', { type: 'button', onclick: () => this.actions.discard(entry.cmid) }, 'Delete'),
        );
      }
      return h(
        `li.message.${mine ? 'mine' : 'theirs'}${runStart ? '.run-start' : ''}`,
        { dataset: { mid: message ? String(message.mid) : null, seq: message ? String(message.seq) : null, cmid: message ? message.client_msg_id : entry.cmid, state: state || 'received', type, code: entry?.code || null,
          recalled: recalled ? 'true' : null, edited: edited ? 'true' : null, version: message?.version ? String(message.version) : null, receipt: read ? 'read' : null } },
        conversation.kind !== 'group' || mine ? null : showSender ? avatar(senderName, 'user', { url: this.store.avatarUrl(message.sender) }) : h('span.avatar-gap'),
        h('div.message-body', {}, showSender ? h('div.sender', { dataset: { user: message.sender } }, senderName) : null, content, trouble,
          lastRead ? h('div.receipt-caption', {}, 'Read') : null, tools),
      );
    });
  }

  /** Download URLs of an attachment's object and its thumbnail (null while being asked for). */
  #attachmentUrls(type, body) {
    const object = this.actions.url(body.object);
    const thumbnail = type === 'image' && body.thumbnail ? this.actions.url(body.thumbnail) : object;
    return { object, thumbnail };
  }

  /** What I may do to a message now: edit my own text within its window, recall my own within
   * its window (a group's owner or admin: anyone's, any time). */
  #allowedActions(conversation, message, mine) {
    const age = Date.now() - message.sent_at_ms;
    const actions = [];
    if (mine && message.type === 'text' && age < EDIT_WINDOW_MS) actions.push('edit');
    const moderator = conversation.kind === 'group' && ['owner', 'admin'].includes(conversation.role);
    if ((mine && age < RECALL_WINDOW_MS) || moderator) actions.push('recall');
    return actions;
  }

  #imageCard(body, urls) {
    const picture = h('img.attachment-image', {
      alt: body.name || 'image', src: urls.thumbnail || null, dataset: { object: body.object, loaded: 'false' },
      width: body.width ? String(Math.min(body.width, 320)) : null,
      style: body.width && body.height ? `aspect-ratio: ${body.width} / ${body.height}` : null,
    });
    picture.hidden = !urls.thumbnail;
    picture.addEventListener('load', () => (picture.dataset.loaded = 'true'));
    return h('a.attachment.image-card', { href: urls.object || '#', target: '_blank', rel: 'noopener', title: body.name || 'image' },
      picture, urls.thumbnail ? null : h('span.muted', {}, 'Loading image…'));
  }

  #fileCard(body, urls) {
    return h('a.attachment.file-card', { href: urls.object || '#', target: '_blank', rel: 'noopener', download: body.name || '' },
      icon('file'), h('span.file-text', {}, h('span.file-name', {}, body.name || 'file'),
        h('span.file-size.muted', {}, body.size !== undefined ? byteSize(body.size) : '')));
  }

  #packetCard(message, body, status, state) {
    if (message && !status) this.actions.packetStatus(message);
    let foot = 'Tap to open';
    let opened = false;
    if (!message) [foot, opened] = state === 'failed' ? ['Not sent', true] : ['Sending…', false];
    else if (status) {
      const mine = status.grabs[this.store.me];
      if (mine !== undefined) [foot, opened] = [`You got ${money(mine)}`, true];
      else if (status.count_left === 0) [foot, opened] = ['All shares taken', true];
      else if (status.expires_at < Date.now()) [foot, opened] = ['Expired', true];
    }
    return h(
      `div.packet${opened ? '.opened' : ''}`,
      { role: 'button', tabindex: '0', onclick: () => message && this.actions.packet(message), onkeydown: (event) => event.key === 'Enter' && message && this.actions.packet(message) },
      h('div.packet-top', {}, h('span.packet-seal', {}, '¥'), h('div.packet-text', {}, h('strong', {}, body.greeting || 'Best wishes!'), h('span.packet-foot', {}, foot))),
      h('div.packet-label', {}, `Red packet · ${money(body.total_cents)} · ${body.count} ${body.count === 1 ? 'share' : 'shares'}`),
    );
  }
}

/** The details of a red packet: who got what. */
export function packetDetails(message, status, me) {
  const grabs = Object.entries(status.grabs).sort((x, y) => y[1] - x[1]);
  const taken = status.total - status.cents_left;
  const best = status.count_left === 0 && grabs.length > 1 ? grabs[0][0] : null;
  const mine = status.grabs[me];
  return h(
    'div.packet-details',
    {},
    h('div.packet-hero', {}, h('span.packet-seal.big', {}, '¥'), h('h2', {}, `Red packet from ${message.sender === me ? 'you' : message.sender}`), h('p', {}, message.body.greeting || 'Best wishes!')),
    mine !== undefined ? h('p.packet-mine', { id: 'packet-mine' }, money(mine)) : null,
    h('p.muted.packet-summary', {}, `${status.count - status.count_left} of ${status.count} shares taken · ${money(taken)} of ${money(status.total)}`),
    h(
      'ul.packet-grabs',
      {},
      grabs.map(([user, cents]) =>
        h('li.packet-grab', { dataset: { user } }, avatar(user), h('span.grab-user', {}, user === me ? `${user} (you)` : user), best === user ? h('span.luckiest', {}, 'Luckiest') : null, h('span.amount', {}, money(cents))),
      ),
    ),
  );
}

/** One line for a message in the list and for text bubbles. */
export function describe({ type, body, recalled_at_ms: recalled }) {
  if (recalled) return 'Message recalled';
  if (type === 'text') return body.text;
  if (type === 'red_packet') return `[Red packet] ${body.greeting || 'Best wishes!'}`;
  if (type === 'image') return `[Image] ${body.name || ''}`.trim();
  if (type === 'file') return `[File] ${body.name || ''}`.trim();
  return `[${type}]`;
}

/** The first message at least partly in view, and where it is: it stays put while pages load above it. */
function firstVisible(scroller, list) {
  const top = scroller.getBoundingClientRect().top;
  for (const el of list.querySelectorAll('li.message')) {
    const rect = el.getBoundingClientRect();
    if (rect.bottom > top) return { key: el.dataset.key, top: rect.top };
  }
  return null;
}
