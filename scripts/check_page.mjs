// Drives the page `mosa serve` serves at `/` in headless Chromium: picks a task, gives the file
// input an image (as a user dropping or choosing one does), waits for the table, and checks that
// the page shows the top 5 that `POST /predictions/<task>` answers for the same image.
//
//   node scripts/check_page.mjs <server url> <task> <image file> [chromium path]
//
// Needs puppeteer-core (npm, outside the repo: `npm install --prefix DIR puppeteer-core`, then
// PAGE_CHECK_DIR=DIR) and a Chromium (Debian: `apt-get install chromium`).
// scripts/check-page.sh runs it against a server it starts.
import fs from "node:fs";
import { createRequire } from "node:module";

// puppeteer-core lives outside the repo: PAGE_CHECK_DIR/node_modules (scripts/check-page.sh)
const puppeteer = createRequire((process.env.PAGE_CHECK_DIR ?? process.cwd()) + "/")("puppeteer-core");

const [url, task, image, chromium = "/usr/bin/chromium"] = process.argv.slice(2);
if (!url || !task || !image) {
  console.error("usage: node scripts/check_page.mjs <server url> <task> <image file> [chromium path]");
  process.exit(2);
}

const direct = await (await fetch(`${url}/predictions/${encodeURIComponent(task)}`, {
  method: "POST",
  body: fs.readFileSync(image),
  headers: { "Content-Type": image.endsWith(".png") ? "image/png" : "image/jpeg" },
})).json();

const browser = await puppeteer.launch({ executablePath: chromium, headless: true, args: ["--no-sandbox"] });
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("requestfailed", (r) => errors.push(`request failed: ${r.url()}`));
  await page.goto(url + "/", { waitUntil: "networkidle0" });
  const options = await page.$$eval("#task option", (os) => os.map((o) => o.value));
  if (!options.includes(task)) throw new Error(`task ${task} not offered by the page (${options.join(", ")})`);
  await page.select("#task", task);
  const input = await page.$("#file");
  await input.uploadFile(image);
  await page.waitForFunction((t) => document.body.dataset.done === t, { timeout: 60000 }, task);
  const shown = await page.$$eval("#result tbody tr", (rows) => rows.map((r) => [r.cells[0].textContent, r.cells[1].textContent]));
  const want = direct.top.map((p) => [p.label, (100 * p.probability).toFixed(1) + " %"]);
  console.log(`page at ${url}/, task ${task}, image ${image}`);
  console.log("| rank | shown by the page | answered by /predictions |");
  console.log("|---:|---|---|");
  shown.forEach((s, i) => console.log(`| ${i + 1} | ${s[0]} ${s[1]} | ${want[i] ? want[i][0] + " " + want[i][1] : ""} |`));
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  if (JSON.stringify(shown) !== JSON.stringify(want)) throw new Error("the page does not show what /predictions answers");
  console.log("ok: the page shows the same top " + shown.length);
} catch (e) {
  console.error(`check_page: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
