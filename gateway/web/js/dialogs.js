// The dialogs: new chat, new group, group members, red packets (send, and who got what).

import { $, USER_ID, avatar, h } from './dom.js';
import { showRefusal } from './refusals.js';
import { packetDetails } from './render.js';

/** Wire a dialog's form: `submit` runs async; a thrown error (a refusal: with its code) shows
 * in the form, success closes unless `submit` answers false. Returns {show()}. */
export function wire(dialog, submit) {
  const form = $('form', dialog);
  const error = $('.form-error', dialog);
  for (const button of dialog.querySelectorAll('[data-close]')) button.addEventListener('click', () => dialog.close());
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    showRefusal(error, null);
    const buttons = form.querySelectorAll('button[type=submit]');
    buttons.forEach((button) => (button.disabled = true));
    try {
      if ((await submit()) !== false) dialog.close();
    } catch (failure) {
      showRefusal(error, failure);
    } finally {
      buttons.forEach((button) => (button.disabled = false));
    }
  });
  return {
    show() {
      showRefusal(error, null);
      dialog.showModal();
    },
  };
}

function userList(text, me) {
  const users = [...new Set(text.split(/[\s,;]+/).filter(Boolean))];
  const bad = users.find((user) => !USER_ID.test(user));
  if (bad) throw new Error(`"${bad}" is not a user name (letters, digits, _ . -)`);
  return users.filter((user) => user !== me);
}

export function setUpDialogs({ store, chat, openConversation }) {
  const newChat = wire($('#new-chat-dialog'), async () => {
    const user = $('#new-chat-user').value.trim();
    if (!USER_ID.test(user)) throw new Error('A user name has 1 to 64 letters, digits, _ . or -');
    if (user === store.me) throw new Error('That is you: pick someone else');
    openConversation(chat.startDirect(user));
  });

  const newGroup = wire($('#new-group-dialog'), async () => {
    const name = $('#new-group-name').value.trim();
    if (!name) throw new Error('Give the group a name');
    const members = userList($('#new-group-members').value, store.me);
    openConversation(await chat.createGroup(name, members));
  });

  const membersDialog = $('#members-dialog');
  const members = wire(membersDialog, async () => {
    const conversation = store.open;
    const users = userList($('#add-members-users').value, store.me);
    if (!users.length) throw new Error('Name at least one person to add');
    const added = await chat.addMembers(conversation, users);
    $('#add-members-users').value = '';
    renderMembers(conversation);
    $('.form-error', membersDialog).textContent = added.length ? `Added ${added.join(', ')}.` : 'They are members already.';
    return false; // stay open: the list shows the change
  });

  function renderMembers(conversation) {
    const roles = conversation.members || {};
    const order = { owner: 0, admin: 1, member: 2 };
    const users = Object.keys(roles).sort((a, b) => order[roles[a]] - order[roles[b]] || a.localeCompare(b));
    $('#members-title').textContent = `${conversation.name} · ${users.length} members`;
    $('#member-list').replaceChildren(
      ...users.map((user) => h('li.member', { dataset: { user } }, avatar(user), h('span.member-name', {}, user === store.me ? `${user} (you)` : user), roles[user] !== 'member' ? h('span.role', {}, roles[user]) : null)),
    );
    $('#add-members').hidden = !['owner', 'admin'].includes(conversation.role);
  }

  const packet = wire($('#packet-dialog'), async () => {
    const amount = $('#packet-amount').value.trim().replace(',', '.');
    if (!/^\d+(\.\d{1,2})?$/.test(amount)) throw new Error('Enter an amount such as 8.88');
    const cents = Math.round(Number(amount) * 100);
    const count = Number($('#packet-count').value);
    if (!Number.isInteger(count) || count < 1) throw new Error('Split it into at least 1 share');
    if (cents < count) throw new Error('Every share needs at least ¥0.01');
    chat.sendRedPacket(store.openId, cents, count, $('#packet-greeting').value.trim());
    $('#messages').scrollTop = $('#messages').scrollHeight; // follow it to the bottom, as after typing
  });

  const details = $('#packet-details');

  return {
    newChat() {
      $('#new-chat-user').value = '';
      newChat.show();
    },
    newGroup() {
      $('#new-group-name').value = '';
      $('#new-group-members').value = '';
      newGroup.show();
    },
    members() {
      const conversation = store.open;
      renderMembers(conversation);
      members.show();
      chat.loadMembers(conversation).then(() => renderMembers(conversation)).catch(() => null);
    },
    sendPacket() {
      const conversation = store.open;
      const people = conversation.members ? Object.keys(conversation.members).length : 2;
      $('#packet-count').value = conversation.kind === 'group' ? String(Math.max(1, people - 1)) : '1';
      $('#packet-greeting').value = '';
      packet.show();
    },
    async openPacket(message) {
      const known = store.packets.get(message.mid);
      const settled = known && (known.grabs[store.me] !== undefined || known.count_left === 0 || known.expires_at < Date.now());
      const status = settled ? await chat.packetStatus(message.conversation, message.mid) : (await chat.grab(message.conversation, message.mid)).status;
      $('#packet-details-body').replaceChildren(packetDetails(message, status, store.me));
      if (!details.open) details.showModal();
    },
  };
}
