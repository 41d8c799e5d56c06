// The people views: the sidebar's Contacts tab (friend requests both ways, contacts with their
// presence, blocked users), a user's profile in the pane (#/u/<user>), the add-contact dialog
// and the privacy dialog. They render from the store and act through contacts.js; a refusal
// shows where it happened, with its code (refusals.js).

import { wire } from './dialogs.js';
import { $, USER_ID, avatar, dayLabel, h, icon, presenceText, shortWhen } from './dom.js';
import { showRefusal } from './refusals.js';
import { directConversation } from './store.js';

const byName = (store) => (x, y) => store.displayName(x).localeCompare(store.displayName(y)) || x.localeCompare(y);

export class People {
  #profileShown = null; // whose profile the pane showed last (its error line is theirs)

  constructor(store, contacts, { openConversation, openProfile, back }) {
    this.store = store;
    this.contacts = contacts;
    this.actions = { openConversation, openProfile, back };
    store.addEventListener('change', ({ detail }) => {
      if (detail.has('people')) this.renderPanel();
      if (detail.has('people') || detail.has('pane')) this.renderProfile();
      if (detail.has('people')) this.renderPrivacy();
    });
    this.#wire();
    this.showTab('chats');
  }

  showTab(name) {
    document.body.dataset.tab = name;
    $('#chats-panel').hidden = name !== 'chats';
    $('#contacts-panel').hidden = name !== 'contacts';
    for (const tab of document.querySelectorAll('.tabs [role=tab]')) tab.setAttribute('aria-selected', String(tab.dataset.tab === name));
  }

  /** Show a user's profile in the pane (null: none); its profile is read afresh. */
  showProfile(user) {
    this.store.profileUser = user;
    this.store.changed('pane', 'list');
    if (user) this.contacts.loadProfiles([user]).catch(() => null);
  }

  // -- the Contacts tab

  renderPanel() {
    const { store } = this;
    const incoming = [...store.incoming.keys()].sort(byName(store));
    const outgoing = [...store.outgoing.keys()].sort(byName(store));
    const contacts = [...store.contacts.keys()].sort(byName(store));
    const blocked = [...store.blocked.keys()].sort(byName(store));

    const badge = $('#requests-badge');
    badge.hidden = incoming.length === 0;
    badge.textContent = String(incoming.length);
    badge.dataset.count = String(incoming.length);

    $('#requests-section').hidden = incoming.length + outgoing.length === 0;
    $('#incoming-requests').replaceChildren(...incoming.map((user) => {
      const { note, at_ms: atMs } = store.incoming.get(user);
      return this.#row('li.person.request.incoming', user, [note ? h('span.note', {}, `“${note}”`) : null, h('span.muted', {}, `wants to be your contact · ${shortWhen(atMs)}`)],
        this.#changeButton('primary.small.accept-button', 'contact_accept', user, 'Accept'),
        this.#changeButton('secondary.small.decline-button', 'contact_decline', user, 'Decline'));
    }));
    $('#outgoing-requests').replaceChildren(...outgoing.map((user) => {
      const { note } = store.outgoing.get(user);
      return this.#row('li.person.request.outgoing', user, [note ? h('span.note', {}, `“${note}”`) : null, h('span.muted', {}, 'waiting for an answer')],
        this.#changeButton('secondary.small.cancel-button', 'contact_cancel', user, 'Cancel'));
    }));

    $('#contacts-count').textContent = contacts.length ? String(contacts.length) : '';
    $('#contacts-empty').hidden = contacts.length > 0;
    $('#contact-list').replaceChildren(...contacts.map((user) => {
      const presence = store.presence.get(user);
      const gone = store.profiles.get(user)?.status === 'deactivated';
      const line = gone ? 'Account deactivated' : presenceText(presence) || `@${user}`;
      const item = this.#row('li.person.contact', user, [h('span.muted.presence-text', {}, line)],
        h('button.icon-button.message-button', { type: 'button', title: 'Message', 'aria-label': `Message ${store.displayName(user)}`, onclick: () => this.#message(user) }, icon('send')));
      item.dataset.online = presence ? String(presence.online) : '';
      return item;
    }));

    $('#blocked-section').hidden = blocked.length === 0;
    $('#blocked-list').replaceChildren(...blocked.map((user) => this.#row('li.person.blocked', user, [h('span.muted', {}, `blocked ${shortWhen(store.blocked.get(user))}`)],
      this.#changeButton('secondary.small.unblock-button', 'unblock', user, 'Unblock'))));
  }

  /** A button of the Contacts tab making the change `op` about `user`; a refusal shows over the lists. */
  #changeButton(classes, op, user, label) {
    return h(`button.${classes}`, { type: 'button', onclick: () => this.#act('#contacts-error', () => this.contacts.change(op, user)) }, label);
  }

  /** One person in a list: avatar (with presence for contacts), name, lines under it, buttons. */
  #row(tag, user, lines, ...buttons) {
    const { store } = this;
    const name = store.displayName(user);
    const presence = store.contacts.has(user) ? store.presence.get(user) : null;
    return h(tag, { dataset: { user } },
      h('button.person-main', { type: 'button', title: `${name}'s profile`, onclick: () => this.actions.openProfile(user) },
        avatar(name, 'user', { url: store.avatarUrl(user), presence }),
        h('span.person-text', {}, h('span.person-name', {}, name), ...lines)),
      h('span.person-actions', {}, ...buttons));
  }

  // -- a profile in the pane

  renderProfile() {
    const { store } = this;
    const user = store.profileUser;
    const shown = Boolean(user) && !store.openId && !store.room;
    $('#profile-view').hidden = !shown;
    if (user !== this.#profileShown) showRefusal($('#profile-error'), null); // another person's
    this.#profileShown = user;
    if (!shown) return;
    const profile = store.profiles.get(user);
    const name = store.displayName(user);
    const presence = store.contacts.has(user) ? store.presence.get(user) : null;
    const button = (id, kind, label, onclick) => h(`button.${kind}`, { type: 'button', id, onclick }, label);
    // a button making the change `op` about this user; a refusal shows under the profile
    const change = (id, kind, label, op) => button(id, kind, label, () => this.#act('#profile-error', () => this.contacts.change(op, user)));
    const message = button('profile-message', 'primary', 'Message', () => this.#message(user));
    const blockButton = change('profile-block', 'secondary.danger', 'Block', 'block');

    let relation = '';
    let buttons = [];
    if (user === store.me) {
      relation = 'This is you.';
      buttons = [button('profile-privacy', 'secondary', 'Privacy settings', () => this.openPrivacy())];
    } else if (store.blocked.has(user)) {
      relation = 'You blocked them: neither of you can message the other.';
      buttons = [change('profile-unblock', 'secondary', 'Unblock', 'unblock')];
    } else if (store.contacts.has(user)) {
      relation = `Contact since ${dayLabel(store.contacts.get(user).since_ms).toLowerCase()}.`;
      buttons = [message, change('profile-remove', 'secondary', 'Remove contact', 'contact_remove'), blockButton];
    } else if (store.incoming.has(user)) {
      const { note } = store.incoming.get(user);
      relation = `Wants to be your contact${note ? `: “${note}”` : '.'}`;
      buttons = [change('profile-accept', 'primary', 'Accept', 'contact_accept'), change('profile-decline', 'secondary', 'Decline', 'contact_decline'), blockButton];
    } else if (store.outgoing.has(user)) {
      const { note } = store.outgoing.get(user);
      relation = `You asked to be their contact${note ? `: “${note}”` : '.'}`;
      buttons = [message, change('profile-cancel', 'secondary', 'Cancel request', 'contact_cancel'), blockButton];
    } else {
      buttons = [message, button('profile-add', 'secondary', 'Add contact', () => this.openRequest(user)), blockButton];
    }
    const custom = Object.entries(profile?.custom || {});
    const status = profile?.unknown ? 'No account' : profile?.status === 'deactivated' ? 'Deactivated' : null;
    $('#profile-body').replaceChildren(
      h('div.profile-hero', {},
        avatar(name, 'user', { url: store.avatarUrl(user), presence }),
        h('h2', { id: 'profile-name' }, name),
        h('p.muted', { id: 'profile-user' }, `@${user}`),
        status ? h('p.status-tag', { id: 'profile-status' }, status) : null,
        presence ? h('p.presence-line', { id: 'profile-presence', dataset: { online: String(presence.online) } }, presenceText(presence)) : null),
      relation ? h('p.profile-relation', { id: 'profile-relation' }, relation) : null,
      h('div.profile-actions', {}, ...buttons),
      custom.length ? h('dl.profile-custom', {}, ...custom.flatMap(([key, value]) => [h('dt', {}, key), h('dd', {}, String(value))])) : null,
    );
  }

  #message(user) {
    const id = directConversation(this.store.me, user);
    this.store.conversation(id).touchedAt = Date.now();
    this.showTab('chats');
    this.actions.openConversation(id);
  }

  /** Run an action; its refusal shows in the error line `where` (with data-code), success clears it. */
  async #act(where, work) {
    const line = $(where);
    showRefusal(line, null);
    try {
      await work();
    } catch (error) {
      showRefusal(line, error);
    }
  }

  // -- the dialogs: a friend request, and the privacy setting

  openRequest(user = '') {
    $('#contact-request-user').value = user;
    $('#contact-request-note').value = '';
    this.requestDialog.show();
    $(user ? '#contact-request-note' : '#contact-request-user').focus();
  }

  openPrivacy() {
    this.renderPrivacy();
    $('#privacy-saved').hidden = true;
    this.privacyDialog.show();
  }

  renderPrivacy() {
    const { store } = this;
    const privacy = store.privacy;
    for (const input of document.querySelectorAll('#privacy-form input[type=radio]')) {
      input.checked = Boolean(privacy) && privacy[input.name === 'dm' ? 'dm' : 'presence'] === input.value;
    }
    $('#privacy-unknown').hidden = Boolean(privacy);
    const name = store.displayName(store.me);
    $('#privacy-me').replaceChildren(avatar(name, 'user', { url: store.avatarUrl(store.me) }),
      h('span.person-text', {}, h('span.person-name', {}, name), h('span.muted', {}, `@${store.me}`)));
    $('#me-avatar').replaceChildren(avatar(name, 'user', { url: store.avatarUrl(store.me) }));
    $('#me-name').textContent = store.me; // the id: who is signed in, unambiguously
  }

  #wire() {
    const { store } = this;
    for (const tab of document.querySelectorAll('.tabs [role=tab]')) tab.addEventListener('click', () => this.showTab(tab.dataset.tab));
    $('#add-contact-button').replaceChildren(icon('addPerson'));
    $('#add-contact-button').addEventListener('click', () => this.openRequest());
    $('#settings-button').replaceChildren(icon('settings'));
    $('#settings-button').addEventListener('click', () => this.openPrivacy());
    $('#profile-back').replaceChildren(icon('back'));
    $('#profile-back').addEventListener('click', () => this.actions.back());

    this.requestDialog = wire($('#contact-request-dialog'), async () => {
      const user = $('#contact-request-user').value.trim();
      if (!USER_ID.test(user)) throw new Error('A user name has 1 to 64 letters, digits, _ . or -');
      if (user === store.me) throw new Error('That is you: pick someone else');
      await this.contacts.change('contact_request', user, { note: $('#contact-request-note').value.trim() });
      this.showTab('contacts');
    });

    // the privacy dialog applies each choice at once; a refusal puts the radios back
    const privacyDialog = $('#privacy-dialog');
    this.privacyDialog = wire(privacyDialog, async () => true);
    const error = $('.form-error', privacyDialog);
    for (const input of document.querySelectorAll('#privacy-form input[type=radio]')) {
      input.addEventListener('change', async () => {
        showRefusal(error, null);
        try {
          await this.contacts.setPrivacy({ [input.name === 'dm' ? 'dm' : 'presence']: input.value });
          $('#privacy-saved').hidden = false;
        } catch (failure) {
          showRefusal(error, failure);
          this.renderPrivacy();
        }
      });
    }
  }
}
