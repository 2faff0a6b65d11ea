// Helpers for browser.test.mjs: start the Pliro stand-in and a Caddy built with the module (the
// example site, on free ports), and a headless Debian Chromium driven by playwright-core.
// Nothing is downloaded: the browser is /usr/bin/chromium (scripts/setup installs it).
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(HERE, '..', '..');
export const ARTIFACTS = join(HERE, 'artifacts');
export const CLIENT_ID = 'news-example';
export const CLIENT_SECRET = 'news-example-secret';
export const CHROMIUM = process.env.PLIRO_CHROMIUM || '/usr/bin/chromium';
export const CADDY_BIN = process.env.PLIRO_CADDY_BIN ? resolve(process.env.PLIRO_CADDY_BIN) : join(REPO, 'bin', 'caddy');

// A loopback port nothing listens on, for a server started afterwards. It is free, not reserved, so it
// is taken below Linux's ephemeral range (where the kernel picks the local ports of outgoing
// connections, which could take it before the server binds it) and never handed out twice by this
// process (a later call could otherwise return a port whose server is not listening yet).
const usedPorts = new Set();
function ephemeralPortsFrom() {
  try {
    return Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || 0;
  } catch {
    return 0;
  }
}
function tryListen(port) {
  return new Promise((resolvePort) => {
    const s = createServer();
    s.on('error', () => resolvePort(0));
    s.listen(port, '127.0.0.1', () => {
      const got = s.address().port;
      s.close(() => resolvePort(got));
    });
  });
}
export async function freePort() {
  const lo = 20000;
  const hi = ephemeralPortsFrom();
  for (let i = 0; i < 1000; i++) {
    const want = hi - lo >= 1000 ? lo + Math.floor(Math.random() * (hi - lo)) : 0;
    if (want && usedPorts.has(want)) continue;
    const port = await tryListen(want);
    if (port && !usedPorts.has(port)) {
      usedPorts.add(port);
      return port;
    }
  }
  throw new Error('no free loopback port found');
}

function tail(text, lines = 40) {
  return text.split('\n').slice(-lines).join('\n');
}

// Servers still running when this process exits (a crash, an unhandled error) are stopped with it.
const running = new Set();
process.on('exit', () => { for (const c of running) c.kill('SIGKILL'); });

// A child process whose output is kept (last lines shown when something fails).
function spawnLogged(name, cmd, args, opts) {
  const child = spawn(cmd, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  child.once('exit', () => running.delete(child));
  const proc = { name, child, out: '', exited: null };
  // The whole output also goes to artifacts/logs/<name>.log (node --test hides a test's stderr).
  mkdirSync(join(ARTIFACTS, 'logs'), { recursive: true });
  const file = join(ARTIFACTS, 'logs', `${name.replace(':', '-')}.log`);
  const keep = (d) => {
    proc.out += d;
    if (proc.out.length > 200_000) proc.out = proc.out.slice(-100_000);
    appendFileSync(file, d);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  proc.exitedPromise = new Promise((r) => child.once('exit', (code, sig) => { proc.exited = { code, sig }; r(proc.exited); }));
  proc.log = () => tail(proc.out);
  proc.stop = async () => {
    if (!proc.exited) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await proc.exitedPromise;
      clearTimeout(t);
    }
  };
  return proc;
}

// The stand-in, configured for a relying party at http://localhost:<sitePort>.
// backchannel: false starts it without a back-channel logout URI (Pliro then never notifies Caddy).
export async function startStandin({ sitePort, backchannel = true }) {
  const port = await freePort();
  const issuer = `http://localhost:${port}`;
  const site = `http://localhost:${sitePort}`;
  const proc = spawnLogged(`standin:${port}`, process.execPath, [join(HERE, 'server.js')], {
    cwd: HERE,
    env: {
      ...process.env,
      PORT: String(port),
      ISSUER: issuer,
      TEST_API: '1',
      REDIRECT_URIS: `${site}/callback`,
      POST_LOGOUT_REDIRECT_URIS: `${site}/`,
      BACKCHANNEL_LOGOUT_URI: backchannel ? `${site}/backchannel-logout` : '',
      CONTINUE_HOSTS: `localhost:${sitePort}`,
      PUBLIC_KEY_OUT: '',
    },
  });
  await new Promise((ok, fail) => {
    const t = setTimeout(() => fail(new Error(`stand-in not ready within 60s:\n${proc.log()}`)), 60000);
    const onData = () => {
      if (proc.out.includes(`pliro-standin ready ${issuer}\n`)) {
        clearTimeout(t);
        proc.child.stdout.off('data', onData);
        ok();
      }
    };
    proc.child.stdout.on('data', onData);
    proc.exitedPromise.then((e) => { clearTimeout(t); fail(new Error(`stand-in exited (${JSON.stringify(e)}):\n${proc.log()}`)); });
  });
  const api = `http://127.0.0.1:${port}`;
  return {
    stop: proc.stop,
    log: proc.log,
    port,
    issuer,
    async reset() {
      const res = await fetch(`${api}/test/reset`, { method: 'POST' });
      if (res.status !== 204) throw new Error(`POST /test/reset: ${res.status}`);
    },
    async backchannelLog() {
      const res = await fetch(`${api}/test/backchannel-log`);
      if (!res.ok) throw new Error(`GET /test/backchannel-log: ${res.status}`);
      return res.json();
    },
    async setPlan(email, plan) {
      const res = await fetch(`${api}/test/plan`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email, plan }) });
      if (!res.ok) throw new Error(`POST /test/plan: ${res.status}`);
      return res.json();
    },
  };
}

// example.Caddyfile, unchanged except: the port, an absolute site root, no admin endpoint (so that it
// runs beside `scripts/example`, which has :2019) and its own storage (sessions are saved there).
export function exampleCaddyfile(port, dataDir) {
  const src = readFileSync(join(REPO, 'example.Caddyfile'), 'utf8');
  for (const needle of ['http_port 3000', 'http://localhost:3000 {', 'root * example/site']) {
    if (!src.includes(needle)) throw new Error(`example.Caddyfile no longer contains "${needle}"; update testenv/pliro/harness.mjs`);
  }
  return src
    .replace('http_port 3000', `http_port ${port}\n\tadmin off\n\tstorage file_system "${join(dataDir, 'storage')}"`)
    .replaceAll('http://localhost:3000', `http://localhost:${port}`)
    .replace('root * example/site', `root * "${join(REPO, 'example', 'site')}"`);
}

export async function startCaddy({ port, issuer }) {
  if (!existsSync(CADDY_BIN)) {
    throw new Error(`Caddy binary not found at ${CADDY_BIN}: run scripts/setup (it builds bin/caddy), or set PLIRO_CADDY_BIN`);
  }
  const dir = mkdtempSync(join(tmpdir(), 'pliro-browser-caddy-'));
  const config = join(dir, 'Caddyfile');
  writeFileSync(config, exampleCaddyfile(port, dir));
  const proc = spawnLogged(`caddy:${port}`, CADDY_BIN, ['run', '--config', config, '--adapter', 'caddyfile'], {
    cwd: REPO,
    env: {
      ...process.env,
      PLIRO_ISSUER: issuer,
      PLIRO_CLIENT_ID: CLIENT_ID,
      PLIRO_CLIENT_SECRET: CLIENT_SECRET,
      XDG_DATA_HOME: join(dir, 'data'),
      XDG_CONFIG_HOME: join(dir, 'config'),
    },
  });
  const origin = `http://localhost:${port}`;
  const deadline = Date.now() + 60000;
  for (;;) {
    if (proc.exited) throw new Error(`caddy exited (${JSON.stringify(proc.exited)}):\n${proc.log()}`);
    try {
      const res = await fetch(`${origin}/style.css`);
      if (res.ok) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) { await proc.stop(); throw new Error(`caddy not serving ${origin} within 60s:\n${proc.log()}`); }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    log: proc.log,
    origin,
    port,
    async stop() { await proc.stop(); rmSync(dir, { recursive: true, force: true }); },
  };
}

// A stand-in and a Caddy that trust each other (issuer, redirect URI, back-channel URI, continue hosts).
export async function startStack({ backchannel = true } = {}) {
  const sitePort = await freePort();
  const standin = await startStandin({ sitePort, backchannel });
  let caddy;
  try {
    caddy = await startCaddy({ port: sitePort, issuer: standin.issuer });
  } catch (err) {
    await standin.stop();
    throw err;
  }
  return {
    standin,
    caddy,
    site: caddy.origin,
    issuer: standin.issuer,
    logs: () => `--- caddy ---\n${caddy.log()}\n--- stand-in ---\n${standin.log()}`,
    async stop() { await caddy.stop(); await standin.stop(); },
  };
}

// A fresh browser profile per call: headless Debian Chromium, never a downloaded browser.
export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: run scripts/setup (it installs Debian's chromium)`);
  const profile = mkdtempSync(join(tmpdir(), 'pliro-browser-profile-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 1200, height: 860 },
    locale: 'en-GB',
    timeout: 60000,
  });
  // Generous for a loaded CI machine; every wait still ends.
  context.setDefaultTimeout(30000);
  context.setDefaultNavigationTimeout(30000);
  const page = context.pages()[0] || await context.newPage();
  return {
    context,
    page,
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

// Failure screenshots and server logs of an earlier run would mislead: remove them.
export function clearOldArtifacts() {
  if (!existsSync(ARTIFACTS)) return;
  for (const f of readdirSync(ARTIFACTS)) if (f.startsWith('failed-')) rmSync(join(ARTIFACTS, f), { force: true });
  rmSync(join(ARTIFACTS, 'logs'), { recursive: true, force: true });
}
