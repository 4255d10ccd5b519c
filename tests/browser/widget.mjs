// Drives Debian's Chromium (playwright-core, no browser download) for the
// widget tests: loads a page URL that sends one request to the edge, waits
// for the page's verdict, takes a screenshot, and prints a JSON line:
//   {"state":"ok"|"error","status":"200"|"403"|"cors",...,"text":"...","console":[...],"screenshot":"..."}
//   node tests/browser/widget.mjs <page url> <screenshot path>
import { chromium } from "playwright-core";

const [url, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
  ],
});
try {
  const page = await browser.newPage();
  const console_ = [];
  page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
  await page.goto(url);
  await page.waitForFunction(() => ["ok", "error"].includes(document.body.dataset.state), null, { timeout: 20000 });
  const result = await page.evaluate(() => ({
    state: document.body.dataset.state,
    status: document.body.dataset.status,
    text: document.getElementById("answer").textContent,
    origin: location.origin,
  }));
  await page.screenshot({ path: shot, fullPage: true });
  console.log(JSON.stringify({ ...result, console: console_, screenshot: shot }));
} finally {
  await browser.close();
}
