// The page: sign in, then wire the connection, the store, the outbox and the views together.

import { Attachments } from './attachments.js';
import { Chat } from './chat.js';
import { CONNECTING, Connection, ONLINE } from './connection.js';
import { Contacts } from './contacts.js';
import { setUpDialogs } from './dialogs.js';
import { $, USER_ID, avatar, icon } from './dom.js';
import { Outbox } from './outbox.js';
import { People } from './people.js';
import { explain } from './refusals.js';
import { ROOM_ID, Rooms } from './rooms.js';
import { LOAD_OLDER_PX, View } from './render.js';
import { DevLoginOff, clearSession, devToken, lastUser, loadSession, saveSession, tokenUser } from './session.js';
import { Store } from './store.js';

const CONVERSATION_ID = /^(p:[A-Za-z0-9_.-]{1,64}:[A-Za-z0-9_.-]{1,64}|g:[A-Za-z0-9_.-]{1,64})$/;
const isConversationOf = (id, me) => CONVERSATION_ID.test(id) && (id.startsWith('g:') || id.split(':').slice(1).includes(me));
const NOTICE = 'imflow.notice'; // why the last session ended, shown on the sign-in page
const socketUrl = () => `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;

function show(view) {
  document.body.dataset.view = view;
  $('#signin').hidden = view !== 'signin';
  $('#app').hidden = view !== 'app';
}

// -- signing in

function showSignIn(message = '') {
  show('signin');
  $('#signin-error').textContent = message;
  const input = $('#signin-user');
  input.value ||= lastUser();
  input.focus();
}

$('#signin-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const user = $('#signin-user').value.trim();
  const error = $('#signin-error');
  if (!USER_ID.test(user)) {
    error.textContent = 'A user name has 1 to 64 letters, digits, _ . or -';
    return;
  }
  $('#signin-button').disabled = true;
  try {
    const token = await devToken(user);
    saveSession({ user, token, dev: true });
    start(loadSession());
  } catch (failure) {
    if (failure instanceof DevLoginOff) {
      error.textContent = 'This server does not sign in by name. Paste a token below.';
      $('#token-signin').open = true;
    } else {
      error.textContent = failure.message;
    }
  } finally {
    $('#signin-button').disabled = false;
  }
});

$('#token-button').addEventListener('click', () => {
  const token = $('#signin-token').value.trim();
  const user = tokenUser(token);
  if (!user) {
    $('#signin-error').textContent = 'That is not a token: it has three parts separated by dots.';
    return;
  }
  saveSession({ user, token, dev: false });
  start(loadSession());
});

// -- the app

function start(session) {
  show('app');
  const store = new Store(session.user);
  // a development session renews its token on the open socket before it expires
  const renew = session.dev ? () => devToken(session.user) : null;
  const connection = new Connection(socketUrl(), session.token, { renew });
  connection.addEventListener('token', ({ detail }) => saveSession({ ...session, token: detail }));
  const outbox = new Outbox(connection, `imflow.outbox.${session.user}`);
  const chat = new Chat(connection, store, outbox);
  const attachments = new Attachments(connection, store);
  const dialogs = setUpDialogs({ store, chat, openConversation });
  const rooms = new Rooms(connection, store, { openRoom, leaveRoom: () => openConversation(null) });
  const contacts = new Contacts(connection, store);
  const people = new People(store, contacts, { openConversation, openProfile, back: () => openConversation(null) });
  const view = new View(store, outbox, chat, {
    open: openConversation,
    back: () => openConversation(null),
    retry: (cmid) => outbox.retry(cmid),
    discard: (cmid) => outbox.discard(cmid),
    older: () => store.openId && chat.loadOlder(store.openId).catch(() => null),
    members: () => dialogs.members(),
    profile: (user) => openProfile(user),
    packet: (message) => dialogs.openPacket(message).catch((error) => console.warn('red packet', error)),
    url: (key) => attachments.url(key),
    recall: (message) => chat.recall(message).catch((error) => composerStatus(`Not recalled: ${explain(error)}`, { code: error.code })),
    edit: (message) => startEditing(message),
    packetStatus: (message) => {
      if (!connection.online || store.packets.has(message.mid)) return;
      store.packets.set(message.mid, null); // asked once; the answer re-renders the card
      chat.packetStatus(message.conversation, message.mid).catch(() => store.packets.delete(message.mid));
    },
  });
  store.addEventListener('change', (event) => view.render(event.detail));
  outbox.addEventListener('change', () => store.changed('list', 'pane'));

  $('#me-avatar').replaceChildren(avatar(session.user));
  $('#me-name').textContent = session.user;
  $('#signout-button').replaceChildren(icon('logout'));
  $('#new-chat-button').replaceChildren(icon('edit'));
  $('#new-group-button').replaceChildren(icon('group'));
  $('#packet-button').replaceChildren(icon('packet'));
  $('#send-button').replaceChildren(icon('send'));
  $('#attach-button').prepend(icon('attach'));
  $('#new-chat-button').addEventListener('click', () => dialogs.newChat());
  $('#new-group-button').addEventListener('click', () => dialogs.newGroup());
  $('#packet-button').addEventListener('click', () => dialogs.sendPacket());
  $('#signout-button').addEventListener('click', () => {
    connection.stop();
    clearSession();
    location.hash = '';
    location.reload();
  });

  // -- the open conversation follows the address (#/c/<id>), and so do a live room (#/r/<room>)
  // and a profile (#/u/<user>): reloads and the back button keep them; leaving a room's address
  // leaves the room
  function openConversation(id) {
    const hash = id ? `#/c/${encodeURIComponent(id)}` : '';
    if (location.hash !== hash) history.pushState(null, '', hash || location.pathname);
    route();
  }
  function openRoom(name) {
    const hash = `#/r/${encodeURIComponent(name)}`;
    if (location.hash !== hash) history.pushState(null, '', hash);
    route();
  }
  function openProfile(user) {
    const hash = `#/u/${encodeURIComponent(user)}`;
    if (location.hash !== hash) history.pushState(null, '', hash);
    route();
  }
  function route() {
    const match = /^#\/c\/(.+)$/.exec(location.hash);
    let id = match ? decodeURIComponent(match[1]) : null;
    if (id && !isConversationOf(id, store.me)) id = null; // a mistyped or someone else's address
    const roomMatch = /^#\/r\/(.+)$/.exec(location.hash);
    let room = roomMatch ? decodeURIComponent(roomMatch[1]) : null;
    if (room && !ROOM_ID.test(room)) room = null;
    const userMatch = /^#\/u\/(.+)$/.exec(location.hash);
    let user = userMatch ? decodeURIComponent(userMatch[1]) : null;
    if (user && !USER_ID.test(user)) user = null;
    if (user !== store.profileUser) people.showProfile(user);
    if (room !== rooms.name) rooms.open(room);
    if (id !== store.openId) chat.open(id);
    if (editing && editing.conversation !== id) stopEditing();
    else if (!id) composerStatus('');
    if (id) $('#composer-text').focus({ preventScroll: true });
    if (room) $('#room-text').focus({ preventScroll: true });
  }
  window.addEventListener('popstate', route);
  window.addEventListener('hashchange', route);

  // -- writing
  const composer = $('#composer');
  const text = $('#composer-text');
  composer.addEventListener('submit', (event) => {
    event.preventDefault();
    const message = text.value.trim();
    if (!message || !store.openId) return;
    if (editing) {
      const edited = editing;
      chat.edit(edited, message)
        .then(() => editing === edited && stopEditing())
        .catch((error) => composerStatus(`Not edited: ${explain(error)}`, { code: error.code, cancel: true }));
      return;
    }
    chat.sendText(store.openId, message);
    text.value = '';
    grow();
    $('#messages').scrollTop = $('#messages').scrollHeight;
  });
  text.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && editing) stopEditing();
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });
  const grow = () => {
    text.style.height = 'auto';
    text.style.height = `${Math.min(text.scrollHeight, 160)}px`;
  };
  text.addEventListener('input', grow);

  // -- a line over the composer: an upload on its way, a refusal, or the message being edited
  let editing = null; // my message whose text the composer holds
  function composerStatus(message, { code = '', cancel = false } = {}) {
    $('#composer-status-text').textContent = message;
    $('#composer-status').dataset.code = code || '';
    $('#edit-cancel').hidden = !cancel;
    $('#composer-status').hidden = !message;
  }
  function startEditing(message) {
    editing = message;
    text.value = message.body.text;
    grow();
    composerStatus('Editing your message', { cancel: true });
    text.focus();
  }
  function stopEditing() {
    editing = null;
    text.value = '';
    grow();
    composerStatus('');
  }
  $('#edit-cancel').addEventListener('click', stopEditing);

  // -- images and files: uploaded first, then sent as a message that names the object
  $('#attach-input').addEventListener('change', async (event) => {
    const input = event.target;
    const files = [...input.files];
    const id = store.openId;
    input.value = ''; // the same file may be chosen again
    for (const file of files) {
      if (!id) break;
      composerStatus(`Uploading ${file.name}…`);
      try {
        await chat.sendAttachment(id, file, attachments);
        composerStatus('');
      } catch (error) {
        composerStatus(`${file.name} not sent: ${explain(error)}`, { code: error.code });
        break;
      }
    }
  });

  // -- reading: scrolling back, and read marks when the page is seen again
  $('#messages').addEventListener('scroll', () => {
    if ($('#messages').scrollTop < LOAD_OLDER_PX && store.openId) chat.loadOlder(store.openId).catch(() => null);
  }, { passive: true });
  document.addEventListener('visibilitychange', () => chat.markOpenRead());

  // -- the connection, as the user sees it
  let everOnline = false;
  connection.addEventListener('status', ({ detail }) => {
    document.body.dataset.connection = detail.status;
    const banner = $('#connection-banner');
    const status = $('#connection-status');
    if (detail.status === ONLINE) {
      everOnline = true;
      banner.hidden = true;
      status.textContent = 'Online';
      return;
    }
    const waiting = detail.retryInMs ? ` in ${Math.max(1, Math.round(detail.retryInMs / 1000))} s` : '';
    status.textContent = detail.status === CONNECTING ? 'Connecting…' : `Offline · retrying${waiting}`;
    banner.textContent = everOnline ? 'Connection lost. Reconnecting… Messages you write now are sent once it is back.' : 'Connecting…';
    banner.hidden = false;
  });
  let refusals = 0;
  connection.addEventListener('welcome', () => (refusals = 0));
  connection.addEventListener('unauthorized', async ({ detail }) => {
    refusals += 1;
    if (session.dev && refusals < 3) {
      try { // a development token expired: get a fresh one for the same user
        connection.token = await devToken(session.user);
        saveSession({ ...session, token: connection.token });
        connection.start();
        return;
      } catch {
        /* fall through to signing in again */
      }
    }
    connection.stop();
    clearSession(); // and start afresh, so nothing of this session stays wired
    sessionStorage.setItem(NOTICE, `Signed out: ${detail.message || detail.code}. Sign in again.`);
    location.reload();
  });

  // a page kept in the back/forward cache would keep its socket open (and its user online to
  // their contacts): it closes on the way out and opens again when the page comes back
  window.addEventListener('pagehide', (event) => event.persisted && connection.stop());
  window.addEventListener('pageshow', (event) => event.persisted && connection.start());

  view.render(new Set(['list', 'pane', 'total']));
  route();
  connection.start();
}

const session = loadSession();
const notice = sessionStorage.getItem(NOTICE);
sessionStorage.removeItem(NOTICE);
if (session) start(session);
else showSignIn(notice || '');
