// Drives Debian's Chromium (playwright-core, no browser download) through
// the keys console for tests/console.rs. One scenario per run; prints one
// JSON line with what the page showed, and writes screenshots.
//   node tests/browser/console.mjs <scenario> <edge url> <screenshot dir> '<json args>'
// Scenarios: create (sign in, create a secret key, read and copy its
// plaintext once), revoke (sign in, revoke args.key_id, look at usage and
// audit), viewer (sign in as a viewer), frame (load the console in a frame).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const [scenario, edge, shots, rawArgs] = process.argv.slice(2);
const args = JSON.parse(rawArgs || "{}");
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
const out = { scenario, dialogs: [], console: [], page_errors: [], screenshots: [], axe: {} };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
  ],
});

async function shot(page, name) {
  const path = `${shots}/${name}.png`;
  await page.screenshot({ path, fullPage: true });
  out.screenshots.push(path);
}

/** axe-core in the page; the violations that are serious or critical. */
async function axe(page, name) {
  await page.evaluate(axeSource); // DevTools evaluation: not an inline script, the CSP stays in force
  const v = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((x) => ({ id: x.id, impact: x.impact, help: x.help, nodes: x.nodes.map((n) => n.target.join(" ")) }));
  });
  out.axe[name] = v.filter((x) => x.impact === "serious" || x.impact === "critical");
  out.axe[`${name}_minor`] = v.filter((x) => !(x.impact === "serious" || x.impact === "critical")).map((x) => x.id);
}

async function waitReady(page) {
  await page.waitForFunction(
    () => document.body.dataset.state === "ready" || !document.getElementById("error").hidden,
    null, { timeout: 20000 });
  const s = await page.evaluate(() => ({ state: document.body.dataset.state, error: document.getElementById("error").textContent }));
  if (s.state !== "ready") throw new Error(`the console did not get ready: ${s.error}`);
}

async function signIn(page, email, password) {
  const res = await page.goto(`${edge}/console/`);
  out.console_headers = await res.allHeaders();
  await page.waitForFunction(() => document.body.dataset.state === "signed-out");
  await shot(page, "sign-in");
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await waitReady(page);
  out.session_storage = await page.evaluate(() => Object.fromEntries(Object.entries(sessionStorage)));
  out.local_storage_length = await page.evaluate(() => localStorage.length);
  out.who = await page.evaluate(() => ["org", "user", "role"].map((k) => document.getElementById(`who-${k}`).textContent));
}

/** Clicks a pager button of the keys table and waits for the new page. */
async function keysPage(page, which) {
  const loads = await page.evaluate(() => Number(document.body.dataset.keysLoads || 0));
  await page.locator(`#keys-${which}`).click();
  await page.waitForFunction((n) => Number(document.body.dataset.keysLoads) > n, loads);
}

/** The keys table's row matching `selector`, paging through the cursor from the first page. */
async function findRow(page, selector) {
  while (!(await page.locator("#keys-prev").isDisabled())) await keysPage(page, "prev");
  for (;;) {
    const row = page.locator(selector).first();
    if (await row.count()) return row;
    if (await page.locator("#keys-next").isDisabled()) throw new Error(`no row ${selector} on any page`);
    await keysPage(page, "next");
  }
}

/** Tab through the page: the ids (or labels) of what got the focus. */
async function tabStops(page, n) {
  const seen = [];
  for (let i = 0; i < n; i++) {
    await page.keyboard.press("Tab");
    seen.push(await page.evaluate(() => {
      const a = document.activeElement;
      return a ? a.id || a.getAttribute("aria-label") || a.textContent.trim().slice(0, 40) : null;
    }));
  }
  return seen;
}

try {
  const context = await browser.newContext();
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: edge });
  const page = await context.newPage();
  page.on("dialog", async (d) => { out.dialogs.push(`${d.type()}: ${d.message()}`); await d.dismiss(); });
  page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => out.page_errors.push(String(e)));
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(e.violatedDirective));
  });
  if (scenario === "create") {
    await signIn(page, "admin@demo.test", "demo-admin");
    // An inline script injected into the page does not run (CSP).
    out.inline_ran = await page.evaluate(async () => {
      const s = document.createElement("script");
      s.textContent = "window.__inlineRan = true";
      document.body.append(s);
      await new Promise((r) => setTimeout(r, 200));
      return window.__inlineRan === true;
    });
    out.csp_violations = await page.evaluate(() => window.__csp);
    await shot(page, "keys");
    await axe(page, "keys");
    out.focus_after_sign_in = await page.evaluate(() => document.activeElement.id);
    await page.locator(".skip").focus();
    out.tab_stops = await tabStops(page, 5);
    // New key, by keyboard where it matters.
    await page.locator("#new-key").focus();
    await page.keyboard.press("Enter");
    await page.locator("#create-dialog[open]").waitFor();
    out.focus_in_dialog = await page.evaluate(() => document.activeElement.id);
    // Tab through the modal dialog: every control, nothing behind it.
    out.dialog_tab_stops = [];
    for (let i = 0; i < 30; i++) {
      await page.keyboard.press("Tab");
      out.dialog_tab_stops.push(await page.evaluate(() => {
        const a = document.activeElement;
        if (!a || a === document.body) return null;
        const where = a.closest("#create-dialog") ? "" : "OUTSIDE:";
        return where + (a.id || (a.name ? `${a.name}=${a.value}` : a.textContent.trim()));
      }));
    }
    await page.locator("#ck-name").focus();
    out.scope_boxes = await page.evaluate(() => [...document.querySelectorAll("#ck-scopes input")].map((c) => ({ scope: c.value, disabled: c.disabled })));
    await page.getByLabel("Name").fill(args.name);
    await page.getByRole("checkbox", { name: "ai:chat" }).check();
    await shot(page, "new-key");
    await axe(page, "new_key_dialog");
    await page.getByRole("button", { name: "Create key" }).click();
    await page.waitForFunction(() => document.getElementById("secret-value") || !document.querySelector("#create-dialog .form-error").hidden, null, { timeout: 15000 });
    const formErr = await page.evaluate(() => document.querySelector("#create-dialog .form-error").textContent);
    if (formErr) throw new Error(`create failed in the page: ${formErr}`);
    out.plaintext = await page.locator("#secret-value").inputValue();
    out.warning = await page.locator("#secret-warning").textContent();
    await page.getByRole("button", { name: "Copy key" }).click();
    await page.waitForFunction(() => document.getElementById("secret-copied").textContent !== "");
    out.copied_status = await page.locator("#secret-copied").textContent();
    out.clipboard = await page.evaluate(() => navigator.clipboard.readText());
    await shot(page, "key-created");
    await axe(page, "secret_dialog");
    await page.getByRole("button", { name: "I have copied it, close" }).click();
    await page.waitForFunction(() => !document.getElementById("secret-dialog").open);
    await page.waitForTimeout(100);
    out.focus_after_close = await page.evaluate(() => document.activeElement.id);
    out.plaintext_in_dom_after_close = await page.evaluate((p) => document.documentElement.outerHTML.includes(p) ||
      [...document.querySelectorAll("input, textarea")].some((i) => i.value.includes(p)), out.plaintext);
    await page.waitForFunction(() => document.getElementById("keys-status").textContent.startsWith("Created"));
    await page.waitForTimeout(300); // the list's reload after the creation
    out.row = await (await findRow(page, `#keys-table tr:has(td.name:text-is("${args.name}"))`)).evaluate((tr) => ({ id: tr.dataset.keyId, cells: [...tr.cells].map((c) => c.textContent) }));
  } else if (scenario === "revoke") {
    await signIn(page, "admin@demo.test", "demo-admin");
    // The hostile name renders as text.
    const hostile = await findRow(page, `#keys-table tr[data-key-id="${args.hostile_id}"]`);
    out.hostile_text = await hostile.locator("td.name").textContent();
    out.images_in_table = await page.locator("#keys-table img").count();
    // Pages of 20 through the API's cursor.
    while (!(await page.locator("#keys-prev").isDisabled())) await keysPage(page, "prev");
    out.first_page_rows = await page.locator("#keys-table tbody tr").count();
    out.first_page_ids = await page.evaluate(() => [...document.querySelectorAll("#keys-table tbody tr")].map((tr) => tr.dataset.keyId));
    out.next_enabled = !(await page.locator("#keys-next").isDisabled());
    await keysPage(page, "next");
    out.second_page_ids = await page.evaluate(() => [...document.querySelectorAll("#keys-table tbody tr")].map((tr) => tr.dataset.keyId));
    out.prev_enabled = !(await page.locator("#keys-prev").isDisabled());
    await keysPage(page, "prev");
    out.back_ids = await page.evaluate(() => [...document.querySelectorAll("#keys-table tbody tr")].map((tr) => tr.dataset.keyId));
    const row = await findRow(page, `#keys-table tr[data-key-id="${args.key_id}"]`);
    await row.getByRole("button", { name: /^Revoke / }).click();
    await page.locator("#confirm-dialog[open]").waitFor();
    out.confirm_text = await page.locator("#confirm-text").textContent();
    out.focus_in_confirm = await page.evaluate(() => document.activeElement.textContent);
    await shot(page, "revoke-confirm");
    await axe(page, "revoke_dialog");
    await page.getByRole("button", { name: "Yes, revoke" }).click();
    await page.waitForFunction(() => !document.getElementById("confirm-dialog").open || !document.querySelector("#confirm-dialog .form-error").hidden);
    const err = await page.evaluate(() => document.querySelector("#confirm-dialog .form-error").textContent);
    if (err) throw new Error(`revoke failed in the page: ${err}`);
    await row.waitFor({ state: "detached" });
    out.focus_after_revoke = await page.evaluate(() => document.activeElement.id);
    out.revoked_row_gone = true;
    await page.getByRole("button", { name: "Usage" }).click();
    await page.waitForFunction(() => document.body.dataset.view === "usage" && document.getElementById("usage-list").childElementCount > 0);
    out.usage_keys = await page.evaluate(() => [...document.querySelectorAll("#usage-list figure")].map((f) => f.dataset.keyId));
    out.usage_bars = await page.locator("#usage-list svg rect").count();
    out.headroom = await page.locator("#usage-headroom").textContent();
    await shot(page, "usage");
    await axe(page, "usage");
    await page.getByRole("button", { name: "Audit log" }).click();
    await page.waitForFunction(() => document.body.dataset.view === "audit" && document.querySelector("#audit-table tbody tr"));
    const auditRows = () => page.evaluate(() => [...document.querySelectorAll("#audit-table tbody tr")].map((tr) => [...tr.cells].map((c) => c.textContent)));
    out.audit_rows = await auditRows();
    await shot(page, "audit");
    await axe(page, "audit");
    // The next page of the audit log through its cursor.
    const first = JSON.stringify(out.audit_rows[0]);
    await page.locator("#audit-next").click();
    await page.waitForFunction((f) => {
      const tr = document.querySelector("#audit-table tbody tr");
      return tr && JSON.stringify([...tr.cells].map((c) => c.textContent)) !== f;
    }, first);
    out.audit_rows_page_2 = await auditRows();
    // What of the signed-in user the page holds (hidden views included),
    // before and after sign-out: table rows, charts, the header's
    // org/user/role, the keys' names anywhere in the document.
    const held = () => page.evaluate((probes) => ({
      rows: document.querySelectorAll("tbody tr").length,
      charts: document.querySelectorAll("#usage-list > *").length,
      header: ["who-org", "who-user", "who-role"].map((id) => document.getElementById(id).textContent).join(""),
      // Every probe (key names, a key's last four) found in the document,
      // dialogs and form fields included.
      found: probes.filter((p) => document.documentElement.textContent.includes(p)
        || [...document.querySelectorAll("input, textarea")].some((i) => i.value.includes(p))),
    }), args.probes);
    out.held_before_sign_out = await held();
    await page.getByRole("button", { name: "Sign out" }).click();
    out.session_storage_after_sign_out = await page.evaluate(() => sessionStorage.length);
    out.signed_out = await page.evaluate(() => document.body.dataset.state);
    out.held_after_sign_out = await held();
  } else if (scenario === "widget") {
    // A widget key made in the page; its snippet, pasted into a page on the
    // allowed origin (served here on args.page_port), gets its answer.
    await signIn(page, "admin@demo.test", "demo-admin");
    await page.getByRole("button", { name: "New key" }).click();
    await page.getByLabel("Name").fill(args.name);
    await page.getByRole("checkbox", { name: "ai:chat" }).check();
    await page.getByRole("radio", { name: /^Widget/ }).check();
    // An API error is shown in the dialog with its message and request id.
    await page.getByLabel(/^Allowed origins/).fill("*");
    await page.getByRole("button", { name: "Create key" }).click();
    await page.waitForFunction(() => !document.querySelector("#create-dialog .form-error").hidden, null, { timeout: 15000 });
    out.create_error = await page.locator("#create-dialog .form-error").textContent();
    await shot(page, "create-error");
    await page.getByLabel(/^Allowed origins/).fill(`http://127.0.0.1:${args.page_port}`);
    await page.getByRole("button", { name: "Create key" }).click();
    await page.waitForFunction(() => document.getElementById("secret-snippet") || !document.querySelector("#create-dialog .form-error").hidden, null, { timeout: 15000 });
    const formErr = await page.evaluate(() => document.querySelector("#create-dialog .form-error").textContent);
    if (formErr) throw new Error(`create failed in the page: ${formErr}`);
    out.plaintext = await page.locator("#secret-value").inputValue();
    const snippet = await page.locator("#secret-snippet").inputValue();
    out.snippet = snippet;
    await shot(page, "widget-created");
    await axe(page, "widget_dialog");
    await page.keyboard.press("Escape"); // closing by Escape removes the plaintext too
    await page.waitForFunction(() => !document.getElementById("secret-dialog").open);
    await page.waitForTimeout(100);
    out.plaintext_in_dom_after_escape = await page.evaluate((p) => document.documentElement.outerHTML.includes(p), out.plaintext);
    await page.waitForTimeout(300); // the list's reload after the creation
    let row = await findRow(page, `#keys-table tr:has(td.name:text-is("${args.name}"))`);
    out.key_id = await row.evaluate((tr) => tr.dataset.keyId);
    await row.getByRole("button", { name: /^Embed snippet/ }).click();
    out.snippet_origins = await page.locator("#snippet-origins").textContent();
    await shot(page, "widget-snippet");
    await axe(page, "snippet_dialog");
    await page.locator("#snippet-dialog").getByRole("button", { name: "Close" }).click();
    // The pasted snippet on the allowed origin.
    const { createServer } = await import("node:http");
    const server = createServer((req, res) => {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(`<!doctype html><html lang="en"><head><title>shop</title></head><body>${snippet}</body></html>`);
    });
    await new Promise((r) => server.listen(args.page_port, "127.0.0.1", r));
    try {
      const shop = await context.newPage();
      await shop.goto(`http://127.0.0.1:${args.page_port}/`);
      await shop.getByLabel("Message").fill("hello from the snippet");
      await shop.getByRole("button", { name: "Send" }).click();
      await shop.waitForFunction(() => document.getElementById("kw-answer").textContent !== "", null, { timeout: 15000 });
      out.widget_answer = await shop.locator("#kw-answer").textContent();
      await shot(shop, "widget-on-shop");
    } finally {
      server.close();
    }
    // Roll it in the page: a new plaintext, once.
    row = await findRow(page, `#keys-table tr[data-key-id="${out.key_id}"]`);
    await row.getByRole("button", { name: /^Roll / }).click();
    await page.getByLabel(/^Grace period/).fill("60");
    await page.locator("#roll-dialog").getByRole("button", { name: "Roll" }).click();
    await page.waitForFunction(() => document.getElementById("secret-value") || !document.querySelector("#roll-dialog .form-error").hidden, null, { timeout: 15000 });
    const rollErr = await page.evaluate(() => document.querySelector("#roll-dialog .form-error").textContent);
    if (rollErr) throw new Error(`roll failed in the page: ${rollErr}`);
    out.rolled_plaintext = await page.locator("#secret-value").inputValue();
    out.rolled_text = await page.locator("#secret-dialog").textContent();
    await shot(page, "key-rolled");
    await page.getByRole("button", { name: "I have copied it, close" }).click();
  } else if (scenario === "viewer") {
    await signIn(page, "viewer@demo.test", "demo-viewer");
    out.new_key_visible = await page.locator("#new-key").isVisible();
    out.revoke_buttons = await page.getByRole("button", { name: /^Revoke / }).count();
    out.note = await page.locator("#keys-note").isVisible();
    out.note_text = await page.locator("#keys-note").textContent();
    out.rows = await page.locator("#keys-table tbody tr[data-key-id]").count();
    out.error_shown = await page.locator("#error").isVisible();
    out.visible_tabs = await page.evaluate(() => [...document.querySelectorAll("#tabs button")].filter((b) => !b.hidden).map((b) => b.textContent));
    await shot(page, "keys-viewer");
    await axe(page, "viewer");
  } else if (scenario === "frame") {
    // A wrong password first: the identity provider's refusal is shown.
    await page.goto(`${edge}/console/`);
    await page.waitForFunction(() => document.body.dataset.state === "signed-out");
    await page.getByLabel("Email").fill("admin@demo.test");
    await page.getByLabel("Password").fill("not-the-password");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.waitForFunction(() => !document.getElementById("error").hidden);
    out.sign_in_error = await page.locator("#error").textContent();
    out.session_storage_length = await page.evaluate(() => sessionStorage.length);
    await shot(page, "sign-in-refused");
    // Another origin frames the console: a page navigated away from the
    // edge (to about:blank, an opaque origin) writes the iframe.
    await page.goto("about:blank");
    await page.setContent(`<!doctype html><title>framer</title><iframe id="f" title="console" src="${edge}/console/"></iframe>`);
    out.framer_origin = await page.evaluate(() => window.origin);
    await page.waitForTimeout(1500);
    out.frames = await Promise.all(page.frames().slice(1).map(async (f) => {
      let hasSignIn = false;
      try { hasSignIn = await f.evaluate(() => !!document.getElementById("signin-form")); } catch { /* blocked */ }
      return { url: f.url(), has_sign_in: hasSignIn };
    }));
    await shot(page, "framed");
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
  out.csp_violations_at_end = await page.evaluate(() => window.__csp).catch(() => null);
  console.log(JSON.stringify(out));
} catch (e) {
  out.failure = String(e && e.stack || e);
  console.log(JSON.stringify(out));
  process.exitCode = 1;
} finally {
  await browser.close();
}
