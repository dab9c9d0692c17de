// Drives the collegedb dashboard in headless Chromium (Debian's, through puppeteer-core).
//
//   node tests/browser/dashboard.mjs <url> <shard,shard,...> <screenshot.png>
//
// Loads the page and checks that it renders every shard, then prints `READY <rows per shard as
// JSON>` and waits for one line on standard input: `EXPECT <rows per shard as JSON>`, sent by the
// test after it wrote rows. It then waits (at most 30 s) until the page, polling its JSON
// endpoint by itself, shows exactly those counts, checks that no string from the data was
// interpreted as HTML, saves a screenshot and prints `PASS`. Any failure prints `FAIL <why>`
// and exits 1. Everything is bounded in time; the browser is closed on every path.
import puppeteer from "puppeteer-core";
import readline from "node:readline";

const [url, shardList, screenshot] = process.argv.slice(2);
if (!url || !shardList || !screenshot) {
  console.log("FAIL usage: dashboard.mjs <url> <shards> <screenshot.png>");
  process.exit(2);
}
const shards = shardList.split(",");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

function fail(why) {
  console.log("FAIL " + why);
  process.exitCode = 1;
  throw new Error(why);
}

const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error("no line from the test within 60 s")), 60000);
  lines.once("line", (line) => { clearTimeout(timer); resolve(line); });
});

const rowsOnPage = (page) => page.evaluate(() => Object.fromEntries(
  [...document.querySelectorAll("#shards tbody tr[data-shard]")].map(
    (tr) => [tr.getAttribute("data-shard"), Number(tr.getAttribute("data-rows"))])));

const browser = await puppeteer.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
  protocolTimeout: 60000,
});
const watchdog = setTimeout(() => { console.log("FAIL the browser test took over 120 s"); process.exit(1); }, 120000);
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1360, height: 1000 });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const response = await page.goto(url, { waitUntil: "load", timeout: 30000 });
  if (!response || response.status() !== 200) fail("the page answered " + (response && response.status()));
  await page.waitForSelector("#shards tbody tr[data-shard]", { timeout: 15000 });
  const title = await page.$eval("#title", (e) => e.textContent);
  if (!title) fail("the page has no title");
  const first = await rowsOnPage(page);
  for (const shard of shards) if (!(shard in first)) fail("shard " + shard + " is not on the page: " + JSON.stringify(first));
  if (Object.keys(first).length !== shards.length) fail("the page lists other shards: " + JSON.stringify(first));
  const healthy = await page.$eval("#health-status", (e) => e.getAttribute("data-ok"));
  console.log("READY " + JSON.stringify(first) + " health=" + healthy);

  const line = await nextLine();
  if (!line.startsWith("EXPECT ")) fail("expected `EXPECT {...}`, got " + line);
  const expected = JSON.parse(line.slice(7));
  const before = await page.$eval("#updated", (e) => Number(e.getAttribute("data-generated-ms")));
  const deadline = Date.now() + 30000;
  let shown = await rowsOnPage(page);
  while (JSON.stringify(sorted(shown)) !== JSON.stringify(sorted(expected))) {
    if (Date.now() > deadline) fail("after 30 s the page shows " + JSON.stringify(shown) + ", expected " + JSON.stringify(expected));
    await new Promise((r) => setTimeout(r, 250));
    shown = await rowsOnPage(page);
  }
  const after = await page.$eval("#updated", (e) => Number(e.getAttribute("data-generated-ms")));
  if (!(after > before)) fail("the page did not refresh its data (generated " + before + " then " + after + ")");
  // Strings from the data must show as text: no element or script may come from them.
  const injected = await page.evaluate(() => window.__collegedbInjected === true ||
    document.querySelectorAll("main img, main script, main iframe").length > 0);
  if (injected) fail("a string from the data was interpreted as HTML");
  if (errors.length) fail("script errors on the page: " + errors.join("; "));
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log("PASS " + JSON.stringify(shown));
} catch (e) {
  if (!process.exitCode) console.log("FAIL " + (e && e.message));
  process.exitCode = 1;
} finally {
  clearTimeout(watchdog);
  lines.close();
  await browser.close().catch(() => {});
}

function sorted(object) {
  return Object.fromEntries(Object.entries(object).sort(([a], [b]) => a.localeCompare(b)));
}
