// Self-check for the Pliro stand-in: starts server.js on a free loopback port and drives it as a
// plain HTTP client (fetch, redirect: 'manual', hand-made cookie jar). Exit 0 = all checks passed.
//   cd testenv/pliro && npm ci && node selfcheck.mjs
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { createHash, randomBytes, verify } from 'node:crypto';
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const CLIENT_ID = 'news-example';
const CLIENT_SECRET = 'news-example-secret';
const REDIRECT_URI = 'http://localhost:3000/callback';
const POST_LOGOUT = 'http://localhost:3000/';
const VERBOSE = process.env.VERBOSE === '1';

let step = 'setup';
const log = (...a) => console.log(...a);
function check(cond, msg, extra) {
  if (!cond) {
    const e = new Error(`[${step}] ${msg}${extra !== undefined ? `\n  got: ${typeof extra === 'string' ? extra : JSON.stringify(extra)}` : ''}`);
    e.check = true;
    throw e;
  }
  if (VERBOSE) log(`  ok: ${msg}`);
}

// ---------- helpers ----------
const freePort = () => new Promise((resolve, reject) => {
  const s = createNetServer();
  s.on('error', reject);
  s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
});

class Jar { // minimal cookie jar: one host, ignores Path/Domain
  constructor() { this.c = new Map(); }
  header() { return [...this.c].map(([k, v]) => `${k}=${v}`).join('; '); }
  store(res) {
    for (const sc of res.headers.getSetCookie()) {
      const [pair, ...attrs] = sc.split(';');
      const i = pair.indexOf('=');
      const name = pair.slice(0, i).trim();
      const value = pair.slice(i + 1).trim();
      const expired = attrs.some((a) => /^\s*max-age=0\s*$/i.test(a) || /expires=.*1970/i.test(a));
      if (!value || expired) this.c.delete(name); else this.c.set(name, value);
    }
  }
}

async function request(jar, url, init = {}) {
  const headers = new Headers(init.headers);
  if (jar && jar.c.size) headers.set('cookie', jar.header());
  const res = await fetch(url, { ...init, headers, redirect: 'manual' });
  if (jar) jar.store(res);
  if (VERBOSE) log(`  ${init.method || 'GET'} ${url} -> ${res.status} ${res.headers.get('location') || ''}`);
  return res;
}

// Follow redirects (as GET) until a non-redirect or a Location starting with stopPrefix.
async function follow(jar, url, init = {}, stopPrefix = REDIRECT_URI) {
  let res = await request(jar, url, init);
  for (let hops = 0; [301, 302, 303, 307, 308].includes(res.status); hops++) {
    if (hops > 10) throw new Error('too many redirects');
    const loc = new URL(res.headers.get('location'), url).href;
    if (stopPrefix && loc.startsWith(stopPrefix)) return { res, url: loc, stopped: true };
    url = loc;
    res = await request(jar, url);
  }
  return { res, url, stopped: false };
}

const form = (obj) => ({ method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(obj).toString() });
const formAction = (html) => html.match(/<form[^>]*action="([^"]+)"/)?.[1]?.replace(/&#38;/g, '&');
const b64json = (s) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));
function decodeJwt(jwt) { const [h, p] = jwt.split('.'); return { header: b64json(h), payload: b64json(p) }; }
function verifyEs256(jwt, pem) {
  const [h, p, s] = jwt.split('.');
  return verify('sha256', Buffer.from(`${h}.${p}`), { key: pem, dsaEncoding: 'ieee-p1363' }, Buffer.from(s, 'base64url'));
}

// ---------- stand-in process ----------
async function startStandin(extraEnv) {
  const port = await freePort();
  const issuer = `http://localhost:${port}`;
  const child = spawn(process.execPath, [join(HERE, 'server.js')], {
    env: { ...process.env, PORT: String(port), ISSUER: issuer, TEST_API: '1', ...extraEnv },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; if (VERBOSE) process.stderr.write(d); });
  await new Promise((resolve, reject) => {
    let out = '';
    const t = setTimeout(() => reject(new Error(`stand-in not ready in 60s\n${stderr}`)), 60000);
    child.stdout.on('data', (d) => {
      out += d;
      if (out.includes(`pliro-standin ready ${issuer}\n`)) { clearTimeout(t); resolve(); }
    });
    child.on('exit', (code) => { clearTimeout(t); reject(new Error(`stand-in exited (${code})\n${stderr}`)); });
  });
  return { child, port, issuer, stderr: () => stderr };
}
async function stopStandin(s) {
  s.child.removeAllListeners('exit');
  const exited = new Promise((r) => s.child.once('exit', (code, sig) => r({ code, sig })));
  s.child.kill('SIGTERM');
  return exited;
}

// Run the authorization code flow. Returns { code, state, params, loginPageStatus }.
async function authorize(issuer, jar, { email, password, prompt, pkce, wrongPasswordFirst, redirectUri = REDIRECT_URI } = {}) {
  const state = randomBytes(8).toString('hex');
  const nonce = randomBytes(8).toString('hex');
  const q = new URLSearchParams({ response_type: 'code', client_id: CLIENT_ID, redirect_uri: redirectUri, scope: 'openid email profile', state, nonce });
  if (prompt) q.set('prompt', prompt);
  let verifier;
  if (pkce) {
    verifier = randomBytes(32).toString('base64url');
    q.set('code_challenge', createHash('sha256').update(verifier).digest('base64url'));
    q.set('code_challenge_method', 'S256');
  }
  let r = await follow(jar, `${issuer}/oauth/authorize?${q}`);
  if (!r.stopped) {
    check(email, 'expected redirect to client without login', `${r.res.status} ${r.url}`);
    check(/\/interaction\/[\w-]+$/.test(new URL(r.url).pathname), 'redirected to /interaction/<uid>', r.url);
    const html = await r.res.text();
    check(r.res.status === 200 && /name="email"/.test(html) && /name="password"/.test(html), 'login form has email+password inputs', html.slice(0, 300));
    const action = new URL(formAction(html), r.url).href;
    check(action === `${r.url}/login`, 'form posts to /interaction/<uid>/login', action);
    if (wrongPasswordFirst) {
      const bad = await request(jar, action, form({ email, password: 'wrong' }));
      const badHtml = await bad.text();
      check(bad.status === 401 && /Wrong email or password/.test(badHtml) && /name="password"/.test(badHtml), 'wrong password re-shows form with 401', bad.status);
    }
    r = await follow(jar, action, form({ email, password }));
    check(r.stopped, 'login redirects back to redirect_uri', `${r.res.status} ${r.url}`);
  }
  const cb = new URL(r.url);
  check(r.url.startsWith(redirectUri.includes('?') ? `${redirectUri}&` : `${redirectUri}?`), 'callback URL keeps the sent redirect_uri', r.url);
  const params = Object.fromEntries(cb.searchParams);
  check(params.state === state, 'state echoed', params);
  return { ...params, nonce, verifier, jar };
}

async function exchange(issuer, code, { post = false, verifier, redirectUri = REDIRECT_URI } = {}) {
  const body = { grant_type: 'authorization_code', code, redirect_uri: redirectUri };
  if (verifier) body.code_verifier = verifier;
  const init = form(post ? { ...body, client_id: CLIENT_ID, client_secret: CLIENT_SECRET } : body);
  if (!post) init.headers.authorization = `Basic ${Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64')}`;
  const res = await request(null, `${issuer}/oauth/token`, init);
  const json = await res.json();
  check(res.status === 200, `token endpoint 200 (${post ? 'client_secret_post' : 'client_secret_basic'})`, json);
  check(json.access_token && json.id_token && /^bearer$/i.test(json.token_type) && json.expires_in > 0, 'token response has access_token, id_token, token_type, expires_in', json);
  check(!json.refresh_token, 'no refresh token', json);
  return json;
}

async function userinfo(issuer, at) {
  const res = await request(null, `${issuer}/oauth/userinfo`, { headers: { authorization: `Bearer ${at}` } });
  return { res, body: await res.json() };
}

async function setPlan(issuer, email, plan) {
  const res = await request(null, `${issuer}/test/plan`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email, plan }) });
  check(res.status === 200, `POST /test/plan ${email} ${plan}`, await res.text());
}

// ---------- main ----------
const received = []; // back-channel logout POSTs received by our fake relying party
const receiver = createServer((req, res) => {
  let body = '';
  req.on('data', (d) => { body += d; });
  req.on('end', () => {
    received.push({ method: req.method, path: req.url, contentType: req.headers['content-type'], body });
    res.writeHead(200, { 'cache-control': 'no-store' }).end();
  });
});
await new Promise((r) => receiver.listen(0, '127.0.0.1', r));
const bcUri = `http://127.0.0.1:${receiver.address().port}/backchannel-logout`;
const tmp = mkdtempSync(join(tmpdir(), 'pliro-selfcheck-'));
const pemPath = join(tmp, 'pliro.pem');

let standin;
let exitCode = 0;
try {
  standin = await startStandin({ BACKCHANNEL_LOGOUT_URI: bcUri, PUBLIC_KEY_OUT: pemPath });
  const { issuer } = standin;
  log(`stand-in running at ${issuer}`);
  const pem = readFileSync(pemPath, 'utf8');
  check(pem.startsWith('-----BEGIN PUBLIC KEY-----'), 'PUBLIC_KEY_OUT written as SPKI PEM');

  step = 'discovery';
  const disco = await (await request(null, `${issuer}/.well-known/openid-configuration`)).json();
  check(disco.issuer === issuer, 'discovery issuer', disco.issuer);
  for (const [k, p] of [['authorization_endpoint', '/oauth/authorize'], ['token_endpoint', '/oauth/token'], ['userinfo_endpoint', '/oauth/userinfo'], ['end_session_endpoint', '/oauth/end_session'], ['jwks_uri', '/oauth/discovery/keys']]) {
    check(disco[k] === issuer + p, `discovery ${k}`, disco[k]);
  }
  check(JSON.stringify(disco.code_challenge_methods_supported) === '["S256"]', 'PKCE=on advertises S256', disco.code_challenge_methods_supported);
  const jwks = await (await request(null, `${issuer}/oauth/discovery/keys`)).json();
  check(jwks.keys.length === 1 && jwks.keys[0].kty === 'EC' && jwks.keys[0].crv === 'P-256' && jwks.keys[0].kid, 'JWKS has one EC P-256 key with kid', jwks);

  step = 'code flow (premium)';
  const browser = new Jar();
  const a1 = await authorize(issuer, browser, { email: 'premium@example.com', password: 'premium', pkce: true, wrongPasswordFirst: true });
  check(a1.code && a1.iss === issuer, 'code and iss in callback', a1);
  const t1 = await exchange(issuer, a1.code, { verifier: a1.verifier });
  const id1 = decodeJwt(t1.id_token);
  check(id1.header.alg === 'ES256' && id1.header.kid === jwks.keys[0].kid, 'ID token header alg ES256 with JWKS kid', id1.header);
  check(verifyEs256(t1.id_token, pem), 'ID token signature verifies with the PEM public key');
  const p1 = id1.payload;
  check(p1.iss === issuer && p1.aud === CLIENT_ID && p1.sub === 'cus_1BxEm4QKh4Rb5v6Qvu2THx', 'iss, aud, sub', p1);
  check(p1.nonce === a1.nonce && typeof p1.auth_time === 'number' && typeof p1.sid === 'string' && p1.sid, 'nonce, auth_time, sid', p1);
  check(p1.email === 'premium@example.com' && p1.name === 'Paul Premium', 'email and name in ID token', p1);
  check(p1.plan === 'premium' && JSON.stringify(p1.plan_slugs) === '["premium"]', 'plan and plan_slugs in ID token', p1);
  check(p1.exp - p1.iat === 120, 'ID token lifetime 120 s', p1.exp - p1.iat);
  check(t1.expires_in === 7200, 'access token expires_in 7200', t1.expires_in);

  step = 'userinfo';
  let ui = await userinfo(issuer, t1.access_token);
  check(ui.res.status === 200 && JSON.stringify(ui.body) === JSON.stringify({ sub: p1.sub, email: 'premium@example.com', name: 'Paul Premium', plan: 'premium', plan_slugs: ['premium'] }), 'userinfo claims', ui.body);
  const bad = await userinfo(issuer, 'not-a-token');
  check(bad.res.status === 401 && /realm="Pliro", error="invalid_token"/.test(bad.res.headers.get('www-authenticate')), '401 + WWW-Authenticate for invalid token', bad.res.headers.get('www-authenticate'));

  step = 'plan change + prompt=none';
  await setPlan(issuer, 'premium@example.com', null);
  ui = await userinfo(issuer, t1.access_token);
  check(ui.res.status === 200 && !('plan' in ui.body) && !('plan_slugs' in ui.body), 'userinfo omits plan claims after cancel', ui.body);
  const a2 = await authorize(issuer, browser, { prompt: 'none' });
  check(a2.code && !a2.error, 'prompt=none with session gives a code', a2);
  const t2 = await exchange(issuer, a2.code, { post: true });
  const p2 = decodeJwt(t2.id_token).payload;
  check(!('plan' in p2) && !('plan_slugs' in p2) && p2.email === 'premium@example.com', 'ID token reflects current plan (none)', p2);
  check(p2.sid === p1.sid, 'same sid for the same provider session', [p1.sid, p2.sid]);
  await setPlan(issuer, 'premium@example.com', 'premium');
  const a3 = await authorize(issuer, browser, { prompt: 'none' });
  const p3 = decodeJwt((await exchange(issuer, a3.code)).id_token).payload;
  check(p3.plan === 'premium', 'ID token reflects current plan (premium again)', p3);

  step = 'redirect_uri with extra query parameters';
  const extraRu = `${REDIRECT_URI}?return_to=%2Farticles%2F1`;
  const a3b = await authorize(issuer, browser, { prompt: 'none', redirectUri: extraRu });
  check(a3b.code && a3b.return_to === '/articles/1', 'registered redirect_uri plus extra query parameter accepted and kept', a3b);
  await exchange(issuer, a3b.code, { redirectUri: extraRu });
  const badRu = await request(browser, `${issuer}/oauth/authorize?${new URLSearchParams({ response_type: 'code', client_id: CLIENT_ID, redirect_uri: 'http://localhost:3000/other', scope: 'openid', state: 's' })}`);
  check(badRu.status === 400, 'unregistered redirect_uri refused (400 page, no redirect)', badRu.status);

  step = 'prompt=none without session';
  const a4 = await authorize(issuer, new Jar(), { prompt: 'none' });
  check(a4.error === 'login_required' && !a4.code, 'error=login_required', a4);

  step = 'end_session with id_token_hint (expired hint is fine too)';
  received.length = 0;
  const es = new URLSearchParams({ client_id: CLIENT_ID, id_token_hint: t1.id_token, post_logout_redirect_uri: POST_LOGOUT, state: 'bye' });
  const esRes = await request(browser, `${issuer}/oauth/end_session?${es}`);
  check(esRes.status === 303 && esRes.headers.get('location') === `${POST_LOGOUT}?state=bye`, 'GET end_session redirects (303) straight to post_logout_redirect_uri', `${esRes.status} ${esRes.headers.get('location')}`);
  check(received.length === 1, 'one back-channel logout POST received', received.length);
  const bc = received[0];
  check(bc.method === 'POST' && bc.path === '/backchannel-logout' && bc.contentType === 'application/x-www-form-urlencoded', 'POST form-urlencoded to backchannel_logout_uri', bc);
  const lt = new URLSearchParams(bc.body).get('logout_token');
  const ltd = decodeJwt(lt);
  check(ltd.header.typ === 'logout+jwt' && ltd.header.alg === 'ES256' && ltd.header.kid, 'logout token header typ logout+jwt, alg ES256, kid', ltd.header);
  check(verifyEs256(lt, pem), 'logout token signature verifies');
  const lp = ltd.payload;
  check(lp.iss === issuer && lp.aud === CLIENT_ID && lp.sub === p1.sub && lp.sid === p1.sid && lp.jti && lp.iat && lp.exp && !('nonce' in lp), 'logout token iss, aud, sub, sid, jti, iat, exp, no nonce', lp);
  check(lp.events && 'http://schemas.openid.net/event/backchannel-logout' in lp.events, 'logout token events', lp.events);
  log(`logout token header ${JSON.stringify(ltd.header)}\nlogout token claims ${JSON.stringify(lp)}`);
  const bclog = await (await request(null, `${issuer}/test/backchannel-log`)).json();
  check(bclog.length === 1 && bclog[0].target === bcUri && bclog[0].status === 200 && bclog[0].sid === p1.sid, '/test/backchannel-log records the delivery', bclog);
  const esAgain = await request(new Jar(), `${issuer}/oauth/end_session?${es}`);
  check(esAgain.status === 303 && esAgain.headers.get('location') === `${POST_LOGOUT}?state=bye` && received.length === 1, 'valid hint without provider session: same 303, no back-channel', esAgain.status);
  const a5 = await authorize(issuer, browser, { prompt: 'none' });
  check(a5.error === 'login_required', 'provider session ended (prompt=none -> login_required)', a5);
  ui = await userinfo(issuer, t1.access_token);
  check(ui.res.status === 401, 'access tokens of the ended session are revoked (userinfo 401)', ui.res.status);

  step = 'end_session without id_token_hint shows a confirm form';
  const b2 = new Jar();
  await authorize(issuer, b2, { email: 'reader@example.com', password: 'reader' });
  const conf = await request(b2, `${issuer}/oauth/end_session?${new URLSearchParams({ client_id: CLIENT_ID, post_logout_redirect_uri: POST_LOGOUT })}`);
  const confHtml = await conf.text();
  check(conf.status === 200 && formAction(confHtml) === `${issuer}/oauth/end_session/confirm` && /name="xsrf"/.test(confHtml), 'confirm page with form', confHtml.slice(0, 400));
  received.length = 0;
  const xsrf = confHtml.match(/name="xsrf" value="([^"]+)"/)[1];
  const confirmed = await request(b2, `${issuer}/oauth/end_session/confirm`, form({ xsrf, logout: 'yes' }));
  check(confirmed.status === 303 && confirmed.headers.get('location') === POST_LOGOUT && received.length === 1, 'POST confirm (xsrf, logout=yes) -> 303 post_logout_redirect_uri + back-channel', `${confirmed.status} ${confirmed.headers.get('location')} ${received.length}`);

  step = 'account page sign-out';
  const b3 = new Jar();
  const acc0 = await (await request(b3, `${issuer}/account`)).text();
  check(/Not signed in/.test(acc0), 'account without session says not signed in');
  await authorize(issuer, b3, { email: 'premium@example.com', password: 'premium' });
  const acc = await (await request(b3, `${issuer}/account`)).text();
  check(/Paul Premium/.test(acc) && /premium@example.com/.test(acc) && /id="plan">premium/.test(acc), 'account shows customer and plan', acc);
  received.length = 0;
  const so = await follow(b3, `${issuer}/account/sign-out`, form({}), null);
  const soHtml = await so.res.text();
  check(so.res.status === 200 && /signed out/i.test(soHtml), 'sign-out ends at a "signed out" page', `${so.res.status} ${so.url}`);
  check(received.length === 1 && decodeJwt(new URLSearchParams(received[0].body).get('logout_token')).payload.sub === p1.sub, 'account sign-out sends back-channel logout', received);
  check(/Not signed in/.test(await (await request(b3, `${issuer}/account`)).text()), 'account after sign-out: not signed in');

  step = 'offers / subscribe with continue_url';
  const b4 = new Jar();
  const cont = 'http://localhost:3000/articles/1?recheck=1';
  const offerUrl = `${issuer}/offers/premium/subscribe?continue_url=${encodeURIComponent(cont)}`;
  const loginHtml = await (await request(b4, offerUrl)).text();
  check(formAction(loginHtml) === '/site-login', 'offer page shows login form when signed out', loginHtml.slice(0, 400));
  const rt = loginHtml.match(/name="return_to" value="([^"]+)"/)[1].replace(/&#38;/g, '&');
  const lg = await request(b4, `${issuer}/site-login`, form({ email: 'reader@example.com', password: 'reader', return_to: rt }));
  check(lg.status === 303, 'site login 303', lg.status);
  const offerHtml = await (await request(b4, new URL(lg.headers.get('location'), issuer).href)).text();
  check(/id="subscribe-premium"/.test(offerHtml), 'subscribe button when signed in', offerHtml);
  const sub = await request(b4, `${issuer}/offers/premium/subscribe`, form({ continue_url: cont }));
  check(sub.status === 303 && sub.headers.get('location') === cont, 'subscribe redirects 303 to continue_url', `${sub.status} ${sub.headers.get('location')}`);
  const a6 = await authorize(issuer, b4, { prompt: 'none' });
  const p6 = decodeJwt((await exchange(issuer, a6.code)).id_token).payload;
  check(p6.email === 'reader@example.com' && p6.plan === 'premium' && JSON.stringify(p6.plan_slugs) === '["premium"]' && p6.name === 'Rita Reader', 'reader now has premium (prompt=none after checkout)', p6);
  const sub2 = await request(b4, `${issuer}/offers/premium/subscribe`, form({ continue_url: 'http://evil.example/' }));
  check(sub2.headers.get('location') === '/account', 'continue_url outside CONTINUE_HOSTS -> /account', sub2.headers.get('location'));
  await request(b4, `${issuer}/account/cancel-plan`, form({}));
  const a7 = await authorize(issuer, b4, { prompt: 'none' });
  const p7 = decodeJwt((await exchange(issuer, a7.code)).id_token).payload;
  check(!('plan' in p7) && !('plan_slugs' in p7), 'cancel plan on account page removes plan claims', p7);

  step = 'customer without name';
  const a8 = await authorize(issuer, new Jar(), { email: 'noname@example.com', password: 'noname' });
  const p8 = decodeJwt((await exchange(issuer, a8.code)).id_token).payload;
  check(!('name' in p8) && !('plan' in p8) && p8.email === 'noname@example.com', 'claims without value are omitted', p8);

  step = 'reset';
  check((await request(null, `${issuer}/test/reset`, { method: 'POST' })).status === 204, 'POST /test/reset');
  check((await (await request(null, `${issuer}/test/backchannel-log`)).json()).length === 0, 'reset clears the back-channel log');

  step = 'SIGTERM';
  const ex = await stopStandin(standin);
  standin = undefined;
  check(ex.code === 0, 'stand-in exits 0 on SIGTERM', ex);

  step = 'PKCE=off';
  standin = await startStandin({ PKCE: 'off', BACKCHANNEL_LOGOUT_URI: '', ID_TOKEN_TTL: '1' });
  const d2 = await (await request(null, `${standin.issuer}/.well-known/openid-configuration`)).json();
  check(!('code_challenge_methods_supported' in d2), 'PKCE=off: not advertised', d2.code_challenge_methods_supported);
  const a9 = await authorize(standin.issuer, new Jar(), { email: 'premium@example.com', password: 'premium', pkce: true });
  const t9 = await exchange(standin.issuer, a9.code, { verifier: 'ignored-anyway-because-pkce-is-off-' + 'x'.repeat(20) });
  check(decodeJwt(t9.id_token).payload.sid, 'PKCE=off: PKCE parameters are ignored; sid present without back-channel URI');

  step = 'end_session with an EXPIRED id_token_hint';
  await new Promise((r) => setTimeout(r, 2100)); // ID_TOKEN_TTL=1 in this instance
  check(decodeJwt(t9.id_token).payload.exp < Date.now() / 1000, 'hint is expired');
  const es9 = await request(a9.jar, `${standin.issuer}/oauth/end_session?${new URLSearchParams({ client_id: CLIENT_ID, id_token_hint: t9.id_token, post_logout_redirect_uri: POST_LOGOUT })}`);
  check(es9.status === 303 && es9.headers.get('location') === POST_LOGOUT, 'expired but valid hint: straight redirect', `${es9.status} ${es9.headers.get('location')}`);
  const a10 = await authorize(standin.issuer, a9.jar, { prompt: 'none' });
  check(a10.error === 'login_required', 'session ended', a10);

  log('selfcheck: ALL CHECKS PASSED');
} catch (err) {
  exitCode = 1;
  console.error(`selfcheck FAILED: ${err.check ? err.message : err.stack}`);
  if (standin) console.error(`--- stand-in stderr ---\n${standin.stderr()}`);
} finally {
  if (standin) await stopStandin(standin);
  receiver.close();
  rmSync(tmp, { recursive: true, force: true });
}
process.exit(exitCode);
