// Drives the chi console in headless Chromium for the Rust tests (crates/chi/tests/cli/console.rs).
//
// Started with the chromium executable as its argument and NODE_PATH pointing at the
// playwright-core that scripts/browser installs. Prints `ready` once the browser runs, then
// reads one JSON command per line on stdin and answers each with one JSON line on stdout:
// {"ok": true, ...} or {"ok": false, "error": "..."}. The Rust side decides what to assert;
// this script only looks at the page the way a user would (what is visible, what has focus).

const { chromium } = require('playwright-core');
const fs = require('fs');
const os = require('os');
const path = require('path');
const readline = require('readline');

const WAIT = 15000;

async function main() {
  const executablePath = process.argv[2];
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'chi-console-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const errors = [];
  let page = null;
  let dialogs = 0;

  const commands = {
    // Opens `url` with JavaScript and waits for the first live update.
    async open({ url }) {
      page = await context.newPage();
      page.on('pageerror', (e) => errors.push(String(e)));
      page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
      page.on('dialog', (d) => { dialogs += 1; d.accept(); });
      await page.goto(url);
      await page.waitForFunction(() => document.body.dataset.updated, null, { timeout: WAIT });
      return { title: await page.title() };
    },

    // The visible instance rows: key, health and why, as shown.
    async rows() {
      return { rows: await visibleRows(page) };
    },

    // Waits until row `key` is shown (with `health` when given), or gone when `gone`.
    async waitRow({ key, gone, health }) {
      await page.waitForFunction(([key, gone, health]) => {
        const row = [...document.querySelectorAll('tr[data-instance]')]
          .find((r) => r.dataset.instance === key && !r.hidden);
        if (gone) return !row;
        return row && (!health || row.querySelector('.health').textContent === health);
      }, [key, !!gone, health || null], { timeout: WAIT });
      return { rows: await visibleRows(page) };
    },

    // Types `text` into the filter and sets "healthy only"; the rows left.
    async filter({ text, healthy }) {
      await page.fill('#filter', '');
      await page.focus('#filter');
      await page.keyboard.type(text);
      const box = page.locator('#healthy-only');
      if ((await box.isChecked()) !== healthy) await box.press('Space');
      return { rows: await visibleRows(page), shown: await page.textContent('#shown') };
    },

    // Presses Tab `n` times from the top of the page: what had the focus each time, and whether
    // the focus was visible (an outline drawn).
    async tabs({ n }) {
      // A fresh load: the keyboard starts from the top of the page.
      await page.reload();
      await page.waitForFunction(() => document.body.dataset.updated, null, { timeout: WAIT });
      const seen = [];
      for (let i = 0; i < n; i += 1) {
        await page.keyboard.press('Tab');
        seen.push(await page.evaluate(() => {
          const el = document.activeElement;
          const style = getComputedStyle(el);
          return {
            tag: el.tagName.toLowerCase(),
            id: el.id,
            text: (el.textContent || '').trim().slice(0, 40),
            outline: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2,
          };
        }));
      }
      return { seen };
    },

    // The bars of `service`'s chart once it has one with picks: id, picks and drawn width.
    async bars({ service, min }) {
      await page.waitForFunction(([service, min]) => {
        const figure = [...document.querySelectorAll('figure[data-chart]')]
          .find((f) => f.dataset.chart === service);
        const bars = figure ? [...figure.querySelectorAll('svg rect.bar')] : [];
        const picks = bars.reduce((sum, b) => sum + Number(b.dataset.picks), 0);
        return bars.length > 0 && picks >= min;
      }, [service, min || 1], { timeout: WAIT });
      const bars = await page.evaluate((service) => {
        const figure = [...document.querySelectorAll('figure[data-chart]')]
          .find((f) => f.dataset.chart === service);
        return [...figure.querySelectorAll('svg rect.bar')].map((b) => ({
          id: b.dataset.id,
          picks: Number(b.dataset.picks),
          width: b.getBoundingClientRect().width,
        }));
      }, service);
      return { bars };
    },

    // The text of the first element matching `selector`, once it contains `has` (if given).
    async text({ selector, has }) {
      if (has) {
        await page.waitForFunction(([selector, has]) =>
          (document.querySelector(selector)?.textContent || '').includes(has),
        [selector, has], { timeout: WAIT });
      }
      return { text: await page.textContent(selector) };
    },

    // A write from the page itself, as its script would send it.
    async write({ service, id }) {
      return page.evaluate(async ([service, id]) => {
        const r = await fetch(`/ui/api/services/${encodeURIComponent(service)}/instances/${encodeURIComponent(id)}`,
          { method: 'DELETE', headers: { 'x-chi-console': 'write' } });
        return { status: r.status, body: await r.text() };
      }, [service, id]);
    },

    // Deregisters with the keyboard: focus the row's button, press Enter, accept the dialog.
    async deregister({ service, id }) {
      const handle = await page.evaluateHandle(([service, id]) =>
        [...document.querySelectorAll('button.deregister')]
          .find((b) => b.dataset.service === service && b.dataset.id === id) || null,
      [service, id]);
      const button = handle.asElement();
      if (!button) throw new Error(`no deregister button for ${service}/${id}`);
      await button.focus();
      const before = dialogs;
      await page.keyboard.press('Enter');
      const deadline = Date.now() + WAIT;
      while (dialogs === before && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      return { dialogs: dialogs - before };
    },

    // A screenshot of the whole page into `path`.
    async screenshot({ path: file }) {
      await page.screenshot({ path: file, fullPage: true });
      return { path: file };
    },

    // Opens `url` without its script (the page has no other): the server-rendered page alone.
    async static({ url, shot }) {
      const p = await context.newPage();
      await p.route('**/*.js', (r) => r.abort());
      await p.goto(url);
      const rows = await p.evaluate(() => [...document.querySelectorAll('tr[data-instance]')]
        .map((r) => ({ key: r.dataset.instance, health: r.querySelector('.health').textContent })));
      const live = await p.textContent('#live');
      if (shot) await p.screenshot({ path: shot, fullPage: true });
      await p.close();
      return { rows, live };
    },

    // The lowest text contrast on the page (WCAG's ratio): every element with text of its own,
    // its colour (an SVG text's fill) against the first opaque background behind it.
    async contrast() {
      return page.evaluate(() => {
        const rgb = (c) => (c.match(/[\d.]+/g) || []).map(Number);
        const lum = ([r, g, b]) => [r, g, b]
          .map((v) => v / 255)
          .map((v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4))
          .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
        const background = (el) => {
          for (let e = el; e; e = e.parentElement) {
            const c = rgb(getComputedStyle(e).backgroundColor);
            if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
          }
          return [255, 255, 255];
        };
        let worst = { ratio: 21, what: '' };
        for (const el of document.querySelectorAll('body *')) {
          const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
          if (!own || !el.getClientRects().length) continue;
          const style = getComputedStyle(el);
          if (style.visibility === 'hidden') continue;
          const ink = rgb(el instanceof SVGElement ? style.fill : style.color).slice(0, 3);
          const [a, b] = [lum(ink), lum(background(el))].sort((x, y) => y - x);
          const ratio = (a + 0.05) / (b + 0.05);
          if (ratio < worst.ratio) {
            worst = { ratio, what: `${el.tagName.toLowerCase()}.${el.className?.baseVal ?? el.className} "${el.textContent.trim().slice(0, 30)}"` };
          }
        }
        return worst;
      });
    },

    // Errors the page reported so far (script errors, failed loads).
    async errors() {
      return { errors };
    },
  };

  console.log('ready');
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    let reply;
    try {
      const { cmd, ...args } = JSON.parse(line);
      if (cmd === 'close') break;
      const run = commands[cmd];
      if (!run) throw new Error(`unknown command ${cmd}`);
      reply = { ok: true, ...(await run(args)) };
    } catch (e) {
      reply = { ok: false, error: String(e && e.stack || e) };
    }
    console.log(JSON.stringify(reply));
  }
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}

/// Every visible instance row as the user sees it.
function visibleRows(page) {
  return page.evaluate(() => [...document.querySelectorAll('tr[data-instance]')]
    .filter((r) => !r.hidden && !r.closest('table').hidden)
    .map((r) => ({
      key: r.dataset.instance,
      health: r.querySelector('.health').textContent,
      why: r.querySelector('.why').textContent,
      cells: [...r.children].map((c) => c.textContent.trim()),
    })));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
