// Live rooms (the live rooms plugin): join a room by name, or host it; its chat streams in as
// `room.batch` pushes (several messages a frame). Rooms keep no history, no unread and no inbox:
// what is said while you watch is all there is, so the view keeps only the newest messages.

import { RequestError } from './connection.js';
import { $, avatar, clockTime, h, icon } from './dom.js';

export const ROOM_ID = /^[A-Za-z0-9_.-]{1,64}$/;
const KEEP = 300; // messages in the DOM at most: a busy room scrolls fast
const INFO_EVERY_MS = 3000; // the viewer count, refreshed
const RECENT_MAX = 5;
const AT_BOTTOM_PX = 80;
const GIFT_TEXT = 'sent a gift 🎁';

function reason(error) {
  if (!(error instanceof RequestError)) return error.message || 'Something went wrong';
  const wait = error.frame.retry_after_ms ? ` Try again in ${Math.max(1, Math.ceil(error.frame.retry_after_ms / 1000))} s.` : '';
  switch (error.code) {
    case 'throttle.room_busy': return `The room is busy right now.${wait}`;
    case 'throttle.rate_limited': return `You are sending too fast.${wait}`;
    case 'room.not_joined': return 'You are not in this room any more. Rejoining…';
    case 'room.taken': return error.message || 'This room has a host already.';
    default: return `${error.message || error.code}${wait}`;
  }
}

export class Rooms {
  #infoTimer = null;
  #shown = new Set(); // sender:id of the messages in the view (own posts show before their echo)
  #noticeTimer = null;
  #joining = null;

  constructor(connection, store, { openRoom, leaveRoom }) {
    this.connection = connection;
    this.store = store;
    this.actions = { openRoom, leaveRoom };
    this.name = null; // the open room
    this.host = null;
    this.viewers = null;
    this.joined = false;
    this.recentKey = `imflow.rooms.${store.me}`;
    connection.addEventListener('frame', (event) => this.#frame(event.detail));
    connection.addEventListener('welcome', () => this.name && this.#join()); // re-join after a reconnect
    connection.addEventListener('status', (event) => {
      if (event.detail.status !== 'online' && this.name) {
        this.joined = false;
        this.#renderHeader();
      }
    });
    this.#wire();
    this.renderList();
  }

  // -- the protocol

  /** Show a room and join it (after a reconnect too); null closes the view and leaves. */
  async open(name) {
    if (name === this.name) return;
    if (this.name) this.close();
    if (!name) return;
    this.name = name;
    this.host = null;
    this.viewers = null;
    this.joined = false;
    this.#shown.clear();
    $('#room-message-list').replaceChildren();
    $('#room-text').value = '';
    this.#remember(name);
    this.store.room = name;
    this.store.changed('pane', 'list');
    this.#renderHeader();
    this.renderList();
    this.#notice('');
    clearInterval(this.#infoTimer);
    this.#infoTimer = setInterval(() => this.#info(), INFO_EVERY_MS);
    if (this.connection.online) await this.#join();
  }

  /** Leave the open room (room.leave) and close its view. */
  close() {
    const name = this.name;
    if (!name) return;
    clearInterval(this.#infoTimer);
    this.name = null;
    this.joined = false;
    this.store.room = null;
    if (this.connection.online) this.connection.request({ op: 'room.leave', room: name }).catch(() => null);
    $('#room-message-list').replaceChildren();
    this.#shown.clear();
    this.store.changed('pane', 'list');
    this.renderList();
  }

  /** Become the room's host (room.open); `room.taken` when someone else is. */
  async hostRoom(name) {
    await this.connection.request({ op: 'room.open', room: name });
  }

  async #join() {
    const name = this.name;
    if (this.#joining === name) return;
    this.#joining = name;
    try {
      const reply = await this.connection.request({ op: 'room.join', room: name });
      if (name !== this.name) return; // left meanwhile
      this.joined = true;
      this.host = reply.host;
      this.viewers = reply.viewers;
      this.#renderHeader();
      this.#system(`You joined ${name}.`);
    } catch (error) {
      if (name === this.name) this.#notice(reason(error));
    } finally {
      if (this.#joining === name) this.#joining = null;
    }
  }

  async #info() {
    if (!this.name || !this.connection.online) return;
    const name = this.name;
    try {
      const reply = await this.connection.request({ op: 'room.info', room: name });
      if (name !== this.name) return;
      this.host = reply.host;
      this.viewers = reply.viewers;
      this.#renderHeader();
      if (!this.joined) this.#join();
    } catch {
      /* the next refresh asks again */
    }
  }

  async post(kind, text) {
    const name = this.name;
    if (!name) return false;
    if (!this.connection.online) {
      this.#notice('Offline: room messages are not kept. Send it once you are back.');
      return false;
    }
    try {
      const reply = await this.connection.request({ op: 'room.post', room: name, text, kind });
      if (name === this.name) { // the reply comes before the batch: show it now, the echo is skipped
        this.#add([{ id: reply.id, room: name, sender: this.store.me, kind, text, at_ms: Date.now() }]);
        this.#notice('');
      }
      return true;
    } catch (error) {
      if (name !== this.name) return false;
      this.#notice(reason(error));
      if (error instanceof RequestError && error.code === 'room.not_joined') {
        this.joined = false;
        this.#join();
      }
      return false;
    }
  }

  #frame(frame) {
    if (frame.op !== 'room.batch' || frame.room !== this.name || !Array.isArray(frame.messages)) return;
    this.#add(frame.messages);
  }

  // -- the view

  #add(messages) {
    const scroller = $('#room-messages');
    const list = $('#room-message-list');
    const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < AT_BOTTOM_PX;
    const items = [];
    for (const message of messages) {
      const key = `${message.sender}:${message.id}`;
      if (this.#shown.has(key)) continue;
      this.#shown.add(key);
      items.push(this.#item(message));
    }
    if (!items.length) return;
    list.append(...items);
    while (list.childElementCount > KEEP) {
      const first = list.firstElementChild;
      this.#shown.delete(first.dataset.key);
      first.remove();
    }
    if (atBottom) scroller.scrollTop = scroller.scrollHeight;
    else $('#room-jump').hidden = false;
  }

  #item(message) {
    const mine = message.sender === this.store.me;
    const host = message.sender === this.host;
    const gift = message.kind === 'gift' || message.kind === 'red_packet';
    return h(
      `li.room-message${mine ? '.mine' : ''}${gift ? '.gift' : ''}${host ? '.from-host' : ''}`,
      { dataset: { key: `${message.sender}:${message.id}`, id: String(message.id), kind: message.kind, sender: message.sender } },
      gift ? h('span.gift-mark', { 'aria-hidden': 'true' }, icon('gift')) : null,
      h('span.room-line', {},
        h('span.sender', {}, mine ? 'You' : message.sender),
        host ? h('span.host-tag', {}, 'Host') : null,
        h('span.text', {}, message.text)),
      h('time.room-time', {}, clockTime(message.at_ms || Date.now())),
    );
  }

  #system(text) {
    const list = $('#room-message-list');
    list.append(h('li.room-system', {}, text));
    const scroller = $('#room-messages');
    scroller.scrollTop = scroller.scrollHeight;
  }

  #renderHeader() {
    if (!this.name) return;
    $('#room-title').textContent = this.name;
    $('#room-avatar').replaceChildren(avatar(this.name, 'room'));
    const viewers = $('#room-viewers');
    viewers.dataset.count = this.viewers === null ? '' : String(this.viewers);
    viewers.textContent = this.viewers === null ? '…' : String(this.viewers);
        const hostLine = $('#room-host');
    hostLine.textContent = this.host ? (this.host === this.store.me ? 'hosted by you' : `hosted by ${this.host}`) : 'no host yet';
    hostLine.dataset.host = this.host || '';
    $('#room-host-badge').hidden = !this.host || this.host !== this.store.me;
    $('#room-live').classList.toggle('off', !this.joined);
    $('#room-live').textContent = this.joined ? 'Live' : this.connection.online ? 'Joining…' : 'Offline';
    document.body.dataset.room = this.joined ? 'joined' : 'joining';
  }

  #notice(text) {
    const notice = $('#room-notice');
    notice.textContent = text;
    notice.hidden = !text;
    clearTimeout(this.#noticeTimer);
    if (text) this.#noticeTimer = setTimeout(() => (notice.hidden = true), 6000);
  }

  // -- recently visited rooms, in the sidebar

  #recent() {
    try {
      const rooms = JSON.parse(localStorage.getItem(this.recentKey) || '[]');
      return Array.isArray(rooms) ? rooms.filter((room) => ROOM_ID.test(room)).slice(0, RECENT_MAX) : [];
    } catch {
      return [];
    }
  }

  #remember(name) {
    const rooms = [name, ...this.#recent().filter((room) => room !== name)].slice(0, RECENT_MAX);
    localStorage.setItem(this.recentKey, JSON.stringify(rooms));
  }

  renderList() {
    const rooms = this.#recent();
    $('#room-list').replaceChildren(
      ...rooms.map((room) => h(
        'li.room',
        { dataset: { room }, 'aria-current': room === this.name ? 'true' : null },
        h('button.room-button', { type: 'button', onclick: () => this.actions.openRoom(room) },
          avatar(room, 'room'),
          h('span.conversation-name', {}, room),
          room === this.name ? h('span.live-tag', {}, 'Live') : null),
      )),
    );
    $('#room-list-empty').hidden = rooms.length > 0;
  }

  #wire() {
    const dialog = $('#room-dialog');
    const error = $('.form-error', dialog);
    for (const button of dialog.querySelectorAll('[data-close]')) button.addEventListener('click', () => dialog.close());
    $('#rooms-button').replaceChildren(icon('live'));
    $('#rooms-button').addEventListener('click', () => {
      error.textContent = '';
      $('#room-name').value = '';
      dialog.showModal();
    });
    const go = async (hosting) => {
      const name = $('#room-name').value.trim();
      error.textContent = '';
      if (!ROOM_ID.test(name)) {
        error.textContent = 'A room name has 1 to 64 letters, digits, _ . or -';
        return;
      }
      const buttons = dialog.querySelectorAll('.actions button:not([data-close])');
      buttons.forEach((button) => (button.disabled = true));
      try {
        if (hosting) await this.hostRoom(name);
        dialog.close();
        this.actions.openRoom(name);
      } catch (failure) {
        error.textContent = reason(failure);
      } finally {
        buttons.forEach((button) => (button.disabled = false));
      }
    };
    $('#room-form').addEventListener('submit', (event) => {
      event.preventDefault();
      go(false);
    });
    $('#room-host-button').addEventListener('click', () => go(true));

    $('#room-leave').addEventListener('click', () => this.actions.leaveRoom());
    $('#room-back').replaceChildren(icon('back'));
    $('#room-back').addEventListener('click', () => this.actions.leaveRoom());
    $('#room-gift-button').replaceChildren(icon('gift'));
    $('#room-send').replaceChildren(icon('send'));

    const text = $('#room-text');
    const send = async (kind) => {
      const value = text.value.trim() || (kind === 'gift' ? GIFT_TEXT : '');
      if (!value) return;
      text.value = '';
      if (!(await this.post(kind, value)) && !text.value) text.value = kind === 'gift' && value === GIFT_TEXT ? '' : value;
      const scroller = $('#room-messages');
      scroller.scrollTop = scroller.scrollHeight;
    };
    $('#room-composer').addEventListener('submit', (event) => {
      event.preventDefault();
      send('chat');
    });
    $('#room-gift-button').addEventListener('click', () => send('gift'));
    text.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $('#room-composer').requestSubmit();
      }
    });
    const scroller = $('#room-messages');
    scroller.addEventListener('scroll', () => {
      if (scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < AT_BOTTOM_PX) $('#room-jump').hidden = true;
    }, { passive: true });
    $('#room-jump').addEventListener('click', () => {
      scroller.scrollTop = scroller.scrollHeight;
      $('#room-jump').hidden = true;
    });
  }
}
