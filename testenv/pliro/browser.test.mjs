// Browser tests of the example site (example.Caddyfile + example/site) against the Pliro stand-in:
// every flow a reader meets, driven in Debian's Chromium by playwright-core.
//
//   bash scripts/setup                              # chromium, npm packages, bin/caddy
//   cd testenv/pliro && node --test browser.test.mjs
//
// Each run starts its own stand-in (TEST_API=1) and its own Caddy (bin/caddy, or PLIRO_CADDY_BIN)
// on free ports, from example.Caddyfile with only the port changed, so it can run beside
// scripts/example. Screenshots go to testenv/pliro/artifacts/, the servers' logs to artifacts/logs/.
import { after, before, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { clearOldArtifacts, launchBrowser, screenshot, startStack } from './harness.mjs';

const READER = { email: 'reader@example.com', password: 'reader', name: 'Rita Reader', sub: 'cus_4Zr7TqXw2LmN9aBcD3eFgH' };
const PREMIUM = { email: 'premium@example.com', password: 'premium', name: 'Paul Premium', sub: 'cus_1BxEm4QKh4Rb5v6Qvu2THx' };

let stack; // stand-in with back-channel logout + Caddy, shared by the tests (customers reset before each)

before(async () => {
  clearOldArtifacts();
  stack = await startStack();
});
after(async () => { await stack?.stop(); });
beforeEach(async () => { await stack.standin.reset(); });

// Runs fn with a fresh browser profile; on failure keeps a screenshot and the servers' logs.
async function withBrowser(t, fn, logs = () => stack.logs()) {
  const browser = await launchBrowser();
  const nav = recordNavigations(browser.page);
  try {
    await fn(browser.page, nav);
  } catch (err) {
    const slug = t.name.replace(/[^a-z0-9]+/gi, '-').replace(/^-|-$/g, '').toLowerCase().slice(0, 60);
    await screenshot(browser.page, `failed-${slug}`).catch(() => {});
    const lines = [`page: ${browser.page.url()}`, 'navigations:', ...nav.list.map((n) => `  ${n.status} ${n.url}`), ...logs().split('\n')];
    for (const line of lines) t.diagnostic(line);
    throw err;
  } finally {
    await browser.close();
  }
}

// Every top-level document response (redirects included), in order: proves which way a flow went.
function recordNavigations(page) {
  const nav = { list: [] };
  page.on('response', (res) => {
    const req = res.request();
    if (req.isNavigationRequest() && req.frame() === page.mainFrame()) {
      nav.list.push({ url: res.url(), status: res.status(), location: res.headers().location });
    }
  });
  nav.clear = () => { nav.list.length = 0; };
  nav.find = (pred) => nav.list.find((n) => pred(new URL(n.url), n));
  return nav;
}

async function text(page, selector) {
  const loc = page.locator(selector).first();
  await loc.waitFor({ state: 'visible' });
  return (await loc.textContent()).replace(/\s+/g, ' ').trim(); // DOM text, not CSS-transformed
}

const onPage = (origin, pathname) => (u) => u.origin === origin && u.pathname === pathname;

// The browser is on the stand-in's login form (an authorize request that needed a login):
// fill it in and wait until the site has the browser back on `back` (a path on the site).
async function signInAtPliro(page, user, back) {
  await page.waitForURL((u) => u.origin === stack.issuer && u.pathname.startsWith('/interaction/'));
  await page.locator('input[name=email]').fill(user.email);
  await page.locator('input[name=password]').fill(user.password);
  await Promise.all([
    page.waitForURL(onPage(stack.site, back)),
    page.locator('button[type=submit]').click(),
  ]);
}

async function expectSignedInAs(page, user, plan) {
  assert.equal(await text(page, '#user-name'), user.name);
  assert.equal(await text(page, '#user-plan'), plan);
}

async function expectAnonymous(page) {
  await page.locator('#sign-in').waitFor({ state: 'visible' });
  assert.equal(await page.locator('#user-name').count(), 0, 'the header still shows a signed-in reader');
}

async function expectPliroLoginForm(page, issuer) {
  await page.waitForURL((u) => u.origin === issuer && u.pathname.startsWith('/interaction/'));
  await page.locator('input[name=password]').waitFor({ state: 'visible' });
}

test('a. premium customer signs in from a premium article and lands back on it', async (t) => {
  await withBrowser(t, async (page) => {
    await page.goto(`${stack.site}/`);
    await expectAnonymous(page);
    await screenshot(page, 'front-anonymous');

    const article = '/premium/river-investigation.html';
    await page.locator(`#premium a[href="${article}"]`).click();
    await expectPliroLoginForm(page, stack.issuer);
    await screenshot(page, 'pliro-sign-in');
    await signInAtPliro(page, PREMIUM, article);

    assert.equal(page.url(), `${stack.site}${article}`, 'back on the article, nothing added to the URL');
    assert.equal(await text(page, 'article h1'), 'Where did the river go?');
    await expectSignedInAs(page, PREMIUM, 'premium');
    await screenshot(page, 'premium-article');

    await page.goto(`${stack.site}/`);
    await expectSignedInAs(page, PREMIUM, 'premium');
    assert.match(await text(page, '#premium .access'), /In your plan/);
    await screenshot(page, 'front-signed-in');
  });
});

test('b. reader without plan meets the paywall, subscribes at Pliro and gets the article at once', async (t) => {
  await withBrowser(t, async (page, nav) => {
    const article = '/premium/chefs-table.html';
    await page.goto(`${stack.site}${article}`);
    await signInAtPliro(page, READER, article);

    // Denied: handle_errors 403 renders paywall.html.
    const denied = nav.list.at(-1);
    assert.equal(denied.status, 403, `expected the paywall's 403, got ${denied.status} for ${denied.url}`);
    assert.equal(await text(page, '#paywall h2'), 'This article is for premium subscribers');
    assert.equal(await text(page, '#required-plans'), 'premium, premium-plus');
    assert.equal(await text(page, '#paywall-page h1'), 'Twelve courses, one tiny kitchen', 'teaser shows the headline');
    assert.equal(await page.locator('#article').count(), 0, 'the article body is not on the paywall');
    await expectSignedInAs(page, READER, 'no plan');
    const subscribe = new URL(await page.locator('#subscribe').getAttribute('href'));
    assert.equal(`${subscribe.origin}${subscribe.pathname}`, `${stack.issuer}/offers/premium/subscribe`);
    assert.equal(subscribe.searchParams.get('continue_url'), `${stack.site}${article}?pliro_recheck=1`);
    await screenshot(page, 'paywall');

    // Subscribe at Pliro (signed in there already), and come back through continue_url.
    await Promise.all([
      page.waitForURL(onPage(stack.issuer, '/offers/premium/subscribe')),
      page.locator('#subscribe').click(),
    ]);
    assert.equal(await text(page, '#plan'), '(none)');
    await screenshot(page, 'pliro-offer');
    nav.clear();
    await Promise.all([
      page.waitForURL(`${stack.site}${article}`),
      page.locator('#subscribe-premium').click(),
    ]);

    assert.ok(nav.find((u) => u.origin === stack.site && u.searchParams.get('pliro_recheck') === '1'),
      'came back through the continue_url with the recheck marker');
    assert.equal(nav.list.at(-1).status, 200);
    assert.equal(await text(page, 'article h1'), 'Twelve courses, one tiny kitchen');
    await page.locator('#article .byline').waitFor();
    await expectSignedInAs(page, READER, 'premium');
    await screenshot(page, 'premium-after-subscribe');
  });
});

test('c. "Sign out" on the site ends the Pliro session too (RP-initiated logout)', async (t) => {
  await withBrowser(t, async (page, nav) => {
    const start = '/free/harbour-ferry.html';
    await page.goto(`${stack.site}${start}`);
    await page.locator('#sign-in').click();
    await signInAtPliro(page, PREMIUM, start);
    await expectSignedInAs(page, PREMIUM, 'premium');

    nav.clear();
    await Promise.all([
      page.waitForURL(onPage(stack.site, '/')),
      page.locator('#sign-out').click(),
    ]);
    const endSession = nav.find((u) => u.origin === stack.issuer && u.pathname === '/oauth/end_session');
    assert.ok(endSession, 'sign-out continued to Pliro\'s end_session');
    assert.ok(new URL(endSession.url).searchParams.get('id_token_hint'), 'with an id_token_hint (no confirmation page)');
    await expectAnonymous(page);
    await screenshot(page, 'signed-out');
    // Pliro also notified the site (its session was already gone locally: still a 200).
    const log = await stack.standin.backchannelLog();
    assert.deepEqual(log.map((e) => [e.target, e.sub, e.status]), [[`${stack.site}/backchannel-logout`, PREMIUM.sub, 200]]);

    // The Pliro session is gone: a members page needs a password again.
    await page.goto(`${stack.site}/members/council-budget.html`);
    await expectPliroLoginForm(page, stack.issuer);

    await page.goto(`${stack.issuer}/account`);
    await page.locator('#not-signed-in').waitFor({ state: 'visible' });
  });
});

test('d. sign-out on Pliro\'s account page reaches the site by back-channel logout', async (t) => {
  await withBrowser(t, async (page) => {
    const members = '/members/market-traders.html';
    await page.goto(`${stack.site}${members}`);
    await signInAtPliro(page, READER, members);
    assert.equal(await text(page, 'article h1'), 'The market traders who start at four');
    await expectSignedInAs(page, READER, 'no plan');

    // The header's "My account" link leads to Pliro's account page.
    await Promise.all([page.waitForURL(onPage(stack.issuer, '/account')), page.locator('#my-account').click()]);
    assert.equal(await text(page, '#name'), READER.name);
    await screenshot(page, 'pliro-account');
    await Promise.all([
      // Any host: the stand-in's "Signed out" redirect names 127.0.0.1 rather than the issuer's host.
      page.waitForURL((u) => u.pathname === '/oauth/end_session/success'),
      page.locator('#sign-out').click(),
    ]);
    await page.locator('#signed-out').waitFor({ state: 'visible' });

    const log = await stack.standin.backchannelLog();
    const delivery = log.find((e) => e.target === `${stack.site}/backchannel-logout` && e.sub === READER.sub);
    assert.ok(delivery, `a back-channel logout was sent to the site: ${JSON.stringify(log)}`);
    assert.equal(delivery.status, 200, `the site accepted it: ${JSON.stringify(delivery)}`);

    // The very next navigation on the site is anonymous; the members page asks to sign in again.
    await page.goto(`${stack.site}/free/library-late-nights.html`);
    await expectAnonymous(page);
    await page.goto(`${stack.site}${members}`);
    await expectPliroLoginForm(page, stack.issuer);
  });
});

test('e. silent re-authentication signs the reader out when the Pliro session ended unannounced', async (t) => {
  // A stand-in without back-channel logout: ending the Pliro session tells the site nothing.
  const quiet = await startStack({ backchannel: false });
  t.after(() => quiet.stop());
  await withBrowser(t, async (page, nav) => {
    await page.goto(`${quiet.site}/`);
    await page.locator('#sign-in').click();
    await page.waitForURL((u) => u.origin === quiet.issuer && u.pathname.startsWith('/interaction/'));
    await page.locator('input[name=email]').fill(READER.email);
    await page.locator('input[name=password]').fill(READER.password);
    await Promise.all([page.waitForURL(onPage(quiet.site, '/')), page.locator('button[type=submit]').click()]);
    await expectSignedInAs(page, READER, 'no plan');

    // Sign out at Pliro: the provider session ends, its access tokens are revoked, no notification.
    await page.goto(`${quiet.issuer}/account`);
    await Promise.all([
      page.waitForURL((u) => u.pathname === '/oauth/end_session/success'),
      page.locator('#sign-out').click(),
    ]);
    await page.locator('#signed-out').waitFor({ state: 'visible' });
    assert.deepEqual(await quiet.standin.backchannelLog(), [], 'no back-channel logout configured');
    await page.goto(`${quiet.site}/`);
    await expectSignedInAs(page, READER, 'no plan'); // the site does not know yet

    // A premium article: the denied reader's claims are refreshed, userinfo refuses the revoked
    // access token (401), the module re-authenticates with prompt=none, Pliro answers
    // login_required, the local session ends and the article asks for a fresh sign-in.
    nav.clear();
    await page.goto(`${quiet.site}/premium/river-investigation.html`);
    await expectPliroLoginForm(page, quiet.issuer);
    const silent = nav.find((u) => u.origin === quiet.issuer && u.pathname === '/oauth/authorize' && u.searchParams.get('prompt') === 'none');
    assert.ok(silent, 'a silent (prompt=none) authorize request was made');
    const refused = nav.find((u) => u.origin === quiet.site && u.pathname === '/callback' && u.searchParams.get('error') === 'login_required');
    assert.ok(refused, 'Pliro answered login_required to the site\'s callback');
    await screenshot(page, 'silent-reauth-login');

    await page.goto(`${quiet.site}/`);
    await expectAnonymous(page);
  }, () => quiet.logs());
});
