// Local Pliro Connect stand-in: a real OpenID Provider (oidc-provider v9) configured like Pliro,
// for development and automated tests. NOT for production. See README.md.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import Provider from 'oidc-provider';

// oidc-provider prints "NOTICE" lines with console.info (stdout). Keep stdout for the single ready line.
console.info = (...args) => console.error(...args);

// ---------------------------------------------------------------------------------------------
// Configuration (env vars with defaults)
// ---------------------------------------------------------------------------------------------
const env = (name, def) => (process.env[name] === undefined ? def : process.env[name]);
const list = (s) => s.split(',').map((x) => x.trim()).filter(Boolean);

const PORT = Number(env('PORT', '9000'));
const ISSUER = env('ISSUER', `http://localhost:${PORT}`).replace(/\/+$/, '');
const CLIENT_ID = env('CLIENT_ID', 'news-example');
const CLIENT_SECRET = env('CLIENT_SECRET', 'news-example-secret');
const REDIRECT_URIS = list(env('REDIRECT_URIS', 'http://localhost:3000/callback'));
const POST_LOGOUT_REDIRECT_URIS = list(env('POST_LOGOUT_REDIRECT_URIS', 'http://localhost:3000/'));
const BACKCHANNEL_LOGOUT_URI = env('BACKCHANNEL_LOGOUT_URI', 'http://localhost:3000/backchannel-logout');
const PKCE = env('PKCE', 'on') !== 'off';
const PUBLIC_KEY_OUT = env('PUBLIC_KEY_OUT', '');
const CONTINUE_HOSTS = list(env('CONTINUE_HOSTS', 'localhost:3000'));
const ID_TOKEN_TTL = Number(env('ID_TOKEN_TTL', '120'));
const ACCESS_TOKEN_TTL = Number(env('ACCESS_TOKEN_TTL', '7200'));
const SESSION_TTL = Number(env('SESSION_TTL', '86400'));
const TEST_API = env('TEST_API', '') === '1';

// ---------------------------------------------------------------------------------------------
// Signing key: fresh EC P-256 key per start, used for ES256 ID tokens and logout tokens.
// ---------------------------------------------------------------------------------------------
const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const KID = `standin-${randomBytes(6).toString('hex')}`;
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid: KID, alg: 'ES256', use: 'sig' };
if (PUBLIC_KEY_OUT) writeFileSync(PUBLIC_KEY_OUT, publicKey.export({ type: 'spki', format: 'pem' }));

// ---------------------------------------------------------------------------------------------
// Customers (in memory). A claim without value is omitted: no plan => neither plan nor plan_slugs.
// ---------------------------------------------------------------------------------------------
const SEED = [
  { sub: 'cus_4Zr7TqXw2LmN9aBcD3eFgH', email: 'reader@example.com', password: 'reader', name: 'Rita Reader', plan: null },
  { sub: 'cus_1BxEm4QKh4Rb5v6Qvu2THx', email: 'premium@example.com', password: 'premium', name: 'Paul Premium', plan: 'premium' },
  { sub: 'cus_7KpW3sYv8RtU2xZa5QbC1d', email: 'basic@example.com', password: 'basic', name: 'Bea Basic', plan: 'basic' },
  { sub: 'cus_9HnJ2kLm4PqR6sTu8VwX0y', email: 'noname@example.com', password: 'noname', name: null, plan: null },
];
let customers;
function resetCustomers() {
  customers = new Map(SEED.map((c) => [c.sub, { ...c, plan_slugs: c.plan ? [c.plan] : [] }]));
}
resetCustomers();
const byEmail = (email) => [...customers.values()].find((c) => c.email === String(email || '').trim().toLowerCase());
function setPlan(customer, plan) {
  customer.plan = plan || null;
  customer.plan_slugs = plan ? [plan] : [];
}
function checkPassword(email, password) {
  const c = byEmail(email);
  return c && c.password === password ? c : undefined;
}
// Claims as Pliro would return them (only keys with a value).
function claimsOf(c) {
  const out = { sub: c.sub, email: c.email };
  if (c.name) out.name = c.name;
  if (c.plan) out.plan = c.plan;
  if (c.plan_slugs.length) out.plan_slugs = [...c.plan_slugs];
  return out;
}

const OFFERS = { premium: { title: 'Premium', slug: 'premium' }, basic: { title: 'Basic', slug: 'basic' } };

// Back-channel logout deliveries attempted (for GET /test/backchannel-log).
let backchannelLog = [];

// ---------------------------------------------------------------------------------------------
// HTML helpers (plain HTML, no JS needed except the optional auto-submit of one form)
// ---------------------------------------------------------------------------------------------
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
const page = (title, body) => `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>body{font-family:sans-serif;max-width:32em;margin:2em auto}label{display:block;margin:.5em 0}.error{color:#b00}</style>
</head><body><h1>${esc(title)}</h1>
${body}
<p><small>Pliro Connect stand-in (local test tool)</small></p></body></html>`;

function loginForm(action, { email = '', error = '', hidden = {} } = {}) {
  const hiddenInputs = Object.entries(hidden)
    .filter(([, v]) => v != null && v !== '')
    .map(([k, v]) => `<input type="hidden" name="${esc(k)}" value="${esc(v)}">`).join('');
  return `${error ? `<p class="error" id="error">${esc(error)}</p>` : ''}
<form method="post" action="${esc(action)}">${hiddenInputs}
<label>Email <input type="email" name="email" value="${esc(email)}" autofocus required></label>
<label>Password <input type="password" name="password" required></label>
<button type="submit">Sign in</button>
</form>
<p><small>Test customers: ${SEED.map((c) => `${esc(c.email)} / ${esc(c.password)}`).join(', ')}</small></p>`;
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}
const readForm = async (ctx) => Object.fromEntries(new URLSearchParams(await readBody(ctx.req)));

function allowedContinueUrl(u) {
  try {
    const url = new URL(u);
    return ['http:', 'https:'].includes(url.protocol) && CONTINUE_HOSTS.includes(url.host) ? url.href : undefined;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// The OpenID Provider
// ---------------------------------------------------------------------------------------------
const configuration = {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: REDIRECT_URIS,
    post_logout_redirect_uris: POST_LOGOUT_REDIRECT_URIS,
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'client_secret_basic', // client_secret_post is accepted too (same secret)
    id_token_signed_response_alg: 'ES256',
    require_auth_time: true, // auth_time always in the ID token
    ...(BACKCHANNEL_LOGOUT_URI ? {
      backchannel_logout_uri: BACKCHANNEL_LOGOUT_URI,
      backchannel_logout_session_required: true, // sid in logout tokens
    } : {}),
  }],
  jwks: { keys: [signingJwk] },
  enabledJWA: { idTokenSigningAlgValues: ['ES256'] },
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  responseTypes: ['code'],
  scopes: ['openid', 'email', 'profile'],
  claims: {
    openid: ['sub'],
    email: ['email'],
    profile: ['name', 'plan', 'plan_slugs'],
    sid: null,
    auth_time: null,
  },
  // Put the scope-requested claims (email, name, plan, plan_slugs) into the ID token itself,
  // not only into userinfo (oidc-provider's default drops them when an access token is issued).
  conformIdTokenClaims: false,
  routes: {
    authorization: '/oauth/authorize',
    token: '/oauth/token',
    userinfo: '/oauth/userinfo',
    end_session: '/oauth/end_session',
    jwks: '/oauth/discovery/keys',
  },
  features: {
    devInteractions: { enabled: false },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
    userinfo: { enabled: true },
    dPoP: { enabled: false },
    pushedAuthorizationRequests: { enabled: false },
    resourceIndicators: { enabled: false },
  },
  pkce: { required: () => false }, // accepted (S256) but never required; PKCE=off hides it, see below
  ttl: {
    AccessToken: ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    IdToken: ID_TOKEN_TTL,
    Interaction: 600,
    Session: SESSION_TTL,
    Grant: SESSION_TTL,
    ClientCredentials: 600,
    DeviceCode: 600,
    BackchannelAuthenticationRequest: 600,
    PreAuthorizedCode: 600,
    RefreshToken: 86400,
  },
  issueRefreshToken: async () => false, // Pliro issues no refresh tokens
  clientBasedCORS: () => false,
  cookies: { long: { httpOnly: true, sameSite: 'lax' }, short: { httpOnly: true, sameSite: 'lax' } },
  async findAccount(ctx, sub) {
    if (!customers.get(sub)) return undefined;
    return {
      accountId: sub,
      // Called when a token / userinfo response is built: always the CURRENT customer data.
      async claims() { return claimsOf(customers.get(sub) || { sub, plan_slugs: [] }); },
    };
  },
  // First-party client: no consent screen. Grant everything the client may ask for.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    if (!ctx.oidc.session.accountId) return undefined;
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email profile');
    await grant.save();
    return grant;
  },
  interactions: { url: async (ctx, interaction) => `/interaction/${interaction.uid}` },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Error', Object.entries(out).map(([k, v]) => `<p><b>${esc(k)}</b>: <span id="${esc(k)}">${esc(v)}</span></p>`).join(''));
  },
  // The SSRF guard of oidc-provider refuses loopback/private targets (back-channel logout to
  // http://localhost). This is a local test tool: drop the guard. Also records logout deliveries.
  async fetch(url, options) {
    delete options.dispatcher;
    const logoutToken = options.body instanceof URLSearchParams ? options.body.get('logout_token') : null;
    const entry = logoutToken ? { target: String(url), status: 0, at: new Date().toISOString(), logout_token: logoutToken } : null;
    if (entry) {
      try {
        const claims = JSON.parse(Buffer.from(logoutToken.split('.')[1], 'base64url'));
        entry.sub = claims.sub;
        entry.sid = claims.sid;
      } catch { /* ignore */ }
      backchannelLog.push(entry);
    }
    try {
      const res = await globalThis.fetch(url, options);
      if (entry) entry.status = res.status;
      return res;
    } catch (err) {
      if (entry) entry.error = String(err.cause?.message || err.message);
      throw err;
    }
  },
};

// end_session page shown when the browser has a provider session and there is no valid id_token_hint
// (with a valid hint the middleware below skips this page entirely).
async function logoutSource(ctx, form) {
  ctx.body = page('Sign out', `<p>Do you want to sign out of ${esc(ISSUER)}?</p>
${form.replace('</form>', '<input type="hidden" name="logout" value="yes"><button type="submit" id="confirm">Yes, sign me out</button></form>')}`);
}
async function postLogoutSuccessSource(ctx) {
  ctx.body = page('Signed out', '<p id="signed-out">You are signed out.</p>');
}

const provider = new Provider(ISSUER, configuration);
provider.proxy = false;

// Pliro puts sid into every ID token; oidc-provider only does when a back-channel URI with
// session required is registered. Make it unconditional (matters when BACKCHANNEL_LOGOUT_URI='').
provider.Client.prototype.includeSid = () => true;

// Pliro: the redirect_uri MAY carry extra query parameters that the registered one lacks
// (e.g. registered http://localhost:3000/callback, sent http://localhost:3000/callback?return_to=%2Fa).
const exactRedirectAllowed = provider.Client.prototype.redirectUriAllowed;
provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
  if (exactRedirectAllowed.call(this, value)) return true;
  let sent;
  try { sent = new URL(value); } catch { return false; }
  if (sent.hash) return false;
  return this.redirectUris.some((r) => {
    const reg = new URL(r);
    return reg.origin + reg.pathname === sent.origin + sent.pathname
      && [...reg.searchParams].every(([k, v]) => sent.searchParams.getAll(k).includes(v));
  });
};

provider.on('backchannel.error', (ctx, err, client) => {
  console.error(`back-channel logout to ${client.backchannelLogoutUri} failed: ${err.message}`);
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

// ---------------------------------------------------------------------------------------------
// End a provider session server-side by replaying oidc-provider's own confirm step
// (POST /oauth/end_session/confirm xsrf=..&logout=yes) for the given session id. That step does
// everything: back-channel logout to each client of the session (awaited), grant/token revocation,
// session deletion, cookie clearing, and the redirect. Its response is copied to ctx.
// ---------------------------------------------------------------------------------------------
let listenPort = PORT;
async function confirmLogout(ctx, sessionId, secret) {
  const res = await fetch(`http://127.0.0.1:${listenPort}${provider.pathFor('end_session_confirm')}`, {
    method: 'POST',
    redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded', cookie: `${provider.cookieName('session')}=${sessionId}` },
    body: new URLSearchParams({ xsrf: secret, logout: 'yes' }),
  });
  ctx.remove('set-cookie');
  for (const c of res.headers.getSetCookie()) ctx.append('set-cookie', c);
  if (res.headers.get('location')) {
    ctx.body = null;
    // The internal request went to 127.0.0.1; the browser knows the issuer's host.
    const internal = `http://127.0.0.1:${listenPort}`;
    const location = res.headers.get('location');
    ctx.set('location', location.startsWith(internal) ? ISSUER + location.slice(internal.length) : location);
  } else {
    ctx.type = res.headers.get('content-type') || 'text/html';
    ctx.body = await res.text();
  }
  ctx.status = res.status; // after the body: Koa turns a null body into 204
}

async function siteSession(ctx) {
  const session = await provider.Session.get(ctx);
  const customer = session.accountId ? customers.get(session.accountId) : undefined;
  return { session, customer };
}

const json = (ctx, status, body) => { ctx.status = status; ctx.body = body; };

// ---------------------------------------------------------------------------------------------
// Our own routes and small adjustments around oidc-provider's routes.
// ---------------------------------------------------------------------------------------------
provider.use(async (ctx, next) => {
  const { path, method } = ctx;
  let m;

  // --- Login interaction (GET form, POST credentials) ---
  if ((m = path.match(/^\/interaction\/([\w-]+)(\/login)?$/))) {
    let details;
    try {
      details = await provider.interactionDetails(ctx.req, ctx.res);
    } catch (err) {
      ctx.status = 400;
      ctx.body = page('Error', `<p>${esc(err.error_description || err.message)}</p>`);
      return;
    }
    if (details.uid !== m[1]) { ctx.status = 400; ctx.body = page('Error', '<p>interaction mismatch</p>'); return; }
    const action = `/interaction/${details.uid}/login`;

    if (details.prompt.name === 'consent') { // not expected (loadExistingGrant grants), kept for safety
      const grant = details.grantId ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
      grant.addOIDCScope('openid email profile');
      const returnTo = await provider.interactionResult(ctx.req, ctx.res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
      ctx.redirect(returnTo); ctx.status = 303; return;
    }

    if (method === 'GET' && !m[2]) {
      ctx.body = page('Sign in to Pliro', loginForm(action, { email: details.params.login_hint }));
      return;
    }
    if (method === 'POST' && m[2]) {
      const form = await readForm(ctx);
      const customer = checkPassword(form.email, form.password);
      if (!customer) {
        ctx.status = 401;
        ctx.body = page('Sign in to Pliro', loginForm(action, { email: form.email, error: 'Wrong email or password.' }));
        return;
      }
      const returnTo = await provider.interactionResult(ctx.req, ctx.res, { login: { accountId: customer.sub } }, { mergeWithLastSubmission: false });
      ctx.redirect(returnTo); ctx.status = 303; return;
    }
    ctx.status = 405; return;
  }

  // --- RP-initiated logout: with a valid id_token_hint, no confirmation page ---
  if (path === provider.pathFor('end_session') && method === 'GET') {
    await next();
    // oidc-provider has validated the hint (signature, iss, aud; expiry ignored) if this is a 200 page.
    if (ctx.status === 200 && ctx.oidc?.entities?.IdTokenHint && ctx.oidc.session?.state?.secret) {
      await confirmLogout(ctx, ctx.oidc.session.id, ctx.oidc.session.state.secret);
    }
    return;
  }

  // --- PKCE=off: behave like a server that knows nothing about PKCE (ignore the parameters) ---
  if (!PKCE && path === provider.pathFor('authorization')) {
    const q = { ...ctx.query };
    delete q.code_challenge; delete q.code_challenge_method;
    ctx.query = q;
  }
  if (!PKCE && path === provider.pathFor('token') && method === 'POST') {
    const params = new URLSearchParams(await readBody(ctx.req));
    params.delete('code_verifier');
    ctx.req.body = params.toString(); // oidc-provider reads req.body when the stream is consumed
  }

  // --- Account page ---
  if (path === '/account' && method === 'GET') {
    const { customer } = await siteSession(ctx);
    if (!customer) { ctx.body = page('Your account', '<p id="not-signed-in">Not signed in.</p>'); return; }
    ctx.body = page('Your account', `<dl>
<dt>Name</dt><dd id="name">${esc(customer.name || '(none)')}</dd>
<dt>Email</dt><dd id="email">${esc(customer.email)}</dd>
<dt>Plan</dt><dd id="plan">${esc(customer.plan || '(none)')}</dd></dl>
${customer.plan ? '<form method="post" action="/account/cancel-plan"><button type="submit" id="cancel-plan">Cancel plan</button></form>' : ''}
<form method="post" action="/account/sign-out"><button type="submit" id="sign-out">Sign out</button></form>`);
    return;
  }
  if (path === '/account/cancel-plan' && method === 'POST') {
    const { customer } = await siteSession(ctx);
    if (customer) setPlan(customer, null);
    ctx.redirect('/account'); ctx.status = 303; return;
  }
  if (path === '/account/sign-out' && method === 'POST') {
    const { session } = await siteSession(ctx);
    if (!session.accountId) { ctx.redirect(provider.pathFor('end_session_success')); ctx.status = 303; return; }
    // Same as end_session + confirm: back-channel logout to every client of this session.
    const secret = randomBytes(24).toString('hex');
    session.state = { secret };
    await session.save(session.exp ? Math.max(1, session.exp - Math.floor(Date.now() / 1000)) : SESSION_TTL);
    await confirmLogout(ctx, session.id, secret); // 303 -> /oauth/end_session/success ("Signed out")
    return;
  }

  // --- Site login (offers pages when not signed in) ---
  if (path === '/site-login' && method === 'POST') {
    const form = await readForm(ctx);
    const returnTo = String(form.return_to || '/account').startsWith('/') && !String(form.return_to).startsWith('//') ? form.return_to : '/account';
    const customer = checkPassword(form.email, form.password);
    if (!customer) {
      ctx.status = 401;
      ctx.body = page('Sign in to Pliro', loginForm('/site-login', { email: form.email, error: 'Wrong email or password.', hidden: { return_to: returnTo } }));
      return;
    }
    const { session } = await siteSession(ctx);
    if (session.accountId && session.accountId !== customer.sub) { session.authorizations = undefined; session.resetIdentifier(); }
    session.loginAccount({ accountId: customer.sub });
    await session.save(SESSION_TTL);
    ctx.cookies.set(provider.cookieName('session'), session.id, { ...configuration.cookies.long, maxAge: SESSION_TTL * 1000 });
    ctx.redirect(returnTo); ctx.status = 303; return;
  }

  // --- Offers: /subscribe, /offers/:offer, /offers/:offer/subscribe (GET shows, POST subscribes) ---
  if (path === '/subscribe' || (m = path.match(/^\/offers\/([\w-]+)(\/subscribe)?$/))) {
    const offerIds = path === '/subscribe' ? Object.keys(OFFERS) : [m[1]];
    if (!offerIds.every((id) => OFFERS[id])) { ctx.status = 404; ctx.body = page('Not found', '<p>Unknown offer.</p>'); return; }
    const { customer } = await siteSession(ctx);
    const continueUrl = ctx.query.continue_url || '';

    if (method === 'POST' && m?.[2]) {
      const form = await readForm(ctx);
      if (!customer) { ctx.redirect(ctx.url); ctx.status = 303; return; }
      setPlan(customer, OFFERS[offerIds[0]].slug);
      ctx.redirect(allowedContinueUrl(form.continue_url || continueUrl) || '/account'); ctx.status = 303; return;
    }
    if (method !== 'GET') { ctx.status = 405; return; }
    if (!customer) {
      ctx.body = page('Sign in to subscribe', loginForm('/site-login', { email: ctx.query.email, hidden: { return_to: ctx.url } }));
      return;
    }
    ctx.body = page('Subscribe', `<p>Signed in as <span id="email">${esc(customer.email)}</span>; current plan: <span id="plan">${esc(customer.plan || '(none)')}</span>.</p>
${offerIds.map((id) => `<form method="post" action="/offers/${esc(id)}/subscribe">
<input type="hidden" name="continue_url" value="${esc(continueUrl)}">
<button type="submit" id="subscribe-${esc(id)}">Subscribe to ${esc(OFFERS[id].title)}</button></form>`).join('\n')}`);
    return;
  }

  // --- Test control API (TEST_API=1 only) ---
  if (TEST_API && path.startsWith('/test/')) {
    if (path === '/test/plan' && method === 'POST') {
      let body;
      try { body = JSON.parse(await readBody(ctx.req)); } catch { return json(ctx, 400, { error: 'invalid JSON' }); }
      const customer = body.sub ? customers.get(body.sub) : byEmail(body.email);
      if (!customer) return json(ctx, 404, { error: 'unknown customer (give "email" or "sub")' });
      if (body.plan !== null && typeof body.plan !== 'string') return json(ctx, 400, { error: '"plan" must be a string or null' });
      setPlan(customer, body.plan);
      return json(ctx, 200, claimsOf(customer));
    }
    if (path === '/test/backchannel-log' && method === 'GET') return json(ctx, 200, backchannelLog);
    if (path === '/test/reset' && method === 'POST') {
      resetCustomers();
      backchannelLog = [];
      ctx.status = 204; return;
    }
    return json(ctx, 404, { error: 'unknown test route' });
  }

  await next();

  // --- Pliro-like touches on oidc-provider responses ---
  if (path === '/.well-known/openid-configuration' && ctx.body?.issuer) {
    // oidc-provider builds endpoint URLs from the request's Host; advertise them under the issuer.
    for (const [k, v] of Object.entries(ctx.body)) {
      if (typeof v === 'string' && (k.endsWith('_endpoint') || k === 'jwks_uri')) {
        ctx.body[k] = ISSUER + new URL(v).pathname;
      }
    }
    ctx.body.grant_types_supported = ['authorization_code']; // no refresh tokens
    if (!PKCE) delete ctx.body.code_challenge_methods_supported;
  }
  if (path === provider.pathFor('userinfo') && ctx.status === 401 && ctx.body?.error === 'invalid_token') {
    ctx.set('WWW-Authenticate', 'Bearer realm="Pliro", error="invalid_token", error_description="The access token is invalid"');
  }
});

// ---------------------------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------------------------
const server = provider.listen(PORT, '127.0.0.1', () => {
  listenPort = server.address().port;
  console.error(`Pliro stand-in: issuer ${ISSUER}, client ${CLIENT_ID} / ${CLIENT_SECRET}, PKCE ${PKCE ? 'on' : 'off'}, kid ${KID}`);
  console.error(`Test customers: ${SEED.map((c) => `${c.email} / ${c.password} (${c.plan || 'no plan'})`).join(', ')}`);
  process.stdout.write(`pliro-standin ready ${ISSUER}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections?.();
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
