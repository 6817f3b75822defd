// Entry point: shows the sign-in screen or the app, and switches between them.

import { Api } from './api.js';
import { App } from './ui/app.js';
import { authScreen } from './ui/auth.js';

const root = /** @type {HTMLElement} */ (document.getElementById('root'));
const api = new Api();
/** @type {App | null} */
let app = null;

function showAuth() {
  app = null;
  document.title = 'Parlor · Log in';
  root.replaceChildren(authScreen(api, showApp));
}

function showApp() {
  if (app) return;
  document.title = 'Parlor';
  app = new App(api, root, showAuth);
  app.start();
}

api.on('session', () => {
  // Another tab logged in while this one showed the sign-in screen.
  if (!app && api.session && !api.expired) showApp();
});

if (api.session) showApp();
else showAuth();
